"""GRPO step speed: the time split (generate, decode, score, update) and rollouts per
second, 1 process against 2 under torchrun, in one run.

    .venv/bin/python bench/grpo.py [--steps 4] [--samples 4] [--frames 20]

Both runs train the same tiny policy on the same 4 prompts with real scoring
(pocketsphinx CER + resemblyzer SSIM on the decoded audio) and the same global
batch: 2 prompts x N samples per step, as 1 process x 2 prompts or 2 ranks x 1
prompt. Each run is the real command (``ttspo train grpo`` /
``torchrun --nproc-per-node 2 -m ttspo.builder.cli -- ... train grpo``), so model loading and
rendezvous are paid as a user pays them; the per-step figures are read from the
run's metrics.jsonl, leaving out step 1 (first calls load the scoring models).
The ratio is 2-process rollouts/s over 1-process rollouts/s, measured in this run;
the load average says how busy the 2 shared cores were.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from grpo_helpers import TINY, make_prompts  # noqa: E402
from ttspo.builder.core.store import Store  # noqa: E402

PHASES = ("generate", "decode", "score", "update")


def run(nproc: int, root: Path, args: argparse.Namespace) -> dict[str, float]:
    store = Store(root / f"st{nproc}")
    make_prompts(store, 4)
    out = root / f"run{nproc}"
    head = ([str(Path(sys.executable).parent / "torchrun"), "--nproc-per-node", str(nproc), "-m",
             "ttspo.builder.cli", "--"] if nproc > 1 else [sys.executable, "-m", "ttspo.builder.cli"])
    overrides = [f"policy.model.{k}={v}" for k, v in TINY.items()] + [
        f"grpo.prompts_per_step={2 // nproc}", f"grpo.n_generations_per_item={args.samples}",
        f"grpo.max_decoder_steps={args.frames}", "grpo.min_valid_codes_len=2",
        f"train.max_steps={args.steps}", "train.val_every=0", "train.checkpoint_every=0",
        "train.progress=false", "train.tensorboard=false", "optim.lr=1e-3"]
    cmd = [*head, "--store", str(store.root), "train", "grpo", "--out", str(out)]
    for o in overrides:
        cmd += ["-o", o]
    began = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    wall = time.perf_counter() - began
    if done.returncode:
        sys.exit(done.stderr[-2000:])
    steps = [json.loads(line) for line in (out / "metrics.jsonl").open()][1:]
    mean = lambda key: sum(s[key] for s in steps) / len(steps)
    return {"wall": wall, **{p: mean(f"time/{p}") for p in PHASES},
            "rollouts_per_second": mean("rollouts_per_second")}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--frames", type=int, default=20)
    args = p.parse_args()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        results = {n: run(n, Path(tmp), args) for n in (1, 2)}
    print(f"{args.steps} steps, 2 prompts x {args.samples} samples per step, <= {args.frames} "
          f"frames; load average {load:.1f} -> {os.getloadavg()[0]:.1f}")
    print("| processes | wall | generate | decode | score | update | rollouts/s |")
    print("|---|---|---|---|---|---|---|")
    for n, r in results.items():
        print(f"| {n} | {r['wall']:.1f} s | " + " | ".join(f"{r[p]:.2f} s" for p in PHASES)
              + f" | {r['rollouts_per_second']:.2f} |")
    ratio = results[2]["rollouts_per_second"] / results[1]["rollouts_per_second"]
    print(f"rollouts/s, 2 processes vs 1: {ratio:.2f}x")


if __name__ == "__main__":
    main()
