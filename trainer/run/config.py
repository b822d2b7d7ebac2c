"""The one training config: a dataclass of sections, from YAML plus ``key=value`` overrides.

    cfg = load_config("dpo.yaml", ["optim.lr=1e-4", "loss.sft_weight=0.1", "policy.model.d_model=64"])

Keys are dotted paths into :class:`Config` (``section.field``); a value is parsed
as YAML, then checked against the field's type (an int field takes ``3``, a float
field ``1e-4`` or ``3``, a list field ``[a, b]`` or ``a,b``). An unknown key is an
error naming the closest valid one. Then every value is checked against its rule in
:data:`RULES` (a range, a choice, a list's length; nan and inf nowhere), before a
command writes anything: the first key out of range is one line naming the key, the
value and what is allowed. ``policy.model`` is free-form: the policy checks its own
keys (TinyConfig fields for ``tiny``) as it loads, also before anything is written.
The resolved config is saved as ``config.yaml`` in the run folder, so a run can be
re-made from it.

Defaults are NeMo's MagpieTTS recipe (beta 0.01, lr 2e-7, no scheduler, 4 pairs
per GPU); a tiny CPU policy needs a far larger lr (the demo uses 1e-3).
Another trainer adds its own section (a dataclass field of :class:`Config`).
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from ttspo.builder.core import metrics as registry
from ttspo.builder.core.errors import ConfigError
from ttspo.trainer.run.config_parse import flatten, read_yaml, resolve, typed
from ttspo.trainer.run.config_rules import (Free, OneOf, Rule, Span, Terms, canonical_terms,
                                            check_rules, parse_terms)
from ttspo.trainer.run.old_keys import map_old_keys


@dataclass
class PolicyConfig:
    name: str = "tiny"  # the policy registry's name
    model: dict[str, Any] = field(default_factory=dict)  # the policy's size, when not --init


@dataclass(kw_only=True)
class DataConfig:
    pairs_per_device: int = 4  # pairs per process per micro-step (chosen+rejected: 2x rows)
    val_pairs_per_device: int = 16
    seed: int = 0  # shuffles the pairs anew each epoch; same seed, same order
    # memory: every pair's codes held from the start (RAM grows with the set);
    # stream: codes read from Lance by row id a micro-batch at a time, ahead of the step
    # (same batches, same order, same losses: a run may switch on resume)
    loader: str = "memory"
    workers: int = 1  # stream: spawned processes reading ahead (0: read in the step's process)
    prefetch_batches: int = 2  # stream: reads each worker holds ready (bounds memory)
    # stream: micro-batches per read (one Lance take, one message from the worker): a
    # message costs ~1 ms whatever its size, a tiny step ~8 ms (bench/RESULTS.md)
    read_batches: int = 8
    # The training target's last frame. always: EOS on every codebook after the codes,
    # also for a sample cut at its step limit without drawing EOS (NeMo's); sampled: a
    # sample that drew no EOS (codes_len = its max_steps) gets no EOS target (dpo, grpo)
    eos_target: str = "always"


@dataclass(kw_only=True)
class LossConfig:
    terms: str = "dpo=1"  # the weighted losses, summed (e.g. dpo=1,rpo=0.5)
    beta: float = 0.01
    label_smoothing: float = 0.0
    gt_reward_scale: float = 1.0  # rpo, rpo_sq
    sft_weight: float = 0.0  # + sft_weight * mean(-logp(chosen))
    codebook_weights: Optional[list[float]] = None  # one per codebook; None: all 1
    reference_free: bool = False
    # true: every sequence log-prob is a per-token mean (over its codebooks' tokens), as
    # TRL's IPO; false: summed, as NeMo
    length_normalize: bool = False


@dataclass(kw_only=True)
class OptimConfig:
    lr: float = 2e-7
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    schedule: str = "constant"  # constant | cosine (linear warmup, then cosine to min_lr_ratio)
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    grad_accum: int = 1  # micro-steps per optimizer step
    clip_grad_norm: float = 1.0  # 0: no clipping


@dataclass(kw_only=True)
class TrainConfig:
    max_steps: int = 100  # optimizer steps
    seed: int = 0  # model init (without --init) and dropout streams
    precision: str = "fp32"  # fp32 | bf16 (autocast)
    device: str = "auto"  # auto | cpu | cuda
    log_every: int = 1
    val_every: int = 50  # 0: no validation
    checkpoint_every: int = 50  # 0: only the final checkpoint
    # the validation metric that picks `best` (BEST_METRICS: DPO val/loss|accuracy|margin,
    # GRPO val/cer|reward|ssim); auto: DPO val/accuracy, GRPO val/cer (val/reward when
    # the rewards score no CER)
    best_metric: str = "auto"
    best_mode: str = "auto"  # max | min | auto (the metric's own: min for loss and CER)
    require_ref_cache: bool = False  # stop unless precompute-ref made this set's reference
    progress: bool = True  # tqdm bar on rank 0
    tensorboard: bool = True
    # DPO: every pair's margin per epoch and per validation into `pair_dynamics`
    pair_dynamics: bool = True


@dataclass(kw_only=True)
class GrpoConfig:
    """Online GRPO (``ttspo train grpo``), NeMo's option names where it has them.

    NeMo reads ``n_generations_per_item`` (its docs say ``num_generations_per_item``,
    which it silently ignores); here a misspelt key is an error naming the right one.
    """

    prompts: str = "prompts"  # the prompts table, at a version or tag (prompts@v1)
    where: Optional[str] = None  # DuckDB condition on prompts
    val_prompts: int = 0  # held out of the selected prompts (seeded), for validation
    prompts_per_step: int = 2  # per process
    n_generations_per_item: int = 6
    temperature: float = 0.8
    topk: int = 80  # 0: no top-k
    inference_cfg_prob: float = 0.0  # share of steps sampled with CFG
    inference_cfg_scale: float = 2.5
    use_kv_cache: bool = True
    max_decoder_steps: int = 430
    loss_type: str = "grpo"  # grpo | dr_grpo
    scale_rewards: Optional[bool] = None  # divide advantages by group std; None: grpo yes, dr_grpo no
    grpo_beta: float = 0.0  # KL weight
    reference_free: bool = False  # no reference model, no KL term
    entropy_coef: float = 0.0  # entropy bonus
    rewards: str = "cer=0.5,ssim=0.5"  # the weighted rewards (ttspo.trainer.grpo.rewards)
    normalize_then_sum: bool = False  # z-score each reward within its group, then sum
    invalid_reward: str = "zero"  # zero (NeMo) | group_min
    # "METRIC=MAX,...": validity limits on registered metrics (e.g. trail_silence=0.5: a
    # sample with more trailing silence is invalid, so silence cannot buy a better CER)
    limits: Optional[str] = None
    mean_cer_dataset: float = 0.1
    mean_ssim_dataset: float = 0.6
    best_ssim_achievable: float = 0.9
    length_target: Optional[float] = None  # frames, for the `length` reward
    best_cer_threshold: float = 1.0
    worst_cer_threshold: float = 1.0
    min_valid_codes_len: int = 4
    max_valid_codes_len: Optional[int] = None  # None: max_decoder_steps - 1 (unfinished beyond)
    asr: str = "pocketsphinx"  # scoring backends (ttspo.builder.scoring)
    sv: str = "resemblyzer"
    squim: Optional[str] = None  # SQUIM weights, for the squim reward
    normalizer: str = "nemo"
    store_audio: bool = True  # rollout audio as a Lance blob in `rollouts`
    rollouts_every: int = 1  # steps per rollouts commit (also flushed before each checkpoint)


@dataclass(kw_only=True)
class Config:
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    grpo: GrpoConfig = field(default_factory=GrpoConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# What each key allows (trainer/run/config_rules.py: a Span is an interval, its bounds
# numbers or other keys; a list key's rule holds for each item). Checked by
# load_config, before a command writes anything. Every key has a rule
# (test_config_ranges checks), so a new key cannot skip its range.
BOOL = Free("true | false")
SEED = Span("[0, 4294967295]")  # numpy's seeds are 32-bit
AT_LEAST_1, AT_LEAST_0 = Span("[1, inf)"), Span("[0, inf)")
POSITIVE, SHARE = Span("(0, inf)"), Span("[0, 1]")
LOSS_TYPES = ("dpo", "ipo", "rpo", "rpo_sq")  # losses.LOSSES (test_config_ranges checks)
# grpo.rewards.REWARDS (the metric registry's rewards, then length; a test checks) and
# the retired utmos (named so its message, from reward_config, says what replaced it)
REWARD_NAMES = (*registry.rewarded(), "length", "utmos")
LIMIT_NAMES = tuple(registry.limited())  # metrics with a validity limit (grpo.limits)
RULES: dict[str, Rule] = {
    "policy.name": Free("a policy registry name: tiny, nemo:PATH (checked as the policy loads)"),
    "policy.model": Free("the policy's own keys (tiny: TinyConfig, checked as the policy loads)"),
    "data.pairs_per_device": AT_LEAST_1,
    "data.val_pairs_per_device": AT_LEAST_1,
    "data.seed": SEED,
    "data.loader": OneOf(("memory", "stream")),
    "data.workers": AT_LEAST_0,
    "data.prefetch_batches": AT_LEAST_1,
    "data.read_batches": AT_LEAST_1,
    "data.eos_target": OneOf(("always", "sampled")),
    "loss.terms": Terms(LOSS_TYPES),
    "loss.beta": POSITIVE,
    # the share of preferences taken as flipped (cDPO): at 0.5 and above a pair teaches
    # nothing, or the reverse of its label
    "loss.label_smoothing": Span("[0, 0.5)"),
    "loss.gt_reward_scale": POSITIVE,
    "loss.sft_weight": AT_LEAST_0,
    "loss.codebook_weights": Span("[0, inf)", min_length=1),  # their count: the policy's codebooks
    "loss.reference_free": BOOL,
    "loss.length_normalize": BOOL,
    "optim.lr": POSITIVE,
    "optim.weight_decay": AT_LEAST_0,
    "optim.betas": Span("[0, 1)", length=2),  # AdamW's (beta1, beta2)
    "optim.schedule": OneOf(("constant", "cosine")),
    "optim.warmup_steps": Span("[0, train.max_steps]"),
    "optim.min_lr_ratio": SHARE,
    "optim.grad_accum": AT_LEAST_1,
    "optim.clip_grad_norm": AT_LEAST_0,  # 0: no clipping
    "train.max_steps": AT_LEAST_1,
    "train.seed": SEED,
    "train.precision": OneOf(("fp32", "bf16")),
    "train.device": OneOf(("auto", "cpu", "cuda")),
    "train.log_every": AT_LEAST_1,
    "train.val_every": AT_LEAST_0,  # 0: no validation
    "train.checkpoint_every": AT_LEAST_0,  # 0: only the final checkpoint
    "train.best_metric": OneOf(("auto", "val/loss", "val/accuracy", "val/margin", "val/cer",
                                "val/reward", "val/ssim")),
    "train.best_mode": OneOf(("auto", "max", "min")),
    "train.require_ref_cache": BOOL,
    "train.progress": BOOL,
    "train.tensorboard": BOOL,
    "train.pair_dynamics": BOOL,
    "grpo.prompts": Free("prompts[@VERSION|@TAG] (checked as the prompts load)"),
    "grpo.where": Free("a DuckDB condition on prompts, or null (checked as the prompts load)"),
    "grpo.val_prompts": AT_LEAST_0,
    "grpo.prompts_per_step": AT_LEAST_1,
    "grpo.n_generations_per_item": Span("[2, inf)"),  # a group of one has advantage 0: no signal
    "grpo.temperature": AT_LEAST_0,  # 0: greedy
    "grpo.topk": AT_LEAST_0,  # 0: no top-k
    "grpo.inference_cfg_prob": SHARE,
    "grpo.inference_cfg_scale": AT_LEAST_0,  # 1: no guidance
    "grpo.use_kv_cache": BOOL,
    "grpo.max_decoder_steps": AT_LEAST_1,
    "grpo.loss_type": OneOf(("grpo", "dr_grpo")),
    "grpo.scale_rewards": Free("true | false | null"),
    "grpo.grpo_beta": AT_LEAST_0,
    "grpo.reference_free": BOOL,
    "grpo.entropy_coef": AT_LEAST_0,
    "grpo.rewards": Terms(REWARD_NAMES, callables=True),  # a callable: imported as the run starts
    "grpo.normalize_then_sum": BOOL,
    "grpo.invalid_reward": OneOf(("zero", "group_min")),
    "grpo.limits": Terms(LIMIT_NAMES),  # METRIC=MAX: a sample over it is invalid
    "grpo.mean_cer_dataset": Span("(0, 1)"),  # the CER reward's anchors (rewards.py)
    "grpo.mean_ssim_dataset": Span("(0, grpo.best_ssim_achievable)"),
    "grpo.best_ssim_achievable": Span("(0, 1]"),
    "grpo.length_target": POSITIVE,
    "grpo.best_cer_threshold": SHARE,  # a clamped CER: 1 filters nothing
    "grpo.worst_cer_threshold": SHARE,
    "grpo.min_valid_codes_len": Span("[0, grpo.max_decoder_steps]"),
    "grpo.max_valid_codes_len": Span("[grpo.min_valid_codes_len, grpo.max_decoder_steps]"),
    "grpo.asr": Free("an ASR backend (checked as the GRPO run starts)"),
    "grpo.sv": Free("a speaker-verification backend (checked as the GRPO run starts)"),
    "grpo.squim": Free("SQUIM weights, or null (checked as the GRPO run starts)"),
    "grpo.normalizer": OneOf(("nemo", "basic", "none")),
    "grpo.store_audio": BOOL,
    "grpo.rollouts_every": AT_LEAST_1,
}
FREE_FORM = ("policy.model",)  # dict fields: any sub-key, YAML-typed
# Each trainer's validation metrics that may pick `best`, with their better direction;
# the first is auto's choice (GRPO's second when its validation scores no CER).
BEST_METRICS = {"dpo": {"val/accuracy": "max", "val/loss": "min", "val/margin": "max"},
                "grpo": {"val/cer": "min", "val/reward": "max", "val/ssim": "max"}}


def best_rule(cfg: "Config", trainer: str, measured: Sequence[str]) -> tuple[str, str]:
    """(metric, "max" | "min") that picks TRAINER's `best` checkpoint; MEASURED: the
    validation metrics this run computes. A metric of the other trainer, or one this
    run does not measure, is a ConfigError."""
    known = BEST_METRICS[trainer]
    metric = cfg.train.best_metric
    if metric == "auto":
        metric = next(m for m in known if m in measured)
    if metric not in known:
        raise ConfigError(f"config train.best_metric: '{metric}' is not a {trainer} metric "
                          f"(choose auto, {', '.join(known)})")
    if metric not in measured:
        raise ConfigError(f"config train.best_metric: '{metric}' is not measured by this run "
                          f"(it measures {', '.join(m for m in known if m in measured)})")
    mode = known[metric] if cfg.train.best_mode == "auto" else cfg.train.best_mode
    return metric, mode


def load_config(path: str | Path | None = None, overrides: Sequence[str] = (),
                base: Config | None = None, *, old_keys: bool = False) -> Config:
    """BASE (default: the defaults), then the YAML file at PATH, then OVERRIDES.
    OLD_KEYS: accept (and map) the keys of old_keys.OLD_KEYS, to resume a run made with them."""
    cfg = base if base is not None else Config()
    items = [(key, value, str(path)) for key, value in flatten(read_yaml(Path(path)), FREE_FORM)] \
        if path is not None else []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{item}' is not key=value")
        items.append((key.strip(), yaml.safe_load(raw) if raw.strip() else "", "-o"))
    for key, value, where in map_old_keys(items, allowed=old_keys):
        set_key(cfg, key, value, where=where)
    check(cfg)
    for key, rule in RULES.items():  # one spelling of each weighted-terms value
        if isinstance(rule, Terms) and resolve(cfg, key) is not None:
            section, name = key.split(".")
            terms = parse_terms(resolve(cfg, key), key)
            setattr(getattr(cfg, section), name, canonical_terms(terms))
    return cfg


def save_config(cfg: Config, path: Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def valid_keys(cfg: Any = None, prefix: str = "") -> list[str]:
    """Every dotted key of the config (free-form dicts as their own key)."""
    cfg = Config() if cfg is None else cfg
    keys = []
    for f in dataclasses.fields(cfg):
        key = f"{prefix}{f.name}"
        value = getattr(cfg, f.name)
        keys += valid_keys(value, key + ".") if dataclasses.is_dataclass(value) else [key]
    return keys


def set_key(cfg: Config, key: str, value: Any, *, where: str) -> None:
    """Set the dotted KEY to VALUE, typed by the field; errors name KEY and WHERE."""
    for free in FREE_FORM:
        if key.startswith(free + "."):
            resolve(cfg, free)[key[len(free) + 1:]] = value
            return
    keys = valid_keys(cfg)
    if key not in keys:
        close = difflib.get_close_matches(key, keys, n=1, cutoff=0.5)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"{where}: unknown config key '{key}'{hint}")
    section_key, _, name = key.rpartition(".")
    section = resolve(cfg, section_key) if section_key else cfg
    hint = typing.get_type_hints(type(section))[name]
    setattr(section, name, typed(value, hint, key, where))


def check(cfg: Config) -> None:
    """Values that are typed right but not allowed: RULES, first broken key named."""
    check_rules(RULES, lambda key: resolve(cfg, key))


def check_codebooks(cfg: Config, num_codebooks: int) -> None:
    """loss.codebook_weights against the policy's codebooks: known once the policy
    loads, which a trainer does before it writes anything."""
    weights = cfg.loss.codebook_weights
    if weights is not None and len(weights) != num_codebooks:
        raise ConfigError(f"config loss.codebook_weights has {len(weights)} values; the policy "
                          f"has {num_codebooks} codebooks")
