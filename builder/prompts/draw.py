"""Step 1 of the NeMo workflow: text-context pairs, seeded.

Same semantics as NeMo's ``scripts/magpietts/dpo/create_text_contextpairs.py``:

* each challenging text gets ``audio_per_challenging`` audio contexts and
  ``text_per_challenging`` text contexts; each regular text for audio context
  gets ``audio_per_regular`` audio contexts; each regular text for text context
  gets ``text_per_regular`` text contexts;
* contexts are drawn with replacement (so one draw may pair a text with the same
  context twice), in that loop order;
* the records are shuffled, and the manifest repeats each record
  ``nsamples_perpair`` times consecutively (one group = N consecutive lines);
* manifest records carry NeMo's fields in NeMo's order (nemo-formats.md section 1),
  including the dummy ``audio_filepath`` (the first audio context) of
  text-context records, which NeMo's dataset requires.

Differences, on purpose:

* the draw is seeded (``random.Random(seed)``): the same inputs and seed give a
  byte-identical manifest and the same prompt ids. NeMo uses the unseeded global
  ``random``, so its runs cannot be reproduced;
* text contexts are stripped of surrounding white space (NeMo keeps the line's
  trailing newline inside ``context_text``);
* no ``*_tinysubset.json`` side manifest (``head -n`` does that);
* bad inputs are reported as :class:`InputError` naming the file and line.

The ``prompts`` table has ONE row per distinct pair (``prompt_id`` is a hash of
the text and its context, see :func:`ttspo.builder.core.ids.prompt_id`). A draw with
replacement can produce the same pair twice: the manifest keeps both records
(as NeMo does: two groups of generations for that pair), the table keeps one
row whose ``position`` is the pair's first index in the shuffled draw. Pair
index ``i`` covers manifest lines ``i*N .. i*N+N-1`` (0-based).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from ttspo.builder.core import ids
from ttspo.builder.core.errors import InputError
from ttspo.builder.core.files import StagedFile
from ttspo.builder.core.store import Lineage, as_lineage
# Input readers are part of this API too (re-exported).
from ttspo.builder.prompts.inputs import (  # noqa: F401
    AudioContext, PairInputs, file_sha256, load_inputs, read_audio_contexts,
    read_reference_audios, read_text_lines)
from ttspo.builder.core.schemas import PROMPT, PROMPTS_SCHEMA

PROMPTS_TABLE = "prompts"
# NeMo's placeholder target duration: it does not matter, it only keeps the
# record from being dropped by the dataset's duration filter.
PLACEHOLDER_DURATION = 6.0
CHALLENGING, REGULAR = "challenging", "regular"


@dataclass(frozen=True)
class PairCounts:
    """How many contexts each text gets (NeMo's defaults)."""

    audio_per_challenging: int = 10
    text_per_challenging: int = 3
    audio_per_regular: int = 1
    text_per_regular: int = 1


# ---------------------------------------------------------------- pairing
def check_inputs(inputs: PairInputs, counts: PairCounts) -> None:
    """Refuse a draw that cannot be made, before anything is written."""
    for name, value in vars(counts).items():
        if value < 0:
            raise InputError(f"count {name} must be >= 0 (got {value})")
    audio_asks = _asks(
        (inputs.challenging_texts, counts.audio_per_challenging, "challenging"),
        (inputs.regular_texts_for_audiocontext, counts.audio_per_regular, "regular"))
    text_asks = _asks(
        (inputs.challenging_texts, counts.text_per_challenging, "challenging"),
        (inputs.regular_texts_for_textcontext, counts.text_per_regular, "regular"))
    if not audio_asks and not text_asks:
        raise InputError("no pairs to make: give challenging or regular texts with a count above 0 "
                         "(--challenging-texts, --regular-texts-for-audiocontext, "
                         "--regular-texts-for-textcontext)")
    if audio_asks and not inputs.audio_contexts:
        raise InputError(f"audio-context pairs asked ({audio_asks}) "
                         "but no audio contexts given (--audio-contexts)")
    if text_asks and not inputs.text_contexts:
        raise InputError(f"text-context pairs asked ({text_asks}) but no text contexts given "
                         "(--text-contexts); give some or set the text-context counts to 0")
    if text_asks and not inputs.audio_contexts:
        raise InputError("text-context pairs need at least one audio context: NeMo's manifest "
                         "uses the first one as their dummy audio_filepath (--audio-contexts)")


def _asks(*groups: tuple[list[str], int, str]) -> str:
    """'10 per challenging text, 1 per regular text' for the groups that ask."""
    return ", ".join(f"{n} per {kind} text" for texts, n, kind in groups if texts and n > 0)


def make_pairs(inputs: PairInputs, counts: PairCounts = PairCounts(), seed: int = 0) -> list[dict]:
    """Draw the text-context pairs and shuffle them: one NeMo manifest record per pair.

    Records are dicts in NeMo's field order, before the ``nsamples_perpair``
    repetition (see :func:`write_manifest`). Same inputs and seed -> same list.
    """
    check_inputs(inputs, counts)
    rng = random.Random(seed)
    audio, texts = inputs.audio_contexts, inputs.text_contexts
    dummy = audio[0] if audio else None
    records: list[dict] = []
    # Loop order as in NeMo: per challenging text its audio then its text contexts.
    for text in inputs.challenging_texts:
        records += [audio_context_record(text, rng.choice(audio), CHALLENGING)
                    for _ in range(counts.audio_per_challenging)]
        records += [text_context_record(text, rng.choice(texts), dummy, CHALLENGING)
                    for _ in range(counts.text_per_challenging)]
    for text in inputs.regular_texts_for_audiocontext:
        records += [audio_context_record(text, rng.choice(audio), REGULAR)
                    for _ in range(counts.audio_per_regular)]
    for text in inputs.regular_texts_for_textcontext:
        records += [text_context_record(text, rng.choice(texts), dummy, REGULAR)
                    for _ in range(counts.text_per_regular)]
    rng.shuffle(records)
    return records


def audio_context_record(text: str, context: AudioContext, record_type: str) -> dict:
    """A manifest record pairing TEXT with an audio context (NeMo's field order)."""
    record = {
        "text": text,
        "duration": PLACEHOLDER_DURATION,
        "audio_filepath": context.filepath,
        "context_audio_filepath": context.filepath,
        "context_audio_duration": context.duration,
        "record_type": record_type,
    }
    if context.codes_path is not None:
        record["context_audio_codes_path"] = context.codes_path
        record["target_audio_codes_path"] = context.codes_path
    return record


def text_context_record(text: str, context_text: str, dummy: AudioContext,
                        record_type: str) -> dict:
    """A manifest record pairing TEXT with a text context. audio_filepath (and
    target_audio_codes_path) point at the dummy audio context: NeMo needs them."""
    record = {
        "text": text,
        "duration": PLACEHOLDER_DURATION,
        "audio_filepath": dummy.filepath,
        "context_text": context_text,
        "record_type": record_type,
    }
    if dummy.codes_path is not None:
        record["target_audio_codes_path"] = dummy.codes_path
    return record


def prompt_id_of(record: dict) -> str:
    """The prompt id of a NeMo manifest record (from ttspo or not)."""
    if record.get("context_audio_filepath"):
        return ids.prompt_id(record["text"], record["context_audio_filepath"])
    return ids.prompt_id(record["text"], None, record.get("context_text"))


# ---------------------------------------------------------------- writing
def write_manifest(path: str | os.PathLike, records: Sequence[dict], nsamples_perpair: int) -> int:
    """Write the NeMo manifest (each record NSAMPLES_PERPAIR times in a row) at
    once: a temporary file renamed into place, so no half manifest is left.
    Returns the number of lines."""
    return publish(stage_manifest(path, records, nsamples_perpair))


@dataclass
class StagedManifest:
    """A manifest written to a temporary file beside its destination."""

    file: StagedFile
    lines: int
    sha256: str

    @property
    def path(self) -> Path:
        return self.file.path


def stage_manifest(path: str | os.PathLike, records: Sequence[dict],
                   nsamples_perpair: int) -> StagedManifest:
    """Write the manifest next to PATH without publishing it (see :func:`publish`),
    so a command can commit its table first and rename the manifest last."""
    if nsamples_perpair < 1:
        raise InputError(f"nsamples_perpair must be >= 1 (got {nsamples_perpair})")
    dest = Path(path)
    if not dest.parent.is_dir():
        raise InputError(f"{path}: directory {dest.parent} does not exist")
    if dest.is_dir():
        raise InputError(f"{path}: is a directory")
    staged = StagedFile(dest)
    digest = hashlib.sha256()
    try:
        with staged.open("wb", buffering=1 << 20) as f:
            for record in records:
                # Serialised once, written N times: the N samples of one group.
                line = (json.dumps(record) + "\n").encode("utf-8") * nsamples_perpair
                digest.update(line)
                f.write(line)
    except BaseException:
        staged.discard()
        raise
    return StagedManifest(staged, len(records) * nsamples_perpair, digest.hexdigest())


def publish(staged: StagedManifest) -> int:
    staged.file.publish()
    return staged.lines


def discard(staged: StagedManifest | None) -> None:
    if staged is not None:
        staged.file.discard()


def prompts_table(records: Sequence[dict],
                  references: dict[tuple[str, str], str] | None = None) -> pa.Table:
    """One row per distinct pair, in draw order; position = first index in the draw."""
    rows, seen = [], set()
    for position, record in enumerate(records):
        pid = prompt_id_of(record)
        if pid in seen:
            continue
        seen.add(pid)
        ctx_audio = record.get("context_audio_filepath")
        rows.append({
            PROMPT.prompt_id: pid,
            PROMPT.text: record["text"],
            PROMPT.record_type: record.get("record_type"),
            PROMPT.context_type: "audio" if ctx_audio else "text",
            PROMPT.context_audio_filepath: ctx_audio,
            PROMPT.context_audio_duration: record.get("context_audio_duration") if ctx_audio else None,
            PROMPT.context_audio_codes_path: record.get("context_audio_codes_path"),
            PROMPT.context_text: None if ctx_audio else record.get("context_text"),
            PROMPT.reference_audio_filepath: (references or {}).get((record["text"], ctx_audio)),
            PROMPT.position: position,
        })
    return pa.Table.from_pylist(rows, schema=PROMPTS_SCHEMA)


def records_from_table(table: pa.Table, dummy: AudioContext) -> list[dict]:
    """Manifest records back from prompts rows, in position order: e.g. to write
    a new manifest (other nsamples_perpair) for pairs already in the store.
    DUMMY is the audio context text-context records point at (not stored)."""
    rows = sorted(table.to_pylist(), key=lambda r: r[PROMPT.position])
    out = []
    for r in rows:
        if r[PROMPT.context_type] == "audio":
            ctx = AudioContext(r[PROMPT.context_audio_filepath], r[PROMPT.context_audio_duration],
                               r[PROMPT.context_audio_codes_path])
            out.append(audio_context_record(r[PROMPT.text], ctx, r[PROMPT.record_type]))
        else:
            out.append(text_context_record(r[PROMPT.text], r[PROMPT.context_text], dummy,
                                           r[PROMPT.record_type]))
    return out


@dataclass(kw_only=True)
class PromptsWrite:
    """What :func:`write_prompts` did."""

    pairs: int  # records in the draw
    distinct: int  # distinct prompt ids among them
    new: int  # rows appended
    already_present: int  # distinct ids the table held before
    version: int | None  # the new version, or None if nothing was new

    @property
    def duplicates(self) -> int:
        return self.pairs - self.distinct


def write_prompts(store, records: Sequence[dict], lineage: Lineage,
                  references: dict[tuple[str, str], str] | None = None,
                  *, table: str = PROMPTS_TABLE) -> PromptsWrite:
    """Append the pairs not yet in TABLE, in ONE commit carrying LINEAGE.

    Idempotent: prompt ids already present are skipped, and when nothing is new
    no version is made. The prompts version read is added to lineage inputs.
    """
    rows = prompts_table(records, references)
    new_rows = rows
    if store.exists(table):
        ds = store.open(table)
        existing = ds.to_table(columns=[PROMPT.prompt_id]).column(0)
        new_rows = rows.filter(pc.invert(pc.is_in(rows.column(PROMPT.prompt_id), value_set=existing)))
        lineage = as_lineage(lineage).with_inputs({table: ds.version})
    version = None
    if new_rows.num_rows:
        version = store.write(table, new_rows, PROMPTS_SCHEMA, lineage, mode="append")
    return PromptsWrite(pairs=len(records), distinct=rows.num_rows, new=new_rows.num_rows,
                        already_present=rows.num_rows - new_rows.num_rows, version=version)


# ------------------------------------------------- step 1, end to end
@dataclass
class Draw:
    """Seeded pairs drawn from input files, with what lineage records of them."""

    records: list[dict]
    references: Any  # read_reference_audios' result, or None
    input_files: dict[str, dict[str, str]]  # input name -> {path, sha256}


def draw_pairs(paths: dict[str, str | os.PathLike], counts: PairCounts, seed: int) -> Draw:
    """Read PATHS (load_inputs' names, plus optional reference_audios) and draw."""
    inputs = load_inputs(**{k: v for k, v in paths.items() if k != "reference_audios"})
    references = (read_reference_audios(paths["reference_audios"])
                  if "reference_audios" in paths else None)
    input_files = {k: {"path": str(Path(p).absolute()), "sha256": file_sha256(p)}
                   for k, p in paths.items()}
    return Draw(make_pairs(inputs, counts, seed=seed), references, input_files)


def commit_draw(store, draw: Draw, lineage: Lineage,
                manifest_out: str | os.PathLike | None = None,
                *, nsamples_perpair: int = 6) -> tuple[PromptsWrite, StagedManifest | None]:
    """ONE commit of the draw's new pairs; the manifest, if asked, is written
    beside its destination first and renamed into place only after the commit.

    LINEAGE gets the input files (and the manifest written) as extras.
    """
    staged = None
    try:
        extra = {}
        if manifest_out is not None:
            staged = stage_manifest(manifest_out, draw.records, nsamples_perpair)
            extra["manifest"] = {"path": str(staged.path.absolute()), "lines": staged.lines,
                                 "sha256": staged.sha256}
        result = write_prompts(store, draw.records,
                               as_lineage(lineage).with_extra(input_files=draw.input_files, **extra),
                               draw.references)
        if staged is not None:
            publish(staged)
    finally:
        discard(staged)
    return result, staged
