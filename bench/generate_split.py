"""Where `ttspo generate --score` spends its time: sampling, decoding, scoring, writing.

    .venv/bin/python bench/generate_split.py [--prompts 12] [--samples 2] [--max-steps 80]

Builds a default-size TinyCodecLM (seeded, untrained: its samples end at a random
EOS, as a young policy's do), a prompts table (3 in 4 text contexts, 1 in 4 the
fixture context recording) and runs `generate --score` (pocketsphinx CER/WER,
resemblyzer SSIM) in this process into a fresh store. Prints the split, each
stage's share of the four, generations per second, and the ratio of the summed
stages to the wall time (what the split leaves out: loading, planning).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent
CONTEXT_WAV = ROOT / "tests" / "fixtures" / "audio" / "context.wav"


def prompts_table(n: int):
    from ttspo.builder.core.schemas import PROMPT, PROMPTS_SCHEMA

    rows = []
    for i in range(n):
        audio = i % 4 == 3
        rows.append({PROMPT.prompt_id: f"p{i}", PROMPT.text: f"please say the number {i} slowly",
                     PROMPT.record_type: "challenging" if i % 2 == 0 else "regular",
                     PROMPT.context_type: "audio" if audio else "text",
                     PROMPT.context_text: None if audio else "a calm voice",
                     PROMPT.context_audio_filepath: str(CONTEXT_WAV) if audio else None,
                     PROMPT.context_audio_duration: 2.0 if audio else None, PROMPT.position: i})
    return pa.Table.from_pylist(rows, schema=PROMPTS_SCHEMA), PROMPTS_SCHEMA


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=12)
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--max-steps", type=int, default=80)
    args = ap.parse_args()

    import torch

    import ttspo
    from ttspo.builder.core.store import make_lineage
    from ttspo.trainer.policy.tiny import TinyCodecLM

    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        checkpoint = Path(tmp) / "policy.pt"
        TinyCodecLM().save(checkpoint)
        store = ttspo.Store(Path(tmp) / "store")
        table, schema = prompts_table(args.prompts)
        store.core.write("prompts", table, schema, make_lineage("bench", {}))
        t = time.perf_counter()
        result = store.generate(run="bench", checkpoint=checkpoint, samples=args.samples,
                                max_steps=args.max_steps, top_k=80, seed=0,
                                audio_dir=Path(tmp) / "audio", score=True)
        wall = time.perf_counter() - t
        frames = store.sql("SELECT sum(codes_len) AS f, sum(duration) AS d FROM generations")
    total = sum(result.seconds.values())
    print(f"generate --score: {result.rows} generations ({args.prompts} prompts x "
          f"{args.samples}), {int(frames['f'][0])} frames, {frames['d'][0]:.1f} s of audio")
    for stage, seconds in result.seconds.items():
        print(f"  {stage:<9} {seconds:7.2f} s  {seconds / total:6.1%}")
    print(f"  stages    {total:7.2f} s = {total / wall:.2f} x wall {wall:.2f} s "
          f"(the rest: loading the policy and the scorers, planning)")
    print(f"  {result.rows / wall:.2f} generations/s end to end")


if __name__ == "__main__":
    main()
