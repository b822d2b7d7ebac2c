"""The codes files of a NeMo export: kept once in ``STORE/codes``, named by the
manifests, copied into ``OUT/codes`` only when asked (``--copy-codes``).

Every generation's codes are a ``[codebooks, frames]`` tensor of ``codes_dtype``
(int32 by default, or int64; see export.py for why not int16), in the bytes
``torch.save`` writes. They come from the generations table (as ingested),
written by torch_file.py (the same bytes, without torch's per-file cost), else
from the generation's ``codes_path`` (read and saved with torch).

The files live in ``STORE/codes`` under their content's address
(builder/core/codes_store.py: the SHA-256 of the bytes and the generation's id):
the first export that needs a file writes it, every later export names it. Each
generation's address is kept per table version in the store
(stored_maps.stored_rows, key ``"<sha256>:<size>"``), so a re-threshold reads no
codes: it checks each named file by one ``stat`` (there, of that size; a missing
one is written again) and writes manifests. The codes are read and written in
chunks of CHUNK generations: memory does not grow with the set.

``--copy-codes`` (codes_copy.py) copies the files into ``OUT/codes``.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ttspo.builder.core import codes_store
from ttspo.builder.core.codes_store import safe_name  # noqa: F401 (the export's names)
from ttspo.builder.core.errors import InputError
from ttspo.builder.core.schemas import CODES_KEYS_SCHEMA, DERIVED, GEN
from ttspo.builder.sets.session_cache import table_identity
from ttspo.builder.sets.stored_maps import drop_pages, stored_rows, take
from ttspo.builder.sets.torch_file import torch_file_bytes

CODES_DTYPES = ("int32", "int64")  # not int16: NeMo's DPO gather needs int32/int64 indices
DEFAULT_CODES_DTYPE = "int32"
WRITER = "torch_file-1"  # what makes a file's bytes (torch_file.py); part of every stored key
CHUNK = 4096  # generations whose codes are in memory at once


def check_codes_dtype(codes_dtype: str) -> None:
    if codes_dtype not in CODES_DTYPES:
        raise InputError(f"--codes-dtype {codes_dtype}: choose {' or '.join(CODES_DTYPES)} (NeMo's DPO "
                         "step gathers log-probs with the codes as index: int16 crashes it)")


@dataclass
class TableCodes:
    """The codes of some generations as one flat array: generation id -> (start,
    end, shape) in VALUES (the table's dtype, e.g. int16)."""

    values: np.ndarray
    rows: dict[str, tuple[int, int, tuple[int, ...]]]

    def array(self, gid: str) -> np.ndarray:
        start, end, shape = self.rows[gid]
        return self.values[start:end].reshape(shape)


def table_codes(ds, offsets: np.ndarray, ids: list[str]) -> TableCodes:
    """The [codebooks, frames] codes of the rows at OFFSETS of DS (IDS in the same
    order); generations without codes are left out."""
    taken = ds.take(pa.array(offsets, pa.int64()), columns=[GEN.generation_id, GEN.codes])
    if taken.column(GEN.generation_id).to_pylist() != ids:
        raise InputError(f"{ds.uri}: rows moved while the export read them; export again")
    outer = taken.column(GEN.codes).combine_chunks()
    if outer.null_count == len(outer):
        return TableCodes(np.zeros(0, np.int16), {})
    inner = outer.values  # one list per codebook (offsets below index the unsliced children)
    if inner.null_count or inner.values.null_count:
        bad = next(i for i in range(len(ids)) if outer[i].is_valid and _has_null(outer[i]))
        raise InputError(f"{ds.uri}: the codes of generation {ids[bad]} hold a null")
    valid = outer.is_valid().to_numpy(zero_copy_only=False)
    outer_off = outer.offsets.to_numpy()
    inner_off = inner.offsets.to_numpy()
    frames = np.diff(inner_off)[:outer_off[-1]]  # per codebook
    books = np.diff(outer_off)
    starts = outer_off[:-1][books > 0]
    lo = np.zeros(len(ids), frames.dtype)
    hi = np.zeros(len(ids), frames.dtype)
    if len(starts):
        lo[books > 0] = np.minimum.reduceat(frames, starts)
        hi[books > 0] = np.maximum.reduceat(frames, starts)
    ragged = np.flatnonzero(valid & (lo != hi))
    if len(ragged):
        i = ragged[0]
        raise InputError(f"{ds.uri}: the codes of generation {ids[i]} are ragged "
                         f"(codebooks of {lo[i]} to {hi[i]} frames)")
    rows = {}
    for i in np.flatnonzero(valid).tolist():
        a, b = outer_off[i], outer_off[i + 1]
        # no codebook: as torch.as_tensor([]), shape (0,)
        rows[ids[i]] = (int(inner_off[a]), int(inner_off[b]), (int(b - a), int(lo[i])) if b > a else (0,))
    return TableCodes(inner.values.to_numpy(zero_copy_only=False), rows)


def _has_null(codes: pa.Scalar) -> bool:
    return any(row is None or None in row for row in codes.as_py())


def read_codes_file(path: str, gid: str):
    """The [codebooks, frames] tensor in a NeMo codes file (no code runs while reading)."""
    import torch

    try:
        codes = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  missing, truncated or not a tensor file
        raise InputError(f"{path}: cannot read the codes of generation {gid} ({str(exc)[:120]})") from None
    if not isinstance(codes, torch.Tensor) or codes.dim() != 2:
        raise InputError(f"{path}: the codes of generation {gid} are not a [codebooks, frames] tensor")
    return codes



def codes_stamp(ds, codes_dtype: str) -> str:
    """What a codes file's bytes depend on besides the codes."""
    return f"{codes_dtype}|{ds.schema.field(GEN.codes).type}|{WRITER}"


@dataclass(kw_only=True)
class StoredCodes:
    """Where the codes files of an export's generations are: the stored entry's
    arrays (Arrow strings, not Python objects) and the row of each of IDS in them,
    taken a chunk at a time (no copy in the order of IDS)."""

    root: Path  # STORE/codes, absolute
    ids: pa.Array  # the generations (Arrow strings)
    keys: pa.Array  # content key "<sha256>:<size>" per generation
    rels: pa.Array  # its file, relative to ROOT
    written: int  # files this export wrote into STORE/codes
    at: pa.Array | None = None  # the row of each of ids in keys and rels (None: in order)

    def part(self, column: pa.Array, start: int, length: int) -> pa.Array:
        """COLUMN (keys or rels) of ids[start:start + length]."""
        return _part(column, self.at, start, length)


def _part(column: pa.Array | pa.ChunkedArray, at: pa.Array | None, start: int, length: int) -> pa.Array:
    return column.slice(start, length) if at is None else take(column, at.slice(start, length))


def _key(data) -> tuple[str, str]:
    sha = hashlib.sha256(data).hexdigest()
    return sha, f"{sha}:{len(data)}"


def _size(key: str) -> int:
    return int(key.rsplit(":", 1)[1])


def store_codes(store, sv_ref: str, ds, offsets: pa.Array, *, gids: pa.Array,
                codes_paths: pa.ChunkedArray | pa.Array, paths_at: pa.Array | None = None,
                codes_dtype: str) -> StoredCodes | None:
    """Make sure STORE/codes holds the codes file of every generation in GIDS
    (OFFSETS: their rows in DS, in the order of GIDS; CODES_PATHS: their codes_path,
    likewise, or at PATHS_AT in it: a stored column is not copied in GIDS' order):
    write those it lacks, check the others by size. None when no generation has
    codes (NeMo's dataset then reads the wavs); a mix of generations with and
    without is one line."""
    check_codes_dtype(codes_dtype)
    gids = gids if isinstance(gids, pa.Array) else pa.array(gids, pa.string())
    offsets = offsets if isinstance(offsets, pa.Array) else pa.array(offsets, pa.int64())
    root = codes_store.codes_root(store)
    stamp = codes_stamp(ds, codes_dtype)
    written = [0]
    fresh = np.zeros(len(gids), bool)  # written or found just now: no stat needed

    def compute(todo: pa.Array) -> Iterator[pa.Table]:
        """Each of TODO's (key, file), CHUNK at a time (written one after another;
        only a chunk's ids are Python objects)."""
        where = pc.index_in(todo, value_set=gids).to_numpy(zero_copy_only=False)
        fresh[where] = True  # each below is written, or has no codes (then not stat'ed anyway)
        for start in range(0, len(todo), CHUNK):
            chunk = todo.slice(start, CHUNK).to_pylist()
            rows = pc.take(offsets, pa.array(where[start:start + CHUNK])).to_numpy()
            table = table_codes(ds, rows.astype(np.int64), chunk)
            keys, rels = [], []
            for gid in chunk:
                key = rel = None
                if gid in table.rows:
                    data = _file_bytes(table.array(gid), codes_dtype)
                    sha, key = _key(data)
                    rel = codes_store.relative_name(sha, gid)
                    written[0] += codes_store.put(root, rel, data)
                keys.append(key)
                rels.append(rel)
            yield pa.table([chunk, keys, rels], schema=CODES_KEYS_SCHEMA)

    # generation id -> (key, file; None without codes in the table), per table version
    entry, at = stored_rows(store, "export.codes", (table_identity(ds), stamp), CODES_KEYS_SCHEMA,
                            ids=gids, compute=compute)
    keys = entry.column(DERIVED.key)
    rels = entry.column(DERIVED.file)
    own = pa.chunked_array([codes_paths]) if isinstance(codes_paths, pa.Array) else codes_paths
    no_file = pc.or_kleene(pc.is_null(own), pc.equal(own, "")).fill_null(True)
    no_file = no_file.combine_chunks() if paths_at is None else take(no_file, paths_at)
    drop_pages()
    keyless = take(keys.is_null(), at)
    without = pc.and_(keyless, no_file)
    count = pc.sum(without).as_py() or 0
    if count and count < len(gids):
        first = min(pc.filter(gids, without).to_pylist())
        raise InputError(f"{sv_ref}: {count} of {len(gids)} generations have no codes "
                         f"(first: {first}); NeMo cannot batch codes with audio, export none or all")
    if count:
        return None
    _check_or_rewrite(ds, offsets, gids=gids, keys=keys, rels=rels, at=at, fresh=fresh, root=root,
                      codes_dtype=codes_dtype, written=written)
    if pc.any(keyless).as_py():  # codes only in codes_path files: read (and hashed) on every export
        own = own if paths_at is None else take(own, paths_at)
        keys, rels = _from_files(root, gids=gids.to_pylist(), keys=take(keys, at), rels=take(rels, at), own=own,
                                 codes_dtype=codes_dtype, written=written)
        at = None
    return StoredCodes(root=root, ids=gids, keys=keys, rels=rels, written=written[0], at=at)


def _check_or_rewrite(ds, offsets, *, gids, keys, rels, at, fresh, root, codes_dtype, written) -> None:
    """Stat each file not written just now (streamed from the arrays, CHUNK at a
    time); write a missing one again."""

    def files():  # one item per generation (None: not stat'ed), so missing() gives positions in gids
        for start in range(0, len(gids), CHUNK):
            key_list = _part(keys, at, start, CHUNK).to_pylist()
            rel_list = _part(rels, at, start, CHUNK).to_pylist()
            drop_pages()  # the stored entry's mapped pages just read
            for i, (key, rel) in enumerate(zip(key_list, rel_list), start):
                yield None if key is None or fresh[i] else (rel, _size(key))

    gone = codes_store.missing(root, files())
    lost = {gids[i].as_py(): i for i in gone}
    rows = {gid: offsets[i].as_py() for gid, i in lost.items()}
    for chunk, table in _chunks(ds, rows, list(lost)):  # deleted since: written again
        for gid in chunk:
            data = _file_bytes(table.array(gid), codes_dtype)
            if _key(data)[1] != _part(keys, at, lost[gid], 1)[0].as_py():
                raise InputError(f"{ds.uri}: the codes of generation {gid} are not those kept for "
                                 f"generations@{ds.version} in STORE/.derived; remove STORE/.derived "
                                 "and export again")
            written[0] += codes_store.put(root, _part(rels, at, lost[gid], 1)[0].as_py(), data)


def _from_files(root, *, gids, keys, rels, own, codes_dtype, written) -> tuple[pa.Array, pa.Array]:
    import torch

    key_list, rel_list, paths = keys.to_pylist(), rels.to_pylist(), own.to_pylist()
    for i in sorted(range(len(gids)), key=gids.__getitem__):
        if key_list[i] is not None:
            continue
        codes = read_codes_file(paths[i], gids[i])
        buffer = io.BytesIO()
        torch.save(codes.to(getattr(torch, codes_dtype)), buffer)
        data = buffer.getvalue()
        sha, key_list[i] = _key(data)
        rel_list[i] = codes_store.relative_name(sha, gids[i])
        written[0] += codes_store.put(root, rel_list[i], data)
    return pa.array(key_list, pa.string()), pa.array(rel_list, pa.string())


def _file_bytes(codes: np.ndarray, codes_dtype: str) -> bytes:
    return torch_file_bytes(np.ascontiguousarray(codes.astype(codes_dtype)))


def _chunks(ds, offsets: dict[str, int], gids: list[str]):
    """(ids, their TableCodes) for GIDS in table order, CHUNK at a time."""
    ordered = sorted(gids, key=offsets.__getitem__)
    for start in range(0, len(ordered), CHUNK):
        part = ordered[start:start + CHUNK]
        yield part, table_codes(ds, np.array([offsets[g] for g in part], np.int64), part)
