"""ttspo: data-centric preference alignment for codec-language-model TTS.

The repository root is this package: ``builder/``, ``trainer/`` and ``sql/`` are
``ttspo.builder``, ``ttspo.trainer`` and ``ttspo.sql`` (pyproject's package-dir
mapping). The builder (the data half) never imports the trainer; the command
line and ``ttspo.Store`` are assembled from both halves through the registry
below, which names modules as text. Importing ``ttspo`` stays light: nothing is
imported until used, so ``ttspo --help`` never loads Lance, DuckDB or torch.
"""

from __future__ import annotations

import functools
import importlib

__version__ = "0.1.0"

# ------------------------------------------------------------- the registry
# Command families: each module lists its top-level click commands in COMMANDS;
# ttspo.builder.cli.main adds them to the root group (`ttspo --help` sorts them).
COMMAND_FAMILIES = (
    "ttspo.builder.cli.store", "ttspo.builder.cli.prompts", "ttspo.builder.cli.ingest",
    "ttspo.builder.cli.sets", "ttspo.builder.cli.score", "ttspo.builder.cli.compare",
    "ttspo.builder.cli.serve",
    "ttspo.trainer.cli.train", "ttspo.trainer.cli.rewards", "ttspo.trainer.cli.generate",
    "ttspo.trainer.cli.demo",
)
# ttspo.Store is one class made of these, earlier ones first in its method order;
# the data half comes last (it owns __init__ and the checks every method uses).
STORE_PARTS = ("ttspo.trainer.api:TrainerMethods", "ttspo.builder.api:Store")
# What turns `ingest jsonl --codec SPEC` into a codec (the codecs are the trainer's).
CODEC_LOADER = "ttspo.trainer.api:load_codec"


def registered(ref: str):
    """The object a registry entry ``"module:name"`` names (its module imported now)."""
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


@functools.cache
def _store_class() -> type:
    parts = tuple(registered(ref) for ref in STORE_PARTS)
    return type("Store", parts, {"__module__": "ttspo", "__doc__": parts[-1].__doc__})


def __getattr__(name: str):
    if name == "Store":
        return _store_class()
    if name == "recipes":
        return registered("ttspo.builder.api:recipes")
    raise AttributeError(f"module 'ttspo' has no attribute {name!r}")


__all__ = ["Store", "recipes", "__version__"]
