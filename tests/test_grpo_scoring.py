"""GRPO scores its rollouts through generate's scorer (trainer/generate/rows.py): the
same numbers the backends give, and each prompt's recordings read once per run."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from grpo_helpers import TINY, make_prompts
from ttspo.builder.core.schemas import GEN, PROMPT, PROMPTS_SCHEMA
from ttspo.builder.core.store import Store, make_lineage
from ttspo.builder.scoring import cosine, load_quality, load_speaker
from ttspo.builder.scoring.audio import MODEL_SR, read_audio, resample
from ttspo.trainer.grpo.rollout import Scoring, load_prompts, rollout
from ttspo.trainer.policy.base import Sampling, load_policy
from ttspo.trainer.grpo.rewards import RewardConfig
from ttspo.trainer.policy.samples import decode

pytestmark = pytest.mark.slow  # GRPO steps with real ASR and speaker backends


def prompts_with_own_recordings(store: Store, folder) -> list[str]:
    """Two prompts whose context and reference recordings are copies in FOLDER."""
    make_prompts(store, 2)
    table = store.open("prompts").to_table()
    folder.mkdir()
    copies = []
    for i, path in enumerate(table[PROMPT.context_audio_filepath].to_pylist()):
        copies.append(str(shutil.copy(path, folder / f"context_{i}.wav")))
    table = table.set_column(table.schema.get_field_index(PROMPT.context_audio_filepath),
                             PROMPTS_SCHEMA.field(PROMPT.context_audio_filepath), [copies])
    table = table.set_column(table.schema.get_field_index(PROMPT.reference_audio_filepath),
                             PROMPTS_SCHEMA.field(PROMPT.reference_audio_filepath), [copies])
    store.write("prompts", table, PROMPTS_SCHEMA, make_lineage("prompts", {}), mode="overwrite")
    return copies


def test_rollout_metrics_are_the_backends_and_recordings_are_read_once(tmp_path):
    store = Store(tmp_path / "st")
    recordings = prompts_with_own_recordings(store, tmp_path / "wavs")
    torch.manual_seed(0)
    policy = load_policy("tiny", config=TINY).eval()
    prompts = load_prompts(store, encode=policy.codec.encode)
    rewards = RewardConfig(weights={"ssim": 0.5, "pesq": 0.5}, min_valid_len=1)
    scoring = Scoring.needed(rewards, asr="pocketsphinx", sv="resemblyzer", squim=None,
                             normalizer="nemo")
    assert scoring.metrics == ("ssim", "pesq")  # only what the rewards read: no ASR
    args = dict(run="r", split="train", n=2, seed=0, rewards=rewards, scoring=scoring,
                checkpoint="c", store_audio=False, sampling=Sampling(temperature=1.0, max_steps=24))
    first = rollout(policy, prompts, [0, 1], step=0, **args).table
    # The numbers are the backends' own on the stored audio and the recordings.
    sv, pesq = load_speaker("resemblyzer"), load_quality("pesq")
    reference = {p[PROMPT.prompt_id]: p[PROMPT.reference_audio_filepath] for p in prompts.rows}
    for row in first.to_pylist():
        frames = np.asarray(row[GEN.codes], dtype=np.int64).reshape(8, -1)
        audio = resample(*decode(policy.codec, frames), MODEL_SR)  # what the rollout scored
        context = read_audio(row[GEN.context_audio_filepath], MODEL_SR)[0]
        assert row[GEN.ssim] == cosine(sv.embed_batch([audio], MODEL_SR)[0],
                                       sv.embed(context, MODEL_SR))
        assert row[GEN.pesq] == pesq.score(audio, MODEL_SR, *read_audio(
            reference[row[GEN.prompt_id]], MODEL_SR))
        assert row[GEN.ssim_source] == sv.name and row[GEN.pesq_source] == pesq.name
    assert first[GEN.pesq].null_count < first.num_rows
    # Read once a run: with the recordings gone, the next steps score as before.
    for path in recordings:
        Path(path).unlink()
    again = rollout(policy, prompts, [0, 1], step=0, **args).table
    assert again.equals(first)
    later = rollout(policy, prompts, [0, 1], step=1, **args).table
    assert later[GEN.ssim].null_count == 0
    assert np.isfinite(later["reward"].to_numpy()).all()
