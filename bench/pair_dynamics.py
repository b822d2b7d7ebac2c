"""What recording pair dynamics costs a DPO run: train.pair_dynamics on vs off.

    .venv/bin/python bench/pair_dynamics.py [--runs 5] [--steps 60] [--pairs 2000]

A synthetic store (bench/dpo_data.py's: groups of 2, 8 codebooks x 24 frames) and a
Pareto set of PAIRS pairs; ``train_dpo`` of the small tiny policy (d_model 32: the
smallest step, so the recording's share is the largest it gets), 4 pairs per step,
reference free, a validation of 16 pairs every 10 steps and a checkpoint every 20
(each checkpoint commits the rows: one Lance commit). On and off interleaved RUNS
times, so the machine's load hits both alike; each run's wall time of the whole
``train_dpo`` call and its median pairs_per_second over steps after the 5th. Prints
the medians and the ratio on / off (the baseline, measured in the same run).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dpo_data import TINY, make_store  # noqa: E402  (bench/: a sibling script)


def one_run(store, out: Path, *, steps: int, on: bool) -> tuple[float, float]:
    from ttspo.trainer.dpo.loop import read_metrics, train_dpo
    from ttspo.trainer.run.config import load_config

    o = {f"policy.model.{k}": v for k, v in TINY.items()}
    o.update({"train.max_steps": steps, "train.val_every": 10, "train.checkpoint_every": 20,
              "train.progress": False, "train.tensorboard": False, "loss.reference_free": True,
              "train.pair_dynamics": on, "optim.lr": 1e-3})
    start = time.perf_counter()
    train_dpo(store, "prefs", cfg=load_config(None, [f"{k}={v}" for k, v in o.items()]),
              out=out, echo=lambda *_: None)
    wall = time.perf_counter() - start
    rates = [m["pairs_per_second"] for m in read_metrics(out) if "pairs_per_second" in m]
    return wall, statistics.median(rates[5:])


def main() -> None:
    import torch

    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--pairs", type=int, default=2000)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        store = make_store(Path(tmp) / "store", args.pairs, frames=24)
        got = {True: [], False: []}
        for r in range(args.runs):
            for on in (False, True):
                got[on].append(one_run(store, Path(tmp) / f"run{r}-{int(on)}",
                                       steps=args.steps, on=on))
        rows = store.open("pair_dynamics").count_rows()
    med = {on: (statistics.median(w for w, _ in v), statistics.median(p for _, p in v))
           for on, v in got.items()}
    print(f"{args.runs} runs each of {args.steps} steps, {args.pairs} pairs; "
          f"{rows} pair_dynamics rows written in all")
    for on in (False, True):
        print(f"pair_dynamics={str(on).lower():5}  wall {med[on][0]:.2f} s  "
              f"pairs/s {med[on][1]:.1f}")
    print(f"ratio on/off: wall {med[True][0] / med[False][0]:.3f}, "
          f"pairs/s {med[True][1] / med[False][1]:.3f}")


if __name__ == "__main__":
    main()
