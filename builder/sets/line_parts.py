"""A generation's fixed manifest line parts (nemo_lines.py says how they are used):
its prompt fields, wav and metrics JSON-encoded as ``json.JSONEncoder(ensure_ascii=False)``
writes them inside a dict, before and after its codes path, column by column.
Values are encoded exactly as that encoder does (strings by its own
``encode_basestring``, floats by ``float.__repr__`` with NaN/Infinity, anything
else by the encoder); tests/test_rethreshold.py compares both on awkward values.
"""

from __future__ import annotations

import json
import json.encoder
from typing import Any

import numpy as np
import pyarrow as pa

from ttspo.builder.core.schemas import GEN, LINE_PARTS_SCHEMA

CONTEXT_CODES = "context_audio_codes_path"  # from the prompt, at the set's prompts version

ENCODER = json.JSONEncoder(ensure_ascii=False)
_STRING = json.encoder.encode_basestring  # what that encoder uses for str (C when available)
_INF = float("inf")


def encode_value(v: Any) -> str:
    """V as the encoder writes it inside a dict."""
    if type(v) is str:
        return _STRING(v)
    if type(v) is float:
        if v != v:
            return "NaN"
        if v == _INF or v == -_INF:
            return "Infinity" if v > 0 else "-Infinity"
        return float.__repr__(v)
    return ENCODER.encode(v)


def _problem(duration, audio, context, context_duration) -> str | None:
    if duration is None:
        return "has no duration (NeMo's dataset filters on it)"
    if not audio:
        return "has no audio_filepath"
    if context and context_duration is None:
        return "has a context audio without its duration"
    return None


def _encoded(key: str, values: list) -> list:
    head = f"{_STRING(key)}: "
    return [None if v is None else head + encode_value(v) for v in values]


def _joined(encoded: list[list]) -> list[str]:
    return [", ".join([p for p in parts if p is not None]) for parts in zip(*encoded)]


def gen_parts(c: dict[str, list], rows: np.ndarray | list[int]) -> pa.Table:
    """LINE_PARTS_SCHEMA rows of the generations in the columns C, at ROWS of their
    table (keys in NeMo's order, unknown values left out), column by column."""
    audio_context = [bool(x) for x in c[GEN.context_audio_filepath]]

    def only(values: list, when: bool) -> list:
        return [v if a is when else None for v, a in zip(values, audio_context)]

    head = [("text", c[GEN.text]), ("record_type", c[GEN.record_type]),
            ("context_text", only(c[GEN.context_text], False)),
            ("context_audio_filepath", only(c[GEN.context_audio_filepath], True)),
            ("context_audio_duration", only(c[GEN.context_audio_duration], True)),
            ("context_audio_codes_path", only(c[CONTEXT_CODES], True)),
            ("audio_filepath", c[GEN.audio_filepath])]
    tail = [("duration", c[GEN.duration]), ("cer_gts", c[GEN.cer]), ("wer_gts", c[GEN.wer]),
            ("pred_context_similarity", c[GEN.ssim]), ("pred_transcript", c[GEN.pred_transcript]),
            ("gt_transcript", c[GEN.gt_transcript])]
    problems = [_problem(*x) for x in zip(c[GEN.duration], c[GEN.audio_filepath],
                                          c[GEN.context_audio_filepath], c[GEN.context_audio_duration])]
    return pa.table([c[GEN.generation_id], rows, _joined([_encoded(k, v) for k, v in head]), c[GEN.codes_path],
                     _joined([_encoded(k, v) for k, v in tail]), c[GEN.duration], problems],
                    schema=LINE_PARTS_SCHEMA)
