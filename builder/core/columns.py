"""Column names of every store table: plain strings, importable without pyarrow.

The names live here and the Arrow types in :mod:`ttspo.builder.core.schemas`, which
builds its schemas from these namespaces and re-exports them (modules import ``GEN``,
``PAIR``... from either; the data half uses schemas). Split out so the trainer's
model path (the tiny policy's collate, the DPO and GRPO steps) imports with torch
alone: ``bench/gpu.sh`` runs on a machine that has torch and none of the data half's
dependencies. What each table holds is documented beside its schema.
"""

from __future__ import annotations

from types import SimpleNamespace

from ttspo.builder.core import metrics as registry  # pure Python: no pyarrow


def _names(**kw: str) -> SimpleNamespace:
    return SimpleNamespace(**kw)


# prompts
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

# generations
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

# ingest_errors
ERR = _names(run="run", file="file", reason="reason")

# a preference set (one table per set)
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

# ref_logps
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

# checkpoints
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

# rewards (in rollouts and in `ttspo rewards --as NAME` tables)
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

# rollouts (besides the generation columns it shares with GEN)
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

# pair_dynamics
DYN = _names(run="run", step="step", epoch="epoch", split="split", set_name="set_name",
             set_version="set_version", pair_id="pair_id", margin="margin",
             correct="correct", loss="loss")

# labels
LABEL = _names(label_id="label_id", labeler="labeler", time="time", first_id="first_id",
               second_id="second_id", choice="choice", chosen_id="chosen_id",
               source="source", pair_id="pair_id", set_name="set_name",
               set_version="set_version", lineage="lineage")

# store_log
LOG = _names(time="time", command="command", table="table", versions="versions",
             forced="forced", bytes="bytes", latest="latest")

# derived files under STORE/.derived (not tables)
DERIVED = _names(id="id", row="row", head="head", codes_path="codes_path", tail="tail",
                 duration="duration", problem="problem", key="key", file="file")
