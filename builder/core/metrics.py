"""The metric registry: ONE definition per metric, everything else derives from it.

A :class:`Metric` is a ``generations`` column a scorer writes: its name (= column),
the :class:`Backend` (scorer group) that computes it, which direction is better,
its range, and its reward shape. A :class:`Backend` is what ONE model run
produces together (one transcript gives CER and WER; one VAD pass gives four
silence metrics): its provenance column (``*_source``), its status column
(``*_status``: why a value is NULL), the ``ttspo score`` option that picks its
model, and where its code lives ("module:callable" text: nothing heavy is imported
here).

Derived from this table: the ``generations``/``rollouts`` columns
(builder/core/schemas.py), ``ttspo score --metrics`` choices and the scorer's
dispatch (builder/scoring), the compare macros' metric list and directions
(sql/macros.sql, ``ttspo compare``), the ingest readers' metric keys, the GRPO
reward registry and what GRPO and ``generate --score`` score.

NULL with a reason: a backend that could not compute a row's value leaves it NULL
and writes the reason to its status column: ``error: ...`` (the backend raised, the
audio could not be read: retried by the next ``ttspo score``) or ``n/a: ...`` (the
metric does not apply: SSIM of a text context, PESQ without a reference; not
retried). A status is NULL when every metric of the backend has a value; a backend
that leaves one None says why (``n/a: max_pause: no speech found``). A NULL metric is
never 0.

Adding a metric: its definition (here, or :func:`register` from a plugin module named
in ``TTSPO_METRICS=pkg.mod:function``, loaded before the schemas are built), its
backend class (``name`` attribute, ``score(audio, sr, *, text=None) -> dict``),
and its test. Nothing else changes.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field

# Which way a metric is better; NEITHER: a range, not a direction (speaking rate: too
# fast and too slow are both wrong), so compare reports the difference without a verdict.
LOWER, HIGHER, NEITHER = "lower", "higher", "neither"
DIRECTIONS = (LOWER, HIGHER, NEITHER)
# How the scorer calls a backend (builder/scoring/scorer.py):
#   asr: transcribe_batch(audios, sr) -> texts (CER/WER against the prompt text)
#   speaker: embed_batch(audios, sr) -> vectors (cosine with the context recording's)
#   reference: score(audio, sr, reference, ref_sr) -> float (needs a reference recording)
#   audio: score(audio, sr, *, text=None) -> {metric: value} (the generic kind)
KINDS = ("asr", "speaker", "reference", "audio")
# Reward shapes (trainer/grpo/rewards.py): NeMo's piecewise CER and SSIM rewards,
# or linear: (value - lo) / (hi - lo) clipped to [0, 1] ((hi - value) / (hi - lo) when lower is better).
SHAPES = ("cer", "ssim", "linear")


@dataclass(frozen=True, kw_only=True)
class Reward:
    """How a metric becomes a GRPO reward part in [0, 1]."""

    shape: str = "linear"
    lo: float = 0.0  # linear: the value that earns 0 (1 when lower is better)
    hi: float = 1.0  # linear: the value that earns 1 (0 when lower is better)


@dataclass(frozen=True, kw_only=True)
class Backend:
    """A scorer group: the metrics ONE model run produces, with provenance and status."""

    name: str  # group name, e.g. "asr", "mos" (ScoreSummary.sources keys)
    kind: str  # KINDS
    loader: str  # "module:callable": called as loader(spec, option) when `option` is set, else loader()
    source: str  # provenance column ("cer_source")
    status: str  # reason column for NULL values ("cer_status")
    option: str | None = None  # ScoreOptions field naming the model spec ("asr", "sv", "squim")
    label: str = ""  # how errors name it (`ttspo score`'s option)
    extra: tuple[str, ...] = ()  # other columns it writes (asr: transcripts, invalid)
    needs_text: bool = False  # gets the prompt text (prosody's speaking rate)


@dataclass(frozen=True, kw_only=True)
class Metric:
    """One metric column of ``generations``."""

    name: str  # the column
    backend: str  # Backend.name
    better: str  # LOWER | HIGHER | NEITHER
    lo: float | None = None  # range (None: unbounded)
    hi: float | None = None
    unit: str = ""
    description: str = ""
    reward: Reward | None = None  # None: not a reward
    # A GRPO validity rule and recipe parameter: a sample whose value exceeds
    # `grpo.limits[NAME]` (or the recipe's --param) is invalid. None: no such rule.
    limit: str | None = None

    @property
    def lower_is_better(self) -> bool:
        return self.better == LOWER


@dataclass
class Registry:
    backends: dict[str, Backend] = field(default_factory=dict)
    metrics: dict[str, Metric] = field(default_factory=dict)


REGISTRY = Registry()


def register(*items: Backend | Metric) -> None:
    """Add backends and metrics (a backend before its metrics). Call it in a plugin
    module named in TTSPO_METRICS, or here: schemas are built from the registry once."""
    for item in items:
        if isinstance(item, Backend):
            if item.kind not in KINDS:
                raise ValueError(f"backend {item.name}: kind {item.kind!r} not in {KINDS}")
            REGISTRY.backends[item.name] = item
        else:
            if item.backend not in REGISTRY.backends:
                raise ValueError(f"metric {item.name}: unknown backend {item.backend!r}")
            if item.better not in DIRECTIONS:
                raise ValueError(f"metric {item.name}: better must be one of {DIRECTIONS}")
            if item.reward is not None and item.reward.shape not in SHAPES:
                raise ValueError(f"metric {item.name}: reward shape not in {SHAPES}")
            REGISTRY.metrics[item.name] = item


_S = "ttspo.builder.scoring"
register(
    Backend(name="asr", kind="asr", loader=f"{_S}:load_asr", option="asr", label="--asr",
            source="cer_source", status="cer_status",
            extra=("pred_transcript", "gt_transcript", "invalid")),
    Metric(name="cer", backend="asr", better=LOWER, lo=0.0, unit="ratio",
           description="character error rate of the ASR transcript (normalised texts)",
           reward=Reward(shape="cer")),
    Metric(name="wer", backend="asr", better=LOWER, lo=0.0, unit="ratio",
           description="word error rate of the same transcript"),
    Backend(name="ssim", kind="speaker", loader=f"{_S}:load_speaker", option="sv", label="--sv",
            source="ssim_source", status="ssim_status"),
    Metric(name="ssim", backend="ssim", better=HIGHER, lo=-1.0, hi=1.0, unit="cosine",
           description="speaker similarity: cosine of the generation's and the context "
                       "recording's speaker embeddings (NULL for a text context)",
           reward=Reward(shape="ssim")),
    Backend(name="pesq", kind="reference", loader=f"{_S}.quality:PesqMetric",
            label="--metrics pesq", source="pesq_source", status="pesq_status"),
    Metric(name="pesq", backend="pesq", better=HIGHER, lo=1.04, hi=4.64, unit="MOS-LQO",
           description="wide-band PESQ against the prompt's reference recording "
                       "(NULL without one)",
           reward=Reward(lo=0.0, hi=4.5)),
    Backend(name="squim", kind="audio", loader=f"{_S}:load_squim", option="squim",
            label="--squim", source="squim_source", status="squim_status"),
    Metric(name="squim", backend="squim", better=HIGHER, lo=1.0, hi=4.64, unit="MOS-LQO",
           description="torchaudio SQUIM objective's reference-free PESQ estimate",
           reward=Reward(lo=0.0, hi=4.5)),
)
register(
    # Distill-MOS (builder/scoring/mos.py): weights ship in the distillmos wheel
    Backend(name="mos", kind="audio", loader=f"{_S}.mos:MosMetric", label="--metrics mos",
            source="mos_source", status="mos_status"),
    Metric(name="mos", backend="mos", better=HIGHER, lo=1.0, hi=5.0, unit="MOS",
           description="Distill-MOS predicted naturalness (reference-free)",
           reward=Reward(lo=1.0, hi=5.0)),
    # silero-vad (builder/scoring/vad.py): weights ship in the silero-vad wheel
    Backend(name="vad", kind="audio", loader=f"{_S}.vad:VadMetric", label="--metrics vad",
            source="vad_source", status="vad_status"),
    Metric(name="lead_silence", backend="vad", better=LOWER, lo=0.0, unit="s",
           description="silence before the first speech segment",
           limit="max_leading_silence"),
    Metric(name="trail_silence", backend="vad", better=LOWER, lo=0.0, unit="s",
           description="silence after the last speech segment (appended silence)",
           limit="max_trailing_silence"),
    Metric(name="max_pause", backend="vad", better=LOWER, lo=0.0, unit="s",
           description="longest pause between speech segments (NULL: no speech)",
           limit="max_inner_pause"),
    Metric(name="speech_ratio", backend="vad", better=HIGHER, lo=0.0, hi=1.0, unit="ratio",
           description="speech seconds / audio seconds"),
    Metric(name="speech_seconds", backend="vad", better=NEITHER, lo=0.0, unit="s",
           description="seconds of speech the VAD found"),
    # Praat through parselmouth, and the VAD's speech seconds (builder/scoring/prosody.py)
    Backend(name="prosody", kind="audio", loader=f"{_S}.prosody:ProsodyMetric",
            label="--metrics prosody", source="prosody_source", status="prosody_status",
            needs_text=True),
    Metric(name="f0_std_st", backend="prosody", better=HIGHER, lo=0.0, unit="semitones",
           description="pitch variability: F0 standard deviation over voiced frames "
                       "(Praat's autocorrelation pitch tracker); low is monotone"),
    Metric(name="speech_rate", backend="prosody", better=NEITHER, lo=0.0,
           unit="chars/s", description="characters of the text per second of speech"),
)

# The columns generations had before the registry (their order in the schema is fixed);
# every other registered column is appended after them (older stores gain them as nulls).
LEGACY_METRICS = ("cer", "wer", "ssim", "pesq", "squim")
LEGACY_SOURCES = ("cer_source", "ssim_source", "pesq_source", "squim_source")


def load_plugins(spec: str | None = None) -> None:
    """Run the ``module:function`` registrations named in TTSPO_METRICS (comma-separated)."""
    spec = os.environ.get("TTSPO_METRICS", "") if spec is None else spec
    for item in filter(None, (s.strip() for s in spec.split(","))):
        module, _, fn = item.partition(":")
        try:
            target = importlib.import_module(module)
            if fn:
                getattr(target, fn)()
        except Exception as exc:  # a plugin's own import error: one line naming it
            raise SystemExit(f"TTSPO_METRICS {item}: {type(exc).__name__}: {exc}") from None


# ---------------------------------------------------------------- views
def metric(name: str) -> Metric:
    return REGISTRY.metrics[name]


def names() -> tuple[str, ...]:
    """Every registered metric, in registry order."""
    return tuple(REGISTRY.metrics)


def backend(name: str) -> Backend:
    return REGISTRY.backends[name]


def backend_of(metric_name: str) -> Backend:
    return REGISTRY.backends[REGISTRY.metrics[metric_name].backend]


def metrics_of(backend_name: str) -> tuple[str, ...]:
    return tuple(m.name for m in REGISTRY.metrics.values() if m.backend == backend_name)


def backend_columns(backend_name: str) -> tuple[str, ...]:
    """What one backend writes: its metrics, extra columns, source and status."""
    b = REGISTRY.backends[backend_name]
    return (*metrics_of(backend_name), *b.extra, b.source, b.status)


def source_of(metric_name: str) -> str:
    return backend_of(metric_name).source


def status_of(metric_name: str) -> str:
    return backend_of(metric_name).status


def lower_is_better() -> tuple[str, ...]:
    return tuple(m.name for m in REGISTRY.metrics.values() if m.lower_is_better)


def no_direction() -> tuple[str, ...]:
    return tuple(m.name for m in REGISTRY.metrics.values() if m.better == NEITHER)


def rewarded() -> tuple[str, ...]:
    """Metrics with a reward shape (GRPO reward names besides length and callables)."""
    return tuple(m.name for m in REGISTRY.metrics.values() if m.reward is not None)


def limited() -> dict[str, str]:
    """Metric -> its validity-rule / recipe parameter name (e.g. max_trailing_silence)."""
    return {m.name: m.limit for m in REGISTRY.metrics.values() if m.limit}


def new_columns() -> list[tuple[str, str]]:
    """(column, "double" | "string") appended to generations after the legacy columns,
    in registry order: each backend's new metrics and source, then its status."""
    out: list[tuple[str, str]] = []
    for b in REGISTRY.backends.values():
        out += [(m, "double") for m in metrics_of(b.name) if m not in LEGACY_METRICS]
        if b.source not in LEGACY_SOURCES:
            out.append((b.source, "string"))
        out.append((b.status, "string"))
    return out


def import_object(text: str):
    """The object "module:attr" names (a backend's loader)."""
    module, _, attr = text.partition(":")
    return getattr(importlib.import_module(module), attr)


# Last: a plugin's registrations may use every helper above, and come before any
# schema is built from the registry (schemas.py imports this module first).
load_plugins()
