"""Shared helpers of the scoring backends: spec parsing and model-file checks.

A backend is named by a spec: ``NAME`` or ``NAME:ARG`` (``nemo:/m/parakeet.nemo``,
``whisper:/m/whisper-small``, ``squim:/m/squim.pt``). No backend downloads
anything: a missing model file or optional library is a :class:`ModelError`
naming the option that selects it, so the user knows what to change.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from ttspo.builder.core.errors import ModelError
from ttspo.builder.core.files import file_sha256


def split_spec(spec: str) -> tuple[str, str | None]:
    """``"nemo:/x.nemo"`` -> ("nemo", "/x.nemo"); ``"pocketsphinx"`` -> ("pocketsphinx", None)."""
    name, sep, arg = spec.partition(":")
    return name.strip().lower(), (arg if sep else None)


def require_file(option: str, spec: str, arg: str | None, what: str) -> Path:
    """The existing model file ARG, or a ModelError naming OPTION."""
    return _require_path(option, spec, arg, what, placeholder="PATH", noun="file",
                         exists=Path.is_file)


def require_dir(option: str, spec: str, arg: str | None, what: str) -> Path:
    """The existing model directory ARG, or a ModelError naming OPTION."""
    return _require_path(option, spec, arg, what, placeholder="DIR", noun="directory",
                         exists=Path.is_dir)


def _require_path(option, spec, arg, what, *, placeholder, noun, exists) -> Path:
    if not arg:
        raise ModelError(f"{option} {spec}: give the {what} as {spec.split(':')[0]}:{placeholder} "
                         "(models are never downloaded)")
    path = Path(os.path.expanduser(arg))
    if not exists(path):
        raise ModelError(f"{option} {spec}: {noun} not found")
    return path


def restore_nemo(class_name: str, path: Path, option: str, spec: str, *, what: str):
    """A NeMo model of nemo.collections.asr.models.CLASS_NAME from a local .nemo file,
    in eval mode on the CPU (restore_from: never from_pretrained, nothing downloads)."""
    require_module(option, spec, "nemo", "'nemo' extra: pip install 'ttspo[nemo]'")
    from nemo.collections.asr import models

    try:
        model = getattr(models, class_name).restore_from(str(path), map_location="cpu")
    except Exception as exc:  # NeMo raises many types for a bad archive
        raise ModelError(f"{option} {spec}: cannot restore NeMo {what} model ({exc})") from None
    model.eval()
    # NeMo's transcribe() of in-memory audio needs the rate on the model: a model
    # whose config names it only in its preprocessor (or not at all) would refuse.
    model.sample_rate = nemo_sample_rate(model)
    return model


def nemo_sample_rate(model) -> int:
    """The rate a NeMo ASR/speaker model takes audio at (its preprocessor's; 16 kHz default)."""
    cfg = model.cfg
    rate = cfg.get("sample_rate") or (cfg.get("preprocessor") or {}).get("sample_rate")
    return int(rate or 16000)


def nemo_source(path: Path) -> str:
    """What a ``*_source`` column records for a .nemo model: its file name and sha256."""
    return f"nemo:{path.name}@sha256:{file_sha256(path)}"


def require_module(option: str, spec: str, module: str, extra: str) -> None:
    """Fail early, by name, when an optional dependency is missing."""
    if importlib.util.find_spec(module) is None:
        raise ModelError(f"{option} {spec}: needs the '{module}' package "
                         f"(install the {extra})")


def unknown(option: str, spec: str, known: tuple[str, ...]) -> ModelError:
    return ModelError(f"{option} {spec}: unknown backend (choose {', '.join(known)})")
