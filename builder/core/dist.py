"""The few collective steps of a scoring run, for one process or many.

``torchrun --nproc-per-node N -m ttspo.builder.scoring.run`` and ``ttspo score --workers N``
run the same entry point: the first through torch.distributed's env://
rendezvous, the second (N fresh ``python -m ttspo.builder.scoring.run`` processes, never
forked: Lance is not fork-safe) through a file rendezvous in a temporary
directory; both on the gloo backend (CPU). A single process uses
:class:`LocalComm` and never imports torch for communication.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

# Ranks wait for the slowest one at all_gather; scoring a large shard can take
# hours, so the collective timeout must not be what ends a healthy run. A dead
# rank is noticed by its launcher (torchrun's agent, or ttspo's parent process).
COLLECTIVE_TIMEOUT = timedelta(hours=12)


class LocalComm:
    """World of one: every collective is the identity."""

    rank = 0
    world = 1

    def broadcast(self, obj: Any) -> Any:
        return obj

    def all_gather(self, obj: Any) -> list[Any]:
        return [obj]

    def gather(self, obj: Any) -> list[Any] | None:
        return [obj]

    def close(self) -> None:
        pass


class TorchComm:
    """torch.distributed over gloo; objects travel pickled."""

    def __init__(self, rank: int, world: int, init_method: str) -> None:
        import torch.distributed as dist

        self._dist = dist
        dist.init_process_group("gloo", init_method=init_method, rank=rank,
                                world_size=world, timeout=COLLECTIVE_TIMEOUT)
        self.rank, self.world = rank, world

    def broadcast(self, obj: Any) -> Any:
        box = [obj if self.rank == 0 else None]
        self._dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.world
        self._dist.all_gather_object(out, obj)
        return out

    def gather(self, obj: Any) -> list[Any] | None:
        out: list[Any] | None = [None] * self.world if self.rank == 0 else None
        self._dist.gather_object(obj, out, dst=0)
        return out

    def close(self) -> None:
        if self._dist.is_initialized():
            self._dist.destroy_process_group()


def comm_from_env():
    """The communicator of this process: torchrun's env:// rendezvous (RANK,
    WORLD_SIZE, MASTER_ADDR/PORT), or the file rendezvous of ``--workers``
    (TTSPO_RENDEZVOUS_FILE), which needs no free port."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return LocalComm()
    rendezvous = os.environ.get("TTSPO_RENDEZVOUS_FILE")
    init = f"file://{rendezvous}" if rendezvous else "env://"
    return TorchComm(int(os.environ["RANK"]), world, init)


def share_cores(world: int, large_models: bool) -> int:
    """Set the torch intra-op threads of this rank.

    Large models (NeMo, Whisper) get their share of the cores. The offline
    defaults get one thread: pocketsphinx is single-threaded, Resemblyzer's small
    LSTM gains little from a second thread, and OpenMP threads spinning between
    its calls steal the core pocketsphinx needs (badly so on a busy machine).
    Parallelism comes from ranks instead (``--workers``, torchrun), which scale.
    Returns the previous setting, to restore when scoring ran inside a caller's
    process.
    """
    import torch

    previous = torch.get_num_threads()
    cores = os.cpu_count() or 1
    torch.set_num_threads(max(1, cores // world) if large_models else 1)
    return previous
