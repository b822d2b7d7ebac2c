"""The lines of a NeMo export, column by column (export.py says what they hold).

A manifest line is JSON as ``json.JSONEncoder(ensure_ascii=False).encode`` writes
a dict: ``{"key": value, ...}`` with ", " and ": " separators. A re-threshold
writes ~25k such lines, so instead of a dict and an encoder call per line, each
generation's fixed part (prompt fields, wav, codes, metrics) is encoded once,
column by column, and each line is that part plus the pair's few values. The
values are encoded exactly as the encoder does (strings by its own
``encode_basestring``, floats by ``float.__repr__`` with NaN/Infinity, anything
else by the encoder); tests/test_export.py compares both on awkward values.
"""

from __future__ import annotations

import json
import json.encoder
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ttspo.builder.core.errors import InputError
from ttspo.builder.core.schemas import GEN, PAIR, PROMPT

# Generation columns an export reads (not the heavy `codes`).
GEN_COLUMNS = (GEN.generation_id, GEN.prompt_id, GEN.text, GEN.record_type,
               GEN.context_audio_filepath, GEN.context_audio_duration, GEN.context_text,
               GEN.audio_filepath, GEN.codes_path, GEN.duration, GEN.cer, GEN.wer, GEN.ssim,
               GEN.pred_transcript, GEN.gt_transcript)
CONTEXT_CODES = "context_audio_codes_path"  # from the prompt, at the set's prompts version

_ENCODER = json.JSONEncoder(ensure_ascii=False)
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
    return _ENCODER.encode(v)


@dataclass
class GenLine:
    """A generation's part of its manifest lines: the encoded "key": value items
    before and after target_audio_codes_path (joined by ", ", "" if none)."""

    head: str
    codes_path: str | None  # the generation's own; an export with codes points elsewhere
    tail: str
    duration: float | None
    problem: str | None  # why NeMo cannot use it (check_for_nemo), if it cannot
    _last: tuple | None = None  # (codes_path, opening) of the last call

    def opening(self, codes_path: str | None) -> str:
        """``{"text": ..., "gt_transcript": ...`` (no closing brace)."""
        if self._last is not None and self._last[0] == codes_path:  # a re-export into the same OUT
            return self._last[1]
        middle = None if codes_path is None else f'"target_audio_codes_path": {_STRING(codes_path)}'
        text = "{" + ", ".join([p for p in (self.head, middle, self.tail) if p])
        self._last = (codes_path, text)
        return text


@dataclass
class SetGenerations:
    """The generations a set names, at the version it was built from."""

    ds: Any  # the generations table at that version
    offsets: dict[str, int]  # generation id -> row offset in ds (every row)
    lines: dict[str, GenLine]  # generation id -> its line parts (at least the set's)
    ids: list[str]  # the set's generations, in table order


def set_generations(store, sv, pairs: pa.Table) -> SetGenerations:
    """The generations PAIRS name, read at the version the set was built from (plus
    each prompt's context codes path at the set's prompts version). Kept per table
    version for the session (session_cache)."""
    from ttspo.builder.sets.session_cache import cached, table_identity

    version = sv.record.inputs["generations"]
    ds = store.open("generations", version)
    gen_key = table_identity(ds)
    prompts = (store.open("prompts", sv.record.prompts_version) if sv.record.prompts_version is not None
               else None)
    offsets = cached("export.offsets", gen_key, lambda: {
        g: i for i, g in enumerate(ds.to_table(columns=[GEN.generation_id]).column(0).to_pylist())})
    named = pairs.column(PAIR.chosen_id).to_pylist() + pairs.column(PAIR.rejected_id).to_pylist()
    missing = [g for g in named if g not in offsets]
    if missing:
        raise InputError(f"{sv.ref}: generation {missing[0]} is not in generations@{version} "
                         f"({len(missing)} missing)")
    ids = sorted(set(named), key=offsets.__getitem__)
    lines = cached("export.lines", (gen_key, None if prompts is None else table_identity(prompts)), dict)
    new = [g for g in ids if g not in lines]
    if new:
        table = ds.take(pa.array([offsets[g] for g in new], pa.int64()), columns=list(GEN_COLUMNS))
        columns = {c: table.column(c).to_pylist() for c in GEN_COLUMNS}
        if columns[GEN.generation_id] != new:  # rows are matched by offset: check they are these
            raise InputError(f"{ds.uri}: rows moved while the export read them; export again")
        columns[CONTEXT_CODES] = context_codes(prompts, table.column(GEN.prompt_id))
        lines.update(zip(new, gen_lines(columns)))
    return SetGenerations(ds, offsets, lines, ids)


def context_codes(prompts, prompt_ids: pa.ChunkedArray) -> list:
    """Each generation's prompt's context_audio_codes_path (None without prompts)."""
    if prompts is None:
        return [None] * len(prompt_ids)
    table = prompts.to_table(columns=[PROMPT.prompt_id, PROMPT.context_audio_codes_path])
    at = pc.index_in(prompt_ids, value_set=table.column(PROMPT.prompt_id))
    return table.column(PROMPT.context_audio_codes_path).take(at).to_pylist()


def check_for_nemo(ref: str, gens: SetGenerations) -> None:
    for gid in gens.ids:
        problem = gens.lines[gid].problem
        if problem:
            raise InputError(f"{ref}: generation {gid} {problem}")


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


def gen_lines(c: dict[str, list]) -> list[GenLine]:
    """Line parts of each generation in the columns C (keys in NeMo's order,
    unknown values left out), column by column."""
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
    heads = _joined([_encoded(k, v) for k, v in head])
    tails = _joined([_encoded(k, v) for k, v in tail])
    problems = [_problem(*x) for x in zip(c[GEN.duration], c[GEN.audio_filepath],
                                          c[GEN.context_audio_filepath], c[GEN.context_audio_duration])]
    return [GenLine(h, p, t, d, problem) for h, p, t, d, problem in zip(
        heads, c[GEN.codes_path], tails, c[GEN.duration], problems)]


def fixed_parts(gens: SetGenerations, codes_paths: dict[str, str]) -> dict[str, str]:
    """generation id -> its lines' opening, pointing at CODES_PATHS (its own codes_path without)."""
    lines = gens.lines
    if codes_paths:
        return {g: lines[g].opening(codes_paths[g]) for g in gens.ids}
    return {g: lines[g].opening(lines[g].codes_path) for g in gens.ids}


def _strings(values: list) -> list[str]:
    return list(map(_STRING, values)) if None not in values else [encode_value(v) for v in values]


def nemo_manifest_lines(pairs: pa.Table, fixed: dict[str, str]) -> dict[str, list[str]]:
    """split -> its lines, each pair as its chosen line then its rejected line, in
    the order of PAIRS (the shuffle). Column by column: each value encoded once."""
    col = {name: pairs.column(name).to_pylist() for name in (
        PAIR.chosen_id, PAIR.rejected_id, PAIR.pair_id, PAIR.chosen_reward, PAIR.rejected_reward,
        PAIR.cer_delta, PAIR.sim_delta, PAIR.split)}
    splits = col[PAIR.split]
    unknown = set(splits) - {"train", "val"}
    if unknown:
        raise InputError(f"a pair has split {sorted(map(str, unknown))[0]!r}, not train or val")
    c_ids, r_ids = col[PAIR.chosen_id], col[PAIR.rejected_id]
    pid = _strings(col[PAIR.pair_id])
    numbers = {name: [encode_value(v) for v in col[name]] for name in (
        PAIR.chosen_reward, PAIR.rejected_reward, PAIR.cer_delta, PAIR.sim_delta)}
    openings = [(fixed[c], fixed[r]) for c, r in zip(c_ids, r_ids)]
    chosen = [f'{o}{", " if len(o) > 1 else ""}"reward": {w}, "pair_id": {p}, "generation_id": {g}}}\n'
              for (o, _), w, p, g in zip(openings, numbers[PAIR.chosen_reward], pid, _strings(c_ids))]
    rejected = [f'{o}{", " if len(o) > 1 else ""}"reward": {w}, "cer_delta": {cd}, "sim_delta": {sd}, '
                f'"pair_id": {p}, "generation_id": {g}}}\n'
                for (_, o), w, cd, sd, p, g in zip(openings, numbers[PAIR.rejected_reward],
                                                    numbers[PAIR.cer_delta], numbers[PAIR.sim_delta],
                                                    pid, _strings(r_ids))]
    return {split: [line for c, r, s in zip(chosen, rejected, splits) if s == split for line in (c, r)]
            for split in ("train", "val")}
