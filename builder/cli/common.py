"""What every command module shares: the store, lineage, the --format option, output.

Command modules import this, never `main` (which imports them): no cycle.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import click

from ttspo.builder.core.render import FORMATS, render


def get_store(ctx: click.Context):
    """The notebook API's Store for --store (both halves): every command is thin over it."""
    import ttspo

    return ttspo.Store(ctx.find_root().obj["store_path"])


def lineage_for(ctx: click.Context):
    """Lineage of the running command: its path and its parameters (the API
    adds the versions it reads and what it learns)."""
    from ttspo.builder.core.store import make_lineage

    command = ctx.command_path.split(" ", 1)[1] if " " in ctx.command_path else ctx.command_path
    args = {k: _jsonable(v) for k, v in ctx.params.items()}
    if "TORCHELASTIC_RUN_ID" in os.environ:  # a rank that torchrun started
        return make_lineage(command, args, launcher="torchrun")
    return make_lineage(command, args)


def is_rank0() -> bool:
    """Whether this process prints a distributed command's result: one process, or
    rank 0 of torchrun's (every rank holds the result)."""
    return os.environ.get("RANK", "0") == "0"


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
