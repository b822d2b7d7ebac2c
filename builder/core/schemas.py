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
ref_logps    reference log-probs per pair and codebook, keyed by (set, version, ref sha256,
             policy config sha256)
checkpoints  one row per checkpoint a training run wrote
rollouts     one row per GRPO sample: metrics, reward parts, advantage, validity
<rewards name>  rewards recomputed by `ttspo rewards --as NAME`
"""

from __future__ import annotations

from types import SimpleNamespace

import pyarrow as pa

from ttspo.builder.core import metrics as registry

# Metadata that marks a column as a Lance blob (stored out of line, read lazily).
# DuckDB cannot scan such columns, so SQL views leave them out.
BLOB_METADATA = {b"lance-encoding:blob": b"true"}

# Names no preference set may take, because core tables use them.
CORE_TABLES = ("prompts", "generations", "ingest_errors", "rollouts", "ref_logps",
               "checkpoints", "store_log", "pair_dynamics", "labels")


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
    # Written by `ttspo generate` (null for ingested runs): which weights made the
    # row, and how it was sampled, so compare and SQL can group by them.
    policy="policy",  # the policy's architecture, e.g. "tiny"
    checkpoint_path="checkpoint_path",  # absolute path of the weights file
    checkpoint_sha256="checkpoint_sha256",  # sha256 of that file
    checkpoint_run="checkpoint_run",  # its `checkpoints` row (run, step), when it has one
    checkpoint_step="checkpoint_step",
    temperature="temperature",
    top_k="top_k",  # 0: no top-k
    cfg_scale="cfg_scale",  # 1.0: no classifier-free guidance
    max_steps="max_steps",  # frames before a sample counts as unfinished
    seed="seed",  # the run's seed; a row's noise is seeded by (seed, prompt_id, sample_index)
    # Every other registered metric, source and status column (builder/core/metrics.py):
    # mos, vad_source, cer_status ... (GEN.cer_status says why a row's cer is NULL).
    **{name: name for name, _ in registry.new_columns()},
)

# The columns `ttspo generate` adds, in schema order.
GENERATE_COLUMNS = (GEN.policy, GEN.checkpoint_path, GEN.checkpoint_sha256, GEN.checkpoint_run,
                    GEN.checkpoint_step, GEN.temperature, GEN.top_k, GEN.cfg_scale,
                    GEN.max_steps, GEN.seed)

# Metric columns (the registry's, in its order) and the provenance column that
# records their producer (WER comes from the same transcript as CER: cer_source).
METRICS = registry.names()
METRIC_SOURCE = {m: registry.source_of(m) for m in METRICS}
METRIC_STATUS = {m: registry.status_of(m) for m in METRICS}
_ARROW = {"double": pa.float64(), "string": pa.string()}
# The registered columns generations gained after its first schema, at its end: an
# older table gains them as nulls (Store.add_null_columns) when a write needs them.
REGISTERED_FIELDS = [pa.field(name, _ARROW[kind]) for name, kind in registry.new_columns()]

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
        pa.field(GEN.policy, pa.string()),
        pa.field(GEN.checkpoint_path, pa.string()),
        pa.field(GEN.checkpoint_sha256, pa.string()),
        pa.field(GEN.checkpoint_run, pa.string()),
        pa.field(GEN.checkpoint_step, pa.int64()),
        pa.field(GEN.temperature, pa.float64()),
        pa.field(GEN.top_k, pa.int32()),
        pa.field(GEN.cfg_scale, pa.float64()),
        pa.field(GEN.max_steps, pa.int32()),
        pa.field(GEN.seed, pa.int64()),
        *REGISTERED_FIELDS,
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

# ------------------------------------------------------------- ref_logps
# Reference log-probs of a set version's pairs under one reference checkpoint,
# per codebook (so per-codebook weights can change without recomputing). A
# trainer uses them only when (set, set_version, ref_sha256, policy_sha256) match
# exactly. policy_sha256 came later: rows written before it hold null (or a table
# made before it lacks the column) and never match.
REF = _names(
    set_name="set_name",
    set_version="set_version",
    ref_sha256="ref_sha256",  # sha256 of the reference checkpoint file
    ref_architecture="ref_architecture",
    pair_id="pair_id",
    split="split",
    chosen_logps="chosen_logps",  # [C] float32: masked sum over frames, per codebook
    rejected_logps="rejected_logps",
    # sha256 of the policy's identity config (Identity.config_sha256): what changes
    # the logits besides the weights file (a NeMo model config, local-transformer logits)
    policy_sha256="policy_sha256",
)

REF_LOGPS_SCHEMA = pa.schema(
    [
        pa.field(REF.set_name, pa.string(), nullable=False),
        pa.field(REF.set_version, pa.int64(), nullable=False),
        pa.field(REF.ref_sha256, pa.string(), nullable=False),
        pa.field(REF.ref_architecture, pa.string(), nullable=False),
        pa.field(REF.pair_id, pa.string(), nullable=False),
        pa.field(REF.split, pa.string(), nullable=False),
        pa.field(REF.chosen_logps, pa.list_(pa.float32()), nullable=False),
        pa.field(REF.rejected_logps, pa.list_(pa.float32()), nullable=False),
        pa.field(REF.policy_sha256, pa.string()),  # last: older tables gain it (ref.py)
    ]
)

# ----------------------------------------------------------- checkpoints
# One row per checkpoint file a run wrote: "which data made this model" is a
# join on set_name/set_version/generations_version; validation metrics are
# columns so "the run with the best val accuracy" is one ORDER BY. GRPO runs
# fill prompts_version instead of the set columns.
CKPT = _names(
    run="run",
    step="step",
    kind="kind",  # "step" (every N steps) | "best" (best by the chosen val metric so far)
    path="path",  # absolute path of the policy weights file
    sha256="sha256",  # of that file
    architecture="architecture",  # policy identity
    policy_config="policy_config",  # JSON of the policy's size/config
    init_sha256="init_sha256",  # the checkpoint the run started from, if any
    trainer="trainer",  # "dpo" | "grpo" ...
    set_name="set_name",
    set_version="set_version",
    generations_version="generations_version",
    prompts_version="prompts_version",
    val_loss="val_loss",
    val_accuracy="val_accuracy",
    val_margin="val_margin",
    val_metrics="val_metrics",  # JSON of every validation metric at this step
    config="config",  # JSON of the run's resolved config
    created="created",  # UTC ISO time the row was written
)

CHECKPOINTS_SCHEMA = pa.schema(
    [
        pa.field(CKPT.run, pa.string(), nullable=False),
        pa.field(CKPT.step, pa.int64(), nullable=False),
        pa.field(CKPT.kind, pa.string(), nullable=False),
        pa.field(CKPT.path, pa.string(), nullable=False),
        pa.field(CKPT.sha256, pa.string(), nullable=False),
        pa.field(CKPT.architecture, pa.string(), nullable=False),
        pa.field(CKPT.policy_config, pa.string()),
        pa.field(CKPT.init_sha256, pa.string()),
        pa.field(CKPT.trainer, pa.string(), nullable=False),
        pa.field(CKPT.set_name, pa.string()),
        pa.field(CKPT.set_version, pa.int64()),
        pa.field(CKPT.generations_version, pa.int64()),
        pa.field(CKPT.prompts_version, pa.int64()),
        pa.field(CKPT.val_loss, pa.float64()),
        pa.field(CKPT.val_accuracy, pa.float64()),
        pa.field(CKPT.val_margin, pa.float64()),
        pa.field(CKPT.val_metrics, pa.string()),
        pa.field(CKPT.config, pa.string()),
        pa.field(CKPT.created, pa.string(), nullable=False),
    ]
)

# ------------------------------------------------------------ GRPO rewards
# Reward parts in [0, 1] (one per registry entry of ttspo.trainer.grpo.rewards), the
# total, validity and group advantage. Shared by `rollouts` and by the tables
# `ttspo rewards --as NAME` writes.
RWD = _names(
    row_id="row_id",  # the rewarded row: a rollout_id or a generation_id
    utmos="utmos",  # predicted MOS (1..5) when a local UTMOS model scored the audio
    reward_cer="reward_cer",
    reward_ssim="reward_ssim",
    reward_pesq="reward_pesq",
    reward_squim="reward_squim",
    reward_utmos="reward_utmos",
    reward_length="reward_length",
    reward_custom="reward_custom",  # user callables: list of {name, value}
    reward="reward",  # weighted total (invalid samples: 0 or the group's minimum)
    advantage="advantage",
    valid="valid",  # code length within the guards and ASR did not fail
    group_valid="group_valid",  # the group's best/worst CER within thresholds
    # reward_mos ...: the part of every other registered metric with a reward shape
    **{f"reward_{m}": f"reward_{m}" for m in registry.rewarded()
       if m not in registry.LEGACY_METRICS},
)

REWARD_CUSTOM_TYPE = pa.list_(pa.struct([("name", pa.string()), ("value", pa.float64())]))

REWARD_FIELDS = [
    pa.field(RWD.reward_cer, pa.float64()),
    pa.field(RWD.reward_ssim, pa.float64()),
    pa.field(RWD.reward_pesq, pa.float64()),
    pa.field(RWD.reward_squim, pa.float64()),
    pa.field(RWD.reward_utmos, pa.float64()),
    pa.field(RWD.reward_length, pa.float64()),
    pa.field(RWD.reward_custom, REWARD_CUSTOM_TYPE),
    pa.field(RWD.reward, pa.float64(), nullable=False),
    pa.field(RWD.advantage, pa.float64(), nullable=False),
    pa.field(RWD.valid, pa.bool_(), nullable=False),
    pa.field(RWD.group_valid, pa.bool_(), nullable=False),
]
# Parts of registered metrics added after the first schema: at the END of the rollouts
# and rewards tables (older tables gain them as nulls). `utmos` is retired (its columns
# stay readable in older rollouts; the `mos` reward reads the registered `mos` metric).
REGISTERED_REWARD_FIELDS = [pa.field(f"reward_{m}", pa.float64()) for m in registry.rewarded()
                            if m not in registry.LEGACY_METRICS]
REWARD_PARTS = tuple(f.name for f in REWARD_FIELDS[:7] + REGISTERED_REWARD_FIELDS)

# ---------------------------------------------------------------- rollouts
# One row per GRPO sample: generation columns (same names as GEN) plus the
# training step, the policy that sampled it, and its reward.
ROLL = _names(
    rollout_id="rollout_id",  # f"{run}:{step}:{split}:{group_index}:{sample_index}"
    # (group_index: the prompt's index in the run's prompts, so ids do not depend on ranks)
    step="step",  # optimizer step whose policy sampled it
    split="split",  # "train" (used for the update) | "val" (validation prompts)
    # sha256 of the newest checkpoint file of the run at or before `step` (or of the
    # weights the run started from: its lineage's start_sha256); the sampling weights are
    # that checkpoint's plus (step - its step) updates, replayed exactly by a resume
    checkpoint="checkpoint",
    utmos_source="utmos_source",
)

_GEN_FIELDS = {f.name: f for f in GENERATIONS_SCHEMA}
ROLLOUTS_SCHEMA = pa.schema(
    [
        pa.field(ROLL.rollout_id, pa.string(), nullable=False),
        _GEN_FIELDS[GEN.run],
        pa.field(ROLL.step, pa.int64(), nullable=False),
        pa.field(ROLL.split, pa.string(), nullable=False),
        *[_GEN_FIELDS[c] for c in (GEN.prompt_id, GEN.group_id, GEN.group_index,
                                   GEN.sample_index, GEN.text, GEN.context_audio_filepath,
                                   GEN.context_text, GEN.audio_filepath, GEN.audio, GEN.codes,
                                   GEN.codes_len, GEN.duration, GEN.sample_rate, GEN.cer,
                                   GEN.wer, GEN.ssim, GEN.pesq, GEN.squim)],
        pa.field(RWD.utmos, pa.float64()),
        *[_GEN_FIELDS[c] for c in (GEN.pred_transcript, GEN.invalid, GEN.cer_source,
                                   GEN.ssim_source, GEN.pesq_source, GEN.squim_source)],
        pa.field(ROLL.utmos_source, pa.string()),
        *REWARD_FIELDS,
        pa.field(ROLL.checkpoint, pa.string()),
        *REGISTERED_FIELDS,
        *REGISTERED_REWARD_FIELDS,
    ]
)

# What `ttspo rewards --as NAME` writes: the recomputed rewards of a table's rows.
REWARDS_SCHEMA = pa.schema(
    [
        pa.field(RWD.row_id, pa.string(), nullable=False),
        _GEN_FIELDS[GEN.run],
        pa.field(ROLL.step, pa.int64()),  # null for generations
        _GEN_FIELDS[GEN.group_id],
        *REWARD_FIELDS,
        *REGISTERED_REWARD_FIELDS,
    ]
)

# --------------------------------------------------------- pair_dynamics
# Training dynamics per pair (dataset cartography): every train pair's implicit-reward
# margin as the DPO step computed it (one row per pair per epoch, no extra pass), and
# every val pair's margin at each validation. `correct` follows the tie rule of
# trainer/dpo/losses.py: 1.0 ranked right, 0.0 wrong, 0.5 a tie.
DYN = _names(run="run", step="step", epoch="epoch", split="split", set_name="set_name",
             set_version="set_version", pair_id="pair_id", margin="margin",
             correct="correct", loss="loss")

PAIR_DYNAMICS_SCHEMA = pa.schema(
    [
        pa.field(DYN.run, pa.string(), nullable=False),
        pa.field(DYN.step, pa.int64(), nullable=False),  # the optimizer step it was read at
        pa.field(DYN.epoch, pa.int64(), nullable=False),
        pa.field(DYN.split, pa.string(), nullable=False),  # "train" | "val"
        pa.field(DYN.set_name, pa.string(), nullable=False),
        pa.field(DYN.set_version, pa.int64(), nullable=False),
        pa.field(DYN.pair_id, pa.string(), nullable=False),
        pa.field(DYN.margin, pa.float64(), nullable=False),  # beta * (policy - ref) log-ratio margin
        pa.field(DYN.correct, pa.float64(), nullable=False),  # 1 / 0.5 (tie) / 0
        pa.field(DYN.loss, pa.float64()),  # the pair's loss under the run's terms
    ]
)

# ---------------------------------------------------------------- labels
# One human (or scripted) judgement per row, from `ttspo serve`'s listening page or
# the demo's scripted labeler: two generations shown blind in a random order, and
# which one the labeler chose. `first_id` was shown as A. `choice` is "a" | "b" |
# "tie" | "skip"; `chosen_id` resolves it (null for tie and skip). `source` names
# where the pair came from (a set's pair_id, or "generations").
LABEL = _names(label_id="label_id", labeler="labeler", time="time", first_id="first_id",
               second_id="second_id", choice="choice", chosen_id="chosen_id",
               source="source", pair_id="pair_id", set_name="set_name",
               set_version="set_version", lineage="lineage")

LABELS_SCHEMA = pa.schema(
    [
        pa.field(LABEL.label_id, pa.string(), nullable=False),  # uuid4 hex
        pa.field(LABEL.labeler, pa.string(), nullable=False),
        pa.field(LABEL.time, pa.string(), nullable=False),  # UTC ISO, milliseconds
        pa.field(LABEL.first_id, pa.string(), nullable=False),  # shown as A
        pa.field(LABEL.second_id, pa.string(), nullable=False),  # shown as B
        pa.field(LABEL.choice, pa.string(), nullable=False),  # a | b | tie | skip
        pa.field(LABEL.chosen_id, pa.string()),
        pa.field(LABEL.source, pa.string(), nullable=False),
        pa.field(LABEL.pair_id, pa.string()),  # the set pair judged, if any
        pa.field(LABEL.set_name, pa.string()),
        pa.field(LABEL.set_version, pa.int64()),
        pa.field(LABEL.lineage, pa.string()),  # JSON: page or script, ttspo version, ...
    ]
)

# --------------------------------------------------------------- store_log
# What `ttspo gc` removed (builder/core/lifecycle.py): one row per table per gc run,
# in ONE new version of store_log (whose commit carries the run's lineage), so gc
# makes no new version of the tables it cleans. Reading a removed version looks here
# to say when it went.
STORE_LOG = "store_log"
LOG = _names(time="time", command="command", table="table", versions="versions",
             forced="forced", bytes="bytes", latest="latest")

STORE_LOG_SCHEMA = pa.schema(
    [
        pa.field(LOG.time, pa.string(), nullable=False),  # UTC ISO, seconds
        pa.field(LOG.command, pa.string(), nullable=False),  # "gc"
        pa.field(LOG.table, pa.string(), nullable=False),
        pa.field(LOG.versions, pa.list_(pa.int64()), nullable=False),  # removed
        pa.field(LOG.forced, pa.list_(pa.int64()), nullable=False),  # pinned, removed by --force
        pa.field(LOG.bytes, pa.int64(), nullable=False),  # freed (Lance's count)
        pa.field(LOG.latest, pa.int64(), nullable=False),  # the table's latest version then
    ]
)

# ------------------------------------------- derived files (STORE/.derived)
# Not tables: what a re-threshold would compute again from a table version, kept
# by builder/sets/session_cache.py (maps keyed by `id`, a generation id).
DERIVED = _names(id="id", row="row", head="head", codes_path="codes_path", tail="tail",
                 duration="duration", problem="problem", key="key", file="file")

# A generation's manifest line parts (builder/sets/nemo_lines.py): its row in the
# table version, the encoded items before and after target_audio_codes_path ("" if
# none), its own codes_path and duration, and why NeMo cannot use it (null if it can).
LINE_PARTS_SCHEMA = pa.schema([(DERIVED.id, pa.string()), (DERIVED.row, pa.int64()), (DERIVED.head, pa.large_string()),
                               (DERIVED.codes_path, pa.string()), (DERIVED.tail, pa.large_string()),
                               (DERIVED.duration, pa.float64()), (DERIVED.problem, pa.string())])

# A generation's codes content key (builder/sets/codes.py), null without codes, and
# the name of its codes file.
CODES_KEYS_SCHEMA = pa.schema([(DERIVED.id, pa.string()), (DERIVED.key, pa.string()),
                               (DERIVED.file, pa.string())])
