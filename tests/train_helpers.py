"""Shared helpers for the trainer tests: a store whose preference set has a learnable pattern.

Chosen codes are random tokens from the low quarter of each codebook, rejected codes
random tokens from the top half: a policy that learns to favour low tokens prefers
the chosen side of pairs it has never seen (held-out pairs share no codes with
training pairs). (No tests here.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from ttspo.builder.core.schemas import GEN, GENERATIONS_SCHEMA
from ttspo.builder.core.store import Store, make_lineage
from ttspo.builder.sets.build import build_set

SET = "prefs"
# A TinyCodecLM well under 2M parameters that trains in seconds on a CPU.
TINY = {"d_model": 32, "n_heads": 2, "encoder_layers": 1, "decoder_layers": 1, "d_ffn": 64,
        "max_text_len": 64, "max_frames": 32}
WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima".split()


def pattern_rows(groups: int, frames: int, seed: int, no_codes: tuple[int, ...] = ()) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for g in range(groups):
        text = " ".join(rng.choice(WORDS, 3))
        chosen = rng.integers(0, 64, (8, frames))
        rejected = rng.integers(128, 256, (8, frames))
        for i, (codes, cer, ssim) in enumerate(((chosen, 0.0, 0.9), (rejected, 0.3, 0.5))):
            line = 2 * g + i
            rows.append({
                GEN.generation_id: f"r:{line}", GEN.run: "r", GEN.prompt_id: f"p{g}",
                GEN.group_id: f"r:g{g}", GEN.group_index: g, GEN.sample_index: i,
                GEN.manifest_line: line, GEN.text: text, GEN.record_type: "regular",
                GEN.context_text: f"speaker {g % 3}", GEN.duration: 5.0, GEN.sample_rate: 22050,
                GEN.codes: None if line in no_codes else codes.astype(np.int16).tolist(),
                GEN.cer: cer, GEN.wer: cer, GEN.ssim: ssim, GEN.invalid: False,
            })
    return rows


def pattern_store(path: Path, groups: int = 64, frames: int = 8, val_size: int = 16,
                  seed: int = 0, no_codes: tuple[int, ...] = ()) -> Store:
    store = Store(path)
    table = pa.Table.from_pylist(pattern_rows(groups, frames, seed, no_codes),
                                 schema=GENERATIONS_SCHEMA)
    store.write("generations", table, GENERATIONS_SCHEMA, make_lineage("test", {}))
    build_set(store, "pareto", SET, {"val_size": val_size, "seed": 0})
    return store


def tiny_overrides(**extra) -> list[str]:
    """`-o` overrides for a quick run of the tiny policy (sizes and a CPU-sized lr)."""
    base = {f"policy.model.{k}": v for k, v in TINY.items()}
    base.update({"optim.lr": 3e-3, "loss.beta": 0.5, "train.progress": False,
                 "train.tensorboard": False})
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def log_2_tolerance(beta: float, logp_chosen: float, logp_rejected: float) -> float:
    """How far a first DPO step's loss may lie from log 2 (a policy equal to its
    reference) when the reference was computed in other batch shapes: each pair's
    margin over beta is within the tie rule's TIE_RTOL of the four log-probs' magnitudes
    (the policy's and, equal to them, the reference's), and -logsigmoid(beta*d) =
    log 2 - beta*d/2 + O(d^2)."""
    from ttspo.trainer.dpo.losses import TIE_RTOL

    return beta / 2 * TIE_RTOL * 2 * (abs(logp_chosen) + abs(logp_rejected))


def torchrun_error(stderr: str, keep: int = 2000) -> str:
    """What a failed torchrun run printed, for an assertion message: the start (a rank's
    own last words, such as a C++ abort's reason, come before torchrun's report) and
    the end (the report: which rank, which signal)."""
    if len(stderr) <= 2 * keep:
        return stderr
    return f"{stderr[:keep]}\n[...]\n{stderr[-keep:]}"
