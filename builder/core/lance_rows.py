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
import pyarrow as pa

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
