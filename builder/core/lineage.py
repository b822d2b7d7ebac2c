"""Lineage: what made a version of a table, stored in the commit that made it.

Every write of the store (builder/core/store.py) carries one :class:`Lineage` as a
Lance transaction property (key ``ttspo.lineage``): the command, its arguments, the
versions of the tables it read, the ttspo version, and command-specific facts.
"""

from __future__ import annotations

import json
from typing import Any

import lance

from ttspo import __version__
from ttspo.builder.core.render import strict_json

LINEAGE_KEY = "ttspo.lineage"


class Lineage(dict):
    """What made a version: the command, its arguments (``args``), the versions of
    the tables it read (``inputs``), the ttspo version, and command-specific facts
    (a recipe's SHA-256, a manifest's lines ...), as the one record every writer
    takes and every commit stores (strict JSON, key ``ttspo.lineage``).

    It is the stored record itself (a dict: JSON-serialisable, readable like the
    records ``Store.lineage`` returns). Writers that learn more as they go add it
    with :meth:`with_inputs` and :meth:`with_extra`, which return a new Lineage.
    """

    def __init__(self, command: str, args: dict[str, Any] | None = None,
                 inputs: dict[str, int] | None = None, **extra: Any):
        super().__init__(command=command, args=dict(args or {}), inputs=dict(inputs or {}),
                         ttspo_version=__version__, **extra)

    @property
    def command(self) -> str:
        return self["command"]

    @property
    def args(self) -> dict[str, Any]:
        return self["args"]

    @property
    def inputs(self) -> dict[str, int]:
        return self["inputs"]

    def with_inputs(self, inputs: dict[str, int] | None = None) -> "Lineage":
        return Lineage.from_record({**self, "inputs": {**self.inputs, **(inputs or {})}})

    def with_extra(self, **extra: Any) -> "Lineage":
        return Lineage.from_record({**self, **extra})

    def to_json(self) -> str:
        return strict_json(self, sort_keys=True)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "Lineage":
        """A Lineage from a record (read back, or passed to another process as JSON);
        it records the running ttspo version."""
        known = ("command", "args", "inputs", "ttspo_version")
        return cls(record.get("command", ""), record.get("args"), record.get("inputs"),
                   **{k: v for k, v in record.items() if k not in known})


def make_lineage(command: str, args: dict[str, Any] | None = None,
                 inputs: dict[str, int] | None = None, **extra: Any) -> Lineage:
    """The lineage of one command: stored in each commit it makes."""
    return Lineage(command, args, inputs, **extra)


def as_lineage(lineage: dict[str, Any]) -> Lineage:
    """Writers take a Lineage; a plain record dict (``{**lineage, ...}``, or one read
    back from a commit) becomes one."""
    return lineage if isinstance(lineage, Lineage) else Lineage.from_record(lineage)


def commit_properties(lineage: Lineage | dict[str, Any]) -> dict[str, str]:
    """Lance transaction properties for a commit: pass to any Lance write call."""
    return {LINEAGE_KEY: as_lineage(lineage).to_json()}


def lineage_of(ds: lance.LanceDataset, version: int) -> dict[str, Any]:
    """The lineage record VERSION of DS was committed with ({} when none)."""
    tx = ds.read_transaction(version)
    props = (tx.transaction_properties or {}) if tx is not None else {}
    raw = props.get(LINEAGE_KEY)
    return json.loads(raw) if raw else {}
