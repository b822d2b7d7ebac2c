"""One run's checkpoints: the Checkpointer DPO and GRPO both save through.

DPO and GRPO save through one :class:`Checkpointer` (``trainer="grpo"``,
``prompts_version``): the periodic and best checkpoints, their meta (every rank's
weights digest), rows and lineage, and the non-finite-loss stop naming the last good
one. The files, their folder and their `checkpoints` rows are trainer/run/checkpoints.py's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ttspo.builder.core.dist import broadcast_object
from ttspo.builder.core.errors import TrainingError
from ttspo.trainer.run import faults
from ttspo.trainer.run.checkpoints import (CHECKPOINTS, POLICY_FILE, Saved, checkpoint_row,
                                           gather_rng_states, gather_weight_digests,
                                           record_checkpoint, remove_rows, save_checkpoint,
                                           step_dir)

@dataclass(kw_only=True)
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
    guard: Callable[[], None] | None = None  # rank 0, before writing: is the run lock still ours?

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
                saved = self._write(step, kind, val_metrics, extra, rngs=rngs, weights=weights)
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

    def _write(self, step, kind, val_metrics, extra, *, rngs, weights) -> Saved:
        if len(set(weights)) > 1:
            raise TrainingError(f"step {step}: the ranks' weights differ ({weights}); stopped")
        if self.guard is not None:
            self.guard()
        if self.before_save is not None:
            self.before_save()
        lineage = self.lineage.with_extra(run=self.run, step=step, kind=kind)
        folder = step_dir(self.out, step) if kind == "step" else \
            Path(self.out) / CHECKPOINTS / f"{kind}_{step:06d}"

        def remove_old_rows() -> None:  # one row per folder: the replaced weights' go first
            remove_rows(self.store, [str((folder / POLICY_FILE).absolute())],
                        lineage.with_extra(removed="rows of a checkpoint folder written again"))
            faults.point("after_rows_removed", step=step, folder=folder.name)

        saved = save_checkpoint(self.out, step, policy=self.policy, optimizer=self.optimizer,
                                scheduler=self.scheduler, rng_states=rngs,
                                data_state=self.data_state(step), kind=kind,
                                meta={**self.meta, "val_metrics": val_metrics,
                                      "rank_weights_sha256": weights, **(extra or {})},
                                before_replace=remove_old_rows)
        row = checkpoint_row(saved, run=self.run, trainer=self.trainer)
        record_checkpoint(self.store, row, lineage)
        faults.point("after_row", step=step, folder=saved.path.name)
        self.rows.append(row)
        return saved
