"""Write a small NeMo generation layout, as step 2 of the MagpieTTS workflow leaves it.

- a text-context manifest (JSON lines, each record repeated `group_size` times,
  audio-context and text-context records mixed, as create_text_contextpairs.py
  writes it);
- under GEN_DIR/<subdir>, for each manifest line `i*R + r`: predicted_audioRank{r}_{i}.wav
  (real audio via soundfile), ..._codes.pt (torch.save of int16 [C, T]) and
  ..._metrics.json (NeMo's keys).

Used by the ingest tests and by bench/ingest.py.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

KINDS = (".wav", "_codes.pt", "_metrics.json")


def nemo_name(line: int, ranks: int, kind: int) -> str:
    return f"predicted_audioRank{line % ranks}_{line // ranks}{KINDS[kind]}"


def make_records(n_prompts: int, context_dir: str = "/data/contexts") -> list[dict]:
    """Distinct text-context records: every third one has a text context."""
    records = []
    for p in range(n_prompts):
        text = f"Sentence number {p}, with some words: café {p * 7}."
        if p % 3 == 2:
            records.append({
                "text": text, "record_type": "regular", "duration": 6.0,
                # NeMo puts a dummy (the first audio context) here for text contexts.
                "audio_filepath": f"{context_dir}/ctx_0.wav",
                "target_audio_codes_path": f"{context_dir}/ctx_0_codes.pt",
                "context_text": f"Speaker {p % 4} speaks calmly.",
            })
        else:
            ctx = f"{context_dir}/ctx_{p % 5}.wav"
            records.append({
                "text": text, "record_type": "challenging" if p % 2 else "regular",
                "duration": 6.0, "audio_filepath": ctx, "context_audio_filepath": ctx,
                "context_audio_duration": 3.5 + p % 5,
            })
    return records


def write_manifest(path: Path, records: list[dict], group_size: int) -> list[dict]:
    """Each record repeated group_size times; returns the expanded lines."""
    lines = [r for r in records for _ in range(group_size)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines),
                    encoding="utf-8")
    return lines


def metrics_for(line: int, record: dict, invalid: bool = False, pesq: bool = False) -> dict:
    cer = round(0.01 * (line % 7), 4)
    out = {
        "cer_gt": 1.0 if invalid else cer,
        "wer_gt": 1.0 if invalid else round(cer * 3, 4),
        "duration": 0.2,
        "spk_similarity": 0.0 if invalid else round(0.5 + 0.03 * (line % 11), 4),
        "pred_transcript": "<INVALID>" if invalid else record["text"].lower(),
        "gt_transcript": record["text"].lower(),
    }
    if pesq:
        out["codes_len"] = 40 + line % 9
        out["pesq"] = round(1.5 + 0.1 * (line % 20), 3)
    return out


def write_wav(path: Path, line: int, seconds: float = 0.2, sample_rate: int = 22050) -> None:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    wave = 0.3 * np.sin(2 * math.pi * (180 + 20 * (line % 13)) * t)
    sf.write(str(path), wave.astype(np.float32), sample_rate, subtype="PCM_16")


def codes_for(line: int, codebooks: int = 8, base_frames: int = 20) -> np.ndarray:
    rng = np.random.default_rng(line)
    return rng.integers(0, 2016, size=(codebooks, base_frames + line % 5), dtype=np.int16)


def write_codes(path: Path, codes: np.ndarray) -> None:
    import torch

    torch.save(torch.from_numpy(np.ascontiguousarray(codes)), str(path))


@dataclass
class NemoRun:
    """A written layout: where things are, and what was written."""

    gen_dir: Path
    audio_dir: Path
    manifest: Path
    lines: list[dict]
    ranks: int
    group_size: int
    invalid: set[int] = field(default_factory=set)

    def path(self, line: int, kind: int) -> Path:
        return self.audio_dir / nemo_name(line, self.ranks, kind)

    def wav(self, line: int) -> Path:
        return self.path(line, 0)

    def codes(self, line: int) -> Path:
        return self.path(line, 1)

    def metrics(self, line: int) -> Path:
        return self.path(line, 2)

    def rel(self, line: int, kind: int) -> str:
        """Path relative to GEN_DIR, as ingest messages print it."""
        return str(self.path(line, kind).relative_to(self.gen_dir))


def make_nemo_run(root: Path, n_prompts: int = 3, group_size: int = 4, ranks: int = 2,
                  subdir: str = "T5TTS/version_0/audios", invalid: tuple[int, ...] = (),
                  pesq: bool = False, gen_name: str = "demo") -> NemoRun:
    """Write manifest + generation folder under root; GEN_DIR is root/gen_name."""
    root = Path(root)
    gen_dir = root / gen_name
    audio_dir = gen_dir / subdir
    audio_dir.mkdir(parents=True, exist_ok=True)
    lines = write_manifest(root / "pairs.json", make_records(n_prompts), group_size)
    run = NemoRun(gen_dir, audio_dir, root / "pairs.json", lines, ranks, group_size, set(invalid))
    for line, record in enumerate(lines):
        write_wav(run.wav(line), line)
        write_codes(run.codes(line), codes_for(line))
        metrics = metrics_for(line, record, invalid=line in run.invalid, pesq=pesq)
        run.metrics(line).write_text(json.dumps(metrics, ensure_ascii=False), encoding="utf-8")
    return run
