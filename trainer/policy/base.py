"""The one policy interface that DPO, precompute-ref, generate, GRPO and NeMo share.

A policy is a codec language model plus its codec. The loops never look inside a
batch: they ask the policy to collate store rows, to run the teacher-forced pass,
and to sample. Losses never see a model: they take the log-prob tensors that
:func:`sequence_logps` and :func:`token_logps` make from a :class:`TeacherForced`.

Rows (what ``collate`` takes) are plain dicts keyed by the store's column names
(``ttspo.builder.core.schemas``: ``GEN.text``, ``GEN.context_text``, ``GEN.codes``)
plus ``context_codes``: the context audio's codec codes ``[C, T]`` (numpy int), or
None for a text context. The data layer resolves context codes once per prompt
(its ``*_codes.pt`` file, else the codec encodes the context audio).

A row may also carry ``sample_seed`` (:data:`SAMPLE_SEED`, an int): ``generate``
then draws that row's noise from a generator seeded with it alone, so a row's
samples do not depend on the batch it shares (sharded runs equal unsharded ones).
Without it, each row's seed is drawn from the ``generator`` argument in row order.
(Added with the tiny policy; the rest of this interface is as first written, but
``identity(with_sha256=False)``, which skips serialising the weights when only the
architecture and config are wanted: the reference-cache key, a checkpoint's meta.)

A row may also carry ``dropout_group`` (:data:`DROPOUT_GROUP`, an int): in training
mode, rows of one batch with equal groups share ONE draw of conditioning (CFG)
dropout. DPO's collator gives a pair's chosen and rejected row the same group, so
a pair never compares a conditioned chosen with an unconditioned rejected. (NeMo's
MagpieTTS draws once per batch: every row shares it, which satisfies this too.)

Implementations: ``ttspo.trainer.policy.tiny.TinyCodecLM`` (built-in codec) and, later,
the NeMo MagpieTTS adapter. Both are registered in :data:`POLICIES` by name, so the
CLI's ``--policy tiny`` / ``--policy nemo:PATH`` picks one (:func:`load_policy`).
"""

from __future__ import annotations

import hashlib
import importlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, Sequence

import torch

from ttspo.builder.core.errors import ModelError

CONTEXT_CODES = "context_codes"  # the row key the data layer adds (not a table column)
SAMPLE_SEED = "sample_seed"  # optional row key: the seed of that row's sampling noise
DROPOUT_GROUP = "dropout_group"  # optional row key: rows sharing one conditioning-dropout draw
# Optional row key (data.eos_target=sampled): False for a sample that ran to its step
# limit without drawing EOS; its target then ends without EOS (no EOS was sampled).
# Absent or True: the target ends in EOS on every codebook (NeMo's).
EOS_DRAWN = "eos_drawn"

# name -> "module:loader"; a loader takes (argument after "name:", init=, config=).
# Imported on use, so naming a policy never imports another one's dependencies.
POLICIES: dict[str, str] = {
    "tiny": "ttspo.trainer.policy.tiny:load_tiny",
    "nemo": "ttspo.trainer.policy.nemo.load:load_nemo",  # nemo:MODEL.nemo[,codec=C][,config=Y]
}


@dataclass(frozen=True, kw_only=True)
class Sampling:
    """How to sample: the options NeMo's inference exposes, plus a seed."""

    temperature: float = 1.0
    top_k: int = 0  # 0: no top-k
    cfg_scale: float = 1.0  # 1.0: no classifier-free guidance
    max_steps: int = 430  # decoder steps before a sample counts as unfinished
    use_kv_cache: bool = True
    seed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TeacherForced:
    """The teacher-forced pass over target codes, per codebook.

    logits: [B, C, T, V] float; labels: [B, C, T] int64 (targets, EOS appended);
    mask: [B, C, T] bool (real target positions, padding False).
    """

    logits: torch.Tensor
    labels: torch.Tensor
    mask: torch.Tensor
    # Per row [B], the model's own alignment loss (NeMo MagpieTTS with
    # alignment_loss_scale > 0: its scaled CTC loss over cross-attention, row by row), or
    # None when the model has none (the tiny policy never has). NeMo's DPO adds the
    # chosen rows' mean to its objective; so does ttspo's (trainer/dpo/loop.py).
    alignment_loss: torch.Tensor | None = None


@dataclass(frozen=True)
class Identity:
    """What a checkpoint or table records about a policy: which model, which weights.

    CONFIG must name everything besides the weights that changes the policy's
    logits (the reference cache is keyed by :attr:`config_sha256` with the weights
    file's sha256). (config_sha256 was added with that key.)
    """

    architecture: str  # "tiny" | "nemo-magpietts" ...
    config: dict[str, Any] = field(default_factory=dict)
    sha256: str = ""  # of the saved weights file ("" from identity(with_sha256=False))

    @property
    def config_sha256(self) -> str:
        """sha256 of the architecture and config (canonical JSON), not of the weights."""
        text = json.dumps({"architecture": self.architecture, "config": self.config},
                          sort_keys=True, default=str, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


class Codec(Protocol):
    num_codebooks: int
    codebook_size: int
    sample_rate: int
    frame_rate: float

    def encode(self, audio: Any, sr: int) -> Any: ...  # -> int codes [C, T]

    def decode(self, codes: Any) -> tuple[Any, int]: ...  # -> (float audio, sample rate)


class Policy(Protocol):
    """What every loop needs from a model. ``torch.nn.Module`` subclasses implement it."""

    codec: Codec

    def identity(self, *, with_sha256: bool = True) -> Identity: ...
    # with_sha256=False: sha256 "" (architecture and config only: no weights serialised)

    def collate(self, rows: Sequence[dict[str, Any]], *, with_targets: bool = True) -> Any: ...

    def forward_teacher(self, batch: Any) -> TeacherForced: ...

    def generate(self, batch: Any, sampling: Sampling,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]: ...
    # -> (codes [B, C, T] int64 padded, lengths [B] int64: frames before EOS)

    def save(self, path: str) -> str: ...  # -> sha256 of the written file


def token_logps(tf: TeacherForced) -> torch.Tensor:
    """Per-token log-probs of the labels, [B, C, T], zero where the mask is False."""
    logps = torch.log_softmax(tf.logits.float(), dim=-1)
    picked = logps.gather(-1, tf.labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return picked * tf.mask


def sequence_logps(tf: TeacherForced) -> torch.Tensor:
    """Per-codebook sequence log-probs [B, C]: masked sums over time.

    Summing over codebooks (optionally weighted) is the losses' job, so the
    reference cache can keep codebooks apart.
    """
    return token_logps(tf).sum(dim=-1)


def load_policy(spec: str, *, init: str | None = None, config: Any = None) -> Policy:
    """The policy SPEC names (``tiny``, ``nemo:PATH``): INIT's weights, or fresh from CONFIG."""
    name, _, arg = spec.partition(":")
    if name not in POLICIES:
        raise ModelError(f"unknown policy '{spec}' (known: {', '.join(sorted(POLICIES))})")
    module, _, loader = POLICIES[name].partition(":")
    return getattr(importlib.import_module(module), loader)(arg, init=init, config=config)
