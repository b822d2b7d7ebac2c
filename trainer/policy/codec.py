"""The built-in codec: log-mel frames quantised by residual VQ, decoded by Griffin-Lim.

A small, real, deterministic audio codec with the shape of NeMo's: int16 codes
``[num_codebooks, frames]`` at about 21.5 frames per second (22050 Hz, hop
1024), 8 codebooks of 256 entries. It lets ttspo's tests, demo and tiny trainer
work on codec tokens of real speech without a NeMo codec checkpoint.

Encoding (numpy only)
    audio -> resampled to 22050 Hz (torchaudio, only if the rate differs) ->
    STFT magnitude (Hann window 2048, hop 1024, centred frames) -> 80 HTK mel
    bins between 0 and 8 kHz (so 16 kHz recordings lose nothing) -> log ->
    standardised per bin -> residual VQ: each of the 8 codebooks quantises the
    residual left by the ones before it (nearest entry, squared distance).
    A signal of n samples (at 22050 Hz) gives ``ceil(n / 1024)`` frames.

Decoding (torch, imported on use)
    summed codebook entries -> log-mel -> mel -> linear magnitude by least
    squares (torchaudio InverseMelScale) -> Griffin-Lim (torchaudio, zero
    phase start, so decoding is deterministic too) -> ``frames * 1024``
    samples at 22050 Hz.

Codebooks are learned by k-means on corpus audio (:func:`fit`; the demo
corpus maker fits the shipped ones) and stored in ``trainer/policy/assets/codec.npz``
as float16 (about 330 kB). Being a mel codec, it keeps spectral envelope and
timing, not phase: decoded audio is intelligible but buzzy. That is enough for
a codec-LM policy to learn from and for a listener to tell what was said.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path

try:
    import numpy as np
except ModuleNotFoundError:  # a torch-only machine (bench/gpu.sh): the sizes below import,
    np = None  # the codec itself (load, encode, decode) needs numpy

SAMPLE_RATE = 22050
HOP_LENGTH = 1024
N_FFT = 2048
N_MELS = 80
F_MIN = 0.0
F_MAX = 8000.0
NUM_CODEBOOKS = 8
CODEBOOK_SIZE = 256
FRAME_RATE = SAMPLE_RATE / HOP_LENGTH  # 21.533 frames per second
LOG_FLOOR = 1e-5  # mel energies are clamped here before the log
GRIFFIN_LIM_ITERS = 32

ASSET_PATH = Path(__file__).resolve().parent / "assets" / "codec.npz"


# ------------------------------------------------------------------ features
def num_frames(num_samples: int, sr: int = SAMPLE_RATE) -> int:
    """Frames the codec makes for NUM_SAMPLES samples at rate SR."""
    n = num_samples if sr == SAMPLE_RATE else int(math.ceil(num_samples * SAMPLE_RATE / sr))
    return max(1, int(math.ceil(n / HOP_LENGTH)))


def mel_filterbank() -> np.ndarray:
    """HTK mel filterbank [n_freqs, n_mels], no normalisation.

    The same matrix as torchaudio's ``melscale_fbanks(..., norm=None,
    mel_scale="htk")``, which InverseMelScale uses when decoding.
    """
    n_freqs = N_FFT // 2 + 1
    freqs = np.linspace(0.0, SAMPLE_RATE / 2, n_freqs)
    to_mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)
    mels = np.linspace(to_mel(F_MIN), to_mel(F_MAX), N_MELS + 2)
    hz = 700.0 * (10.0 ** (mels / 2595.0) - 1.0)
    diff = np.diff(hz)
    slopes = hz[None, :] - freqs[:, None]
    down = -slopes[:, :-2] / diff[:-1]
    up = slopes[:, 2:] / diff[1:]
    return np.maximum(0.0, np.minimum(down, up)).astype(np.float32)


@cache
def _stft_tables() -> tuple[np.ndarray, np.ndarray]:
    """The mel filterbank and the periodic Hann window (as torch.hann_window builds it)."""
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)).astype(np.float32)
    return mel_filterbank(), window


def to_codec_rate(audio: np.ndarray, sr: int) -> np.ndarray:
    """AUDIO (mono float) at the codec's 22050 Hz."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"audio must be mono, shape [samples], got {audio.shape}")
    if sr == SAMPLE_RATE or audio.size == 0:
        return audio
    import torch
    import torchaudio.functional as F

    return F.resample(torch.from_numpy(audio), sr, SAMPLE_RATE).numpy().astype(np.float32)


def log_mel(audio: np.ndarray, sr: int) -> np.ndarray:
    """Log-mel frames [frames, 80] of AUDIO, one per hop, centred on t * hop."""
    x = to_codec_rate(audio, sr)
    frames = num_frames(x.size)
    # Centred frames: pad half a window on the left; pad the right far enough for
    # the last frame. Reflection needs more samples than the pad, else zeros.
    half = N_FFT // 2
    right = frames * HOP_LENGTH + half - x.size
    mode = "reflect" if x.size > max(half, right) else "constant"
    padded = np.pad(x, (half, right), mode=mode)
    windows = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP_LENGTH][:frames]
    fbank, window = _stft_tables()
    magnitude = np.abs(np.fft.rfft(windows * window, axis=1)).astype(np.float32)
    return np.log(np.maximum(magnitude @ fbank, LOG_FLOOR))


# ---------------------------------------------------------------- the codec
@dataclass(frozen=True)
class Codec:
    """Codebooks [num_codebooks, size, 80] plus the per-bin standardisation."""

    codebooks: np.ndarray
    mean: np.ndarray
    std: np.ndarray

    @property
    def num_codebooks(self) -> int:
        return int(self.codebooks.shape[0])

    @property
    def codebook_size(self) -> int:
        return int(self.codebooks.shape[1])

    @property
    def sample_rate(self) -> int:
        return SAMPLE_RATE

    @property
    def frame_rate(self) -> float:
        return FRAME_RATE

    @property
    def fingerprint(self) -> str:
        """Short hash of the weights: codes only mean something under one codec."""
        h = hashlib.sha256()
        for a in (self.codebooks, self.mean, self.std):
            h.update(np.ascontiguousarray(a, dtype=np.float32).tobytes())
        return h.hexdigest()[:16]

    # ------------------------------------------------------------ loading
    @classmethod
    def load(cls, path: str | Path | None = None) -> "Codec":
        """The codec saved at PATH (default: the one shipped in trainer/assets)."""
        path = Path(path) if path is not None else ASSET_PATH
        if np is None:
            raise ModuleNotFoundError(f"{path}: the built-in codec needs numpy", name="numpy")
        with np.load(path) as data:
            config = {k: float(data[k]) for k in ("sample_rate", "hop_length", "n_fft", "n_mels")}
            expected = {"sample_rate": SAMPLE_RATE, "hop_length": HOP_LENGTH,
                        "n_fft": N_FFT, "n_mels": N_MELS}
            if config != {k: float(v) for k, v in expected.items()}:
                raise ValueError(f"{path}: codec made for {config}, this code expects {expected}")
            return cls(data["codebooks"].astype(np.float32), data["mean"].astype(np.float32),
                       data["std"].astype(np.float32))

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            path, codebooks=self.codebooks.astype(np.float16), mean=self.mean, std=self.std,
            sample_rate=SAMPLE_RATE, hop_length=HOP_LENGTH, n_fft=N_FFT, n_mels=N_MELS)

    # ----------------------------------------------------------- encoding
    def encode(self, audio: np.ndarray, sr: int) -> np.ndarray:
        """int16 codes [num_codebooks, frames] of mono AUDIO at rate SR."""
        features = (log_mel(audio, sr) - self.mean) / self.std
        return quantize(features, self.codebooks).astype(np.int16)

    def features(self, codes: np.ndarray) -> np.ndarray:
        """Log-mel frames [frames, 80] that CODES stand for."""
        codes = self._check(codes)
        z = np.zeros((codes.shape[1], self.codebooks.shape[2]), dtype=np.float32)
        for k in range(self.num_codebooks):
            z += self.codebooks[k][codes[k]]
        return z * self.std + self.mean

    # ----------------------------------------------------------- decoding
    def decode(self, codes: np.ndarray) -> tuple[np.ndarray, int]:
        """(float32 audio, 22050) for CODES [num_codebooks, frames]: frames * 1024 samples."""
        import torch
        import torchaudio.transforms as T

        if np.shape(codes)[-1] == 1:  # the centred inverse STFT needs two frames:
            audio, sr = self.decode(np.repeat(codes, 2, axis=-1))  # decode it twice,
            return audio[:HOP_LENGTH], sr  # keep the first hop
        mel = torch.from_numpy(np.exp(self.features(codes)).T.copy())  # [80, frames]
        inverse = T.InverseMelScale(n_stft=N_FFT // 2 + 1, n_mels=N_MELS,
                                    sample_rate=SAMPLE_RATE, f_min=F_MIN, f_max=F_MAX,
                                    norm=None, mel_scale="htk", driver="gelsd")
        magnitude = inverse(mel)
        length = mel.shape[1] * HOP_LENGTH
        # One more (repeated) frame so the centred inverse STFT spans frames * hop
        # samples: without it the last half window has no overlap-add support.
        magnitude = torch.cat([magnitude, magnitude[:, -1:]], dim=1)
        griffin_lim = T.GriffinLim(n_fft=N_FFT, hop_length=HOP_LENGTH, power=1.0,
                                   n_iter=GRIFFIN_LIM_ITERS, rand_init=False, length=length)
        audio = griffin_lim(magnitude).numpy().astype(np.float32)
        peak = float(np.abs(audio).max()) if audio.size else 0.0
        if peak > 1.0:  # inverted mel can overshoot; keep it a valid wav
            audio = audio / peak
        return audio, SAMPLE_RATE

    def _check(self, codes: np.ndarray) -> np.ndarray:
        codes = np.asarray(codes)
        if codes.ndim != 2 or codes.shape[0] != self.num_codebooks:
            raise ValueError(f"codes must have shape [{self.num_codebooks}, frames], "
                             f"got {list(codes.shape)}")
        if codes.size and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError(f"codes must lie in [0, {self.codebook_size}), "
                             f"got [{codes.min()}, {codes.max()}]")
        return codes.astype(np.int64)


def quantize(features: np.ndarray, codebooks: np.ndarray) -> np.ndarray:
    """Residual VQ of FEATURES [frames, dim]: codes [num_codebooks, frames]."""
    residual = np.asarray(features, dtype=np.float32).copy()
    codes = np.empty((codebooks.shape[0], residual.shape[0]), dtype=np.int64)
    for k, book in enumerate(codebooks):
        codes[k] = nearest(residual, book)
        residual -= book[codes[k]]
    return codes


def nearest(x: np.ndarray, book: np.ndarray) -> np.ndarray:
    """Index of the nearest BOOK row for each row of X (squared Euclidean)."""
    d = (book * book).sum(axis=1)[None, :] - 2.0 * (x @ book.T)
    return np.argmin(d, axis=1)


# -------------------------------------------------------------------- fitting
def fit(audios: list[tuple[np.ndarray, int]], num_codebooks: int = NUM_CODEBOOKS,
        codebook_size: int = CODEBOOK_SIZE, iters: int = 25, *, seed: int = 0) -> Codec:
    """Learn a codec from AUDIOS [(samples, sr), ...] by k-means, one stage at a time.

    Deterministic for a given seed and input. Codebooks are rounded to float16
    after each stage (as they are stored) so the residuals the next stage learns
    from are the ones encoding will see.
    """
    frames = np.concatenate([log_mel(a, sr) for a, sr in audios])
    mean = frames.mean(axis=0).astype(np.float32)
    std = np.maximum(frames.std(axis=0), 1e-3).astype(np.float32)
    residual = (frames - mean) / std
    rng = np.random.default_rng(seed)
    books = []
    for _ in range(num_codebooks):
        book = kmeans(residual, codebook_size, iters, rng).astype(np.float16).astype(np.float32)
        residual = residual - book[nearest(residual, book)]
        books.append(book)
    return Codec(np.stack(books), mean, std)


def kmeans(x: np.ndarray, k: int, iters: int, rng: np.random.Generator) -> np.ndarray:
    """Lloyd's k-means with k-means++ seeding; empty clusters take the worst-fit points."""
    if x.shape[0] < k:
        raise ValueError(f"need at least {k} frames to fit a codebook of {k}, got {x.shape[0]}")
    centers = _kmeans_pp(x, k, rng)
    for _ in range(iters):
        assign = nearest(x, centers)
        dist = ((x - centers[assign]) ** 2).sum(axis=1)
        counts = np.bincount(assign, minlength=k)
        sums = np.zeros_like(centers)
        np.add.at(sums, assign, x)
        filled = counts > 0
        centers[filled] = sums[filled] / counts[filled, None]
        empty = np.flatnonzero(~filled)
        if empty.size:
            centers[empty] = x[np.argsort(-dist, kind="stable")[: empty.size]]
    return centers.astype(np.float32)


def _kmeans_pp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    centers = np.empty((k, x.shape[1]), dtype=np.float64)
    centers[0] = x[rng.integers(x.shape[0])]
    closest = ((x - centers[0]) ** 2).sum(axis=1)
    for i in range(1, k):
        total = closest.sum()
        pick = rng.integers(x.shape[0]) if total <= 0 else rng.choice(x.shape[0], p=closest / total)
        centers[i] = x[pick]
        closest = np.minimum(closest, ((x - centers[i]) ** 2).sum(axis=1))
    return centers
