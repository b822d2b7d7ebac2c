"""ASR backends: audio in, transcript out.

- ``pocketsphinx``: offline default; its US English acoustic model, language
  model and dictionary ship inside the pocketsphinx wheel.
- ``nemo:PATH.nemo``: a NeMo CTC/RNNT/TDT model (Parakeet, as NeMo's own
  generation uses), restored from a local .nemo file (extra ``nemo``).
- ``whisper:DIR``: a Whisper model saved with transformers in a local directory.

Every backend takes float32 mono audio at any rate and resamples to 16 kHz.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ttspo.builder.core.errors import ModelError
from ttspo.builder.scoring.audio import MODEL_SR, resample
from ttspo.builder.scoring.backends import (nemo_source, restore_nemo, require_dir, require_file,
                                            require_module, split_spec, unknown)

ASR_BACKENDS = ("pocketsphinx", "nemo:PATH.nemo", "whisper:DIR")


class PocketsphinxASR:
    """CMU PocketSphinx with the model from its wheel. One decoder per process."""

    def __init__(self) -> None:
        from pocketsphinx import Decoder, get_model_path

        self.model_dir = Path(get_model_path()) / "en-us"
        self.name = "pocketsphinx:en-us"
        self._decoder = Decoder(loglevel="FATAL")
        self._cmn = self._decoder.get_cmn()

    def transcribe(self, audio: np.ndarray, sr: int) -> str:
        pcm = _to_int16(resample(audio, sr, MODEL_SR))
        if pcm.size == 0:
            return ""
        d = self._decoder
        # The front end adapts (noise estimate, cepstral mean) across utterances:
        # reset it so a transcript does not depend on what was decoded before,
        # and so 1 and N processes give the same numbers.
        d.reinit_feat()
        d.set_cmn(self._cmn)
        d.start_utt()
        d.process_raw(pcm.tobytes(), full_utt=True)
        d.end_utt()
        hyp = d.hyp()
        return hyp.hypstr.strip() if hyp is not None else ""

    def transcribe_batch(self, audios: list[np.ndarray], sr: int) -> list[str]:
        return [self.transcribe(a, sr) for a in audios]


class NemoASR:
    """A NeMo ASR model restored from a local .nemo file (no from_pretrained)."""

    def __init__(self, path: Path, option: str, spec: str) -> None:
        self.model = restore_nemo("ASRModel", path, option, spec, what="ASR")
        self.name = nemo_source(path)

    def transcribe(self, audio: np.ndarray, sr: int) -> str:
        return self.transcribe_batch([audio], sr)[0]

    def transcribe_batch(self, audios: list[np.ndarray], sr: int) -> list[str]:
        import torch

        batch = [resample(a, sr, self.model.sample_rate) for a in audios]
        with torch.no_grad():
            out = self.model.transcribe(batch, batch_size=len(batch), verbose=False)
        if isinstance(out, tuple):  # older RNNT models return (best, all)
            out = out[0]
        return [(getattr(h, "text", h) or "").strip() for h in out]


class WhisperASR:
    """Whisper through transformers, from a local directory only."""

    def __init__(self, path: Path, option: str, spec: str) -> None:
        require_module(option, spec, "transformers", "'whisper' extra: pip install 'ttspo[whisper]'")
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        try:
            self.processor = WhisperProcessor.from_pretrained(str(path), local_files_only=True)
            self.model = WhisperForConditionalGeneration.from_pretrained(
                str(path), local_files_only=True).eval()
        except (OSError, ValueError) as exc:
            raise ModelError(f"{option} {spec}: cannot load Whisper model ({exc})") from None
        self.name = f"whisper:{path.name}"

    def transcribe(self, audio: np.ndarray, sr: int) -> str:
        return self.transcribe_batch([audio], sr)[0]

    def transcribe_batch(self, audios: list[np.ndarray], sr: int) -> list[str]:
        import torch

        batch = [resample(a, sr, MODEL_SR) for a in audios]
        feats = self.processor(batch, sampling_rate=MODEL_SR, return_tensors="pt").input_features
        with torch.no_grad():
            ids = self.model.generate(feats)  # the model's own language/task defaults
        return [t.strip() for t in self.processor.batch_decode(ids, skip_special_tokens=True)]


def _to_int16(audio: np.ndarray) -> np.ndarray:
    return (np.clip(audio, -1.0, 1.0) * 32767.0).astype(np.int16)


def make_asr(spec: str, option: str = "--asr"):
    path = check_asr(spec, option)  # the same checks as before a run, then load
    name, _ = split_spec(spec)
    if name == "nemo":
        return NemoASR(path, option, spec)
    if name == "whisper":
        return WhisperASR(path, option, spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return PocketsphinxASR()


def check_asr(spec: str, option: str = "--asr") -> Path | None:
    """Validate SPEC (backend name, model file, optional package) without loading
    it; the model path (None for pocketsphinx, whose model ships in the wheel)."""
    name, arg = split_spec(spec)
    if name == "pocketsphinx":
        if arg:
            raise ModelError(f"{option} {spec}: pocketsphinx takes no argument "
                             "(its model ships in the wheel)")
        return None
    if name == "nemo":
        path = require_file(option, spec, arg, "NeMo ASR model (.nemo)")
        require_module(option, spec, "nemo", "'nemo' extra: pip install 'ttspo[nemo]'")
        return path
    if name == "whisper":
        path = require_dir(option, spec, arg, "Whisper model directory")
        require_module(option, spec, "transformers", "'whisper' extra: pip install 'ttspo[whisper]'")
        return path
    raise unknown(option, spec, ASR_BACKENDS)
