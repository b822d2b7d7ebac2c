"""Step-numbered checkpoints in a run folder, and their rows in the `checkpoints` table.

A run folder (``--out DIR``) holds::

    run.json                      what run this is (set, versions, config): resume checks it
    config.yaml                   the resolved config
    metrics.jsonl, tb/            metrics (loop.py)
    checkpoints/step_000040/      policy.pt (weights: the policy's own format),
                                  state.pt (optimizer, scheduler, every rank's RNG state),
                                  meta.json (step, data position, sha256, val metrics, lineage)
    checkpoints/best/             the best so far by the chosen validation metric (same files)

A checkpoint folder is written under a temporary name and renamed when complete,
so a run killed while saving leaves the previous checkpoint as the latest. Rank 0
writes the files and the table row; every rank's RNG state reaches it by a gather.
DPO and GRPO save through one :class:`Checkpointer` (``trainer="grpo"``,
``prompts_version``): the periodic and best checkpoints, their meta (every rank's
weights digest), rows and lineage, and the non-finite-loss stop naming the last good one.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import torch
import torch.distributed as dist

from ttspo.builder.core.errors import InputError, TrainingError
from ttspo.builder.core.schemas import CHECKPOINTS_SCHEMA, CKPT

CHECKPOINTS = "checkpoints"  # the table, and the run folder's sub-folder
POLICY_FILE = "policy.pt"
STATE_FILE = "state.pt"
META_FILE = "meta.json"
STEP_DIR = re.compile(r"^step_(\d{6,})$")


@dataclass
class Saved:
    """A checkpoint written: where, its weights' sha256, its meta record."""

    path: Path  # the checkpoint folder
    sha256: str
    meta: dict[str, Any]

    @property
    def policy_path(self) -> Path:
        return self.path / POLICY_FILE


def step_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step_{step:06d}"


def rng_state() -> dict[str, Any]:
    """This process's RNG streams (dropout and sampling draw from torch's)."""
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
            "python": random.getstate()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def gather_rng_states() -> list[dict[str, Any]]:
    """Every rank's RNG state, in rank order (a collective: all ranks call it)."""
    mine = rng_state()
    if not (dist.is_available() and dist.is_initialized()):
        return [mine]
    states: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(states, mine)
    return states


def gather_weight_digests(model: torch.nn.Module) -> list[str]:
    """sha256 of each rank's parameters, in rank order (a collective)."""
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    mine = h.hexdigest()
    if not (dist.is_available() and dist.is_initialized()):
        return [mine]
    digests: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(digests, mine)
    return digests


def broadcast_object(value: Any) -> Any:
    """Rank 0's VALUE on every rank (a collective in a torchrun; VALUE in one process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def save_checkpoint(run_dir: Path, step: int, *, policy: Any, optimizer: Any, scheduler: Any,
                    rng_states: list[dict[str, Any]], data_state: dict[str, Any],
                    meta: dict[str, Any], kind: str = "step") -> Saved:
    """Write one checkpoint folder (rank 0 only) and return it.

    ``meta`` carries what the row and a resume need (config, lineage, val metrics);
    this adds step, kind, data position, sha256 and the policy identity.
    """
    # Every checkpoint gets its own folder, so each `checkpoints` row keeps pointing at
    # the weights its sha256 names; "best" is a link to the newest best_NNNNNN.
    final = step_dir(run_dir, step) if kind == "step" else \
        Path(run_dir) / CHECKPOINTS / f"{kind}_{step:06d}"
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    sha = policy.save(str(tmp / POLICY_FILE))  # the weights serialised once: sha of those bytes
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "rng": rng_states, "data": data_state, "step": step}, tmp / STATE_FILE)
    identity = policy.identity(with_sha256=False)  # the sha is the file's, above
    record = {**meta, "step": step, "kind": kind, "sha256": sha, "data": data_state,
              "architecture": identity.architecture, "policy_config": identity.config,
              "world_size": len(rng_states)}
    (tmp / META_FILE).write_text(json.dumps(record, indent=2, sort_keys=True, default=str))
    if final.exists():  # only after a crash mid-rename (or a resumed run redoing a step)
        shutil.rmtree(final)
    os.replace(tmp, final)
    if kind != "step":
        _point(Path(run_dir) / CHECKPOINTS / kind, final)
    return Saved(final, sha, record)


def _point(link: Path, target: Path) -> None:
    """Make LINK a relative symlink to TARGET, swapped in atomically."""
    staged = link.with_name(link.name + ".link")
    if staged.is_symlink() or staged.exists():
        staged.unlink()
    os.symlink(target.name, staged)
    if link.is_dir() and not link.is_symlink():  # a run folder from before best_NNNNNN
        shutil.rmtree(link)
    os.replace(staged, link)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete step folder of a run, or None."""
    folder = Path(run_dir) / CHECKPOINTS
    if not folder.is_dir():
        return None
    steps = [(int(m.group(1)), p) for p in folder.iterdir()
             if (m := STEP_DIR.match(p.name)) and (p / META_FILE).is_file()]
    return max(steps)[1] if steps else None


def read_meta(path: Path) -> dict[str, Any]:
    return json.loads((Path(path) / META_FILE).read_text())


def load_state(path: Path, *, rank: int, world_size: int) -> dict[str, Any]:
    """Optimizer, scheduler, data position and THIS rank's RNG state of a checkpoint."""
    state = torch.load(Path(path) / STATE_FILE, map_location="cpu", weights_only=False)
    saved_world = len(state["rng"])
    if saved_world != world_size:
        raise InputError(f"{path}: saved by {saved_world} process(es), resumed with "
                         f"{world_size}: resume with --nproc-per-node {saved_world}")
    state["rng"] = state["rng"][rank]
    return state


def resume(latest: Path | None, run_dir: Path, *, optimizer: Any, scheduler: Any, rank: int,
           world_size: int, best_metric: str) -> tuple[int, float | None]:
    """(step to start at, best BEST_METRIC value so far: None when `best` was picked by
    another metric) of a run resumed from LATEST, its optimizer, schedule and THIS
    rank's RNG streams restored; (0, None) without one. DPO and GRPO resume alike (the
    weights are loaded before: the optimizer holds them)."""
    if latest is None:
        return 0, None
    state = load_state(latest, rank=rank, world_size=world_size)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    best_dir = Path(run_dir) / CHECKPOINTS / "best"
    meta = read_meta(best_dir) if (best_dir / META_FILE).exists() else {}
    return state["step"], meta.get("best_value") if meta.get("best_metric") == best_metric else None


# ------------------------------------------------------------------ table rows
def checkpoint_row(saved: Saved, *, run: str, trainer: str) -> dict[str, Any]:
    """The `checkpoints` row for a written checkpoint (its meta says the rest)."""
    meta = saved.meta
    val = meta.get("val_metrics") or {}
    return {
        CKPT.run: run, CKPT.step: meta["step"], CKPT.kind: meta["kind"],
        CKPT.path: str(saved.policy_path.absolute()), CKPT.sha256: saved.sha256,
        CKPT.architecture: meta["architecture"],
        CKPT.policy_config: json.dumps(meta["policy_config"], sort_keys=True, default=str),
        CKPT.init_sha256: meta.get("init_sha256"), CKPT.trainer: trainer,
        CKPT.set_name: meta.get("set_name"), CKPT.set_version: meta.get("set_version"),
        CKPT.generations_version: meta.get("generations_version"),
        CKPT.prompts_version: meta.get("prompts_version"),
        CKPT.val_loss: val.get("val/loss"), CKPT.val_accuracy: val.get("val/accuracy"),
        CKPT.val_margin: val.get("val/margin"),
        CKPT.val_metrics: json.dumps(val, sort_keys=True) if val else None,
        CKPT.config: json.dumps(meta.get("config"), sort_keys=True, default=str),
        CKPT.created: datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def record_checkpoint(store: Any, row: dict[str, Any], lineage: Any) -> int:
    """Append one row to the store's `checkpoints` table (one commit)."""
    table = pa.Table.from_pylist([row], schema=CHECKPOINTS_SCHEMA)
    return store.write(CHECKPOINTS, table, CHECKPOINTS_SCHEMA, lineage)


# ------------------------------------------------------------ one run's saving
@dataclass
class Checkpointer:
    """A run's checkpoints, one implementation for DPO and GRPO. Every rank calls
    :meth:`save` (it gathers RNG states and weight digests); rank 0 writes the folder,
    the meta (``rank_weights_sha256``: every rank's digest, equal by DDP's design) and
    the `checkpoints` row, then tells every rank the file's sha256 and folder."""

    store: Any
    out: Path  # the run folder
    trainer: str  # "dpo" | "grpo"
    policy: Any
    optimizer: Any
    scheduler: Any
    meta: dict[str, Any]  # config, lineage, versions: every checkpoint's meta.json
    lineage: Any  # the run's Lineage (each row's commit adds run, step, kind)
    master: bool
    data_state: Callable[[int], dict[str, Any]]  # the data position after step S
    best_metric: str  # the validation metric that picks `best`
    best_mode: str  # "max" | "min"
    best: float | None = None  # best value so far (a resume reads it back)
    last_good: Path | None = None  # newest step checkpoint: named when a loss is not finite
    tag: str = ""  # sha256 of the newest checkpoint file (GRPO tags its rollouts with it)
    before_save: Callable[[], None] | None = None  # rank 0, first (GRPO: flush rollouts)
    rows: list[dict[str, Any]] = field(default_factory=list)  # rows written (rank 0)

    @property
    def run(self) -> str:
        return self.out.name

    def check_loss(self, step: int, loss: Any) -> None:
        """Stop at a non-finite LOSS (the mean over ranks: every rank stops alike)."""
        if not torch.isfinite(loss).all():
            raise TrainingError(
                f"step {step + 1}: the loss is {loss.item()}; the run stopped. Last good "
                f"checkpoint: {self.last_good or 'none (no checkpoint was written)'}")

    def after_step(self, done: int, val_metrics: dict[str, float], *, max_steps: int,
                   every: int) -> None:
        """A step's end: `best` when validation improved, then every EVERY steps and the last."""
        if val_metrics:
            self.maybe_best(done, val_metrics)
        if (every and done % every == 0) or done == max_steps:
            self.save(done, "step", val_metrics)

    def maybe_best(self, step: int, val_metrics: dict[str, float]) -> None:
        value = val_metrics[self.best_metric]
        if self.best is None or (value > self.best if self.best_mode == "max" else value < self.best):
            self.best = value
            self.save(step, "best", val_metrics, {"best_metric": self.best_metric,
                                                  "best_value": value})

    def save(self, step: int, kind: str, val_metrics: dict[str, float],
             extra: dict[str, Any] | None = None) -> Path:
        rngs = gather_rng_states()  # collectives: every rank calls save
        weights = gather_weight_digests(self.policy)
        outcome: tuple = (None, None, None)  # (sha256, folder, error) rank 0 tells every rank
        if self.master:
            try:
                saved = self._write(step, kind, val_metrics, extra, rngs, weights)
                outcome = (saved.sha256, str(saved.path), None)
            except Exception as exc:  # noqa: BLE001  told to the other ranks, then raised
                broadcast_object((None, None, str(exc)))
                raise
        sha, path, error = broadcast_object(outcome)
        if error is not None:
            raise TrainingError(f"step {step}: rank 0 could not save the checkpoint: {error}")
        if kind == "step":  # a resume finds step checkpoints only: best/ never tags rollouts
            self.tag = sha
            self.last_good = Path(path)
        return Path(path)

    def _write(self, step, kind, val_metrics, extra, rngs, weights) -> Saved:
        if len(set(weights)) > 1:
            raise TrainingError(f"step {step}: the ranks' weights differ ({weights}); stopped")
        if self.before_save is not None:
            self.before_save()
        saved = save_checkpoint(self.out, step, policy=self.policy, optimizer=self.optimizer,
                                scheduler=self.scheduler, rng_states=rngs,
                                data_state=self.data_state(step), kind=kind,
                                meta={**self.meta, "val_metrics": val_metrics,
                                      "rank_weights_sha256": weights, **(extra or {})})
        row = checkpoint_row(saved, run=self.run, trainer=self.trainer)
        record_checkpoint(self.store, row, self.lineage.with_extra(run=self.run, step=step,
                                                                   kind=kind))
        self.rows.append(row)
        return saved
