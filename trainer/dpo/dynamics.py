"""The `pair_dynamics` table: each pair's implicit-reward margin as training saw it.

Dataset cartography (Swayamdipta et al. 2020) for preference pairs. The DPO step
already computes every train pair's margin ``beta * ((pi_c - ref_c) - (pi_r - ref_r))``;
:func:`pair_values` keeps it per pair (with the tie rule's ``correct``, 1 / 0.5 / 0,
and the pair's own loss), so a train pair gets one row per epoch with no extra pass
over the set, and every val pair one row per validation (builder/core/schemas.py: DYN).
A run is named by its folder (:func:`run_name`: NAME~2 when another folder of that
name already wrote rows; the run folder keeps the name for its resumes).

Streaming, bounded memory: each rank buffers its own rows and, past ``flush_rows``,
writes them as uncommitted Lance data files of the table (fragments). The values are
buffered as they come, on the step's device: one copy to the host per flush, never a
device sync per micro-batch. Nothing is
visible until :meth:`DynamicsWriter.commit`, a collective every rank calls: rank 0
gathers every rank's fragment list (a few hundred bytes each) and commits them as
ONE version (a Lance Append), with the run's lineage and the step range.

Resume without duplicates, the rule the run folder already keeps: the loop commits
BEFORE each step checkpoint is saved, so a checkpoint at step S means this run's rows
through S are committed. A kill after that commit but before the checkpoint leaves
rows past the latest checkpoint; the resume deletes them (:func:`on_resume`: rows of
the run with step > S, or every row of the run when no checkpoint was written), then
replays those steps and writes them again. A kill before a commit leaves data files
no version names (readers never see them; `ttspo gc` removes them once a week old:
builder/core/table_files.py).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import torch

from ttspo.builder.core.dist import broadcast_object, gather_objects
from ttspo.builder.core.errors import TrainingError, first_line
from ttspo.builder.core.schemas import DYN, PAIR_DYNAMICS_SCHEMA
from ttspo.builder.core.store import STORAGE_VERSION, Lineage, Store, commit_properties, sql_string
from ttspo.trainer.dpo import losses as L
from ttspo.trainer.run import faults
from ttspo.trainer.run.config_rules import parse_terms

PAIR_DYNAMICS = "pair_dynamics"
FLUSH_ROWS = 65536  # rows a rank buffers before writing them as a fragment (~6 MB)
VALUES = ("margin", "correct", "loss")  # pair_values' keys, in the schema's column order


# ------------------------------------------------------------ per-pair values
def pair_values(x: L.PairLogps, cfg: Any) -> dict[str, torch.Tensor]:
    """Per pair of X ([B] each, detached): the implicit-reward margin, whether the policy
    ranks the pair right (losses.accuracy's tie rule: 1 / 0.5 / 0) and the pair's loss
    under the run's weighted terms (plus the SFT term; the model's alignment loss is a
    batch mean and is left out)."""
    chosen, rejected = L.implicit_rewards(x, cfg.loss.beta)
    loss = torch.zeros_like(chosen)
    for name, weight in parse_terms(cfg.loss.terms, "loss.terms").items():
        loss = loss + weight * L.get_loss(name)(
            x, beta=cfg.loss.beta, label_smoothing=cfg.loss.label_smoothing,
            gt_reward_scale=cfg.loss.gt_reward_scale).detach()
    if cfg.loss.sft_weight:
        loss = loss + cfg.loss.sft_weight * L.sft(x).detach()
    return {"margin": chosen - rejected, "correct": L.accuracy(x), "loss": loss}


# ------------------------------------------------------------------ resume
RUN_NAME_FILE = "pair_dynamics.json"  # in the run folder: the run's name in the table


def run_rows(store: Store, run: str) -> int:
    """How many rows of RUN the table holds."""
    if not store.exists(PAIR_DYNAMICS):
        return 0
    return store.open(PAIR_DYNAMICS).count_rows(filter=f"{DYN.run} = {sql_string(run)}")


def run_name(store: Store, out: Path, *, master: bool, enabled: bool) -> str:
    """The run's name in the table: its folder's name, or, when another run folder of
    that name already wrote rows, the first free NAME~2, NAME~3 ... (two folders
    never mix rows). Chosen once, before the run's first commit, and kept in the run
    folder (RUN_NAME_FILE), so a resume writes under the same name. Rank 0 decides."""
    path = Path(out) / RUN_NAME_FILE
    outcome: tuple = (out.name, None)
    if master and enabled:
        try:
            outcome = (_read_name(path) if path.is_file() else _new_name(store, path), None)
        except (OSError, ValueError, TypeError) as exc:
            outcome = (None, f"{path}: not a readable run name ({first_line(exc, 80)}); "
                             "the run folder is damaged")
    name, error = broadcast_object(outcome)
    if error is not None:
        raise TrainingError(error)
    return name


def stored_run_name(out: Path) -> str:
    """The name run folder OUT writes its rows under (see :func:`run_name`)."""
    return _read_name(Path(out) / RUN_NAME_FILE)


def _read_name(path: Path) -> str:
    name = json.loads(path.read_text())["run"]
    if not isinstance(name, str) or not name:
        raise ValueError("'run' is not a name")
    return name


def _new_name(store: Store, path: Path) -> str:
    base, n = path.parent.name, 1
    name = base
    while run_rows(store, name):
        n += 1
        name = f"{base}~{n}"
    staged = path.with_name(path.name + ".tmp")
    staged.write_text(json.dumps({"run": name}) + "\n")
    os.replace(staged, path)  # whole or absent: a kill leaves no half a name
    return name


def on_resume(store: Store, run: str, *, checkpoint_step: int | None, lineage: Lineage,
              master: bool) -> int | None:
    """Delete the rows of RUN a kill left past its latest checkpoint (every row of the
    run without one): the resume replays those steps. Rank 0 writes; every rank gets
    its error. Returns the version of the delete, None when nothing was deleted."""
    outcome: tuple = (None, None)
    if master and store.exists(PAIR_DYNAMICS):
        where = f"{DYN.run} = {sql_string(run)}"
        if checkpoint_step is not None:
            where += f" AND {DYN.step} > {int(checkpoint_step)}"
        try:
            outcome = (store.delete_rows(PAIR_DYNAMICS, where, lineage.with_extra(
                run=run, removed=f"rows past the checkpoint the run resumed from ({where})")),
                None)
        except Exception as exc:  # noqa: BLE001  told to every rank, then raised
            outcome = (None, str(exc))
    version, error = broadcast_object(outcome)
    if error is not None:
        raise TrainingError(f"pair_dynamics: {error}")
    return version


# ------------------------------------------------------------------ writing
@dataclass(kw_only=True)
class DynamicsWriter:
    """One rank's rows of a run: buffered, written as fragments, committed by rank 0."""

    store: Store
    run: str
    set_name: str
    set_version: int
    lineage: Lineage
    master: bool
    enabled: bool = True
    flush_rows: int = FLUSH_ROWS
    commits: int = 0
    # (step, epoch, split, pair ids, [len(VALUES), n] float64 on the step's device) per add
    _pending: list[tuple[int, int, str, list[str], torch.Tensor]] = field(default_factory=list)
    _buffered: int = 0
    _fragments: list[Any] = field(default_factory=list)
    _first_step: int | None = None  # the first step of the rows not yet committed

    def add(self, *, step: int, epoch: int, split: str, pair_ids: Sequence[str],
            values: dict[str, torch.Tensor]) -> None:
        """Rows of the pairs PAIR_IDS read at STEP (values: :func:`pair_values`). The values
        stay on their device until the flush (no host copy, so no device sync, here)."""
        if not self.enabled or not len(pair_ids):
            return
        n = len(pair_ids)
        # float64 on the device: the same numbers as a float64 host copy (exact widening)
        stacked = torch.stack([values[k].detach().reshape(-1).to(torch.float64) for k in VALUES])
        if stacked.shape[1] != n:  # shapes are known without a sync
            raise ValueError(f"pair_dynamics: {n} pair ids, {stacked.shape[1]} values")
        self._pending.append((step, epoch, split, list(pair_ids), stacked))
        self._buffered += n
        self._first_step = step if self._first_step is None else min(self._first_step, step)
        if self._buffered >= self.flush_rows:
            self._write_fragments()

    def add_pairs(self, pairs: Any, index: Sequence[int], *, step: int, epoch: int, split: str,
                  values: dict[str, torch.Tensor] | None) -> None:
        """Rows of the pairs INDEX of PAIRS (trainer/dpo/data.py: Pairs)."""
        if self.enabled and values is not None:
            self.add(step=step, epoch=epoch, split=split,
                     pair_ids=[pairs.pair_ids[i] for i in index], values=values)

    def recorder(self, pairs: Any, *, step: int, epoch: int, split: str = "val") -> Any:
        """What validation calls with each batch's (index, values); None when off."""
        if not self.enabled:
            return None
        return lambda index, values: self.add_pairs(pairs, index, step=step, epoch=epoch,
                                                    split=split, values=values)

    def _write_fragments(self) -> None:
        """The buffered rows as data files of the table, committed by no version yet."""
        if not self._pending:
            return
        import lance

        table = self._table()
        self.store.root.mkdir(parents=True, exist_ok=True)
        mode = "append" if self.store.exists(PAIR_DYNAMICS) else "create"
        self._fragments += lance.fragment.write_fragments(
            table, str(self.store.path(PAIR_DYNAMICS)), schema=PAIR_DYNAMICS_SCHEMA, mode=mode,
            data_storage_version=STORAGE_VERSION, enable_stable_row_ids=True)
        self._pending, self._buffered = [], 0

    def _table(self) -> pa.Table:
        """The buffered rows: every add's values copied to the host at once (one sync)."""
        device = self._pending[0][4].device
        host = torch.cat([v if v.device == device else v.to(device) for *_, v in self._pending],
                         dim=1).cpu().numpy()
        batches, at = [], 0
        for step, epoch, split, pair_ids, _ in self._pending:
            n = len(pair_ids)
            const = lambda v, t: pa.array(np.full(n, v), t) if t != pa.string() else \
                pa.array([v] * n, pa.string())
            batches.append(pa.RecordBatch.from_arrays([
                const(self.run, pa.string()), const(step, pa.int64()), const(epoch, pa.int64()),
                const(split, pa.string()), const(self.set_name, pa.string()),
                const(self.set_version, pa.int64()), pa.array(pair_ids, pa.string()),
                *(pa.array(host[i, at:at + n], pa.float64()) for i in range(len(VALUES)))],
                schema=PAIR_DYNAMICS_SCHEMA))
            at += n
        return pa.Table.from_batches(batches, schema=PAIR_DYNAMICS_SCHEMA)

    def commit(self, step: int) -> int | None:
        """Every rank's rows so far as ONE version (a collective: every rank calls it).
        Returns the new version on every rank, None when no rank had rows."""
        if not self.enabled:
            return None
        error = None
        try:
            self._write_fragments()
        except Exception as exc:  # noqa: BLE001  told to every rank below
            error = f"rank fragments: {exc}"
        gathered = gather_objects((self._fragments, self._first_step, error))
        outcome: tuple = (None, None)
        if self.master:
            errors = [e for _, _, e in gathered if e]
            fragments = [f for fs, _, _ in gathered for f in fs]
            first = min((s for _, s, _ in gathered if s is not None), default=None)
            try:
                if errors:
                    raise TrainingError(errors[0])
                if fragments:
                    outcome = (self._commit(fragments, first, step), None)
            except Exception as exc:  # noqa: BLE001  told to every rank, then raised
                outcome = (None, str(exc))
        version, error = broadcast_object(outcome)
        if error is not None:
            raise TrainingError(f"step {step}: pair_dynamics not committed: {error}")
        self._fragments, self._first_step = [], None
        self.commits += version is not None
        faults.point("after_dynamics", step=step)
        return version

    def _commit(self, fragments: list, first: int | None, last: int) -> int:
        import lance

        lineage = self.lineage.with_extra(run=self.run, steps=[first, last])
        with self.store.lock(f"create {PAIR_DYNAMICS}"):
            if self.store.exists(PAIR_DYNAMICS):
                latest = self.store.open(PAIR_DYNAMICS).version
                return self.store.commit(PAIR_DYNAMICS, lance.LanceOperation.Append(fragments),
                                         latest, lineage)
            tx = lance.Transaction(
                read_version=0,
                operation=lance.LanceOperation.Overwrite(PAIR_DYNAMICS_SCHEMA, fragments),
                transaction_properties=commit_properties(lineage))
            return lance.LanceDataset.commit(str(self.store.path(PAIR_DYNAMICS)), tx,
                                             enable_stable_row_ids=True).version


def checkpoint_due(done: int, *, every: int, max_steps: int) -> bool:
    """Whether the loop saves a step checkpoint after step DONE (Checkpointer.after_step's
    rule): the rows through DONE are committed first."""
    return bool(every and done % every == 0) or done == max_steps
