"""The preference-set contract: a recipe's rows completed and checked (builder/sets/recipes.py).

A recipe returns the columns of ``PAIR_REQUIRED`` plus, optionally, any other column
of ``PREFERENCES_SCHEMA``; nothing else. :func:`complete_and_check` fills the missing
optional columns from ``generations`` (run, record_type, metrics), computes the
others (pair_id, deltas) or takes them from the row order (position), then checks
every invariant in one query; a broken one is a RecipeError naming the first
offending pair, and nothing is written.
"""

from __future__ import annotations

import pyarrow as pa

from ttspo.builder.core.errors import RecipeError, first_line
from ttspo.builder.core.schemas import GEN, PAIR, PAIR_REQUIRED, PREFERENCES_SCHEMA

ALLOWED = [f.name for f in PREFERENCES_SCHEMA]
# Optional columns filled from the chosen/rejected generation when a recipe leaves them out.
FROM_GENERATIONS = {
    PAIR.run: f'c."{GEN.run}"',
    PAIR.record_type: f'c."{GEN.record_type}"',
    PAIR.chosen_cer: f'c."{GEN.cer}"',
    PAIR.rejected_cer: f'r."{GEN.cer}"',
    PAIR.chosen_ssim: f'c."{GEN.ssim}"',
    PAIR.rejected_ssim: f'r."{GEN.ssim}"',
}


def complete_and_check(session, recipe_name: str, raw: pa.Table, source: str = "generations") -> pa.Table:
    """Fill the optional columns, check every invariant, return the set's rows.
    RECIPE_NAME: for the messages."""
    names = raw.column_names
    unknown = [c for c in names if c not in ALLOWED]
    if unknown:
        raise RecipeError(f"recipe {recipe_name} returned unknown column(s) {', '.join(unknown)} "
                          f"(allowed: {', '.join(ALLOWED)})")
    missing = [c for c in PAIR_REQUIRED if c not in names]
    if missing:
        raise RecipeError(f"recipe {recipe_name} did not return required column(s) {', '.join(missing)}")
    if PAIR.position not in names:
        # The recipe's row order is the shuffle (it should ORDER BY for determinism).
        raw = raw.append_column(PAIR.position, pa.array(range(raw.num_rows), pa.int64()))
    import duckdb

    try:
        session.con.register("__recipe_rows", raw)
        completed = session.con.sql(_completion_sql(raw.column_names, source)).to_arrow_table()
        session.con.register("__set_rows", completed)
        _check_invariants(session, recipe_name, raw.column_names)
        for view in ("__recipe_rows", "__set_rows"):
            session.con.unregister(view)
        return completed.select(ALLOWED).cast(PREFERENCES_SCHEMA)
    except (duckdb.Error, pa.ArrowException) as exc:
        # e.g. a text column where a number belongs: name what the contract says
        raise RecipeError(f"recipe {recipe_name} returned columns of the wrong type for a "
                          f"preference set ({first_line(exc)})") from None


def _completion_sql(names: list[str], source: str = "generations") -> str:
    computed = {
        PAIR.pair_id: f"o.{PAIR.chosen_id} || '>' || o.{PAIR.rejected_id}",
        PAIR.cer_delta: f'r."{GEN.cer}" - c."{GEN.cer}"',
        PAIR.sim_delta: f'c."{GEN.ssim}" - r."{GEN.ssim}"',
        **FROM_GENERATIONS,
    }
    select = []
    for col in ALLOWED:
        select.append(f'o."{col}"' if col in names else f'{computed[col]} AS "{col}"')
    # Hidden columns for the checks: what the generations table says.
    select += [
        f'c."{GEN.generation_id}" IS NOT NULL AS __chosen_found',
        f'r."{GEN.generation_id}" IS NOT NULL AS __rejected_found',
        f'c."{GEN.prompt_id}" AS __chosen_prompt', f'r."{GEN.prompt_id}" AS __rejected_prompt',
        f'c."{GEN.group_id}" AS __c_group', f'r."{GEN.group_id}" AS __r_group',
        f'c."{GEN.run}" AS __c_run', f'r."{GEN.run}" AS __r_run',
        f'c."{GEN.record_type}" AS __c_type', f'r."{GEN.record_type}" AS __r_type',
        f'c."{GEN.cer}" AS __c_cer', f'r."{GEN.cer}" AS __r_cer',
        f'c."{GEN.ssim}" AS __c_ssim', f'r."{GEN.ssim}" AS __r_ssim',
    ]
    # One scan of generations, kept to the generations the pairs name.
    needed = (f'SELECT "{GEN.generation_id}", "{GEN.prompt_id}", "{GEN.group_id}", "{GEN.run}", '
              f'"{GEN.record_type}", '
              f'"{GEN.cer}", "{GEN.ssim}" FROM {source} WHERE "{GEN.generation_id}" IN '
              f'(SELECT {PAIR.chosen_id} FROM __recipe_rows UNION ALL '
              f'SELECT {PAIR.rejected_id} FROM __recipe_rows)')
    return (f"WITH g AS MATERIALIZED ({needed}) "
            f"SELECT {', '.join(select)} FROM __recipe_rows o "
            f'LEFT JOIN g c ON c."{GEN.generation_id}" = o."{PAIR.chosen_id}" '
            f'LEFT JOIN g r ON r."{GEN.generation_id}" = o."{PAIR.rejected_id}" '
            f'ORDER BY o."{PAIR.position}"')


def _invariants(names: list[str]) -> list[tuple[str, str]]:
    """(what is wrong, SQL condition over __set_rows) for every per-row invariant."""
    required = " OR ".join(f'"{c}" IS NULL' for c in (*PAIR_REQUIRED, PAIR.position))
    checks = [
        ("have NULL in a required column", required),
        ("name a chosen_id that is not in generations", "NOT __chosen_found"),
        ("name a rejected_id that is not in generations", "NOT __rejected_found"),
        ("have the same generation on both sides", f"{PAIR.chosen_id} = {PAIR.rejected_id}"),
        ("have chosen_reward != 1", f"{PAIR.chosen_reward} IS DISTINCT FROM 1.0"),
        ("have rejected_reward >= 1 (or NaN)", f"NOT ({PAIR.rejected_reward} < 1.0)"),
        ("have a rejected better than its chosen on both CER and SSIM",
         "__r_cer < __c_cer AND __r_ssim > __c_ssim"),
        ("have a split other than 'train' or 'val'", f"{PAIR.split} NOT IN ('train', 'val')"),
        ("pair generations of different prompts (or not of prompt_id)",
         f"__chosen_prompt <> __rejected_prompt OR {PAIR.prompt_id} <> __chosen_prompt"),
    ]
    # Copied ids must be the generations' own (the chosen's, or for a pair across
    # groups or runs of one prompt, the rejected's): an id that exists nowhere is refused.
    for col, c_real, r_real in ((PAIR.group_id, "__c_group", "__r_group"),
                                (PAIR.run, "__c_run", "__r_run"),
                                (PAIR.record_type, "__c_type", "__r_type")):
        if col in names:
            checks.append((f"have a {col} that is neither their chosen's nor their rejected's",
                           f"{col} IS DISTINCT FROM {c_real} AND {col} IS DISTINCT FROM {r_real}"))
    if PAIR.pair_id in names:
        checks.append(("have a pair_id other than chosen_id>rejected_id",
                       f"{PAIR.pair_id} <> {PAIR.chosen_id} || '>' || {PAIR.rejected_id}"))
    truth = {PAIR.chosen_cer: "__c_cer", PAIR.rejected_cer: "__r_cer",
             PAIR.chosen_ssim: "__c_ssim", PAIR.rejected_ssim: "__r_ssim"}
    for col, real in truth.items():
        if col in names:
            checks.append((f"have a {col} that differs from generations", f"{col} IS DISTINCT FROM {real}"))
    deltas = ((PAIR.cer_delta, "__r_cer - __c_cer", "rejected CER - chosen CER"),
              (PAIR.sim_delta, "__c_ssim - __r_ssim", "chosen SSIM - rejected SSIM"))
    for col, formula, words in deltas:
        if col in names:
            checks.append((f"have a {col} other than {words}", f"NOT (abs({col} - ({formula})) <= 1e-9)"))
    return checks


def _check_invariants(session, recipe_name: str, names: list[str]) -> None:
    checks = _invariants(names)
    # One query: each invariant's count and the duplicate summaries; the first
    # offender of each broken invariant only when one is broken.
    counts = ", ".join(f"count(*) FILTER (WHERE coalesce({cond}, false))" for _, cond in checks)
    row = session.con.sql(f"SELECT * FROM (SELECT {counts} FROM __set_rows), ({DUPLICATE_PAIRS}), "
                          f"({SHARED_POSITIONS})").fetchall()[0]
    broken = [(what, cond, n) for (what, cond), n in zip(checks, row) if n]
    problems = []
    if broken:
        firsts = session.con.sql("SELECT " + ", ".join(
            f"arg_min(coalesce({PAIR.pair_id}, '#' || {PAIR.position}), {PAIR.position}) "
            f"FILTER (WHERE coalesce({cond}, false))" for _, cond, _ in broken) + " FROM __set_rows").fetchall()[0]
        problems = [f"{n} pair(s) {what} (first: {first})" for (what, _, n), first in zip(broken, firsts)]
    pairs, first_pair, across_splits, positions, first_position = row[len(checks):]
    if pairs:
        where = "in both splits" if across_splits else "more than once"
        problems.append(f"{pairs} pair(s) appear {where} (first: {first_pair})")
    if positions:
        problems.append(f"{positions} position(s) are shared by several pairs (first: {first_position})")
    if problems:
        raise RecipeError(f"recipe {recipe_name} broke the preference-set contract, nothing written: "
                          + "; ".join(problems))


# A pair is the unordered pair of generations: A>B in train and B>A in val is one
# pair on both sides of the split.
_UNORDERED = (f"least({PAIR.chosen_id}, {PAIR.rejected_id}) || chr(0) || "
              f"greatest({PAIR.chosen_id}, {PAIR.rejected_id})")
DUPLICATE_PAIRS = (f"SELECT count(*), min(first), bool_or(splits > 1) FROM ("
                   f"  SELECT min({PAIR.pair_id}) AS first, count(DISTINCT {PAIR.split}) AS splits"
                   f"  FROM __set_rows GROUP BY {_UNORDERED} HAVING count(*) > 1)")
SHARED_POSITIONS = (f"SELECT count(*), min({PAIR.position}) FROM ("
                    f"  SELECT {PAIR.position} FROM __set_rows GROUP BY {PAIR.position} HAVING count(*) > 1)")
