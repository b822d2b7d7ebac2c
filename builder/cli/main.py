"""The `ttspo` command line: thin over ``ttspo.Store``.

This module owns the root group (``--store``), assembles the command families of
both halves (the modules ``ttspo.COMMAND_FAMILIES`` names, each listing its
COMMANDS: the builder's in this package, the trainer's in ttspo.trainer.cli,
found by name so the builder never imports the trainer), and turns domain
errors into one-line click errors with exit code 1. The families import only
``common``, never this module, so there is no cycle; they import heavy libraries
(lance, duckdb, torch) inside their bodies so that ``ttspo --help`` starts fast.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from ttspo import COMMAND_FAMILIES, __version__
from ttspo.builder.core.errors import TtspoError


class TtspoGroup(click.Group):
    """A group that turns TtspoError into a clean ClickException (no traceback)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TtspoError as exc:
            raise click.ClickException(str(exc)) from None
        except OSError as exc:  # a read-only store, an unwritable --out folder, a full disk
            from ttspo.builder.core.store import os_error_reason

            raise click.ClickException(os_error_reason(exc)) from None


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
    for name in COMMAND_FAMILIES:
        for command in importlib.import_module(name).COMMANDS:
            cli.add_command(command)


_register_commands()

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
