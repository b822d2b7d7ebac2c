"""The offline preference loop (DPO, IPO, RPO), one file read top to bottom.

    init (torchrun env or one process) -> data (a set version from the store) ->
    policy (+ a live reference, unless precomputed log-probs match) -> optimizer,
    schedule -> resume from the run folder -> for step: micro-batches (chosen and
    rejected in ONE forward), loss, backward, clip, step, log, validate, checkpoint.

Rank 0 writes files and table rows; every rank computes. A resumed run continues
the same data order (a function of the step), RNG streams (every rank's, saved in
each checkpoint), optimizer and schedule, so its losses equal an uninterrupted
run's. Both loops take the process's rank and device from the one distributed
runtime (builder/core/dist.py: compute_init). GRPO imports the pieces above
:func:`train_dpo` (build_optimizer, build_scheduler, optimizer_step), the run folder's
(trainer/run/folder.py: MetricsLog, open_run_dir) and checkpoints' (trainer/run/checkpoints.py:
resume, and the Checkpointer both loops save, pick `best` and stop on a
non-finite loss with), and adds its rollout phase.
"""

from __future__ import annotations

import contextlib
import copy
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ttspo.builder.core.dist import Compute, all_mean, all_sum, compute_cleanup, compute_init
from ttspo.builder.core.errors import TrainingError
from ttspo.builder.core.store import Lineage, as_lineage, make_lineage
from ttspo.trainer.run import checkpoints as ckpt
from ttspo.trainer.run.checkpointer import Checkpointer
from ttspo.trainer.run import faults
from ttspo.trainer.dpo import dynamics as D
from ttspo.trainer.dpo import losses as L
from ttspo.trainer.run.config import BEST_METRICS, Config, best_rule, check_codebooks
from ttspo.trainer.run.config_rules import parse_terms
from ttspo.trainer.dpo.data import PairOrder, Pairs, load_pairs, shard
from ttspo.trainer.run.verify import checked_sha256, verified_latest
from ttspo.trainer.dpo.forward import concatenated_forward
from ttspo.trainer.dpo.ref import RefCache, lookup, policy_key, reference_logps
from ttspo.trainer.dpo.stream import step_batches
from ttspo.trainer.run.repair import repair_on_resume
from ttspo.trainer.run.runlock import run_lock
from ttspo.trainer.run.folder import (MetricsLog, log_lineage, open_run_dir,  # noqa: F401
                                     read_metrics, run_identity)



# ------------------------------------------------------- optimizer, schedule
def build_optimizer(model: torch.nn.Module, cfg: Config) -> torch.optim.Optimizer:
    o = cfg.optim
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: Config) -> Any:
    """constant (NeMo's recipe), or linear warmup then cosine down to min_lr_ratio."""
    o, total = cfg.optim, cfg.train.max_steps

    def factor(step: int) -> float:
        if o.schedule == "constant":
            return 1.0
        if step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        progress = (step - o.warmup_steps) / max(1, total - o.warmup_steps)
        return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def optimizer_step(policy: torch.nn.Module, optimizer: Any, scheduler: Any,
                   cfg: Config) -> tuple[float, float]:
    """Clip (optim.clip_grad_norm; 0 measures without clipping), step, schedule, zero:
    (the gradient norm before clipping, the lr the step used). DPO and GRPO alike."""
    clip = cfg.optim.clip_grad_norm if cfg.optim.clip_grad_norm > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), clip)
    lr = scheduler.get_last_lr()[0]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return float(grad_norm), lr


def autocast(cfg: Config, c: Compute) -> Any:
    if cfg.train.precision == "bf16":
        return torch.autocast(c.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ---------------------------------------------------------------- the loop
@dataclass(kw_only=True)
class RunResult:
    run_dir: Path
    steps: int
    reference: str  # "cached" | "live" | "none"
    first: dict[str, float]  # metrics of the first logged step of this process
    last: dict[str, float]
    val: dict[str, float]
    checkpoints: list[dict[str, Any]]  # rows written by this process


def make_policy(spec: str, init: str | None, cfg: Config, seed: int) -> Any:
    """INIT's weights, or a fresh policy from the config's size and the seed."""
    from ttspo.trainer.policy.base import load_policy

    torch.manual_seed(seed)  # a fresh init is the same on every rank and every resume
    return load_policy(spec, init=init, config=cfg.policy.model or None)


def warn_dropout(policy: torch.nn.Module, echo: Callable[[str], None]) -> None:
    p = [m.p for m in policy.modules() if isinstance(m, torch.nn.Dropout) and m.p > 0]
    if p:
        echo(f"warning: dropout is on (p={max(p)}): the policy trains in train mode and the "
             "reference runs in eval mode, so the first loss is not log 2")


def train_dpo(store: Any, set_ref: str, *, cfg: Config, out: str | Path, spec: str = "tiny",
              init: str | None = None, lineage: Lineage | dict[str, Any] | None = None,
              echo: Callable[[str], None] = print, force_lock: bool = False) -> RunResult:
    """Train SPEC's policy on set SET_REF with the preference losses of CFG; see the module.
    FORCE_LOCK takes the run folder over from a writer on another host (runlock.py)."""
    c = compute_init(cfg.train.device)
    try:
        faults.check()
        lineage = as_lineage(lineage or make_lineage("train dpo", {"set": set_ref}))
        out = Path(out).absolute()
        with run_lock(out, c, force=force_lock) as lock:  # one writer: before any read
            return _train(store, set_ref, cfg, out, spec=spec, init=init, lineage=lineage,
                          echo=echo, c=c, lock=lock)
    finally:
        compute_cleanup()


def _train(store, set_ref, cfg, out, *, spec, init, lineage, echo, c, lock=None) -> RunResult:
    say = echo if c.master else (lambda *_: None)
    best_metric, best_mode = best_rule(cfg, "dpo", BEST_METRICS["dpo"])
    # Data: the set version, joined at its generations version (codec only for contexts).
    # An --init checked against what records it (a run's checkpoint) before it is used.
    init_sha = checked_sha256(init, store) if init else None
    policy = make_policy(spec, init, cfg, cfg.train.seed)
    check_codebooks(cfg, policy.codec.num_codebooks)
    pairs = load_pairs(store, set_ref, encode=policy.codec.encode,
                       stream=cfg.data.loader == "stream", eos_target=cfg.data.eos_target)
    train, val = pairs.select("train"), pairs.select("val")
    order = PairOrder(num_pairs=len(train), pairs_per_device=cfg.data.pairs_per_device,
                      world_size=c.world_size, grad_accum=cfg.optim.grad_accum, seed=cfg.data.seed)
    order.check(pairs.ref)
    # Reference: cached log-probs on an exact key match (the init's file and the
    # policy's config: both change the logits), else a live copy of the init. Before
    # the run folder: a missing cache under require_ref_cache leaves nothing behind.
    cache, ref_model = None, None
    policy_sha = policy_key(policy, cfg.data.eos_target)
    if not cfg.loss.reference_free:
        cache = lookup(store, pairs, init_sha, policy_sha) if init_sha else None
        if cache is None and cfg.train.require_ref_cache:
            raise TrainingError(
                f"no ref_logps for {pairs.ref}, reference sha256 {init_sha} and policy config "
                f"sha256 {policy_sha[:12]}; run 'ttspo train precompute-ref {pairs.ref} --ref "
                f"{init}' with this run's --config/-o first" if init else
                "train.require_ref_cache needs --init (the checkpoint precompute-ref used)")
        if cache is None:
            ref_model = copy.deepcopy(policy).eval().requires_grad_(False)
    resuming = open_run_dir(out, run_identity(cfg, trainer="dpo", pairs=pairs, spec=spec,
                                              init_sha256=init_sha), cfg, c)
    reference = "none" if cfg.loss.reference_free else ("cached" if cache else "live")
    # Resume: the latest complete checkpoint's weights, optimizer, schedule, RNG, step.
    # Every file of the latest checkpoint checked against its records first: a refusal
    # leaves the folder and the table as they were (the repair below writes).
    latest = verified_latest(out, store) if resuming else None
    # What a kill left (a checkpoint without its row, half-made folders) is repaired
    # next, so rows and folders agree again (it never changes which folder is latest).
    repaired = repair_on_resume(store, out, c, trainer="dpo", lineage=lineage) if resuming else []
    if latest is not None:
        policy = make_policy(spec, str(latest / ckpt.POLICY_FILE), cfg, cfg.train.seed)
    policy.to(c.device).train()
    if ref_model is not None:
        ref_model.to(c.device)
    warn_dropout(policy, say)
    model = torch.nn.parallel.DistributedDataParallel(policy) if c.ddp else policy
    optimizer = build_optimizer(policy, cfg)
    scheduler = build_scheduler(optimizer, cfg)
    start, best = ckpt.resume(latest, out, optimizer=optimizer, scheduler=scheduler,
                              rank=c.rank, world_size=c.world_size, best_metric=best_metric)
    if latest is None:
        torch.manual_seed(cfg.train.seed + 1000 * c.rank)  # each rank's own dropout stream
    say(f"train dpo: {pairs.ref} (generations@{pairs.generations_version}), {len(train)} train / "
        f"{len(val)} val pairs, {c.world_size} process(es), reference {reference}, "
        + (f"resuming at step {start}" if latest is not None else "from step 0"))
    # Lineage (checkpoint rows, their meta.json, the run folder's lineage.jsonl): the
    # set's versions, and where the reference log-probs came from.
    lineage = lineage.with_inputs({**pairs.lineage_inputs(),
                                   **({"ref_logps": cache.version} if cache else {})})
    lineage = lineage.with_extra(reference=reference, policy_sha256=policy_sha)
    for note in repaired:
        say(f"repaired: {note}")
    lineage = lineage.with_extra(repaired=repaired) if repaired else lineage
    log_lineage(out, lineage, start, c)
    meta = {"config": cfg.to_dict(), "lineage": dict(lineage), "set_name": pairs.set_name,
            "set_version": pairs.set_version, "generations_version": pairs.generations_version,
            "prompts_version": pairs.prompts_version, "init_sha256": init_sha, "trainer": "dpo"}
    log = MetricsLog(out, c, start_step=start, tensorboard=cfg.train.tensorboard)
    # Pair dynamics: rows past the checkpoint resumed from go (the steps replay), and
    # the rows through a step are committed before its checkpoint (trainer/dpo/dynamics.py).
    run = D.run_name(store, out, master=c.master, enabled=cfg.train.pair_dynamics)
    if resuming and cfg.train.pair_dynamics:
        D.on_resume(store, run, checkpoint_step=start if latest is not None else None,
                    lineage=lineage, master=c.master)
    dyn = D.DynamicsWriter(store=store, run=run, set_name=pairs.set_name,
                           set_version=pairs.set_version, lineage=lineage, master=c.master,
                           enabled=cfg.train.pair_dynamics)
    saver = Checkpointer(store=store, out=out, trainer="dpo", policy=policy,
                         optimizer=optimizer, scheduler=scheduler, meta=meta, lineage=lineage,
                         master=c.master, data_state=order.position, best_metric=best_metric,
                         best_mode=best_mode, best=best, last_good=latest,
                         guard=lock.check if lock else None)
    result = RunResult(run_dir=out, steps=start, reference=reference, first={}, last={}, val={},
                       checkpoints=saver.rows)

    if start == 0 and len(val) and cfg.train.val_every:  # the baseline the run improves on
        result.val = {"step": 0, **validate(policy, ref_model, cache, val, cfg=cfg, c=c,
                                            record=dyn.recorder(val, step=0, epoch=0))}
        log.log(0, {k: v for k, v in result.val.items() if k != "step"})
    bar = _progress(range(start, cfg.train.max_steps), c, cfg)
    batches = step_batches(train, order, c.rank, start=start, stop=cfg.train.max_steps,
                           data=cfg.data)
    for step in bar:
        began = time.perf_counter()
        sums: dict[str, torch.Tensor] = {}
        micro, done = next(batches), step + 1
        epoch = order.position(step)["epoch"]
        # Summed on the device and checked once a step, before the optimizer: a check per
        # micro-batch would wait for the GPU (and all-reduce) every micro-batch. A sum is
        # finite only when every term is, and a non-finite gradient never reaches the weights.
        loss_sum = torch.zeros((), dtype=torch.float64, device=c.device)
        for a, (idx, codes) in enumerate(micro):
            sync = a == len(micro) - 1
            values: dict[str, torch.Tensor] | None = {} if dyn.enabled else None
            with (contextlib.nullcontext() if sync or not c.ddp else model.no_sync()):
                with autocast(cfg, c):
                    loss, metrics = pair_step(model, policy, ref_model, cache, pairs=train,
                                              idx=idx, cfg=cfg, codes=codes, values=values)
                dyn.add_pairs(train, idx, step=done, epoch=epoch, split="train", values=values)
                loss_sum += loss.detach().double()
                (loss / len(micro)).backward()
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0) + v / len(micro)
        saver.check_loss(step, all_mean((loss_sum / len(micro)).float().reshape(1), c))
        grad_norm, lr = optimizer_step(policy, optimizer, scheduler, cfg)
        keys = sorted(sums)
        means = all_mean(torch.stack([sums[k].float() for k in keys]), c).tolist()
        metrics = dict(zip(keys, means), lr=lr, grad_norm=float(grad_norm),
                       pairs_per_second=order.pairs_per_step / (time.perf_counter() - began))
        if done % cfg.train.log_every == 0 or done == cfg.train.max_steps or not result.first:
            log.log(done, metrics)
            result.first = result.first or {"step": done, **metrics}
            result.last = {"step": done, **metrics}
        if c.master and hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{metrics['loss/total']:.4f}",
                            acc=f"{metrics['rewards/accuracies']:.2f}")
        val_metrics: dict[str, float] = {}
        if len(val) and cfg.train.val_every and (done % cfg.train.val_every == 0
                                                 or done == cfg.train.max_steps):
            val_metrics = validate(policy, ref_model, cache, val, cfg=cfg, c=c,
                                   record=dyn.recorder(val, step=done, epoch=epoch))
            log.log(done, val_metrics)
            result.val = {"step": done, **val_metrics}
        if D.checkpoint_due(done, every=cfg.train.checkpoint_every, max_steps=cfg.train.max_steps):
            dyn.commit(done)  # first: a checkpoint at S means the rows through S are stored
        saver.after_step(done, val_metrics, max_steps=cfg.train.max_steps,
                         every=cfg.train.checkpoint_every)
        result.steps = done
    batches.close()
    log.close()
    if latest is not None and start >= cfg.train.max_steps:
        say(f"{out}: already trained to step {start}; nothing to do")
    return result


def _progress(steps: range, c: Compute, cfg: Config) -> Any:
    if not (c.master and cfg.train.progress):
        return steps
    from tqdm import tqdm

    return tqdm(steps, total=len(steps), file=sys.stderr, desc="dpo", leave=False)


def pair_step(model, policy, ref_model, cache: RefCache | None, *, pairs: Pairs, idx,
              cfg: Config, codes=None, values: dict | None = None
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss and metrics of one micro-batch: ONE policy forward over chosen + rejected.
    CODES: the micro-batch's codes read ahead (streaming); read here if not. VALUES, when
    given, receives the per-pair margin, correct and loss (trainer/dpo/dynamics.py)."""
    w = cfg.loss.codebook_weights
    if codes is None and pairs.codes is not None:  # streaming: read once for both forwards
        codes = pairs.read_codes(idx)
    out = concatenated_forward(model, policy, pairs, idx, codes=codes)
    pi_c, pi_r = out.chosen, out.rejected
    if cache is not None:
        ref_c, ref_r = (t.to(pi_c.device) for t in cache.lookup(pairs.pair_ids, idx))
    elif ref_model is not None:
        ref_c, ref_r = reference_logps(ref_model, pairs, idx, codes)
    else:
        ref_c, ref_r = torch.zeros_like(pi_c), torch.zeros_like(pi_r)
    chosen_r, rejected_r = (torch.as_tensor(r[idx], dtype=torch.float32, device=pi_c.device)
                            for r in (pairs.chosen_reward, pairs.rejected_reward))
    n_c, n_r = (out.chosen_tokens, out.rejected_tokens) if cfg.loss.length_normalize else (None, None)
    x = L.PairLogps(pi_chosen=L.sequence_logp(pi_c.float(), w, n_c),
                    pi_rejected=L.sequence_logp(pi_r.float(), w, n_r),
                    ref_chosen=L.sequence_logp(ref_c.float(), w, n_c),
                    ref_rejected=L.sequence_logp(ref_r.float(), w, n_r),
                    reward_chosen=chosen_r, reward_rejected=rejected_r)
    loss, parts = L.combine(x, losses=list(parse_terms(cfg.loss.terms, "loss.terms").items()),
                            beta=cfg.loss.beta, label_smoothing=cfg.loss.label_smoothing,
                            gt_reward_scale=cfg.loss.gt_reward_scale, sft_weight=cfg.loss.sft_weight)
    if out.alignment is not None:  # NeMo's DPO adds the chosen rows' alignment loss, unweighted
        parts["loss/alignment"] = out.alignment.detach()
        loss = loss + out.alignment
    chosen, rejected = L.implicit_rewards(x, cfg.loss.beta)
    margin = chosen - rejected
    if values is not None:
        values.update(D.pair_values(x, cfg))
    metrics = {**parts, "loss/total": loss.detach(),
               "rewards/chosen": chosen.mean(), "rewards/rejected": rejected.mean(),
               "rewards/margins": margin.mean(), "rewards/accuracies": L.accuracy(x).mean(),
               "logps/chosen": x.pi_chosen.detach().mean(),
               "logps/rejected": x.pi_rejected.detach().mean()}
    return loss, metrics


@torch.no_grad()
def validate(policy, ref_model, cache, val: Pairs, *, cfg: Config, c: Compute,
             record: Callable | None = None) -> dict[str, float]:
    """Loss, preference accuracy and reward margin over the val split (every rank a shard).
    RECORD(idx, per-pair values), when given, gets each batch's pairs (pair dynamics)."""
    policy.eval()
    mine = shard(len(val), c.rank, c.world_size)
    sums = torch.zeros(4, dtype=torch.float64)
    size = cfg.data.val_pairs_per_device
    for start in range(0, len(mine), size):
        idx = mine[start:start + size]
        with autocast(cfg, c):
            values: dict[str, torch.Tensor] | None = {} if record else None
            loss, m = pair_step(policy, policy, ref_model, cache, pairs=val, idx=idx, cfg=cfg,
                                values=values)
        if record:
            record(idx, values)
        n = len(idx)
        sums += torch.tensor([float(loss) * n, float(m["rewards/accuracies"]) * n,
                              float(m["rewards/margins"]) * n, n], dtype=torch.float64)
    policy.train()
    sums = all_sum(sums)
    n = max(1.0, float(sums[3]))
    return {"val/loss": float(sums[0]) / n, "val/accuracy": float(sums[1]) / n,
            "val/margin": float(sums[2]) / n}
