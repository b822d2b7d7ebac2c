"""Silence and truncation from a voice-activity model: silero-vad (``silero-vad``).

Metrics, in seconds except the ratio, from the speech segments silero-vad finds:

- ``lead_silence``: before the first segment; ``trail_silence``: after the last one
  (the whole duration when there is no speech). A failed sample padded with silence
  shows a long ``trail_silence``, so silence cannot buy a better CER unseen;
- ``max_pause``: the longest gap between two segments (0 with one segment; None
  without speech);
- ``speech_seconds``: the total length of the segments; ``speech_ratio``: that over
  the duration (0..1). Silent audio has 0 speech: a measured 0, not a missing value.

Settings (``VAD_SETTINGS``), chosen for TTS output rather than for cutting recordings:
speech above probability 0.5 (silero's default; it leaves speech below 0.35); segments
shorter than 100 ms are not speech (a click or a breath; one short word is longer);
gaps shorter than 100 ms are not pauses (stop closures and word joins); no padding
(silero pads 30 ms by default to cut audio safely; here the silence is the
measurement). The model decides per 512-sample frame at 16 kHz, so every time is
known to within 32 ms.

The model is ``silero_vad/data/silero_vad.jit``, a TorchScript file inside the
silero-vad wheel, whose hash uv.lock pins: not a file from outside, and
``torch.jit.load`` runs TorchScript, not pickled Python. (The wheel's safetensors copy
of the weights comes with a tinygrad model only, not a torch one.)
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager

import numpy as np

from ttspo.builder.scoring.audio import MODEL_SR, resample
from ttspo.builder.scoring.scores import Scores, package_version, unscored

FRAME_SAMPLES = 512  # silero-vad's window at 16 kHz
FRAME_SECONDS = FRAME_SAMPLES / MODEL_SR  # 0.032 s: the resolution of every time here
VAD_SETTINGS = {"threshold": 0.5, "min_speech_duration_ms": 100,
                "min_silence_duration_ms": 100, "speech_pad_ms": 0}


def load_vad(device: str = "cpu"):
    """silero-vad's TorchScript model from its wheel, on DEVICE."""
    import torch

    threads = torch.get_num_threads()
    try:
        from silero_vad import load_silero_vad  # its import calls torch.set_num_threads(1)
    finally:
        torch.set_num_threads(threads)  # for the whole process: put it back
    with warnings.catch_warnings():  # the loader's own: torch deprecates jit.load, and
        warnings.simplefilter("ignore", DeprecationWarning)  # importlib.resources.path
        return load_silero_vad().to(device)


@contextmanager
def one_thread():
    """torch on one thread for the block, then as before. silero-vad runs its model once
    per 32 ms frame on 512 samples: more threads only add hand-offs (on this 2-core
    machine, busy, 2 threads cost 11-20x the CPU time of 1: bench/metrics.py)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def speech_segments(model, wav16k: np.ndarray, device: str = "cpu") -> list[tuple[int, int]]:
    """(start, end) sample indices at 16 kHz of each speech segment in WAV16K."""
    import torch
    from silero_vad import get_speech_timestamps

    with torch.no_grad(), one_thread():
        found = get_speech_timestamps(torch.from_numpy(wav16k).to(device), model,
                                      sampling_rate=MODEL_SR, **VAD_SETTINGS)
    return [(int(s["start"]), int(s["end"])) for s in found]


def silence_metrics(segments: list[tuple[int, int]], n_samples: int) -> Scores:
    """The metrics of SEGMENTS (16 kHz samples) in N_SAMPLES of audio."""
    duration = n_samples / MODEL_SR
    if not segments:
        return Scores({"lead_silence": duration, "trail_silence": duration, "max_pause": None,
                       "speech_ratio": 0.0, "speech_seconds": 0.0},
                      {"max_pause": "no speech found"})
    speech = sum(end - start for start, end in segments) / MODEL_SR
    gaps = [b[0] - a[1] for a, b in zip(segments, segments[1:])]
    return Scores({"lead_silence": segments[0][0] / MODEL_SR,
                   "trail_silence": (n_samples - segments[-1][1]) / MODEL_SR,
                   "max_pause": max(gaps, default=0) / MODEL_SR,
                   "speech_ratio": speech / duration, "speech_seconds": speech})


class VadMetric:
    """Leading/trailing silence, longest pause and speech share, from silero-vad."""

    metrics = ("lead_silence", "trail_silence", "max_pause", "speech_ratio", "speech_seconds")

    def __init__(self, *, device: str = "cpu") -> None:
        self.device = device
        self.name = f"silero-vad:{package_version('silero-vad')}"
        self._model = None

    def segments(self, wav16k: np.ndarray) -> list[tuple[int, int]]:
        """Speech segments of 16 kHz audio; none in silence (without running the model)."""
        if not np.any(wav16k):
            return []
        if self._model is None:
            self._model = load_vad(self.device)
        return speech_segments(self._model, wav16k, self.device)

    def score(self, audio: np.ndarray, sr: int, *, text: str | None = None) -> Scores:
        wav = resample(np.asarray(audio, dtype=np.float32), sr, MODEL_SR)
        if wav.size == 0:
            return unscored(self.metrics, "empty audio")
        return silence_metrics(self.segments(wav), wav.size)
