"""The tiny policy's inputs: its config, token ids, batch, and the collator of store rows.

Split from :mod:`ttspo.trainer.policy.tiny` (which re-exports these names) to keep both
files short; see that module's docstring for the token layout and padding rules.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Sequence

import torch

from ttspo.builder.core.errors import InputError, ModelError
from ttspo.builder.core.columns import GEN
from ttspo.trainer.policy import codec as codec_mod
from ttspo.trainer.policy.base import CONTEXT_CODES, DROPOUT_GROUP, EOS_DRAWN, SAMPLE_SEED

# Text tokens: bytes 0..255, then the specials.
TEXT_PAD, TEXT_BOS, TEXT_EOS, TEXT_SEP = 256, 257, 258, 259
TEXT_VOCAB = 260
AUDIO_SPECIALS = 3  # BOS, EOS, PAD after each codebook's codes
IGNORE = -100  # label at padded positions (the mask says so too)


@dataclass(frozen=True, kw_only=True)
class TinyConfig:
    """Size of a TinyCodecLM. The codebook shape must match the codec's."""

    d_model: int = 128
    n_heads: int = 4
    encoder_layers: int = 2
    decoder_layers: int = 3
    d_ffn: int = 512
    dropout: float = 0.0  # 0 so that a policy equal to its reference gives DPO loss log 2
    # In training mode, the probability that a row's text and context are dropped, so
    # the unconditional branch that classifier-free guidance uses is learned (NeMo's
    # cfg_unconditional_prob). Drawn from torch's global RNG, once per dropout group
    # (a DPO pair's two rows share one draw), else once per row.
    cfg_dropout: float = 0.0
    max_text_len: int = 512  # encoder tokens: bytes of context text + text, plus 3
    max_frames: int = 1024  # decoder positions: context frames + BOS + target frames
    num_codebooks: int = codec_mod.NUM_CODEBOOKS
    codebook_size: int = codec_mod.CODEBOOK_SIZE

    def __post_init__(self) -> None:
        sizes = ("d_model", "n_heads", "d_ffn", "max_text_len", "max_frames", "num_codebooks",
                 "codebook_size")
        for name in sizes:
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ModelError(f"tiny policy config: {name} must be a positive integer, "
                                 f"got {getattr(self, name)!r}")
        for name in ("encoder_layers", "decoder_layers"):  # range(-1) would build none, silently
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ModelError(f"tiny policy config: {name} must be an integer >= 0, got {value!r}")
        if self.d_model % self.n_heads:
            raise ModelError(f"tiny policy config: d_model {self.d_model} is not a multiple "
                             f"of n_heads {self.n_heads}")
        for name in ("dropout", "cfg_dropout"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ModelError(f"tiny policy config: {name} must lie in [0, 1], "
                                 f"got {getattr(self, name)!r}")

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


@dataclass(kw_only=True)
class TinyBatch:
    """Collated rows. text [B, L] + text_mask; prefix [B, C, P] left-padded context codes
    + prefix_mask [B, P]; codes [B, C, T] right-padded targets + code_lens [B] (None
    without targets); seeds [B] (None unless the rows carry ``sample_seed``);
    dropout_groups [B] (None unless the rows carry ``dropout_group``)."""

    text: torch.Tensor
    text_mask: torch.Tensor
    prefix: torch.Tensor
    prefix_mask: torch.Tensor
    codes: torch.Tensor | None = None
    code_lens: torch.Tensor | None = None
    seeds: torch.Tensor | None = None
    dropout_groups: torch.Tensor | None = None
    eos_drawn: torch.Tensor | None = None  # [B] bool (rows' ``eos_drawn``); None: all True

    @property
    def size(self) -> int:
        return int(self.text.shape[0])

    def to(self, device: torch.device | str) -> "TinyBatch":
        moved = {f.name: (None if getattr(self, f.name) is None else getattr(self, f.name).to(device))
                 for f in fields(self)}
        return TinyBatch(**moved)

    def draw_dropout(self, p: float) -> torch.Tensor:
        """[B] bool: which rows lose their conditioning, each with probability P; rows
        of one dropout group share one draw (torch's global RNG, one number per group)."""
        if self.dropout_groups is None:
            return torch.rand(self.size, device=self.text.device) < p
        groups, row_group = torch.unique(self.dropout_groups, return_inverse=True)
        return (torch.rand(len(groups), device=self.text.device) < p)[row_group]

    def drop_conditioning(self, rows: torch.Tensor) -> "TinyBatch":
        """This batch with the text and context of ROWS ([B] bool) dropped: the encoder
        reads ``BOS SEP EOS``, the context prefix is all padding (CFG's unconditional branch)."""
        text = self.text.clone()
        text[rows] = TEXT_PAD
        text[rows, :3] = torch.tensor([TEXT_BOS, TEXT_SEP, TEXT_EOS], device=text.device)
        return replace(self, text=text, text_mask=text != TEXT_PAD,
                       prefix_mask=self.prefix_mask & ~rows[:, None])


# ------------------------------------------------------------------ collate
def row_name(row: dict[str, Any], i: int) -> str:
    return str(row.get(GEN.generation_id) or row.get(GEN.prompt_id) or f"row {i}")


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


def code_array(value: Any, cfg: TinyConfig, what: str) -> torch.Tensor:
    """VALUE ([C][T] lists, list of arrays, an array, or an integer tensor) as int64
    [C, T] on the CPU, checked. Tensors need no numpy (bench/gpu.py's synthetic rows)."""
    if isinstance(value, torch.Tensor):
        codes = value.detach().cpu()
        if codes.numel() and (codes.is_floating_point() or codes.is_complex()
                              or codes.dtype == torch.bool):
            raise InputError(f"{what}: codes of type {str(codes.dtype).removeprefix('torch.')}, "
                             "not integers")
    else:
        codes = torch.from_numpy(int_array(value, what))
    if codes.ndim != 2 or codes.shape[0] != cfg.num_codebooks:
        raise InputError(f"{what}: shape {list(codes.shape)}, expected [{cfg.num_codebooks}, frames]")
    if codes.shape[1]:
        low, high = int(codes.min()), int(codes.max())
        if low < 0 or high >= cfg.codebook_size:
            raise InputError(f"{what}: codes outside [0, {cfg.codebook_size}): [{low}, {high}]")
    return codes.long()


def int_array(value: Any, what: str) -> Any:
    """VALUE (rows from Lance/Arrow: [C] lists, or an object array, of per-codebook
    lists; or an array) as an int64 numpy array; numpy is imported here only."""
    import numpy as np

    nested = isinstance(value, (list, tuple)) or (isinstance(value, np.ndarray) and value.dtype == object)
    try:
        codes = np.asarray([np.asarray(c) for c in value] if nested else value)
    except ValueError as e:  # ragged codebooks
        raise InputError(f"{what}: codebooks of unequal length ({e})") from None
    if codes.size and codes.dtype.kind not in "iu":
        raise InputError(f"{what}: codes of type {codes.dtype}, not integers")
    if codes.dtype.kind == "u" and codes.size and codes.max() > np.iinfo(np.int64).max:
        raise InputError(f"{what}: codes outside int64: max {codes.max()}")
    return codes.astype(np.int64)


def target_codes(row: dict[str, Any], i: int, cfg: TinyConfig) -> torch.Tensor:
    if row.get(GEN.codes) is None:
        raise InputError(f"{row_name(row, i)}: no {GEN.codes} to train on")
    return code_array(row[GEN.codes], cfg, f"{row_name(row, i)}: {GEN.codes}")


def collate_rows(rows: Sequence[dict[str, Any]], cfg: TinyConfig, *,
                 with_targets: bool = True) -> TinyBatch:
    if not rows:
        raise InputError("no rows to collate")
    texts = [text_tokens(r, i, cfg.max_text_len) for i, r in enumerate(rows)]
    empty = torch.zeros((cfg.num_codebooks, 0), dtype=torch.long)
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
            prefix[i, :, pwidth - p.shape[1]:] = p
            prefix_mask[i, pwidth - p.shape[1]:] = True
    batch = TinyBatch(text=text, text_mask=text != TEXT_PAD, prefix=prefix, prefix_mask=prefix_mask,
                      seeds=row_seeds(rows), dropout_groups=row_groups(rows))
    if targets is not None:
        lens = torch.tensor([t.shape[1] for t in targets], dtype=torch.long)
        codes = torch.full((b, cfg.num_codebooks, int(lens.max())), cfg.pad, dtype=torch.long)
        for i, t in enumerate(targets):
            codes[i, :, :t.shape[1]] = t
        batch.codes, batch.code_lens = codes, lens
        drawn = row_ints(rows, EOS_DRAWN)
        batch.eos_drawn = None if drawn is None else drawn.bool()
    return batch


def row_ints(rows: Sequence[dict[str, Any]], key: str) -> torch.Tensor | None:
    """The rows' KEY values [B] int64, or None when no row has one; all or none."""
    have = [r.get(key) is not None for r in rows]
    if not any(have):
        return None
    if not all(have):
        missing = row_name(rows[have.index(False)], have.index(False))
        raise InputError(f"{missing}: no {key} while other rows of the batch have one")
    return torch.tensor([int(r[key]) for r in rows], dtype=torch.long)


def row_seeds(rows: Sequence[dict[str, Any]]) -> torch.Tensor | None:
    for i, r in enumerate(rows):  # before any tensor: 2**63 would overflow it
        if r.get(SAMPLE_SEED) is not None and not 0 <= int(r[SAMPLE_SEED]) < 2 ** 63:
            raise InputError(f"{row_name(r, i)}: {SAMPLE_SEED} {r[SAMPLE_SEED]} is not in [0, 2**63)")
    return row_ints(rows, SAMPLE_SEED)


def row_groups(rows: Sequence[dict[str, Any]]) -> torch.Tensor | None:
    """The rows' dropout groups [B] int64, or None when no row has one."""
    return row_ints(rows, DROPOUT_GROUP)
