"""Naturalness: Distill-MOS, a reference-free MOS predictor (metric ``mos``, 1..5,
higher is better).

Distill-MOS (Stahl & Gamper, 2024; the ``distillmos`` package) is a 4.1M-parameter
convolutional transformer distilled from an XLS-R-based speech-quality model; its 17 MB
weights (``distillmos/weights/distill_mos_v7.pt``) are a file inside the wheel whose hash
uv.lock pins, so nothing is downloaded. We build the model without weights and load
that file ourselves with ``torch.load(weights_only=True)``: no unpickling of code
whatever the package version does (0.9.1 also passes weights_only=True), and no
"weights loaded from" line on stdout, which the package prints when it loads them.

The model reads 16 kHz audio, normalises each clip to its peak, and averages its
prediction over 7.68 s crops (a shorter clip is zero-padded to one crop, so a 1 s
clip costs as much as a 7.68 s one). Silence and clips under a quarter second have no
MOS: None with the reason, never a number that would rank them.
"""

from __future__ import annotations

import numpy as np

from ttspo.builder.core.errors import ModelError, first_line
from ttspo.builder.scoring.audio import MODEL_SR, resample
from ttspo.builder.scoring.scores import no_signal, Scores, package_version, unscored

MIN_SECONDS = 0.25  # under a quarter second there is no utterance to judge


class MosMetric:
    """Distill-MOS naturalness (1..5, higher is better), on the CPU unless told."""

    metrics = ("mos",)

    def __init__(self, *, device: str = "cpu") -> None:
        self.device = device
        self.name = f"distillmos:{package_version('distillmos')}"
        self._model = None

    def _load(self):
        if self._model is None:
            import torch
            from distillmos import ConvTransformerSQAModel
            from distillmos.sqa import DEFAULT_WEIGHTS_CHKPT

            model = ConvTransformerSQAModel(load_weights=False)
            try:
                state = torch.load(DEFAULT_WEIGHTS_CHKPT, map_location="cpu", weights_only=True)
                model.load_state_dict(state["model"])
            except Exception as exc:  # a damaged install: unpickling and shape errors vary
                raise ModelError(f"{self.name}: cannot load {DEFAULT_WEIGHTS_CHKPT} "
                                 f"({first_line(exc, 200)})") from None
            self._model = model.eval().to(self.device)
        return self._model

    def score(self, audio: np.ndarray, sr: int, *, text: str | None = None) -> Scores:
        wav = resample(np.asarray(audio, dtype=np.float32), sr, MODEL_SR)
        if (why := no_signal(wav)) is not None:
            return unscored(self.metrics, why)
        if wav.size < MIN_SECONDS * MODEL_SR:
            return unscored(self.metrics, f"{wav.size / MODEL_SR:.3f} s of audio, under {MIN_SECONDS} s")
        import torch

        model = self._load()
        with torch.no_grad():
            value = float(model(torch.from_numpy(wav)[None, :].to(self.device))[0])
        if not np.isfinite(value):
            return unscored(self.metrics, "the model returned a non-finite value")
        return Scores({"mos": value})
