"""Quality backends: PESQ against a reference recording, SQUIM without one.

- ``pesq``: ITU-T P.862.2 wide-band PESQ at 16 kHz (the ``pesq`` package),
  comparing the generation with the prompt's reference recording of the same
  text. Without a reference recording there is no PESQ: null, never 0.
- ``squim:PATH``: torchaudio's SQUIM objective model (``squim_objective_base``)
  with weights from a local file; stores its reference-free PESQ estimate, the
  number NeMo's online GRPO reward uses.

A score the library cannot compute (no speech found, audio too short) is None:
a null metric, not a number that would rank the sample.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ttspo.builder.core.errors import ModelError, first_line
from ttspo.builder.scoring.audio import MODEL_SR, resample
from ttspo.builder.scoring.backends import require_file, split_spec, unknown

QUALITY_BACKENDS = ("pesq", "squim:PATH")
MIN_SECONDS = 0.25  # PESQ needs at least 1/4 s of signal


class PesqMetric:
    """Wide-band PESQ (1.04 .. 4.64), higher is better."""

    name = "pesq:wb-16k"
    needs_reference = True

    def score(self, audio: np.ndarray, sr: int, reference: np.ndarray, ref_sr: int) -> float | None:
        from pesq import PesqError, pesq

        deg = resample(audio, sr, MODEL_SR).astype(np.float64)
        ref = resample(reference, ref_sr, MODEL_SR).astype(np.float64)
        if min(len(deg), len(ref)) < MIN_SECONDS * MODEL_SR or not np.any(deg) or not np.any(ref):
            return None
        try:
            return float(pesq(MODEL_SR, ref, deg, "wb"))
        except PesqError:  # no utterances detected, buffer too short
            return None


class SquimMetric:
    """SQUIM objective: reference-free PESQ estimate from a local weights file."""

    needs_reference = False

    def __init__(self, path: Path, option: str, spec: str) -> None:
        import torch
        from torchaudio.models import squim_objective_base

        model = squim_objective_base()
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
            if isinstance(state, dict) and "state_dict" in state:
                state = state["state_dict"]
            model.load_state_dict(state)
        except Exception as exc:  # unpickling and shape errors come in many types
            raise ModelError(f"{option} {spec}: not SQUIM objective weights ({first_line(exc, 200)})") from None
        self.model = model.eval()
        self.name = f"squim:{path.name}"

    def score(self, audio: np.ndarray, sr: int, reference=None, ref_sr=None) -> float | None:
        import torch

        wav = resample(audio, sr, MODEL_SR)
        if len(wav) < MIN_SECONDS * MODEL_SR:
            return None
        with torch.no_grad():
            _stoi, pesq_est, _si_sdr = self.model(torch.from_numpy(wav)[None, :])
        value = float(pesq_est[0])
        return value if np.isfinite(value) else None


def make_quality(spec: str, option: str = "--quality"):
    path = check_quality(spec, option)  # the same checks as before a run, then load
    return PesqMetric() if path is None else SquimMetric(path, option, spec)


def check_quality(spec: str, option: str = "--quality") -> Path | None:
    """Validate SPEC without loading it; the weights path (None for pesq)."""
    name, arg = split_spec(spec)
    if name == "pesq":
        return None
    if name == "squim":
        return require_file(option, spec, arg, "SQUIM objective weights file")
    raise unknown(option, spec, QUALITY_BACKENDS)
