"""Sampling speed of the tiny policy: KV cache against the same sampling without it.

    .venv/bin/python bench/generate.py [--batch 4] [--frames 400] [--threads 1]

One model (the default TinyConfig, seeded), one batch of prompts with audio
contexts of 40 frames, one Sampling (temperature 0.8, top-k 80, CFG 2.0), run
once with ``use_kv_cache=True`` and once with False in this process. EOS is
forced off (the EOS logit of every head is pushed to -1e4), so every sample runs
exactly FRAMES decoder steps, as a 400-frame (18.6 s) utterance would. Prints
generations per second of each and the ratio (target >= 5x), and checks that both
runs sampled the same codes.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
import torch


from ttspo.builder.core.schemas import GEN
from ttspo.trainer.policy.base import CONTEXT_CODES, Sampling
from ttspo.trainer.policy.tiny import TinyCodecLM, TinyConfig

TARGET = 5.0
TEXTS = ["Please call Stella and ask her to bring these things with her from the store.",
         "The birch canoe slid on the smooth planks.",
         "Glue the sheet to the dark blue background.",
         "It's easy to tell the depth of a well."]


def prompts(batch: int, context_frames: int) -> list[dict]:
    rng = np.random.default_rng(0)
    return [{GEN.text: TEXTS[i % len(TEXTS)], GEN.context_text: None,
             CONTEXT_CODES: rng.integers(0, 256, (8, context_frames)).astype(np.int16)}
            for i in range(batch)]


def timed_generate(model, batch, sampling) -> tuple[float, float, torch.Tensor, torch.Tensor]:
    """(wall seconds, CPU seconds of this process, codes, lengths)."""
    wall, cpu = time.perf_counter(), time.process_time()
    codes, lengths = model.generate(batch, sampling, torch.Generator().manual_seed(0))
    return time.perf_counter() - wall, time.process_time() - cpu, codes, lengths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--frames", type=int, default=400)
    parser.add_argument("--context-frames", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = TinyConfig()
    model = TinyCodecLM(config).eval()
    with torch.no_grad():  # force every sample to run the full FRAMES steps
        model.heads.bias.view(config.num_codebooks, config.vocab)[:, config.eos] = -1e4
    batch = model.collate(prompts(args.batch, args.context_frames), with_targets=False)
    sampling = Sampling(temperature=0.8, top_k=80, cfg_scale=2.0, max_steps=args.frames)
    params = sum(p.numel() for p in model.parameters())
    print(f"tiny policy {params / 1e6:.2f}M parameters, batch {args.batch}, "
          f"{args.context_frames} context frames, {args.frames} frames forced, "
          f"CFG on, {args.threads} thread(s)")
    runs = []
    for cache in (True, False):
        wall, cpu, codes, lengths = timed_generate(model, batch, replace(sampling, use_kv_cache=cache))
        assert (lengths == args.frames).all(), lengths
        runs.append((wall, cpu, codes))
        print(f"  kv cache {'on ' if cache else 'off'}: {wall:7.2f} s wall ({cpu:7.2f} s CPU), "
              f"{args.batch / wall:7.3f} generations/s, {args.batch * args.frames / wall:7.1f} frames/s")
    print(f"  same codes with and without the cache: {torch.equal(runs[0][2], runs[1][2])}")
    ratio = runs[1][0] / runs[0][0]
    print(f"  ratio (generations/s, wall): {ratio:.1f}x, by CPU time {runs[1][1] / runs[0][1]:.1f}x "
          f"(target >= {TARGET:.0f}x: {'met' if ratio >= TARGET else 'NOT met'})")


if __name__ == "__main__":
    main()
