"""Stored maps: generation id -> a row of derived values (an export's line parts,
its codes keys), kept per table version in this session and in STORE/.derived
(session_cache.py: keys, checksums, what is kept), grown as new ids come.

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
import mmap
import os
import weakref
import zlib
from pathlib import Path
from typing import Callable, Hashable, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ttspo.builder.core import heap
from ttspo.builder.core.files import StagedFile
from ttspo.builder.core.schemas import DERIVED
from ttspo.builder.sets.session_cache import (_LOCK, _TRAILER, MAGIC, POOL, _Crc32Sink, _enabled, _path, _prune,
                                              _verify, cached, computed)

_mapped: "weakref.WeakSet[mmap.mmap]" = weakref.WeakSet()  # the mappings of stored maps in use
_CRC_SLICE = 1 << 22  # bytes checked between two hand-backs of a mapping's pages


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


def trim_heap() -> None:
    """Hand the free pages inside glibc's heaps back to the kernel (``malloc_trim``),
    and the stored maps' mapped pages (drop_pages). Called after each piece of a
    computed entry, and by the export of a big set after each step and manifest
    chunk (~10 ms a call: not a re-threshold's few chunks): the small blocks freed
    (Python objects, Arrow arrays, Lance's reads, in the heaps of several threads)
    otherwise stayed in RSS and added up (bench/RESULTS.md)."""
    drop_pages()
    heap.trim()


def drop_pages() -> None:
    """Hand the pages of every mapped stored map back to the kernel: they leave
    this process's RSS (read again, if touched, from the page cache)."""
    for mm in list(_mapped):
        with contextlib.suppress(ValueError, OSError):  # closed meanwhile
            mm.madvise(mmap.MADV_DONTNEED)

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
               compute: Callable[[pa.Array], pa.Table], order_by: str | None = None) -> pa.Table:
    """The SCHEMA rows of IDS (unique), in that order (or sorted by column ORDER_BY).
    Rows neither this session nor the store's copy has are computed (COMPUTE(new
    ids, an Arrow string array) returns their SCHEMA rows, each once, in any order:
    the export computes its line parts in table order, as a Lance take of rows
    spread over the whole table reads all of it) and kept in both. STORE None: this
    session only."""
    table, positions = stored_rows(store, kind, key, schema, ids=ids, compute=compute, order_by=order_by)
    return pc.take(table, positions, memory_pool=POOL)


Computed = pa.Table | Iterable[pa.Table]  # rows, whole or in pieces one after another


def stored_rows(store, kind: str, key: Hashable, schema: pa.Schema, *, ids: Sequence[str] | pa.Array,
                compute: Callable[[pa.Array], Computed],
                order_by: str | None = None) -> tuple[pa.Table, pa.Array]:
    """As stored_map, without the copy: (the entry's whole table, the rows of IDS
    in it, in stored_map's order). Why: a big entry taken into set order is a
    second copy of it (bench/RESULTS.md, export memory); a caller that needs only
    a few rows at a time takes them itself (:func:`take`: the entry's columns may
    be in chunks). COMPUTE may return its rows in pieces: they are then written into
    the store's copy one after another, never all in memory. The new ids go to
    COMPUTE as one Arrow array, not a list of Python strings (~90 B more per id,
    held while every piece is computed: a first export's growth; bench/RESULTS.md)."""
    if not _enabled[0]:
        todo = _strings(ids)
        made = _Map(pa.concat_tables(list(_checked_pieces(compute(todo), todo, kind=kind, schema=schema))))
        return _positioned(made.table, made.positions(todo).cast(pa.int64()), order_by)

    def load() -> _Map:
        table = _mapped_table(_path(store, kind, key), schema) if store is not None else None
        return _Map(table if table is not None else schema.empty_table())

    with _LOCK:  # the entry grows in place: one thread at a time
        return _grown_rows(entry=cached(kind, key, load), store=store, kind=kind, key=key, schema=schema,
                        ids=ids, compute=compute, order_by=order_by)


def _strings(ids: Sequence[str] | pa.Array) -> pa.Array:
    return ids if isinstance(ids, pa.Array) else pa.array(list(ids), pa.string(), memory_pool=POOL)


def _grown_rows(*, entry: "_Map", store, kind: str, key: Hashable, schema: pa.Schema, ids: Sequence[str],
             compute: Callable[[pa.Array], Computed], order_by: str | None) -> tuple[pa.Table, pa.Array]:
    wanted = _strings(ids)
    at = entry.positions(wanted)
    drop_pages()
    new = pc.filter(wanted, at.is_null(), memory_pool=POOL) if at.null_count else wanted.slice(0, 0)
    if len(new):
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


def _checked_pieces(made: Computed, new: pa.Array, *, kind: str, schema: pa.Schema) -> Iterator[pa.Table]:
    """The pieces of MADE as SCHEMA, each checked to hold rows of NEW not seen
    before (all of them once the last is out)."""
    seen = np.zeros(len(new), bool)
    for piece in [made] if isinstance(made, pa.Table) else made:
        piece = piece.cast(schema)
        at = pc.index_in(piece.column(DERIVED.id), value_set=new, memory_pool=POOL)
        where = at.to_numpy(zero_copy_only=False) if not at.null_count else None
        if where is None or seen[where].any() or len(np.unique(where)) < len(where):
            raise AssertionError(f"{kind}: the computed rows are not those asked for")
        seen[where] = True
        yield piece
    if not seen.all():
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
        with staged.open("wb") as sink, heap.steady_heap():
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
