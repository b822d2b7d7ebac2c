"""Throughput of the metric backends (issue 22 item 7): CPU seconds per audio second.

    .venv/bin/python bench/metrics.py [--repeat 2] [--threads 1]

For each backend: its one-time load plus first call, then CPU seconds (this process,
all its threads: ``time.process_time``) and wall seconds per second of audio, on two
sets of the same real speech (the demo corpus's 11 espeak-ng reference recordings,
16 kHz): ``short``, the recordings as they are (~2 s each, a TTS sample's length), and
``long``, the same audio joined into ~15 s clips. Distill-MOS pads a clip under
7.68 s to one 7.68 s crop and scores a longer clip as crops 1 s apart, so its cost per
audio second depends on the clip's length; the others are close to linear. The
baseline is pocketsphinx ASR (what ``ttspo score`` already runs for CER), measured in the
same run: each backend's CPU ratio to it is printed. Scoring ranks run one torch
thread (``--threads 1``, the default); ``--threads 2`` shows what the models gain from
a second core.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

from ttspo.builder.scoring import cosine, load_asr, load_quality, load_speaker  # noqa: E402
from ttspo.builder.scoring.audio import MODEL_SR, read_audio  # noqa: E402
from ttspo.builder.scoring.mos import MosMetric  # noqa: E402
from ttspo.builder.scoring.prosody import ProsodyMetric  # noqa: E402
from ttspo.builder.scoring.vad import VAD_SETTINGS, VadMetric, load_vad  # noqa: E402

CORPUS = REPO / "trainer" / "demo" / "corpus"
LONG_SECONDS = 15.0


def clips() -> dict[str, list[tuple[np.ndarray, str]]]:
    """(audio, text) per clip: the references as they are, and joined into ~15 s clips."""
    import json

    records = [json.loads(line) for line in (CORPUS / "reference_audios.jsonl").read_text().splitlines()]
    short = [(read_audio(CORPUS / r["reference_audio_filepath"], MODEL_SR)[0], r["text"]) for r in records]
    long, audio, text = [], [], []
    for a, t in short * 2:
        audio.append(a)
        text.append(t)
        if sum(map(len, audio)) >= LONG_SECONDS * MODEL_SR:
            long.append((np.concatenate(audio), " ".join(text)))
            audio, text = [], []
    return {"short": short, "long": long}


def measured(fn) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of FN()."""
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - cpu, time.perf_counter() - wall


def unguarded_vad(backend: VadMetric, audio: np.ndarray, text: str) -> None:
    """silero-vad's own loop at the process's torch thread count (what the backend's
    one_thread() avoids): the row that says why it is there."""
    import torch
    from silero_vad import get_speech_timestamps

    if backend._model is None:
        backend._model = load_vad()
    with torch.no_grad():
        get_speech_timestamps(torch.from_numpy(audio), backend._model, sampling_rate=MODEL_SR,
                              **VAD_SETTINGS)


def backends(context: np.ndarray) -> list[tuple[str, object, object]]:
    """(label, loader, score(backend, audio, text)) for each backend, baseline first."""
    return [
        ("asr pocketsphinx (baseline)", lambda: load_asr("pocketsphinx"),
         lambda b, a, t: b.transcribe(a, MODEL_SR)),
        ("ssim resemblyzer", lambda: load_speaker("resemblyzer"),
         lambda b, a, t: cosine(b.embed(a, MODEL_SR), context)),
        ("pesq wb (vs itself)", lambda: load_quality("pesq"),
         lambda b, a, t: b.score(a, MODEL_SR, a, MODEL_SR)),
        ("mos", MosMetric, lambda b, a, t: b.score(a, MODEL_SR)),
        ("vad", VadMetric, lambda b, a, t: b.score(a, MODEL_SR)),
        ("vad without its one-thread guard", VadMetric, unguarded_vad),
        ("prosody (its own VAD included)", ProsodyMetric, lambda b, a, t: b.score(a, MODEL_SR, text=t)),
    ]


def bench(repeat: int) -> list[dict]:
    sets = clips()
    first = sets["short"][0]
    context = None
    rows = []
    for label, loader, score in backends(context):
        cpu0, wall0 = time.process_time(), time.perf_counter()
        backend = loader()
        if label.startswith("ssim"):  # real runs embed each context recording once
            context = backend.embed(read_audio(CORPUS / "contexts" / "f2.wav", MODEL_SR)[0], MODEL_SR)
            score = (lambda ctx: lambda b, a, t: cosine(b.embed(a, MODEL_SR), ctx))(context)
        score(backend, *first)
        row = {"backend": f"{label} `{backend.name}`",
               "load": (time.process_time() - cpu0, time.perf_counter() - wall0)}
        for name, items in sets.items():
            seconds = repeat * sum(len(a) for a, _ in items) / MODEL_SR
            cpu, wall = measured(lambda: [score(backend, a, t) for _ in range(repeat) for a, t in items])
            row[name] = (cpu / seconds, wall / seconds, seconds, len(items[0][0]) / MODEL_SR)
        rows.append(row)
        print(render(row, rows[0]), flush=True)
    return rows


def render(row: dict, base: dict) -> str:
    cells = [row["backend"], f"{row['load'][0]:.1f} / {row['load'][1]:.1f} s"]
    for name in ("short", "long"):
        cpu, wall, _, _ = row[name]
        cells += [f"{cpu:.4f}", f"{wall:.4f}", f"{cpu / base[name][0]:.2f}x"]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    print(f"torch threads {args.threads}, cores {os.cpu_count()}, load avg {os.getloadavg()[0]:.1f}")
    print("| backend | load + first call, CPU / wall | short: CPU/audio s | wall/audio s | CPU vs ASR "
          "| long: CPU/audio s | wall/audio s | CPU vs ASR |")
    print("|---|---|---|---|---|---|---|---|")
    rows = bench(args.repeat)
    short, long = rows[0]["short"], rows[0]["long"]
    print(f"audio: short {short[2]:.1f} s ({short[2] / args.repeat / 11:.1f} s a clip on average), "
          f"long {long[2]:.1f} s (clips of ~{long[3]:.0f} s); load avg at the end "
          f"{os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
