"""Benchmark: what checking `.derived` entries' checksums costs a notebook re-threshold.

    .venv/bin/python bench/derived_check.py [--groups 20000] [--rounds 5] [--data DIR]

On bench/build.py's synthetic `generations` (120k rows by default, as bench/vs_nemo.py's
corpus), one Python process (imports done first, as in a notebook):

1. a first build + export at 0.02 writes every `.derived` entry (each with its CRC-32);
2. rounds, interleaved so that the machine's drift hits both alike, of:
   - **new session, checked**: `session_cache.clear()`, then build + export at 0.05:
     every entry is read from the store and its checksum verified;
   - **new session, unchecked**: the same as before the checksums
     (`session_cache._verify` off: each file memory-mapped, its CRC not compared);
   - **in session**: build + export at 0.05 again without clearing (what a notebook
     repeats: entries in memory, no file read, nothing to verify), checked and unchecked;
3. the CRC-32 of each entry alone (what the check adds per file).

Prints each variant's median and the ratio checked / unchecked (the issue allows the
in-process re-threshold ratio of bench/vs_nemo.py to drop by at most 10%: a ratio
here of at most 1.11).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from build import synth_generations  # noqa: E402  (bench/build.py's synthetic table)

FIXED = {"val_size": 256, "seed": 0}


def make_store(path: Path, groups: int):
    """bench/build.py's table with each generation's codes stored in it (8 x 10 frames,
    seeded): its codes paths name no file, and an export writes every codes file."""
    import shutil

    import numpy as np
    import pyarrow as pa

    import ttspo
    from ttspo.builder.core.schemas import CODES_TYPE, GEN, GENERATIONS_SCHEMA
    from ttspo.builder.core.store import make_lineage

    table = synth_generations(groups, 6)
    n, frames = table.num_rows, 10
    flat = pa.array(np.random.default_rng(0).integers(0, 1000, n * 8 * frames).astype(np.int16))
    rows = pa.ListArray.from_arrays(pa.array(np.arange(0, n * 8 * frames + 1, frames, dtype=np.int32)), flat)
    codes = pa.ListArray.from_arrays(pa.array(np.arange(0, n * 8 + 1, 8, dtype=np.int32)), rows)
    table = table.set_column(table.schema.get_field_index(GEN.codes), GEN.codes, codes.cast(CODES_TYPE))
    table = table.set_column(table.schema.get_field_index(GEN.codes_path), GEN.codes_path,
                             pa.nulls(n, pa.string()))
    table = table.set_column(table.schema.get_field_index(GEN.codes_len), GEN.codes_len,
                             pa.array(np.full(n, frames, dtype=np.int32)))
    if path.exists():
        shutil.rmtree(path)
    store = ttspo.Store(path)
    store.core.write("generations", table, GENERATIONS_SCHEMA, make_lineage("bench-synth", {"groups": groups}))
    return store


def rethreshold(store, out: Path, threshold: float) -> tuple[float, float]:
    """(wall, CPU) seconds of one build + export (CPU: all the process's threads)."""
    start, cpu = time.perf_counter(), time.process_time()
    store.build("pareto", name="nb", params={**FIXED, "cer_threshold": threshold})
    store.export_nemo("nb", out=out)
    return time.perf_counter() - start, time.process_time() - cpu


def read_entries(files: list[Path], passes: int) -> dict[str, list[float]]:
    """CPU seconds of reading every entry (session_cache._read), checked and
    unchecked, interleaved: what a new session's first call pays for the check."""
    from ttspo.builder.sets import session_cache

    times: dict[str, list[float]] = {"checked": [], "unchecked": []}
    for p in range(passes):
        for verify in ((True, False) if p % 2 == 0 else (False, True)):
            session_cache._verify[0] = verify
            cpu = time.process_time()
            tables = [session_cache._read(path) for path in files]
            times["checked" if verify else "unchecked"].append(time.process_time() - cpu)
            assert all(t is not None for t in tables)
            del tables
    session_cache._verify[0] = True
    return times


def crc_seconds(folder: Path) -> tuple[float, int]:
    """The CRC-32 of every entry's bytes (read first: the page cache's copy)."""
    total, size = 0.0, 0
    for path in sorted(folder.glob("*.arrow")):
        data = path.read_bytes()
        start = time.perf_counter()
        zlib.crc32(data)
        total += time.perf_counter() - start
        size += len(data)
    return total, size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--groups", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--data", default=str(ROOT / "bench" / "_data" / "derived_check"))
    args = ap.parse_args()
    from ttspo.builder.sets import session_cache

    data = Path(args.data)
    store = make_store(data / "store", args.groups)
    out = data / "out"
    first = rethreshold(store, out, 0.02)[0]
    rethreshold(store, out, 0.05)  # the OUT holds the 0.05 set's codes files: no write timed
    folder = data / "store" / session_cache.DERIVED_DIR
    files = sorted(folder.glob("*.arrow"))
    print(f"data: {args.groups * 6:,} generations; first build + export {first:.2f} s; "
          f".derived: {len(files)} files, {sum(p.stat().st_size for p in files) / 1e6:.1f} MB")
    times: dict[str, list[tuple[float, float]]] = {
        k: [] for k in ("new checked", "new unchecked", "in checked", "in unchecked")}
    spent = [0.0]  # CPU seconds inside session_cache._read: the part the check changes
    read = session_cache._read

    def timed_read(*a, **k):
        cpu = time.process_time()
        try:
            return read(*a, **k)
        finally:
            spent[0] += time.process_time() - cpu

    session_cache._read = timed_read
    in_read: dict[str, list[float]] = {"checked": [], "unchecked": []}
    for r in range(args.rounds):
        order = (True, False) if r % 2 == 0 else (False, True)
        for verify in order:
            session_cache._verify[0] = verify
            session_cache.clear()
            name = "checked" if verify else "unchecked"
            spent[0] = 0.0
            times[f"new {name}"].append(rethreshold(store, out, 0.05))
            in_read[name].append(spent[0])
            assert not session_cache.computed, dict(session_cache.computed)  # all read, none bad
            times[f"in {name}"].append(rethreshold(store, out, 0.05))
    session_cache._verify[0] = True
    session_cache._read = read
    for i, unit in ((0, "wall"), (1, "CPU")):
        for key, values in times.items():
            runs = [v[i] for v in values]
            print(f"{key:>14}, {unit}: median {statistics.median(runs):.3f} s  "
                  f"(runs {', '.join(f'{v:.3f}' for v in runs)})")
        for where in ("new", "in"):
            ratio = (statistics.median(v[i] for v in times[f"{where} checked"])
                     / statistics.median(v[i] for v in times[f"{where} unchecked"]))
            print(f"ratio checked / unchecked, {'new session' if where == 'new' else 'in session'}"
                  f", {unit}: {ratio:.3f}")
    print(f"CPU inside _read during the new-session calls: checked "
          f"{statistics.median(in_read['checked']) * 1000:.1f} ms, unchecked "
          f"{statistics.median(in_read['unchecked']) * 1000:.1f} ms (median)")
    reads = read_entries(files, 2 * args.rounds)
    checked, unchecked = (statistics.median(reads[k]) for k in ("checked", "unchecked"))
    print(f"reading every entry, CPU: checked {checked * 1000:.1f} ms, unchecked "
          f"{unchecked * 1000:.1f} ms: the check adds {(checked - unchecked) * 1000:.1f} ms a new session")
    seconds, size = crc_seconds(folder)
    print(f"CRC-32 of every entry alone: {seconds * 1000:.1f} ms for {size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
