"""Reading audio for scoring: soundfile to read, torchaudio to resample (and
:func:`wav_bytes`, the writer of the wav bytes :func:`read_audio_bytes` reads).

Audio is float32 mono throughout. Generations store their audio as a file path
or as a Lance blob (the wav bytes); both go through soundfile. torchaudio.load is
not used because it needs torchcodec.
"""

from __future__ import annotations

import io
import os

import numpy as np
import soundfile as sf

from ttspo.builder.core.errors import InputError, first_line

MODEL_SR = 16000  # every offline model here (and TitaNet, SQUIM, PESQ wb) wants 16 kHz


def _to_mono(data: np.ndarray) -> np.ndarray:
    if data.ndim == 2:
        data = data.mean(axis=1)
    return np.ascontiguousarray(data, dtype=np.float32)


def resample(audio: np.ndarray, sr: int, target_sr: int) -> np.ndarray:
    """AUDIO at TARGET_SR (torchaudio's band-limited sinc resampler)."""
    if sr == target_sr or audio.size == 0:
        return np.asarray(audio, dtype=np.float32)
    import torch
    import torchaudio.functional as F

    out = F.resample(torch.from_numpy(np.asarray(audio, dtype=np.float32)), sr, target_sr)
    return out.numpy().astype(np.float32, copy=False)


def read_audio(path: str | os.PathLike, target_sr: int | None = None) -> tuple[np.ndarray, int]:
    """(float32 mono samples, sample rate) of the file at PATH, resampled if asked."""
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=False)
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise InputError(f"{path}: cannot read audio ({first_line(exc)})") from None
    audio = _to_mono(data)
    if target_sr is not None and target_sr != sr:
        return resample(audio, sr, target_sr), target_sr
    return audio, int(sr)


def read_audio_bytes(data: bytes, target_sr: int | None = None,
                     where: str = "audio blob") -> tuple[np.ndarray, int]:
    """Like :func:`read_audio`, for encoded audio held in memory (a Lance blob)."""
    try:
        samples, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=False)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise InputError(f"{where}: cannot decode audio ({first_line(exc)})") from None
    audio = _to_mono(samples)
    if target_sr is not None and target_sr != sr:
        return resample(audio, sr, target_sr), target_sr
    return audio, int(sr)


def wav_bytes(audio: np.ndarray, sr: int) -> bytes:
    """AUDIO as the bytes of a 16-bit PCM wav file: what generate and GRPO store as a
    wav file or a Lance blob."""
    buffer = io.BytesIO()
    sf.write(buffer, audio, sr, format="WAV", subtype="PCM_16")
    return buffer.getvalue()
