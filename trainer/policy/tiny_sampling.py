"""Autoregressive sampling for TinyCodecLM: KV cache on or off, temperature, top-k, CFG.

It works on the model and batch it is given (``ttspo.trainer.policy.tiny`` imports it, not
the other way round): the model's ``encode``, ``memory_kv``, ``decode`` and
``config``, the batch's tensors and ``drop_conditioning``.

The two paths compute the same numbers in a different order. With the cache the
prefix (context frames + BOS) runs once and then each step feeds one frame; without
it every step reruns the decoder over everything so far and keeps the last position.
Both draw their noise identically (one uniform per codebook per row per step, from
the row's own generator), so they give the same tokens for the same seed.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from ttspo.builder.core.errors import InputError
from ttspo.trainer.policy.base import Sampling
from ttspo.trainer.policy.samples import SEED_BOUND
from ttspo.trainer.policy.tiny_blocks import KVCache

TinyCodecLM = TinyBatch = Any  # (annotations only: see the module docstring)


def unconditional(batch: TinyBatch) -> TinyBatch:
    """BATCH with text and context dropped: the encoder reads BOS SEP EOS, no prefix."""
    return batch.drop_conditioning(torch.ones(batch.size, dtype=torch.bool, device=batch.text.device))


def stack(a: TinyBatch, b: TinyBatch) -> TinyBatch:
    """Rows of A then rows of B (the inputs sampling reads; no targets, no seeds)."""
    return replace(a, codes=None, code_lens=None, seeds=None,
                   **{k: torch.cat([getattr(a, k), getattr(b, k)])
                      for k in ("text", "text_mask", "prefix", "prefix_mask")})


def row_generators(batch: TinyBatch, generator: torch.Generator) -> list[torch.Generator]:
    """One CPU generator per row: its sample_seed, else a seed drawn from GENERATOR in order."""
    seeds = batch.seeds if batch.seeds is not None else torch.randint(
        0, SEED_BOUND, (batch.size,), generator=generator)
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def pick(logits: torch.Tensor, sampling: Sampling, uniform: torch.Tensor,
         allowed: torch.Tensor) -> torch.Tensor:
    """Tokens [B, C] from LOGITS [B, C, V] and UNIFORM [B, C] in [0, 1) by inverse CDF."""
    logits = logits.float().masked_fill(~allowed, float("-inf"))
    if sampling.temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits / sampling.temperature
    if sampling.top_k > 0 and sampling.top_k < logits.shape[-1]:
        kth = logits.topk(sampling.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    cdf = torch.softmax(logits, dim=-1).cumsum(dim=-1)
    # right=True: the first token whose cumulative mass exceeds u, so a token of
    # zero probability (masked, outside the top k) is never picked, even for u = 0.
    index = torch.searchsorted(cdf, (uniform * cdf[..., -1]).unsqueeze(-1), right=True)
    return index.squeeze(-1).clamp(max=logits.shape[-1] - 1)


@torch.no_grad()
def generate(model: TinyCodecLM, batch: TinyBatch, sampling: Sampling,
             generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes [B, C, T] int64, PAD after each row's length; lengths [B] int64)."""
    cfg, b, steps = model.config, batch.size, sampling.max_steps
    context = int(batch.prefix_mask.sum(1).max()) if batch.prefix_mask.numel() else 0
    if context + steps > cfg.max_frames:
        raise InputError(f"{context} context frames + max_steps {steps} exceed the policy's "
                         f"max_frames {cfg.max_frames}")
    gens = row_generators(batch, generator)
    guided = sampling.cfg_scale != 1.0
    full = stack(batch, unconditional(batch)) if guided else batch
    was_training = model.training
    model.eval()  # sampling never uses dropout
    try:
        decoder = Decoder(model, full, steps, sampling.use_kv_cache)
        device = batch.text.device
        allowed = torch.ones(cfg.vocab, dtype=torch.bool, device=device)
        allowed[[cfg.bos, cfg.pad]] = False
        lengths = torch.full((b,), steps, dtype=torch.long)
        done = torch.zeros(b, dtype=torch.bool)
        for step in range(steps):
            logits = decoder.next_logits()  # [B', C, V]
            if guided:
                cond, uncond = logits[:b], logits[b:]
                logits = uncond + sampling.cfg_scale * (cond - uncond)
            uniform = torch.stack([torch.rand(cfg.num_codebooks, generator=g) for g in gens])
            frame = pick(logits, sampling, uniform.to(device), allowed)
            ended = (frame == cfg.eos).any(dim=1).cpu() & ~done
            lengths[ended], done = step, done | ended
            if bool(done.all()):
                break
            decoder.feed(torch.cat([frame, frame]) if guided else frame)
    finally:
        model.train(was_training)
    codes = decoder.frames[:b, :, decoder.start:decoder.start + int(lengths.max())]
    steps_idx = torch.arange(codes.shape[2], device=codes.device)
    codes = codes.masked_fill(steps_idx[None, None, :] >= lengths.to(codes.device)[:, None, None], cfg.pad)
    return codes.clone(), lengths.to(codes.device)


class Decoder:
    """The growing frame sequence of a batch and, with the cache on, its KV caches."""

    def __init__(self, model: TinyCodecLM, batch: TinyBatch, steps: int, use_cache: bool):
        cfg = model.config
        self.model, self.use_cache = model, use_cache
        b, c, p = batch.prefix.shape
        self.start = p + 1  # column of the first sampled frame
        self.frames = batch.prefix.new_full((b, c, self.start + steps), cfg.pad)
        self.frames[:, :, :p] = batch.prefix
        self.frames[:, :, p] = cfg.bos
        self.valid = torch.ones((b, self.start + steps), dtype=torch.bool, device=self.frames.device)
        self.valid[:, :p] = batch.prefix_mask
        self.offset = (~batch.prefix_mask).sum(1, keepdim=True)  # left pads per row
        self.key_mask = self.valid[:, None, None, :]  # what a single new frame may attend to
        self.length = self.start  # frames fed so far
        self.memory_mask = batch.text_mask[:, None, None, :]
        self.memory_kv = model.memory_kv(model.encode(batch.text, batch.text_mask))
        self.caches = None
        self.cached = 0  # frames already in the caches
        if use_cache:
            heads = cfg.n_heads
            self.caches = [KVCache.empty(b, heads, self.start + steps, cfg.d_model // heads,
                                         like=self.memory_kv[0][0]) for _ in model.decoder]

    def feed(self, frame: torch.Tensor) -> None:
        self.frames[:, :, self.length] = frame
        self.length += 1

    def next_logits(self) -> torch.Tensor:
        """Logits [B, C, V] for the frame after the ones fed so far."""
        if self.use_cache and self.cached == self.length - 1:  # one new (real) frame
            last = self.length - 1
            logits = self.model.decode(self.frames[:, :, last:self.length], last - self.offset,
                                       self.key_mask[..., :self.length], self.memory_kv,
                                       memory_mask=self.memory_mask, caches=self.caches)
            self.cached = self.length
            return logits[:, :, -1]
        first = self.cached if self.use_cache else 0
        cols = torch.arange(first, self.length, device=self.frames.device)
        positions = (cols[None, :] - self.offset).clamp(min=0)
        valid = self.valid[:, :self.length]
        causal = cols[:, None] >= torch.arange(self.length, device=cols.device)[None, :]
        own = cols[:, None] == torch.arange(self.length, device=cols.device)[None, :]
        mask = (causal & (valid[:, None, :] | own))[:, None]  # [B, 1, new, all]
        logits = self.model.decode(self.frames[:, :, first:self.length], positions, mask,
                                   self.memory_kv, memory_mask=self.memory_mask, caches=self.caches)
        self.cached = self.length
        return logits[:, :, -1]
