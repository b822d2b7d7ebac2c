"""DPO step speed and memory: ttspo's step against a naive one; 2 torchrun processes vs 1.

    .venv/bin/python bench/train.py [--steps 20] [--trials 3] [--size default|wide] [--skip-dist]

Part 1, the same TinyCodecLM and the same batch (pairs with an audio-context
prefix, as the demo's), one torch thread:
  ttspo  chosen and rejected in ONE forward (chunk(2) after), reference log-probs
         from the cache (tensors, as ref_logps gives them): one policy in memory.
  naive  separate chosen and rejected forwards, plus a live reference model (two
         more forwards under no_grad), as NeMo's offline PO step: two models.
Each variant runs in its own spawned process, trials interleaved; steps/s is the
best trial's; memory is the process's peak RSS above its RSS once the libraries
were imported (models, optimizer, activations). Target: ttspo >= 1.25x and a lower peak.

Part 2: ``python -m ttspo.trainer dpo`` on 1 process against ``torchrun
--nproc-per-node 2`` on a synthetic set, the same pairs per process (so 2 processes
do twice the pairs per step): pairs per second (median over steps after the first
three, from metrics.jsonl). On 2 shared cores this can only show what the cores allow.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

SIZES = {  # TinyConfig's default size (~2M parameters), and a wider one (~7M)
    "default": {"d_model": 128, "n_heads": 4, "encoder_layers": 2, "decoder_layers": 3,
                "d_ffn": 512, "max_text_len": 256, "max_frames": 512},
    "wide": {"d_model": 256, "n_heads": 4, "encoder_layers": 2, "decoder_layers": 4,
             "d_ffn": 1024, "max_text_len": 256, "max_frames": 512},
}
MODEL = SIZES["default"]
PAIRS, CONTEXT_FRAMES, TARGET_FRAMES = 4, 60, 100
TARGET = 1.25


def rows(seed: int) -> tuple[list[dict], list[dict]]:
    import numpy as np

    rng = np.random.default_rng(seed)
    make = lambda: {"text": "a sentence of moderate length for the bench " * 2,
                    "context_text": None, "generation_id": "g",
                    "codes": rng.integers(0, 256, (8, TARGET_FRAMES + int(rng.integers(-10, 10)))),
                    "context_codes": rng.integers(0, 256, (8, CONTEXT_FRAMES))}
    return [make() for _ in range(PAIRS)], [make() for _ in range(PAIRS)]


def run_variant(name: str, steps: int, size: str, queue) -> None:
    import torch

    from ttspo.trainer import losses as L
    from ttspo.trainer.policy import load_policy, sequence_logps

    torch.set_num_threads(1)
    torch.manual_seed(0)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # libraries loaded
    policy = load_policy("tiny", config=SIZES[size])
    chosen, rejected = rows(0)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-4)
    if name == "ttspo":
        batch = policy.collate(chosen + rejected)
        with torch.no_grad():  # what ref_logps holds: computed once, outside the loop
            ref_c, ref_r = sequence_logps(policy(batch)).chunk(2)
        ref_model = None
    else:
        batch_c, batch_r = policy.collate(chosen), policy.collate(rejected)
        torch.manual_seed(0)
        ref_model = load_policy("tiny", config=SIZES[size]).eval().requires_grad_(False)

    def step() -> None:
        if ref_model is None:
            pi_c, pi_r = sequence_logps(policy(batch)).chunk(2)
            rc, rr = ref_c, ref_r
        else:
            pi_c, pi_r = sequence_logps(policy(batch_c)), sequence_logps(policy(batch_r))
            with torch.no_grad():
                rc, rr = sequence_logps(ref_model(batch_c)), sequence_logps(ref_model(batch_r))
        x = L.PairLogps(pi_c.sum(-1), pi_r.sum(-1), rc.sum(-1), rr.sum(-1))
        loss, _ = L.combine(x, losses=[("dpo", 1.0)], beta=0.1)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put((name, steps / seconds, peak - base))


def part1(steps: int, trials: int, size: str) -> None:
    ctx = mp.get_context("spawn")  # Lance and torch threads are not fork-safe
    results: dict[str, list[tuple[float, float]]] = {"ttspo": [], "naive": []}
    for _ in range(trials):
        for name in ("naive", "ttspo"):
            queue = ctx.Queue()
            proc = ctx.Process(target=run_variant, args=(name, steps, size, queue))
            proc.start()
            while queue.empty():  # a child that crashed must not leave us waiting
                if not proc.is_alive() and queue.empty():
                    raise SystemExit(f"the {name} step process failed (exit {proc.exitcode})")
                time.sleep(0.2)
            got = queue.get()
            proc.join()
            results[name].append(got[1:])
    best = {n: max(r[0] for r in v) for n, v in results.items()}
    peak = {n: min(r[1] for r in v) for n, v in results.items()}
    print(f"part 1: size {size}, {PAIRS} pairs, context {CONTEXT_FRAMES} + target ~{TARGET_FRAMES} frames, "
          f"{steps} steps x {trials} trials, load {os.getloadavg()[0]:.1f}")
    print("| step | steps/s (best) | all trials | peak RSS above imports |")
    print("|---|---|---|---|")
    for n in ("naive", "ttspo"):
        print(f"| {n} | {best[n]:.2f} | {', '.join(f'{r[0]:.2f}' for r in results[n])} | "
              f"{peak[n]:.0f} MB |")
    ratio = best["ttspo"] / best["naive"]
    print(f"ttspo / naive: {ratio:.2f}x (target >= {TARGET}x: {'met' if ratio >= TARGET else 'NOT met'}); "
          f"peak {peak['ttspo']:.0f} MB vs {peak['naive']:.0f} MB")


def part2(steps: int) -> None:
    from train_helpers import SET, pattern_store, tiny_overrides

    tmp = Path(tempfile.mkdtemp())
    store = pattern_store(tmp / "store", groups=160, frames=60, val_size=16)
    opts = tiny_overrides(**{"train.max_steps": steps, "train.val_every": 0,
                             "train.checkpoint_every": 0, "data.pairs_per_device": 4,
                             **{f"policy.model.{k}": v for k, v in MODEL.items()},
                             "policy.model.max_frames": 128})
    args = ["-m", "ttspo.trainer", "dpo", SET, "--store", str(store.root),
            *[w for o in opts for w in ("-o", o)]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = {}
    for n in (1, 2):
        launcher = [sys.executable] if n == 1 else [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
        run_dir = tmp / f"run{n}"
        began = time.perf_counter()
        subprocess.run([*launcher, *args, "--out", str(run_dir)], env=env, check=True,
                       capture_output=True)
        wall = time.perf_counter() - began
        from ttspo.trainer.loop import read_metrics

        rates = [m["pairs_per_second"] for m in read_metrics(run_dir) if "pairs_per_second" in m]
        out[n] = (statistics.median(rates[3:]), wall)
    print(f"part 2: {steps} steps, 4 pairs per process, load {os.getloadavg()[0]:.1f}")
    print("| processes | pairs/s (median) | wall time (start-up included) |")
    print("|---|---|---|")
    for n, (rate, wall) in out.items():
        print(f"| {n} | {rate:.1f} | {wall:.1f} s |")
    print(f"scaling 2 vs 1: {out[2][0] / out[1][0]:.2f}x pairs/s")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--size", choices=sorted(SIZES), default="default")
    p.add_argument("--skip-dist", action="store_true")
    a = p.parse_args()
    part1(a.steps, a.trials, a.size)
    if not a.skip_dist:
        part2(a.steps)


if __name__ == "__main__":
    main()
