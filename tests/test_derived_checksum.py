"""A `.derived` entry is used only when the checksum written with it matches: one
flipped bit anywhere in any kind of entry (the Arrow header, its body, the trailer's
last byte) is seen, the entry is computed again and replaced, and the result is the
uncached result byte for byte. An entry without a checksum (an older ttspo's) is absent."""

from __future__ import annotations

import pytest

from ttspo.builder.sets import session_cache
from test_derived_cache import KINDS, rethreshold, truth
from test_rethreshold import store, write_generations  # noqa: F401  (store: the fixture)

TRAILER = len(session_cache.MAGIC) + 4  # MAGIC, then the CRC-32 (4 bytes)
# Where a bit flips: the Arrow file's magic, its schema message, the middle of the
# body, the Arrow footer's last byte (just before the trailer), the checksum's last byte.
OFFSETS = {"magic": lambda n: 2, "schema": lambda n: 12, "body": lambda n: n // 2,
           "footer": lambda n: n - TRAILER - 1, "last byte": lambda n: n - 1}


NEEDS: dict[str, tuple[str, ...]] = {}  # kinds read only to compute others (none now)


def entry(store, kind):
    (path,) = (store.root / session_cache.DERIVED_DIR).glob(f"{kind}-*.arrow")
    return path


def flip(path, offset, bit=0):
    with path.open("r+b") as fh:  # in place, as a disk fault would: same file, same size
        fh.seek(offset)
        byte = fh.read(1)[0]
        fh.seek(offset)
        fh.write(bytes([byte ^ (1 << bit)]))


@pytest.fixture
def expected(store, tmp_path):
    return truth(store, tmp_path / "truth", 0.1)


@pytest.mark.slow  # a rebuild per kind and offset (25 cases)
@pytest.mark.parametrize("where", OFFSETS)
@pytest.mark.parametrize("kind", KINDS)
def test_a_flipped_bit_is_seen_recomputed_and_replaced(store, tmp_path, expected, kind, where):
    rethreshold(store, tmp_path / "out", 0.1)
    path = entry(store, kind)
    good = path.read_bytes()
    flip(path, OFFSETS[where](len(good)), bit=len(good) % 8)
    damaged = path.read_bytes()
    assert damaged != good
    for other in NEEDS.get(kind, ()):
        entry(store, other).unlink()
    session_cache.clear()  # a new session: it reads the store's copies
    got = rethreshold(store, tmp_path / "out2", 0.1)
    assert got[0].equals(expected[0]) and got[0].num_rows > 0
    assert got[1:3] == expected[1:3]  # manifests and codes files, byte for byte
    assert set(session_cache.computed) == {kind, *NEEDS.get(kind, ())}, dict(session_cache.computed)
    replaced = entry(store, kind).read_bytes()
    assert replaced != damaged and session_cache._read(entry(store, kind)) is not None
    session_cache.clear()  # the replacement is used from now on
    rethreshold(store, tmp_path / "out3", 0.1)
    assert not session_cache.computed


@pytest.mark.parametrize("kind", KINDS)
def test_an_entry_without_a_checksum_is_absent(store, tmp_path, expected, kind):
    rethreshold(store, tmp_path / "out", 0.1)
    path = entry(store, kind)
    plain = path.read_bytes()[:-TRAILER]  # a whole Arrow file, as an older ttspo wrote it
    path.write_bytes(plain)
    assert session_cache._read(path) is None
    for other in NEEDS.get(kind, ()):
        entry(store, other).unlink()
    session_cache.clear()
    got = rethreshold(store, tmp_path / "out2", 0.1)
    assert got[0].equals(expected[0]) and got[1:3] == expected[1:3]
    assert set(session_cache.computed) == {kind, *NEEDS.get(kind, ())}
    assert entry(store, kind).read_bytes()[-TRAILER:].startswith(session_cache.MAGIC)


def test_every_kind_ends_in_its_checksum(store, tmp_path):
    import zlib

    rethreshold(store, tmp_path / "out", 0.1)
    for kind in KINDS:
        data = entry(store, kind).read_bytes()
        assert data[-TRAILER:-4] == session_cache.MAGIC
        assert int.from_bytes(data[-4:], "little") == zlib.crc32(data[:-TRAILER])
