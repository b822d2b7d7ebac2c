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
STORE/.derived`` is always safe.

The export's maps (:func:`stored_rows`: line parts, codes keys; tens to hundreds
of MB at a million generations) are memory-mapped, not read into memory: their
checksum is computed over the mapping a slice at a time, and every mapped page is
handed back to the kernel after each slice and each chunk of an export
(:func:`drop_pages`), so the export's memory does not grow with the entry (a
mapped page a process touched counts in its RSS until then). The bytes used are
the file's bytes checked: the file is never written in place (each write is a new
file renamed over the old; a mapping keeps the old file's bytes), so a page read
again after the check comes from the same bytes, unless the disk itself changed
them in between.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import mmap
import os
import struct
import threading
import time
import weakref
import zlib
from collections import Counter, OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ttspo.builder.core.files import StagedFile, atomic_write
from ttspo.builder.core.schemas import DERIVED

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
_mapped: "weakref.WeakSet[mmap.mmap]" = weakref.WeakSet()  # the mappings of stored maps in use
_CRC_SLICE = 1 << 22  # bytes checked between two hand-backs of a mapping's pages
_enabled = [True]
_LOCK = threading.RLock()
# kind -> entries computed (stored_table) or ids computed (stored_map) by this
# process, not read from the session or the store: what a re-threshold still costs.
computed: Counter = Counter()
# What stored entries are computed by: an edit of any of these gives new file names.
_SOURCES = ("builder/sets/session_cache.py", "builder/sets/recipe_cache.py", "builder/sets/recipes.py",
            "builder/sets/nemo_lines.py", "builder/sets/codes.py", "builder/sets/torch_file.py",
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


def _mapped_table(path: Path, schema: pa.Schema) -> pa.Table | None:
    """As _read, the table memory-mapped (no copy): its checksum computed over the
    mapping a slice at a time, each slice's pages handed back after it (see the
    module doc)."""
    try:
        with open(path, "rb") as fh:
            mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):  # missing, unreadable, or empty (nothing to map)
        return None
    end = len(mm) - _TRAILER.size
    if end < 0:
        return None
    magic, crc = _TRAILER.unpack(mm[end:])
    if magic != MAGIC:
        return None
    if _verify[0]:
        check = 0
        with memoryview(mm) as view:
            for start in range(0, end, _CRC_SLICE):
                check = zlib.crc32(view[start:min(end, start + _CRC_SLICE)], check)
                mm.madvise(mmap.MADV_DONTNEED, start, min(_CRC_SLICE, len(mm) - start))
        if check != crc:
            return None
    try:
        table = pa.ipc.open_file(pa.py_buffer(mm).slice(0, end)).read_all()
    except pa.ArrowException:
        return None
    if not table.schema.equals(schema):
        return None
    _mapped.add(mm)
    with contextlib.suppress(OSError):
        os.utime(path)  # used now (_prune)
    return table


M_MMAP_THRESHOLD = -3  # glibc's malloc.h
_LIBC: list = []  # [the C library, or None where it has no mallopt/malloc_trim]


def _glibc():
    if not _LIBC:
        try:
            libc = ctypes.CDLL(None)
            _LIBC.append(libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None)
        except OSError:
            _LIBC.append(None)
    return _LIBC[0]


@contextmanager
def steady_heap() -> Iterator[None]:
    """Inside, glibc's malloc gives every block of 128 KiB or more its own mapping,
    handed back to the kernel when freed (a no-op without glibc). Why: by default
    glibc raises that threshold to the size of each large block freed and serves
    later blocks up to it from its heaps, which keep the memory: computing an
    export's stored maps a piece at a time (Lance's reads of the generations, the
    pieces' Python lists) then left RSS growing with the pieces (bench/RESULTS.md).
    After, the threshold is glibc's highest dynamic one (32 MiB): large blocks are
    reused again (a fresh mapping per block costs its page faults on every use)."""
    libc = _glibc()
    if libc is not None:
        libc.mallopt(M_MMAP_THRESHOLD, 128 << 10)
    try:
        yield
    finally:
        if libc is not None:
            libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)


def trim_heap() -> None:
    """Hand the free pages inside glibc's heaps back to the kernel (``malloc_trim``),
    and the stored maps' mapped pages (drop_pages). Called after each piece of a
    computed entry: the small blocks a piece freed (its Python objects, Lance's
    reads, in the heaps of several threads) otherwise stayed in RSS
    (bench/RESULTS.md)."""
    drop_pages()
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def drop_pages() -> None:
    """Hand the pages of every mapped stored map back to the kernel: they leave
    this process's RSS (read again, if touched, from the page cache)."""
    for mm in list(_mapped):
        with contextlib.suppress(ValueError, OSError):  # closed meanwhile
            mm.madvise(mmap.MADV_DONTNEED)


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


class _Map:
    """A stored map in memory: its table. Each id's row is found by Arrow's hash
    (index_in), not a dict of Python strings: those cost ~200 B per entry, kept for
    the session (bench/RESULTS.md, export memory)."""

    def __init__(self, table: pa.Table):
        self.table = table

    def positions(self, ids: pa.Array) -> pa.Array:
        """The row of each of IDS in the table (null: not there)."""
        return pc.index_in(ids, value_set=one_array(self.table.column(DERIVED.id)), memory_pool=POOL)


def stored_map(store, kind: str, key: Hashable, schema: pa.Schema, *, ids: Sequence[str],
               compute: Callable[[list[str]], pa.Table], order_by: str | None = None) -> pa.Table:
    """The SCHEMA rows of IDS (unique), in that order (or sorted by column ORDER_BY).
    Rows neither this session nor the store's copy has are computed (COMPUTE(new
    ids) returns their SCHEMA rows in that order) and kept in both. STORE None:
    this session only."""
    table, positions = stored_rows(store, kind, key, schema, ids=ids, compute=compute, order_by=order_by)
    return pc.take(table, positions, memory_pool=POOL)


Computed = pa.Table | Iterable[pa.Table]  # rows, whole or in pieces one after another


def stored_rows(store, kind: str, key: Hashable, schema: pa.Schema, *, ids: Sequence[str] | pa.Array,
                compute: Callable[[list[str]], Computed],
                order_by: str | None = None) -> tuple[pa.Table, pa.Array]:
    """As stored_map, without the copy: (the entry's whole table, the rows of IDS
    in it, in stored_map's order). Why: a big entry taken into set order is a
    second copy of it (bench/RESULTS.md, export memory); a caller that needs only
    a few rows at a time takes them itself (:func:`take`: the entry's columns may
    be in chunks). COMPUTE may return its rows in pieces: they are then written into
    the store's copy one after another, never all in memory."""
    if not _enabled[0]:
        todo = ids.to_pylist() if isinstance(ids, pa.Array) else list(ids)
        made = pa.concat_tables(list(_checked_pieces(compute(todo), todo, kind=kind, schema=schema)))
        return _positioned(made, pa.array(range(len(ids)), pa.int64()), order_by)

    def load() -> _Map:
        table = _mapped_table(_path(store, kind, key), schema) if store is not None else None
        return _Map(table if table is not None else schema.empty_table())

    with _LOCK:  # the entry grows in place: one thread at a time
        return _grown_rows(entry=cached(kind, key, load), store=store, kind=kind, key=key, schema=schema,
                        ids=ids, compute=compute, order_by=order_by)


def _grown_rows(*, entry: "_Map", store, kind: str, key: Hashable, schema: pa.Schema, ids: Sequence[str],
             compute: Callable[[list[str]], pa.Table], order_by: str | None) -> tuple[pa.Table, pa.Array]:
    wanted = ids if isinstance(ids, pa.Array) else pa.array(ids, pa.string(), memory_pool=POOL)
    at = entry.positions(wanted)
    drop_pages()
    new = pc.filter(wanted, at.is_null()).to_pylist() if at.null_count else []
    if new:
        grown = None if store is None else _appended(_path(store, kind, key), entry.table, schema,
                                                     lambda: _checked_pieces(compute(new), new, kind=kind,
                                                                             schema=schema))
        if grown is None:  # this session only (no store, or one we cannot write to)
            made = _checked_pieces(compute(new), new, kind=kind, schema=schema)
            grown = pa.concat_tables([entry.table, *made]).combine_chunks(POOL)
        computed[kind] += len(new)
        entry.table = grown
        at = entry.positions(wanted)
        drop_pages()
    return _positioned(entry.table, at.cast(pa.int64()), order_by)


def _checked_pieces(made: Computed, new: list[str], *, kind: str, schema: pa.Schema) -> Iterator[pa.Table]:
    """The pieces of MADE as SCHEMA, each checked to hold the next rows of NEW."""
    done = 0
    for piece in [made] if isinstance(made, pa.Table) else made:
        ids = piece.column(DERIVED.id).to_pylist()
        if ids != new[done:done + len(ids)]:
            raise AssertionError(f"{kind}: the computed rows are not those asked for")
        done += len(ids)
        yield piece.cast(schema)
    if done != len(new):
        raise AssertionError(f"{kind}: the computed rows are not those asked for")


def _appended(path: Path, old: pa.Table, schema: pa.Schema, pieces: Callable[[], Iterator[pa.Table]]
              ) -> pa.Table | None:
    """PATH rewritten as OLD's rows then PIECES' (a new file, whole or not at all,
    checksum after it), a batch at a time, and mapped; None if PATH cannot be
    written (before PIECES are computed: the caller computes them in memory)."""
    try:
        path.parent.mkdir(exist_ok=True)
        staged = StagedFile(path)
    except OSError:
        return None
    started = [False]

    def batches() -> Iterator[pa.Table]:
        for batch in old.to_batches(max_chunksize=1 << 16):  # the mapped rows, a slice at a time
            yield pa.Table.from_batches([batch], schema)
        started[0] = True
        yield from pieces()

    try:
        with staged.open("wb") as sink, steady_heap():
            counted = _Crc32Sink(sink)
            with pa.ipc.new_file(pa.PythonFile(counted, mode="w"), schema) as writer:
                for table in batches():
                    writer.write_table(table)
                    del table
                    trim_heap()
            sink.write(_TRAILER.pack(MAGIC, counted.crc))
        staged.publish()
    except OSError:  # full or failing disk: computed again, in memory
        if not started[0]:
            return None
        return pa.concat_tables([old, *pieces()]).combine_chunks(POOL)
    finally:
        staged.discard()
    _prune(path.parent, path.name.split("-", 1)[0])
    table = _mapped_table(path, schema)
    if table is None:
        raise AssertionError(f"{path}: cannot read what was just written")
    return table


def take(column: pa.ChunkedArray | pa.Array, at: pa.Array) -> pa.Array:
    """COLUMN's values at AT (no nulls), one array. A column of a stored entry may
    be in chunks (written a piece at a time): each chunk is taken from alone, as
    Arrow's take of a chunked array concatenates every chunk first (a copy of the
    whole column, measured: bench/RESULTS.md)."""
    if isinstance(column, pa.ChunkedArray) and column.num_chunks == 1:
        column = column.chunk(0)
    if isinstance(column, pa.Array) or column.num_chunks == 0:
        return pc.take(column, at, memory_pool=POOL)
    where = np.asarray(at.to_numpy(zero_copy_only=False), np.int64)
    ends = np.cumsum([len(c) for c in column.chunks])
    chunk_of = np.searchsorted(ends, where, side="right")
    order = np.argsort(chunk_of, kind="stable")
    where, chunk_of = where[order], chunk_of[order]
    bounds = np.searchsorted(chunk_of, np.arange(column.num_chunks + 1))
    pieces = [pc.take(column.chunk(k), pa.array(where[a:b] - (ends[k] - len(column.chunk(k)))),
                      memory_pool=POOL)
              for k, (a, b) in enumerate(zip(bounds, bounds[1:])) if b > a]
    joined = pa.concat_arrays(pieces, memory_pool=POOL) if pieces else column.chunk(0).slice(0, 0)
    back = np.empty_like(order)
    back[order] = np.arange(len(order))
    return pc.take(joined, pa.array(back), memory_pool=POOL)


def _positioned(table: pa.Table, positions: pa.Array, order_by: str | None) -> tuple[pa.Table, pa.Array]:
    """(TABLE, POSITIONS sorted by TABLE's column ORDER_BY)."""
    if order_by is not None:
        positions = pc.take(positions, pc.sort_indices(take(table.column(order_by), positions)))
    return table, positions


def one_array(column: pa.ChunkedArray) -> pa.Array:
    """COLUMN as one array: its only chunk as it is (combine_chunks copies even one
    chunk, into Arrow's default pool)."""
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
