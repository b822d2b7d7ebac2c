"""The GPU check (issue 21): the tiny policy's DPO step, KV-cache sampling and a GRPO
update on one GPU, with torch and ttspo's source only. Run it through bench/gpu.sh.

    bash bench/gpu.sh                 # on the GPU machine: fails without CUDA
    bash bench/gpu.sh --allow-cpu     # a smoke check anywhere (figures mean nothing)

The lent machine has Python and torch and nothing else (no pyarrow, Lance, numpy...),
so everything here is synthetic and in memory: random texts and codes in the shape
of the built-in codec's (8 codebooks x 256), collated by the policy's own collate,
no store. Parts, each warmed up, then timed to a step count or a time box, each with
its peak GPU memory (``torch.cuda.max_memory_allocated`` since the part began):

- ``dpo fp32`` / ``dpo bf16``: trainer/dpo/forward.py's ONE forward over chosen +
  rejected (``pair_pass``), the DPO loss (trainer/dpo/losses.py) against cached
  reference log-probs (computed once, as ``ref_logps`` holds them), backward, clip,
  AdamW: the DPO loop's ``pair_step`` + ``optimizer_step``. Pairs/s; bf16/fp32.
- ``sample kv`` / ``sample no-cache``: ``policy.generate`` with NeMo-like options
  (temperature 0.7, top-k 80, CFG 2.5: the decoder runs 2 x rows), EOS pushed off as
  bench/generate.py does so every sample runs ``--frames`` frames after a
  ``--context``-frame audio context. Samples/s and frames/s; kv/no-cache.
- ``grpo``: trainer/grpo/loop.py's ``update`` on synthetic rollouts (advantages and
  group validity made up, a frozen reference for the KL term), fp32 as the loop
  runs it, plus the optimizer step. Rollouts/s.

On the CPU check: before each part's timed steps, one step runs under a torch
dispatch mode that records every kernel whose tensors all lie on the CPU. Allowed:
0-dim tensors (AdamW keeps its step counts on the CPU) and, in sampling only, the
per-row noise and stop flags (at most rows x codebooks elements: tiny_sampling draws
each row's noise from its own CPU generator by design, so a seed gives the same
tokens on any device). Anything else, or any parameter, gradient or optimizer state
off the GPU after a part, fails the run (exit 1). ``--allow-cpu`` on a machine
without CUDA runs everything on the CPU and reports what the check found instead.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ttspo.builder.core.columns import GEN
from ttspo.trainer.dpo import losses as L
from ttspo.trainer.dpo.forward import collate_pair_rows, pair_pass
from ttspo.trainer.grpo.losses import GRPO_LOSSES, token_entropy
from ttspo.trainer.policy import codec as codec_mod
from ttspo.trainer.policy.base import CONTEXT_CODES, SAMPLE_SEED, Sampling, token_logps
from ttspo.trainer.policy.tiny import TinyCodecLM, TinyConfig


class CpuKernels(TorchDispatchMode):
    """Records the ops whose tensors (inputs and outputs) all lie on the CPU, beyond
    ALLOWED elements: a copy between devices is a transfer, not a CPU kernel."""

    def __init__(self, allowed: int):
        super().__init__()
        self.allowed, self.seen, self.allowed_seen = allowed, [], 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        tensors = [t for t in tree_flatten((args, kwargs or {}, out))[0] if isinstance(t, torch.Tensor)]
        if tensors and all(t.device.type == "cpu" for t in tensors):
            if max(t.numel() for t in tensors) <= self.allowed:
                self.allowed_seen += 1
            else:
                self.seen.append(str(func.overloadpacket.__name__))
        return out


class ShapeCodec:
    """Where numpy is missing (the built-in codec's weights are an .npz): the codec's
    sizes, which are all the policy's forward and sampling read. Never encodes."""

    num_codebooks, codebook_size = codec_mod.NUM_CODEBOOKS, codec_mod.CODEBOOK_SIZE
    sample_rate, frame_rate, fingerprint = codec_mod.SAMPLE_RATE, codec_mod.FRAME_RATE, "shape-only"


@dataclass
class Part:
    name: str
    unit: str  # what a step processes: pairs, samples, rollouts
    per_step: int
    seconds: list[float]
    peak_mb: float
    extra: str = ""

    @property
    def rate(self) -> float:
        return self.per_step / statistics.median(self.seconds)


class Bench:
    def __init__(self, args: argparse.Namespace, device: torch.device):
        self.args, self.device, self.problems = args, device, []
        self.gen = torch.Generator().manual_seed(args.seed)
        try:
            codec, self.codec_name = codec_mod.Codec.load(), "built-in"
        except ModuleNotFoundError:
            codec, self.codec_name = ShapeCodec(), "shape only (no numpy here)"
        torch.manual_seed(args.seed)
        cfg = TinyConfig(d_model=args.d_model, n_heads=args.heads, encoder_layers=args.layers,
                         decoder_layers=args.layers, d_ffn=4 * args.d_model,
                         max_frames=args.context + 1 + args.frames + 1)
        self.policy = TinyCodecLM(cfg, codec=codec).to(device).train()
        self.reference = copy.deepcopy(self.policy).eval().requires_grad_(False)
        self.optimizer = torch.optim.AdamW(self.policy.parameters(), lr=1e-5)

    # ----------------------------------------------------------- synthetic rows
    def row(self, i: int, *, with_codes: bool = True) -> dict[str, Any]:
        a, c = self.args, self.policy.config
        words = torch.randint(97, 123, (torch.randint(40, 120, (1,), generator=self.gen).item(),),
                              generator=self.gen)
        row = {GEN.generation_id: f"synthetic {i}", GEN.text: bytes(words.tolist()).decode(),
               GEN.context_text: None, SAMPLE_SEED: i,
               CONTEXT_CODES: torch.randint(0, c.codebook_size, (c.num_codebooks, a.context),
                                            generator=self.gen)}
        if with_codes:
            frames = int(torch.randint(a.frames // 2, a.frames + 1, (1,), generator=self.gen))
            row[GEN.codes] = torch.randint(0, c.codebook_size, (c.num_codebooks, frames),
                                           generator=self.gen)
        return row

    def pair_batches(self, n: int) -> list[Any]:
        b = self.args.pairs
        return [collate_pair_rows(self.policy, [self.row(k * b + i) for i in range(b)],
                                  [self.row(10**6 + k * b + i) for i in range(b)]).to(self.device)
                for k in range(n)]

    # ------------------------------------------------------------------- steps
    def optimizer_step(self) -> None:
        torch.nn.utils.clip_grad_norm_(self.policy.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def dpo(self, precision: str) -> Part:
        batches = self.pair_batches(4)
        with torch.no_grad():  # the cached reference: computed once, read every step
            refs = [pair_pass(self.reference, b)[:2] for b in batches]
        cast = (lambda: torch.autocast(self.device.type, dtype=torch.bfloat16)) \
            if precision == "bf16" else contextlib.nullcontext  # as the loop's autocast()

        def step(k: int) -> None:
            batch, (ref_c, ref_r) = batches[k % 4], refs[k % 4]
            with cast():
                out = pair_pass(self.policy, batch)
                x = L.PairLogps(pi_chosen=L.sequence_logp(out.chosen.float()),
                                pi_rejected=L.sequence_logp(out.rejected.float()),
                                ref_chosen=L.sequence_logp(ref_c), ref_rejected=L.sequence_logp(ref_r))
                loss, _ = L.combine(x, losses=[("dpo", 1.0)], beta=0.01)
            loss.backward()
            self.optimizer_step()

        return self.part(f"dpo {precision}", "pairs", self.args.pairs, step, allowed=1)

    def sample(self, kv: bool) -> Part:
        rows = [self.row(i, with_codes=False) for i in range(self.args.samples)]
        batch = self.policy.collate(rows, with_targets=False).to(self.device)
        cfg = self.policy.config
        bias = self.policy.heads.bias.data.view(cfg.num_codebooks, cfg.vocab)
        saved = bias[:, cfg.eos].clone()
        bias[:, cfg.eos] = -1e4  # EOS off (as bench/generate.py): every sample runs --frames frames
        sampling = Sampling(temperature=0.7, top_k=80, cfg_scale=2.5, max_steps=self.args.frames,
                            use_kv_cache=kv)
        frames: list[int] = []

        def step(k: int) -> None:
            _, lengths = self.policy.generate(batch, sampling, torch.Generator().manual_seed(k))
            frames.append(int(lengths.sum()))

        part = self.part(f"sample {'kv' if kv else 'no-cache'}", "samples", len(rows), step,
                         allowed=len(rows) * self.policy.config.num_codebooks,
                         steps=self.args.steps if kv else max(1, self.args.steps // 4))
        bias[:, cfg.eos] = saved  # the policy as it was, for the GRPO part
        part.extra = f"{statistics.median(frames[-len(part.seconds):]) / statistics.median(part.seconds):.0f} frames/s"
        return part

    def grpo(self) -> Part:
        n = self.args.samples
        batch = self.policy.collate([self.row(i) for i in range(n)]).to(self.device)
        advantages = torch.randn(n, generator=self.gen).to(self.device)
        keep = (torch.arange(n) % 4 != 3).to(self.device)  # a quarter of the groups invalid

        def step(k: int) -> None:  # trainer/grpo/loop.py's update, then the optimizer
            tf = self.policy(batch)
            logps = token_logps(tf)
            with torch.no_grad():
                ref = token_logps(self.reference.forward_teacher(batch))
            out = GRPO_LOSSES["grpo"](logps, advantages, tf.mask, keep, ref_logps=ref,
                                      entropy=token_entropy(tf.logits.detach()), kl_beta=0.01)
            out.loss.backward()
            self.optimizer_step()

        return self.part("grpo fp32", "rollouts", n, step, allowed=1)

    # ------------------------------------------------------------- measuring
    def part(self, name: str, unit: str, per_step: int, step: Callable[[int], None], *,
             allowed: int, steps: int | None = None) -> Part:
        a, cuda = self.args, self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        for k in range(a.warmup):
            step(k)
        with CpuKernels(allowed) as guard:  # one untimed step: the mode slows every op
            step(a.warmup)
        self.check(name, guard)
        seconds: list[float] = []
        box = time.perf_counter() + a.seconds
        for k in range(steps or a.steps):
            if cuda:
                torch.cuda.synchronize()
            began = time.perf_counter()
            step(a.warmup + 1 + k)
            if cuda:
                torch.cuda.synchronize()
            seconds.append(time.perf_counter() - began)
            if time.perf_counter() > box and len(seconds) >= 3:
                break
        self.check_devices(name)
        peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else float("nan")
        return Part(name, unit, per_step, seconds, peak)

    def check(self, name: str, guard: CpuKernels) -> None:
        if guard.seen:
            ops = sorted(set(guard.seen))
            self.problems.append(f"{name}: {len(guard.seen)} CPU kernels ({', '.join(ops[:8])}"
                                 f"{' ...' if len(ops) > 8 else ''})")
        print(f"  {name}: checked step: {len(guard.seen)} CPU kernels, "
              f"{guard.allowed_seen} allowed (scalars / per-row noise)", flush=True)

    def check_devices(self, name: str) -> None:
        want = self.device.type
        off = [n for n, p in self.policy.named_parameters() if p.device.type != want]
        off += [f"grad of {n}" for n, p in self.policy.named_parameters()
                if p.grad is not None and p.grad.device.type != want]
        off += [f"optimizer {k}" for state in self.optimizer.state.values()
                for k, v in state.items() if k != "step" and v.device.type != want]
        if off:
            self.problems.append(f"{name}: off the {want}: {', '.join(off[:5])}")


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--allow-cpu", action="store_true",
                   help="run without CUDA and do not fail on CPU kernels (a smoke check)")
    p.add_argument("--pairs", type=int, default=16, help="pairs per DPO step")
    p.add_argument("--samples", type=int, default=32, help="rows per sampling call / GRPO update")
    p.add_argument("--frames", type=int, default=200, help="target frames (max), sampling steps")
    p.add_argument("--context", type=int, default=60, help="context frames per row")
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--layers", type=int, default=4, help="encoder and decoder layers each")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=40, help="timed steps per part (at most)")
    p.add_argument("--seconds", type=float, default=25.0, help="time box per part")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse(argv)
    if torch.cuda.is_available():
        device = torch.device("cuda")
        where = f"{torch.cuda.get_device_name(0)} (torch {torch.__version__}, CUDA {torch.version.cuda})"
    elif args.allow_cpu:
        device, where = torch.device("cpu"), f"CPU (torch {torch.__version__}): SMOKE CHECK ONLY"
    else:
        print(f"gpu.py: no CUDA device (torch {torch.__version__}, cuda built "
              f"{torch.version.cuda}); --allow-cpu runs the smoke check on the CPU", file=sys.stderr)
        return 1
    bench = Bench(args, device)
    n = sum(p.numel() for p in bench.policy.parameters())
    import ttspo

    print(f"device: {where}\nttspo: {Path(ttspo.__file__).parent} (-> {Path(ttspo.__file__).resolve().parent})\n"
          f"policy: tiny, {n / 1e6:.2f} M parameters, {vars(args)}\n"
          f"codec: {bench.codec_name}", flush=True)
    began = time.perf_counter()
    parts = [bench.dpo("fp32"), bench.dpo("bf16"), bench.sample(True), bench.sample(False),
             bench.grpo()]
    print(f"\n| part | {'/'.join(['pairs', 'samples', 'rollouts'])} per s | steps | median step ms "
          "| peak GPU MB | |\n|---|---|---|---|---|---|")
    for p in parts:
        print(f"| {p.name} | {p.rate:.1f} {p.unit}/s | {len(p.seconds)} | "
              f"{1000 * statistics.median(p.seconds):.1f} | {p.peak_mb:.0f} | {p.extra} |")
    by = {p.name: p.rate for p in parts}
    print(f"\nbf16 / fp32 pairs/s: {by['dpo bf16'] / by['dpo fp32']:.2f}; "
          f"kv / no-cache samples/s: {by['sample kv'] / by['sample no-cache']:.2f}; "
          f"total {time.perf_counter() - began:.0f} s")
    if bench.problems:
        print("\n".join(["", "ran on the CPU:", *bench.problems]), file=sys.stderr)
        if not (args.allow_cpu and device.type == "cpu"):
            return 1
        print("(allowed: --allow-cpu on a machine without CUDA)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
