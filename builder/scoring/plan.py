"""Which generations to score, with what: the plan every rank works from.

Metrics come in groups that one model run produces together (the registry's
backends, builder/core/metrics.py), each with the provenance column that records its
producer and the status column that says why a value is NULL:

- ``asr``: cer, wer, pred_transcript, gt_transcript, invalid (one transcript);
- ``ssim``, ``pesq``, ``squim``, ``mos`` ...: the metrics, source and status.

A row lacks a group when the group's source column is null, when its status says the
last try failed (``error: ...``), or (for the asr and
ssim groups, when NeMo marked it invalid: its CER 1.0 and SSIM 0.0 are
placeholders, and scoring the transcript clears the flag). The source is set
even when the value is null because it does not apply (SSIM of a text context,
PESQ without a reference recording), so such rows are not re-tried on every run.
``rescore`` plans every selected row.

The plan is an Arrow table, one row per generation to score, made by rank 0 at
one pinned table version and sent to the other ranks: every rank reads the same
rows even if the table moves on meanwhile.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from ttspo.builder.core import metrics as registry
from ttspo.builder.core.errors import QueryError, first_line
from ttspo.builder.scoring.options import DEFAULT_METRICS, METRIC_GROUPS, ScoreOptions  # noqa: F401
from ttspo.builder.core.schemas import GEN, GENERATIONS_SCHEMA, PROMPT
from ttspo.builder.core.store import Store

# Each registered backend's columns: its metrics, extra columns, source and status.
GROUPS = {b: registry.backend_columns(b) for b in registry.REGISTRY.backends}
GROUP_SOURCE = {b.name: b.source for b in registry.REGISTRY.backends.values()}
GROUP_STATUS = {b.name: b.status for b in registry.REGISTRY.backends.values()}
METRIC_GROUP = METRIC_GROUPS  # metric -> group (scoring.options, beside the defaults)

# Plan columns besides the group columns.
ROWID = "_rowid"
FRAGMENT = "_fragment"
REFERENCE = "_reference_audio_filepath"  # prompts.reference_audio_filepath, joined
BLOB_SIZE = "_audio_blob_size"
WEIGHT = "_weight"  # estimated audio seconds, to balance shards
INPUT_COLUMNS = (GEN.generation_id, GEN.text, GEN.audio_filepath, GEN.context_audio_filepath,
                 GEN.duration)
BYTES_PER_SECOND = 2 * 16000  # 16-bit mono at 16 kHz: a size-based duration estimate


@dataclass(kw_only=True)
class Plan:
    """The rows to score at one version, and the columns the write will replace."""

    version: int
    rows: pa.Table
    groups: list[str]
    write_columns: list[str]
    inputs: dict[str, int] = field(default_factory=dict)  # table versions read (lineage)

    def shard(self, rank: int, world: int) -> pa.Table:
        """The rows RANK scores: shards of about equal audio, not of equal row counts.

        Rows sorted longest first are dealt in snake order (0,1,..,w-1,w-1,..,1,0,..):
        cost is per second of audio, and generations run from 1 s to 19 s, so
        equal row counts can leave one rank with much more work. Every rank
        computes the same deal from the same plan. A shard keeps table order.
        """
        import numpy as np

        weight = np.asarray(self.rows[WEIGHT].to_numpy(zero_copy_only=False), dtype=np.float64)
        order = np.lexsort((np.arange(len(weight)), -weight))  # longest first, stable
        pos = np.arange(len(order))
        block, offset = pos // world, pos % world
        owner = np.where(block % 2 == 0, offset, world - 1 - offset)
        mine = np.sort(order[owner == rank])
        return self.rows.take(pa.array(mine, pa.int64()))


def make_plan(store: Store, options: ScoreOptions, lineage=None) -> Plan:
    """Rank 0's job: pin a version, select rows, mark the groups each one lacks.
    A table made before a registered metric existed first gains its columns (nulls,
    one commit carrying LINEAGE)."""
    options.check()
    if lineage is not None:
        store.add_missing_columns("generations", GENERATIONS_SCHEMA, lineage)
    ds = store.open("generations")
    version = ds.version
    inputs = {"generations": version}
    group_cols = list(dict.fromkeys(c for g in options.groups() for c in GROUPS[g]))
    columns = list(dict.fromkeys([*INPUT_COLUMNS, GEN.invalid, *group_cols, GEN.prompt_id]))
    table = ds.to_table(columns=columns + [GEN.audio],
                        with_row_id=True, with_row_address=True)
    table = _flatten_blob(table)
    if options.where:
        table = _filter_where(store, table, options.where, version, inputs=inputs)
    table = _add_references(store, table, inputs)
    groups = options.groups()
    needs = {g: _needs(table, g, options.rescore) for g in groups}
    any_need = functools.reduce(pc.or_, needs.values())
    for g, mask in needs.items():
        table = table.append_column(f"_needs_{g}", mask)
    rows = _add_weights(table.filter(any_need))
    wanted = [g for g in groups if pc.any(rows[f"_needs_{g}"]).as_py()]
    write_columns = [c for g in wanted for c in GROUPS[g]]
    return Plan(version=version, rows=rows, groups=wanted, write_columns=write_columns,
                inputs=inputs)


def _flatten_blob(table: pa.Table) -> pa.Table:
    """Keep only the blob's size (0 when absent): the bytes are read by row id later."""
    desc = table[GEN.audio]
    sizes = pc.fill_null(pc.struct_field(desc, "size"), 0) if pa.types.is_struct(desc.type) \
        else pc.fill_null(pc.binary_length(desc), 0)
    fragment = pc.shift_right(table["_rowaddr"], 32)
    table = table.drop_columns([GEN.audio, "_rowaddr"])
    return table.append_column(BLOB_SIZE, sizes).append_column(FRAGMENT, fragment)


def _add_weights(rows: pa.Table) -> pa.Table:
    """Estimated seconds of each row's audio: its duration, else its size."""
    import os

    weights = []
    for duration, size, path in zip(rows[GEN.duration].to_pylist(), rows[BLOB_SIZE].to_pylist(),
                                    rows[GEN.audio_filepath].to_pylist()):
        if duration is None:
            if not size and path:
                try:
                    size = os.path.getsize(path)
                except OSError:
                    size = 0  # unreadable: reported when scored
            duration = (size or 0) / BYTES_PER_SECOND
        weights.append(float(duration))
    return rows.append_column(WEIGHT, pa.array(weights, pa.float64()))


def _needs(table: pa.Table, group: str, rescore: bool) -> pa.ChunkedArray | pa.Array:
    if rescore:
        return pa.array([True] * table.num_rows, pa.bool_())
    lacking = pc.is_null(table[GROUP_SOURCE[group]])
    # a failure ("error: ..." in the status column) is tried again; "n/a: ..." is not
    failed = pc.fill_null(pc.starts_with(table[GROUP_STATUS[group]], "error:"), False)
    lacking = pc.or_(lacking, failed)
    if group in ("asr", "ssim"):  # NeMo's "<INVALID>" rows hold placeholder CER and SSIM
        lacking = pc.or_(lacking, pc.fill_null(table[GEN.invalid], False))
    return lacking


def _filter_where(store: Store, table: pa.Table, where: str, version: int,
                  *, inputs: dict[str, int]) -> pa.Table:
    """Apply a DuckDB WHERE clause over the generations view (read-only session)."""
    import duckdb

    from ttspo.builder.core.query import check_read_only, open_session

    sql = f"SELECT generation_id FROM generations WHERE {where}"
    check_read_only(sql)
    session = open_session(store, refs=[f"generations@{version}"])
    try:
        query = sql.replace("FROM generations", f'FROM "generations@{version}"', 1)
        ids = session.con.sql(query).to_arrow_table()[GEN.generation_id]
    except duckdb.Error as exc:
        raise QueryError(f"--where: {first_line(exc)}") from None
    finally:
        session.con.close()
    inputs.update({k: v for k, v in session.inputs_for(where).items() if "@" not in k})
    return table.filter(pc.is_in(table[GEN.generation_id], value_set=ids.combine_chunks()))


def _add_references(store: Store, table: pa.Table, inputs: dict[str, int]) -> pa.Table:
    """Join prompts.reference_audio_filepath on prompt_id (null without prompts)."""
    refs = pa.nulls(table.num_rows, pa.string())
    if store.exists("prompts"):
        prompts = store.open("prompts")
        inputs["prompts"] = prompts.version
        p = prompts.to_table(columns=[PROMPT.prompt_id, PROMPT.reference_audio_filepath])
        index = pc.index_in(table[GEN.prompt_id], value_set=p[PROMPT.prompt_id].combine_chunks())
        refs = pc.take(p[PROMPT.reference_audio_filepath], index)
    return table.drop_columns([GEN.prompt_id]).append_column(REFERENCE, refs)


def write_schema(columns: list[str]) -> pa.Schema:
    """The update's schema: the row id, then the replaced columns as the table types them."""
    return pa.schema([pa.field(ROWID, pa.uint64())] +
                     [GENERATIONS_SCHEMA.field(c) for c in columns])


def failed_rows(table: pa.Table) -> int:
    """Rows of TABLE with a failed metric: ``error: ...`` in one of its status columns."""
    failed = None
    for col in GROUP_STATUS.values():
        if col in table.column_names:
            hit = pc.fill_null(pc.starts_with(table[col], "error:"), False)
            failed = hit if failed is None else pc.or_(failed, hit)
    return 0 if failed is None else int(pc.sum(failed).as_py() or 0)
