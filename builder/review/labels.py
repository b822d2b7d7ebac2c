"""The `labels` table: human (or scripted) judgements of two generations.

A labeler hears two generations blind, in an order the page (or script) drew, and
picks A, B, a tie or skip. Each judgement is one row (builder/core/schemas.py,
LABEL); a batch of judgements is one Lance commit whose lineage names the labeler
kind (page or script). Judgements are checked before anything is written: unknown
generations, a pair the set version does not hold (a stale page) or a malformed
choice is an InputError naming the judgement, and nothing of the batch is written.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Sequence

import pyarrow as pa

from ttspo.builder.core.errors import InputError
from ttspo.builder.core.schemas import GEN, LABEL, LABELS_SCHEMA, PAIR
from ttspo.builder.core.store import Lineage, Store, sql_string

LABELS = "labels"
CHOICES = ("a", "b", "tie", "skip")


@dataclass(frozen=True, kw_only=True)
class Judgement:
    """One judgement: FIRST_ID was shown as A, SECOND_ID as B."""

    labeler: str
    first_id: str
    second_id: str
    choice: str
    source: str = "generations"
    pair_id: str | None = None
    set_name: str | None = None
    set_version: int | None = None

    @property
    def chosen_id(self) -> str | None:
        return {"a": self.first_id, "b": self.second_id}.get(self.choice)


def append_labels(store: Store, judgements: Sequence[Judgement], *, lineage: Lineage) -> int:
    """Check JUDGEMENTS and write them to `labels` in one commit; returns the version."""
    if not judgements:
        raise InputError("labels: no judgements to write")
    for j in judgements:
        _check_shape(j)
    _check_generations(store, judgements)
    _check_pairs(store, judgements)
    pinned = lineage.with_inputs(_inputs(store, judgements))
    return store.write(LABELS, _table(judgements, pinned), LABELS_SCHEMA, pinned)


def _check_shape(j: Judgement) -> None:
    where = f"label {j.first_id!r} vs {j.second_id!r}"
    if j.choice not in CHOICES:
        raise InputError(f"{where}: choice {j.choice!r} is not one of {', '.join(CHOICES)}")
    if not j.labeler.strip():
        raise InputError(f"{where}: no labeler named")
    if j.first_id == j.second_id:
        raise InputError(f"{where}: a generation cannot be judged against itself")
    if j.pair_id is not None and (j.set_name is None or j.set_version is None):
        raise InputError(f"{where}: pair {j.pair_id!r} needs its set name and version")


def _check_generations(store: Store, judgements: Sequence[Judgement]) -> None:
    wanted = {i for j in judgements for i in (j.first_id, j.second_id)}
    if not store.exists("generations"):
        raise InputError(f"labels: no generations table, so {sorted(wanted)[0]!r} is unknown")
    found = _present(store.open("generations"), GEN.generation_id, wanted)
    missing = sorted(wanted - found)
    if missing:
        raise InputError(f"labels: unknown generation {missing[0]!r}"
                         + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))


def _check_pairs(store: Store, judgements: Sequence[Judgement]) -> None:
    by_set: dict[tuple[str, int], list[Judgement]] = {}
    for j in judgements:
        if j.pair_id is not None:
            by_set.setdefault((j.set_name, int(j.set_version)), []).append(j)
    for (name, version), js in by_set.items():
        if not store.exists(name):
            raise InputError(f"labels: pair {js[0].pair_id!r}: no set {name!r}")
        try:
            ds = store.open(name, version)
        except Exception:  # noqa: BLE001 - Lance raises several types for a missing version
            raise InputError(f"labels: pair {js[0].pair_id!r}: set {name!r} has no version "
                             f"{version}") from None
        ids = sorted({j.pair_id for j in js})
        rows = ds.to_table(columns=[PAIR.pair_id, PAIR.chosen_id, PAIR.rejected_id],
                           filter=_in(PAIR.pair_id, ids)).to_pylist()
        members = {r[PAIR.pair_id]: {r[PAIR.chosen_id], r[PAIR.rejected_id]} for r in rows}
        for j in js:
            if members.get(j.pair_id) != {j.first_id, j.second_id}:
                raise InputError(f"labels: pair {j.pair_id!r} is not in {name}@{version} with "
                                 f"generations {j.first_id!r} and {j.second_id!r} (stale page?)")


def _present(ds, column: str, wanted: set[str]) -> set[str]:
    found: set[str] = set()
    ids = sorted(wanted)
    for start in range(0, len(ids), 1000):  # keep each filter short
        chunk = ids[start:start + 1000]
        found |= set(ds.to_table(columns=[column], filter=_in(column, chunk))[column].to_pylist())
    return found


def _in(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(sql_string(v) for v in values)})"


def _inputs(store: Store, judgements: Sequence[Judgement]) -> dict[str, int]:
    """The table versions the judgements were checked against (lineage pins them)."""
    inputs = {"generations": store.version("generations")}
    for j in judgements:
        if j.set_name is not None:
            inputs[f"{j.set_name}@{j.set_version}"] = int(j.set_version)
    return inputs


def _table(judgements: Sequence[Judgement], lineage: Lineage) -> pa.Table:
    now = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
    rows = [{LABEL.label_id: uuid.uuid4().hex, LABEL.labeler: j.labeler, LABEL.time: now,
             LABEL.first_id: j.first_id, LABEL.second_id: j.second_id, LABEL.choice: j.choice,
             LABEL.chosen_id: j.chosen_id, LABEL.source: j.source, LABEL.pair_id: j.pair_id,
             LABEL.set_name: j.set_name, LABEL.set_version: j.set_version,
             LABEL.lineage: lineage.to_json()} for j in judgements]
    return pa.Table.from_pylist(rows, schema=LABELS_SCHEMA)
