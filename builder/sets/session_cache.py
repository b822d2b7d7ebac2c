"""What a re-threshold computes once: in this process, and kept in the store.

A re-threshold builds and exports the same generations again: the recipe ranks
the same groups, the export encodes the same generations and hashes the same
codes. Those results depend only on a table VERSION's content, and a Lance
version never changes once committed: its data and deletion files are
immutable, uniquely named files. So a cache entry is keyed by
:func:`table_identity` (the table's path, version and the names of its data and
deletion files: a new version, a restore, or a store deleted and built again at
the same path gives another key) plus whatever else the result depends on.
Entries live in this process (at most MAX_ENTRIES per kind, least recently
used dropped first); :func:`clear` empties them, :func:`disabled` turns them off
(and the store's copies below).

What a new session would compute again is also kept in the store, in
``STORE/.derived/`` (:func:`stored_table`, :func:`stored_map`): Arrow IPC files
named by the SHA-256 of (kind, key, CODE): CODE hashes ttspo's version, the
source of the modules that compute the entries, the SQL macros and the DuckDB
and Lance versions, so an upgrade or an edit never reads an old entry (and the
next write of a kind removes the entries other code wrote). Each file ends in a
trailer, the CRC-32 of the Arrow bytes before it, written with them to a temporary
name and renamed (readers see whole files, checksum included). An entry is used
only once its checksum matches: one that does not (a flipped bit anywhere), has no
trailer (an older ttspo's) or cannot be read (truncated, not Arrow, another schema)
is computed again and replaced; a store that cannot be written to is only not
cached. Each kind keeps its MAX_FILES most recently used files. ``rm -r
STORE/.derived`` is always safe. Stored maps (ids -> rows, grown as new ids come):
stored_maps.py.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import struct
import threading
import time
import zlib
from collections import Counter, OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Hashable, Iterator

import pyarrow as pa

from ttspo.builder.core.files import atomic_write

# Large derived buffers (line parts, manifest lines: tens of MB) come from the system
# allocator: Arrow's default (mimalloc) paid ~0.2 s of first-touch page faults for
# them in a new process, a third of a new session's re-threshold (bench/RESULTS.md).
POOL = pa.system_memory_pool()
MAX_ENTRIES = 4
MAX_FILES = 8
DERIVED_DIR = ".derived"
# A stored entry: an Arrow IPC file, then MAGIC and the CRC-32 of those Arrow bytes.
# CRC-32, not a hash: it sees every burst of up to 32 flipped bits for sure (a hash
# almost surely), and zlib's costs ~0.3 ms of CPU per MB (bench/RESULTS.md).
# A checksum kept with the file is against damage, not against whoever can write it.
MAGIC = b"ttspo-crc32\0"
_TRAILER = struct.Struct(f"<{len(MAGIC)}sI")
# False: entries memory-mapped, their CRC not compared (the read before checksums:
# bench/derived_check.py's baseline; never for use)
_verify = [True]
_entries: dict[str, OrderedDict] = {}
_enabled = [True]
_LOCK = threading.RLock()
# kind -> entries computed (stored_table) or ids computed (stored_map) by this
# process, not read from the session or the store: what a re-threshold still costs.
computed: Counter = Counter()
# What stored entries are computed by: an edit of any of these gives new file names.
_SOURCES = ("builder/sets/session_cache.py", "builder/sets/stored_maps.py", "builder/sets/recipe_cache.py",
            "builder/sets/recipes.py", "builder/sets/pair_contract.py",
            "builder/sets/nemo_lines.py", "builder/sets/line_parts.py", "builder/sets/codes.py", "builder/sets/torch_file.py",
            "builder/core/codes_store.py",
            "builder/core/query.py", "builder/core/schemas.py", "builder/core/metrics.py",
            "sql/macros.sql")


def table_identity(ds) -> tuple:
    """(path, version, data and deletion files) of one Lance table version."""
    files = []
    for fragment in ds.get_fragments():
        meta = fragment.metadata
        deletion = meta.deletion_file  # its id and read version name its file (its repr does not)
        files.append((fragment.fragment_id, tuple(d.path for d in meta.files),
                      None if deletion is None else (deletion.file_type, deletion.id, deletion.read_version,
                                                     deletion.num_deleted_rows)))
    return (str(ds.uri), ds.version, tuple(files))


def cached(kind: str, key: Hashable, compute: Callable[[], Any]) -> Any:
    """The value of KIND for KEY, computed (and kept) on first use."""
    if not _enabled[0]:
        return compute()
    with _LOCK:  # threads of one notebook share the entries: one computes, the others wait
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
    """Forget this session's entries (the store's copies stay: a new session)."""
    _entries.clear()
    computed.clear()


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


# ------------------------------------------------------------ kept in the store
@functools.lru_cache(maxsize=1)
def code_stamp() -> str:
    """SHA-256 of what stored entries are computed by (see the module doc)."""
    from importlib.metadata import version

    from ttspo import __version__

    root = Path(__file__).resolve().parents[2]  # the ttspo package (the repo, or site-packages/ttspo)
    digest = hashlib.sha256(f"{__version__}|{version('duckdb')}|{version('pylance')}".encode())
    for name in _SOURCES:
        source = root / name
        digest.update(name.encode() + b"\0" + (source.read_bytes() if source.is_file() else b"(missing)"))
    return digest.hexdigest()


def _path(store, kind: str, key: Hashable) -> Path:
    """STORE/.derived/KIND-CODE-KEY.arrow (CODE: the start of code_stamp; KEY: a
    hash of the key and the whole code stamp)."""
    name = hashlib.sha256(repr((kind, key, code_stamp())).encode()).hexdigest()[:32]
    return Path(store.root) / DERIVED_DIR / f"{kind}-{code_stamp()[:12]}-{name}.arrow"


def _read(path: Path, schema: pa.Schema | None = None) -> pa.Table | None:
    """The table in PATH, or None if there is none, its checksum does not match,
    it cannot be read or it is not of SCHEMA. Read into this process's memory, not
    memory-mapped: the bytes the table uses are the bytes checked (a mapped page
    evicted and read again could come back from a disk that changed since)."""
    opener = (functools.partial(pa.OSFile, memory_pool=POOL) if _verify[0]
              else pa.memory_map)  # unchecked: as before the checksums (the bench's baseline)
    try:
        with opener(str(path)) as source:
            payload = _checked(source.read_buffer())
            if payload is None:
                return None
            table = pa.ipc.open_file(payload).read_all()
    except (OSError, pa.ArrowException):
        return None
    if schema is not None and not table.schema.equals(schema):
        return None
    with contextlib.suppress(OSError):
        os.utime(path)  # used now: the newest files of a kind are the ones kept (_prune)
    return table


def _checked(data: pa.Buffer) -> pa.Buffer | None:
    """The Arrow bytes of a stored file's DATA if its trailer is there and its
    checksum matches them, else None (a file without one: an older ttspo's entry)."""
    if data.size < _TRAILER.size:
        return None
    magic, crc = _TRAILER.unpack(data.slice(data.size - _TRAILER.size).to_pybytes())
    payload = data.slice(0, data.size - _TRAILER.size)
    if magic != MAGIC or (_verify[0] and zlib.crc32(payload) != crc):
        return None
    return payload


class _Crc32Sink:
    """A file that keeps the CRC-32 of what goes through it (one pass: no copy)."""

    def __init__(self, sink):
        self.sink, self.crc, self.closed = sink, 0, False

    def write(self, data) -> int:
        self.crc = zlib.crc32(data, self.crc)
        return self.sink.write(data)

    def flush(self) -> None:
        self.sink.flush()

    def close(self) -> None:  # the trailer still goes after: the real file stays open
        self.closed = True


def _write(path: Path, table: pa.Table) -> bool:
    """TABLE as PATH, its checksum after it (whole or not at all: one rename); a
    store we cannot write to is not cached (False)."""
    try:
        path.parent.mkdir(exist_ok=True)
        with atomic_write(path, "wb") as sink:
            counted = _Crc32Sink(sink)
            with pa.ipc.new_file(pa.PythonFile(counted, mode="w"), table.schema) as writer:
                writer.write_table(table)
            sink.write(_TRAILER.pack(MAGIC, counted.crc))
        _prune(path.parent, path.name.split("-", 1)[0])
    except OSError:
        return False
    return True


def _prune(folder: Path, kind: str) -> None:
    """Keep KIND's MAX_FILES most recently used files of this code; those another
    ttspo (an upgrade, an edit) wrote can never be read again: they go."""
    ours = f"{kind}-{code_stamp()[:12]}-"
    files = sorted(folder.glob(f"{kind}-*.arrow"), key=_mtime, reverse=True)
    kept = [p for p in files if p.name.startswith(ours)][:MAX_FILES]
    # and what a killed writer left (a live one renames its file within seconds)
    orphans = [p for p in folder.glob(f".{kind}-*.tmp") if _mtime(p) < time.time() - 3600]  # atomic_write's
    for old in (set(files) - set(kept)) | set(orphans):
        with contextlib.suppress(OSError):
            old.unlink()


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def stored_table(store, kind: str, key: Hashable, compute: Callable[[], pa.Table]) -> pa.Table:
    """The table of KIND for KEY: from this session, else the store's copy, else
    COMPUTE (then kept in both). STORE None: this session only."""
    if store is None or not _enabled[0]:
        return cached(kind, key, compute)

    def load() -> pa.Table:
        path = _path(store, kind, key)
        table = _read(path)
        if table is None:
            table = compute()
            computed[kind] += 1
            _write(path, table)
        return table

    return cached(kind, key, load)
