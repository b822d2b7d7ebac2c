"""ttspo's DPO step vs NeMo's MagpieTTSModelOfflinePO training step, same model, batch, weights.

    .venv/bin/python bench/nemo_dpo.py [--pairs 4] [--frames 120] [--rounds 4] [--steps 3]

Both sides train the same tiny MagpieTTS (tests/nemo_models.py, built from a config
and saved as .nemo) on the same pairs, from the same weights, with Adam at the same
lr and DPO beta:

* ttspo: ``trainer.loop.pair_step`` through the NeMo policy adapter: chosen and
  rejected collated into ONE batch, ONE policy forward, reference log-probs from a
  cache (what ``ttspo train precompute-ref`` stores; computed here once, untimed),
  policy dropout as asked (0), backward, optimizer step;
* NeMo: ``MagpieTTSModelOfflinePO.training_step`` on ``MagpieTTSDatasetDPO``-shaped
  batches: policy chosen, policy rejected, reference chosen, reference rejected (four
  forwards; the reference is a second full model), backward, optimizer step.

Throughput: rounds alternate ``--steps`` ttspo steps and ``--steps`` NeMo steps in
this process (so machine load hits both alike); the figure is the median per-step
time of each side's rounds, and the ratio NeMo / ttspo (target >= 1.25).
Peak memory: each side runs again in its own fresh (spawned) process, which builds
its models, then runs the steps; the figure is that process's peak RSS (VmHWM:
weights, reference, activations, allocator) minus its RSS just before building the
models, so NeMo's second model counts and the shared import does not. On a GPU,
read torch.cuda.max_memory_allocated instead (not measured here: no GPU).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # nemo_models: the tiny models the tests build

BETA, LR = 0.01, 1e-4


def rss_kb(field: str = "VmRSS") -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def make_pairs(n: int, frames: int, seed: int = 0):
    """N pairs as store rows (text, text or audio context codes, codes) and NeMo batches."""
    import numpy as np

    from ttspo.builder.core.schemas import GEN
    from ttspo.trainer.policy.base import CONTEXT_CODES

    rng = np.random.default_rng(seed)
    chosen, rejected = [], []
    for i in range(n):
        text = "the quick brown fox jumps over the lazy dog and keeps running far away"
        context = rng.integers(0, 256, (8, 80)) if i % 2 == 0 else None
        for side, length in ((chosen, frames - i), (rejected, frames - 2 * i - 5)):
            side.append({GEN.generation_id: f"g{i}-{len(side)}", GEN.text: text,
                         GEN.context_text: None if context is not None else "a calm voice",
                         CONTEXT_CODES: context, GEN.codes: rng.integers(0, 256, (8, length))})
    return chosen, rejected


def build(paths: dict, side: str):
    """ttspo: the adapter (+ cached reference log-probs); nemo: MagpieTTSModelOfflinePO."""
    import torch

    if side == "ttspo":
        from ttspo.trainer.policy.nemo.load import load_nemo

        return load_nemo(str(paths["magpie"]))  # dropout 0, as asked
    import nemo_models
    from nemo.collections.tts.models.magpietts_preference_optimization import MagpieTTSModelOfflinePO

    po = nemo_models.build_magpie(paths["codec"], cls=MagpieTTSModelOfflinePO, dpo_beta=BETA,
                                  reference_model_ckpt_path=str(paths["ref"]))
    po.load_state_dict(torch.load(paths["ref"], weights_only=True)["state_dict"], strict=False)  # the same weights
    return po


class TtspoSide:
    def __init__(self, policy, chosen, rejected):
        import numpy as np
        import torch

        from ttspo.trainer.run.config import load_config
        from ttspo.trainer.dpo.data import Pairs
        from ttspo.trainer.policy.base import sequence_logps
        from ttspo.trainer.dpo.ref import RefCache

        n = len(chosen)
        self.pairs = Pairs(set_name="bench", set_version=1, generations_version=1,
                           prompts_version=None, pair_ids=[f"p{i}" for i in range(n)],
                           split=["train"] * n, chosen=chosen, rejected=rejected,
                           chosen_reward=np.ones(n), rejected_reward=np.zeros(n))
        self.cfg = load_config(None, [f"loss.beta={BETA}", f"optim.lr={LR}"])
        self.policy = policy.train()
        with torch.no_grad():  # precompute-ref, once and untimed (eval mode, as ttspo runs it)
            policy.eval()
            logps = sequence_logps(policy(policy.collate(chosen + rejected))).numpy()
            policy.train()
        self.cache = RefCache(sha256="bench", chosen=logps[:n], rejected=logps[n:],
                              index={f"p{i}": i for i in range(n)})
        self.opt = torch.optim.Adam([p for p in policy.parameters() if p.requires_grad], lr=LR)

    def step(self) -> float:
        from ttspo.trainer.dpo.loop import pair_step

        loss, _ = pair_step(self.policy, self.policy, None, self.cache, pairs=self.pairs,
                            idx=list(range(len(self.pairs))), cfg=self.cfg)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return float(loss.detach())


def nemo_batches(policy, chosen, rejected) -> dict:
    """The batches MagpieTTSDatasetDPO makes of the pairs (int32 codes, as from an export)."""
    import torch

    out = {}
    for name, rows, reward in (("chosen", chosen, 1.0), ("rejected", rejected, 0.0)):
        b = dict(policy.collate(rows))
        b["audio_codes"] = b["audio_codes"].to(torch.int32)
        b["rewards"] = torch.full((len(rows),), reward)
        out[name] = b
    return out


class NemoSide:
    def __init__(self, po, batch):
        import torch

        self.po, self.batch = po.train(), batch
        self.opt = torch.optim.Adam([p for p in po.parameters() if p.requires_grad], lr=LR)

    def step(self) -> float:
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):  # NeMo prints per forward
            loss = self.po.training_step(self.batch, 0)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return float(loss.detach())


def memory_child(paths, args, side, batches, queue):
    import nemo.collections.tts.models  # noqa: F401  the import is not what we measure
    import torch

    torch.set_num_threads(1)
    before = rss_kb()
    if side == "ttspo":
        run = TtspoSide(build(paths, "ttspo"), *make_pairs(args.pairs, args.frames))
    else:  # NeMo's batches come collated from the parent: no adapter in this process
        run = NemoSide(build(paths, "nemo"), batches)
    for _ in range(args.steps + 1):
        run.step()
    queue.put((side, (rss_kb("VmHWM") - before) / 1024))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--no-memory", action="store_true")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    import nemo_models

    tmp = Path(tempfile.mkdtemp(prefix="ttspo-bench-nemo-"))
    paths = {"codec": nemo_models.save_codec(tmp / "codec.nemo")}
    paths["magpie"] = nemo_models.save_magpie(paths["codec"], tmp / "magpie.nemo")
    from ttspo.trainer.policy.nemo.load import load_nemo

    torch.save({"state_dict": load_nemo(str(paths["magpie"])).model.state_dict()}, tmp / "ref.ckpt")
    paths["ref"] = tmp / "ref.ckpt"

    policy = build(paths, "ttspo")
    chosen, rejected = make_pairs(args.pairs, args.frames)
    batches = nemo_batches(policy, chosen, rejected)
    run = {"ttspo": TtspoSide(policy, chosen, rejected), "nemo": NemoSide(build(paths, "nemo"), batches)}
    first = {name: side.step() for name, side in run.items()}  # warm-up; both log 2 at step 1
    print(f"first losses (policy == reference, dropout 0): ttspo {first['ttspo']:.6f}, "
          f"NeMo {first['nemo']:.6f}")
    times = {name: [] for name in run}
    for _ in range(args.rounds):
        for name, side in run.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                side.step()
            times[name].append((time.perf_counter() - start) / args.steps)
    per_step = {name: statistics.median(t) for name, t in times.items()}
    print(f"{args.pairs} pairs x ~{args.frames} frames, {args.rounds} rounds x {args.steps} steps, "
          "1 thread")
    for name in ("ttspo", "nemo"):
        print(f"  {name:5s}: {per_step[name] * 1000:8.1f} ms/step  "
              f"{args.pairs / per_step[name]:7.2f} pairs/s")
    print(f"throughput ttspo / NeMo: {per_step['nemo'] / per_step['ttspo']:.2f}x (target >= 1.25)")
    if args.no_memory:
        return
    ctx = mp.get_context("spawn")  # Lance/NeMo are not fork-safe; fresh processes
    queue = ctx.Queue()
    peaks = {}
    for side in ("ttspo", "nemo"):  # one after the other: they do not share the cores
        proc = ctx.Process(target=memory_child, args=(paths, args, side, batches, queue))
        proc.start()
        name, mib = queue.get()
        proc.join()
        peaks[name] = mib
    print(f"peak memory above the import (fresh process each): ttspo {peaks['ttspo']:.1f} MiB, "
          f"NeMo {peaks['nemo']:.1f} MiB ({peaks['nemo'] / peaks['ttspo']:.2f}x)")


if __name__ == "__main__":
    main()
