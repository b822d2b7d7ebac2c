"""`ttspo ingest jsonl`: one generation per JSON line, for data from other systems.

Each line needs ``text``, ``group`` (any string or integer naming the group of
samples drawn for one prompt) and ``audio_filepath`` (relative paths are taken
from the file's folder). Optional: ``sample`` (position in its group; default the
order of appearance), ``record_type``, ``context_audio_filepath``,
``context_audio_duration``, ``context_text``, ``codes_path`` (torch.save'd int16
[C, T], or a .npy), ``cer``, ``wer``, ``ssim``, ``pesq``, ``squim``, ``codes_len``,
``duration`` (the wav header wins), ``pred_transcript``, ``gt_transcript``,
``invalid`` (default: pred_transcript is "<INVALID>").

A line's generation id is ``run:N`` with N its 0-based line number.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np

from ttspo.builder.ingest import codes as nemo_codes
from ttspo.builder.ingest import files as nf
from ttspo.builder.ingest.nemo import parse_manifest_record, spill_batch
from ttspo.builder.ingest.rows import OTHER_METRICS, RowBuffer, prompt_fields
from ttspo.builder.core.errors import InputError
from ttspo.builder.core.files import file_digest
from ttspo.builder.core.schemas import GEN

JSONL_SOURCE = "jsonl"
# The metrics a record may carry: every registered one (builder/core/metrics.py).
METRIC_KEYS = (GEN.cer, GEN.wer, GEN.ssim, GEN.pesq, GEN.squim)  # the row tuple's
ALL_METRIC_KEYS = METRIC_KEYS + OTHER_METRICS


@dataclass(kw_only=True)
class Plan:
    label: str  # the path as the user gave it (messages)
    path: str  # absolute
    sha256: str
    records: int
    run: str
    present_lines: set[int]  # lines (0-based) whose generation is already stored
    todo: int = 0
    present: int = 0


def plan(label: str, run: str, present_lines: set[int]) -> Plan:
    """Hash and count the lines (no parsing yet): lineage and the progress total."""
    path = os.path.abspath(label)
    sha = file_digest(path, label).sha256
    records = todo = 0
    try:
        with open(path, "rb") as fh:
            for number, raw in enumerate(fh, 1):
                if raw.strip():
                    records += 1
                    todo += (number - 1) not in present_lines
    except OSError as exc:
        raise InputError(f"{label}: cannot read ({exc.strerror})") from None
    if records == 0:
        raise InputError(f"{label}: no records (empty file)")
    return Plan(label=label, path=path, sha256=sha, records=records, run=run,
                present_lines=present_lines, todo=todo, present=records - todo)


@dataclass
class _Group:
    index: int
    prompt_id: str
    first_line: int
    next_sample: int = 0


def read_batches(plan: Plan, embed_audio: bool, batch_rows: int,
                 spill_dir: str, *, encode: Callable | None = None) -> Iterator[tuple]:
    """Parse and check every line; per chunk, spill the good new rows (see
    ingest_nemo.spill_batch for what is yielded). ENCODE(audio, sr) -> codes [C, T]
    gives codes to lines that have audio but no codes_path."""
    for k, (batch, problems) in enumerate(_batches(plan, embed_audio, batch_rows, encode)):
        yield spill_batch(batch, os.path.join(spill_dir, f"{k:08d}.arrows"), problems)


def _batches(plan: Plan, embed_audio: bool, batch_rows: int,
             encode: Callable | None) -> Iterator[tuple[Any, list]]:
    groups: dict[Any, _Group] = {}
    taken: set[tuple[int, int]] = set()
    buf, problems = RowBuffer(plan.run, JSONL_SOURCE), []
    prompt_slot: dict[str, int] = {}
    base = os.path.dirname(plan.path)
    with open(plan.path, "rb") as fh:
        for number, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            where = f"{plan.label}:{number}"
            try:
                record = _parse(raw)
                fields = prompt_fields(record)
                group, sample = _place(record, fields, groups, taken, number=number)
            except nf.BadFile as exc:
                problems.append((number, where, str(exc)))
                continue
            if (number - 1) in plan.present_lines:
                continue
            try:
                row = _read_files(record, base, embed_audio, encode)
            except nf.BadFile as exc:
                problems.append((number, where, str(exc)))
                continue
            if fields[-1] not in prompt_slot:
                prompt_slot[fields[-1]] = buf.add_prompt(fields)
            _add(buf, number, group, sample, prompt=prompt_slot[fields[-1]], record=record, row=row,
                 path=plan.path)
            if len(buf) >= batch_rows:
                yield buf.to_batch(), problems
                buf, problems, prompt_slot = RowBuffer(plan.run, JSONL_SOURCE), [], {}
    yield (buf.to_batch() if len(buf) else None), problems


def _parse(raw: bytes) -> dict[str, Any]:
    record = parse_manifest_record(raw)
    for key in ("group", "audio_filepath"):
        if key not in record:
            raise nf.BadFile(f"no '{key}' field")
    group = record["group"]
    if isinstance(group, bool) or not isinstance(group, (str, int)):
        raise nf.BadFile("group is not a string or an integer")
    nf.string(record, "audio_filepath")
    nf.string(record, GEN.codes_path)
    sample = nf.number(record, "sample", integer=True)
    if sample is not None and sample < 0:
        raise nf.BadFile(f"sample is negative ({sample})")
    for key in ALL_METRIC_KEYS + (GEN.duration,):
        nf.number(record, key)
    nf.number(record, GEN.codes_len, integer=True)
    for key in (GEN.pred_transcript, GEN.gt_transcript):
        nf.string(record, key)
    if not isinstance(record.get(GEN.invalid, False), bool):
        raise nf.BadFile("invalid is not true or false")
    return record


def _place(record: dict, fields: tuple, groups: dict, taken: set, *,
           number: int) -> tuple[int, int]:
    """Group index (by first appearance) and sample index; one prompt per group."""
    key = (type(record["group"]).__name__, record["group"])
    group = groups.get(key)
    if group is None:
        group = groups[key] = _Group(len(groups), fields[-1], number)
    elif group.prompt_id != fields[-1]:
        raise nf.BadFile(f"group {record['group']!r} has another text/context on line "
                         f"{group.first_line}")
    sample = record.get("sample")
    sample = group.next_sample if sample is None else int(sample)
    if (group.index, sample) in taken:
        raise nf.BadFile(f"group {record['group']!r} already has a sample {sample}")
    taken.add((group.index, sample))
    group.next_sample = max(group.next_sample, sample + 1)
    return group.index, sample


def _read_files(record: dict, base: str, embed_audio: bool,
                encode: Callable | None = None) -> dict[str, Any]:
    audio_path = os.path.abspath(os.path.join(base, record["audio_filepath"]))
    try:
        data = nf.read_file_bytes(audio_path) if embed_audio else None
        info = nf.wav_info(audio_path, data)
    except nf.BadFile as exc:
        raise nf.BadFile(f"audio {record['audio_filepath']}: {exc}") from None
    row = {"audio_filepath": audio_path, "audio": data, "info": info, "codes": None,
           "codes_path": None}
    if record.get(GEN.codes_path):
        codes_path = os.path.abspath(os.path.join(base, record[GEN.codes_path]))
        try:
            row["codes"] = _read_codes(codes_path)
        except nf.BadFile as exc:
            raise nf.BadFile(f"codes {record[GEN.codes_path]}: {exc}") from None
        row["codes_path"] = codes_path
    elif encode is not None:
        try:
            row["codes"] = _encode(audio_path, data, encode)
        except nf.BadFile as exc:
            raise nf.BadFile(f"audio {record['audio_filepath']}: {exc}") from None
    return row


def _encode(path: str, data: bytes | None, encode: Callable) -> tuple[int, int, bytes]:
    """The codec's codes of the audio at PATH, as (codebooks, frames, int16 LE bytes)."""
    import io

    import soundfile as sf

    try:
        audio, sr = sf.read(io.BytesIO(data) if data is not None else path, dtype="float32",
                            always_2d=True)
    except (OSError, RuntimeError, sf.LibsndfileError) as exc:
        raise nf.BadFile(f"unreadable ({exc})") from None
    codes = np.asarray(encode(audio.mean(axis=1), sr))
    if codes.ndim != 2 or codes.size == 0:
        raise nf.BadFile(f"the codec gave codes of shape {list(codes.shape)}")
    if codes.min() < np.iinfo(np.int16).min or codes.max() > np.iinfo(np.int16).max:
        raise nf.BadFile("the codec's codes do not fit int16")
    return codes.shape[0], codes.shape[1], np.ascontiguousarray(codes, dtype="<i2").tobytes()


def _read_codes(path: str) -> tuple[int, int, bytes]:
    if not path.endswith(".npy"):
        return nemo_codes.codes_parts(nf.read_file_bytes(path, nf.MAX_CODES_BYTES))
    data = nf.read_file_bytes(path, nf.MAX_CODES_BYTES)  # a regular file: no FIFO, no device
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise nf.BadFile(f"not a readable .npy file ({exc})") from None
    if arr.dtype != np.int16:
        raise nf.BadFile(f"codes dtype is {arr.dtype}, expected int16")
    if arr.ndim != 2:
        raise nf.BadFile(f"codes shape is {list(arr.shape)}, expected [codebooks, frames]")
    return arr.shape[0], arr.shape[1], np.ascontiguousarray(arr, dtype="<i2").tobytes()


def _add(buf: RowBuffer, number: int, group: int, sample: int, *, prompt: int,
         record: dict, row: dict, path: str) -> None:
    info, get = row["info"], record.get
    invalid = get(GEN.invalid)
    if invalid is None:
        invalid = get(GEN.pred_transcript) == nf.INVALID_TRANSCRIPT
    metrics = [nf.number(record, key) for key in METRIC_KEYS]
    buf.add((number - 1, group, sample, row["audio_filepath"], row["audio"], row["codes_path"],
             info.duration, info.sample_rate, *metrics,
             nf.number(record, GEN.codes_len, integer=True), get(GEN.pred_transcript),
             get(GEN.gt_transcript), invalid, f"{path}:{number}"), prompt, row["codes"],
            {k: nf.number(record, k) for k in OTHER_METRICS if get(k) is not None})
