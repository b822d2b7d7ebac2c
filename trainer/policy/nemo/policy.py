"""NeMo's ``MagpieTTSModel`` as a ttspo policy (:class:`ttspo.trainer.policy.base.Policy`).

    policy = load_nemo("/m/magpie.nemo", config={"codec": "/m/codec.nemo"})  # trainer/policy/nemo/load.py
    batch = policy.collate(rows)              # store rows -> the model's own batch dict
    tf = policy.forward_teacher(batch)        # per-codebook logits/labels/mask
    codes, lengths = policy.generate(policy.collate(rows, with_targets=False), Sampling(), g)

Collate builds the batch ``MagpieTTSDataset.collate_fn`` would build for the same
records, deterministically: text tokens from the model's own tokenizer plus its EOS;
context codes cut (from the start, not a random offset) or tiled to the model's
``context_duration_max``; context text padded to the context length when the model
pads it; ``[NO TEXT CONTEXT]`` for an audio context; int64 target codes padded with 0
to the longest row (the model needs exactly that length); the beta-binomial
alignment prior when the config names ``prior_scaling_factor``. The teacher-forced
pass is the model's ``process_batch``: its codebook-major logits ``(B, T+1, C*V)``
become ``(B, C, T+1, V)``, with its EOS-appended targets and loss mask, so
:func:`ttspo.trainer.policy.base.sequence_logps` equals NeMo's DPO log-probs.

Dropout: MagpieTTS trains with dropout and with classifier-free-guidance dropout of
the context. A DPO reference must be deterministic, and a policy equal to its
reference must give loss log 2, so ``load_nemo`` sets both to what the caller
asks (default 0) and warns when either is on. NeMo's ``MagpieTTSModelOfflinePO``
keeps them on for the policy and off for the reference: its first loss is not log 2.

Checkpoints (``save``) are one ``torch.save`` file: a format tag, the architecture,
the model config and the weights (the codec is not included: the config names it),
so ``identity().sha256`` is the sha256 of the file ``save`` writes.
``ttspo.trainer.policy.nemo.load.load_nemo`` builds the model from a ``.nemo`` (or a
Lightning ``.ckpt`` with its config) and,
given ``init``, loads such a checkpoint's weights. ``save_nemo`` writes a ``.nemo``
for NeMo's own tools.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ttspo.builder.core.files import write_bytes_atomic
from ttspo.builder.core.errors import InputError, ModelError
from ttspo.builder.core.schemas import GEN
from ttspo.trainer.policy.nemo.codec import NemoCodec
from ttspo.trainer.policy.base import (CONTEXT_CODES, EOS_DRAWN, SAMPLE_SEED, Identity, Sampling,
                                       TeacherForced)

ARCHITECTURE = "nemo-magpietts"
FORMAT = "ttspo-policy-v1"
NO_TEXT_CONTEXT = "[NO TEXT CONTEXT]"  # what NeMo's dataset feeds for an audio context


class MagpieBatch(dict):
    """The model's batch dict (what process_batch and infer_batch read), movable with .to()."""

    def to(self, device: torch.device | str) -> "MagpieBatch":
        return MagpieBatch({k: v.to(device) if torch.is_tensor(v) else v for k, v in self.items()})

    @property
    def size(self) -> int:
        return int(self["text"].shape[0])


def _quiet():
    """NeMo prints per step ("Decoding timestep", "Not using Prior"): keep stdout clean."""
    return contextlib.redirect_stdout(io.StringIO())


class NemoMagpiePolicy(nn.Module):
    """A MagpieTTSModel behind ttspo's policy interface. ``forward`` is ``forward_teacher``
    (so DistributedDataParallel wraps it as it wraps the tiny policy)."""

    def __init__(self, model, *, source: str = "", local_transformer_logits: bool = False) -> None:
        super().__init__()
        self.model = model
        self.source = source  # the file the model came from (recorded in the identity)
        self.local_transformer_logits = local_transformer_logits
        self.codec = NemoCodec(model._codec_model, model.cfg.codecmodel_path)
        names = list(model.tokenizer.tokenizers)
        self.tokenizer_name = "english_phoneme" if "english_phoneme" in names else names[0]

    def __deepcopy__(self, memo) -> "NemoMagpiePolicy":
        """A second model with these weights (NeMo's modules refuse copy.deepcopy): what
        the loop makes its live reference from. Dropout settings are copied too."""
        from nemo.collections.tts.models import MagpieTTSModel
        from omegaconf import OmegaConf

        with torch.random.fork_rng(devices=[]), _quiet():  # building draws init weights
            model = MagpieTTSModel(cfg=OmegaConf.create(OmegaConf.to_container(self.model.cfg)))
        model.load_state_dict(self.model.state_dict())
        for mine, theirs in zip(self.model.modules(), model.modules()):
            if isinstance(mine, nn.Dropout):
                theirs.p = mine.p
        model.cfg_unconditional_prob = self.model.cfg_unconditional_prob
        model.decoder_input_dropout_prob = self.model.decoder_input_dropout_prob
        copy = NemoMagpiePolicy(model, source=self.source,
                                local_transformer_logits=self.local_transformer_logits)
        return copy.to(next(self.parameters()).device).train(self.training)

    # ------------------------------------------------------------- collate
    def collate(self, rows: Sequence[dict[str, Any]], *, with_targets: bool = True) -> MagpieBatch:
        if not rows:
            raise InputError("no rows to collate")
        m = self.model
        texts = [self._text_tokens(r, i) for i, r in enumerate(rows)]
        contexts = [self._context(r, i) for i, r in enumerate(rows)]
        batch = MagpieBatch(text=_stack([torch.tensor(t) for t in texts], m.tokenizer.pad),
                            text_lens=torch.tensor([len(t) for t in texts], dtype=torch.int32))
        codes = [c for c, _ in contexts]
        batch["context_audio_codes"] = _stack(codes, 0)
        batch["context_audio_codes_lens"] = torch.tensor([c.shape[1] for c in codes], dtype=torch.int32)
        if m.use_text_conditioning_encoder:
            tokens = [torch.tensor(t) for _, (t, _) in contexts]
            batch["context_text_tokens"] = _stack(tokens, 0)
            batch["context_text_tokens_lens"] = torch.tensor([len(t) for t in tokens], dtype=torch.int32)
            batch["has_text_context"] = torch.tensor([has for _, (_, has) in contexts])
        seeds = [r.get(SAMPLE_SEED) for r in rows]
        if any(x is not None for x in seeds):
            if any(x is None for x in seeds):
                i = seeds.index(None)
                raise InputError(f"{_name(rows[i], i)}: no {SAMPLE_SEED} while other rows "
                                 "of the batch have one")
            batch["sample_seeds"] = torch.tensor([int(x) for x in seeds], dtype=torch.int64)
        if with_targets:
            targets = [self._target(r, i) for i, r in enumerate(rows)]
            batch["audio_codes"] = _stack(targets, 0)
            batch["audio_codes_lens"] = torch.tensor([t.shape[1] for t in targets], dtype=torch.int32)
            prior = self._prior(texts, targets)
            if prior is not None:
                batch["align_prior_matrix"] = prior
            drawn = [r.get(EOS_DRAWN) for r in rows]  # data.eos_target=sampled
            if any(x is not None for x in drawn):
                if any(x is None for x in drawn):
                    i = drawn.index(None)
                    raise InputError(f"{_name(rows[i], i)}: no {EOS_DRAWN} while other rows "
                                     "of the batch have one")
                batch[EOS_DRAWN] = torch.tensor([bool(x) for x in drawn])
        return batch

    def _text_tokens(self, row: dict[str, Any], i: int) -> list[int]:
        text = row.get(GEN.text)
        if not isinstance(text, str) or not text:
            raise InputError(f"{_name(row, i)}: no text ({GEN.text} is {text!r})")
        return list(self.model.tokenizer.encode(text=text, tokenizer_name=self.tokenizer_name)) + [
            self.model.eos_id]

    def _context(self, row: dict[str, Any], i: int):
        """(context codes [C, n] int64, (context text tokens, has_text_context))."""
        m = self.model
        frames = int(m.cfg.context_duration_max * m.sample_rate / m.codec_model_samples_per_frame)
        value = row.get(CONTEXT_CODES)
        if value is None:
            codes = torch.zeros((m.data_num_audio_codebooks, 0), dtype=torch.int64)
        else:
            codes = self._codes(value, f"{_name(row, i)}: {CONTEXT_CODES}")
            if codes.shape[1] == 0:
                raise InputError(f"{_name(row, i)}: {CONTEXT_CODES} has no frames")
            repeats = -(-frames // codes.shape[1])  # tile a short context, as NeMo's dataset does
            codes = codes.repeat(1, repeats)[:, :frames]
        context_text = row.get(GEN.context_text)
        has_text = value is None and bool(context_text)
        if value is None and not has_text:
            raise InputError(f"{_name(row, i)}: neither {CONTEXT_CODES} nor {GEN.context_text}")
        name = m.text_conditioning_tokenizer_name
        tokens = list(m.tokenizer.encode(context_text if has_text else NO_TEXT_CONTEXT, name))
        if m.pad_context_text_to_max_duration:
            need = frames + 2  # + context BOS and EOS, as NeMo's dataset pads
            tokens = (tokens + [m.tokenizer.tokenizer_pad_ids[name]] * need)[:need]
        return codes, (tokens, has_text)

    def _target(self, row: dict[str, Any], i: int) -> torch.Tensor:
        if row.get(GEN.codes) is None:
            raise InputError(f"{_name(row, i)}: no {GEN.codes} to train on")
        codes = self._codes(row[GEN.codes], f"{_name(row, i)}: {GEN.codes}")
        if codes.shape[1] == 0:
            raise InputError(f"{_name(row, i)}: {GEN.codes} has no frames")
        return codes

    def _codes(self, value: Any, what: str) -> torch.Tensor:
        c, size = self.model.data_num_audio_codebooks, self.codec.codebook_size
        try:
            codes = np.asarray([np.asarray(x) for x in value] if isinstance(value, list) else value)
        except ValueError as e:
            raise InputError(f"{what}: codebooks of unequal length ({e})") from None
        if codes.ndim != 2 or codes.shape[0] != c:
            raise InputError(f"{what}: shape {list(codes.shape)}, expected [{c}, frames]")
        if codes.size and (codes.min() < 0 or codes.max() >= size):
            raise InputError(f"{what}: codes outside [0, {size}): [{codes.min()}, {codes.max()}]")
        return torch.from_numpy(codes.astype(np.int64))

    def _prior(self, texts: list[list[int]], targets: list[torch.Tensor]) -> torch.Tensor | None:
        scaling = self.model.cfg.get("prior_scaling_factor")
        if scaling is None:
            return None
        from nemo.collections.tts.parts.utils.tts_dataset_utils import beta_binomial_prior_distribution

        priors = [torch.tensor(beta_binomial_prior_distribution(len(t), c.shape[1] + 1, scaling),
                               dtype=torch.float32) for t, c in zip(texts, targets)]
        out = torch.zeros(len(priors), max(p.shape[0] for p in priors), max(p.shape[1] for p in priors))
        for i, p in enumerate(priors):
            out[i, : p.shape[0], : p.shape[1]] = p
        return out

    # ------------------------------------------------------ teacher forcing
    def forward(self, batch: dict) -> TeacherForced:
        return self.forward_teacher(batch)

    def forward_teacher(self, batch: dict) -> TeacherForced:
        """The model's process_batch, its logits split per codebook: [B, C, T+1, V]."""
        if "audio_codes" not in batch:
            raise ValueError("forward_teacher needs a batch collated with_targets=True")
        drawn = batch.get(EOS_DRAWN)
        with _quiet():
            out = self.model.process_batch(MagpieBatch({k: v for k, v in batch.items() if k != EOS_DRAWN}))
        logits = out["logits"]
        if self.local_transformer_logits:
            if out.get("local_transformer_logits") is None:
                raise ModelError("local_transformer_logits asked, but the model has no local transformer")
            logits = out["local_transformer_logits"]
        b, t, _ = logits.shape
        c, v = self.model.num_audio_codebooks, self.model.num_all_tokens_per_codebook
        logits = logits.view(b, t, c, v).permute(0, 2, 1, 3)
        labels, mask = out["audio_codes_target"].long(), out["loss_mask"].bool()
        if drawn is not None:
            mask = self._without_undrawn_eos(labels, mask, batch["audio_codes_lens"], drawn)
        return TeacherForced(logits=logits, labels=labels, mask=mask,
                             alignment_loss=self._alignment(out))

    def _without_undrawn_eos(self, labels, mask, lens, drawn) -> torch.Tensor:
        """MASK without the EOS target of the rows that drew none (data.eos_target=sampled):
        NeMo's target puts EOS on every codebook right after a row's codes; checked, so a
        model that lays its targets out otherwise is an error, not a wrong loss."""
        rows = torch.nonzero(~drawn.to(mask.device)).flatten()
        if not len(rows):
            return mask
        at = lens.to(mask.device).long()[rows]
        if not bool((labels[rows, :, at] == self.model.audio_eos_id).all()):
            raise ModelError("data.eos_target=sampled: this model's targets do not end in "
                             "EOS on every codebook right after the codes")
        mask = mask.clone()
        mask[rows, :, at] = False
        return mask

    def _alignment(self, out: dict) -> torch.Tensor | None:
        """The model's alignment loss row by row ([B]), or None when it has none.

        process_batch reports one value, NeMo's ForwardSumLoss over the batch: a CTC
        loss with mean reduction, the mean over rows of (row loss / its text length),
        times alignment_loss_scale. Recomputed here per row with the model's own
        compute_alignment_loss on the same attention, so the mean over any rows (DPO's
        chosen half of a chosen + rejected forward) is NeMo's value for those rows."""
        if out.get("alignment_loss") is None:
            return None
        m = self.model
        if m.frame_stacking_factor != 1:
            raise ModelError("the alignment loss per row needs frame_stacking_factor 1 "
                             f"(the model has {m.frame_stacking_factor})")
        scores = [attn["cross_attn_probabilities"][1] for i, attn in enumerate(out["attn_info"])
                  if i in m.ctc_prior_layer_ids]
        text_lens, audio_lens = out["text_lens"], out["audio_codes_lens_target"]
        return torch.stack([m.compute_alignment_loss([s[i:i + 1] for s in scores],
                                                     text_lens[i:i + 1], audio_lens[i:i + 1],
                                                     out["dec_context_size"])
                            for i in range(text_lens.shape[0])])

    # ------------------------------------------------------------ sampling
    def generate(self, batch: dict, sampling: Sampling,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample with the model's infer_batch: codes [B, C, T] (0 after each length), lengths.

        NeMo draws a batch's noise from one stream, so when the rows carry
        ``sample_seed`` (the batch then holds ``sample_seeds``) each row is sampled
        alone, seeded by its own seed: its codes do not depend on its batch. Otherwise
        the whole batch is one call, seeded from GENERATOR.
        """
        m = self.model
        if sampling.max_steps < 4:
            raise ValueError(f"max_steps must be at least 4 for a NeMo codec, got {sampling.max_steps}")
        params = m.inference_parameters
        params.temperature = max(float(sampling.temperature), 1e-5)  # NeMo divides by it
        params.topk = sampling.top_k if sampling.top_k > 0 else m.num_all_tokens_per_codebook
        params.topk = min(params.topk, m.num_all_tokens_per_codebook)
        params.cfg_scale = float(sampling.cfg_scale)
        params.max_decoder_steps = int(sampling.max_steps)
        m.use_kv_cache_for_inference = bool(sampling.use_kv_cache)
        seeds = batch.get("sample_seeds")
        if seeds is None:
            parts = [(batch, int(torch.randint(0, 2**62, (1,), generator=generator)))]
        else:
            parts = [(_row(batch, i), int(s)) for i, s in enumerate(seeds.tolist())]
        was_training = self.training
        self.eval()
        try:
            outs = [self._infer(part, seed, sampling.cfg_scale != 1.0) for part, seed in parts]
        finally:
            self.train(was_training)
        lens = torch.cat([n for _, n in outs])
        codes = torch.zeros((len(lens), m.num_audio_codebooks, int(lens.max())), dtype=torch.int64)
        row = 0
        for c, n in outs:
            for k in range(c.shape[0]):
                codes[row, :, : n[k]] = c[k, :, : n[k]]
                row += 1
        return codes, lens

    def _infer(self, batch: dict, seed: int, use_cfg: bool) -> tuple[torch.Tensor, torch.Tensor]:
        # NeMo samples from the global RNG: fork it so a run's other streams do not move.
        try:
            with torch.random.fork_rng(devices=[]), _quiet():
                torch.manual_seed(seed)
                out = self.model.infer_batch(batch, use_cfg=use_cfg)
        finally:
            # infer_batch leaves its KV cache on: the next teacher-forced pass (GRPO's
            # log-probs of these samples) would attend to stale keys. Switch it off.
            self.model.decoder.reset_cache(use_cache=False)
        return out.predicted_codes.long().cpu(), out.predicted_codes_lens.long().cpu()

    # --------------------------------------------------------- checkpoints
    def config_dict(self) -> dict[str, Any]:
        from omegaconf import OmegaConf

        return OmegaConf.to_container(self.model.cfg, resolve=True)

    def to_bytes(self) -> bytes:
        payload = {"format": FORMAT, "architecture": ARCHITECTURE, "config": self.config_dict(),
                   "codec": self.codec.fingerprint,
                   "state_dict": {k: v.detach().cpu() for k, v in self.model.state_dict().items()}}
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        return buffer.getvalue()

    def identity(self, *, with_sha256: bool = True) -> Identity:
        cfg = self.config_dict()
        summary = {k: cfg.get(k) for k in ("model_type", "embedding_dim", "codecmodel_path")}
        summary.update(source=self.source, num_codebooks=self.model.num_audio_codebooks,
                       codebook_size=self.model.codebook_size,
                       # what changes the logits besides the weights: the whole model
                       # config (policy.model's config=YAML) and which logits are read
                       model_config_sha256=hashlib.sha256(json.dumps(
                           cfg, sort_keys=True, default=str).encode()).hexdigest(),
                       local_transformer_logits=self.local_transformer_logits)
        sha = hashlib.sha256(self.to_bytes()).hexdigest() if with_sha256 else ""
        return Identity(ARCHITECTURE, summary, sha)

    def save(self, path: str | os.PathLike) -> str:
        return write_bytes_atomic(path, self.to_bytes())

    def save_nemo(self, path: str | os.PathLike) -> Path:
        """The weights as a ``.nemo`` archive NeMo's own scripts restore."""
        self.model.save_to(str(path))
        return Path(path)


def _row(batch: dict, i: int) -> MagpieBatch:
    """Row I of BATCH alone, every padded axis cut to its own length (NeMo needs that)."""
    lengths = {"text": "text_lens", "context_audio_codes": "context_audio_codes_lens",
               "context_text_tokens": "context_text_tokens_lens", "audio_codes": "audio_codes_lens"}
    out = MagpieBatch()
    for key, value in batch.items():
        if not torch.is_tensor(value) or key == "sample_seeds":
            continue
        value = value[i : i + 1]
        if key in lengths:
            value = value[..., : int(batch[lengths[key]][i])]
        out[key] = value
    return out


def _name(row: dict[str, Any], i: int) -> str:
    return str(row.get(GEN.generation_id) or f"row {i}")


def _stack(tensors: list[torch.Tensor], pad: int) -> torch.Tensor:
    """Right-pad 1-D or [C, T] tensors to the longest (NeMo needs exactly that length)."""
    longest = max(t.shape[-1] for t in tensors)
    out = torch.full((len(tensors), *tensors[0].shape[:-1], longest), pad, dtype=torch.int64)
    for i, t in enumerate(tensors):
        out[i, ..., : t.shape[-1]] = t
    return out
