"""The one module that owns ttspo's Arrow schemas and column names.

Every table in a store is described here. Other modules refer to columns through
the constants below (``GEN.cer``, ``PROMPT.text`` ...) instead of retyping the
strings, so a rename happens in one place.

Tables
------
prompts      one row per text-context pair (step 1 of the NeMo workflow)
generations  one row per generated audio, with its metrics (step 2)
ingest_errors  rejected input files from ``ingest --on-error skip``
<set name>   one table per preference set (step 3): chosen/rejected pairs
"""

from __future__ import annotations

from types import SimpleNamespace

import pyarrow as pa

# Metadata that marks a column as a Lance blob (stored out of line, read lazily).
# DuckDB cannot scan such columns, so SQL views leave them out.
BLOB_METADATA = {b"lance-encoding:blob": b"true"}

# Names no preference set may take, because core tables use them.
CORE_TABLES = ("prompts", "generations", "ingest_errors", "rollouts")


def _names(**kw: str) -> SimpleNamespace:
    return SimpleNamespace(**kw)


# ---------------------------------------------------------------- prompts
PROMPT = _names(
    prompt_id="prompt_id",
    text="text",
    record_type="record_type",  # "challenging" | "regular"
    context_type="context_type",  # "audio" | "text"
    context_audio_filepath="context_audio_filepath",
    context_audio_duration="context_audio_duration",
    context_audio_codes_path="context_audio_codes_path",
    context_text="context_text",
    # A recording of `text` in the context voice, when one exists (PESQ reference).
    reference_audio_filepath="reference_audio_filepath",
    position="position",  # order in the shuffled NeMo manifest
)

PROMPTS_SCHEMA = pa.schema(
    [
        pa.field(PROMPT.prompt_id, pa.string(), nullable=False),
        pa.field(PROMPT.text, pa.string(), nullable=False),
        pa.field(PROMPT.record_type, pa.string()),
        pa.field(PROMPT.context_type, pa.string(), nullable=False),
        pa.field(PROMPT.context_audio_filepath, pa.string()),
        pa.field(PROMPT.context_audio_duration, pa.float64()),
        pa.field(PROMPT.context_audio_codes_path, pa.string()),
        pa.field(PROMPT.context_text, pa.string()),
        pa.field(PROMPT.reference_audio_filepath, pa.string()),
        pa.field(PROMPT.position, pa.int64()),
    ]
)

# ------------------------------------------------------------ generations
GEN = _names(
    generation_id="generation_id",  # f"{run}:{manifest_line}" - deterministic
    run="run",
    prompt_id="prompt_id",
    group_id="group_id",  # f"{run}:g{group_index}"
    group_index="group_index",
    sample_index="sample_index",  # position inside its group
    manifest_line="manifest_line",
    text="text",
    record_type="record_type",
    context_audio_filepath="context_audio_filepath",
    context_audio_duration="context_audio_duration",
    context_text="context_text",
    audio_filepath="audio_filepath",  # absolute path of the generated wav
    audio="audio",  # optional: the wav bytes as a Lance blob
    codes_path="codes_path",  # the NeMo *_codes.pt file, when there was one
    codes="codes",  # int16 codec frames, [codebooks][frames]
    duration="duration",
    sample_rate="sample_rate",
    cer="cer",
    wer="wer",
    ssim="ssim",
    pesq="pesq",
    squim="squim",
    codes_len="codes_len",
    pred_transcript="pred_transcript",
    gt_transcript="gt_transcript",
    invalid="invalid",  # NeMo wrote "<INVALID>" (its ASR failed for the batch)
    # Which backend/model produced each metric, e.g. "nemo-metrics-json",
    # "pocketsphinx:en-us", "resemblyzer:pretrained.pt".
    cer_source="cer_source",
    ssim_source="ssim_source",
    pesq_source="pesq_source",
    squim_source="squim_source",
    source_file="source_file",  # the file this row was ingested from
)

# Metric columns and the provenance column that records their producer.
METRICS = (GEN.cer, GEN.wer, GEN.ssim, GEN.pesq, GEN.squim)
METRIC_SOURCE = {
    GEN.cer: GEN.cer_source,
    GEN.wer: GEN.cer_source,  # WER comes from the same transcript as CER
    GEN.ssim: GEN.ssim_source,
    GEN.pesq: GEN.pesq_source,
    GEN.squim: GEN.squim_source,
}

CODES_TYPE = pa.list_(pa.list_(pa.int16()))

GENERATIONS_SCHEMA = pa.schema(
    [
        pa.field(GEN.generation_id, pa.string(), nullable=False),
        pa.field(GEN.run, pa.string(), nullable=False),
        pa.field(GEN.prompt_id, pa.string(), nullable=False),
        pa.field(GEN.group_id, pa.string(), nullable=False),
        pa.field(GEN.group_index, pa.int64(), nullable=False),
        pa.field(GEN.sample_index, pa.int32(), nullable=False),
        pa.field(GEN.manifest_line, pa.int64()),
        pa.field(GEN.text, pa.string(), nullable=False),
        pa.field(GEN.record_type, pa.string()),
        pa.field(GEN.context_audio_filepath, pa.string()),
        pa.field(GEN.context_audio_duration, pa.float64()),
        pa.field(GEN.context_text, pa.string()),
        pa.field(GEN.audio_filepath, pa.string()),
        pa.field(GEN.audio, pa.large_binary(), metadata=BLOB_METADATA),
        pa.field(GEN.codes_path, pa.string()),
        pa.field(GEN.codes, CODES_TYPE),
        pa.field(GEN.duration, pa.float64()),
        pa.field(GEN.sample_rate, pa.int32()),
        pa.field(GEN.cer, pa.float64()),
        pa.field(GEN.wer, pa.float64()),
        pa.field(GEN.ssim, pa.float64()),
        pa.field(GEN.pesq, pa.float64()),
        pa.field(GEN.squim, pa.float64()),
        pa.field(GEN.codes_len, pa.int32()),
        pa.field(GEN.pred_transcript, pa.string()),
        pa.field(GEN.gt_transcript, pa.string()),
        pa.field(GEN.invalid, pa.bool_(), nullable=False),
        pa.field(GEN.cer_source, pa.string()),
        pa.field(GEN.ssim_source, pa.string()),
        pa.field(GEN.pesq_source, pa.string()),
        pa.field(GEN.squim_source, pa.string()),
        pa.field(GEN.source_file, pa.string()),
    ]
)

# Columns too large to be useful in a SELECT * (and blobs DuckDB cannot read).
HEAVY_COLUMNS = (GEN.audio, GEN.codes)

# ---------------------------------------------------------- ingest_errors
ERR = _names(run="run", file="file", reason="reason")

INGEST_ERRORS_SCHEMA = pa.schema(
    [
        pa.field(ERR.run, pa.string(), nullable=False),
        pa.field(ERR.file, pa.string(), nullable=False),
        pa.field(ERR.reason, pa.string(), nullable=False),
    ]
)

# ------------------------------------------------------- preference sets
PAIR = _names(
    pair_id="pair_id",  # f"{chosen_id}>{rejected_id}"
    prompt_id="prompt_id",
    group_id="group_id",
    run="run",
    record_type="record_type",
    chosen_id="chosen_id",
    rejected_id="rejected_id",
    chosen_reward="chosen_reward",
    rejected_reward="rejected_reward",
    chosen_cer="chosen_cer",
    rejected_cer="rejected_cer",
    chosen_ssim="chosen_ssim",
    rejected_ssim="rejected_ssim",
    cer_delta="cer_delta",  # rejected CER - chosen CER, per pair
    sim_delta="sim_delta",  # chosen SSIM - rejected SSIM, per pair
    split="split",  # "train" | "val"
    position="position",  # order of the (seeded) shuffle, 0-based
)

# What every recipe must return; Python checks the recipe output against it.
PAIR_REQUIRED = (
    PAIR.prompt_id,
    PAIR.group_id,
    PAIR.chosen_id,
    PAIR.rejected_id,
    PAIR.chosen_reward,
    PAIR.rejected_reward,
    PAIR.split,
)

PREFERENCES_SCHEMA = pa.schema(
    [
        pa.field(PAIR.pair_id, pa.string(), nullable=False),
        pa.field(PAIR.prompt_id, pa.string(), nullable=False),
        pa.field(PAIR.group_id, pa.string(), nullable=False),
        pa.field(PAIR.run, pa.string()),
        pa.field(PAIR.record_type, pa.string()),
        pa.field(PAIR.chosen_id, pa.string(), nullable=False),
        pa.field(PAIR.rejected_id, pa.string(), nullable=False),
        pa.field(PAIR.chosen_reward, pa.float64(), nullable=False),
        pa.field(PAIR.rejected_reward, pa.float64(), nullable=False),
        pa.field(PAIR.chosen_cer, pa.float64()),
        pa.field(PAIR.rejected_cer, pa.float64()),
        pa.field(PAIR.chosen_ssim, pa.float64()),
        pa.field(PAIR.rejected_ssim, pa.float64()),
        pa.field(PAIR.cer_delta, pa.float64()),
        pa.field(PAIR.sim_delta, pa.float64()),
        pa.field(PAIR.split, pa.string(), nullable=False),
        pa.field(PAIR.position, pa.int64(), nullable=False),
    ]
)
