"""The one module that owns ttspo's Arrow schemas and column names.

Every table in a store is described here. Other modules refer to columns through
the constants below (``GEN.cer``, ``PROMPT.text`` ...) instead of retyping the
strings, so a rename happens in one place. The names themselves are written in
:mod:`ttspo.builder.core.columns` (plain strings, importable without pyarrow, for
the trainer's model path) and re-exported here; the Arrow types are written here.

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

import pyarrow as pa

from ttspo.builder.core import metrics as registry
# The column names (plain strings, no pyarrow: builder/core/columns.py), re-exported.
from ttspo.builder.core.columns import (  # noqa: F401
    CKPT, DERIVED, DYN, ERR, GEN, LABEL, LOG, PAIR, PROMPT, REF, ROLL, RWD)

# Metadata that marks a column as a Lance blob (stored out of line, read lazily).
# DuckDB cannot scan such columns, so SQL views leave them out.
BLOB_METADATA = {b"lance-encoding:blob": b"true"}

# Names no preference set may take, because core tables use them.
CORE_TABLES = ("prompts", "generations", "ingest_errors", "rollouts", "ref_logps",
               "checkpoints", "store_log", "pair_dynamics", "labels")


# ---------------------------------------------------------------- prompts
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
INGEST_ERRORS_SCHEMA = pa.schema(
    [
        pa.field(ERR.run, pa.string(), nullable=False),
        pa.field(ERR.file, pa.string(), nullable=False),
        pa.field(ERR.reason, pa.string(), nullable=False),
    ]
)

# ------------------------------------------------------- preference sets
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
