"""glibc's heap, handed back: the ONE place that calls the C library's allocator.

Lance reads on its own threads and Python and Arrow free many small blocks; glibc
keeps freed memory in its heaps (one arena per thread) and serves later blocks from
it only sometimes, so a reader working in stages or pieces saw RSS grow by each
stage's transients instead of peaking at the largest (bench/RESULTS.md: the export's
stored maps, the streamed DPO load). Everything here is a no-op where the C library
is not glibc (no ``mallopt``/``malloc_trim``).
"""

from __future__ import annotations

import ctypes
import functools
from contextlib import contextmanager
from typing import Iterator

import pyarrow as pa

M_MMAP_THRESHOLD = -3  # glibc's malloc.h


@functools.cache
def _glibc():
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def trim() -> None:
    """Hand the free pages inside glibc's heaps (``malloc_trim``) and Arrow's default
    pool (``release_unused``) back to the kernel."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
    pa.default_memory_pool().release_unused()


@contextmanager
def steady_heap() -> Iterator[None]:
    """Inside, glibc's malloc gives every block of 128 KiB or more its own mapping,
    handed back to the kernel when freed. Why: by default glibc raises that threshold
    to the size of each large block freed and serves later blocks up to it from its
    heaps, which keep the memory: computing an export's stored maps a piece at a time
    left RSS growing with the pieces. After, the threshold is glibc's highest dynamic
    one (32 MiB), for the rest of the process (glibc cannot go back to adjusting it):
    large blocks are reused again (a fresh mapping per block costs its page faults on
    every use)."""
    libc = _glibc()
    if libc is not None:
        libc.mallopt(M_MMAP_THRESHOLD, 128 << 10)
    try:
        yield
    finally:
        if libc is not None:
            libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)
