"""Rows of a Lance dataset by row id: the ONE place that calls Lance's private API.

pylance 14 has no public take by row id (``LanceDataset.take`` takes offsets, which
shift as fragments change; a row id (fragment << 32 | offset) names one row of one
version for good). ``_take_rows`` is private, so every caller goes through
:func:`take_rows`: when a later pylance renames or publishes it, this module is
the only change (tests/test_dpo_stream.py pins its behaviour).
"""

from __future__ import annotations

from typing import Sequence

import lance
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

ROW_ID = "_rowid"  # the column with_row_id=True adds to a scan


def take_rows(ds: lance.LanceDataset, row_ids: Sequence[int], columns: Sequence[str]) -> pa.Table:
    """COLUMNS of the rows ROW_IDS of DS, in the order given (repeats allowed)."""
    ids = [int(r) for r in row_ids]
    if not ids:
        return ds.schema.empty_table().select(list(columns))
    return ds._take_rows(ids, columns=list(columns))


def row_ids(ds: lance.LanceDataset, column: str) -> pa.Table:
    """COLUMN of every row of DS with its row id (column ROW_ID)."""
    return ds.to_table(columns=[column], with_row_id=True)


class SortedIds:
    """Where each of some string ids is among KEYS (an id column), without a hash table
    or a Python dict of them: KEYS sorted once (Arrow's stable sort: its ids' bytes,
    one int per row for what each carries), then a binary search per id asked
    (``search_sorted``). ``first``: a repeated key is found at its first row (as
    ``index_in`` finds it), else at its last (as a dict built in row order keeps it)."""

    def __init__(self, keys: pa.Array | pa.ChunkedArray, rows: np.ndarray, *, first: bool = True):
        order = pc.sort_indices(keys)
        self.keys = keys.take(order)
        self.keys = self.keys.combine_chunks() if isinstance(self.keys, pa.ChunkedArray) else self.keys
        self.rows = np.asarray(rows)[order.to_numpy()]
        self.side = "left" if first else "right"

    def find(self, ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Each of IDS's row (from ROWS), -1 where it is not a key (or null)."""
        at = self.places(ids)
        return np.where(at >= 0, self.rows[at], -1) if len(self.rows) else at

    def places(self, ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Each of IDS's place among the sorted keys, -1 where it is not a key (or null)."""
        if len(ids) == 0 or len(self.keys) == 0:
            return np.full(len(ids), -1, dtype=np.int64)
        ids = ids.cast(self.keys.type) if ids.type != self.keys.type else ids
        at = pc.search_sorted(self.keys, ids, side=self.side)
        at = pc.fill_null(at, 0).to_numpy().astype(np.int64) - (self.side == "right")
        at = np.clip(at, 0, len(self.keys) - 1)
        same = pc.fill_null(pc.equal(self.keys.take(pa.array(at)), ids), False)
        return np.where(same.to_numpy(zero_copy_only=False), at, -1)


ID_BATCH = 8192  # rows of an id column :class:`RowsOfIds` reads at once


class RowsOfIds(SortedIds):
    """Where each of some ids is in an id column of a Lance dataset, without reading
    the whole column or indexing every value of it: the ids' distinct values sorted
    (the keys, ``find`` gives a value's place among them) and each id's place (``slot``),
    then :meth:`read` searches the column among them BATCH_ROWS rows at a time. What
    this holds is the ids' sort plus one batch, whatever the size of the dataset."""

    def __init__(self, ids: list[pa.Array]):
        """IDS: arrays of ids, one after the other; the list is emptied once they are
        sorted (with the caller's last reference to them, they are freed before the
        column is read)."""
        whole = pa.chunked_array(ids, ids[0].type if ids else pa.string())
        n, whole_nulls = len(whole), whole.null_count
        order = pc.sort_indices(whole).to_numpy()  # nulls last
        ranked = whole.take(pa.array(order))
        ranked = ranked.chunk(0) if ranked.num_chunks == 1 else ranked.combine_chunks()
        ids.clear()
        del whole
        new = pc.is_valid(ranked).to_numpy(zero_copy_only=False)  # a run of equal ids starts
        if n > 1:
            new[1:] &= pc.fill_null(pc.not_equal(ranked.slice(1), ranked.slice(0, n - 1)),
                                    True).to_numpy(zero_copy_only=False)
        self.keys = ranked if new.all() else ranked.filter(pa.array(new))
        del ranked
        self.rows, self.side = np.empty(0, np.int64), "left"  # places, not rows
        place = np.cumsum(new, dtype=np.int32)
        place -= 1
        place[n - whole_nulls:] = len(self.keys)  # null ids (sorted last): a slot never found
        self.slot = np.empty(n, np.int32)
        self.slot[order] = place

    def read(self, ds: lance.LanceDataset, column: str, *, batch_rows: int = ID_BATCH
             ) -> np.ndarray:
        """Each id's row id among COLUMN's values in DS (int64; -1 where it is none of
        them, or null; a repeated value: its first row in scan order, as ``index_in``
        finds it)."""
        found = np.full(len(self.keys) + 1, -1, dtype=np.int64)  # the last: null ids
        for batch in ds.to_batches(columns=[column], with_row_id=True, batch_size=batch_rows,
                                   scan_in_order=True):
            at = self.places(batch.column(column))
            hit = np.flatnonzero(at >= 0)
            key, first = np.unique(at[hit], return_index=True)  # a batch's first row per value
            new = found[key] < 0  # an earlier batch's row comes first
            found[key[new]] = batch.column(ROW_ID).to_numpy()[hit[first[new]]]
        return found[self.slot]

    def id(self, i: int) -> str | None:
        """The I-th id asked."""
        slot = int(self.slot[i])
        return self.keys[slot].as_py() if slot < len(self.keys) else None


def rows_matching(ds: lance.LanceDataset, where: str, rows: np.ndarray, *,
                  batch_rows: int = ID_BATCH) -> np.ndarray:
    """Whether each of ROWS (row ids of DS; -1: none) is a row the Lance filter WHERE
    keeps: one filtered scan of row ids, in batches, not a take of every row (what this
    holds is ROWS sorted plus a batch)."""
    distinct, slot = np.unique(np.asarray(rows, dtype=np.int64), return_inverse=True)
    kept = np.zeros(len(distinct) + 1, bool)  # the last: never kept (past every row id)
    for batch in ds.to_batches(columns=[], filter=where, with_row_id=True, batch_size=batch_rows):
        ids = batch.column(ROW_ID).to_numpy().astype(np.int64)
        at = np.searchsorted(distinct, ids)
        found = distinct[np.minimum(at, len(distinct) - 1)] == ids if len(distinct) else at < 0
        kept[at[found]] = True
    return kept[slot.reshape(-1)]
