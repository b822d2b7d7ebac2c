"""The one distributed runtime: every command that runs under torchrun uses it.

Training (``Compute``: rank, world, device; gloo on CPU, nccl on GPU, through
torch.distributed's env:// rendezvous, and the run's collectives: ``broadcast_object``,
``gather_objects``, ``barrier``, ``all_sum``, ``all_mean``) and the object collectives of scoring and
generate (``comm_from_env``: ``LocalComm`` for one process, which never imports
torch for communication, else ``TorchComm`` on gloo). ``ttspo score --workers N``
starts N fresh processes itself (never forked: Lance is not fork-safe) that meet
through a file rendezvous in a temporary directory instead of a TCP one.
torch is imported on use: the builder's CLI imports this module's callers
without it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# Ranks wait for the slowest one at all_gather; scoring a large shard can take
# hours, so the collective timeout must not be what ends a healthy run. A dead
# rank is noticed by its launcher (torchrun's agent, or ttspo's parent process).
COLLECTIVE_TIMEOUT = timedelta(hours=12)


def init_group(backend: str, **options: Any) -> None:
    """torch.distributed's default process group, made so that destroy_process_group ends it.

    Why the import first: torch.distributed.nn.functional takes ``group.WORLD`` as its
    functions' default group when it is imported, so imported while a group exists
    (torch._dynamo imports it, and DistributedDataParallel's constructor and NeMo's
    models import torch._dynamo) it holds that group for good. destroy_process_group
    then no longer joins gloo's worker threads. They outlived Python's finalization,
    and rarely (once in ~500 2-rank DPO runs here, once in CI) one of them aborted its
    rank at exit, the run complete: "terminate called without an active exception",
    SIGABRT, and torchrun failed the run. Imported here, before the group, its
    defaults are None (tests/test_dist_cleanup.py)."""
    import torch.distributed as dist
    import torch.distributed.nn.functional  # noqa: F401  (7 ms)

    dist.init_process_group(backend, **options)


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
        init_group("gloo", init_method=init_method, rank=rank, world_size=world,
                   timeout=COLLECTIVE_TIMEOUT)
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


# ------------------------------------------------------------------ training
def _cpu() -> torch.device:
    import torch

    return torch.device("cpu")


@dataclass
class Compute:
    """This process's place in a training run: its rank, the world, its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=_cpu)

    @property
    def ddp(self) -> bool:
        return self.world_size > 1

    @property
    def master(self) -> bool:
        return self.rank == 0


def compute_init(device: str = "auto") -> Compute:
    """One process, or torchrun's (RANK/WORLD_SIZE env): gloo on CPU, nccl on GPU."""
    import torch
    import torch.distributed as dist

    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    world = int(os.environ.get("WORLD_SIZE", "1"))
    c = Compute(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))
    if use_cuda:
        torch.cuda.set_device(c.local_rank)
        c.device = torch.device("cuda", c.local_rank)
    if world > 1 and not dist.is_initialized():
        init_group("nccl" if use_cuda else "gloo")
    return c


def compute_cleanup() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# The collectives of a run, on the process group compute_init made: every rank
# calls them in the same order; in one process (no group) each is the identity.
def _grouped():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def broadcast_object(value: Any) -> Any:
    """Rank 0's VALUE on every rank (pickled)."""
    dist = _grouped()
    if dist is None:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(value: Any) -> list[Any]:
    """Every rank's VALUE, in rank order, on every rank (pickled)."""
    dist = _grouped()
    if dist is None:
        return [value]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def barrier() -> None:
    """Wait until every rank is here."""
    dist = _grouped()
    if dist is not None:
        dist.barrier()


def all_sum(values: torch.Tensor) -> torch.Tensor:
    """The sum over ranks of a tensor (a copy; itself in one process)."""
    dist = _grouped()
    if dist is None:
        return values
    values = values.clone()
    dist.all_reduce(values)
    return values


def all_mean(values: torch.Tensor, c: Compute) -> torch.Tensor:
    """The mean over ranks of a float tensor (itself in one process)."""
    if c.ddp:
        import torch.distributed as dist

        values = values.clone()
        dist.all_reduce(values)
        values /= c.world_size
    return values
