"""Online GRPO, one file read top to bottom (the DPO loop's pieces, plus a rollout phase).

    init (torchrun env or one process) -> prompts (the prompts table, pinned version,
    seeded train/val split) -> policy (+ a live reference when the KL term is on) ->
    optimizer, schedule -> resume -> for step: rollout (sample N per prompt, decode,
    score, reward, advantages, validity), update (per-token loss, backward, clip,
    step), rollouts to the table, log, validate, checkpoint.

Every rank samples its own prompts; groups never cross ranks, so advantages are
local. Rank 0 gathers the rollout rows and appends them to ``rollouts`` (batched,
flushed before every checkpoint: see ttspo.trainer.grpo.rollouts), writes checkpoints
and their rows. A resumed run continues the same prompt order and per-sample
seeds (functions of the step), optimizer and schedule, so it samples and trains
exactly what an uninterrupted run would, and rows already committed are not
appended again. Validation samples the held-out prompts every ``val_every`` steps;
the best checkpoint is picked by ``train.best_metric`` (config.BEST_METRICS: auto is
the lowest validation CER, the highest mean reward when CER is not scored).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from ttspo.builder.core.dist import all_mean, all_sum, compute_cleanup, compute_init, gather_objects
from ttspo.builder.core.errors import ConfigError, TrainingError
from ttspo.builder.core.store import Lineage, as_lineage, make_lineage
from ttspo.builder.core.schemas import GEN, RWD
from ttspo.trainer.run import checkpoints as ckpt
from ttspo.trainer.run.checkpointer import Checkpointer
from ttspo.trainer.run import faults
from ttspo.trainer.run.config import Config, GrpoConfig, best_rule
from ttspo.trainer.run.config_rules import parse_terms
from ttspo.trainer.dpo.data import shard
from ttspo.trainer.grpo.rollout import (PHASES, Prompts, Scoring, load_prompts, rollout,
                                        split_prompts, step_prompts)
from ttspo.trainer.dpo.loop import (_progress, build_optimizer, build_scheduler, make_policy,
                                    optimizer_step)
from ttspo.trainer.policy.base import Sampling, token_logps
from ttspo.trainer.run.verify import checked_sha256, verified_latest
from ttspo.trainer.run.repair import repair_on_resume
from ttspo.trainer.grpo.losses import GRPO_LOSSES, token_entropy
from ttspo.builder.scoring.plan import failed_rows
from ttspo.trainer.grpo.rewards import RETIRED, REWARDS, RewardConfig
from ttspo.trainer.grpo.rollouts import RolloutWriter, committed_steps
from ttspo.trainer.run.runlock import run_lock
from ttspo.trainer.run.folder import (RUN_FILE, MetricsLog, identity_config, log_lineage,
                                      open_run_dir)

PARTS = {name: spec.part for name, spec in REWARDS.items()}


def reward_config(g: GrpoConfig) -> RewardConfig:
    """The rewards of a GRPO config (what `ttspo rewards` takes as options)."""
    weights = parse_terms(g.rewards, "grpo.rewards")
    if "utmos" in weights:
        raise ConfigError(f"grpo.rewards: {RETIRED['utmos']}")
    return RewardConfig(
        weights=weights, normalize="group" if g.normalize_then_sum else "none",
        mean_cer=g.mean_cer_dataset, mean_ssim=g.mean_ssim_dataset,
        best_ssim=g.best_ssim_achievable, length_target=g.length_target,
        min_valid_len=g.min_valid_codes_len,
        max_valid_len=g.max_valid_codes_len or g.max_decoder_steps - 1,
        best_cer_threshold=g.best_cer_threshold, worst_cer_threshold=g.worst_cer_threshold,
        invalid_reward=g.invalid_reward,
        limits=parse_terms(g.limits, "grpo.limits") if g.limits else {},
        scale_rewards=g.scale_rewards if g.scale_rewards is not None else g.loss_type == "grpo")


def sampling_for(g: GrpoConfig, step: int, seed: int) -> Sampling:
    """NeMo samples a share ``inference_cfg_prob`` of steps with CFG: a seeded coin per step."""
    guided = np.random.default_rng([seed, step, 3]).random() < g.inference_cfg_prob
    return Sampling(temperature=g.temperature, top_k=g.topk,
                    cfg_scale=g.inference_cfg_scale if guided else 1.0,
                    max_steps=g.max_decoder_steps, use_kv_cache=g.use_kv_cache, seed=seed)


@dataclass(kw_only=True)
class GrpoResult:
    run_dir: Path
    steps: int
    first: dict[str, float] = field(default_factory=dict)
    last: dict[str, float] = field(default_factory=dict)
    val: dict[str, float] = field(default_factory=dict)
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    rollout_commits: int = 0
    skipped_rows: int = 0


def train_grpo(store: Any, *, cfg: Config, out: str | Path, spec: str = "tiny",
               init: str | None = None, lineage: Lineage | dict[str, Any] | None = None,
               echo: Callable[[str], None] = print, force_lock: bool = False) -> GrpoResult:
    """Train SPEC's policy online on the store's prompts with GRPO; see the module.
    FORCE_LOCK takes the run folder over from a writer on another host (runlock.py)."""
    c = compute_init(cfg.train.device)
    try:
        faults.check()
        lineage = as_lineage(lineage or make_lineage("train grpo", {"out": str(out)}))
        out = Path(out).absolute()
        with run_lock(out, c, force=force_lock) as lock:  # one writer: before any read
            return _train(store, cfg, out, spec, init=init, lineage=lineage, echo=echo, c=c,
                          lock=lock)
    finally:
        compute_cleanup()


def _train(store, cfg: Config, out: Path, spec, *, init, lineage, echo, c, lock=None) -> GrpoResult:
    say = echo if c.master else (lambda *_: None)
    g, seed = cfg.grpo, cfg.data.seed
    rewards = reward_config(g)
    scoring = Scoring.needed(rewards, asr=g.asr, sv=g.sv, squim=g.squim, normalizer=g.normalizer)
    measured = ["val/reward"] + ["val/cer"] * bool(scoring.asr) + ["val/ssim"] * bool(scoring.sv)
    best_metric, best_mode = best_rule(cfg, "grpo", measured)  # before anything is written
    # Prompts: a pinned version of the table, a seeded train/val split.
    # An --init checked against what records it (a run's checkpoint) before it is used.
    init_sha = checked_sha256(init, store) if init else None
    policy = make_policy(spec, init, cfg, cfg.train.seed)
    prompts = load_prompts(store, g.prompts, g.where, encode=policy.codec.encode)
    train, val = split_prompts(prompts, g.val_prompts, seed)
    # enough prompts?
    step_prompts(train, 0, g.prompts_per_step, c.rank, world=c.world_size, seed=seed)
    run = out.name
    if not (out / RUN_FILE).exists() and committed_steps(store, run):
        # The run is named by its folder: a new run under a used name would have its
        # rollouts skipped as "already stored" and mixed with the old run's rows.
        # Checked before the run folder is made: a refused command leaves none.
        raise TrainingError(f"rollouts already holds a run named '{run}' that {out} did not "
                            "make; train into a folder with another name")
    resuming = open_run_dir(out, run_identity(cfg, prompts, spec, init_sha), cfg, c)
    ref_model = None
    if not g.reference_free and g.grpo_beta > 0:  # the KL term's reference: the initial policy
        ref_model = copy.deepcopy(policy).eval().requires_grad_(False).to(c.device)
    # Every file of the latest checkpoint checked against its records first: a refusal
    # leaves the folder and the table as they were (the repair below writes).
    latest = verified_latest(out, store) if resuming else None
    # What a kill left (a checkpoint without its row, half-made folders) is repaired
    # next, so rows and folders agree again (it never changes which folder is latest).
    repaired = repair_on_resume(store, out, c, trainer="grpo", lineage=lineage) if resuming else []
    if latest is not None:
        policy = make_policy(spec, str(latest / ckpt.POLICY_FILE), cfg, cfg.train.seed)
    policy.to(c.device).train()
    model = torch.nn.parallel.DistributedDataParallel(policy) if c.ddp else policy
    optimizer = build_optimizer(policy, cfg)
    scheduler = build_scheduler(optimizer, cfg)
    start, best = ckpt.resume(latest, out, optimizer=optimizer, scheduler=scheduler,
                              rank=c.rank, world_size=c.world_size, best_metric=best_metric)
    # The rollouts' policy tag (ROLL.checkpoint): the sha256 of the newest checkpoint
    # file at or before the sampling step, or of the weights the run started from. Not a
    # hash per step (it serialised the whole policy every step): the weights at step S
    # are that checkpoint's plus S - its step updates of this run, which a resume
    # replays exactly; at a checkpoint's own step it is the sampling weights' sha256.
    tag = ckpt.read_meta(latest)["sha256"] if latest is not None else policy.identity().sha256
    say(f"train grpo: prompts@{prompts.version}, {len(train)} train / {len(val)} val prompts, "
        f"{g.n_generations_per_item} samples each, {c.world_size} process(es), "
        + (f"resuming at step {start}" if latest is not None else "from step 0"))
    # Lineage (rollouts, checkpoint rows and meta.json, lineage.jsonl): the prompts
    # version and every table the where condition read, with the selection itself.
    lineage = lineage.with_inputs(prompts.inputs).with_extra(
        run=run, prompts=f"prompts@{prompts.version}", where=g.where,
        reference="live" if ref_model is not None else "none",  # the KL term's
        start_sha256=tag)  # the first rollouts' tag: the weights this start or resume loaded
    for note in repaired:
        say(f"repaired: {note}")
    lineage = lineage.with_extra(repaired=repaired) if repaired else lineage
    log_lineage(out, lineage, start, c)
    meta = {"config": cfg.to_dict(), "lineage": dict(lineage), "prompts_version": prompts.version,
            "init_sha256": init_sha, "trainer": "grpo"}
    writer = RolloutWriter(store, run, lineage.with_extra(rewards=rewards.as_dict()),
                           every=g.rollouts_every) if c.master else None
    log = MetricsLog(out, c, start_step=start, tensorboard=cfg.train.tensorboard)
    # Rollouts first: a checkpoint at S means the rows through S are stored.
    saver = Checkpointer(store=store, out=out, trainer="grpo", policy=policy,
                         optimizer=optimizer, scheduler=scheduler, meta=meta, lineage=lineage,
                         master=c.master, data_state=lambda step: {"step": step},
                         best_metric=best_metric, best_mode=best_mode, best=best,
                         last_good=latest, tag=tag, guard=lock.check if lock else None,
                         before_save=writer.flush if writer is not None else None)
    result = GrpoResult(run_dir=out, steps=start, checkpoints=saver.rows)
    args = dict(run=run, n=g.n_generations_per_item, seed=seed, rewards=rewards, scoring=scoring,
                store_audio=g.store_audio, eos_target=cfg.data.eos_target)

    def collect(step: int, table: pa.Table, split: str) -> None:
        """Every rank's rows to rank 0's writer (a collective)."""
        tables = gather_objects(table)
        if writer is not None:
            writer.add(step, pa.concat_tables([t for t in tables if t is not None]), split)

    def validate(step: int) -> dict[str, float]:
        mine = [val[i] for i in shard(len(val), c.rank, c.world_size)]
        sums = torch.zeros(4, dtype=torch.float64)
        if mine:
            ro = rollout(policy, prompts, mine, step=step, split="val",
                         sampling=sampling_for(g, step, seed + 1),
                         checkpoint=saver.tag, **args)
            t = ro.table
            sums += torch.tensor([_sum(t, GEN.cer), _sum(t, GEN.ssim), _sum(t, RWD.reward),
                                  t.num_rows], dtype=torch.float64)
            collect(step, t, "val")
        elif c.ddp:
            collect(step, None, "val")
        sums = all_sum(sums)
        n = max(1.0, float(sums[3]))
        means = {"val/cer": float(sums[0]) / n, "val/ssim": float(sums[1]) / n, "val/reward": float(sums[2]) / n}
        return {name: means[name] for name in measured}  # what this run scores (best_rule's list)

    if start == 0 and val and cfg.train.val_every:  # the baseline the run improves on
        result.val = {"step": 0, **validate(0)}
        log.log(0, {k: v for k, v in result.val.items() if k != "step"})
    for step in _progress(range(start, cfg.train.max_steps), c, cfg):
        began = time.perf_counter()
        idx = step_prompts(train, step, g.prompts_per_step, c.rank, world=c.world_size, seed=seed)
        ro = rollout(policy, prompts, idx, step=step, split="train",
                     sampling=sampling_for(g, step, seed), checkpoint=saver.tag, **args)
        t = time.perf_counter()
        stats = update(model, policy, ref_model, ro, g=g)
        saver.check_loss(step, all_mean(stats["loss"].reshape(1), c))
        grad_norm, lr = optimizer_step(policy, optimizer, scheduler, cfg)
        seconds = {**ro.seconds, "update": time.perf_counter() - t}
        collect(step, ro.table, "train")
        done = step + 1
        metrics = step_metrics(ro.table, stats, seconds, c)
        metrics.update(lr=lr, grad_norm=float(grad_norm), rollouts_per_second=(
            ro.table.num_rows * c.world_size / (time.perf_counter() - began)))
        if done % cfg.train.log_every == 0 or done == cfg.train.max_steps or not result.first:
            log.log(done, metrics)
            result.first = result.first or {"step": done, **metrics}
            result.last = {"step": done, **metrics}
        val_metrics: dict[str, float] = {}
        if val and cfg.train.val_every and (done % cfg.train.val_every == 0
                                            or done == cfg.train.max_steps):
            val_metrics = validate(done)
            log.log(done, val_metrics)
            result.val = {"step": done, **val_metrics}
        saver.after_step(done, val_metrics, max_steps=cfg.train.max_steps,
                         every=cfg.train.checkpoint_every)
        result.steps = done
    if writer is not None:
        writer.flush()
        result.rollout_commits, result.skipped_rows = writer.commits, writer.skipped
    log.close()
    return result


def run_identity(cfg: Config, prompts: Prompts, spec: str, init_sha: str | None) -> dict:
    conf = identity_config(cfg)
    identity = {"trainer": "grpo", "prompts": f"prompts@{prompts.version}", "policy": spec,
                "init_sha256": init_sha, "config": conf}
    others = {k: v for k, v in prompts.inputs.items() if k != "prompts"}
    if others:  # the where condition read other tables: a resume must read the same versions
        identity["where_inputs"] = others
    return identity


def update(model, policy, ref_model, ro, *, g: GrpoConfig) -> dict[str, torch.Tensor]:
    """The GRPO loss of one rollout (on-policy: one update per rollout), backward done."""
    batch = policy.collate(ro.train_rows, with_targets=True)
    device = next(policy.parameters()).device
    batch = batch.to(device) if hasattr(batch, "to") else batch
    tf = model(batch)
    logps = token_logps(tf)
    ref = None
    if ref_model is not None:
        with torch.no_grad():
            ref = token_logps(ref_model.forward_teacher(batch))
    entropy = token_entropy(tf.logits) if g.entropy_coef else token_entropy(tf.logits.detach())
    adv = torch.tensor(ro.table[RWD.advantage].to_pylist(), dtype=torch.float32, device=device)
    keep = torch.as_tensor(np.asarray(ro.table[RWD.group_valid].to_pylist()), device=device)
    out = GRPO_LOSSES[g.loss_type](logps, adv, tf.mask, keep, ref_logps=ref, entropy=entropy,
                                   kl_beta=g.grpo_beta, entropy_coef=g.entropy_coef,
                                   max_steps=g.max_decoder_steps)
    out.loss.backward()
    return {"loss": out.loss.detach(), "kl": out.kl, "entropy": out.entropy}


def step_metrics(table: pa.Table, stats: dict[str, torch.Tensor], seconds: dict[str, float],
                 c) -> dict[str, float]:
    """This step's metrics, averaged over ranks (every rank has as many samples)."""
    values = {"loss": stats["loss"], "kl": stats["kl"], "entropy": stats["entropy"],
              "reward/mean": _mean(table, RWD.reward),
              "advantage/std": float(np.std(table[RWD.advantage].to_numpy())),
              "groups/valid_fraction": _mean(table, RWD.group_valid),
              "samples/valid_fraction": _mean(table, RWD.valid),
              "codes_len/mean": _mean(table, GEN.codes_len)}
    # samples whose rewarded metric could not be computed (NULL, reason in *_status): invalid
    values["reward/failed"] = failed_rows(table)
    for name, part in PARTS.items():
        if table[part].null_count < table.num_rows:
            values[f"reward/{name}"] = _mean(table, part)
    for metric in (GEN.cer, GEN.ssim):
        if table[metric].null_count < table.num_rows:
            values[f"{metric}/mean"] = _mean(table, metric)
    for phase in (*PHASES, "update"):
        values[f"time/{phase}"] = seconds[phase]
    keys = sorted(values)
    means = dict(zip(keys, all_mean(torch.tensor([float(values[k]) for k in keys],
                                                 dtype=torch.float64), c).tolist()))
    means["reward/failed"] *= c.world_size  # a count over ranks, not a mean
    return means


def _mean(table: pa.Table, column: str) -> float:
    value = pc.mean(table[column].cast(pa.float64())).as_py()
    return float("nan") if value is None else value


def _sum(table: pa.Table, column: str) -> float:
    return float(pc.sum(table[column].cast(pa.float64())).as_py() or 0.0)
