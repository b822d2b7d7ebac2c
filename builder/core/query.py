"""DuckDB over the store: every table is a view, older versions are reachable.

``generations`` is the latest version; ``"generations@12"`` is version 12 and
``"generations@v1"`` the version tagged v1 (quoted, because of the ``@``).

Queries run read-only: only SELECT statements are accepted, and DuckDB's external
access is disabled and locked after the views are registered, so a query cannot
read or write files (no ``read_csv('/etc/passwd')``, no ``COPY ... TO``).

Blob columns (Lance blob encoding) and the codec ``codes`` lists are left out of
the views: DuckDB cannot scan blobs, and codes make ``SELECT *`` useless. Read
them with the Python API (``Store.open(...)``).
"""

from __future__ import annotations

import functools
import os
import re
import threading
from dataclasses import dataclass, field
from typing import Any, Iterable

import duckdb
import pyarrow as pa

from ttspo.builder.core.errors import QueryError, first_line
from ttspo.builder.core.schemas import BLOB_METADATA, HEAVY_COLUMNS
from ttspo.builder.core.store import Store, parse_ref

QUOTED_REF = re.compile(r'"([A-Za-z_][A-Za-z0-9_\-]*@[A-Za-z0-9_.\-]+)"')


@dataclass(kw_only=True)
class Session:
    """A DuckDB connection with the store's views, and the versions it exposed."""

    con: duckdb.DuckDBPyConnection
    versions: dict[str, int] = field(default_factory=dict)  # view name -> Lance version
    datasets: dict[str, Any] = field(default_factory=dict)  # view name -> the Lance dataset it reads
    sources: dict[str, tuple[str, list[str]]] = field(default_factory=dict)  # view -> (raw, columns)
    # view -> registered columns its (older) table lacks: read as NULL (mos in a store
    # made before mos was registered)
    nulls: dict[str, list[str]] = field(default_factory=dict)

    def inputs_for(self, sql: str) -> dict[str, int]:
        """Versions of the views a query mentions (outside comments): its lineage."""
        return {name: v for name, v in self.versions.items() if mentions(sql, name)}

    def restrict(self, view: str, where: str) -> None:
        """Redefine VIEW to show only the rows matching the SQL condition WHERE."""
        raw, cols = self.sources[view]
        self._define(view, raw, cols, where)

    def _define(self, view: str, raw: str, cols: list[str], where: str | None = None) -> None:
        listed = ", ".join([f'"{c}"' for c in cols] +
                           [f'{NULL_TYPES[t]} AS "{c}"' for c, t in self.nulls.get(view, [])])
        condition = f" WHERE {where}" if where else ""
        self.con.execute(f'CREATE OR REPLACE TEMP VIEW "{view}" AS SELECT {listed} FROM "{raw}"{condition}')
        self.sources[view] = (raw, cols)


# Macros (sql/macros.sql) that read views by their default names: a query calling one
# reads those views (they are opened for it and pinned in its lineage).
MACRO_READS = {"label_agreement": ("labels", "generations"), "label_choices": ("labels",)}


def mentions(sql: str, name: str) -> bool:
    """Whether SQL names NAME outside comments (as a whole word, not NAME@...), in
    any letter case (DuckDB's names are case-insensitive: FROM Generations reads it),
    or calls a macro that reads NAME (MACRO_READS)."""
    text = strip_comments(sql)
    word = lambda w: re.search(rf'(?<![\w@]){re.escape(w)}(?![\w@])', text, re.I) is not None
    return word(name) or any(name in reads and word(macro) for macro, reads in MACRO_READS.items())


SQL_TOKENS = re.compile(r"""('(?:[^']|'')*')|("(?:[^"]|"")*")|--[^\n]*|/\*.*?\*/""", re.S)


def strip_comments(sql: str, strings: bool = False) -> str:
    """SQL without -- and /* */ comments (and without 'string literals' if STRINGS);
    quoted identifiers are kept. For scanning a query, not for running it."""
    def keep(m: re.Match) -> str:
        if m.group(1):
            return " " if strings else m.group(1)
        return m.group(2) or " "

    return SQL_TOKENS.sub(keep, sql)


def view_columns(schema: pa.Schema) -> list[str]:
    """Columns a view exposes: all but blobs and heavy codec lists."""
    keep = []
    for f in schema:
        is_blob = (f.metadata or {}).get(b"lance-encoding:blob") == BLOB_METADATA[b"lance-encoding:blob"]
        is_ext = isinstance(f.type, pa.ExtensionType) and "blob" in str(f.type)
        if not (is_blob or is_ext or f.name in HEAVY_COLUMNS):
            keep.append(f.name)
    return keep


def open_session(store: Store, refs: Iterable[str] = (), tables: Iterable[str] | None = None) -> Session:
    """Register every table (latest version) plus each ``name@version`` in refs."""
    session = Session(con=_database().cursor())
    names = list(tables) if tables is not None else store.tables()
    for name in names:
        _register(session, name, store.open(name))
    for ref in refs:
        table, version = parse_ref(ref)
        _register(session, ref, store.open(table, version))
    return session


_DATABASE: list[duckdb.DuckDBPyConnection] = []  # this process's database, once made
_DATABASE_LOCK = threading.Lock()


def _reset_after_fork() -> None:
    """A forked child makes its own database (the parent's is left alone: never used,
    never closed) and its own lock (one a thread held at the fork stays held)."""
    global _DATABASE, _DATABASE_LOCK
    _DATABASE, _DATABASE_LOCK = [], threading.Lock()


os.register_at_fork(after_in_child=_reset_after_fork)


def _database() -> duckdb.DuckDBPyConnection:
    """This process's in-memory DuckDB: the macros defined, then nothing can touch
    the file system and nothing can undo that. Each session is a cursor on it (its
    own connection: its views and registered tables are its own), which costs
    nothing, where a new database and its macros took ~50 ms (a re-threshold
    opens one per build). The catalog is shared: a table someone CREATEs through a
    session's connection is seen by later sessions (ttspo's own queries are
    read-only: check_read_only)."""
    with _DATABASE_LOCK:
        if not _DATABASE:
            con = duckdb.connect()
            con.execute(macros_sql())  # normal_cdf, zscore, nemo_rejected_reward ...
            con.execute("SET enable_external_access = false")
            con.execute("SET lock_configuration = true")
            _DATABASE.append(con)
        return _DATABASE[0]


def macros_sql() -> str:
    """The SQL macros every session defines (sql/macros.sql)."""
    from importlib.resources import files

    from ttspo.builder.core import metrics as registry

    text = files("ttspo.sql").joinpath("macros.sql").read_text(encoding="utf-8")
    # The metric registry fills in the compare macros' default metric list and directions.
    return (text.replace("{{METRICS}}", sql_list(registry.names()))
            .replace("{{LOWER}}", sql_list(registry.lower_is_better()))
            .replace("{{NEITHER}}", sql_list(registry.no_direction())))


def sql_list(names) -> str:
    """A DuckDB list literal of strings: ['cer', 'wer']."""
    return "[" + ", ".join("'" + n.replace("'", "''") + "'" for n in names) + "]"


NULL_TYPES = {"double": "NULL::DOUBLE", "string": "NULL::VARCHAR"}
# Tables whose registered metric columns (builder/core/metrics.py) an older store may lack.
METRIC_TABLES = ("generations", "rollouts")


def _register(session: Session, view: str, ds) -> None:
    from ttspo.builder.core import metrics as registry

    raw = "__lance_" + re.sub(r"\W", "_", view)
    session.con.register(raw, ds)
    if parse_ref(view)[0] in METRIC_TABLES:
        have = set(ds.schema.names)
        session.nulls[view] = [(c, t) for c, t in registry.new_columns() if c not in have]
    session._define(view, raw, view_columns(ds.schema))
    session.versions[view] = ds.version
    session.datasets[view] = ds


def register_view(session: Session, view: str, ds) -> None:
    """Add VIEW (a Lance dataset DS) to an open SESSION."""
    _register(session, view, ds)


def refs_in(sql: str) -> list[str]:
    """The quoted ``"table@version"`` references a query uses (not those inside a
    comment or a string literal, which it does not read)."""
    return sorted(set(QUOTED_REF.findall(strip_comments(sql, strings=True))))


def check_read_only(sql: str) -> None:
    problem = _read_only_problem(sql)
    if problem:
        raise QueryError(problem)


@functools.lru_cache(maxsize=64)
def _read_only_problem(sql: str) -> str | None:
    """Why SQL is not one read-only query, or None (parsing a recipe takes ~20 ms:
    a re-threshold checks the same text again)."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        return f"SQL error: {first_line(exc)}"
    if not statements:
        return "empty query"
    if len(statements) > 1:
        return f"one statement per query, please (got {len(statements)})"
    for st in statements:
        if st.type != duckdb.StatementType.SELECT:
            return f"only SELECT queries are allowed (got {st.type.name})"
    return None


def run(store: Store, sql: str, params: dict[str, Any] | None = None) -> tuple[pa.Table, dict[str, int]]:
    """Run a read-only query over the store. Returns (result, versions it read)."""
    check_read_only(sql)
    # only the tables the query names: a store with many sets opens just those
    session = open_session(store, refs_in(sql), [t for t in store.tables() if mentions(sql, t)])
    try:
        result = session.con.sql(sql, params=params or None).to_arrow_table()
    except duckdb.Error as exc:
        raise QueryError(f"SQL error: {first_line(exc)}") from None
    finally:
        session.con.close()
    return plain_integers(unique_columns(result)), session.inputs_for(sql)


def inputs_by_table(read: dict[str, int], pinned: dict[str, int]) -> dict[str, int]:
    """Lineage inputs from the views a query READ (view -> version): table ->
    version, PINNED first; a second version of one table (the latest prompts read
    beside a pinned prompts@N) is kept as "table@version", never dropped."""
    inputs = dict(pinned)
    for view, version in sorted(read.items()):
        table = parse_ref(view)[0]
        inputs[table if inputs.get(table, version) == version else f"{table}@{version}"] = version
    return inputs


def plain_integers(table: pa.Table) -> pa.Table:
    """DuckDB's HUGEINT (every sum() of integers) arrives as decimal128(38, 0):
    as int64 when the values fit, so results hold integers (JSON numbers, polars
    Int64), not decimals. Values beyond int64 stay decimals."""
    for i, f in enumerate(table.schema):
        if pa.types.is_decimal(f.type) and f.type.scale == 0:
            try:
                table = table.set_column(i, f.name, table.column(i).cast(pa.int64()))
            except pa.ArrowInvalid:
                pass
    return table


def unique_columns(table: pa.Table) -> pa.Table:
    """TABLE with repeated column names made distinct: ``SELECT 1 AS a, 2 AS a``
    or a join's shared column would otherwise lose values wherever rows become
    dicts (or polars frames). The second ``a`` becomes ``a_1`` (DuckDB's own
    convention), the third ``a_2``, skipping names the result already has."""
    names = table.column_names
    if len(set(names)) == len(names):
        return table
    taken, out = set(names), []
    for name in names:
        if name not in out:
            out.append(name)
            continue
        n = 1
        while f"{name}_{n}" in taken:
            n += 1
        taken.add(f"{name}_{n}")
        out.append(f"{name}_{n}")
    return table.rename_columns(out)
