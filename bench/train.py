"""DPO step speed and memory: ttspo's step against a naive one; 2 torchrun processes vs 1.

    .venv/bin/python bench/train.py [--steps 20] [--trials 3] [--size default|wide] [--skip-dist]

Part 1, the same TinyCodecLM and the same batch (pairs with an audio-context
prefix, as the demo's), one torch thread:
  ttspo  chosen and rejected in ONE forward (chunk(2) after), reference log-probs
         from the cache (tensors, as ref_logps gives them): one policy in memory.
  naive  separate chosen and rejected forwards, plus a live reference model (two
         more forwards under no_grad), as NeMo's offline PO step: two models.
Each variant runs in its own spawned process, trials interleaved; steps/s is the
best trial's, per CPU-second of the (single-threaded) process (robust on a shared
machine, where wall time mostly measures the neighbours) and per wall second.
Memory, two ways: the peak bytes of live tensors over building the models and
3 steps (the profiler's memory timeline: exact, the same on every run, what
``torch.cuda.max_memory_allocated`` reports on a GPU), and the peak RSS from
before the models were built to the last step, minus the RSS at that point
(models, optimizer state, activations, but also the code pages the first step
touches and what the C allocator keeps), in a run of its own with
MALLOC_MMAP_THRESHOLD_ fixed so that freed activations go back to the OS. Target: ttspo >= 1.25x and a lower peak.

Part 2: ``ttspo train dpo`` on 1 process against ``torchrun
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

SIZES = {  # TinyConfig's default size (~2M parameters), a wider one (~7M), a large one (~40M)
    "default": {"d_model": 128, "n_heads": 4, "encoder_layers": 2, "decoder_layers": 3,
                "d_ffn": 512, "max_text_len": 256, "max_frames": 512},
    "wide": {"d_model": 256, "n_heads": 4, "encoder_layers": 2, "decoder_layers": 4,
             "d_ffn": 1024, "max_text_len": 256, "max_frames": 512},
    # where the reference model's weights outweigh the activations, as in real models
    "large": {"d_model": 512, "n_heads": 8, "encoder_layers": 4, "decoder_layers": 8,
              "d_ffn": 2048, "max_text_len": 256, "max_frames": 512},
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


def make_step(name: str, size: str):
    """The variant's models, optimizer and one-step function, on the bench batch."""
    import torch

    from ttspo.trainer.dpo import losses as L
    from ttspo.trainer.policy.base import load_policy, sequence_logps

    torch.manual_seed(0)
    policy = load_policy("tiny", config=SIZES[size])
    chosen, rejected = rows(0)
    if name == "ttspo":
        batch = policy.collate(chosen + rejected)
        with torch.no_grad():  # what ref_logps holds: computed once, outside the loop
            ref_c, ref_r = sequence_logps(policy(batch)).chunk(2)
        ref_model = None
    else:
        batch_c, batch_r = policy.collate(chosen), policy.collate(rejected)
        torch.manual_seed(0)
        ref_model = load_policy("tiny", config=SIZES[size]).eval().requires_grad_(False)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-4)

    def step() -> None:
        if ref_model is None:
            pi_c, pi_r = sequence_logps(policy(batch)).chunk(2)
            rc, rr = ref_c, ref_r
        else:
            pi_c, pi_r = sequence_logps(policy(batch_c)), sequence_logps(policy(batch_r))
            with torch.no_grad():
                rc, rr = sequence_logps(ref_model(batch_c)), sequence_logps(ref_model(batch_r))
        x = L.PairLogps(pi_chosen=pi_c.sum(-1), pi_rejected=pi_r.sum(-1), ref_chosen=rc.sum(-1),
                        ref_rejected=rr.sum(-1))
        loss, _ = L.combine(x, losses=[("dpo", 1.0)], beta=0.1)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def run_variant(name: str, steps: int, size: str, queue) -> None:
    """Speed: steps per CPU-second and per wall second; peak RSS above the imports."""
    import torch

    torch.set_num_threads(1)
    base = rss_mb()  # libraries loaded, no model yet
    reset_peak()  # from here: models + optimizer + steps
    step = make_step(name, size)
    for _ in range(3):
        step()
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    queue.put((name, steps / seconds, peak_mb() - base, steps / cpu))


def tensor_peak(name: str, size: str, queue) -> None:
    """Peak bytes of live CPU tensors (what torch.cuda.max_memory_allocated reports
    on a GPU) over building the models and optimizer and 3 steps, from the
    profiler's memory timeline: every allocation and free torch makes, so the
    figure is exact and the same on every run, unlike RSS, which also counts the
    code pages the first step loads and what the C allocator keeps."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(1)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                 with_stack=True) as prof:
        step = make_step(name, size)
        for _ in range(3):
            step()
    live = peak = 0
    for _, action, _, size_bytes in prof._memory_profile().timeline:  # sorted by time
        if action.name == "CREATE":
            live += size_bytes
        elif action.name == "DESTROY":
            live -= size_bytes
        peak = max(peak, live)
    queue.put((name, peak / 2**20))


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def reset_peak() -> None:
    """Linux: writing 5 to clear_refs resets the process's peak RSS (VmHWM)."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def in_child(target, *args):
    """Run TARGET(*args, queue) in a spawned process; its one queued result."""
    ctx = mp.get_context("spawn")  # Lance and torch threads are not fork-safe
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    while queue.empty():  # a child that crashed must not leave us waiting
        if not proc.is_alive() and queue.empty():
            raise SystemExit(f"{target.__name__}{args[:1]} failed (exit {proc.exitcode})")
        time.sleep(0.2)
    got = queue.get()
    proc.join()
    return got


def part1(steps: int, trials: int, size: str) -> None:
    results: dict[str, list[tuple[float, float, float]]] = {"ttspo": [], "naive": []}
    for _ in range(trials):
        for name in ("naive", "ttspo"):
            results[name].append(in_child(run_variant, name, steps, size)[1:])
    tensors = {name: in_child(tensor_peak, name, size)[1] for name in ("naive", "ttspo")}
    # RSS in its own runs: glibc's malloc raises its mmap threshold as large blocks
    # are freed (up to 32 MB), after which freed activations stay in the heap and
    # RSS measures the allocator's history more than the step. A fixed threshold
    # (read by the spawned child at start) returns large frees to the OS; not in
    # the speed runs, where it would add page faults to every step.
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
    try:
        rss = {name: in_child(run_variant, name, 3, size)[2] for name in ("naive", "ttspo")}
    finally:
        del os.environ["MALLOC_MMAP_THRESHOLD_"]
    best = {n: max(r[0] for r in v) for n, v in results.items()}
    per_cpu = {n: max(r[2] for r in v) for n, v in results.items()}
    print(f"part 1: size {size}, {PAIRS} pairs, context {CONTEXT_FRAMES} + target ~{TARGET_FRAMES} frames, "
          f"{steps} steps x {trials} trials, load {os.getloadavg()[0]:.1f}")
    print("| step | steps per CPU-s (best) | steps/s wall (best) | wall, all trials "
          "| peak tensor memory | peak RSS above imports |")
    print("|---|---|---|---|---|---|")
    for n in ("naive", "ttspo"):
        print(f"| {n} | {per_cpu[n]:.2f} | {best[n]:.2f} | {', '.join(f'{r[0]:.2f}' for r in results[n])} "
              f"| {tensors[n]:.1f} MB | {rss[n]:.0f} MB |")
    ratio, wall = per_cpu["ttspo"] / per_cpu["naive"], best["ttspo"] / best["naive"]
    lower = tensors["ttspo"] < tensors["naive"]
    print(f"ttspo / naive: {ratio:.2f}x per CPU-second, {wall:.2f}x wall (target >= {TARGET}x: "
          f"{'met' if ratio >= TARGET else 'NOT met'}); peak tensor memory {tensors['ttspo']:.1f} vs "
          f"{tensors['naive']:.1f} MB, {tensors['ttspo'] / tensors['naive']:.2f}x "
          f"({'lower: met' if lower else 'NOT lower'}); RSS {rss['ttspo']:.0f} vs {rss['naive']:.0f} MB")


def part2(steps: int) -> None:
    from train_helpers import SET, pattern_store, tiny_overrides

    tmp = Path(tempfile.mkdtemp())
    store = pattern_store(tmp / "store", groups=160, frames=60, val_size=16)
    opts = tiny_overrides(**{"train.max_steps": steps, "train.val_every": 0,
                             "train.checkpoint_every": 0, "data.pairs_per_device": 4,
                             **{f"policy.model.{k}": v for k, v in MODEL.items()},
                             "policy.model.max_frames": 128})
    args = ["-m", "ttspo.builder.cli", "--store", str(store.root), "train", "dpo", SET,
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
        from ttspo.trainer.dpo.loop import read_metrics

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
