"""The export's stored maps (stored_maps.stored_rows) are memory-mapped and
written a piece at a time: the pieces come back as the rows computed, a column
in chunks is taken from chunk by chunk with the values of a plain take, and the
mapped pages leave the process's RSS when handed back (drop_pages)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from ttspo.builder.core.schemas import CODES_KEYS_SCHEMA
from ttspo.builder.sets import session_cache, stored_maps
from ttspo.builder.core.store import Store


@pytest.fixture
def store(tmp_path):
    (tmp_path / "store").mkdir()
    return Store(tmp_path / "store")


def rows(ids):
    return pa.table([ids, [f"key of {i}" for i in ids], [f"{i}.pt" for i in ids]], schema=CODES_KEYS_SCHEMA)


def pieces_of(size):
    def compute(ids):
        for start in range(0, len(ids), size):
            yield rows(ids[start:start + size])
    return compute


def test_take_from_a_chunked_column_gives_a_plain_takes_values():
    chunks = [pa.array([f"v{c}-{i}" for i in range(n)], pa.large_string()) for c, n in enumerate((5, 1, 7, 3))]
    column = pa.chunked_array(chunks)
    whole = column.combine_chunks()
    at = pa.array(np.random.default_rng(0).integers(0, len(whole), 40))  # every chunk, out of order, repeats
    assert stored_maps.take(column, at).to_pylist() == pc.take(whole, at).to_pylist()
    assert stored_maps.take(column, pa.array([], pa.int64())).to_pylist() == []
    assert stored_maps.take(column, pa.array([15, 0, 6])).to_pylist() == ["v3-2", "v0-0", "v2-0"]


def test_a_map_computed_in_pieces_is_stored_in_pieces_and_read_back_mapped(store):
    ids = [f"g{i}" for i in range(10)]
    table, at = stored_maps.stored_rows(store, "test.pieces", 1, CODES_KEYS_SCHEMA, ids=ids,
                                          compute=pieces_of(3))
    assert table.column("id").num_chunks == 4  # 3 + 3 + 3 + 1, as computed
    assert stored_maps.take(table.column("key"), at).to_pylist() == [f"key of {i}" for i in ids]
    (path,) = (store.root / session_cache.DERIVED_DIR).glob("test.pieces-*.arrow")
    assert session_cache._read(path).equals(rows(ids))  # the checksum of the whole file holds
    session_cache.clear()  # a new session: the store's copy, mapped, grown by 2 more ids

    def only_new(todo):
        assert isinstance(todo, pa.Array)  # Arrow strings, not a list of Python objects
        assert todo.to_pylist() == ["g11", "g10"]  # those not stored, in the order asked
        return rows(todo)

    more = ["g11", *ids, "g10"]
    table, at = stored_maps.stored_rows(store, "test.pieces", 1, CODES_KEYS_SCHEMA, ids=pa.array(more),
                                          compute=only_new)
    assert stored_maps.take(table.column("file"), at).to_pylist() == [f"{i}.pt" for i in more]
    assert session_cache.computed["test.pieces"] == 2


def test_pieces_that_are_not_the_ids_asked_for_are_refused(store):
    def wrong(ids):
        yield rows(ids[:2])
        yield rows(ids[3:])  # one left out

    with pytest.raises(AssertionError, match="not those asked for"):
        stored_maps.stored_rows(store, "test.wrong", 1, CODES_KEYS_SCHEMA, ids=["a", "b", "c", "d"],
                                  compute=wrong)

    def twice(ids):  # as many rows as asked for, one of them twice
        yield rows(ids[:2])
        yield rows(pa.concat_arrays([ids[2:3], ids[2:3]]))

    def another(ids):  # as many rows as asked for, one not asked for
        yield rows(pa.concat_arrays([ids[:3], pa.array(["e"])]))

    for compute in (twice, another):
        with pytest.raises(AssertionError, match="not those asked for"):
            stored_maps.stored_rows(store, f"test.{compute.__name__}", 1, CODES_KEYS_SCHEMA,
                                      ids=pa.array(["a", "b", "c", "d"]), compute=compute)


@pytest.mark.parametrize("kept", [True, False])
def test_rows_computed_in_another_order_are_found_by_id(store, kept):
    """The export computes its line parts in table order, not the order asked."""
    ids = [f"g{i}" for i in range(10)]

    def backwards(todo):
        yield rows(todo[5:][::-1])
        yield rows(todo[:5][::-1])

    if kept:
        got = stored_maps.stored_map(store, "test.order", 1, CODES_KEYS_SCHEMA, ids=ids, compute=backwards)
    else:
        with session_cache.disabled():
            got = stored_maps.stored_map(store, "test.order", 1, CODES_KEYS_SCHEMA, ids=ids, compute=backwards)
    assert got.column("key").to_pylist() == [f"key of {i}" for i in ids]


def _rss_file_kb() -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("RssFile:"))


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/status"), reason="Linux's /proc")
def test_mapped_pages_touched_leave_rss_when_handed_back(store):
    ids = [f"generation {i:07d} " + "x" * 200 for i in range(40_000)]  # ~10 MB of keys
    stored_maps.stored_rows(store, "test.big", 1, CODES_KEYS_SCHEMA, ids=ids, compute=pieces_of(8192))
    session_cache.clear()
    table, at = stored_maps.stored_rows(store, "test.big", 1, CODES_KEYS_SCHEMA, ids=ids,
                                          compute=pieces_of(8192))
    stored_maps.drop_pages()
    before = _rss_file_kb()
    assert pc.sum(pc.count_substring(table.column("key"), "x")).as_py() == 200 * len(ids)  # every byte read
    touched = _rss_file_kb()
    stored_maps.drop_pages()
    after = _rss_file_kb()
    assert touched - before > 8_000  # KB: the key column's ~9.6 MB of pages were counted
    assert touched - after > 8_000  # and are no longer
