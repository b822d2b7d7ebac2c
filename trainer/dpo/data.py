"""Preference pairs from the store, in the order and shard a training step needs.

:func:`load_pairs` reads a set ``NAME[@VERSION|@TAG]`` (the latest if omitted) and
joins each pair's chosen and rejected generations AT THE GENERATIONS VERSION THE
SET WAS BUILT FROM (its build record names it), so later scoring or ingest never
changes what a set version trains on. Text and context come through the same
join the exports use; codes are read from Lance by row id (the SQL views leave
them out): all of them as the set loads (``stream=False``, the in-memory loader),
or a batch at a time when a step needs them (``stream=True``: the pairs hold each
generation's row id, 8 bytes, and :meth:`Pairs.rows` reads the codes of the pairs
asked for, through trainer/dpo/codes_reader.py; trainer/dpo/stream.py prefetches
them in worker processes). A streamed load finds the row ids by reading the
version's id column in batches against the set's own ids, sorted: its peak memory
grows with the set, not with the generations version. Context
codes are resolved once per prompt by trainer/dpo/contexts.py's rule, which `generate`
and GRPO share (a codes file, else none for a text context, else one encode per
context file content).

:class:`PairOrder` deals pairs to ranks: each epoch is a permutation seeded by
(seed, epoch); an optimizer step takes ``world * pairs_per_device * grad_accum``
consecutive pairs of it (the tail that does not fill a step is left for that
epoch), rank r micro-step a taking its own slice. So every pair is seen at most
once per epoch across ranks, and the data position is a pure function of the
step: a resumed run continues exactly where it stopped.

trainer/dpo/forward.py's ``collate_pairs`` puts the B chosen rows first and the B
rejected rows after in ONE batch (and runs it and splits the log-probs). Rows k
and k + B share a dropout group (``trainer.policy.DROPOUT_GROUP``), so
conditioning dropout treats a pair as one.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ttspo.builder.core import heap
from ttspo.builder.core.errors import InputError
from ttspo.builder.core.lance_rows import RowsOfIds, take_rows
from ttspo.builder.core.schemas import GEN, PAIR
from ttspo.builder.core.store import Store
from ttspo.builder.sets.build import open_set
from ttspo.builder.sets.export import generation_rows
from ttspo.trainer.dpo.codes_reader import EOS_COLUMNS, ROW_KEYS, CodesReader, PairCodes, eos_drawn
from ttspo.trainer.dpo.contexts import context_codes, prompt_contexts
from ttspo.trainer.policy.base import CONTEXT_CODES, EOS_DRAWN

PAIR_COLUMNS = (PAIR.pair_id, PAIR.prompt_id, PAIR.chosen_id, PAIR.rejected_id,
                PAIR.chosen_reward, PAIR.rejected_reward, PAIR.split)
PAIR_BATCH = 65536  # pair rows a streamed load reads at once


class PairIds:
    """The pairs' ids, read like a list of str, held as ONE Arrow string array: 4 bytes
    of offset plus the id's characters a pair, no Python string per pair. An int index
    gives a str; a slice or an index array gives PairIds; ``pa.array(ids)`` is the array."""

    def __init__(self, ids: pa.Array | pa.ChunkedArray):
        self.ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, (int, np.integer)):
            return self.ids[int(key)].as_py()
        if isinstance(key, slice):
            return PairIds(self.ids[key])
        return PairIds(self.ids.take(pa.array(np.asarray(key, dtype=np.int64), pa.int64())))

    def __iter__(self):
        return iter(self.ids.to_pylist())

    def __arrow_array__(self, type: Any = None) -> pa.Array:
        return self.ids if type is None else self.ids.cast(type)

    def tolist(self) -> list[str]:
        return self.ids.to_pylist()


@dataclass(kw_only=True)
class Pairs:
    """A set version's pairs, with everything a policy needs to collate them."""

    set_name: str
    set_version: int
    generations_version: int
    prompts_version: int | None
    pair_ids: PairIds | list[str]
    split: list[str]  # "train" | "val" (two shared strings: 8 bytes a pair)
    # In memory: policy rows (text, context_text, context_codes, codes); streamed: empty
    chosen: list[dict[str, Any]]
    rejected: list[dict[str, Any]]
    chosen_reward: np.ndarray
    rejected_reward: np.ndarray
    # Streaming: each side's generations row id, and where to read its row (text,
    # context text, codes) by them (None: the rows above hold everything, in memory);
    # each pair's prompt as an index into CONTEXTS, the prompts' context codes.
    codes: "CodesReader | None" = None
    chosen_rowid: np.ndarray | None = None
    rejected_rowid: np.ndarray | None = None
    prompt_index: np.ndarray | None = None
    contexts: list[np.ndarray | None] | None = None

    def __len__(self) -> int:
        return len(self.pair_ids)

    @property
    def ref(self) -> str:
        return f"{self.set_name}@{self.set_version}"

    def select(self, split: str) -> "Pairs":
        """The pairs of one split ("train" | "val"), in shuffle-position order."""
        keep = np.flatnonzero([s == split for s in self.split])
        pick = lambda xs: [xs[i] for i in keep] if xs else []
        ids = lambda a: None if a is None else a[keep]
        return Pairs(set_name=self.set_name, set_version=self.set_version,
                     generations_version=self.generations_version,
                     prompts_version=self.prompts_version,
                     pair_ids=self.pair_ids[keep] if isinstance(self.pair_ids, PairIds)
                     else pick(self.pair_ids),
                     split=pick(self.split), chosen=pick(self.chosen), rejected=pick(self.rejected),
                     chosen_reward=self.chosen_reward[keep],
                     rejected_reward=self.rejected_reward[keep], codes=self.codes,
                     chosen_rowid=ids(self.chosen_rowid), rejected_rowid=ids(self.rejected_rowid),
                     prompt_index=ids(self.prompt_index), contexts=self.contexts)

    def rows(self, index: Sequence[int], codes: "PairCodes | None" = None
             ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The chosen and rejected policy rows of the pairs INDEX, with their codes:
        held (in memory), given (CODES: the rows a worker read ahead), or read now by
        row id; streamed rows get their prompt's context codes here."""
        if self.codes is None:
            return [self.chosen[i] for i in index], [self.rejected[i] for i in index]
        if codes is None:
            codes = self.read_codes(index)
        context = lambda rows: [{**r, CONTEXT_CODES: self.contexts[self.prompt_index[i]]}
                                for i, r in zip(index, rows)]
        return context(codes[0]), context(codes[1])

    def read_codes(self, index: Sequence[int]) -> "PairCodes":
        """The rows (id, text, context text, codes) of the pairs INDEX (streaming): one
        take of 2B rows by row id."""
        index = np.asarray(index, dtype=np.int64)
        return self.codes.pair_codes(self.chosen_rowid[index], self.rejected_rowid[index])

    def lineage_inputs(self) -> dict[str, int]:
        inputs = {self.set_name: self.set_version, "generations": self.generations_version}
        if self.prompts_version is not None:
            inputs["prompts"] = self.prompts_version
        return inputs


def load_pairs(store: Store, ref: str, *, encode: Callable[[np.ndarray, int], Any] | None = None,
               stream: bool = False, eos_target: str = "always") -> Pairs:
    """The pairs of set REF. ENCODE(audio, sr) -> codes [C, T] makes context codes
    for prompts without a codes file (the policy's ``codec.encode``). STREAM: hold
    row ids, not rows (a generation without codes is then found when its batch is read).
    EOS_TARGET (``data.eos_target``) "sampled": each row says whether its sample drew EOS
    (``eos_drawn``: codes_len below the max_steps it was generated with)."""
    sv = open_set(store, ref)
    if stream:
        return streamed_pairs(store, sv, encode, eos_target=eos_target)
    pairs = sv.rows(list(PAIR_COLUMNS))
    gens = generation_rows(store, sv, pairs)
    gen_version = sv.record.inputs["generations"]
    contexts = context_codes(gens, encode)
    rows = {g: {**{k: r[k] for k in ROW_KEYS}, CONTEXT_CODES: contexts[r[GEN.prompt_id]]}
            for g, r in gens.items()}
    p = pairs.to_pydict()
    out = Pairs(set_name=sv.name, set_version=sv.version, generations_version=gen_version,
                prompts_version=sv.record.prompts_version,
                pair_ids=PairIds(pairs.column(PAIR.pair_id)),
                split=[sys.intern(s) for s in p[PAIR.split]],
                chosen=[rows[g] for g in p[PAIR.chosen_id]],
                rejected=[rows[g] for g in p[PAIR.rejected_id]],
                chosen_reward=np.asarray(p[PAIR.chosen_reward], dtype=np.float64),
                rejected_reward=np.asarray(p[PAIR.rejected_reward], dtype=np.float64))
    ids = generation_row_ids(store, gen_version, sorted(gens))
    if eos_target == "sampled":
        taken = take_rows(store.open("generations", gen_version), list(ids.values()),
                          [GEN.generation_id, *EOS_COLUMNS])
        for g, drawn in zip(taken.column(GEN.generation_id).to_pylist(), eos_drawn(taken)):
            rows[g][EOS_DRAWN] = drawn
    codes = CodesReader(store, gen_version, sv.ref).by_id(ids)
    for row in rows.values():  # chosen/rejected share these dicts: one array per generation
        row[GEN.codes] = codes[row[GEN.generation_id]]
    return out


def streamed_pairs(store: Store, sv: Any, encode: Callable | None, *,
                   eos_target: str = "always", batch_rows: int = PAIR_BATCH) -> Pairs:
    """The pairs of set SV as arrays (streaming): each side's generations row id,
    rewards, each pair's prompt index, and each prompt's context codes; Arrow columns
    throughout, no Python object per pair or per generation. The set's pair columns
    are read one at a time, BATCH_ROWS rows a batch, each turned into what the pairs
    keep before the next is read; the row ids are found by :func:`generation_rowids`
    (the set's ids sorted, the generations' id column read by batch). So the load's
    peak is its largest stage over what the pairs keep, whatever the size of the
    generations version. Texts and codes are read with the batch (:meth:`Pairs.read_codes`)."""
    gen_version = sv.record.inputs["generations"]
    ds = store.open("generations", gen_version)

    def column(name: str) -> pa.ChunkedArray:  # one at a time: all seven at once peaked higher
        return pa.chunked_array([b.column(0) for b in sv.dataset.to_batches(
            columns=[name], batch_size=batch_rows)], sv.dataset.schema.field(name).type)

    chosen, rejected = generation_rowids(ds, [column(PAIR.chosen_id).chunks,
                                              column(PAIR.rejected_id).chunks],
                                         what=f"{sv.ref}: generation")
    heap.trim()  # the next stage starts from what this one freed (builder/core/heap.py)
    prompts, prompt_index, first_pair = first_seen(column(PAIR.prompt_id))
    heap.trim()
    contexts = prompt_contexts(store, sv, ds, prompts=prompts, first_pair=first_pair,
                               chosen_rowid=chosen, encode=encode)
    heap.trim()
    reward = lambda name: column(name).to_numpy().astype(np.float64, copy=False)
    return Pairs(set_name=sv.name, set_version=sv.version, generations_version=gen_version,
                 prompts_version=sv.record.prompts_version,
                 pair_ids=PairIds(column(PAIR.pair_id)),
                 split=[sys.intern(s) for a in column(PAIR.split).chunks for s in a.to_pylist()],
                 chosen=[], rejected=[], chosen_reward=reward(PAIR.chosen_reward),
                 rejected_reward=reward(PAIR.rejected_reward),
                 codes=CodesReader(store, gen_version, sv.ref, eos_target=eos_target),
                 chosen_rowid=chosen, rejected_rowid=rejected,
                 prompt_index=prompt_index, contexts=contexts)


def first_seen(ids: pa.ChunkedArray) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """(IDS's distinct values in first-seen order, each of IDS's index in them as int32,
    each distinct value's first row): ``pc.unique`` + ``index_in`` by a stable sort
    instead of a hash table (about 40 bytes an id while it runs, a hash table of 200k
    prompt ids took ~35 MB)."""
    n = len(ids)
    if not n:
        return pa.array([], ids.type), np.empty(0, np.int32), np.empty(0, np.int64)
    order = pc.sort_indices(ids).to_numpy()  # stable: equal ids keep their row order
    ranked = ids.take(order)
    ranked = ranked.chunk(0) if ranked.num_chunks == 1 else ranked.combine_chunks()
    new = np.ones(n, bool)  # where a sorted run of equal ids starts
    new[1:] = pc.fill_null(pc.not_equal(ranked.slice(1), ranked.slice(0, n - 1)), True
                           ).to_numpy(zero_copy_only=False)
    del ranked
    first = order[new].astype(np.int64)  # each distinct id's first row, in sorted order
    seen = np.argsort(first, kind="stable")  # the distinct ids in first-seen order
    rank = np.empty(len(first), np.int32)
    rank[seen] = np.arange(len(first), dtype=np.int32)
    run = np.cumsum(new, dtype=np.int32)  # each sorted row's distinct id, 1-based
    run -= 1
    index = np.empty(n, np.int32)
    index[order] = rank[run]
    first = first[seen]
    return ids.take(first).combine_chunks(), index, first


def generation_rowids(ds: Any, sides: list[list[pa.Array]], what: str) -> list[np.ndarray]:
    """The Lance row ids (int64) in DS (a generations version) of each side's generation
    ids (SIDES: each a list of arrays, one id per pair; the lists are emptied, so
    the ids are freed once sorted), by one read of the version's id column in batches
    (:class:`RowsOfIds`: the sides' distinct ids sorted, not every id of the version).
    An id not there: an InputError naming WHAT and the first such id in pair order
    (a pair's first side first)."""
    num = sum(len(a) for a in sides[0])
    wanted = RowsOfIds([a for side in sides for a in side])
    for side in sides:
        side.clear()
    found = wanted.read(ds, GEN.generation_id)
    out = [found[k * num:(k + 1) * num] for k in range(len(sides))]
    if (found < 0).any():
        pair = int(np.flatnonzero(np.logical_or.reduce([rows < 0 for rows in out]))[0])
        k = next(k for k, rows in enumerate(out) if rows[pair] < 0)
        raise InputError(f"{what} {wanted.id(k * num + pair)} is not in generations@{ds.version}")
    return out


def generation_row_ids(store: Store, version: int, ids: Sequence[str]) -> dict[str, int]:
    """generation_id -> its Lance row id at generations@VERSION, for the IDS asked (all
    there: the set's build checked them)."""
    found = RowsOfIds([pa.array(list(ids), pa.string())]).read(
        store.open("generations", version), GEN.generation_id)
    return {g: int(r) for g, r in zip(ids, found) if r >= 0}


# ------------------------------------------------------------------- order
@dataclass(frozen=True, kw_only=True)
class PairOrder:
    """Which pairs each rank takes at each optimizer step (see the module docstring)."""

    num_pairs: int
    pairs_per_device: int
    world_size: int = 1
    grad_accum: int = 1
    seed: int = 0

    @property
    def pairs_per_step(self) -> int:
        return self.pairs_per_device * self.world_size * self.grad_accum

    @property
    def steps_per_epoch(self) -> int:
        return self.num_pairs // self.pairs_per_step

    def check(self, ref: str) -> None:
        if self.steps_per_epoch < 1:
            raise InputError(f"{ref}: {self.num_pairs} training pairs, fewer than one step's "
                             f"{self.pairs_per_step} (pairs_per_device x processes x grad_accum)")

    def permutation(self, epoch: int) -> np.ndarray:
        """Epoch EPOCH's order of the pairs (read-only: shared by every micro-batch)."""
        return _permutation(self.seed, epoch, self.num_pairs)

    def position(self, step: int) -> dict[str, int]:
        """Where optimizer step STEP (0-based) starts: epoch and offset in its permutation."""
        epoch, k = divmod(step, self.steps_per_epoch)
        return {"epoch": epoch, "offset": k * self.pairs_per_step, "step": step}

    def micro_batches(self, step: int, rank: int) -> list[np.ndarray]:
        """Pair indices of RANK's grad_accum micro-batches for optimizer step STEP."""
        pos = self.position(step)
        perm = self.permutation(pos["epoch"])
        b, w = self.pairs_per_device, self.world_size
        starts = [pos["offset"] + (a * w + rank) * b for a in range(self.grad_accum)]
        return [perm[s:s + b] for s in starts]


@functools.lru_cache(maxsize=2)  # this epoch's and the next's: drawn once, not per micro-batch
def _permutation(seed: int, epoch: int, num_pairs: int) -> np.ndarray:
    perm = np.random.default_rng([seed, epoch]).permutation(num_pairs)
    perm.setflags(write=False)
    return perm


def shard(num: int, rank: int, world_size: int) -> np.ndarray:
    """Indices RANK evaluates (validation, precompute): every index once across ranks."""
    return np.arange(rank, num, world_size)

