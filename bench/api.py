"""Benchmark: re-thresholding a preference set from a notebook session vs the CLI.

    .venv/bin/python bench/api.py [--groups 20000] [--group-size 6] [--data DIR]

On a synthetic `generations` table (bench/build.py's, 120k generations by default,
as in issue 8's comparison with NeMo's script), in the same run:

1. **CLI** (the baseline): `ttspo build pareto --param cer_threshold=B` then
   `ttspo export nemo`, two fresh processes, as a shell user re-thresholds;
2. **session**: one `ttspo.Store` in one Python process: a first build + export
   at threshold A (imports and caches warm up), then the re-threshold at B
   (`store.build` + `store.export_nemo`), which is what a notebook user repeats;
3. checks that both wrote byte-identical manifests, and prints the ratio.

No target of its own: issue 8's target for the session re-threshold is against
NeMo's script (bench/vs_nemo.py); this shows what a session saves over the CLI
(two interpreter start-ups and their imports per re-threshold) and where the
session's time goes (build vs export).
"""

from __future__ import annotations

import argparse
import filecmp
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from build import make_store  # noqa: E402  (bench/build.py's synthetic table)

FIRST, SECOND = 0.02, 0.01
FIXED = {"val_size": 256, "seed": 0}
MANIFESTS = ("dpo_train_manifest.json", "dpo_val_manifest.json")


def cli(store: Path, out: Path) -> float:
    ttspo = str(Path(sys.executable).with_name("ttspo"))
    params = [w for k, v in {**FIXED, "cer_threshold": SECOND}.items() for w in ("--param", f"{k}={v}")]
    start = time.perf_counter()
    subprocess.run([ttspo, "--store", str(store), "build", "pareto", "--name", "cli", *params],
                   check=True, stdout=subprocess.DEVNULL)
    subprocess.run([ttspo, "--store", str(store), "export", "nemo", "cli", "--out", str(out)],
                   check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def session(store_path: Path, out: Path) -> tuple[float, dict[str, float]]:
    import ttspo

    store = ttspo.Store(store_path)
    start = time.perf_counter()
    store.build("pareto", name="nb", params={**FIXED, "cer_threshold": FIRST})
    store.export_nemo("nb", out=out.with_name(out.name + "-first"))
    first = time.perf_counter() - start
    start = time.perf_counter()
    built = store.build("pareto", name="nb", params={**FIXED, "cer_threshold": SECOND})
    mid = time.perf_counter()
    store.export_nemo("nb", out=out)
    end = time.perf_counter()
    return first, {"build": mid - start, "export": end - mid, "pairs": built.summary()["pairs"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--groups", type=int, default=20_000)
    ap.add_argument("--group-size", type=int, default=6)
    ap.add_argument("--data", default=str(ROOT / "bench" / "_data" / "api"))
    args = ap.parse_args()
    data = Path(args.data)
    store = data / "store"
    make_store(store, args.groups, args.group_size)
    print(f"data: {args.groups * args.group_size:,} generations ({args.groups:,} groups of "
          f"{args.group_size})")
    cli_seconds = cli(store, data / "cli-manifests")
    print(f"CLI re-threshold (ttspo build + ttspo export nemo): {cli_seconds:.2f} s")
    first, again = session(store, data / "nb-manifests")
    total = again["build"] + again["export"]
    print(f"session first build + export (cold imports): {first:.2f} s")
    print(f"session re-threshold: {total:.2f} s (build {again['build']:.2f} s, export "
          f"{again['export']:.2f} s, {again['pairs']:,} pairs)")
    same = all(filecmp.cmp(data / "cli-manifests" / m, data / "nb-manifests" / m, shallow=False)
               for m in MANIFESTS)
    print(f"same manifests (byte for byte): {'yes' if same else 'NO'}")
    print(f"\nratio: session re-threshold {cli_seconds / total:.1f}x faster than the CLI's")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
