"""`ttspo` store commands: sql, tables, versions, tag, restore (thin over
ttspo.builder.api.Store)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ttspo.builder.cli.common import emit, format_option, get_store, lineage_for
from ttspo.builder.core.errors import InputError


# ------------------------------------------------------------------- sql
@click.command()
@click.argument("query")
@format_option
@click.option("--out", "out_path", type=click.Path(dir_okay=False),
              help="Write the result to a file instead: .parquet, .csv or .json.")
@click.option("--param", "params", multiple=True, metavar="NAME=VALUE",
              help="Named parameter $NAME (repeatable); int, float, else string.")
@click.pass_context
def sql(ctx: click.Context, *, query: str, fmt: str, out_path: str | None,
        params: tuple[str, ...]) -> None:
    """Run a read-only DuckDB QUERY over the store's tables.

    QUERY is SQL text, `-` to read it from stdin, or a path ending in .sql.
    Every table is a view at its latest version; quote a reference to reach an
    older version or a tag: "generations@12", "generations@v1". Only SELECT is
    accepted and the query cannot read or write files. stdout holds exactly the
    result (nothing with --out).
    """
    from ttspo.builder.core.params import parse_params

    store, text, typed = get_store(ctx), _query_text(query), parse_params(params)
    if out_path is None:
        result = store.query(text, typed)
        emit(result.to_pylist(), fmt, result.column_names)
        return
    rows = store.save_sql(text, out_path, **typed)
    click.echo(f"wrote {rows} rows to {out_path}", err=True)


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


# ---------------------------------------------------------------- tables
@click.command()
@format_option
@click.pass_context
def tables(ctx: click.Context, fmt: str) -> None:
    """List the store's tables: rows, latest version, tags."""
    rows = get_store(ctx).tables()
    emit(_tags_as_text(rows) if fmt != "json" else rows, fmt, ["table", "rows", "version", "tags"])


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
    rows = get_store(ctx).versions(table)
    columns = ["version", "time", "command", "rows", "tags"]
    if fmt == "json":
        emit(rows, fmt, columns + ["lineage"])
    else:
        emit(_tags_as_text(rows), fmt, columns)


def _tags_as_text(rows: list[dict]) -> list[dict]:
    return [{**r, "tags": ",".join(r["tags"])} for r in rows]


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
    number = get_store(ctx).tag(table, version, name)
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
    number = store.resolve(table, version)
    new = store.restore(table, number, lineage=lineage_for(ctx))
    click.echo(f"restored {table} to version {number} as new version {new}")


COMMANDS = [sql, tables, versions, tag, restore]
