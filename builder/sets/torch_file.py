"""The bytes ``torch.save(torch.from_numpy(array), buffer)`` writes, without torch.

A NeMo export writes ~25k small codes files. Through torch each costs ~0.3 ms
of pickling and zip bookkeeping (plus ~2 s to import torch at all); the format
is fixed, so it is written here directly. ``torch.load`` (NeMo's dataset)
reads it as any torch file. tests/test_torch_file.py checks the bytes against
``torch.save`` of the same tensor under the pinned torch, for many shapes and
both dtypes, so a torch upgrade that changes the format fails there first.

The layout, as torch's zip writer (PyTorchStreamWriter over miniz) makes it:
records ``data.pkl``, ``.format_version``, ``.storage_alignment``,
``byteorder``, ``data/0``, ``version`` and ``.data/serialization_id``, each a
stored (uncompressed) zip entry whose data starts on a 64-byte boundary (an
"FB" extra field of 'Z' padding), followed by a data descriptor; then the
central directory and ZIP64 end records. The serialization id is two 20-digit
numbers: a hash of the record names (the same for every one-tensor file) and
the records' CRC-32s folded with ``c10::hash_combine`` (empty records skipped).
"""

from __future__ import annotations

import functools
import struct
import zlib

import numpy as np

STORAGES = {np.dtype("int32"): "IntStorage", np.dtype("int64"): "LongStorage"}
ALIGN = 64
NAMES_HASH = "15728199511854643026"  # of the six record names below; constant (see the test)
_MASK = (1 << 64) - 1
_FIXED = (("archive/.format_version", b"1"), ("archive/.storage_alignment", b"64"),
          ("archive/byteorder", b"little"))


def torch_file_bytes(array: np.ndarray) -> bytes:
    """What torch.save of torch.from_numpy(ARRAY) writes (ARRAY: C-contiguous int32
    or int64, as the export makes it)."""
    if array.dtype not in STORAGES:  # (native little-endian int32/int64 only: '>i4' is not int32)
        raise ValueError(f"torch_file_bytes: an int32/int64 array, not {array.dtype.str}")
    if not array.flags.c_contiguous:
        raise ValueError("torch_file_bytes: a C-contiguous array only")
    strides = tuple(s // array.itemsize for s in array.strides)
    records = [("archive/data.pkl", _pickle(STORAGES[array.dtype], array.size, array.shape, strides)),
               *_FIXED, ("archive/data/0", array.tobytes()), ("archive/version", b"3\n")]
    combined = 0
    for _, data in records:
        if data:  # torch folds in the CRC of non-empty records only
            combined = _hash_combine(combined, zlib.crc32(data))
    records.append(("archive/.data/serialization_id", f"{NAMES_HASH}{combined:020d}".encode()))
    return _zip(records)


def _hash_combine(seed: int, value: int) -> int:
    return (seed ^ ((value + 0x9E3779B9 + ((seed << 6) & _MASK) + (seed >> 2)) & _MASK)) & _MASK


# ------------------------------------------------------------------ pickle
def _int(n: int) -> bytes:
    """A non-negative int as pickle protocol 2 writes it."""
    if n <= 0xFF:
        return b"K" + bytes((n,))
    if n <= 0xFFFF:
        return b"M" + struct.pack("<H", n)
    if n <= 0x7FFFFFFF:
        return b"J" + struct.pack("<i", n)
    raise ValueError(f"torch_file_bytes: {n} is too large for this writer")


class _Memo:
    def __init__(self) -> None:
        self.next = 0

    def put(self) -> bytes:  # BINPUT: every tuple, string and global is memoised once
        self.next += 1
        return b"q" + bytes((self.next - 1,))


def _tuple(items: tuple[int, ...], memo: _Memo) -> bytes:
    if not items:
        return b")"  # EMPTY_TUPLE: not memoised
    body = b"".join(_int(i) for i in items)
    if len(items) <= 3:
        return body + b"\x85\x86\x87"[len(items) - 1:len(items)] + memo.put()
    return b"(" + body + b"t" + memo.put()


def _string(s: str, memo: _Memo) -> bytes:
    raw = s.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw + memo.put()


def _global(module: str, name: str, memo: _Memo) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode() + memo.put()


@functools.lru_cache(maxsize=4096)  # an export's codes come in a few hundred shapes
def _pickle(storage: str, numel: int, shape: tuple[int, ...], strides: tuple[int, ...]) -> bytes:
    """torch._utils._rebuild_tensor_v2((storage persistent id), 0, shape, strides,
    False, OrderedDict()), as torch's protocol-2 pickler writes it."""
    memo = _Memo()
    out = [b"\x80\x02", _global("torch._utils", "_rebuild_tensor_v2", memo), b"(("]
    out += [_string("storage", memo), _global("torch", storage, memo), _string("0", memo),
            _string("cpu", memo), _int(numel), b"t", memo.put(), b"Q"]
    out += [_int(0), _tuple(shape, memo), _tuple(strides, memo), b"\x89"]
    out += [_global("collections", "OrderedDict", memo), b")R", memo.put(), b"t", memo.put(),
            b"R", memo.put(), b"."]
    if memo.next > 256:
        raise ValueError("torch_file_bytes: too many memo entries")
    return b"".join(out)


# --------------------------------------------------------------------- zip
def _zip(records: list[tuple[str, bytes]]) -> bytes:
    out, central, offset = [], [], 0
    for name, data in records:
        raw = name.encode()
        start = offset + 30 + len(raw) + 4  # where the data would start with an empty FB field
        pad = -start % ALIGN
        # An empty record has no data descriptor (and no flag saying it has one).
        flags = 0x0808 if data else 0x0800
        header = struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 0, flags, 0, 0, 0, 0, 0, 0, len(raw), 4 + pad)
        crc = zlib.crc32(data)
        descriptor = struct.pack("<4sIII", b"PK\x07\x08", crc, len(data), len(data)) if data else b""
        out += [header, raw, b"FB", struct.pack("<H", pad), b"Z" * pad, data, descriptor]
        central.append(struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 0, 0, flags, 0, 0, 0, crc,
                                   len(data), len(data), len(raw), 0, 0, 0, 0, 0, offset) + raw)
        offset += len(header) + len(raw) + 4 + pad + len(data) + len(descriptor)
    directory = b"".join(central)
    n, end64 = len(records), offset + len(directory)
    if end64 >= 0xFFFFFFFF:
        raise ValueError("torch_file_bytes: files of 4 GiB or more are not written by this writer")
    tail = (struct.pack("<4sQHHIIQQQQ", b"PK\x06\x06", 44, 0x031E, 0x002D, 0, 0, n, n, len(directory), offset)
            + struct.pack("<4sIQI", b"PK\x06\x07", 0, end64, 1)
            + struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, n, n, len(directory), offset, 0))
    return b"".join(out) + directory + tail
