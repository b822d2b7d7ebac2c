"""What `ttspo score` computes and with which backends: the ONE place scoring
defaults live.

The click options of ``ttspo score`` (under torchrun too), the argv a local
worker is started with and the notebook API's keywords all take :class:`ScoreOptions`'
fields and defaults.
Nothing heavy is imported here (``ttspo score --help`` shows the defaults).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Sequence

from ttspo.builder.core import metrics as registry
from ttspo.builder.core.errors import InputError

# The metric columns GEN.cer, GEN.wer, GEN.ssim (the registry is pure Python, so
# --help does not import pyarrow for the schemas).
DEFAULT_METRICS = ("cer", "wer", "ssim")
# The group (registry backend) of each metric, groups in scoring order (registry order).
METRIC_GROUPS = {m: registry.backend_of(m).name for m in registry.names()}


@dataclass(frozen=True, kw_only=True)
class ScoreOptions:
    """What `ttspo score` computes and with which backends."""

    metrics: tuple[str, ...] = DEFAULT_METRICS
    asr: str = "pocketsphinx"
    sv: str = "resemblyzer"
    squim: str | None = None  # path of SQUIM objective weights
    normalizer: str = "nemo"
    where: str | None = None
    rescore: bool = False
    batch_size: int = 16

    def groups(self) -> list[str]:
        """The metric groups these options ask for, in scoring order."""
        asked = {METRIC_GROUPS.get(m) for m in self.metrics}
        return [g for g in dict.fromkeys(METRIC_GROUPS.values()) if g in asked]

    def check(self) -> None:
        from ttspo.builder.scoring.metrics import check_normalizer

        METRICS = registry.names()
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown:
            raise InputError(f"--metrics: unknown metric '{','.join(unknown)}' "
                             f"(choose from {','.join(METRICS)})")
        if not self.metrics:
            raise InputError(f"--metrics: name at least one of {','.join(METRICS)}")
        try:
            check_normalizer(self.normalizer)
        except ValueError as exc:
            raise InputError(f"--normalizer: {exc}") from None
        if self.batch_size < 1:
            raise InputError("--batch-size must be at least 1")

    def args(self) -> dict[str, Any]:
        """The options as plain JSON values (for lineage)."""
        return {f.name: list(v) if isinstance(v, tuple) else v
                for f in fields(self) for v in [getattr(self, f.name)]}


DEFAULTS = ScoreOptions()


def parse_metrics(metrics: str | Sequence[str]) -> tuple[str, ...]:
    """``"cer, WER"`` or ``["cer", "wer"]`` -> ("cer", "wer")."""
    items = metrics.split(",") if isinstance(metrics, str) else metrics
    return tuple(m.strip().lower() for m in items if m.strip())


def options_from(metrics: str | Sequence[str] = DEFAULT_METRICS, **kw: Any) -> ScoreOptions:
    return ScoreOptions(metrics=parse_metrics(metrics), **kw)


def option_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def to_argv(options: ScoreOptions) -> list[str]:
    """The `ttspo score` options that rebuild OPTIONS."""
    argv: list[str] = []
    for f in fields(options):
        value = getattr(options, f.name)
        if isinstance(value, bool):
            argv += [option_name(f.name)] if value else []
        elif value is not None:
            argv += [option_name(f.name), _text(value)]
    return argv


def _text(value: Any) -> str:
    return ",".join(value) if isinstance(value, (tuple, list)) else str(value)
