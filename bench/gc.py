"""Benchmark: store size after 200 re-thresholds, without gc, with `gc --keep-last 10`,
and after `compact` (issue 21, "Store lifecycle").

    .venv/bin/python bench/gc.py [--groups 5000] [--group-size 6] [--runs 20] [--builds 200]

Writes a synthetic `generations` table (bench/build.py's generator: NeMo-like metrics)
as RUNS appends (as many ingests would: one fragment each), then builds the set
`prefs` BUILDS times with a different CER threshold each time (a re-threshold sweep),
then, in the same run:

1. the store's size on disk after the builds (no gc);
2. `gc --keep-last 10` on a copy: the dry run's bytes, the bytes freed, the size,
   and gc's time;
3. `compact` on that copy, its size, and `gc --keep-last 10` again;
4. 10 more builds (reading the compacted generations), `gc --keep-last 10`, and
   `gc generations --keep-last 1` (the uncompacted fragments go only with the last
   generations version that reads them).

All sizes are the bytes of the store's files (``.derived`` excluded: caches,
bounded per kind, safe to delete).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from build import synth_generations  # noqa: E402

from ttspo.builder.api import Store  # noqa: E402
from ttspo.builder.core.schemas import GENERATIONS_SCHEMA  # noqa: E402
from ttspo.builder.core.store import make_lineage  # noqa: E402

PARAMS = {"min_duration": 1.5, "max_duration": 19.0, "num_chosen": 1, "val_size": 256, "seed": 0}


def size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*")
               if p.is_file() and ".derived" not in p.relative_to(root).parts)


def mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def make(root: Path, groups: int, group_size: int, runs: int) -> Store:
    table = synth_generations(groups, group_size)
    per = -(-groups // runs) * group_size  # whole groups per append
    store = Store(root)
    for i, start in enumerate(range(0, table.num_rows, per)):
        store.core.write("generations", table.slice(start, per), GENERATIONS_SCHEMA,
                         make_lineage("bench-ingest", {"part": i}))
    return store


def build_many(store: Store, builds: int) -> float:
    start = time.perf_counter()
    for i in range(builds):
        # thresholds 0.005 .. 0.105: every build a different set
        store.build("pareto", name="prefs", params={**PARAMS, "cer_threshold": 0.005 + i * 0.0005})
    return time.perf_counter() - start


def gc_figures(store: Store, label: str) -> None:
    planned = store.gc(keep_last=10, dry_run=True).bytes
    start = time.perf_counter()
    result = store.gc(keep_last=10)
    seconds = time.perf_counter() - start
    print(f"{label}: gc --keep-last 10 removed {result.removed} versions in {seconds:.2f} s; "
          f"dry run said {planned:,} bytes, freed {result.bytes:,} bytes; "
          f"store {mb(size(store.root))}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--groups", type=int, default=5000)
    ap.add_argument("--group-size", type=int, default=6)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--builds", type=int, default=200)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-gc-") as tmp:
        store = make(Path(tmp) / "store", args.groups, args.group_size, args.runs)
        n = store.core.open("generations").count_rows()
        base = size(store.root)
        frags = len(store.core.open("generations").get_fragments())
        print(f"store: {n:,} generations in {frags} fragments, {mb(base)}")
        seconds = build_many(store, args.builds)
        grown = size(store.root)
        print(f"after {args.builds} builds ({seconds:.1f} s): {mb(grown)} "
              f"(+{(grown - base) / args.builds / 1e6:.3f} MB per build), no gc")
        copy = Store(Path(tmp) / "copy")
        shutil.copytree(store.root, copy.root, ignore=shutil.ignore_patterns(".derived"))
        gc_figures(copy, "gc")
        after_gc = size(copy.root)
        start = time.perf_counter()
        done = copy.compact()
        merged = ", ".join(f"{t.table} {t.fragments_before}->{t.fragments_after}"
                           for t in done if t.compacted)
        print(f"compact ({time.perf_counter() - start:.2f} s; {merged}): {mb(size(copy.root))}")
        gc_figures(copy, "compact + gc")
        # The kept set versions' lineage names the uncompacted generations version, so
        # its fragments stay until 10 builds read the compacted one, and until it
        # leaves generations' last 10 versions (here: gc generations --keep-last 1).
        build_many(copy, 10)
        gc_figures(copy, "compact + 10 builds + gc")
        last = copy.gc("generations", keep_last=1)
        print(f"then gc generations --keep-last 1: freed {last.bytes:,} bytes; "
              f"store {mb(size(copy.root))}")
        print(f"ratio: no gc / gc --keep-last 10 = {grown / after_gc:.2f}x; "
              f"no gc / end of 4. = {grown / size(copy.root):.2f}x")


if __name__ == "__main__":
    main()
