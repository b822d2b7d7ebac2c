"""Benchmark: `ttspo build pareto` on 1.2M generations (200k groups of 6).

    .venv/bin/python bench/build.py [--groups 200000] [--group-size 6] [--data DIR]

Generates the `generations` table directly with pyarrow (no audio files; metrics
from a seeded RNG, with exact ties and <INVALID> groups), then in the same run:

1. times `build_set(store, "pareto", ...)` end to end (recipe + checks + Lance
   write) in a child process, with its peak RSS (resource.getrusage);
2. times a plain per-group Python implementation of the same rules over the same
   data read as Python lists, in another child process;
3. checks that both produced the same pairs and rewards, and prints the ratio.

Children are started with the 'spawn' context: Lance is not fork-safe.
Targets (issue "Preference sets"): build <= 10 s, >= 20x the Python baseline,
peak RSS < 4 GB.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import multiprocessing as mp
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ttspo.builder.core.schemas import GEN, GENERATIONS_SCHEMA  # noqa: E402
from ttspo.builder.core.store import Store, make_lineage  # noqa: E402

RUN = "bench"
PARAMS = {"cer_threshold": 0.02, "min_duration": 1.5, "max_duration": 19.0,
          "num_chosen": 1, "val_size": 256, "seed": 0}


# ------------------------------------------------------------------ data
def synth_generations(groups: int, group_size: int, seed: int = 0) -> pa.Table:
    """A generations table with NeMo-like metrics: many CER ties (0 and rounded
    values), SSIM rounded to 3 decimals, 1% of groups with an <INVALID> row."""
    rng = np.random.default_rng(seed)
    n = groups * group_size
    line = np.arange(n, dtype=np.int64)
    group = line // group_size
    sample = (line % group_size).astype(np.int32)
    cer = np.where(rng.random(n) < 0.4, 0.0, np.round(rng.exponential(0.05, n), 3))
    ssim = np.round(rng.beta(8, 3, n), 3)
    duration = np.round(rng.uniform(1.0, 20.0, n), 2)
    bad_group = rng.random(groups) < 0.01
    invalid = bad_group[group] & (sample == 0)
    cer[invalid] = 1.0
    ssim[invalid] = 0.0
    ids = [f"{RUN}:{i}" for i in range(n)]
    gids = [f"{RUN}:g{g}" for g in range(groups)]
    pids = [f"p{g:015x}" for g in range(groups)]
    text = [f"text number {g}" for g in range(groups)]
    take = pa.array(group)
    cols = {
        GEN.generation_id: pa.array(ids),
        GEN.run: pa.array([RUN] * n),
        GEN.prompt_id: pa.array(pids).take(take),
        GEN.group_id: pa.array(gids).take(take),
        GEN.group_index: pa.array(group),
        GEN.sample_index: pa.array(sample),
        GEN.manifest_line: pa.array(line),
        GEN.text: pa.array(text).take(take),
        GEN.record_type: pa.array(np.where(group % 3 == 0, "challenging", "regular")),
        GEN.context_audio_filepath: pa.array([f"/data/ctx/{g % 500}.wav" for g in range(groups)]).take(take),
        GEN.context_audio_duration: pa.array(np.full(n, 5.0)),
        GEN.audio_filepath: pa.array([f"/data/gen/predicted_audioRank0_{i}.wav" for i in range(n)]),
        GEN.codes_path: pa.array([f"/data/gen/predicted_audioRank0_{i}_codes.pt" for i in range(n)]),
        GEN.duration: pa.array(duration),
        GEN.sample_rate: pa.array(np.full(n, 22050, dtype=np.int32)),
        GEN.cer: pa.array(cer),
        GEN.wer: pa.array(np.minimum(cer * 3, 1.0)),
        GEN.ssim: pa.array(ssim),
        GEN.pred_transcript: pa.array(np.where(invalid, "<INVALID>", "transcript")),
        GEN.gt_transcript: pa.array(["text"] * n),
        GEN.invalid: pa.array(invalid),
        GEN.cer_source: pa.array(["bench"] * n),
        GEN.ssim_source: pa.array(["bench"] * n),
    }
    arrays = [cols.get(f.name, pa.nulls(n, f.type)) for f in GENERATIONS_SCHEMA]
    return pa.Table.from_arrays(arrays, schema=GENERATIONS_SCHEMA)


def make_store(path: Path, groups: int, group_size: int) -> Store:
    if path.exists():
        shutil.rmtree(path)
    store = Store(path)
    table = synth_generations(groups, group_size)
    store.write("generations", table, GENERATIONS_SCHEMA,
                make_lineage("bench-synth", {"groups": groups, "group_size": group_size}))
    return store


# ------------------------------------------------------- Python baseline
BASELINE_COLUMNS = [GEN.generation_id, GEN.group_id, GEN.prompt_id, GEN.run, GEN.record_type,
                    GEN.sample_index, GEN.cer, GEN.ssim, GEN.duration, GEN.invalid]


def read_as_lists(store: Store) -> dict[str, list]:
    """The generations the baseline works on, as plain Python lists."""
    return store.open("generations").to_table(columns=BASELINE_COLUMNS).to_pydict()


def python_pareto(cols: dict[str, list], params: dict) -> list[dict]:
    """The rules of sql/pareto.sql, written as a plain per-group Python loop
    (the shape of NeMo's create_preference_pairs.py, with its defects fixed)."""
    groups: dict[str, list[int]] = {}
    for i, g in enumerate(cols[GEN.group_id]):
        groups.setdefault(g, []).append(i)
    cer, ssim, dur = cols[GEN.cer], cols[GEN.ssim], cols[GEN.duration]
    ids, sample = cols[GEN.generation_id], cols[GEN.sample_index]
    nc, lo, hi = params["num_chosen"], params["min_duration"], params["max_duration"]
    pairs = []
    for rows in groups.values():
        if any(cols[GEN.invalid][i] or not (_finite(cer[i]) and _finite(ssim[i])) for i in rows):
            continue
        front = _fronts([(cer[i], ssim[i]) for i in rows])
        order = sorted(range(len(rows)), key=lambda j: (front[j], cer[rows[j]], -ssim[rows[j]],
                                                        sample[rows[j]], ids[rows[j]]))
        ranked = [rows[j] for j in order]
        for c in ranked[:nc]:
            for r in ranked[max(0, len(ranked) - nc):]:
                cd, sd = cer[r] - cer[c], ssim[c] - ssim[r]
                if (c == r or cd + sd <= 0 or cer[r] < cer[c] or ssim[r] > ssim[c]
                        or not cer[c] < params["cer_threshold"]
                        or not (lo <= dur[c] <= hi and lo <= dur[r] <= hi)):
                    continue
                pairs.append({"chosen_id": ids[c], "rejected_id": ids[r], "group_id": cols[GEN.group_id][c],
                              "cer_delta": cd, "sim_delta": sd})
    _reward_and_split(pairs, params)
    return pairs


def _finite(x) -> bool:
    return x is not None and math.isfinite(x)


def _fronts(points: list[tuple[float, float]]) -> list[int]:
    """NeMo's peeling, with strict dominance so that equal points share a front."""
    front = [0] * len(points)
    remaining = set(range(len(points)))
    level = 0
    while remaining:
        level += 1
        top = [i for i in remaining if not any(_dominates(points[j], points[i]) for j in remaining)]
        for i in top:
            front[i] = level
            remaining.discard(i)
    return front


def _dominates(a, b) -> bool:
    return a[0] <= b[0] and a[1] >= b[1] and (a[0] < b[0] or a[1] > b[1])


def _reward_and_split(pairs: list[dict], params: dict) -> None:
    if not pairs:
        return
    stats = {}
    for key in ("cer_delta", "sim_delta"):
        values = [p[key] for p in pairs]
        mean = sum(values) / len(values)
        stats[key] = (mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values)))
    for p in pairs:
        p["pair_id"] = f"{p['chosen_id']}>{p['rejected_id']}"
        phi = 0.0
        for key, (mean, std) in stats.items():
            z = (p[key] - mean) / std if std > 0 else 0.0
            phi += 0.5 * (1 + math.erf(z / math.sqrt(2)))
        p["rejected_reward"] = 1.0 - phi
    seed = str(params["seed"])
    pairs.sort(key=lambda p: (hashlib.md5(f"{seed}:{p['pair_id']}".encode()).hexdigest(), p["pair_id"]))
    for pos, p in enumerate(pairs):
        p["position"] = pos
        p["split"] = "val" if pos < params["val_size"] else "train"


# ----------------------------------------------------------------- timing
def _child_build(path: str, name: str, params: dict, out) -> None:
    """Child process: `build pareto` end to end (recipe, checks, Lance write)."""
    from ttspo.builder.sets.build import build_set

    start = time.perf_counter()
    result = build_set(Store(path), "pareto", name, params)
    seconds = time.perf_counter() - start
    out.put({"seconds": seconds, "pairs": result.record.counts["pairs"], "parts": result.seconds,
             "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def _child_python(path: str, params: dict, out) -> None:
    """Child process: the plain per-group Python implementation, same data, same rules."""
    start = time.perf_counter()
    cols = read_as_lists(Store(path))
    read = time.perf_counter()
    pairs = python_pareto(cols, params)
    seconds = time.perf_counter() - start
    out.put({"seconds": seconds, "read": read - start, "pairs": [(p["pair_id"], p["split"], p["rejected_reward"]) for p in pairs],
             "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def in_child(target, *args) -> dict:
    """Run TARGET in a fresh 'spawn' process (Lance is not fork-safe); its report."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    report = queue.get()
    proc.join()
    if proc.exitcode:
        raise SystemExit(f"{target.__name__} failed with exit code {proc.exitcode}")
    return report


def check_same(store: Store, name: str, baseline: list[tuple]) -> None:
    """The SQL build and the Python baseline must agree pair for pair."""
    rows = store.open(name).to_table(columns=["pair_id", "split", "rejected_reward", "position"])
    rows = rows.sort_by("position").to_pydict()
    assert rows["pair_id"] == [p[0] for p in baseline], "pair ids or order differ"
    assert rows["split"] == [p[1] for p in baseline], "splits differ"
    worst = max((abs(a - p[2]) for a, p in zip(rows["rejected_reward"], baseline)), default=0.0)
    assert worst < 1e-6, f"rewards differ by {worst}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", type=int, default=200_000)
    parser.add_argument("--group-size", type=int, default=6)
    parser.add_argument("--data", default=str(ROOT / "bench" / "_data" / "build"))
    parser.add_argument("--repeats", type=int, default=3, help="SQL builds (the fastest counts)")
    args = parser.parse_args()

    path = Path(args.data)
    start = time.perf_counter()
    store = make_store(path, args.groups, args.group_size)
    print(f"data: {args.groups * args.group_size:,} generations ({args.groups:,} groups of "
          f"{args.group_size}) in {time.perf_counter() - start:.1f} s at {path}")

    builds = [in_child(_child_build, str(path), f"bench_pareto_{i}", PARAMS) for i in range(args.repeats)]
    for i, b in enumerate(builds):
        parts = ", ".join(f"{k} {v:.2f}" for k, v in b["parts"].items())
        print(f"sql build {i + 1}: {b['seconds']:.2f} s ({parts}), {b['pairs']:,} pairs, "
              f"peak RSS {b['rss_mb']:.0f} MB")
    base = in_child(_child_python, str(path), PARAMS)
    print(f"python baseline: {base['seconds']:.2f} s (read as lists {base['read']:.2f}), "
          f"{len(base['pairs']):,} pairs, "
          f"peak RSS {base['rss_mb']:.0f} MB")
    check_same(store, "bench_pareto_0", base["pairs"])
    print("same pairs, order, splits and rewards (|diff| < 1e-6): yes")

    best = min(builds, key=lambda b: b["seconds"])
    ratio = base["seconds"] / best["seconds"]
    peak = max(b["rss_mb"] for b in builds)
    print(f"\nbuild pareto: {best['seconds']:.2f} s (target <= 10 s), "
          f"{ratio:.1f}x the Python baseline (target >= 20x), peak RSS {peak:.0f} MB (target < 4096 MB)")


if __name__ == "__main__":
    main()
