"""TinyCodecLM: the built-in policy, a small encoder-decoder codec LM of the MagpieTTS family.

It implements :class:`ttspo.trainer.policy.base.Policy` over the built-in codec
(:mod:`ttspo.trainer.policy.codec`: 8 codebooks x 256, ~21.5 frames per second).

Text side
    UTF-8 bytes plus four specials. The encoder reads ``BOS context_text SEP text EOS``
    (an audio context leaves the context text empty), bidirectionally.
Audio side
    Each codebook's vocabulary is its ``codebook_size`` codes plus BOS, EOS and PAD
    (ids ``size``, ``size + 1``, ``size + 2``: BOS and EOS as NeMo numbers them). A
    decoder frame's input is the sum of its C codebook embeddings plus a position.
    The decoder reads ``context codes (prefix), BOS, target frames`` with causal
    self-attention and cross-attention to the encoder, and one head per codebook
    predicts the next frame; a frame where any codebook says EOS ends the sample.
Batches
    Context prefixes are LEFT-padded so that BOS sits in the same column for every
    row; targets are right-padded. Padded keys are masked and positions count real
    frames only, so a row's numbers do not depend on the rows beside it.
Sampling
    Temperature (0: argmax), top-k, classifier-free guidance (the unconditional
    branch reads ``BOS SEP EOS`` and no context prefix; ``cfg_scale`` 1 is off), KV
    cache on or off with the same tokens. Each row draws its noise from its own
    generator, seeded by the row's ``sample_seed`` when the rows carry one (see
    :data:`ttspo.trainer.policy.base.SAMPLE_SEED`), else by a seed drawn for it from the
    caller's generator in row order.
Checkpoints
    One ``torch.save`` file: a format tag, the architecture, the config, the codec's
    fingerprint and the weights. Its bytes are a function of the weights, so
    ``identity().sha256`` equals the sha256 of the file ``save`` writes.

Files: ``tiny_batch.py`` (config, token ids, batch, collate), ``tiny_blocks.py``
(attention with its KV cache, encoder and decoder layers), ``tiny_sampling.py``
(generate), this one (the model, its teacher-forced pass and checkpoints).
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ttspo.builder.core.files import write_bytes_atomic
from ttspo.builder.core.errors import ModelError, first_line
from ttspo.trainer.policy import codec as codec_mod
from ttspo.trainer.policy import tiny_sampling
from ttspo.trainer.policy.base import Identity, Sampling, TeacherForced
from ttspo.trainer.policy.tiny_batch import (  # noqa: F401  (re-exported: the tiny policy's names)
    AUDIO_SPECIALS, IGNORE, TEXT_BOS, TEXT_EOS, TEXT_PAD, TEXT_SEP, TEXT_VOCAB, TinyBatch,
    TinyConfig, collate_rows)
from ttspo.trainer.policy.tiny_blocks import DecoderLayer, EncoderLayer, KVCache

ARCHITECTURE = "tiny"
# Config keys a checkpoint may be loaded with other values of (they change training,
# not the weights' shape): fine-tune with dropout from a checkpoint saved without.
TRAINING_ONLY = ("dropout", "cfg_dropout")
FORMAT = "ttspo-policy-v1"  # the header that tells a checkpoint from any other file

# -------------------------------------------------------------------- model
class TinyCodecLM(nn.Module):
    """Byte-level text encoder + causal multi-codebook decoder; see the module docstring."""

    def __init__(self, config: TinyConfig | None = None, codec: codec_mod.Codec | None = None):
        super().__init__()
        cfg = self.config = config or TinyConfig()
        self.codec = codec or codec_mod.Codec.load()
        if (self.codec.num_codebooks, self.codec.codebook_size) != (cfg.num_codebooks, cfg.codebook_size):
            raise ModelError(f"tiny policy config has {cfg.num_codebooks} x {cfg.codebook_size} "
                             f"codes, the codec {self.codec.num_codebooks} x {self.codec.codebook_size}")
        d, c, v = cfg.d_model, cfg.num_codebooks, cfg.vocab
        self.text_embed = nn.Embedding(TEXT_VOCAB, d)
        self.text_pos = nn.Embedding(cfg.max_text_len, d)
        self.encoder = nn.ModuleList(EncoderLayer(d, cfg.n_heads, cfg.d_ffn, cfg.dropout)
                                     for _ in range(cfg.encoder_layers))
        self.encoder_norm = nn.LayerNorm(d)
        # One table for all codebooks: codebook k's token x is row k * V + x.
        self.code_embed = nn.Embedding(c * v, d)
        self.register_buffer("code_offsets", torch.arange(c).view(1, c, 1) * v, persistent=False)
        self.frame_pos = nn.Embedding(cfg.max_frames, d)
        self.decoder = nn.ModuleList(DecoderLayer(d, cfg.n_heads, cfg.d_ffn, cfg.dropout)
                                     for _ in range(cfg.decoder_layers))
        self.decoder_norm = nn.LayerNorm(d)
        self.heads = nn.Linear(d, c * v)  # one V-way head per codebook
        self.drop = nn.Dropout(cfg.dropout)
        self.apply(init_weights)

    # ------------------------------------------------------------ pieces
    def encode(self, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(text.shape[1], device=text.device)
        x = self.drop(self.text_embed(text) + self.text_pos(pos))
        mask = text_mask[:, None, None, :]
        for layer in self.encoder:
            x = layer(x, mask)
        return self.encoder_norm(x)

    def memory_kv(self, memory: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each decoder layer's cross-attention keys and values: computed once per batch."""
        return [layer.cross_attn.project_kv(memory) for layer in self.decoder]

    def decode(self, frames: torch.Tensor, positions: torch.Tensor, self_mask: torch.Tensor,
               memory_kv: list, *, memory_mask: torch.Tensor,
               caches: list[KVCache] | None = None, logits_from: int = 0) -> torch.Tensor:
        """FRAMES [B, C, S] at POSITIONS [B, S] -> logits [B, C, S - LOGITS_FROM, V].

        LOGITS_FROM skips the heads over a context prefix whose logits nothing
        reads: C * V outputs per frame, the largest tensor of a training step."""
        x = self.code_embed(frames + self.code_offsets).sum(dim=1) + self.frame_pos(positions)
        x = self.drop(x)
        for i, layer in enumerate(self.decoder):
            x = layer(x, self_mask, memory_kv[i], memory_mask,
                      cache=None if caches is None else caches[i])
        logits = self.heads(self.decoder_norm(x[:, logits_from:]))  # [B, S', C * V]
        b, s, _ = logits.shape
        return logits.view(b, s, self.config.num_codebooks, -1).permute(0, 2, 1, 3)

    # ------------------------------------------------------ policy interface
    def collate(self, rows: Sequence[dict[str, Any]], *, with_targets: bool = True) -> TinyBatch:
        return collate_rows(rows, self.config, with_targets=with_targets)

    def forward(self, batch: TinyBatch) -> TeacherForced:
        return self.forward_teacher(batch)

    def forward_teacher(self, batch: TinyBatch) -> TeacherForced:
        """Logits for every target frame and the EOS after it, context prefix removed."""
        if batch.codes is None:
            raise ValueError("forward_teacher needs a batch collated with_targets=True")
        cfg = self.config
        b, c, t = batch.codes.shape
        if self.training and cfg.cfg_dropout > 0:  # one draw per dropout group (a DPO pair)
            batch = batch.drop_conditioning(batch.draw_dropout(cfg.cfg_dropout))
        bos = batch.codes.new_full((b, c, 1), cfg.bos)
        frames = torch.cat([batch.prefix, bos, batch.codes], dim=2)
        valid = torch.cat([batch.prefix_mask, batch.prefix_mask.new_ones((b, 1 + t))], dim=1)
        positions = (valid.cumsum(1) - 1).clamp(min=0)
        s = frames.shape[2]
        causal = torch.ones((s, s), dtype=torch.bool, device=frames.device).tril()
        eye = torch.eye(s, dtype=torch.bool, device=frames.device)
        # A left-pad query sees only itself (no row of the softmax is empty); real
        # queries see real keys up to themselves. Right pads come after, never seen.
        self_mask = (causal & (valid[:, None, :] | eye))[:, None]
        memory = self.encode(batch.text, batch.text_mask)
        logits = self.decode(frames, positions, self_mask, self.memory_kv(memory),
                             memory_mask=batch.text_mask[:, None, None, :],
                             logits_from=batch.prefix.shape[2])
        # [B, C, T + 1, V]: BOS predicts the first frame, the last frame predicts EOS
        steps = torch.arange(t + 1, device=frames.device)
        mask = (steps[None, :] <= batch.code_lens[:, None]).unsqueeze(1).expand(b, c, t + 1)
        if batch.eos_drawn is not None:  # a sample cut at its step limit drew no EOS: none
            mask = mask & ~((steps[None, :] == batch.code_lens[:, None])
                            & ~batch.eos_drawn[:, None]).unsqueeze(1)
        labels = torch.cat([batch.codes, batch.codes.new_full((b, c, 1), IGNORE)], dim=2)
        labels = labels.scatter(2, batch.code_lens.view(b, 1, 1).expand(b, c, 1), cfg.eos)
        return TeacherForced(logits=logits, labels=labels.masked_fill(~mask, IGNORE), mask=mask)

    def generate(self, batch: TinyBatch, sampling: Sampling,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return tiny_sampling.generate(self, batch, sampling, generator)

    # ---------------------------------------------------------- checkpoints
    def identity(self, *, with_sha256: bool = True) -> Identity:
        sha = hashlib.sha256(self.to_bytes()).hexdigest() if with_sha256 else ""
        return Identity(ARCHITECTURE, asdict(self.config), sha)

    def to_bytes(self) -> bytes:
        """The checkpoint file's bytes (deterministic for given weights)."""
        payload = {"format": FORMAT, "architecture": ARCHITECTURE, "config": asdict(self.config),
                   "codec": self.codec.fingerprint,
                   "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()}}
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        return buffer.getvalue()

    def save(self, path: str | os.PathLike) -> str:
        """Write the checkpoint to PATH atomically; return its sha256."""
        return write_bytes_atomic(path, self.to_bytes())

    @classmethod
    def load(cls, path: str | os.PathLike, *, config: TinyConfig | None = None) -> "TinyCodecLM":
        """The policy saved at PATH; ModelError (one line naming PATH) if it is not a tiny
        policy checkpoint, or not one of CONFIG's size when CONFIG is given (CONFIG's
        :data:`TRAINING_ONLY` values then replace the saved ones)."""
        from ttspo.trainer.run.verify import refused_reason  # (its schemas import pyarrow)

        path = Path(path)
        if not path.is_file():
            raise ModelError(f"{path}: no such checkpoint file")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001  any unreadable file is "not a checkpoint"
            raise ModelError(f"{path}: not a ttspo policy checkpoint ({refused_reason(e)})") from None
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise ModelError(f"{path}: not a ttspo policy checkpoint (no '{FORMAT}' header)")
        if payload.get("architecture") != ARCHITECTURE:
            raise ModelError(f"{path}: a checkpoint of policy '{payload.get('architecture')}', "
                             f"not '{ARCHITECTURE}'")
        saved = TinyConfig.from_dict(payload["config"])
        if config is not None:
            diff = [f"{k}={v} (expected {getattr(config, k)})" for k, v in asdict(saved).items()
                    if getattr(config, k) != v and k not in TRAINING_ONLY]
            if diff:
                raise ModelError(f"{path}: a tiny policy of another size: {', '.join(diff)}")
            saved = config  # the same size; CONFIG's dropout settings
        model = cls(saved)
        if payload.get("codec") != model.codec.fingerprint:
            raise ModelError(f"{path}: made for codec {payload.get('codec')}, "
                             f"the built-in codec is {model.codec.fingerprint}")
        try:
            model.load_state_dict(payload["state_dict"])
        except RuntimeError as e:
            raise ModelError(f"{path}: weights do not fit the config it records "
                             f"({first_line(e, 120)})") from None
        return model


def init_weights(module: nn.Module) -> None:
    """GPT-2 style: normal(0, 0.02) weights, zero biases."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


def load_tiny(arg: str, *, init: str | None = None,
              config: TinyConfig | dict[str, Any] | None = None) -> TinyCodecLM:
    """The registry's loader for ``--policy tiny``: INIT's weights, else a fresh model."""
    if arg:
        raise ModelError(f"policy 'tiny' takes no argument, got 'tiny:{arg}'")
    if isinstance(config, dict):
        config = TinyConfig.from_dict(config)
    return TinyCodecLM.load(init, config=config) if init else TinyCodecLM(config)
