"""The `ttspo` command line: thin over the builder API.

This module owns the root group, the shared options (``--store``, ``--format``),
output formatting, and the translation of domain errors into one-line click
errors with exit code 1. Commands live in ``cli_*.py`` modules, one per family,
and import heavy libraries (lance, duckdb, torch) inside their bodies so that
``ttspo --help`` starts fast.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from typing import Any, Iterable, Sequence

import click

from builder import __version__
from builder.errors import TtspoError

FORMATS = ("table", "csv", "json")


class TtspoGroup(click.Group):
    """A group that turns TtspoError into a clean ClickException (no traceback)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TtspoError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=TtspoGroup)
@click.option("--store", "store_path", envvar="TTSPO_STORE", default="ttspo-store",
              show_default=True, type=click.Path(file_okay=False),
              help="Store directory (a folder of Lance tables). Env: TTSPO_STORE.")
@click.version_option(__version__, prog_name="ttspo")
@click.pass_context
def cli(ctx: click.Context, store_path: str) -> None:
    """ttspo: versioned preference data for TTS alignment (NeMo MagpieTTS and kin).

    Generations, metrics and preference sets live in versioned Lance tables,
    queried with DuckDB SQL; every write records its lineage.
    """
    ctx.obj = {"store_path": store_path}


# ----------------------------------------------------------------- helpers
def get_store(ctx: click.Context):
    from builder.store import Store

    return Store(ctx.find_root().obj["store_path"])


def lineage_for(ctx: click.Context, inputs: dict[str, int] | None = None, **extra: Any) -> dict:
    """Lineage of the running command: its path, its parameters, input versions."""
    from builder.store import make_lineage

    command = ctx.command_path.split(" ", 1)[1] if " " in ctx.command_path else ctx.command_path
    args = {k: _jsonable(v) for k, v in ctx.params.items()}
    return make_lineage(command, args, inputs, **extra)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def format_option(f):
    """The shared --format option."""
    return click.option("--format", "fmt", type=click.Choice(FORMATS), default="table",
                        show_default=True, help="Output format.")(f)


def emit(rows: Sequence[dict[str, Any]], fmt: str, columns: Sequence[str] | None = None) -> None:
    """Print rows as an aligned table, CSV, or one JSON array of objects."""
    click.echo(render(rows, fmt, columns), nl=False)


def render(rows: Sequence[dict[str, Any]], fmt: str, columns: Sequence[str] | None = None) -> str:
    columns = list(columns if columns is not None else (rows[0].keys() if rows else []))
    if fmt == "json":
        return json.dumps([{c: _json_value(r.get(c)) for c in columns} for r in rows],
                          indent=2, default=str) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(columns)
        for r in rows:
            writer.writerow([_csv_cell(r.get(c)) for c in columns])
        return buf.getvalue()
    return render_table(rows, columns)


def _json_value(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else str(v)
    if isinstance(v, bytes):
        return f"<{len(v)} bytes>"
    return v


def _csv_cell(value: Any) -> str:
    """CSV keeps every value whole: no truncation, floats that round-trip."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    if isinstance(value, (list, dict)):
        return json.dumps(value, default=str)
    return repr(value) if isinstance(value, float) else str(value)


def _cell(v: Any, width: int = 60) -> str:
    """A table cell: short floats, long text cut (tables are for reading)."""
    if isinstance(v, float):
        text = f"{v:.6g}"
    elif isinstance(v, bytes):
        text = f"<{len(v)} bytes>"
    elif isinstance(v, (list, dict)):
        text = json.dumps(v, default=str)
    else:
        text = str(v)
    return text if len(text) <= width else text[: width - 1] + "…"


def render_table(rows: Iterable[dict[str, Any]], columns: Sequence[str]) -> str:
    rows = list(rows)
    cells = [[("" if r.get(c) is None else _cell(r.get(c))) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()
    out = [line(columns), line(["-" * w for w in widths])] + [line(r) for r in cells]
    return "\n".join(out) + "\n"


def main() -> None:
    cli(prog_name="ttspo")


# Register the command families (each module adds its commands to `cli`).
from builder import cli_store, cli_prompts, cli_ingest, cli_sets, cli_score, cli_demo  # noqa: E402,F401

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
