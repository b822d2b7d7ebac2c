"""The cached region of a recipe (see below): run once per generations version.

A recipe may mark consecutive CTEs that depend on no parameter but those they
name: "-- ttspo cache: NAME" before the first, "-- ttspo cache end" after the
last (NAME is the last one, the one the rest reads). In one Python session the
region runs once per (recipe text, its parameter values, the content of every
table version it reads, runs) and the rest of the recipe reads its result (a
re-threshold does not rank every group again). The result is also kept in the
store (session_cache.stored_table), so a new session or a CLI build reads it
instead of ranking again. The file stays one SELECT: run whole (``ttspo sql``),
it gives the same rows. Keys: session_cache.py.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Sequence

from ttspo.builder.core.errors import RecipeError
from ttspo.builder.core.schemas import GEN

CACHE_START = re.compile(r"^--\s*ttspo cache:\s*([A-Za-z_]\w*)\s*$", re.M)
CACHE_END = re.compile(r"^--\s*ttspo cache end\s*$", re.M)
PREFIX = re.compile(r"\s*WITH(\s+RECURSIVE)?\s*", re.I)  # all that may come before the region


def cache_region(sql: str) -> tuple[str, int, int] | None:
    """(name, start, end) of the cached region's text in SQL, or None."""
    start, end = CACHE_START.search(sql), CACHE_END.search(sql)
    if start is None or end is None or end.start() < start.end():
        return None
    return start.group(1), start.start(), end.start()


def with_cached_region(session, store, recipe, values: dict[str, Any], *, runs: Sequence[str],
                       region: tuple[str, int, int], placeholders: Callable[[str], set[str]]) -> str:
    """Register the region's result (from the session cache, else computed) and
    return the recipe with the region replaced by a read of it (PLACEHOLDERS: the
    $names a SQL text uses)."""
    from ttspo.builder.core.query import strip_comments
    from ttspo.builder.sets.session_cache import stored_table, table_identity

    name, start, end = region
    # The region runs alone: a CTE before it could shadow a view it reads (run
    # whole, the recipe would read the CTE; cached, the view). Only WITH may precede.
    if not PREFIX.fullmatch(strip_comments(recipe.sql[:start])):
        raise RecipeError(f"{recipe.name}: the cached region '{name}' must start at the recipe's "
                          "first CTE (only WITH [RECURSIVE] and comments before '-- ttspo cache:')")
    text = recipe.sql[start:end].rstrip().rstrip(",")
    used = {k: values[k] for k in sorted(placeholders(text)) if k in values}
    # The views the region names (in any letter case: FROM Generations reads generations).
    # Not every view the session has: a set named like one of the recipe's CTEs
    # ("pairs") would change the key at each of its own rebuilds.
    tables = [(view, table_identity(session.datasets[view])) for view in sorted(session.inputs_for(text))]
    key = (recipe.sha256, start, end, tuple(used.items()), tuple(tables), tuple(sorted(set(runs))))
    result = stored_table(store, "recipe.region", key, lambda: session.con.sql(
        f"WITH RECURSIVE {text} SELECT * FROM {name}", params=used or None).to_arrow_table())
    session.con.register(f"__cached_{name}", result)
    return f"{recipe.sql[:start]}{name} AS (SELECT * FROM __cached_{name}),\n{recipe.sql[end:]}"




CHECK_COLUMNS = (GEN.generation_id, GEN.prompt_id, GEN.group_id, GEN.run, GEN.record_type, GEN.cer, GEN.ssim)


def checked_generations(session, store, runs: Sequence[str]) -> str:
    """The view the output checks read generations from: in a session, the columns
    they need, kept per generations content and runs (a DuckDB join over Arrow, not
    a Lance scan per build)."""
    from ttspo.builder.sets.session_cache import stored_table, table_identity

    if store is None:
        return "generations"
    key = (table_identity(session.datasets["generations"]), tuple(sorted(set(runs))))
    listed = ", ".join(f'"{c}"' for c in CHECK_COLUMNS)
    table = stored_table(store, "recipe.generations", key,
                         lambda: session.con.sql(f"SELECT {listed} FROM generations").to_arrow_table())
    session.con.register("__checked_generations", table)
    return "__checked_generations"
