"""Shared by the scoring tests: fixture paths and small real stores (no tests here)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from ttspo.builder.core.schemas import GEN, GENERATIONS_SCHEMA, METRIC_STATUS, PROMPT, PROMPTS_SCHEMA
from ttspo.builder.core.store import Store, make_lineage

AUDIO = Path(__file__).parent / "fixtures" / "audio"
TEXT = (AUDIO / "text.txt").read_text().strip()
CONTEXT = AUDIO / "context.wav"
PROMPT_ID = "p-audio"
TEXT_PROMPT_ID = "p-text"


def fixture(name: str) -> Path:
    return AUDIO / f"{name}.wav"


def generation(i: int, name: str, *, blob: bool = False, run: str = "r1",
               text_context: bool = False, **extra) -> dict:
    """One generations row for fixture NAME; its audio as a path or as a blob."""
    row = {f.name: None for f in GENERATIONS_SCHEMA}
    row.update({
        GEN.generation_id: f"{run}:{i}", GEN.run: run,
        GEN.prompt_id: TEXT_PROMPT_ID if text_context else PROMPT_ID,
        GEN.group_id: f"{run}:g0", GEN.group_index: 0, GEN.sample_index: i,
        GEN.manifest_line: i, GEN.text: TEXT, GEN.invalid: False,
        GEN.codes: [[i, i + 1, i + 2], [7, 8, 9]], GEN.codes_len: 3,
    })
    if text_context:
        row[GEN.context_text] = "Speak calmly."
    else:
        row[GEN.context_audio_filepath] = str(CONTEXT)
    if blob:
        row[GEN.audio] = fixture(name).read_bytes()
    else:
        row[GEN.audio_filepath] = str(fixture(name))
    row.update(extra)
    return row


# The standard small table: every fixture once, paths and blobs mixed, plus a
# generation from a text context (no voice to compare with: SSIM null).
STANDARD = [("clean", False, False), ("truncated", True, False), ("dropped", False, False),
            ("other", True, False), ("clean", False, True)]


def write_generations(store: Store, rows: list[dict]) -> int:
    table = pa.Table.from_pylist(rows, schema=GENERATIONS_SCHEMA)
    return store.write("generations", table, GENERATIONS_SCHEMA, make_lineage("test", {}))


def write_prompts(store: Store) -> int:
    rows = [
        {PROMPT.prompt_id: PROMPT_ID, PROMPT.text: TEXT, PROMPT.context_type: "audio",
         PROMPT.context_audio_filepath: str(CONTEXT),
         PROMPT.reference_audio_filepath: str(fixture("clean"))},
        {PROMPT.prompt_id: TEXT_PROMPT_ID, PROMPT.text: TEXT, PROMPT.context_type: "text",
         PROMPT.context_text: "Speak calmly."},
    ]
    table = pa.Table.from_pylist(rows, schema=PROMPTS_SCHEMA)
    return store.write("prompts", table, PROMPTS_SCHEMA, make_lineage("test", {}))


def standard_store(root: Path, copies: int = 1) -> Store:
    """A store with prompts and the STANDARD generations (COPIES times over)."""
    store = Store(root)
    write_prompts(store)
    rows = [generation(k * len(STANDARD) + i, name, blob=blob, text_context=tc)
            for k in range(copies) for i, (name, blob, tc) in enumerate(STANDARD)]
    write_generations(store, rows)
    return store


METRIC_COLUMNS = [GEN.generation_id, GEN.cer, GEN.wer, GEN.ssim, GEN.pesq, GEN.squim,
                  GEN.pred_transcript, GEN.gt_transcript, GEN.invalid, GEN.cer_source,
                  GEN.ssim_source, GEN.pesq_source, GEN.squim_source, *dict.fromkeys(METRIC_STATUS.values())]


def metrics_by_id(store: Store, version: int | None = None) -> dict[str, dict]:
    table = store.open("generations", version).to_table(columns=METRIC_COLUMNS)
    return {r[GEN.generation_id]: r for r in table.to_pylist()}


def data_files(store: Store, version: int | None = None) -> dict[int, dict[str, list[int]]]:
    """fragment id -> {data file path: field ids} of the generations table."""
    ds = store.open("generations", version)
    return {f.fragment_id: {d.path: list(d.fields) for d in f.data_files()}
            for f in ds.get_fragments()}
