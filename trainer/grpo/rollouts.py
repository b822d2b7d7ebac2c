"""The `rollouts` table: GRPO samples appended in batched commits, rewards recomputed.

Writing (training, rank 0): :class:`RolloutWriter` buffers each step's rows and
commits them to ``rollouts`` once every ``every`` steps and before every
checkpoint, one Lance commit per flush, each carrying the run's lineage and the
step range. When the table's fragments pass ``compact_over`` it compacts them
(a Lance Rewrite: same rows, same stable row ids, fewer files).

Resume without duplicates: rollouts are flushed BEFORE a checkpoint is saved, so a
checkpoint at step S means every row up to S is committed. A run killed after a
flush but before its checkpoint has rows past S; resumed at S with the same data
order and RNG streams it samples those steps again, identically, so the writer
skips the (step, split) pairs :func:`committed_steps` finds instead of
appending them twice. A
killed run loses at most its unflushed steps.

Recomputing (``ttspo rewards``): :func:`recompute_rewards` reads the stored
metrics of ``rollouts`` or ``generations`` (never the audio), applies a
:class:`~ttspo.trainer.grpo.rewards.RewardConfig` with the same code training uses,
and writes the result as a new version of a rewards table NAME, with lineage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ttspo.builder.core.errors import InputError, StoreError
from ttspo.builder.core.schemas import (CORE_TABLES, GEN, HEAVY_COLUMNS, REGISTERED_FIELDS,
                                        REWARDS_SCHEMA, ROLL,
                                        ROLLOUTS_SCHEMA, RWD)
from ttspo.builder.core.store import Store, make_lineage, parse_ref, sql_string
from ttspo.trainer.grpo.rewards import RewardConfig, compute_rewards

ROLLOUTS = "rollouts"
SOURCES = {ROLLOUTS: ROLL.rollout_id, "generations": GEN.generation_id}


# ----------------------------------------------------------------- writing
def committed_steps(store: Store, run: str) -> set[tuple[int, str]]:
    """The (step, split) pairs of RUN that have rows in ``rollouts``."""
    if not store.exists(ROLLOUTS):
        return set()
    rows = store.open(ROLLOUTS).to_table(columns=[ROLL.step, ROLL.split],
                                         filter=f"{GEN.run} = {sql_string(run)}")
    keys = rows.group_by([ROLL.step, ROLL.split]).aggregate([])
    return set(zip(keys[ROLL.step].to_pylist(), keys[ROLL.split].to_pylist()))


class RolloutWriter:
    """Buffers rollout rows and appends them in batched, lineage-carrying commits."""

    def __init__(self, store: Store, run: str, lineage: dict[str, Any], *, every: int = 1,
                 compact_over: int = 64) -> None:
        self.store, self.run, self.lineage = store, run, lineage
        self.every, self.compact_over = max(1, every), compact_over
        self.committed = committed_steps(store, run)  # rows a killed run already wrote
        self._pending: list[pa.Table] = []
        self._steps: list[int] = []
        self.commits = 0
        self.skipped = 0  # rows not appended again after a resume

    def add(self, step: int, rows: pa.Table, split: str = "train") -> None:
        """Buffer one step's rows of one split; commit once ``every`` steps are buffered."""
        if (step, split) in self.committed:
            self.skipped += rows.num_rows
            return
        self._pending.append(rows.select(ROLLOUTS_SCHEMA.names).cast(ROLLOUTS_SCHEMA))
        self._steps.append(step)
        if len(set(self._steps)) >= self.every:
            self.flush()

    def flush(self) -> int | None:
        """Commit what is buffered (one Lance commit); returns the new version."""
        if not self._pending:
            return None
        data = pa.concat_tables(self._pending)
        lineage = dict(self.lineage, steps=[min(self._steps), max(self._steps)],
                       rows=data.num_rows)
        version = self.store.write(ROLLOUTS, data, schema=ROLLOUTS_SCHEMA, lineage=lineage)
        self._pending, self._steps = [], []
        self.commits += 1
        self._maybe_compact()
        return version

    def _maybe_compact(self) -> None:
        ds = self.store.open(ROLLOUTS)
        if len(ds.get_fragments()) > self.compact_over:
            ds.optimize.compact_files(target_rows_per_fragment=1 << 20)


# ------------------------------------------------------------- recomputing
@dataclass(kw_only=True)
class RewardsResult:
    name: str
    version: int
    source: str  # "rollouts@12"
    rows: int
    summary: dict[str, Any]


def read_metrics(store: Store, ref: str) -> tuple[pa.Table, str, int]:
    """The rows of ROLLOUTS or GENERATIONS (at a version or tag) without audio or codes;
    ``codes_len`` is filled from the codes where it is missing."""
    table, version = parse_ref(ref)
    if table not in SOURCES:
        raise InputError(f"--table {ref}: rewards are recomputed over {' or '.join(SOURCES)}")
    ds = store.open(table, version)
    names = [n for n in ds.schema.names if n not in HEAVY_COLUMNS]
    data = ds.to_table(columns=names)
    if GEN.codes_len not in names or data[GEN.codes_len].null_count:
        frames = pc.list_value_length(pc.list_element(
            ds.to_table(columns=[GEN.codes])[GEN.codes], 0)).cast(pa.int32())
        if GEN.codes_len in names:
            frames = pc.coalesce(data[GEN.codes_len], frames)
            data = data.drop_columns([GEN.codes_len])
        data = data.append_column(GEN.codes_len, frames)
    for f in REGISTERED_FIELDS:  # an older table: a metric registered since reads as NULL
        if f.name not in data.column_names:
            data = data.append_column(f, pa.nulls(data.num_rows, f.type))
    return data, table, ds.version


def rewards_frame(data: pa.Table, table: str, cfg: RewardConfig) -> pa.Table:
    """DATA's rewards as rows of REWARDS_SCHEMA (the same computation as training)."""
    import polars as pl

    frame = compute_rewards(pl.from_arrow(data), cfg, group=GEN.group_id)
    frame = frame.rename({SOURCES[table]: RWD.row_id})
    if ROLL.step not in frame.columns:
        frame = frame.with_columns(pl.lit(None, dtype=pl.Int64).alias(ROLL.step))
    # every reward part is there: compute_rewards pads them (rewards.pad_parts)
    return frame.select(REWARDS_SCHEMA.names).to_arrow().cast(REWARDS_SCHEMA)


def check_rewards_name(store: Store, name: str) -> None:
    if name in CORE_TABLES:
        raise StoreError(f"'{name}' is a core table name; choose another name for the rewards")
    store.path(name)  # a valid table name
    have = store.open(name).schema.names if store.exists(name) else REWARDS_SCHEMA.names
    if have != REWARDS_SCHEMA.names[:len(have)]:  # an older one lacks the newer parts only
        raise StoreError(f"table '{name}' exists and is not a rewards table; choose another name")


def recompute_rewards(store: Store, *, source: str, cfg: RewardConfig, name: str,
                      lineage: dict[str, Any] | None = None, plot: str | None = None
                      ) -> RewardsResult:
    """Recompute rewards over SOURCE's stored metrics; write them as a new version of NAME.

    PLOT: a PNG of the new reward distribution over the one it replaces (NAME's
    previous version, else the rewards stored in rollouts)."""
    check_rewards_name(store, name)
    data, table, version = read_metrics(store, source)
    if not data.num_rows:
        raise InputError(f"--table {source}: no rows to reward")
    out = rewards_frame(data, table, cfg)
    if plot:
        before, label = previous_rewards(store, name, table, data)
        plot_shift(plot, before, out[RWD.reward].to_pylist(), before_label=label,
                   after_label=f"{name} (new)")
    record = lineage or make_lineage("rewards", {"table": source, "as": name}, {})
    record = dict(record, inputs={table: version}, rewards=cfg.as_dict())
    new = store.write(name, out, schema=REWARDS_SCHEMA, lineage=record, mode="overwrite")
    return RewardsResult(name=name, version=new, source=f"{table}@{version}", rows=out.num_rows,
                         summary=summarize(out))


def summarize(table: pa.Table) -> dict[str, Any]:
    n = table.num_rows
    groups = pc.count_distinct(table[GEN.group_id]).as_py()
    gv = table.group_by(GEN.group_id).aggregate([(RWD.group_valid, "all")])
    return {"rows": n, "groups": groups,
            "mean_reward": round(pc.mean(table[RWD.reward]).as_py(), 6),
            "valid_fraction": round(pc.sum(table[RWD.valid].cast(pa.int64())).as_py() / n, 6),
            "groups_valid_fraction": round(
                pc.sum(gv[f"{RWD.group_valid}_all"].cast(pa.int64())).as_py() / groups, 6)}


def plot_shift(path: str, before: list[float], after: list[float], *, before_label: str,
               after_label: str) -> None:
    """Histograms of the reward before and after, on one axis, saved to PATH."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    values = [v for v in before + after if v is not None]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    bins = [lo + (hi - lo) * i / 30 for i in range(31)] if hi > lo else 30
    if before:
        ax.hist(before, bins=bins, alpha=0.5, label=before_label)
    ax.hist(after, bins=bins, alpha=0.5, label=after_label)
    ax.set_xlabel("reward")
    ax.set_ylabel("samples")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def previous_rewards(store: Store, name: str, data_table: str, data: pa.Table
                     ) -> tuple[list[float], str]:
    """What the new rewards are compared with: NAME's latest version if it exists, else
    the rewards stored with the rows (rollouts), else nothing."""
    if store.exists(name):
        ds = store.open(name)
        return ds.to_table(columns=[RWD.reward])[RWD.reward].to_pylist(), f"{name}@{ds.version}"
    if RWD.reward in data.column_names:
        return data[RWD.reward].to_pylist(), f"{data_table} (stored)"
    return [], ""



# ------------------------------------------------------- rollouts -> DPO set
def promote(store: Store, *, run: str, as_run: str, steps: tuple[int, int] | None = None,
            valid_only: bool = True, lineage: dict[str, Any] | None = None) -> dict[str, Any]:
    """Copy RUN's training rollouts (STEPS inclusive; valid samples of valid groups
    unless VALID_ONLY is False) into ``generations`` as run AS_RUN, in one commit whose
    lineage names the rollouts version and steps. ``ttspo build best_worst --run AS_RUN``
    (or pareto) then makes the next DPO set from them: iterative DPO."""
    from ttspo.builder.core.schemas import GENERATIONS_SCHEMA

    ds = store.open(ROLLOUTS)
    where = [f"{GEN.run} = {sql_string(run)}", f"{ROLL.split} = 'train'"]
    if steps is not None:
        where.append(f"{ROLL.step} BETWEEN {int(steps[0])} AND {int(steps[1])}")
    if valid_only:
        where += [f"{RWD.valid}", f"{RWD.group_valid}"]
    names = [n for n in ds.schema.names if n != GEN.audio]
    rows = ds.to_table(columns=names, filter=" AND ".join(where), with_row_id=True)
    if not rows.num_rows:
        raise InputError(f"rollouts@{ds.version}: no rows of run '{run}' match "
                         f"({' AND '.join(where)})")
    if store.exists("generations"):
        known = store.open("generations").to_table(columns=[GEN.run],
                                                   filter=f"{GEN.run} = {sql_string(as_run)}")
        if known.num_rows:
            raise InputError(f"generations already has a run '{as_run}'; choose another --as-run")
    rows = rows.sort_by([(ROLL.step, "ascending"), (GEN.group_index, "ascending"),
                         (GEN.sample_index, "ascending")])
    blobs = ds.take_blobs(GEN.audio, ids=rows["_rowid"].to_pylist())
    out = []
    groups: dict[tuple[int, int], int] = {}
    for r, blob in zip(rows.to_pylist(), blobs):
        g = groups.setdefault((r[ROLL.step], r[GEN.group_index]), len(groups))
        key = f"{r[ROLL.step]}:{r[GEN.group_index]}"
        out.append({**{f.name: r.get(f.name) for f in GENERATIONS_SCHEMA},
                    GEN.generation_id: f"{as_run}:{key}:{r[GEN.sample_index]}",
                    GEN.run: as_run, GEN.group_id: f"{as_run}:{key}", GEN.group_index: g,
                    GEN.audio: blob.readall() if blob is not None else None,
                    GEN.source_file: f"rollouts@{ds.version}:{r[ROLL.rollout_id]}"})
    table = pa.Table.from_pylist(out, GENERATIONS_SCHEMA)
    record = dict(lineage or make_lineage("rollouts promote", {"run": run, "as_run": as_run}),
                  inputs={ROLLOUTS: ds.version}, steps=list(steps) if steps else None,
                  rollouts_run=run)
    version = store.write("generations", table, schema=GENERATIONS_SCHEMA, lineage=record)
    return {"run": as_run, "rows": table.num_rows, "groups": len(groups),
            "generations": version, "rollouts": ds.version}
