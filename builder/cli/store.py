"""`ttspo` store commands: sql, tables, versions, tag, restore (thin over
ttspo.builder.core.store and ttspo.builder.core.query)."""

from __future__ import annotations

import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

import click

from ttspo.builder.cli.common import emit, format_option, get_store, lineage_for
from ttspo.builder.core.render import render
from ttspo.builder.core.errors import InputError, QueryError, StoreError

OUT_FORMATS = (".parquet", ".csv", ".json")


# ------------------------------------------------------------------- sql
@click.command()
@click.argument("query")
@format_option
@click.option("--out", "out_path", type=click.Path(dir_okay=False),
              help="Write the result to a file instead: .parquet, .csv or .json.")
@click.option("--param", "params", multiple=True, metavar="NAME=VALUE",
              help="Named parameter $NAME (repeatable); int, float, else string.")
@click.pass_context
def sql(ctx: click.Context, query: str, fmt: str, out_path: str | None,
        params: tuple[str, ...]) -> None:
    """Run a read-only DuckDB QUERY over the store's tables.

    QUERY is SQL text, `-` to read it from stdin, or a path ending in .sql.
    Every table is a view at its latest version; quote a reference to reach an
    older version or a tag: "generations@12", "generations@v1". Only SELECT is
    accepted and the query cannot read or write files. stdout holds exactly the
    result (nothing with --out).
    """
    from ttspo.builder.core import query as q

    text = _query_text(query)
    out = _check_out(out_path) if out_path else None
    result, _ = q.run(get_store(ctx), text, parse_params(params))
    if out is None:
        _emit_result(result, fmt)
        return
    _write_result(result, out)
    click.echo(f"wrote {result.num_rows} rows to {out_path}", err=True)


def _query_text(query: str) -> str:
    if query == "-":
        return sys.stdin.read()
    if query.endswith(".sql"):
        path = Path(query)
        if not path.is_file():
            raise InputError(f"{query}: no such SQL file")
        try:
            return path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise InputError(f"{query}: not UTF-8 text") from None
    return query


def parse_params(pairs: Sequence[str]) -> dict[str, Any]:
    """NAME=VALUE strings -> {NAME: int | float | str}."""
    params: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
            raise QueryError(f"--param '{pair}' is not NAME=VALUE")
        params[name] = _number_or_string(value)
    return params


def _number_or_string(value: str) -> int | float | str:
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def _check_out(out_path: str) -> Path:
    out = Path(out_path)
    if out.suffix.lower() not in OUT_FORMATS:
        raise InputError(f"{out_path}: unknown output format '{out.suffix}' "
                         f"(use {', '.join(OUT_FORMATS)})")
    if not out.parent.is_dir():
        raise InputError(f"{out_path}: directory {out.parent} does not exist")
    return out


def _emit_result(result, fmt: str) -> None:
    emit(result.to_pylist(), fmt, result.column_names)


def _write_result(result, out: Path) -> None:
    """Write atomically (temporary file, then rename): no half-written result."""
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    mask = os.umask(0)
    os.umask(mask)
    os.fchmod(fd, 0o666 & ~mask)  # mkstemp makes 0600; a result is an ordinary file
    os.close(fd)
    try:
        suffix = out.suffix.lower()
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            pq.write_table(result, tmp)
        else:
            rows, columns = result.to_pylist(), result.column_names
            text = render(rows, "csv" if suffix == ".csv" else "json", columns)
            Path(tmp).write_text(text, encoding="utf-8")
        os.replace(tmp, out)
    finally:
        Path(tmp).unlink(missing_ok=True)


# ---------------------------------------------------------------- tables
@click.command()
@format_option
@click.pass_context
def tables(ctx: click.Context, fmt: str) -> None:
    """List the store's tables: rows, latest version, tags."""
    store = get_store(ctx)
    rows = []
    for name in store.tables():
        ds = store.open(name)
        tags = store.tags(name)
        rows.append({"table": name, "rows": ds.count_rows(), "version": ds.version,
                     "tags": _tag_list(tags) if fmt == "json" else _tag_text(tags)})
    emit(rows, fmt, ["table", "rows", "version", "tags"])


# -------------------------------------------------------------- versions
@click.command()
@click.argument("table")
@format_option
@click.pass_context
def versions(ctx: click.Context, table: str, fmt: str) -> None:
    """List TABLE's versions: time (UTC), command, rows, tags.

    --format json adds each version's full lineage (command, args, inputs,
    ttspo_version, ...).
    """
    store = get_store(ctx)
    tags = store.tags(table)
    rows = []
    for v in store.versions(table):
        here = {name: ver for name, ver in tags.items() if ver == v["version"]}
        row = {k: v[k] for k in ("version", "time", "command", "rows")}
        row["tags"] = _tag_list(here) if fmt == "json" else _tag_text(here)
        if fmt == "json":
            row["lineage"] = v["lineage"]
        rows.append(row)
    columns = ["version", "time", "command", "rows", "tags"]
    emit(rows, fmt, columns + ["lineage"] if fmt == "json" else columns)


def _tag_list(tags: dict[str, int]) -> list[str]:
    return sorted(tags)


def _tag_text(tags: dict[str, int]) -> str:
    return ",".join(sorted(tags))


# ------------------------------------------------------------ tag/restore
@click.command()
@click.argument("table")
@click.argument("version")
@click.argument("name")
@click.pass_context
def tag(ctx: click.Context, table: str, version: str, name: str) -> None:
    """Name VERSION (a number or an existing tag) of TABLE as NAME.

    Reach it later as TABLE@NAME, e.g. in SQL: SELECT * FROM "generations@NAME".
    """
    store = get_store(ctx)
    number = resolve_version(store, table, version)
    store.tag(table, number, name)
    click.echo(f"tagged {table} version {number} as '{name}'")


@click.command()
@click.argument("table")
@click.argument("version")
@click.pass_context
def restore(ctx: click.Context, table: str, version: str) -> None:
    """Make VERSION (a number or a tag) of TABLE its latest again.

    Adds a new version with that content and records lineage; history is kept
    (nothing is deleted, so a restore can itself be undone).
    """
    store = get_store(ctx)
    number = resolve_version(store, table, version)
    new = store.restore(table, number, lineage_for(ctx, inputs={table: number}))
    click.echo(f"restored {table} to version {number} as new version {new}")


def resolve_version(store, table: str, version: str) -> int:
    """A version number or tag -> the version number (StoreError if unknown)."""
    if not version.isdigit():
        return store.open(table, version).version  # a tag
    known = [v["version"] for v in store.open(table).versions()]
    if int(version) not in known:
        raise StoreError(f"table '{table}' has no version {version} "
                         f"(latest is {max(known)})")
    return int(version)


COMMANDS = [sql, tables, versions, tag, restore]
