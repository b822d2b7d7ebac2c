"""Generations' rows by Lance row id, for the DPO loaders: :class:`CodesReader` takes a
micro-batch's rows (text, context text, codes) at the set's generations version,
:func:`code_arrays` turns a codes column into int64 arrays [C, T] from its flat values,
:func:`eos_drawn` says whether each sample drew EOS (``data.eos_target=sampled``).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ttspo.builder.core.errors import InputError
from ttspo.builder.core.lance_rows import take_rows
from ttspo.builder.core.schemas import GEN
from ttspo.builder.core.store import Store
from ttspo.trainer.policy.base import EOS_DRAWN

ROW_KEYS = (GEN.generation_id, GEN.text, GEN.context_text)  # what a policy's collate reads
EOS_COLUMNS = (GEN.codes_len, GEN.max_steps)  # data.eos_target=sampled reads them


def eos_drawn(table: pa.Table) -> list[bool]:
    """Whether each generation of TABLE (EOS_COLUMNS) drew EOS: False when it ran to its
    max_steps (the sampler's length without EOS). Unknown (ingested without max_steps or
    codes_len): True, the target NeMo gives every sample."""
    return [n is None or m is None or n < m for n, m in
            zip(table.column(GEN.codes_len).to_pylist(), table.column(GEN.max_steps).to_pylist())]


# Streaming: the chosen's and the rejected's rows as read by row id, each
# {generation_id, text, context_text, codes [C, T]} (contexts are added by Pairs.rows)
PairCodes = tuple[list[dict[str, Any]], list[dict[str, Any]]]


class CodesReader:
    """Codes of generations@VERSION by Lance row id. Picklable (a store path and a
    version): a spawned worker opens its own dataset (Lance is not fork-safe)."""

    def __init__(self, store: Store, version: int, ref: str, *, eos_target: str = "always"):
        self.store, self.version, self.ref = store, version, ref
        self.eos_target = eos_target  # "sampled": rows say whether they drew EOS
        self._ds = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_ds": None}

    def take(self, rowids: Sequence[int]) -> list[np.ndarray]:
        """Int codes [C, T] of the rows ROWIDS, in that order."""
        if self._ds is None:
            self._ds = self.store.open("generations", self.version)
        taken = take_rows(self._ds, rowids, [GEN.generation_id, GEN.codes])
        return [self._check(gid, frames) for gid, frames in
                zip(taken.column(GEN.generation_id).to_pylist(), code_arrays(taken.column(GEN.codes)))]

    def _check(self, gid: str, frames: np.ndarray | None) -> np.ndarray:
        if frames is None:
            raise InputError(f"{self.ref}: generation {gid} has no codes in generations@"
                             f"{self.version} (ingest it with its *_codes.pt file, or generate "
                             "it with ttspo)")
        return frames

    def rows(self, rowids: Sequence[int]) -> list[dict[str, Any]]:
        """The policy rows (ROW_KEYS + codes) of the rows ROWIDS, in that order."""
        if self._ds is None:
            self._ds = self.store.open("generations", self.version)
        sampled = self.eos_target == "sampled"
        table = take_rows(self._ds, rowids, [*ROW_KEYS, GEN.codes, *(EOS_COLUMNS if sampled else ())])
        taken, codes = table.select(list(ROW_KEYS)).to_pydict(), code_arrays(table.column(GEN.codes))
        rows = [{**{k: taken[k][i] for k in ROW_KEYS},
                 GEN.codes: self._check(taken[GEN.generation_id][i], codes[i])}
                for i in range(len(codes))]
        if sampled:
            for row, drawn in zip(rows, eos_drawn(table)):
                row[EOS_DRAWN] = drawn
        return rows

    def by_id(self, ids: dict[str, int]) -> dict[str, np.ndarray]:
        """generation_id -> codes, for IDS (generation_id -> row id)."""
        return dict(zip(ids, self.take(list(ids.values()))))

    def pair_codes(self, chosen: np.ndarray, rejected: np.ndarray) -> PairCodes:
        rows = self.rows(np.concatenate([chosen, rejected]).tolist())
        return rows[:len(chosen)], rows[len(chosen):]


def code_arrays(column: pa.ChunkedArray) -> list[np.ndarray | None]:
    """Each row's codes (``[C][T]`` int lists) as an int64 array [C, T], None where it
    has none (null, no codebook, or an empty first codebook). Sliced from the column's
    flat values: no Python list per frame (the in-memory loader reads every codes
    array of a set this way)."""
    col = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    books = pc.fill_null(pc.list_value_length(col), 0).to_numpy().astype(np.int64)
    inner = col.flatten()  # every row's codebooks, in row order (null rows hold none)
    frames = pc.fill_null(pc.list_value_length(inner), 0).to_numpy().astype(np.int64)
    values = inner.flatten().to_numpy(zero_copy_only=False)
    book_at = np.concatenate([[0], np.cumsum(books)])
    value_at = np.concatenate([[0], np.cumsum(frames)])
    out: list[np.ndarray | None] = []
    for i, c in enumerate(books.tolist()):
        first = book_at[i]
        t = frames[first] if c else 0
        if not t:
            out.append(None)
        elif (frames[first:first + c] == t).all():
            start = value_at[first]
            out.append(values[start:start + c * t].reshape(c, t).astype(np.int64))
        else:  # ragged codebooks: as numpy makes of them (its error)
            out.append(np.asarray(col[i].as_py(), dtype=np.int64))
    return out
