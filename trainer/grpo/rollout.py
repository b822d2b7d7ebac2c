"""The GRPO rollout phase: prompts -> N samples each -> audio -> metrics -> rewards.

:func:`load_prompts` reads the ``prompts`` table (at a pinned version, filtered
by a DuckDB condition) and resolves each prompt's context codes once.
:func:`rollout` samples a group of N per prompt with the policy (KV cache),
decodes each sample with the policy's codec, scores the audio in-process with
the scoring backends (ttspo.builder.scoring: ASR for CER/WER, speaker embeddings
for SSIM, PESQ/SQUIM when asked), computes rewards, validity and advantages
with :func:`ttspo.trainer.grpo.rewards.compute_rewards`, and returns the step's rows
in the ``rollouts`` schema, timing each phase.

Each sample's noise comes from its own seed, a function of (seed, step, split,
prompt id, sample) (:func:`ttspo.trainer.policy.samples.sample_seed`, as `generate`'s):
a resumed run draws the same samples, and so does a run sharded over more
processes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import polars as pl
import pyarrow as pa

from ttspo.builder.core.errors import InputError
from ttspo.builder.core.schemas import (GEN, METRIC_STATUS, METRICS, PROMPT, REWARD_FIELDS,
                                        REGISTERED_REWARD_FIELDS, ROLL, ROLLOUTS_SCHEMA)
from ttspo.builder.core.store import Store, parse_ref
from ttspo.builder.scoring.options import DEFAULTS, ScoreOptions
from ttspo.trainer.policy.base import CONTEXT_CODES, EOS_DRAWN, SAMPLE_SEED, Sampling
from ttspo.trainer.grpo.rewards import RewardConfig, compute_rewards, needed_metrics
from ttspo.trainer.policy.samples import decode, sample_seed

PHASES = ("generate", "decode", "score")
# GRPO's config keys, named in a scoring backend's load error (ttspo score names its options)
LABELS = {"asr": "grpo.asr", "ssim": "grpo.sv", "squim": "grpo.squim",
          **{g: f"grpo.rewards {g}" for g in ("pesq", "mos", "vad", "prosody")}}


# ------------------------------------------------------------------ prompts
@dataclass
class Prompts:
    version: int  # of the prompts table
    rows: list[dict[str, Any]]  # policy rows: text, context_text, context_codes, ...
    # every table the selection read and its version: prompts, and any table the
    # where condition's subqueries name (its lineage inputs)
    inputs: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.rows)


def load_prompts(store: Store, ref: str = "prompts", where: str | None = None, *,
                 encode=None) -> Prompts:
    """Prompts of REF (``prompts``, ``prompts@3``, ``prompts@v1``) matching WHERE,
    ordered by prompt_id; ENCODE(audio, sr) makes context codes without a codes file."""
    from ttspo.builder.core import query
    from ttspo.trainer.dpo.contexts import prompt_context

    table, version = parse_ref(ref)
    if table != "prompts":
        raise InputError(f"grpo.prompts '{ref}': GRPO reads prompts from the prompts table")
    pinned = store.open(table, version).version
    sql = f'SELECT * FROM "prompts@{pinned}"'
    table_, read = query.run(store, sql + (f" WHERE {where}" if where else "") +
                             f' ORDER BY "{PROMPT.prompt_id}"')
    rows = table_.to_pylist()
    inputs = query.inputs_by_table(read, {"prompts": pinned})
    if not rows:
        raise InputError(f"prompts@{pinned}: no prompt matches {where!r}" if where
                         else f"prompts@{pinned} is empty")
    for r in rows:
        r[CONTEXT_CODES] = prompt_context(r, encode)
    return Prompts(pinned, rows, inputs)


def split_prompts(prompts: Prompts, val: int, seed: int) -> tuple[list[int], list[int]]:
    """(train, val) prompt indices: VAL held out by a seeded permutation."""
    n = len(prompts)
    if val >= n:
        raise InputError(f"grpo.val_prompts {val} leaves no training prompt of {n}")
    perm = np.random.default_rng([seed, 7]).permutation(n)
    return sorted(perm[val:].tolist()), sorted(perm[:val].tolist())


def step_prompts(train: Sequence[int], step: int, per_step: int, rank: int, *, world: int,
                 seed: int) -> list[int]:
    """RANK's prompts at STEP: consecutive slices of a per-epoch seeded permutation."""
    total = per_step * world
    if total > len(train):
        raise InputError(f"{len(train)} training prompts, fewer than one step's {total} "
                         "(grpo.prompts_per_step x processes)")
    steps_per_epoch = len(train) // total
    epoch, k = divmod(step, steps_per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(len(train))
    start = k * total + rank * per_step
    return [train[i] for i in perm[start:start + per_step]]


# ------------------------------------------------------------------ scoring
@dataclass(kw_only=True)
class Scoring:
    """What to score: the registered metrics the reward weights, limits and validity
    rules read, and nothing else (a length-only reward scores nothing)."""

    metrics: tuple[str, ...] = ()
    asr: str = DEFAULTS.asr
    sv: str = DEFAULTS.sv
    squim: str | None = None
    normalizer: str = "nemo"
    _scorer: Any = field(default=None, repr=False, compare=False)  # made at the first score

    @classmethod
    def needed(cls, cfg: RewardConfig, *, asr: str, sv: str, squim: str | None,
               normalizer: str) -> "Scoring":
        metrics = needed_metrics(cfg)
        if GEN.cer in metrics and GEN.wer not in metrics:
            metrics.append(GEN.wer)  # one transcript gives both
        return cls(metrics=tuple(metrics), asr=asr, sv=sv, squim=squim, normalizer=normalizer)

    @property
    def any(self) -> bool:
        return bool(self.metrics)

    def options(self) -> ScoreOptions:
        """These metrics as `ttspo score`'s options."""
        return ScoreOptions(metrics=self.metrics, asr=self.asr, sv=self.sv, squim=self.squim,
                            normalizer=self.normalizer)

    def score(self, audios: list[np.ndarray], sr: int, rows: list[dict[str, Any]]) -> int:
        """Add metric columns to ROWS (one per audio), in place, through generate's
        scorer (trainer/generate/rows.py). The scorer is made at the first call and
        kept: a prompt's context embedding and reference recording are read once a run.
        Returns how many rows a backend failed on (NULL metric, reason in *_status)."""
        from ttspo.trainer.generate.rows import make_scorer, score

        if self._scorer is None:
            self._scorer = make_scorer(self.options(), LABELS)
        for row in rows:  # what the scorer names a row by in an error
            row[GEN.generation_id] = row[ROLL.rollout_id]
        return score(self._scorer, list(zip(rows, audios, [sr] * len(rows))),
                     batch_size=len(rows) or 1, reference=PROMPT.reference_audio_filepath)


# ------------------------------------------------------------------ rollout
@dataclass
class Rollout:
    """One step's samples: the policy rows to train on and the table rows to store."""

    train_rows: list[dict[str, Any]]  # text, context, codes [C, T]: collate(with_targets=True)
    table: pa.Table  # ROLLOUTS_SCHEMA, with rewards, advantages, validity
    seconds: dict[str, float]


def rollout(policy, prompts: Prompts, indices: Sequence[int], *, run: str, step: int,
            split: str, n: int, sampling: Sampling, seed: int, rewards: RewardConfig,
            scoring: Scoring, checkpoint: str, store_audio: bool,
            eos_target: str = "always") -> Rollout:
    """Sample N per prompt of INDICES, decode, score, reward (see the module docstring).
    EOS_TARGET (``data.eos_target``) "sampled": a sample cut at max_steps without EOS
    trains without an EOS target (its rows say ``eos_drawn`` False)."""
    import torch

    seconds = dict.fromkeys(PHASES, 0.0)
    t = time.perf_counter()
    rows = [dict(prompts.rows[p], **{SAMPLE_SEED: sample_seed(
                seed, step, split, prompts.rows[p][PROMPT.prompt_id], s)})
            for p in indices for s in range(n)]
    with torch.no_grad():
        codes, lengths = policy.generate(policy.collate(rows, with_targets=False), sampling,
                                         torch.Generator().manual_seed(seed))
    frames = [codes[i, :, :int(lengths[i])].cpu().numpy() for i in range(len(rows))]
    seconds["generate"], t = time.perf_counter() - t, time.perf_counter()
    # Audio only when a metric or the table needs it (a length reward needs neither).
    if scoring.any or store_audio:
        decoded = [decode(policy.codec, f) for f in frames]
        audios = [a for a, _ in decoded]
        sr = decoded[0][1] if decoded else int(policy.codec.sample_rate)
    else:
        audios, sr = [None] * len(frames), int(policy.codec.sample_rate)
    seconds["decode"], t = time.perf_counter() - t, time.perf_counter()
    # A group is named by its prompt's index: unique in a step whatever the process count.
    out = [sample_row(r, f, a, sr, run=run, step=step, split=split, group=p, sample=g % n,
                      checkpoint=checkpoint,
                      frame_rate=float(policy.codec.frame_rate))
           for g, (r, f, a, p) in enumerate(zip(rows, frames, audios,
                                                [p for p in indices for _ in range(n)]))]
    if scoring.any:
        scoring.score(audios, sr, out)
    seconds["score"] = time.perf_counter() - t
    table = rollout_table(out, rewards, audios if store_audio else None, sr)
    train_rows = [{GEN.text: r[GEN.text], GEN.context_text: r[GEN.context_text],
                   CONTEXT_CODES: r[CONTEXT_CODES], GEN.codes: f} for r, f in zip(rows, frames)]
    if eos_target == "sampled":
        for row, n in zip(train_rows, lengths.tolist()):
            row[EOS_DRAWN] = n < sampling.max_steps
    return Rollout(train_rows, table, seconds)


def sample_row(prompt: dict[str, Any], frames: np.ndarray, audio: np.ndarray | None, sr: int,
               *, run: str, step: int, split: str, group: int, sample: int, checkpoint: str, frame_rate: float) -> dict[str, Any]:
    duration = len(audio) / sr if audio is not None else frames.shape[1] / frame_rate
    group_id = f"{run}:{step}:{split}:{group}"
    return {ROLL.rollout_id: f"{group_id}:{sample}", GEN.run: run, ROLL.step: step,
            ROLL.split: split, GEN.prompt_id: prompt[PROMPT.prompt_id], GEN.group_id: group_id,
            GEN.group_index: group, GEN.sample_index: sample, GEN.text: prompt[PROMPT.text],
            GEN.context_audio_filepath: prompt[PROMPT.context_audio_filepath],
            GEN.context_text: prompt[PROMPT.context_text],
            PROMPT.reference_audio_filepath: prompt.get(PROMPT.reference_audio_filepath),
            GEN.codes: frames.astype(np.int16).tolist(), GEN.codes_len: int(frames.shape[1]),
            GEN.duration: duration, GEN.sample_rate: sr, GEN.invalid: False,
            ROLL.checkpoint: checkpoint}


def rollout_table(rows: list[dict[str, Any]], cfg: RewardConfig,
                  audios: list[np.ndarray] | None, sr: int) -> pa.Table:
    """ROWS rewarded (compute_rewards, as `ttspo rewards` does) as ROLLOUTS_SCHEMA,
    built a column at a time: a key no row has (a metric not scored) is a null column."""
    reward_names = {f.name for f in REWARD_FIELDS + REGISTERED_REWARD_FIELDS}
    base = pa.Table.from_pylist(rows, schema=pa.schema(
        [f for f in ROLLOUTS_SCHEMA if f.name not in reward_names]))
    metrics = [GEN.group_id, GEN.codes_len, GEN.invalid, *METRICS,
               *dict.fromkeys(METRIC_STATUS.values())]
    rewarded = compute_rewards(pl.from_arrow(base.select(metrics)), cfg).to_arrow()
    if audios is not None:
        from ttspo.builder.scoring.audio import wav_bytes

        base = base.set_column(base.schema.get_field_index(GEN.audio), GEN.audio, pa.array(
            [wav_bytes(a, sr) for a in audios], ROLLOUTS_SCHEMA.field(GEN.audio).type))
    return pa.Table.from_arrays(
        [rewarded[f.name].cast(f.type) if f.name in reward_names else base[f.name]
         for f in ROLLOUTS_SCHEMA], schema=ROLLOUTS_SCHEMA)
