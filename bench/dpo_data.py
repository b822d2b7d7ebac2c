"""The DPO data path in memory vs streamed: peak RSS and time by set size, and the
pairs/s of a DPO step with each loader.

    .venv/bin/python bench/dpo_data.py [--sizes 10000,50000] [--runs 5] [--steps 30] [--skip-memory-part] [--skip-step-part]
        [--modes memory,stream,stream-load] [--baseline CHECKOUT] [--spare K] [--load-runs R]

Part 1, for each size N: a synthetic store of 2N generations (8 codebooks x 100
frames of int16 codes, groups of 2: one chosen and one rejected) and a Pareto set
of N pairs. In a fresh process each: ``load_pairs`` in memory (every codes array
read), and ``load_pairs(stream=True)`` plus 100 micro-batches of 4 pairs read by a
spawned worker (trainer/dpo/stream.py). Peak RSS (VmHWM) of the process and of
its reader worker, wall time, and the bytes the loaded pairs hold per pair (numpy
arrays and Python objects, each once). ``--baseline CHECKOUT``: the same runs with
another checkout's code (before/after in one run, on the same stores).
``stream-load``: the streamed load alone. ``--spare K``: K more generations per
pair in groups the set skips (a version larger than its set, as NeMo's groups of 6).
``--load-runs R``: each run R times, interleaved, the median shown.

Part 2: ``train_dpo`` of a small tiny policy (d_model 32; a tiny step makes the
data path's share the largest), 4 pairs per step, reference free (no cache key to
compute), memory and stream interleaved RUNS times; each run's median
pairs_per_second over its steps after the 5th; the median of those per loader.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

FRAMES, CODEBOOKS = 100, 8
TINY = {"d_model": 32, "n_heads": 2, "encoder_layers": 1, "decoder_layers": 1, "d_ffn": 64,
        "max_text_len": 64, "max_frames": 32}


def make_store(root: Path, pairs: int, frames: int = FRAMES, spare: int = 0):
    """SPARE: that many more generations per pair, in groups the set skips (marked
    invalid, without codes): a generations version larger than its set, as NeMo's
    groups of 6 make it."""
    from ttspo.builder.core.schemas import GEN, GENERATIONS_SCHEMA
    from ttspo.builder.core.store import Store, make_lineage
    from ttspo.builder.sets.build import build_set

    n = 2 * pairs
    rows = [{GEN.generation_id: f"r:{i}", GEN.run: "r", GEN.prompt_id: f"p{i // 2}",
             GEN.group_id: f"r:g{i // 2}", GEN.group_index: i // 2, GEN.sample_index: i % 2,
             GEN.manifest_line: i, GEN.text: f"text {i // 2}", GEN.record_type: "regular",
             GEN.context_text: f"speaker {i % 5}", GEN.duration: 5.0, GEN.sample_rate: 22050,
             GEN.cer: 0.3 * (i % 2), GEN.wer: 0.3 * (i % 2), GEN.ssim: 0.9 - 0.4 * (i % 2),
             GEN.invalid: False} for i in range(n)]
    table = pa.Table.from_pylist(rows, schema=GENERATIONS_SCHEMA)
    values = np.random.default_rng(0).integers(0, 256, n * CODEBOOKS * frames, dtype=np.int16)
    inner = pa.ListArray.from_arrays(np.arange(0, n * CODEBOOKS + 1, dtype=np.int32) * frames,
                                     pa.array(values))
    codes = pa.ListArray.from_arrays(np.arange(0, n + 1, dtype=np.int32) * CODEBOOKS, inner)
    table = table.set_column(table.schema.get_field_index(GEN.codes), GEN.codes, codes)
    if spare:
        extra = [{GEN.generation_id: f"x:{i}", GEN.run: "r", GEN.prompt_id: f"q{i // 6}",
                  GEN.group_id: f"x:g{i // 6}", GEN.group_index: pairs + i // 6,
                  GEN.sample_index: i % 6, GEN.manifest_line: n + i, GEN.text: f"text {i // 6}",
                  GEN.record_type: "regular", GEN.context_text: "speaker 0", GEN.duration: 5.0,
                  GEN.sample_rate: 22050, GEN.invalid: True} for i in range(spare * pairs)]
        table = pa.concat_tables([table, pa.Table.from_pylist(extra, schema=GENERATIONS_SCHEMA)])
    store = Store(root)
    store.write("generations", table, GENERATIONS_SCHEMA, make_lineage("bench", {}))
    build_set(store, "pareto", "prefs", {"val_size": 16, "seed": 0})
    return store


def child_load(root: str, mode: str) -> None:
    """One measurement in this (fresh) process; prints JSON."""
    from types import SimpleNamespace

    from ttspo.builder.core.store import Store
    from ttspo.trainer.dpo.data import PairOrder, load_pairs
    from ttspo.trainer.dpo.stream import step_batches

    worker = 0.0
    imports = peak_mb("self")
    began = time.perf_counter()
    pairs = load_pairs(Store(root), "prefs", stream=mode.startswith("stream"))
    loaded = time.perf_counter() - began
    if mode == "stream":  # "stream-load": the load alone
        train = pairs.select("train")
        order = PairOrder(num_pairs=len(train), pairs_per_device=4, seed=0)
        data = SimpleNamespace(loader="stream", workers=1, prefetch_batches=2, read_batches=8)
        for k, micro in enumerate(step_batches(train, order, 0, start=0, stop=100, data=data)):
            assert len(micro[0][1][0]) == 4
            worker = worker_peak_mb() if k == 98 else worker
    print(json.dumps({"load_s": loaded, "total_s": time.perf_counter() - began,
                      "rss_mb": peak_mb("self"), "held_bytes": held_bytes(pairs),
                      "imports_mb": imports, "worker_rss_mb": worker}))


def held_bytes(pairs) -> int:
    """What the loaded Pairs object keeps: numpy arrays' bytes and Python objects'
    sizes, each object once (shared rows, interned strings), through lists, tuples and
    dicts (and an object's attributes); Arrow arrays by their buffers; not its codes
    reader (a store path and a version)."""
    seen, total = set(), 0
    todo = [v for k, v in vars(pairs).items() if k != "codes"]
    while todo:
        x = todo.pop()
        if id(x) in seen:
            continue
        seen.add(id(x))
        arrays = (np.ndarray, pa.Array, pa.ChunkedArray)
        total += x.nbytes + 112 if isinstance(x, arrays) else sys.getsizeof(x)
        if hasattr(x, "__dict__") and not isinstance(x, arrays):  # PairIds: its Arrow array
            todo.extend(vars(x).values())
        if isinstance(x, (list, tuple)):
            todo.extend(x)
        elif isinstance(x, dict):
            todo.extend([*x.keys(), *x.values()])
    return total


def peak_mb(pid: str) -> float:
    """A process's VmHWM: the peak RSS since its exec. (ru_maxrss would also count the
    parent's pages the child held between fork and exec: this bench's parent holds
    a whole store it just built.)"""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmHWM"))


def worker_peak_mb() -> float:
    """The reader worker's peak, read while it lives."""
    pids = [p for t in Path("/proc/self/task").iterdir()
            for p in (t / "children").read_text().split()]
    return max((peak_mb(p) for p in pids), default=0.0)


def measure(root: Path, mode: str, code: Path | None = None) -> dict:
    """One child run; CODE: a folder holding a link ``ttspo`` to another checkout
    (the baseline) to import instead of this one."""
    env = {**os.environ, **({"PYTHONPATH": str(code)} if code else {})}
    run = subprocess.run([sys.executable, __file__, "--child", str(root), mode],
                         capture_output=True, text=True, check=True, env=env)
    return json.loads(run.stdout.strip().splitlines()[-1])


def baseline_link(checkout: str, tmp: Path) -> Path:
    link = tmp / "baseline"
    link.mkdir()
    (link / "ttspo").symlink_to(Path(checkout).resolve())
    return link


def part1(sizes: list[int], tmp: Path, modes: list[str], baseline: str | None, *,
          spare: int = 0, runs: int = 1) -> None:
    """RUNS > 1: each (mode, code) that many times, interleaved; the row shows the
    median peak and the run with it, the other runs' peaks in brackets after it."""
    codes = [("this", None)] + ([("baseline", baseline_link(baseline, tmp))] if baseline else [])
    print("| pairs | loader | code | load s | total s | peak RSS MB (after imports) | "
          "worker peak RSS MB | Pairs held, bytes per pair |")
    print("|---|---|---|---|---|---|---|---|")
    for n in sizes:
        make_store(tmp / f"s{n}", n, spare=spare)
        for mode in modes:
            got = {name: [] for name, _ in codes}
            for _ in range(runs):
                for name, code in codes:
                    got[name].append(measure(tmp / f"s{n}", mode, code))
            for name, ms in got.items():
                ms = sorted(ms, key=lambda m: m["rss_mb"])
                m, all_mb = ms[(len(ms) - 1) // 2], "/".join(f"{x['rss_mb']:.0f}" for x in ms)
                worker = f"{m['worker_rss_mb']:.0f}" if mode == "stream" else ""
                print(f"| {n} | {mode} | {name} | {m['load_s']:.2f} | {m['total_s']:.2f} | "
                      f"{m['rss_mb']:.0f} ({m['imports_mb']:.0f})"
                      f"{f' [{all_mb}]' if runs > 1 else ''} | {worker} | "
                      f"{m['held_bytes'] / n:.0f} |", flush=True)


def one_run(store, loader: str, out: Path, steps: int) -> float:
    from ttspo.trainer.dpo.loop import read_metrics, train_dpo
    from ttspo.trainer.run.config import load_config

    o = {f"policy.model.{k}": v for k, v in TINY.items()}
    o.update({"train.max_steps": steps, "train.val_every": 0, "train.checkpoint_every": 0,
              "train.progress": False, "train.tensorboard": False, "loss.reference_free": True,
              "data.loader": loader, "optim.lr": 1e-3})
    train_dpo(store, "prefs", cfg=load_config(None, [f"{k}={v}" for k, v in o.items()]),
              out=out, echo=lambda *_: None)
    rates = [m["pairs_per_second"] for m in read_metrics(out) if "pairs_per_second" in m]
    return statistics.median(rates[5:])


def part2(runs: int, steps: int, tmp: Path) -> None:
    import torch

    torch.set_num_threads(1)
    store = make_store(tmp / "step", 2000, frames=24)
    rates = {"memory": [], "stream": []}
    for r in range(runs):  # interleaved: the machine's load hits both alike
        for loader in ("memory", "stream"):
            rates[loader].append(one_run(store, loader, tmp / f"{loader}{r}", steps))
    for loader, xs in rates.items():
        print(f"{loader}: median {statistics.median(xs):.1f} pairs/s "
              f"(runs {', '.join(f'{x:.1f}' for x in xs)})")
    ratio = statistics.median(rates["stream"]) / statistics.median(rates["memory"])
    print(f"stream / memory: {ratio:.3f}")


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        return child_load(sys.argv[2], sys.argv[3])
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10000,50000")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--skip-memory-part", action="store_true")
    ap.add_argument("--skip-step-part", action="store_true")
    ap.add_argument("--modes", default="memory,stream", help="part 1's loaders (and "
                    "stream-load: the streamed load alone, no micro-batches)")
    ap.add_argument("--spare", type=int, default=0, help="part 1: that many more "
                    "generations per pair in groups the set skips (NeMo's groups of 6: 4)")
    ap.add_argument("--load-runs", type=int, default=1, help="part 1: runs of each, "
                    "interleaved; the median peak is shown")
    ap.add_argument("--baseline", help="another checkout (e.g. `git archive main` unpacked) "
                    "whose loaders part 1 also runs, on the same stores")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_memory_part:
            part1([int(s) for s in args.sizes.split(",")], Path(tmp), args.modes.split(","),
                  args.baseline, spare=args.spare, runs=args.load_runs)
        if not args.skip_step_part:
            part2(args.runs, args.steps, Path(tmp))


if __name__ == "__main__":
    main()
