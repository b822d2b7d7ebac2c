"""Export memory and time by corpus size: the chunked export naming STORE/codes vs
the export before it (every codes file written into OUT/codes, the codes and the
manifests held whole).

    .venv/bin/python bench/export_memory.py --before DIR [--groups 20000,83334,200000]

DIR: an earlier checkout of ttspo (e.g. before STORE/codes: f0309a2), as a folder
holding ``ttspo/`` (``mkdir -p DIR/ttspo && git archive f0309a2 | tar -x -C
DIR/ttspo``); it is imported with ``PYTHONPATH=DIR``. For each size, a store of GROUPS x 6 generations
(bench/build.py's generator, plus int16 codes [8, 21.5 x duration] from a seeded
RNG, written as one commit in batches of 100k rows) and a pareto set (bench/build.py's
PARAMS). Then, each in a fresh process (peak RSS: ``VmHWM``, the whole process):

1. ``before``: DIR's ``export_nemo`` into a new folder (its first export), then
   ``before_again``: DIR's again into another new folder (a new session); then
   STORE/codes and STORE/.derived are removed, so this tree's first is a first too;
2. ``first``: this tree's ``export_nemo`` into a new folder (writes STORE/codes;
   computes what STORE/.derived keeps: the two codes differ, so each computes its own);
3. ``again``: this tree's ``export_nemo`` into another new folder (a new session;
   reads STORE/.derived, writes manifests only);
4. ``floor``: imports, the store opened and the set's columns an export reads whole
   (export.set_pairs: what any export holds).

The manifests of 1 and 2 are compared (equal but for the codes paths; a sample of
codes files byte for byte). Prints a table of seconds and peak RSS, and RSS per pair.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent
FPS = 21.533
BATCH = 100_000


def make(store_dir: str, groups: int) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    from build import PARAMS, synth_generations

    from ttspo.builder.core.schemas import GEN, GENERATIONS_SCHEMA
    from ttspo.builder.core.store import Store, make_lineage
    from ttspo.builder.sets.build import build_set

    shutil.rmtree(store_dir, ignore_errors=True)
    table = synth_generations(groups, 6)
    rng = np.random.default_rng(1)

    def batches():
        for start in range(0, table.num_rows, BATCH):
            part = table.slice(start, BATCH)
            frames = np.maximum(4, (part.column(GEN.duration).to_numpy() * FPS).astype(np.int32))
            inner = np.concatenate([[0], np.cumsum(np.repeat(frames, 8))]).astype(np.int32)
            values = pa.array(rng.integers(0, 2016, int(inner[-1]), dtype=np.int16))
            codes = pa.ListArray.from_arrays(np.arange(0, 8 * len(frames) + 1, 8, dtype=np.int32),
                                             pa.ListArray.from_arrays(inner, values))
            part = part.set_column(part.schema.get_field_index(GEN.codes), GEN.codes,
                                   codes.cast(GENERATIONS_SCHEMA.field(GEN.codes).type))
            part = part.set_column(part.schema.get_field_index(GEN.codes_len), GEN.codes_len, pa.array(frames))
            yield from part.to_batches()

    store = Store(store_dir)
    store.write("generations", batches(), GENERATIONS_SCHEMA, make_lineage("bench-synth", {"groups": groups}))
    build_set(store, "pareto", "prefs", PARAMS)


def child(mode: str, store_dir: str, out: str) -> None:
    """One measured step in this (fresh) process; prints a JSON line."""
    t0 = time.perf_counter()
    from ttspo.builder.core.store import Store

    store = Store(store_dir)
    if mode == "floor":
        from ttspo.builder.sets.build import open_set
        from ttspo.builder.sets.export import set_pairs

        pairs = set_pairs(open_set(store, "prefs"))[0].num_rows
        result = {"pairs": pairs}
    else:
        from ttspo.builder.sets.export import export_nemo

        r = export_nemo(store, "prefs", out)
        result = {"pairs": sum(r.pairs.values()), "codes_written": r.codes_written}
    result["seconds"] = time.perf_counter() - t0
    result["peak_mb"] = peak_kb() / 1024
    print(json.dumps(result))


def peak_kb() -> int:
    """This process's peak RSS: VmHWM where Linux has it (ru_maxrss carries over the
    parent's peak at fork: after the 500k step's manifest check, every 1.2M child
    read 752 MB), else ru_maxrss."""
    try:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def run(mode: str, store: Path, out: Path, *, before: str | None = None) -> dict:
    env = dict(os.environ)
    if before:
        env["PYTHONPATH"] = before
    shutil.rmtree(out, ignore_errors=True)
    os.sync()
    done = subprocess.run([sys.executable, __file__, "--child", mode, "--store", str(store), "--out", str(out)],
                          capture_output=True, text=True, env=env, cwd="/")
    if done.returncode:
        sys.exit(f"{mode} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def same(before: Path, after: Path) -> None:
    for name in ("dpo_train_manifest.json", "dpo_val_manifest.json"):
        a = [json.loads(x) for x in (before / name).read_text().splitlines()]
        b = [json.loads(x) for x in (after / name).read_text().splitlines()]
        assert len(a) == len(b), name
        for i, (x, y) in enumerate(zip(a, b)):
            assert {**x, "target_audio_codes_path": 0} == {**y, "target_audio_codes_path": 0}, (name, i)
            if i % 997 == 0:
                assert Path(x["target_audio_codes_path"]).read_bytes() == Path(
                    y["target_audio_codes_path"]).read_bytes(), (name, i)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--groups", default="20000,83334,200000", help="sizes, groups of 6 (comma-separated)")
    ap.add_argument("--before", help="a folder holding the old ttspo/ (see the module doc)")
    ap.add_argument("--data", default=str(ROOT / "bench" / "_data" / "export_memory"))
    ap.add_argument("--keep", action="store_true", help="keep each size's store (default: removed after)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--store", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.store, args.out)
    print(f"load average before: {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)", flush=True)
    rows = []
    for groups in map(int, args.groups.split(",")):
        base = Path(args.data) / f"g{groups}"
        store = base / "store"
        t0 = time.perf_counter()
        maker = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ROOT / 'bench')!r}); "
                                f"import export_memory as m; m.make({str(store)!r}, {groups})"])
        assert maker.returncode == 0, "store writer failed"
        print(f"{groups * 6} generations: store written in {time.perf_counter() - t0:.0f} s", flush=True)
        got = {"floor": run("floor", store, base / "floor")}
        if args.before:
            got["before"] = run("before", store, base / "before", before=args.before)
            got["before_again"] = run("before", store, base / "before_again", before=args.before)
            for made in ("codes", ".derived"):
                shutil.rmtree(store / made, ignore_errors=True)
        got["first"] = run("first", store, base / "first")
        got["again"] = run("again", store, base / "again")
        if args.before:
            same(base / "before", base / "first")
        for mode, r in got.items():
            print(f"  {mode:<7} {r['seconds']:7.2f} s  peak RSS {r['peak_mb']:7.0f} MB  "
                  f"pairs {r['pairs']}  codes files written {r.get('codes_written', '-')}", flush=True)
        rows.append((groups * 6, got))
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    print("\n| generations | pairs | " + " | ".join(f"{m} s / MB" for m in rows[0][1]) + " |")
    for n, got in rows:
        print(f"| {n} | {got['first']['pairs']} | "
              + " | ".join(f"{r['seconds']:.1f} / {r['peak_mb']:.0f}" for r in got.values()) + " |")
    if len(rows) > 1:
        (n0, a), (n1, b) = rows[0], rows[-1]
        dp = b["first"]["pairs"] - a["first"]["pairs"]
        for mode in a:
            if mode != "floor":
                slope = (b[mode]["peak_mb"] - a[mode]["peak_mb"]) * 1024 / dp
                print(f"{mode}: peak RSS grows {slope:.1f} KB per pair from {n0} to {n1} generations")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
