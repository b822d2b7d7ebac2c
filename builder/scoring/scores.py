"""What a metric backend's ``score`` returns: :class:`Scores`, a dict of metric name to
value with the reason for each value that is None.

The convention every backend here keeps (mos, vad, prosody):

- ``score(audio, sr, *, text=None)`` returns a :class:`Scores` whose keys are exactly
  the backend's ``metrics`` tuple, each a float or None;
- ``Scores.reasons`` maps each metric whose value is None to one short line saying why
  ("empty audio", "no speech found", "12 voiced frames, fewer than 20"); a metric with a
  value has no reason. The reasons are an attribute, not a key, so the dict holds
  metric values only and ``dict(scores)`` is what a row of metric columns takes;
- an *expected* case (silence, audio too short, no text) is None with a reason; an
  unexpected one (a file the model cannot take) raises, and the caller records NULL
  with the exception's first line.
"""

from __future__ import annotations


class Scores(dict):
    """Metric name -> float or None; ``reasons``: metric name -> why it is None."""

    def __init__(self, values: dict[str, float | None], reasons: dict[str, str] | None = None) -> None:
        super().__init__(values)
        self.reasons = {k: v for k, v in (reasons or {}).items() if self.get(k) is None}
        missing = [k for k, v in self.items() if v is None and k not in self.reasons]
        if missing:  # a None with no reason is a bug in the backend, not in the audio
            raise ValueError(f"no reason given for None metric(s) {', '.join(missing)}")

    def __repr__(self) -> str:
        return f"Scores({dict(self)!r}, reasons={self.reasons!r})"


def unscored(metrics: tuple[str, ...], reason: str) -> Scores:
    """Every metric None for the same REASON (empty audio, silence)."""
    return Scores(dict.fromkeys(metrics), dict.fromkeys(metrics, reason))


def no_signal(wav) -> str | None:
    """Why WAV (a numpy array) cannot be scored at all, or None: empty, or all zeros."""
    if wav.size == 0:
        return "empty audio"
    if not wav.any():
        return "silent audio (every sample is zero)"
    return None


def package_version(distribution: str) -> str:
    """The installed version of DISTRIBUTION: what a backend's ``name`` records."""
    from importlib.metadata import version

    return version(distribution)
