"""TinyCodecLM: the built-in policy, a small encoder-decoder codec LM of the MagpieTTS family.

It implements :class:`ttspo.trainer.policy.Policy` over the built-in codec
(:mod:`ttspo.trainer.codec`: 8 codebooks x 256, ~21.5 frames per second).

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
    :data:`ttspo.trainer.policy.SAMPLE_SEED`), else by a seed drawn for it from the
    caller's generator in row order.
Checkpoints
    One ``torch.save`` file: a format tag, the architecture, the config, the codec's
    fingerprint and the weights. Its bytes are a function of the weights, so
    ``identity().sha256`` equals the sha256 of the file ``save`` writes.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ttspo.builder.core.errors import InputError, ModelError
from ttspo.builder.core.schemas import GEN
from ttspo.trainer import codec as codec_mod
from ttspo.trainer.policy import CONTEXT_CODES, SAMPLE_SEED, Identity, Sampling, TeacherForced
from ttspo.trainer.tiny_blocks import DecoderLayer, EncoderLayer, KVCache

ARCHITECTURE = "tiny"
FORMAT = "ttspo-policy-v1"  # the header that tells a checkpoint from any other file

# Text tokens: bytes 0..255, then the specials.
TEXT_PAD, TEXT_BOS, TEXT_EOS, TEXT_SEP = 256, 257, 258, 259
TEXT_VOCAB = 260
AUDIO_SPECIALS = 3  # BOS, EOS, PAD after each codebook's codes
IGNORE = -100  # label at padded positions (the mask says so too)


@dataclass(frozen=True)
class TinyConfig:
    """Size of a TinyCodecLM. The codebook shape must match the codec's."""

    d_model: int = 128
    n_heads: int = 4
    encoder_layers: int = 2
    decoder_layers: int = 3
    d_ffn: int = 512
    dropout: float = 0.0  # 0 so that a policy equal to its reference gives DPO loss log 2
    max_text_len: int = 512  # encoder tokens: bytes of context text + text, plus 3
    max_frames: int = 1024  # decoder positions: context frames + BOS + target frames
    num_codebooks: int = codec_mod.NUM_CODEBOOKS
    codebook_size: int = codec_mod.CODEBOOK_SIZE

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TinyConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ModelError(f"unknown tiny policy config key '{unknown[0]}' "
                             f"(known: {', '.join(sorted(known))})")
        return cls(**values)

    @property
    def vocab(self) -> int:
        return self.codebook_size + AUDIO_SPECIALS

    @property
    def bos(self) -> int:
        return self.codebook_size

    @property
    def eos(self) -> int:
        return self.codebook_size + 1

    @property
    def pad(self) -> int:
        return self.codebook_size + 2


@dataclass
class TinyBatch:
    """Collated rows. text [B, L] + text_mask; prefix [B, C, P] left-padded context codes
    + prefix_mask [B, P]; codes [B, C, T] right-padded targets + code_lens [B] (None
    without targets); seeds [B] (None unless the rows carry ``sample_seed``)."""

    text: torch.Tensor
    text_mask: torch.Tensor
    prefix: torch.Tensor
    prefix_mask: torch.Tensor
    codes: torch.Tensor | None = None
    code_lens: torch.Tensor | None = None
    seeds: torch.Tensor | None = None

    @property
    def size(self) -> int:
        return int(self.text.shape[0])

    def to(self, device: torch.device | str) -> "TinyBatch":
        moved = {f.name: (None if getattr(self, f.name) is None else getattr(self, f.name).to(device))
                 for f in fields(self)}
        return TinyBatch(**moved)


# ------------------------------------------------------------------ collate
def row_name(row: dict[str, Any], i: int) -> str:
    return str(row.get(GEN.generation_id) or f"row {i}")


def text_tokens(row: dict[str, Any], i: int, max_len: int) -> list[int]:
    context = (row.get(GEN.context_text) or "").encode("utf-8")
    text = row.get(GEN.text)
    if not isinstance(text, str):
        raise InputError(f"{row_name(row, i)}: no text ({GEN.text} is {text!r})")
    tokens = [TEXT_BOS, *context, TEXT_SEP, *text.encode("utf-8"), TEXT_EOS]
    if len(tokens) > max_len:
        raise InputError(f"{row_name(row, i)}: context text + text take {len(tokens)} tokens, "
                         f"more than the policy's max_text_len {max_len}")
    return tokens


def code_array(value: Any, cfg: TinyConfig, what: str) -> np.ndarray:
    """VALUE ([C][T] lists, list of arrays, or an array) as int64 [C, T], checked."""
    try:
        codes = np.asarray([np.asarray(c) for c in value] if isinstance(value, list) else value)
    except ValueError as e:  # ragged codebooks
        raise InputError(f"{what}: codebooks of unequal length ({e})") from None
    if codes.ndim != 2 or codes.shape[0] != cfg.num_codebooks:
        raise InputError(f"{what}: shape {list(codes.shape)}, expected [{cfg.num_codebooks}, frames]")
    if codes.size and (codes.min() < 0 or codes.max() >= cfg.codebook_size):
        raise InputError(f"{what}: codes outside [0, {cfg.codebook_size}): "
                         f"[{codes.min()}, {codes.max()}]")
    return codes.astype(np.int64)


def target_codes(row: dict[str, Any], i: int, cfg: TinyConfig) -> np.ndarray:
    if row.get(GEN.codes) is None:
        raise InputError(f"{row_name(row, i)}: no {GEN.codes} to train on")
    return code_array(row[GEN.codes], cfg, f"{row_name(row, i)}: {GEN.codes}")


def collate_rows(rows: Sequence[dict[str, Any]], cfg: TinyConfig, *,
                 with_targets: bool = True) -> TinyBatch:
    if not rows:
        raise InputError("no rows to collate")
    texts = [text_tokens(r, i, cfg.max_text_len) for i, r in enumerate(rows)]
    empty = np.zeros((cfg.num_codebooks, 0), dtype=np.int64)
    prefixes = [empty if r.get(CONTEXT_CODES) is None
                else code_array(r[CONTEXT_CODES], cfg, f"{row_name(r, i)}: {CONTEXT_CODES}")
                for i, r in enumerate(rows)]
    targets = None
    if with_targets:
        targets = [target_codes(r, i, cfg) for i, r in enumerate(rows)]
        for i, (p, t) in enumerate(zip(prefixes, targets)):
            if p.shape[1] + 1 + t.shape[1] > cfg.max_frames:
                raise InputError(f"{row_name(rows[i], i)}: {p.shape[1]} context + {t.shape[1]} "
                                 f"target frames exceed the policy's max_frames {cfg.max_frames}")
    b, width, pwidth = len(rows), max(map(len, texts)), max(p.shape[1] for p in prefixes)
    text = torch.full((b, width), TEXT_PAD, dtype=torch.long)
    prefix = torch.full((b, cfg.num_codebooks, pwidth), cfg.pad, dtype=torch.long)
    prefix_mask = torch.zeros((b, pwidth), dtype=torch.bool)
    for i, (tok, p) in enumerate(zip(texts, prefixes)):
        text[i, :len(tok)] = torch.tensor(tok)
        if p.shape[1]:  # left-padded: BOS lands in column pwidth for every row
            prefix[i, :, pwidth - p.shape[1]:] = torch.from_numpy(p)
            prefix_mask[i, pwidth - p.shape[1]:] = True
    batch = TinyBatch(text, text != TEXT_PAD, prefix, prefix_mask, seeds=row_seeds(rows))
    if targets is not None:
        lens = torch.tensor([t.shape[1] for t in targets], dtype=torch.long)
        codes = torch.full((b, cfg.num_codebooks, int(lens.max())), cfg.pad, dtype=torch.long)
        for i, t in enumerate(targets):
            codes[i, :, :t.shape[1]] = torch.from_numpy(t)
        batch.codes, batch.code_lens = codes, lens
    return batch


def row_seeds(rows: Sequence[dict[str, Any]]) -> torch.Tensor | None:
    have = [r.get(SAMPLE_SEED) is not None for r in rows]
    if not any(have):
        return None
    if not all(have):
        missing = row_name(rows[have.index(False)], have.index(False))
        raise InputError(f"{missing}: no {SAMPLE_SEED} while other rows of the batch have one")
    return torch.tensor([int(r[SAMPLE_SEED]) for r in rows], dtype=torch.long)


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
               memory_kv: list, memory_mask: torch.Tensor,
               caches: list[KVCache] | None = None) -> torch.Tensor:
        """FRAMES [B, C, S] at POSITIONS [B, S] -> logits [B, C, S, V]."""
        x = self.code_embed(frames + self.code_offsets).sum(dim=1) + self.frame_pos(positions)
        x = self.drop(x)
        for i, layer in enumerate(self.decoder):
            x = layer(x, self_mask, memory_kv[i], memory_mask, None if caches is None else caches[i])
        logits = self.heads(self.decoder_norm(x))  # [B, S, C * V]
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
                             batch.text_mask[:, None, None, :])
        logits = logits[:, :, batch.prefix.shape[2]:]  # [B, C, T + 1, V]
        steps = torch.arange(t + 1, device=frames.device)
        mask = (steps[None, :] <= batch.code_lens[:, None]).unsqueeze(1).expand(b, c, t + 1)
        labels = torch.cat([batch.codes, batch.codes.new_full((b, c, 1), IGNORE)], dim=2)
        labels = labels.scatter(2, batch.code_lens.view(b, 1, 1).expand(b, c, 1), cfg.eos)
        return TeacherForced(logits=logits, labels=labels.masked_fill(~mask, IGNORE), mask=mask)

    def generate(self, batch: TinyBatch, sampling: Sampling,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        from ttspo.trainer.tiny_sampling import generate

        return generate(self, batch, sampling, generator)

    # ---------------------------------------------------------- checkpoints
    def identity(self) -> Identity:
        return Identity(ARCHITECTURE, asdict(self.config), hashlib.sha256(self.to_bytes()).hexdigest())

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
        data, path = self.to_bytes(), Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return hashlib.sha256(data).hexdigest()

    @classmethod
    def load(cls, path: str | os.PathLike, *, config: TinyConfig | None = None) -> "TinyCodecLM":
        """The policy saved at PATH; ModelError (one line naming PATH) if it is not a tiny
        policy checkpoint, or not one of CONFIG's size when CONFIG is given."""
        path = Path(path)
        if not path.is_file():
            raise ModelError(f"{path}: no such checkpoint file")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001  any unreadable file is "not a checkpoint"
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
            raise ModelError(f"{path}: not a ttspo policy checkpoint ({reason})") from None
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise ModelError(f"{path}: not a ttspo policy checkpoint (no '{FORMAT}' header)")
        if payload.get("architecture") != ARCHITECTURE:
            raise ModelError(f"{path}: a checkpoint of policy '{payload.get('architecture')}', "
                             f"not '{ARCHITECTURE}'")
        saved = TinyConfig.from_dict(payload["config"])
        if config is not None and config != saved:
            diff = [f"{k}={v} (expected {getattr(config, k)})" for k, v in asdict(saved).items()
                    if getattr(config, k) != v]
            raise ModelError(f"{path}: a tiny policy of another size: {', '.join(diff)}")
        model = cls(saved)
        if payload.get("codec") != model.codec.fingerprint:
            raise ModelError(f"{path}: made for codec {payload.get('codec')}, "
                             f"the built-in codec is {model.codec.fingerprint}")
        try:
            model.load_state_dict(payload["state_dict"])
        except RuntimeError as e:
            raise ModelError(f"{path}: weights do not fit the config it records "
                             f"({str(e).splitlines()[0][:120]})") from None
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
