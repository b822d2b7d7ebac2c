"""Assemble generation rows into Arrow record batches of GENERATIONS_SCHEMA.

Shared by the NeMo and JSON-lines ingest paths. Rows are accumulated column by
column (plain lists) and codes as raw little-endian int16 chunks, so building a
batch is a handful of vectorised Arrow calls rather than per-row conversions.
Imports neither lance nor torch: it runs in the spawned worker processes too.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ttspo.builder.core import ids
from ttspo.builder.core import metrics as registry
from ttspo.builder.core.schemas import (CODES_TYPE, GEN, GENERATE_COLUMNS, GENERATIONS_SCHEMA,
                                        REGISTERED_FIELDS)

# Manifest-derived fields of a prompt, in this order, as shipped to workers.
PROMPT_FIELDS = (GEN.text, GEN.record_type, GEN.context_audio_filepath,
                 GEN.context_audio_duration, GEN.context_text, GEN.prompt_id)

# Columns filled per row by the readers (everything else is derived or constant).
ROW_COLUMNS = (GEN.manifest_line, GEN.group_index, GEN.sample_index, GEN.audio_filepath,
               GEN.audio, GEN.codes_path, GEN.duration, GEN.sample_rate, GEN.cer, GEN.wer,
               GEN.ssim, GEN.pesq, GEN.squim, GEN.codes_len, GEN.pred_transcript,
               GEN.gt_transcript, GEN.invalid, GEN.source_file)
# Registered metrics outside ROW_COLUMNS (mos ...): a reader passes them as a dict.
OTHER_METRICS = tuple(m for m in registry.names() if m not in ROW_COLUMNS)


def prompt_fields(record: dict[str, Any]) -> tuple:
    """The prompt part of a manifest/jsonl record (already type-checked).

    A record with a context_text is a text-context prompt: NeMo fills its
    audio_filepath/context_audio_filepath with a dummy, so that path is dropped
    and the prompt id is made from the context text.
    """
    text = record[GEN.text]
    context_text = record.get(GEN.context_text) or None
    audio = None if context_text else (record.get(GEN.context_audio_filepath) or None)
    duration = None if context_text else record.get(GEN.context_audio_duration)
    duration = None if duration is None else float(duration)  # an int: checked in range
    pid = ids.prompt_id(text, audio, context_text)
    return (text, record.get(GEN.record_type), audio, duration, context_text, pid)


class RowBuffer:
    """One batch of generations of one run.

    Rows are tuples in ROW_COLUMNS order (built by the readers in one expression,
    cheaper than a dozen list appends per row); prompts are shared per batch.
    """

    def __init__(self, run: str, metric_source: str):
        self.run = run
        self.metric_source = metric_source
        self.rows: list[tuple] = []
        self.prompt_index: list[int] = []  # row -> index into `prompts`
        self.prompts: list[tuple] = []
        self.codes_shape: list[tuple[int, int]] = []  # (codebooks, frames); (0, -1) = no codes
        self.codes_chunks: list[Any] = []
        self.other: dict[int, dict[str, float]] = {}  # row -> OTHER_METRICS values, if any

    def __len__(self) -> int:
        return len(self.rows)

    def add_prompt(self, fields: tuple) -> int:
        self.prompts.append(fields)
        return len(self.prompts) - 1

    def add(self, row: tuple, prompt: int, codes: tuple | None,
            other: dict[str, float] | None = None) -> None:
        """row in ROW_COLUMNS order; codes = (codebooks, frames, int16 LE bytes) or None;
        OTHER: values of OTHER_METRICS the record carried."""
        if other:
            self.other[len(self.rows)] = other
        self.rows.append(row)
        self.prompt_index.append(prompt)
        if codes is None:
            self.codes_shape.append((0, -1))
        else:
            rows, cols, chunk = codes
            if rows < 0 or cols < 0 or len(chunk) != rows * cols * 2:
                # a reader bug, never data: a chunk of the wrong length shifts every later row
                raise ValueError(f"codes chunk of {len(chunk)} bytes for shape [{rows}, {cols}]")
            self.codes_shape.append((rows, cols))
            self.codes_chunks.append(chunk)

    def to_batch(self) -> pa.RecordBatch:
        n = len(self)
        columns = dict(zip(ROW_COLUMNS, zip(*self.rows)))
        arrays: dict[str, pa.Array] = {
            name: pa.array(columns[name], GENERATIONS_SCHEMA.field(name).type)
            for name in ROW_COLUMNS
        }
        run = pa.array([self.run] * n, pa.string())
        arrays[GEN.run] = run
        # ids.generation_id / ids.group_id, vectorised: "run:line" and "run:g<group>"
        arrays[GEN.generation_id] = pc.binary_join_element_wise(
            run, pc.cast(arrays[GEN.manifest_line], pa.string()), ":")
        arrays[GEN.group_id] = pc.binary_join_element_wise(
            run, pc.cast(arrays[GEN.group_index], pa.string()), ":g")
        arrays[GEN.codes] = self._codes_array()
        arrays.update(self._prompt_arrays())
        for f in REGISTERED_FIELDS:  # statuses, other metrics and their sources: null ...
            arrays[f.name] = pa.nulls(n, f.type)
        for name in OTHER_METRICS:  # ... unless the records carried the metric
            if any(name in v for v in self.other.values()):
                arrays[name] = pa.array([self.other.get(i, {}).get(name) for i in range(n)],
                                        pa.float64())
        # A backend's source is the file's producer where any of its metrics is present.
        tag = pa.scalar(self.metric_source, pa.string())
        for b in registry.REGISTRY.backends.values():
            present = None
            for m in registry.metrics_of(b.name):
                valid = pc.is_valid(arrays[m])
                present = valid if present is None else pc.or_(present, valid)
            if present is not None:
                arrays[b.source] = pc.if_else(present, tag, pa.scalar(None, pa.string()))
        for name in GENERATE_COLUMNS:  # what `ttspo generate` records: null when ingested
            arrays[name] = pa.nulls(n, GENERATIONS_SCHEMA.field(name).type)
        return pa.RecordBatch.from_arrays([arrays[f.name] for f in GENERATIONS_SCHEMA],
                                          schema=GENERATIONS_SCHEMA)

    def _prompt_arrays(self) -> dict[str, pa.Array]:
        index = pa.array(self.prompt_index, pa.int32())
        out = {}
        for k, name in enumerate(PROMPT_FIELDS):
            typ = GENERATIONS_SCHEMA.field(name).type
            out[name] = pa.array([p[k] for p in self.prompts], typ).take(index)
        return out

    def _codes_array(self) -> pa.Array:
        shapes = np.array(self.codes_shape, dtype=np.int64).reshape(-1, 2)
        present = shapes[:, 1] >= 0
        rows = np.where(present, shapes[:, 0], 0)
        outer = np.zeros(len(shapes) + 1, dtype=np.int32)
        np.cumsum(rows, out=outer[1:])
        inner_len = np.repeat(shapes[present, 1], shapes[present, 0])
        if rows.sum() >= 2**31 or inner_len.sum() >= 2**31:  # int32 list offsets
            raise ValueError("too many codes for one batch: lower batch_rows")
        inner = np.zeros(len(inner_len) + 1, dtype=np.int32)
        np.cumsum(inner_len, out=inner[1:])
        values = np.frombuffer(b"".join(self.codes_chunks), dtype="<i2").astype(np.int16, copy=False)
        mask = None if present.all() else pa.array(~present)
        inner_list = pa.ListArray.from_arrays(pa.array(inner), pa.array(values, pa.int16()))
        return pa.ListArray.from_arrays(pa.array(outer), inner_list, type=CODES_TYPE, mask=mask)
