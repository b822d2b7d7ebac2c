"""Prosody: pitch variability and speaking rate, so speech made monotone or rushed shows.

- ``f0_std_st``: the standard deviation of F0 in semitones over the voiced frames, from
  Praat's autocorrelation pitch tracker (Boersma 1993; ``Sound: To Pitch (ac)`` through
  ``parselmouth``) with a 10 ms step and a 75..600 Hz range: Praat's own defaults for
  speech, wide enough for a low male and a high female voice without knowing the
  speaker (TTS samples any voice), and Praat's other settings at their defaults
  (silence 0.03, voicing 0.45, octave cost 0.01, octave-jump cost 0.35, voiced/unvoiced
  cost 0.14). Semitones make the spread comparable across voices: a 2-semitone spread
  is as lively in a bass as in a soprano. Fewer than ``MIN_VOICED_FRAMES`` voiced
  frames (0.2 s) is None: a spread of a handful of frames measures the tracker, not the
  voice.
- ``speech_rate``: letters and digits of ``text`` per second of speech, the speech
  seconds from silero-vad (:mod:`ttspo.builder.scoring.vad`), so leading, trailing and
  inner silence do not slow it. Spaces and punctuation are not counted (they are not
  spoken, and normalising a text must not change its rate). None without text or
  without speech.
"""

from __future__ import annotations

import numpy as np

from ttspo.builder.scoring.audio import MODEL_SR, resample
from ttspo.builder.scoring.scores import no_signal, Scores, package_version, unscored
from ttspo.builder.scoring.vad import VadMetric

PITCH_SETTINGS = {"time_step": 0.01, "pitch_floor": 75.0, "pitch_ceiling": 600.0}
MIN_VOICED_FRAMES = 20  # 0.2 s of voicing at the 10 ms step


def voiced_f0(wav16k: np.ndarray) -> np.ndarray:
    """F0 in Hz of each voiced frame (Praat's autocorrelation tracker)."""
    import parselmouth

    sound = parselmouth.Sound(wav16k.astype(np.float64), sampling_frequency=MODEL_SR)
    f0 = sound.to_pitch_ac(**PITCH_SETTINGS).selected_array["frequency"]
    return f0[f0 > 0]


def f0_spread(f0: np.ndarray) -> tuple[float | None, str | None]:
    """(standard deviation in semitones, None) or (None, why not)."""
    if f0.size < MIN_VOICED_FRAMES:
        return None, f"{f0.size} voiced frames, fewer than {MIN_VOICED_FRAMES}"
    semitones = 12.0 * np.log2(f0 / np.median(f0))
    return float(np.std(semitones)), None


def spoken_characters(text: str) -> int:
    """Letters and digits in TEXT: what a speaking rate counts."""
    return sum(ch.isalnum() for ch in text)


def rate(text: str | None, speech_seconds: float) -> tuple[float | None, str | None]:
    """(characters per speech second, None) or (None, why not)."""
    if text is None or not text.strip():
        return None, "no text"
    chars = spoken_characters(text)
    if chars == 0:
        return None, "text has no letters or digits"
    if speech_seconds <= 0:
        return None, "no speech found"
    return chars / speech_seconds, None


class ProsodyMetric:
    """F0 spread (semitones) and speaking rate (characters per speech second)."""

    metrics = ("f0_std_st", "speech_rate")

    def __init__(self, *, device: str = "cpu", vad: VadMetric | None = None) -> None:
        # VAD: another VadMetric's loaded model to share (the pitch tracker has no device)
        self.vad = vad if vad is not None else VadMetric(device=device)
        self.name = f"praat-parselmouth:{package_version('praat-parselmouth')}+{self.vad.name}"

    def score(self, audio: np.ndarray, sr: int, *, text: str | None = None) -> Scores:
        wav = resample(np.asarray(audio, dtype=np.float32), sr, MODEL_SR)
        if (why := no_signal(wav)) is not None:
            return unscored(self.metrics, why)
        spread, spread_why = f0_spread(voiced_f0(wav))
        speech = sum(end - start for start, end in self.vad.segments(wav)) / MODEL_SR
        speed, speed_why = rate(text, speech)
        return Scores({"f0_std_st": spread, "speech_rate": speed},
                      {"f0_std_st": spread_why, "speech_rate": speed_why})
