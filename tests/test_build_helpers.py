"""Shared helpers for the preference-set tests: small generations tables made by hand.

(No tests here; pytest imports it as a module of the tests folder.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import pyarrow as pa

from ttspo.builder.core.schemas import GEN, GENERATIONS_SCHEMA
from ttspo.builder.core.store import Store, make_lineage

# One generation: (cer, ssim) or (cer, ssim, duration) or (cer, ssim, duration, invalid)
Point = Sequence[Any]


def gen_rows(groups: Sequence[Sequence[Point]], run: str = "r", first_group: int = 0,
             files: Path | None = None) -> list[dict[str, Any]]:
    """Rows of `generations`: group g is prompt p{g}, its samples are consecutive lines."""
    rows = []
    line = 0
    for offset, points in enumerate(groups):
        g = first_group + offset
        for i, point in enumerate(points):
            cer, ssim = point[0], point[1]
            duration = point[2] if len(point) > 2 else 5.0
            invalid = bool(point[3]) if len(point) > 3 else False
            audio = f"{files or '/data'}/{run}_{line}.wav"
            rows.append({
                GEN.generation_id: f"{run}:{line}", GEN.run: run, GEN.prompt_id: f"p{g}",
                GEN.group_id: f"{run}:g{g}", GEN.group_index: g, GEN.sample_index: i,
                GEN.manifest_line: line, GEN.text: f"text number {g}",
                GEN.record_type: "challenging" if g % 2 == 0 else "regular",
                GEN.context_audio_filepath: f"{files or '/data'}/ctx{g}.wav",
                GEN.context_audio_duration: 4.0,
                GEN.audio_filepath: audio, GEN.codes_path: audio[:-4] + "_codes.pt",
                GEN.duration: duration, GEN.sample_rate: 22050,
                GEN.cer: 1.0 if invalid else cer, GEN.wer: None if cer is None else min(1.0, 2 * cer),
                GEN.ssim: 0.0 if invalid else ssim,
                GEN.pred_transcript: "<INVALID>" if invalid else f"said {g}",
                GEN.gt_transcript: f"text number {g}", GEN.invalid: invalid,
            })
            line += 1
    return rows


def gen_table(groups: Sequence[Sequence[Point]], run: str = "r", first_group: int = 0,
              files: Path | None = None) -> pa.Table:
    return pa.Table.from_pylist(gen_rows(groups, run, first_group, files), schema=GENERATIONS_SCHEMA)


def make_store(path: Path, groups: Sequence[Sequence[Point]], run: str = "r", **kw) -> Store:
    store = Store(path)
    store.write("generations", gen_table(groups, run, **kw), GENERATIONS_SCHEMA,
                make_lineage("test-ingest", {"run": run}))
    return store


def add_run(store: Store, groups: Sequence[Sequence[Point]], run: str, first_group: int = 0) -> int:
    return store.write("generations", gen_table(groups, run, first_group), GENERATIONS_SCHEMA,
                       make_lineage("test-ingest", {"run": run}))


# A few groups with clear preferences, reused by several tests.
BASIC = [
    [(0.0, 0.90), (0.05, 0.80), (0.10, 0.70), (0.30, 0.40)],
    [(0.01, 0.85), (0.02, 0.60), (0.20, 0.50), (0.40, 0.30)],
    [(0.0, 0.95), (0.0, 0.80), (0.15, 0.60), (0.25, 0.55)],
    [(0.005, 0.70), (0.10, 0.75), (0.30, 0.20), (0.50, 0.10)],
    [(0.0, 0.88), (0.03, 0.70), (0.06, 0.65), (0.09, 0.50)],
]
