"""Pages of the store's tables for the page: one page of rows at a time.

Every query goes through ``ttspo.builder.core.query.run``, the one confinement
`ttspo sql` uses (one read-only SELECT, DuckDB's external access off and locked):
the filter box takes a DuckDB condition, which becomes the WHERE of a SELECT that
then passes that same check. A page is ``ORDER BY column, id LIMIT n OFFSET k``
over the table's view, so a set of 100k pairs never leaves DuckDB whole; the count
is a second query.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from ttspo.builder.core import query as q
from ttspo.builder.core.errors import InputError
from ttspo.builder.core import metrics as registry
from ttspo.builder.core.schemas import CORE_TABLES, DYN, GEN, METRICS, PAIR, ROLL
from ttspo.builder.core.store import Store, sql_string
from ttspo.builder.review.serve.textdiff import word_diff

MAX_PAGE = 200
DYNAMICS = "pair_dynamics"
LABELS = "labels"
# Lower is better for these metrics, the metric registry's (builder/core/metrics.py);
# higher for the others, except those with no direction (left out of agreement).
LOWER_IS_BETTER = registry.lower_is_better()
GENERATION_FIELDS = (GEN.generation_id, GEN.text, GEN.pred_transcript, GEN.duration,
                     *METRICS)


@dataclass(frozen=True, kw_only=True)
class TableInfo:
    name: str
    kind: str  # "generations" | "rollouts" | "set"
    id_column: str
    columns: tuple[str, ...]
    numeric: tuple[str, ...]  # what the page offers to sort by


def browsable(store: Store) -> list[TableInfo]:
    """The tables the page can show: generations, rollouts and every preference set."""
    out = []
    for name in store.tables():
        info = _info(store, name)
        if info is not None:
            out.append(info)
    return out


def table_info(store: Store, name: str) -> TableInfo:
    info = _info(store, name) if name and store.exists(name) else None
    if info is None:
        raise InputError(f"table {name!r}: not a generations, rollouts or set table of this store")
    return info


def _info(store: Store, name: str) -> TableInfo | None:
    schema = store.open(name).schema
    names = set(schema.names)
    if name == "generations":
        kind, id_column = "generations", GEN.generation_id
    elif name == "rollouts":
        kind, id_column = "rollouts", ROLL.rollout_id
    elif name not in CORE_TABLES and {PAIR.pair_id, PAIR.chosen_id, PAIR.rejected_id} <= names:
        kind, id_column = "set", PAIR.pair_id
    else:
        return None
    columns = tuple(q.view_columns(schema))
    numeric = tuple(f.name for f in schema if f.name in columns
                    and (pa.types.is_integer(f.type) or pa.types.is_floating(f.type)))
    return TableInfo(name=name, kind=kind, id_column=id_column, columns=columns, numeric=numeric)


def page(store: Store, name: str, *, where: str = "", sort: str | None = None,
         descending: bool = False, number: int = 0, size: int = 20) -> dict[str, Any]:
    """Page NUMBER (0-based) of SIZE rows of table NAME matching the condition WHERE,
    ordered by SORT (any column of the view), with the total that match."""
    info = table_info(store, name)
    sort = sort or info.id_column
    if sort not in info.columns:
        raise InputError(f"sort: {name} has no column {sort!r}")
    if not 1 <= size <= MAX_PAGE or number < 0:
        raise InputError(f"page: size must be 1..{MAX_PAGE} and the page 0 or more")
    matching = filtered(name, where)
    order = f'"{sort}" {"DESC" if descending else "ASC"} NULLS LAST, "{info.id_column}"'
    rows, versions = q.run(store, f"SELECT * FROM ({matching}) ORDER BY {order} "
                                  f"LIMIT {size} OFFSET {number * size}")
    total = q.run(store, f"SELECT count(*) AS n FROM ({matching})")[0].column("n")[0].as_py()
    out = rows.to_pylist()
    if info.kind == "set":
        _add_generations(store, out)
    else:
        for row in out:
            row["_diff"] = word_diff(row.get(GEN.text), row.get(GEN.pred_transcript))
    return {"table": name, "kind": info.kind, "id_column": info.id_column,
            "version": versions.get(name), "columns": list(rows.column_names),
            "rows": [clean(r) for r in out], "total": total, "page": number, "size": size}


def filtered(name: str, where: str) -> str:
    """SELECT of NAME's rows matching WHERE. The condition stands on its own lines,
    so a trailing ``--`` comment in it ends there and cannot swallow the ORDER BY
    and LIMIT around it; the whole query is then checked like any `ttspo sql` query."""
    condition = where.strip() or "true"
    return f'SELECT * FROM "{name}" WHERE (\n{condition}\n)'


def _add_generations(store: Store, pairs: list[dict[str, Any]]) -> None:
    """Each pair's chosen and rejected generation (text, transcript, diff, metrics)."""
    ids = sorted({r[k] for r in pairs for k in (PAIR.chosen_id, PAIR.rejected_id)})
    found = generations(store, ids)
    for row in pairs:
        for side in ("chosen", "rejected"):
            gen = found.get(row[f"{side}_id"])
            if gen is not None:
                gen = {**gen, "_diff": word_diff(gen[GEN.text], gen[GEN.pred_transcript])}
            row[f"_{side}"] = gen


def generations(store: Store, ids: list[str]) -> dict[str, dict[str, Any]]:
    """The page's fields of the generations IDS (latest version), by id."""
    if not ids or not store.exists("generations"):
        return {}
    ds = store.open("generations")
    fields = [f for f in GENERATION_FIELDS if f in ds.schema.names]
    listed = ", ".join(sql_string(i) for i in ids)
    rows = ds.to_table(columns=fields, filter=f"{GEN.generation_id} IN ({listed})").to_pylist()
    return {r[GEN.generation_id]: r for r in rows}


def dynamics(store: Store, set_name: str, pair_id: str) -> dict[str, Any]:
    """A pair's rows of `pair_dynamics` (every run, step and split), oldest first."""
    if not store.exists(DYNAMICS):
        return {"rows": [], "note": "no pair_dynamics table in this store (a DPO run writes it)"}
    ds = store.open(DYNAMICS)
    rows = ds.to_table(filter=f"{DYN.set_name} = {sql_string(set_name)} AND "
                              f"{DYN.pair_id} = {sql_string(pair_id)}").to_pylist()
    rows.sort(key=lambda r: (r[DYN.run], r[DYN.split], r[DYN.step]))
    return {"rows": [clean(r) for r in rows], "summary": [clean(s) for s in _cartography(rows)],
            "version": ds.version}


def _cartography(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per run and split: reads, mean margin, variability (population std of the
    margin, as dataset cartography) and the share ranked right. (The dynamics
    branch's SQL macros compute the same over whole sets.)"""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r[DYN.run], r[DYN.split]), []).append(r)
    out = []
    for (run, split), rs in groups.items():
        margins = [r[DYN.margin] for r in rs]
        mean = sum(margins) / len(margins)
        out.append({"run": run, "split": split, "reads": len(rs), "mean_margin": mean,
                    "variability": math.sqrt(sum((m - mean) ** 2 for m in margins) / len(margins)),
                    "share_correct": sum(r[DYN.correct] for r in rs) / len(rs)})
    return out


def agreement(store: Store, *, set_name: str | None = None) -> dict[str, Any]:
    """How often each metric prefers the generation people chose (a or b; ties and
    skips left out): per metric, pairs judged, agree, disagree, metric ties (equal
    values) and agreement = agree / (agree + disagree).

    Computed here until the `label_agreement()` macro (sql/macros.sql, issue 23's
    dynamics branch) is merged; then this should become ``SELECT * FROM
    label_agreement(...)``."""
    if not store.exists(LABELS) or not store.exists("generations"):
        return {"rows": [], "note": "no labels yet"}
    names = set(store.open("generations").schema.names)
    only = f" AND l.set_name = {sql_string(set_name)}" if set_name else ""
    parts = [_agreement_sql(m, only) for m in METRICS
             if m in names and m not in registry.no_direction()]
    result, versions = q.run(store, "\nUNION ALL\n".join(parts))
    return {"rows": [clean(r) for r in result.to_pylist()], "versions": versions}


def _agreement_sql(metric: str, only: str) -> str:
    better, worse = ("<", ">") if metric in LOWER_IS_BETTER else (">", "<")
    c, o = f'c."{metric}"', f'o."{metric}"'
    return f"""SELECT '{metric}' AS metric, count(*) AS judged,
  count(*) FILTER (WHERE {c} {better} {o}) AS agree,
  count(*) FILTER (WHERE {c} {worse} {o}) AS disagree,
  count(*) FILTER (WHERE {c} = {o}) AS metric_ties,
  count(*) FILTER (WHERE {c} {better} {o}) / nullif(count(*) FILTER (WHERE {c} <> {o}), 0)
    AS agreement
FROM labels l
JOIN generations c ON c.generation_id = l.chosen_id
JOIN generations o ON o.generation_id =
  CASE WHEN l.chosen_id = l.first_id THEN l.second_id ELSE l.first_id END
WHERE l.choice IN ('a', 'b') AND isfinite({c}) AND isfinite({o}){only}"""


def clean(row: dict[str, Any]) -> dict[str, Any]:
    """ROW made strict-JSON: non-finite floats as their names ("nan", "inf")."""
    return {k: _plain(v) for k, v in row.items()}


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return clean(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value
