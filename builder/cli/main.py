"""The `ttspo` command line: thin over the builder API.

This module owns the root group (``--store``), assembles the command families
(one module each in this package, each listing its COMMANDS), and turns domain
errors into one-line click errors with exit code 1. The families import only
``common``, never this module, so there is no cycle; they import heavy libraries
(lance, duckdb, torch) inside their bodies so that ``ttspo --help`` starts fast.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from ttspo import __version__
from ttspo.builder.core.errors import TtspoError


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


def main() -> None:
    cli(prog_name="ttspo")


def _register_commands() -> None:
    """Each command module lists its top-level commands in COMMANDS."""
    from ttspo.builder.cli import demo, ingest, prompts, score, sets, store, train

    for module in (store, prompts, ingest, sets, score, train, demo):
        for command in module.COMMANDS:
            cli.add_command(command)


_register_commands()

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
