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
        if len(ids) == 0 or len(self.keys) == 0:
            return np.full(len(ids), -1, dtype=np.int64)
        ids = ids.cast(self.keys.type) if ids.type != self.keys.type else ids
        at = pc.search_sorted(self.keys, ids, side=self.side)
        at = pc.fill_null(at, 0).to_numpy().astype(np.int64) - (self.side == "right")
        at = np.clip(at, 0, len(self.keys) - 1)
        same = pc.fill_null(pc.equal(self.keys.take(pa.array(at)), ids), False)
        same = same.to_numpy(zero_copy_only=False)
        return np.where(same, self.rows[at], -1)
