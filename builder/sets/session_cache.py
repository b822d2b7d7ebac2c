"""What one Python session (a notebook re-thresholding a set) computes once.

A re-threshold builds and exports the same generations again: the recipe ranks
the same groups, the export encodes the same generations and hashes the same
codes. Those results depend only on a table VERSION's content, and a Lance
version never changes once committed: its data and deletion files are
immutable, uniquely named files. So a cache entry is keyed by
:func:`table_identity` (the table's path, version and the names of its data and
deletion files: a new version, a restore, or a store deleted and built again at
the same path gives another key) plus whatever else the result depends on.
Entries live in this process only (at most MAX_ENTRIES per kind, least recently
used dropped first); :func:`clear` empties them, :func:`disabled` turns them off.
"""

from __future__ import annotations

from collections import OrderedDict
from contextlib import contextmanager
from typing import Any, Callable, Hashable, Iterator

MAX_ENTRIES = 4
_entries: dict[str, OrderedDict] = {}
_enabled = [True]


def table_identity(ds) -> tuple:
    """(path, version, data and deletion files) of one Lance table version."""
    files = []
    for fragment in ds.get_fragments():
        meta = fragment.metadata
        files.append((fragment.fragment_id, tuple(d.path for d in meta.files),
                      str(meta.deletion_file) if meta.deletion_file is not None else None))
    return (str(ds.uri), ds.version, tuple(files))


def cached(kind: str, key: Hashable, compute: Callable[[], Any]) -> Any:
    """The value of KIND for KEY, computed (and kept) on first use."""
    if not _enabled[0]:
        return compute()
    entries = _entries.setdefault(kind, OrderedDict())
    if key in entries:
        entries.move_to_end(key)
        return entries[key]
    value = compute()
    entries[key] = value
    while len(entries) > MAX_ENTRIES:
        entries.popitem(last=False)
    return value


def clear() -> None:
    _entries.clear()


def size(kind: str) -> int:
    return len(_entries.get(kind, ()))


@contextmanager
def disabled() -> Iterator[None]:
    """Compute everything afresh inside (tests compare both ways)."""
    _enabled[0] = False
    try:
        yield
    finally:
        _enabled[0] = True
