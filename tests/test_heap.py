"""builder/core/heap.py: freed heap pages go back to the kernel when asked, not before."""

from __future__ import annotations

import os

import pytest

from ttspo.builder.core import heap


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(heap._glibc() is None, reason="glibc's allocator only")
def test_trim_hands_back_the_free_pages_below_a_live_block():
    # 160 MB in 64 KiB blocks (below glibc's mmap threshold: from the heap); the last
    # block stays, so glibc's own trim of the heap's top cannot return the rest
    blocks = [bytearray(b"x" * 65536) for _ in range(2560)]
    keep = blocks[-1]
    before = _rss_mb()
    del blocks[:-1]
    freed = _rss_mb()
    heap.trim()
    after = _rss_mb()
    assert keep[0] == ord("x")
    assert before - freed < 40, (before, freed)  # freed, yet still resident
    assert freed - after > 120, (freed, after)  # most of the 160 MB handed back


def test_steady_heap_sets_the_threshold_and_always_restores_it(monkeypatch):
    calls = []

    class RecordingLibc:  # the C library's mallopt, recorded (glibc's own is process-wide)
        def mallopt(self, param: int, value: int) -> int:
            calls.append((param, value))
            return 1

    monkeypatch.setattr(heap, "_glibc", RecordingLibc)
    with pytest.raises(KeyError):
        with heap.steady_heap():
            assert calls == [(heap.M_MMAP_THRESHOLD, 128 << 10)]
            raise KeyError("x")
    assert calls == [(heap.M_MMAP_THRESHOLD, 128 << 10), (heap.M_MMAP_THRESHOLD, 32 << 20)]
