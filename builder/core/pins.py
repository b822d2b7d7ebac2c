"""Which table versions the store names somewhere (pins): `ttspo gc` keeps them.

A version is named in two kinds of places:

- a row: any column ``X_version`` names version N of table X (checkpoints'
  generations_version and prompts_version), and ``set_version`` names a version
  of the set in the row's ``set_name`` (checkpoints, ref_logps; pair_dynamics and
  labels when they exist). Found by column name, so a table added later with such
  columns pins too. Only a table's latest rows are read: these tables only grow
  (a deleted row no longer pins).
- a lineage record: its ``inputs`` (``{"generations": 12}``, ``{"prompts@3": 3}``),
  its top-level ``X_version`` facts (a build's ``prompts_version``; ``set_version``
  with ``set``), and any ``TABLE@N`` text in its arguments (``ttspo train dpo
  prefs@7``). Tags in arguments are left to the tags themselves (gc keeps tagged
  versions). A lineage naming its own table (an ingest's previous generations
  version, a restore's source) pins nothing: lifecycle.py says why.
"""

from __future__ import annotations

import re
from typing import Any, Iterator

from ttspo.builder.core.lineage import lineage_of
from ttspo.builder.core.store import Store

VERSION_COLUMN = re.compile(r"^(?P<table>[A-Za-z_][A-Za-z0-9_\-]*)_version$")
NUMBERED_REF = re.compile(r"^(?P<table>[A-Za-z_][A-Za-z0-9_\-]*)@(?P<version>\d+)$")
SET_NAME_KEYS = ("set_name", "set")  # rows say set_name, a build's lineage says set

Pin = tuple[str, int]  # (table, version)
Pins = dict[Pin, list[str]]  # what names each pinned version, for the report


def add(pins: Pins, pin: Pin, why: str) -> None:
    reasons = pins.setdefault(pin, [])
    if why not in reasons:
        reasons.append(why)


# ------------------------------------------------------------------ rows
def row_pins(store: Store, tables: list[str]) -> Pins:
    """The versions the latest rows of TABLES name in their *_version columns."""
    pins: Pins = {}
    for table in tables:
        ds = store.open(table)
        columns = [c for c in ds.schema.names if _version_column(c)]
        if not columns:
            continue
        read = columns + ([SET_NAME_KEYS[0]] if "set_version" in columns
                          and SET_NAME_KEYS[0] in ds.schema.names else [])
        distinct = ds.to_table(columns=read).group_by(read).aggregate([])
        for row in distinct.to_pylist():
            for column in columns:
                target = _target(column, row.get(SET_NAME_KEYS[0]))
                if target is not None and row[column] is not None:
                    add(pins, (target, int(row[column])), f"a row of {table}")
    return pins


def _version_column(name: str) -> bool:
    return bool(VERSION_COLUMN.match(name)) and name != "ttspo_version"


def _target(key: str, set_name: Any) -> str | None:
    """The table a *_version key names: X for X_version, the set for set_version."""
    table = VERSION_COLUMN.match(key).group("table")
    if table == "set":
        return set_name if isinstance(set_name, str) else None
    return table


# --------------------------------------------------------------- lineage
def lineage_pins(record: dict[str, Any]) -> Iterator[Pin]:
    """The (table, version) pairs one lineage record names."""
    for key, version in (record.get("inputs") or {}).items():
        if _is_int(version):
            yield key.split("@", 1)[0], int(version)
    set_name = next((record[k] for k in SET_NAME_KEYS if isinstance(record.get(k), str)), None)
    for key, value in record.items():
        if _version_column(key) and _is_int(value):
            target = _target(key, set_name)
            if target is not None:
                yield target, int(value)
    yield from _refs_in(record.get("args"))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _refs_in(value: Any) -> Iterator[Pin]:
    if isinstance(value, str):
        m = NUMBERED_REF.match(value)
        if m:
            yield m.group("table"), int(m.group("version"))
    elif isinstance(value, dict):
        for item in value.values():
            yield from _refs_in(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _refs_in(item)


class LineageCache:
    """Each version's lineage read once (a transaction file per version)."""

    def __init__(self, store: Store):
        self.store = store
        self.records: dict[Pin, list[Pin]] = {}
        self.datasets: dict[str, Any] = {}

    def pins_of(self, table: str, version: int) -> list[Pin]:
        key = (table, version)
        if key not in self.records:
            if table not in self.datasets:
                self.datasets[table] = self.store.open(table)
            record = lineage_of(self.datasets[table], version)
            self.records[key] = list(lineage_pins(record))
        return self.records[key]

