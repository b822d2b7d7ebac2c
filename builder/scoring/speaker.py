"""Speaker-verification backends: audio in, L2-normalised embedding out.

- ``resemblyzer``: offline default; the GE2E voice encoder whose weights
  (pretrained.pt) ship inside the Resemblyzer wheel. ``resemblyzer:PATH.pt``
  loads other weights of the same architecture.
- ``nemo:PATH.nemo``: a NeMo speaker-label model (TitaNet, as NeMo's generation
  uses) restored from a local .nemo file (extra ``nemo``).

SSIM is the cosine of two embeddings. Silent audio has no speaker: its
embedding is the zero vector and its cosine with anything is 0.0.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ttspo.builder.scoring.audio import MODEL_SR, resample
from ttspo.builder.scoring.backends import (nemo_source, restore_nemo, require_file, require_module,
                                            split_spec, unknown)

SPEAKER_BACKENDS = ("resemblyzer", "resemblyzer:PATH.pt", "nemo:PATH.nemo")


def _unit(vector: np.ndarray) -> np.ndarray:
    vector = np.asarray(vector, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(vector))
    if not np.isfinite(norm) or norm == 0.0:
        return np.zeros_like(vector)
    return vector / norm


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity; 0.0 when either vector is zero (silence)."""
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


class ResemblyzerSV:
    """Resemblyzer's voice encoder, loaded once per process.

    Resemblyzer computes its 40-band mel spectrogram with librosa, whose first
    call per process costs seconds of JIT and imports; torchaudio's
    MelSpectrogram with the same parameters (n_fft 400, hop 160, Slaney mel
    scale and norm, centred, power 2) gives the same features (to ~1e-6, a test
    checks the embeddings agree) at once. Partial-utterance slicing and
    averaging are Resemblyzer's own (embed_utterance's defaults).
    """

    RATE, MIN_COVERAGE = 1.3, 0.75  # Resemblyzer's embed_utterance defaults

    def __init__(self, weights: Path | None = None) -> None:
        import torchaudio

        with warnings.catch_warnings():  # webrtcvad imports the deprecated pkg_resources
            warnings.simplefilter("ignore")
            import resemblyzer
            from resemblyzer import VoiceEncoder
        if weights is None:
            weights = Path(resemblyzer.__file__).parent / "pretrained.pt"
        self.encoder = VoiceEncoder("cpu", verbose=False, weights_fpath=weights).eval()
        self.name = f"resemblyzer:{weights.name}"
        self._mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=MODEL_SR, n_fft=400, hop_length=160, n_mels=40, power=2.0,
            center=True, pad_mode="constant", norm="slaney", mel_scale="slaney")

    def embed(self, audio: np.ndarray, sr: int) -> np.ndarray:
        from resemblyzer import preprocess_wav

        wav = resample(audio, sr, MODEL_SR)
        if wav.size == 0 or not np.any(wav):
            return np.zeros(256, dtype=np.float32)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trimmed = preprocess_wav(wav)  # volume normalisation + VAD silence trimming
        if trimmed.size < MODEL_SR // 10:  # VAD found (almost) no voice: keep it all
            trimmed = wav
        return _unit(self.embed_utterance(trimmed.astype(np.float32)))

    def embed_utterance(self, wav: np.ndarray) -> np.ndarray:
        """Resemblyzer's utterance embedding: mean of its partial-utterance embeddings."""
        import torch

        wav_slices, mel_slices = self.encoder.compute_partial_slices(
            len(wav), self.RATE, self.MIN_COVERAGE)
        if wav_slices[-1].stop >= len(wav):
            wav = np.pad(wav, (0, wav_slices[-1].stop - len(wav)))
        with torch.no_grad():
            mel = self._mel(torch.from_numpy(wav)).T  # (frames, 40)
            partials = torch.stack([mel[s] for s in mel_slices])
            embeds = self.encoder(partials).numpy()
        return _unit(embeds.mean(axis=0))

    def embed_batch(self, audios: list[np.ndarray], sr: int) -> list[np.ndarray]:
        return [self.embed(a, sr) for a in audios]


class NemoSV:
    """A NeMo EncDecSpeakerLabelModel (TitaNet) from a local .nemo file."""

    def __init__(self, path: Path, option: str, spec: str) -> None:
        self.model = restore_nemo("EncDecSpeakerLabelModel", path, option, spec, what="speaker")
        self.name = nemo_source(path)

    def embed(self, audio: np.ndarray, sr: int) -> np.ndarray:
        return self.embed_batch([audio], sr)[0]

    def embed_batch(self, audios: list[np.ndarray], sr: int) -> list[np.ndarray]:
        import torch

        wavs = [resample(a, sr, self.model.sample_rate) for a in audios]
        lengths = torch.tensor([len(w) for w in wavs], dtype=torch.long)
        batch = torch.zeros(len(wavs), int(lengths.max()))
        for i, w in enumerate(wavs):
            batch[i, : len(w)] = torch.from_numpy(w)
        with torch.no_grad():
            _, emb = self.model.forward(input_signal=batch, input_signal_length=lengths)
        return [_unit(e.cpu().numpy()) if np.any(w) else np.zeros(e.shape[-1], np.float32)
                for e, w in zip(emb, wavs)]


def make_speaker(spec: str, option: str = "--sv"):
    path = check_speaker(spec, option)  # the same checks as before a run, then load
    if split_spec(spec)[0] == "nemo":
        return NemoSV(path, option, spec)
    return ResemblyzerSV(path)


def check_speaker(spec: str, option: str = "--sv") -> Path | None:
    """Validate SPEC (backend name, model file, optional package) without loading
    it; the weights path (None: resemblyzer's weights shipped in its wheel)."""
    name, arg = split_spec(spec)
    if name == "resemblyzer":
        return require_file(option, spec, arg, "weights") if arg else None
    if name == "nemo":
        path = require_file(option, spec, arg, "NeMo speaker model (.nemo)")
        require_module(option, spec, "nemo", "'nemo' extra: pip install 'ttspo[nemo]'")
        return path
    raise unknown(option, spec, SPEAKER_BACKENDS)
