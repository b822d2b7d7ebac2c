"""A toy metric added the registry's way (tests/test_metric_registry.py): its
definition and its backend here, nothing else in ttspo edited. Loaded in a process by
``TTSPO_METRICS=toy_metric:register_toy`` (with this folder on PYTHONPATH)."""

from __future__ import annotations

import numpy as np

from ttspo.builder.core.metrics import Backend, Metric, Reward, register

TOY = "toy_level"


class ToyLevel:
    """Loudness as min(1, 4 x RMS); raises on silence (a backend failing on one file)."""

    name = "toy:rms-x4"

    def score(self, audio: np.ndarray, sr: int, *, text: str | None = None) -> dict:
        rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if len(audio) else 0.0
        if rms == 0.0:
            raise ValueError("silent audio has no level")
        return {TOY: min(1.0, 4.0 * rms)}


def register_toy() -> None:
    register(Backend(name="toy", kind="audio", loader="toy_metric:ToyLevel",
                     source="toy_source", status="toy_status"),
             Metric(name=TOY, backend="toy", better="higher", lo=0.0, hi=1.0, unit="ratio",
                    description="toy loudness", reward=Reward(lo=0.0, hi=1.0),
                    limit="max_toy_level"))
