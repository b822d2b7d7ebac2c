"""Recipes: a DuckDB SELECT that turns `generations` into chosen/rejected pairs.

A recipe is a ``.sql`` file holding ONE read-only SELECT over the store's views
(``generations``, ``prompts``, other sets ...) with named parameters
(``$cer_threshold``). Its header may declare parameters with defaults::

    -- param cer_threshold = 0.02  keep a pair only if chosen CER < this

(``-- param NAME = VALUE  description``; VALUE is a JSON literal or a bare word).
A ``$name`` the header does not declare must be given with ``--param name=...``.
Built-in recipes live in the ``sql`` package (``pareto``, ``best_worst``); any
argument ending in ``.sql`` is a user recipe file.

Output contract (checked by :func:`pair_contract.complete_and_check`, see ``schemas.PAIR``): the
columns of ``PAIR_REQUIRED`` (prompt_id, group_id, chosen_id, rejected_id,
chosen_reward, rejected_reward, split) plus, optionally, any other column of
``PREFERENCES_SCHEMA``; nothing else. Missing optional columns are filled from
``generations`` (run, record_type, metrics), computed (pair_id, deltas) or taken
from the row order (position). Then the invariants are checked; a recipe that
breaks one gets a RecipeError naming the first offending pair.

``--run RUN`` restricts the ``generations`` view the recipe sees to those runs,
so every recipe (built-in or not) honours it without a parameter of its own.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pyarrow as pa

from ttspo.builder.core.errors import InputError, QueryError, StoreError, first_line
from ttspo.builder.core.params import parse_assignments, typed_param  # noqa: F401 (re-exported)
from ttspo.builder.core.schemas import GEN
from ttspo.builder.sets.pair_contract import complete_and_check
from ttspo.builder.sets.recipe_cache import cache_region, checked_generations, with_cached_region

PARAM_LINE = re.compile(r"^--\s*param\s+([A-Za-z_]\w*)\s*=\s*(\S+)\s*(.*)$")
PLACEHOLDER = re.compile(r"\$([A-Za-z_]\w*)")
# A parameter naming a table: FROM query_table($base), with --param base=prefs@3. Its
# value is registered as a view and pinned in the build's lineage like a named table.
TABLE_PARAM = re.compile(r"query_table\(\s*\$([A-Za-z_]\w*)\s*\)", re.I)
# Tables that exist only once something wrote them (a DPO run, `ttspo serve`'s labels):
# a recipe reading one that is missing is one line saying where it comes from.
REVIEW_TABLES = {"pair_dynamics": "a DPO run writes it (train.pair_dynamics=true)",
                 "labels": "`ttspo serve` or a scripted labeler writes it"}


@dataclass(frozen=True)
class Param:
    name: str
    default: Any = None
    has_default: bool = False
    description: str = ""


@dataclass(frozen=True)
class Recipe:
    name: str  # "pareto" for a built-in, the file name for a user recipe
    source: str  # "sql/pareto.sql" or the absolute path of the file
    sql: str
    params: dict[str, Param] = field(default_factory=dict)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()

    @property
    def placeholders(self) -> list[str]:
        """The $names the SQL uses (comments and string literals left out)."""
        return sorted(_placeholders(self.sql))


# ---------------------------------------------------------------- loading
NOT_RECIPES = ("macros.sql",)  # shared macros every session defines (ttspo.builder.core.query)


def builtin_names() -> list[str]:
    folder = importlib.resources.files("ttspo.sql")
    return sorted(p.name[:-4] for p in folder.iterdir()
                  if p.name.endswith(".sql") and p.name not in NOT_RECIPES)


def load_recipe(ref: str | Path) -> Recipe:
    """A built-in recipe by name (``pareto``) or a user recipe by path (``my.sql``)."""
    text = str(ref)
    if text.endswith(".sql"):
        path = Path(text)
        if not path.is_file():
            raise InputError(f"recipe file {path} not found")
        try:
            sql = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(f"recipe file {path} is not UTF-8 (byte 0x{exc.object[exc.start]:02x} "
                             f"at offset {exc.start})") from None
        except OSError as exc:
            raise InputError(f"recipe file {path}: cannot read ({exc.strerror})") from None
        return parse_recipe(sql, path.name, str(path.absolute()))
    if text not in builtin_names():
        raise InputError(f"no built-in recipe '{text}' (built-in: {', '.join(builtin_names())}; "
                         "a user recipe is a path ending in .sql)")
    sql = (importlib.resources.files("ttspo.sql") / f"{text}.sql").read_text(encoding="utf-8")
    return parse_recipe(sql, text, f"sql/{text}.sql")


def parse_recipe(sql: str, name: str, source: str) -> Recipe:
    params: dict[str, Param] = {}
    for line in sql.splitlines():
        m = PARAM_LINE.match(line.strip())
        if m:
            params[m.group(1)] = Param(m.group(1), _literal(m.group(2)), True, m.group(3).strip())
    recipe = Recipe(name, source, sql, params)
    for placeholder in recipe.placeholders:
        recipe.params.setdefault(placeholder, Param(placeholder))
    return recipe


def _literal(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _strip_comments_and_strings(sql: str) -> str:
    return re.sub(r"--[^\n]*|/\*.*?\*/|'(?:[^']|'')*'", " ", sql, flags=re.S)


# ------------------------------------------------------------- parameters
def typed_value(recipe: Recipe, name: str, value: Any) -> Any:
    """Type a value given as text like the parameter's default (see core.params)."""
    default = recipe.params[name].default if name in recipe.params else None
    try:
        return typed_param(name, value, default, numbers_only=True)
    except InputError as exc:
        raise InputError(f"recipe {recipe.name}: {exc}") from None


def resolve_params(recipe: Recipe, given: dict[str, Any] | None = None) -> dict[str, Any]:
    """Defaults overridden by GIVEN; unknown and missing names are errors."""
    given = dict(given or {})
    unknown = sorted(set(given) - set(recipe.params))
    if unknown:
        known = ", ".join(sorted(recipe.params)) or "none"
        raise InputError(f"recipe {recipe.name} has no parameter {', '.join(unknown)} (parameters: {known})")
    values = {}
    for name, param in sorted(recipe.params.items()):
        if name in given:
            values[name] = typed_value(recipe, name, given[name])
        elif param.has_default:
            values[name] = param.default
        else:
            raise InputError(f"recipe {recipe.name} needs --param {name}=VALUE (no default)")
    return values


# ----------------------------------------------------------------- running
@dataclass
class RecipeOutput:
    table: pa.Table  # checked, in PREFERENCES_SCHEMA column order
    inputs: dict[str, int]  # view -> version read
    params: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)  # "recipe", "checks"


def run_recipe(store, recipe: Recipe, params: dict[str, Any] | None = None,
               runs: Sequence[str] = (), *, session=None) -> RecipeOutput:
    """Run RECIPE over the store, complete and check its output. Writes nothing."""
    from ttspo.builder.core import query
    from ttspo.builder.core.store import parse_ref

    values = resolve_params(recipe, params)
    query.check_read_only(recipe.sql)
    tables = table_params(store, recipe, values)
    missing_review_tables(store, recipe)
    own = session is None
    # generations (the checks read it) and the tables the recipe names: a store with
    # many sets opens just those
    session = session or query.open_session(store, query.refs_in(recipe.sql) + sorted(tables), [
        t for t in store.tables() if t == "generations" or query.mentions(recipe.sql, t)])
    for ref in sorted(set(tables) - set(session.versions)):  # a session passed in
        query.register_view(session, ref, store.open(*parse_ref(ref)))
    try:
        if "generations" not in session.versions:
            raise InputError(f"store {store.root} has no generations table")
        restrict_runs(session, store, runs)
        start = time.perf_counter()
        raw = _execute(session, recipe, values, store, runs=runs)
        ran = time.perf_counter()
        table = complete_and_check(session, recipe.name, raw, checked_generations(session, store, runs))
        seconds = {"recipe": ran - start, "checks": time.perf_counter() - ran}
        # (comments left out: a recipe that merely mentions a table did not read it)
        inputs = session.inputs_for(recipe.sql)
        inputs["generations"] = session.versions["generations"]
        for ref in sorted(tables):  # a table parameter's version, as a named table's
            name, version = parse_ref(ref)[0], session.versions[ref]
            inputs[name if inputs.get(name, version) == version else f"{name}@{version}"] = version
    finally:
        if own:
            session.con.close()
    return RecipeOutput(table, inputs, values, seconds)


def table_params(store, recipe: Recipe, values: dict[str, Any]) -> list[str]:
    """The table refs the recipe's table parameters name (query_table($name)), checked."""
    from ttspo.builder.core.query import strip_comments
    from ttspo.builder.core.store import parse_ref

    refs = []
    for name in sorted(set(TABLE_PARAM.findall(strip_comments(recipe.sql, strings=True)))):
        ref = values.get(name)
        if not isinstance(ref, str) or not ref:
            raise InputError(f"recipe {recipe.name}: --param {name} names a table "
                             f"(NAME, NAME@VERSION or NAME@TAG), not {ref!r}")
        table, version = parse_ref(ref)
        if not store.exists(table):
            raise InputError(f"recipe {recipe.name}: --param {name}={ref}: store {store.root} "
                             f"has no table {table!r}")
        try:
            store.open(table, version)
        except StoreError as exc:
            raise InputError(f"recipe {recipe.name}: --param {name}={ref}: {exc}") from None
        refs.append(ref)
    return refs


def missing_review_tables(store, recipe: Recipe) -> None:
    """One line when the recipe reads pair_dynamics or labels and the store has none."""
    from ttspo.builder.core.query import mentions

    for table, source in REVIEW_TABLES.items():
        if mentions(recipe.sql, table) and not store.exists(table):
            raise InputError(f"recipe {recipe.name} reads {table}, which store {store.root} "
                             f"does not have yet ({source})")


def _execute(session, recipe: Recipe, values: dict[str, Any], store=None, *,
             runs: Sequence[str] = ()) -> pa.Table:
    import duckdb

    sql = recipe.sql
    try:
        region = cache_region(sql)
        if region is not None and store is not None:
            sql = with_cached_region(session, store, recipe, values, runs=runs, region=region,
                                     placeholders=_placeholders)
        used = {k: v for k, v in values.items() if k in _placeholders(sql)}
        return session.con.sql(sql, params=used or None).to_arrow_table()
    except duckdb.Error as exc:
        message = re.sub(r"^Invalid Input Error: ", "", first_line(exc))
        raise QueryError(f"recipe {recipe.name}: {message}") from None


def _placeholders(sql: str) -> set[str]:
    return set(PLACEHOLDER.findall(_strip_comments_and_strings(sql)))


def restrict_runs(session, store, runs: Sequence[str]) -> None:
    """Make the `generations` view show only RUNS (all runs if empty)."""
    if not runs:
        return

    known = {r for (r,) in session.con.sql(f'SELECT DISTINCT "{GEN.run}" FROM generations').fetchall()}
    missing = sorted(set(runs) - known)
    if missing:
        raise InputError(f"no run {', '.join(missing)} in generations@{session.versions['generations']} "
                         f"(runs: {', '.join(sorted(known))})")
    from ttspo.builder.core.store import sql_string  # (lance: not for `ttspo recipes`)

    listed = ", ".join(sql_string(r) for r in sorted(set(runs)))
    session.restrict("generations", f'"{GEN.run}" IN ({listed})')
