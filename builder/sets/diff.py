"""`ttspo diff A B`: what changed between two versions of a set, or of generations.

A and B are ``NAME@VERSION`` or ``NAME@TAG`` (a bare NAME is its latest version).

Sets: a pair is identified by its pair_id (``chosen_id>rejected_id``), so two
versions, or two different sets, compare by a pair_id join in DuckDB. Reported:
pairs added, removed and kept overall (and kept pairs that changed split), the
same per split and record type (a pair that moved from train to val counts as
removed from train and added to val), the recipe / parameter / input changes
from the two build records, and the shift in chosen and rejected CER, SSIM and
reward (mean and median). Each build rewrites the whole set (Overwrite), so Lance
version deltas would call every row new: the join is the right tool there.

Generations: rows added, removed, kept and updated per run, and the shift of each
metric (mean, median). Where Lance version deltas fit (same table, A older than
B, stable row ids, only Append / Update / Delete / DataReplacement / Merge
commits in between) the counts come from the rows' ``_row_created_at_version``
and ``_row_last_updated_at_version`` (no join over millions of ids; "updated"
then means rewritten by a commit after A). Otherwise a generation_id join does it
("updated" = a metric differs). The result says which method it used.
"""

from __future__ import annotations

from typing import Any

from ttspo.builder.sets.build import SetVersion, open_set
from ttspo.builder.core.errors import InputError
from ttspo.builder.core.schemas import GEN, METRICS, PAIR
from ttspo.builder.core.store import Store, parse_ref

SET_METRICS = (PAIR.chosen_cer, PAIR.rejected_cer, PAIR.chosen_ssim, PAIR.rejected_ssim,
               PAIR.rejected_reward, PAIR.cer_delta, PAIR.sim_delta)
DELTA_OPERATIONS = {"Append", "Update", "Delete", "DataReplacement", "Merge"}


def diff(store: Store, a: str, b: str) -> dict[str, Any]:
    """Compare two refs; both sets or both generations."""
    table_a, _ = parse_ref(a)
    table_b, _ = parse_ref(b)
    kinds = {t: "generations" if t == "generations" else "set" for t in (table_a, table_b)}
    if len(set(kinds.values())) > 1:
        raise InputError(f"cannot diff {a} with {b}: compare two sets or two generations versions")
    if kinds[table_a] == "generations":
        return diff_generations(store, a, b)
    return diff_sets(store, open_set(store, a), open_set(store, b))


# -------------------------------------------------------------------- sets
def diff_sets(store: Store, a: SetVersion, b: SetVersion) -> dict[str, Any]:
    import duckdb

    cols = [PAIR.pair_id, PAIR.split, PAIR.record_type, *SET_METRICS]
    con = duckdb.connect()
    try:
        con.register("a", a.rows(cols))
        con.register("b", b.rows(cols))
        totals = _rows(con, f"""
            SELECT count(*) FILTER (WHERE a.{PAIR.pair_id} IS NULL) AS added,
                   count(*) FILTER (WHERE b.{PAIR.pair_id} IS NULL) AS removed,
                   count(*) FILTER (WHERE a.{PAIR.pair_id} IS NOT NULL AND b.{PAIR.pair_id} IS NOT NULL) AS kept,
                   count(*) FILTER (WHERE a.{PAIR.split} <> b.{PAIR.split}) AS changed_split
            FROM a FULL JOIN b USING ({PAIR.pair_id})""")[0]
        by_split = _rows(con, f"""
            SELECT coalesce(b.{PAIR.split}, a.{PAIR.split}) AS split,
                   coalesce(b.{PAIR.record_type}, a.{PAIR.record_type}) AS record_type,
                   count(*) FILTER (WHERE a.{PAIR.pair_id} IS NULL) AS added,
                   count(*) FILTER (WHERE b.{PAIR.pair_id} IS NULL) AS removed,
                   count(*) FILTER (WHERE a.{PAIR.pair_id} IS NOT NULL AND b.{PAIR.pair_id} IS NOT NULL) AS kept
            FROM a FULL JOIN b USING ({PAIR.pair_id}, {PAIR.split})
            GROUP BY ALL ORDER BY split DESC, record_type NULLS LAST""")
        metrics = _shifts(con, SET_METRICS)
    finally:
        con.close()
    return {
        "kind": "set", "a": _describe_set(a), "b": _describe_set(b),
        "pairs": totals, "by_split": by_split,
        "changes": _build_changes(a, b), "metrics": metrics, "reasons": reasons(store, a, b),
    }


# ----------------------------------------------------------------- reasons
REVIEW_INPUTS = ("pair_dynamics", "labels")


def reasons(store: Store, a: SetVersion, b: SetVersion) -> list[dict[str, Any]]:
    """Why pairs left or joined, when B was built from what review found: B's build
    pinned pair_dynamics and/or labels (sql/refine.sql). Each removed pair gets the
    first reason that holds at those pinned versions: a label chose its rejected, run
    R (B's `run` parameter) never ranked it right; each added pair: a label chose it.
    Anything else is "other". [] when B pins neither table."""
    pinned = {t: b.record.inputs[t] for t in REVIEW_INPUTS if t in b.record.inputs}
    if not pinned:
        return []
    from ttspo.builder.core import query

    session = query.open_session(store, [f"{t}@{v}" for t, v in pinned.items()], [])
    con = session.con
    try:
        cols = [PAIR.pair_id, PAIR.chosen_id, PAIR.rejected_id]
        con.register("__a", a.rows(cols))
        con.register("__b", b.rows(cols))
        run = b.record.params.get("run")
        tests = {"removed": [], "added": []}
        if "labels" in pinned:
            labels = f"label_choices(lab := 'labels@{pinned['labels']}')"
            match = (f"EXISTS (SELECT 1 FROM {labels} j WHERE j.chosen_id = p.{{0}} "
                     f"AND j.other_id = p.{{1}})")
            tests["removed"].append((f"a label chose its rejected (labels@{pinned['labels']})",
                                     match.format(PAIR.rejected_id, PAIR.chosen_id)))
            tests["added"].append((f"a label chose it (labels@{pinned['labels']})",
                                   match.format(PAIR.chosen_id, PAIR.rejected_id)))
        if "pair_dynamics" in pinned and isinstance(run, str) and run:
            dyn = f"pair_dynamics@{pinned['pair_dynamics']}"
            tests["removed"].append((
                f"never learned in run {run} ({dyn})",
                f"p.{PAIR.pair_id} IN (SELECT pair_id FROM never_learned_pairs("
                f"'{dyn}', {_literal(run)}))"))
        out = []
        for change, (mine, other) in (("removed", ("__a", "__b")), ("added", ("__b", "__a"))):
            out += _attributed(con, change, mine=mine, other=other, tests=tests[change])
        return out
    finally:
        con.close()


def _attributed(con, change: str, *, mine: str, other: str,
                tests: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """Counts of MINE's pairs that OTHER lacks, by the first of TESTS that holds."""
    case = " ".join(f"WHEN {cond} THEN {_literal(why)}" for why, cond in tests)
    reason = f"CASE {case} ELSE 'other' END" if tests else "'other'"
    rows = _rows(con, f"""
        SELECT {reason} AS reason, count(*) AS pairs
        FROM {mine} p WHERE p.{PAIR.pair_id} NOT IN (SELECT {PAIR.pair_id} FROM {other})
        GROUP BY ALL ORDER BY pairs DESC, reason""")
    return [{"change": change, **r} for r in rows]


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _describe_set(sv: SetVersion) -> dict[str, Any]:
    r = sv.record
    return {"ref": sv.ref, "rows": r.counts.get("pairs"), "recipe": r.recipe,
            "generations": r.inputs.get("generations")}


def _build_changes(a: SetVersion, b: SetVersion) -> dict[str, list]:
    """Fields of the two build records that differ: name -> [in A, in B]."""
    ra, rb = a.record, b.record
    out: dict[str, list] = {}
    for field in ("recipe", "recipe_sha256", "runs", "prompts_version"):
        va, vb = getattr(ra, field), getattr(rb, field)
        if va != vb:
            out[field] = [va, vb]
    for name in sorted(set(ra.params) | set(rb.params)):
        va, vb = ra.params.get(name), rb.params.get(name)
        if va != vb:
            out[f"param {name}"] = [va, vb]
    for table in sorted(set(ra.inputs) | set(rb.inputs)):
        va, vb = ra.inputs.get(table), rb.inputs.get(table)
        if va != vb:
            out[f"input {table}"] = [va, vb]
    return out


def _shifts(con, metrics) -> list[dict[str, Any]]:
    """Mean and median of each metric in A and B (NaN-free: NULLs ignored).

    Means sum the values in sorted order: the same values give the same bits
    whatever DuckDB's thread scheduling, so two equal sets show a shift of 0."""
    stats = {}
    for side in ("a", "b"):  # one scan per side for every metric
        parts = [f'list_sum(list({m} ORDER BY {m})) / count({m}) AS "{m} mean", median({m}) AS "{m} median"'
                 for m in metrics]
        stats[side] = _rows(con, f"SELECT {', '.join(parts)} FROM {side}")[0]
    out = []
    for m in metrics:
        a_mean, b_mean = stats["a"][f"{m} mean"], stats["b"][f"{m} mean"]
        out.append({"metric": m, "a_mean": a_mean, "b_mean": b_mean,
                    "a_median": stats["a"][f"{m} median"], "b_median": stats["b"][f"{m} median"],
                    "mean_shift": b_mean - a_mean if None not in (a_mean, b_mean) else None})
    return out


def _rows(con, sql: str) -> list[dict[str, Any]]:
    rel = con.sql(sql)
    names = rel.columns
    return [dict(zip(names, r)) for r in rel.fetchall()]


# ------------------------------------------------------------- generations
def diff_generations(store: Store, a: str, b: str) -> dict[str, Any]:
    import duckdb

    da, db = store.open_ref(a), store.open_ref(b)
    method = "lance-delta" if _delta_fits(da, db) else "join"
    con = duckdb.connect()
    try:
        con.register("a", _metric_table(da, [GEN.generation_id, GEN.run]))
        if method == "lance-delta":
            counts = _counts_by_delta(con, da, db)
            con.register("b", _metric_table(db, [GEN.run]))
        else:
            con.register("b", _metric_table(db, [GEN.generation_id, GEN.run]))
            counts = _counts_by_join(con)
        metrics = _shifts(con, METRICS)
    finally:
        con.close()
    totals = {k: sum(r[k] for r in counts) for k in ("added", "removed", "kept", "updated")}
    return {"kind": "generations", "method": method,
            "a": {"ref": f"generations@{da.version}", "rows": da.count_rows()},
            "b": {"ref": f"generations@{db.version}", "rows": db.count_rows()},
            "rows": totals, "by_run": counts, "metrics": metrics}


def _metric_table(ds, head: list[str]):
    """HEAD and every registered metric of DS; a metric an older version lacks is NULL."""
    import pyarrow as pa

    have = set(ds.schema.names)
    table = ds.to_table(columns=[*head, *[m for m in METRICS if m in have]])
    for m in METRICS:
        if m not in have:
            table = table.append_column(m, pa.nulls(table.num_rows, pa.float64()))
    return table.select([*head, *METRICS])


def _delta_fits(da, db) -> bool:
    if da.uri != db.uri or da.version >= db.version or not db.has_stable_row_ids:
        return False
    transactions = db.delta(begin_version=da.version, end_version=db.version).list_transactions()
    return all(type(t.operation).__name__ in DELTA_OPERATIONS for t in transactions)


def _counts_by_delta(con, da, db) -> list[dict[str, Any]]:
    """Kept rows of B were created at or before A's version; removed = A - kept."""
    con.register("bv", db.to_table(columns=[GEN.run, "_row_created_at_version",
                                            "_row_last_updated_at_version"]))
    return _rows(con, f"""
        WITH bc AS (
            SELECT {GEN.run} AS run,
                   count(*) FILTER (WHERE _row_created_at_version > {da.version}) AS added,
                   count(*) FILTER (WHERE _row_created_at_version <= {da.version}) AS kept,
                   count(*) FILTER (WHERE _row_created_at_version <= {da.version}
                                    AND _row_last_updated_at_version > {da.version}) AS updated
            FROM bv GROUP BY ALL),
        ac AS (SELECT {GEN.run} AS run, count(*) AS n FROM a GROUP BY ALL)
        SELECT coalesce(bc.run, ac.run) AS run, coalesce(added, 0)::BIGINT AS added,
               (coalesce(n, 0) - coalesce(kept, 0))::BIGINT AS removed,
               coalesce(kept, 0)::BIGINT AS kept, coalesce(updated, 0)::BIGINT AS updated
        FROM bc FULL JOIN ac USING (run) ORDER BY run""")


def _counts_by_join(con) -> list[dict[str, Any]]:
    changed = " OR ".join(f"a.{m} IS DISTINCT FROM b.{m}" for m in METRICS)
    return _rows(con, f"""
        SELECT coalesce(b.{GEN.run}, a.{GEN.run}) AS run,
               count(*) FILTER (WHERE a.{GEN.generation_id} IS NULL) AS added,
               count(*) FILTER (WHERE b.{GEN.generation_id} IS NULL) AS removed,
               count(*) FILTER (WHERE a.{GEN.generation_id} IS NOT NULL
                                AND b.{GEN.generation_id} IS NOT NULL) AS kept,
               count(*) FILTER (WHERE a.{GEN.generation_id} IS NOT NULL
                                AND b.{GEN.generation_id} IS NOT NULL AND ({changed})) AS updated
        FROM a FULL JOIN b USING ({GEN.generation_id})
        GROUP BY ALL ORDER BY run""")


# ------------------------------------------------------------------ text
def render_text(result: dict[str, Any]) -> str:
    """The diff as `ttspo diff` prints it: a summary, then tables."""
    from ttspo.builder.core.render import render_table

    a, b = result["a"], result["b"]
    lines = [f"{a['ref']} -> {b['ref']} ({result['kind']})"]
    if result["kind"] == "set":
        changes = result["changes"]
        lines.append("changes:" + ("" if changes else " none"))
        lines += [f"  {k}: {_short(v[0])} -> {_short(v[1])}" for k, v in changes.items()]
        p = result["pairs"]
        lines.append(f"pairs: {p['added']} added, {p['removed']} removed, {p['kept']} kept "
                     f"({p['changed_split']} changed split)")
        if result.get("reasons"):
            lines.append(why_line(result["reasons"]))
        table = render_table(result["by_split"], ["split", "record_type", "added", "removed", "kept"])
    else:
        r = result["rows"]
        lines.append(f"rows ({result['method']}): {r['added']} added, {r['removed']} removed, "
                     f"{r['kept']} kept, {r['updated']} updated")
        table = render_table(result["by_run"], ["run", "added", "removed", "kept", "updated"])
    metrics = render_table(result["metrics"], ["metric", "a_mean", "b_mean", "mean_shift",
                                               "a_median", "b_median"])
    return "\n".join(lines) + "\n\n" + table + "\n" + metrics


def why_line(found: list[dict[str, Any]]) -> str:
    """``why: removed 3 never learned in run R (pair_dynamics@5); added 2 ...``"""
    return "why: " + "; ".join(f"{r['change']} {r['pairs']} {r['reason']}" for r in found)


def _short(value: Any) -> str:
    text = str(value)
    return text[:12] if len(text) == 64 and all(c in "0123456789abcdef" for c in text) else text
