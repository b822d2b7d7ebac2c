"""The micro-batches of a DPO run, step by step: held in memory or read ahead.

:func:`step_batches` yields, for each optimizer step from START to STOP, RANK's
``grad_accum`` micro-batches as (pair indices, codes). The indices are
:class:`~ttspo.trainer.dpo.data.PairOrder`'s, whatever the loader, so both loaders give
the same batches in the same order. With ``data.loader=memory`` the codes are None
(the pairs hold them). With ``stream``, a torch DataLoader of ``data.workers``
processes reads the codes from Lance by row id (trainer/dpo/codes_reader.py:
CodesReader), ``data.read_batches`` micro-batches a read (one take, one message), and
holds ``data.prefetch_batches`` reads ready, so the step does not wait on data and at
most workers x prefetch_batches x read_batches micro-batches of codes are in memory,
whatever the set's size. Workers are SPAWNED (Lance is not fork-safe) and read only
this rank's share.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import torch

from ttspo.trainer.dpo.codes_reader import PairCodes
from ttspo.trainer.dpo.data import PairOrder, Pairs

MicroBatch = tuple[np.ndarray, "PairCodes | None"]


class RankCodes(torch.utils.data.Dataset):
    """Item i: RANK's micro-batches i*READ .. (i+1)*READ-1 of steps START..STOP-1 (micro-batch
    k is step START + k // grad_accum, its k % grad_accum-th) with their codes, read in ONE
    take and sent as one message: a message costs about the same whatever its size (~1 ms
    on a 2-core machine), so one per micro-batch slowed a tiny step by ~25%."""

    def __init__(self, pairs: Pairs, order: PairOrder, rank: int, *, start: int, stop: int, read: int):
        self.pairs, self.order, self.rank = pairs, order, rank
        self.start, self.count, self.read = start, (stop - start) * order.grad_accum, read

    def __len__(self) -> int:
        return -(-self.count // self.read)

    def __getitem__(self, i: int) -> list[MicroBatch]:
        steps: dict[int, list[np.ndarray]] = {}  # a step's micro-batches, drawn once a read
        index = []
        for k in range(i * self.read, min(self.count, (i + 1) * self.read)):
            step, a = divmod(k, self.order.grad_accum)
            if step not in steps:
                steps[step] = self.order.micro_batches(self.start + step, self.rank)
            index.append(steps[step][a])
        chosen, rejected = self.pairs.read_codes(np.concatenate(index))
        out, at = [], 0
        for idx in index:
            out.append((idx, (chosen[at:at + len(idx)], rejected[at:at + len(idx)])))
            at += len(idx)
        return out

    def __getstate__(self) -> dict[str, Any]:
        # A worker needs the order and the row ids (8 bytes a side), not the rows.
        p = self.pairs
        lean = Pairs(set_name=p.set_name, set_version=p.set_version,
                     generations_version=p.generations_version, prompts_version=p.prompts_version,
                     pair_ids=[], split=[], chosen=[], rejected=[], chosen_reward=np.empty(0),
                     rejected_reward=np.empty(0), codes=p.codes, chosen_rowid=p.chosen_rowid,
                     rejected_rowid=p.rejected_rowid)
        return {**self.__dict__, "pairs": lean}


def _as_is(item: list[MicroBatch]) -> list[MicroBatch]:  # no tensor conversion: the step collates
    return item


def _one_thread(_: int) -> None:  # a reader needs no intra-op threads of its own
    torch.set_num_threads(1)


def step_batches(pairs: Pairs, order: PairOrder, rank: int, *, start: int, stop: int,
                 data: Any) -> Iterator[list[MicroBatch]]:
    """RANK's micro-batches of each step START..STOP-1 (DATA: the config's data section)."""
    if data.loader != "stream":
        for step in range(start, stop):
            yield [(idx, None) for idx in order.micro_batches(step, rank)]
        return
    workers = data.workers
    loader = torch.utils.data.DataLoader(
        RankCodes(pairs, order, rank, start=start, stop=stop, read=data.read_batches), batch_size=None, num_workers=workers,
        collate_fn=_as_is, worker_init_fn=_one_thread if workers else None,
        multiprocessing_context="spawn" if workers else None,
        prefetch_factor=data.prefetch_batches if workers else None,
        # its own generator: the loader's seed draw must not move the global torch RNG
        # (dropout), or streamed and in-memory runs would differ
        generator=torch.Generator())
    micro = (batch for read in loader for batch in read)
    try:
        for _ in range(start, stop):
            yield [next(micro) for _ in range(order.grad_accum)]
    finally:
        micro.close()  # shuts the workers down
