"""What every command module shares: the store, lineage, the --format option, output.

Command modules import this, never `main` (which imports them): no cycle.
"""

from __future__ import annotations

import math
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


class FiniteFloat(click.FloatRange):
    """A float option that must be finite and within the range given (none: any
    finite number); else one line naming the option and the value, exit 1. click's
    FloatRange lets nan through (every comparison with nan is false), and an inf or
    nan sampling value ends in a traceback far from the option that set it."""

    name = "finite float"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = click.FLOAT.convert(value, param, ctx)  # not a number: click's usage error
        if math.isfinite(number):
            try:
                return super().convert(number, param, ctx)
            except click.BadParameter:
                pass
        option = param.opts[0] if param is not None and param.opts else "the value"
        ranged = "" if self.min is None and self.max is None else f" in {self._describe_range()}"
        raise click.ClickException(f"{option} {value}: must be a finite number{ranged}")

    def _describe_range(self) -> str:  # what --help shows after the default
        return "finite" if self.min is None and self.max is None else super()._describe_range()


def format_option(f):
    """The shared --format option."""
    return click.option("--format", "fmt", type=click.Choice(FORMATS), default="table",
                        show_default=True, help="Output format.")(f)


def emit(rows: Sequence[dict[str, Any]], fmt: str, columns: Sequence[str] | None = None) -> None:
    """Print rows as an aligned table, CSV, or one JSON array of objects."""
    # color=True: click would strip ANSI sequences from CSV text when stdout is not a
    # terminal (CSV keeps every value whole); a table escapes them, JSON too.
    click.echo(render(rows, fmt, columns), nl=False, color=True)
