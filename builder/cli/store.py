"""`ttspo` store commands: sql, tables, versions, tag, restore, gc, compact (thin
over ttspo.builder.api.Store)."""

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


# ------------------------------------------------------------ gc/compact
@click.command()
@click.argument("table", required=False)
@click.option("--keep-last", metavar="N", help="Keep the last N versions of each table.")
@click.option("--older-than", metavar="AGE",
              help="Remove only versions older than AGE: 7d, 12h, 30m, 45s, 2w.")
@click.option("--dry-run", is_flag=True, help="List what would go and the bytes freed; "
              "remove nothing.")
@click.option("--force", is_flag=True, help="Remove versions a row or a lineage names too "
              "(listed); tagged and latest versions are still kept.")
@click.option("--wait", type=float, default=60.0, show_default=True, metavar="SECONDS",
              help="How long to wait for commands writing these tables.")
@format_option
@click.pass_context
def gc(ctx: click.Context, table: str | None, *, keep_last: str | None, older_than: str | None,
       dry_run: bool, force: bool, wait: float, fmt: str) -> None:
    """Remove old versions of TABLE (of every table when none is named).

    Never removes a table's latest version, a tagged version, or a version that a
    row (checkpoints, ref_logps ... *_version columns) or a lineage record names,
    unless --force. Without --keep-last and --older-than: keep the last 10 versions
    and any younger than 7 days (either option alone is the whole rule). What goes
    is logged in the store_log table (the cleaned tables get no new version).

    Cleaning generations (or every table) also removes the codes files in
    STORE/codes (what NeMo exports name) whose generation no kept generations
    version holds; the dry run lists them.

    Data files no version names (a writer killed before its commit) go once they
    are a week old (younger, a running writer may still commit them).
    """
    result = get_store(ctx).gc(table, keep_last=keep_last, older_than=older_than,
                               dry_run=dry_run, force=force, wait=wait,
                               lineage=lineage_for(ctx))
    rows = [_gc_row(t) for t in result.tables]
    if fmt == "json":
        from dataclasses import asdict

        from ttspo.builder.core.render import strict_json

        click.echo(strict_json({**asdict(result), "removed": result.removed,
                                "bytes": result.bytes}, sort_keys=True))
        return
    notes = [f"policy: {result.policy.describe()}"]
    click.echo(notes[0], err=fmt != "table")
    emit(rows, fmt, ["table", "removed", "versions", "bytes", "pinned", "tagged"])
    for t in result.tables:
        for version, why in sorted(t.forced.items()):
            click.echo(f"forced: {t.table}@{version} (named by {'; '.join(why)})",
                       err=fmt != "table")
    click.echo(_gc_summary(result), err=fmt != "table")
    if result.codes is not None and (result.codes.files or result.codes.kept):  # a store with codes
        for rel in result.codes.files if result.dry_run else ():
            click.echo(f"would remove: codes/{rel}", err=fmt != "table")
        click.echo(_codes_summary(result), err=fmt != "table")


def _codes_summary(result) -> str:
    c = result.codes
    n = f"{len(c.files)} codes file{'s' * (len(c.files) != 1)}"
    if result.dry_run:
        return f"dry run: would remove {n} of STORE/codes, freeing {c.bytes} bytes ({c.kept} kept)"
    return f"removed {n} of STORE/codes, freed {c.bytes} bytes ({c.kept} kept)"


def _gc_row(t) -> dict:
    return {"table": t.table, "removed": ranges(t.removed), "versions": len(t.removed),
            "bytes": t.bytes, "pinned": ranges(sorted(t.pinned)), "tagged": ranges(t.tagged)}


def _gc_summary(result) -> str:
    tables = sum(1 for t in result.tables if t.removed)
    parts = [f"{result.removed} version{'s' * (result.removed != 1)} from {tables} "
             f"table{'s' * (tables != 1)}"] if result.removed else []
    if result.orphans:  # a killed writer's uncommitted files, a week old
        parts.append(f"{result.orphans} data file{'s' * (result.orphans != 1)} no version names")
    what = " and ".join(parts)
    if not what:
        return "dry run: nothing to remove" if result.dry_run else "nothing to remove"
    if result.dry_run:
        return f"dry run: would remove {what}, freeing {result.bytes} bytes; nothing was removed"
    return (f"removed {what}, freed {result.bytes} bytes "
            f"(logged in store_log version {result.log_version})")


def ranges(versions: list[int]) -> str:
    """[1, 2, 3, 5] -> '1-3,5'."""
    spans: list[list[int]] = []
    for v in versions:
        if spans and v == spans[-1][1] + 1:
            spans[-1][1] = v
        else:
            spans.append([v, v])
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in spans)


@click.command()
@click.argument("table", required=False)
@click.option("--wait", type=float, default=60.0, show_default=True, metavar="SECONDS",
              help="How long to wait for commands writing these tables.")
@format_option
@click.pass_context
def compact(ctx: click.Context, table: str | None, wait: float, fmt: str) -> None:
    """Merge TABLE's small fragments (every table's when none is named).

    Each compacted table gets one new version (with lineage) holding the same rows
    with the same row ids; the old files stay for older versions until gc.
    """
    done = get_store(ctx).compact(table, wait=wait, lineage=lineage_for(ctx))
    rows = [{"table": t.table, "fragments_before": t.fragments_before,
             "fragments_after": t.fragments_after, "rows": t.rows, "version": t.version}
            for t in done]
    emit(rows, fmt, ["table", "fragments_before", "fragments_after", "rows", "version"])
    n = sum(1 for t in done if t.compacted)
    line = (f"compacted {n} of {len(done)} table{'s' * (len(done) != 1)}; run gc to free "
            "the files only older versions read" if n else "nothing to compact")
    click.echo(line, err=fmt != "table")


COMMANDS = [sql, tables, versions, tag, restore, gc, compact]
