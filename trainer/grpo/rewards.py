"""GRPO rewards: metrics -> [0, 1] reward parts -> total -> group advantages.

Everything here runs on a polars DataFrame of scored samples (one row per sample,
a group column saying which samples share a prompt), so the same code computes
rewards during training (over one step's rollouts) and afterwards
(``ttspo rewards`` over a stored ``rollouts`` or ``generations`` table). Each
reward is a polars expression: vectorised over any number of rows.

Registry (:data:`REWARDS`, nemo-formats.md section 5; CER and SSIM clamped first):

- ``cer``: 0.5 at the dataset's mean CER ``m``, 1 at CER 0, 0 at CER 1 (piecewise linear)
- ``ssim``: 0.5 at the dataset's mean SSIM, 1 at the best achievable (0.9), 0 at 0
- ``pesq``: PESQ / 4.5; ``squim``: SQUIM's PESQ estimate / 4.5
- every other metric with a reward shape in the metric registry
  (builder/core/metrics.py), e.g. ``mos``: (MOS - 1) / 4 (Distill-MOS); a linear shape
  maps its ``lo``..``hi`` to 0..1 (reversed when lower is better)
- ``utmos``: retired (there never was a scorer for it): use ``mos``
- ``length``: 1 - |codes_len - target| / target, floored at 0 (needs ``length_target``)
- ``pkg.mod:fn``: a user callable, called with the DataFrame; it returns a polars
  expression, Series or array of values in [0, 1], one per row.

A null metric that does not apply (SSIM of a text-context prompt has no voice to
compare with: ``n/a: ...`` in its status) gives a null part that counts 0 in the sum:
every sample of a group shares the prompt, so the shift is the same for the whole
group and advantages do not move. A metric that FAILED (its scorer raised: ``error:
...`` in its status column) makes the sample invalid (``failed``), so its total follows
``invalid_reward`` like any invalid sample: never a silent 0 part.

Combining: ``none`` (NeMo: weighted sum of the fixed-anchor rewards) or
``group`` (``normalize_then_sum``, NeMo's decoder-only recipe: each part is
z-scored within its group over the valid samples, then weighted and summed).

Validity: a sample is invalid when a metric it is rewarded on failed, when a metric
exceeds its limit (``limits``: e.g. ``trail_silence=0.5``, the registry's validity rules,
so appended silence cannot buy a better CER), when its code length is outside
[``min_valid_len``, ``max_valid_len``] (empty, or unfinished: it hit the decoder's
step limit; NeMo hard-codes 425 frames, we derive it from ``max_decoder_steps``)
or when its ASR failed; an invalid sample's total is 0 (NeMo) or the minimum
total of its group's valid samples (``invalid_reward="group_min"``: under
``normalize_then_sum`` 0 is about the group mean, no penalty at all). A group is
invalid (its advantage term masked out of the loss; its KL term stays, as NeMo's) when its best clamped CER exceeds
``best_cer_threshold`` or its worst exceeds ``worst_cer_threshold``.

Advantages: total - group mean, divided by (group std + 1e-4) when
``scale_rewards`` (NeMo's grpo), unscaled otherwise (dr_grpo). std is the population std
(ddof 0) over the whole group, invalid samples included, as NeMo's ``np.std(group_rewards)``
(``MagpieTTSModelOnlinePO.generate_and_reward``); a group of one sample or with zero
spread has advantage 0, never NaN. (``normalize_then_sum``'s per-part z-score is
ttspo's own, over the valid samples, with the sample std, ddof 1.)

The two loss types (pure functions of tensors) are beside the DPO losses' room:
:mod:`ttspo.trainer.grpo.losses` (:data:`GRPO_LOSSES`).
"""

from __future__ import annotations

import importlib
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
import polars as pl

from ttspo.builder.core import metrics as registry
from ttspo.builder.core.errors import InputError, first_line
from ttspo.builder.core.schemas import GEN, METRIC_STATUS, REWARD_PARTS, RWD

STD_EPS = 1e-4  # NeMo's: advantage = (r - mean) / (std + 1e-4)
NORMALIZE = ("none", "group")
INVALID_REWARD = ("zero", "group_min")


@dataclass(frozen=True, kw_only=True)
class RewardConfig:
    """Weights, anchors, combination and validity rules: all a reward depends on."""

    weights: dict[str, float] = field(default_factory=lambda: {"cer": 0.5, "ssim": 0.5})
    normalize: str = "none"  # "none" (sum of fixed-anchor rewards) | "group" (normalize_then_sum)
    mean_cer: float = 0.1  # NeMo: mean_cer_dataset
    mean_ssim: float = 0.6  # NeMo: mean_ssim_dataset
    best_ssim: float = 0.9  # NeMo: best_ssim_achievable
    length_target: float | None = None  # frames, for the `length` reward
    min_valid_len: int = 4  # NeMo: a sample of <= 3 frames is empty
    max_valid_len: int = 429  # max_decoder_steps - 1: a sample that hit the limit is unfinished
    best_cer_threshold: float = 1.0
    worst_cer_threshold: float = 1.0
    invalid_reward: str = "zero"  # "zero" (NeMo) | "group_min"
    scale_rewards: bool = True  # divide advantages by group std + 1e-4 (grpo); dr_grpo: False
    # metric -> the largest valid value (registry metrics with a `limit`, e.g. trail_silence)
    limits: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        checks = ((self.normalize, NORMALIZE, "normalize"),
                  (self.invalid_reward, INVALID_REWARD, "invalid_reward"))
        for value, allowed, name in checks:
            if value not in allowed:
                raise InputError(f"{name} '{value}' is not one of {', '.join(allowed)}")
        if not self.weights:
            raise InputError("reward weights are empty: give at least one, e.g. cer=1")
        for name, weight in self.weights.items():
            if not math.isfinite(weight):
                raise InputError(f"reward weight {name}={weight} is not a finite number")
            reward_spec(name)  # unknown names fail here, before any data is read
        for name in self.limits:
            if name not in registry.limited():
                raise InputError(f"no validity limit for '{name}' (choose "
                                 f"{', '.join(registry.limited()) or 'none registered'})")
        if "length" in self.weights and not self.length_target:
            raise InputError("the 'length' reward needs length_target (frames) > 0")
        if not 0 < self.mean_cer < 1 or not 0 < self.mean_ssim < self.best_ssim <= 1:
            raise InputError("reward anchors need 0 < mean_cer < 1 and "
                             "0 < mean_ssim < best_ssim <= 1")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------- registry
def _clip(expr: pl.Expr, lo: float, hi: float) -> pl.Expr:
    return expr.cast(pl.Float64).clip(lo, hi)


def cer_expr(cfg: RewardConfig) -> pl.Expr:
    c, m = _clip(pl.col(GEN.cer), 0.0, 1.0), cfg.mean_cer
    return (pl.when(c <= m).then(0.5 + 0.5 * (m - c) / m)
            .otherwise(0.5 - 0.5 * (c - m) / (1.0 - m)))


def ssim_expr(cfg: RewardConfig) -> pl.Expr:
    s, ms, best = _clip(pl.col(GEN.ssim), 0.0, cfg.best_ssim), cfg.mean_ssim, cfg.best_ssim
    return (pl.when(s >= ms).then(0.5 + 0.5 * (s - ms) / (best - ms))
            .otherwise(0.5 - 0.5 * (ms - s) / ms))


def length_expr(cfg: RewardConfig) -> pl.Expr:
    n, target = pl.col(GEN.codes_len).cast(pl.Float64), float(cfg.length_target or 1.0)
    return (1.0 - (n - target).abs() / target).clip(0.0, 1.0)


@dataclass(frozen=True)
class RewardSpec:
    column: str  # the metric it reads (a GEN column name)
    part: str  # the column its [0, 1] value is stored in (an RWD name)
    expr: Callable[[RewardConfig], pl.Expr]


def linear_expr(name: str, lo: float, hi: float, lower_is_better: bool) -> Callable:
    """(value - lo) / (hi - lo) clipped to [0, 1]; reversed when lower is better."""
    def expr(cfg: RewardConfig) -> pl.Expr:
        x = (pl.col(name).cast(pl.Float64) - lo) / (hi - lo)
        return _clip(1.0 - x if lower_is_better else x, 0.0, 1.0)
    return expr


def _registered_spec(m) -> RewardSpec:
    """A registry metric's reward (builder/core/metrics.py: Metric.reward)."""
    shape = m.reward
    expr = {"cer": cer_expr, "ssim": ssim_expr}.get(shape.shape) or \
        linear_expr(m.name, shape.lo, shape.hi, m.lower_is_better)
    return RewardSpec(m.name, f"reward_{m.name}", expr)


# Every registered metric with a reward shape, then the length reward.
REWARDS: dict[str, RewardSpec] = {
    **{name: _registered_spec(registry.metric(name)) for name in registry.rewarded()},
    "length": RewardSpec(GEN.codes_len, RWD.reward_length, length_expr),
}
# Rewards no longer offered: the name, and the one line saying what to use instead.
RETIRED = {"utmos": "reward 'utmos' is retired (ttspo never had a UTMOS scorer): use 'mos' "
                    "(Distill-MOS, `ttspo score --metrics mos`); old utmos columns stay readable"}


def is_callable_name(name: str) -> bool:
    return ":" in name


def reward_spec(name: str) -> RewardSpec | Callable:
    """The registry entry for NAME, or the user callable ``pkg.mod:fn`` it names."""
    if name in REWARDS:
        return REWARDS[name]
    if name in RETIRED:
        raise InputError(RETIRED[name])
    if not is_callable_name(name):
        raise InputError(f"unknown reward '{name}' (choose {', '.join(REWARDS)}, "
                         "or a Python callable as pkg.module:function)")
    module, _, attr = name.partition(":")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise InputError(f"reward '{name}': cannot import it ({exc})") from None
    except Exception as exc:  # the module's own code failed on import
        raise InputError(f"reward '{name}': importing {module} raised {_error(exc)}") from None
    if not callable(fn):
        raise InputError(f"reward '{name}' is not callable")
    return fn


def needed_columns(cfg: RewardConfig) -> list[str]:
    """Metric columns the built-in rewards and limits of CFG read (user callables read
    what they like)."""
    return sorted({REWARDS[n].column for n in cfg.weights if n in REWARDS} | set(cfg.limits))


def needed_metrics(cfg: RewardConfig, *, group_rules: bool = True) -> list[str]:
    """Registered metrics CFG needs scored: its rewards', its limits' and (GROUP_RULES)
    CER for the group CER thresholds. GRPO and `generate --score` score only these."""
    names = set(needed_columns(cfg))
    if group_rules and (cfg.best_cer_threshold < 1 or cfg.worst_cer_threshold < 1):
        names.add(GEN.cer)
    return [m for m in registry.names() if m in names]


def failed_expr(df: pl.DataFrame, cfg: RewardConfig) -> pl.Expr:
    """True where a metric CFG reads failed (``error: ...`` in its status column)."""
    statuses = {METRIC_STATUS[m] for m in needed_columns(cfg) if m in METRIC_STATUS}
    hits = [pl.col(c).str.starts_with("error:").fill_null(False)
            for c in sorted(statuses) if c in df.columns]
    return pl.any_horizontal(hits) if hits else pl.lit(False)


def limits_expr(cfg: RewardConfig) -> pl.Expr:
    """True where a metric is over its limit (NULL: not held against the sample)."""
    over = [(pl.col(m).cast(pl.Float64) > limit).fill_null(False) for m, limit in cfg.limits.items()]
    return pl.any_horizontal(over) if over else pl.lit(False)


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {first_line(exc, 200)}"


def _custom_part(name: str, fn: Callable, df: pl.DataFrame) -> pl.Series:
    # User code, and what it returns, may fail in any way: one line naming the reward.
    try:
        out = fn(df)
        if isinstance(out, pl.Expr):
            out = df.select(out.alias(name)).to_series()
    except Exception as exc:
        raise InputError(f"reward '{name}' raised {_error(exc)}") from None
    try:
        values = pl.Series(name, np.asarray(out, dtype=np.float64)
                           if not isinstance(out, pl.Series) else out.cast(pl.Float64))
    except Exception as exc:
        raise InputError(f"reward '{name}' must return one finite value in [0, 1] per row "
                         f"(it returned {type(out).__name__}: {_error(exc)})") from None
    bad = values.is_null() | ~values.is_finite() | (values < 0) | (values > 1)
    if len(values) != df.height or bad.any():
        raise InputError(f"reward '{name}' must return one finite value in [0, 1] per row "
                         f"({len(values)} values for {df.height} rows)")
    return values


# ------------------------------------------------------------- computing
def compute_rewards(df: pl.DataFrame, cfg: RewardConfig, *, group: str = GEN.group_id
                    ) -> pl.DataFrame:
    """DF plus the reward parts, total, validity and advantage columns (RWD names).

    DF needs the GROUP column, ``codes_len`` and ``invalid`` (ASR failed), plus the
    metrics the weights read. Rows keep their order.
    """
    missing = [c for c in (group, GEN.codes_len, GEN.invalid, *needed_columns(cfg))
               if c not in df.columns]
    if missing:
        raise InputError(f"cannot compute rewards {','.join(cfg.weights)}: "
                         f"no column(s) {', '.join(missing)}")
    custom = {n: reward_spec(n) for n in cfg.weights if is_callable_name(n)}
    builtin = [n for n in cfg.weights if n in REWARDS]
    df = df.with_columns(
        *[REWARDS[n].expr(cfg).alias(REWARDS[n].part) for n in builtin],
        # An unknown length (generations ingested without codes) is not held against a sample.
        (pl.col(GEN.codes_len).is_between(cfg.min_valid_len, cfg.max_valid_len).fill_null(True)
         & ~pl.col(GEN.invalid).fill_null(False) & ~failed_expr(df, cfg)
         & ~limits_expr(cfg)).alias(RWD.valid))
    parts = {n: REWARDS[n].part for n in builtin}
    for name, fn in custom.items():
        tmp = f"__custom_{len(parts)}"
        df = df.with_columns(_custom_part(name, fn, df).alias(tmp))
        parts[name] = tmp
    df = df.with_columns(_total(cfg, parts, group).alias(RWD.reward))
    df = _apply_invalid(df, cfg, group)
    df = df.with_columns(_group_valid(cfg, group, GEN.cer in df.columns).alias(RWD.group_valid),
                         _advantage(cfg, group).alias(RWD.advantage))
    return _pack_custom(df, custom, parts)


def _zscore(col: str, group: str) -> pl.Expr:
    # Over the group's valid samples only: an unfinished sample must not set the scale.
    x = pl.when(pl.col(RWD.valid)).then(pl.col(col))
    mean, std = x.mean().over(group), x.std().over(group).fill_null(0.0)
    return pl.when(std > 0).then((pl.col(col) - mean) / (std + STD_EPS)).otherwise(0.0)


def _total(cfg: RewardConfig, parts: dict[str, str], group: str) -> pl.Expr:
    terms = []
    for name, col in parts.items():
        value = _zscore(col, group) if cfg.normalize == "group" else pl.col(col)
        terms.append(cfg.weights[name] * value.fill_null(0.0))
    return pl.sum_horizontal(terms)


def _apply_invalid(df: pl.DataFrame, cfg: RewardConfig, group: str) -> pl.DataFrame:
    if cfg.invalid_reward == "zero":
        floor = pl.lit(0.0)
    else:  # the worst valid sample's total; 0 when the whole group is invalid
        floor = pl.when(pl.col(RWD.valid)).then(pl.col(RWD.reward)).min().over(group).fill_null(0.0)
    return df.with_columns(pl.when(pl.col(RWD.valid)).then(pl.col(RWD.reward))
                           .otherwise(floor).alias(RWD.reward))


def _group_valid(cfg: RewardConfig, group: str, has_cer: bool) -> pl.Expr:
    if not has_cer:  # e.g. a length-only reward scored without ASR: no CER rule to break
        return pl.lit(True)
    c = pl.col(GEN.cer).cast(pl.Float64).clip(0.0, 1.0)
    best, worst = c.min().over(group), c.max().over(group)
    return ~((best > cfg.best_cer_threshold) | (worst > cfg.worst_cer_threshold)).fill_null(False)


def _advantage(cfg: RewardConfig, group: str) -> pl.Expr:
    r = pl.col(RWD.reward)
    centred = r - r.mean().over(group)
    if not cfg.scale_rewards:
        return centred
    std = r.std(ddof=0).over(group).fill_null(0.0)  # np.std's ddof 0, as NeMo
    return pl.when(std > 0).then(centred / (std + STD_EPS)).otherwise(0.0)


def _pack_custom(df: pl.DataFrame, custom: dict, parts: dict[str, str]) -> pl.DataFrame:
    """User-callable parts go into one list<struct{name, value}> column."""
    if not custom:
        return pad_parts(df)
    fields = [pl.struct(pl.lit(n).alias("name"), pl.col(parts[n]).alias("value")) for n in custom]
    df = df.with_columns(pl.concat_list(fields).alias(RWD.reward_custom))
    return pad_parts(df.drop([parts[n] for n in custom]))


def pad_parts(df: pl.DataFrame) -> pl.DataFrame:
    """Every reward part column (REWARD_PARTS), null where the weights do not use it:
    the one place parts are padded (rollouts, `ttspo rewards` tables)."""
    return df.with_columns([pl.lit(None, dtype=CUSTOM_DTYPE if name == RWD.reward_custom
                                   else pl.Float64).alias(name)
                            for name in REWARD_PARTS if name not in df.columns])


CUSTOM_DTYPE = pl.List(pl.Struct({"name": pl.String, "value": pl.Float64}))
