"""Input files of `ttspo prompts`: texts, audio contexts, text contexts, references.

Each reader checks its file completely before anything is written and raises
:class:`InputError` naming the file, the line and the reason (the first bad
line, and how many more there are).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from ttspo.builder.core.errors import InputError
from ttspo.builder.core.files import file_sha256  # noqa: F401 (prompts' input files)


@dataclass(frozen=True)
class AudioContext:
    """One line of the audio-contexts file."""

    filepath: str
    duration: float
    codes_path: str | None = None


@dataclass(kw_only=True)
class PairInputs:
    """The texts and contexts to pair. Any list may be empty."""

    challenging_texts: list[str] = field(default_factory=list)
    regular_texts_for_audiocontext: list[str] = field(default_factory=list)
    regular_texts_for_textcontext: list[str] = field(default_factory=list)
    audio_contexts: list[AudioContext] = field(default_factory=list)
    text_contexts: list[str] = field(default_factory=list)


def read_text_lines(path: str | os.PathLike, what: str = "texts") -> list[str]:
    """One entry per non-blank line, stripped. The file must be UTF-8 and hold one."""
    text = _read_utf8(path)
    lines = [line.strip() for line in text.splitlines()]
    entries = [line for line in lines if line]
    if not entries:
        raise InputError(f"{path}: no {what} (the file holds only blank lines)")
    return entries


def read_audio_contexts(path: str | os.PathLike) -> list[AudioContext]:
    """JSON lines with context_audio_filepath, context_audio_duration and, optionally,
    context_audio_codes_path. Other keys are ignored (as NeMo does)."""
    contexts, problems = [], []
    for number, line in _json_lines(path):
        try:
            contexts.append(_audio_context(line))
        except ValueError as exc:
            problems.append(f"{path}:{number}: {exc}")
    _raise_first(problems)
    if not contexts:
        raise InputError(f"{path}: no audio contexts (the file holds only blank lines)")
    return contexts


def read_reference_audios(path: str | os.PathLike) -> dict[tuple[str, str], str]:
    """JSON lines {text, context_audio_filepath, reference_audio_filepath}: a
    recording of that text in that voice (the PESQ reference of the pair)."""
    keys = ("text", "context_audio_filepath", "reference_audio_filepath")
    refs: dict[tuple[str, str], str] = {}
    problems = []
    for number, line in _json_lines(path):
        try:
            obj = _json_object(line)
            text, ctx, ref = (_string(obj, k) for k in keys)
            if refs.get((text, ctx), ref) != ref:
                raise ValueError("a second, different reference for the same text and context")
            refs[(text, ctx)] = ref
        except ValueError as exc:
            problems.append(f"{path}:{number}: {exc}")
    _raise_first(problems)
    return refs


def load_inputs(challenging_texts=None, regular_texts_for_audiocontext=None,
                regular_texts_for_textcontext=None, audio_contexts=None,
                *, text_contexts=None) -> PairInputs:
    """Read the input files that are given (paths or None)."""
    read = lambda p, what: read_text_lines(p, what) if p is not None else []  # noqa: E731
    return PairInputs(
        challenging_texts=read(challenging_texts, "texts"),
        regular_texts_for_audiocontext=read(regular_texts_for_audiocontext, "texts"),
        regular_texts_for_textcontext=read(regular_texts_for_textcontext, "texts"),
        audio_contexts=read_audio_contexts(audio_contexts) if audio_contexts is not None else [],
        text_contexts=read(text_contexts, "text contexts"),
    )


def _read_utf8(path: str | os.PathLike) -> str:
    p = Path(path)
    if not p.exists():
        raise InputError(f"{path}: no such file")
    if not p.is_file():
        raise InputError(f"{path}: not a file")
    data = p.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputError(f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x})") from None


def _json_lines(path) -> Iterable[tuple[int, str]]:
    for number, line in enumerate(_read_utf8(path).splitlines(), start=1):
        if line.strip():
            yield number, line


def _json_object(line: str) -> dict[str, Any]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    return obj


def _string(obj: dict[str, Any], key: str) -> str:
    if key not in obj:
        raise ValueError(f"missing '{key}'")
    value = obj[key]
    if not isinstance(value, str) or not value:
        raise ValueError(f"'{key}' must be a non-empty string (got {json.dumps(value)})")
    return value


def _audio_context(line: str) -> AudioContext:
    obj = _json_object(line)
    filepath = _string(obj, "context_audio_filepath")
    if "context_audio_duration" not in obj:
        raise ValueError("missing 'context_audio_duration'")
    duration = obj["context_audio_duration"]
    if (isinstance(duration, bool) or not isinstance(duration, (int, float))
            or not math.isfinite(duration) or duration <= 0):
        raise ValueError(f"'context_audio_duration' must be a positive number "
                         f"(got {json.dumps(duration)})")
    codes = obj.get("context_audio_codes_path")
    if codes is not None and (not isinstance(codes, str) or not codes):
        raise ValueError(f"'context_audio_codes_path' must be a non-empty string "
                         f"(got {json.dumps(codes)})")
    return AudioContext(filepath, float(duration), codes)


def _raise_first(problems: Sequence[str]) -> None:
    """One line: the first bad record, and how many more there are."""
    if problems:
        extra = len(problems) - 1
        more = f" (and {extra} more bad line{'s' if extra > 1 else ''})" if extra else ""
        raise InputError(problems[0] + more)
