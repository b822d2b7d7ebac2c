"""What generate and GRPO share about a sample (trainer/policy/samples.py, trainer/dpo/data.py):
its seed, its audio, and the context codes of its prompt, each made in one place."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
from click.testing import CliRunner

from grpo_helpers import TINY, make_prompts
from ttspo.builder.cli.main import cli
from ttspo.builder.core.errors import InputError
from ttspo.builder.core.schemas import GEN, PROMPT, PROMPTS_SCHEMA
from ttspo.builder.core.store import Store, make_lineage
from ttspo.builder.scoring.audio import read_audio_bytes
from ttspo.trainer.dpo.contexts import context_codes, prompt_context
from ttspo.trainer.grpo.rollout import Scoring, load_prompts, rollout
from ttspo.trainer.policy.base import Sampling, load_policy
from ttspo.trainer.grpo.rewards import RewardConfig
from ttspo.trainer.policy.samples import decode, sample_seed


# ------------------------------------------------------------------- seeds
def test_generate_seeds_are_what_they_were_and_every_key_part_counts():
    # generate's rows already in stores were drawn with these seeds: a rerun that
    # adds a run's missing samples must draw the rest with the same derivation.
    assert sample_seed(3, "p1", 0) == 2022760370391479079
    assert sample_seed(0, "prompt-x", 5) == 1469357362583954956
    keys = [(3, "p1", 0), (3, "p1", 1), (4, "p1", 0), (3, "p2", 0), (0, 3, "train", "p1", 0),
            (0, 3, "val", "p1", 0), (0, 4, "train", "p1", 0)]
    seeds = [sample_seed(*k) for k in keys]
    assert len(set(seeds)) == len(keys)
    assert all(0 <= s < 2 ** 62 for s in seeds)


def test_a_grpo_sample_is_keyed_by_its_prompt_id_not_its_position(tmp_path):
    """p2 is the third prompt of all four and the first under --where: same samples."""
    store = Store(tmp_path / "st")
    make_prompts(store, 4)
    torch.manual_seed(0)
    policy = load_policy("tiny", config=TINY).eval()
    every = load_prompts(store, encode=policy.codec.encode)
    some = load_prompts(store, where=f"{PROMPT.prompt_id} >= 'p2'", encode=policy.codec.encode)
    args = dict(run="r", step=5, split="train", n=3, seed=7, rewards=RewardConfig(),
                scoring=Scoring(asr=None, sv=None), checkpoint="c", store_audio=False,
                sampling=Sampling(temperature=1.0, max_steps=6))
    a = rollout(policy, every, [2], **args).table
    b = rollout(policy, some, [0], **args).table
    assert a[GEN.prompt_id].to_pylist() == b[GEN.prompt_id].to_pylist() == ["p2"] * 3
    assert a[GEN.codes].to_pylist() == b[GEN.codes].to_pylist()
    other = rollout(policy, every, [2], **{**args, "step": 6}).table
    assert other[GEN.codes].to_pylist() != a[GEN.codes].to_pylist()  # the step is in the key


# ------------------------------------------------------------------- audio
@pytest.mark.slow
def test_a_one_frame_rollout_stores_its_codes_audio_not_silence(tmp_path):
    """GRPO decodes as generate does: 1 frame is the codec's 1024 samples of it (it
    used to be silence there), 0 frames is no audio."""
    store = Store(tmp_path / "st")
    make_prompts(store, 2)
    torch.manual_seed(0)
    policy = load_policy("tiny", config=TINY).eval()
    prompts = load_prompts(store, encode=policy.codec.encode)
    table = rollout(policy, prompts, [0, 1], run="r", step=0, split="train", n=4, seed=0,
                    rewards=RewardConfig(), scoring=Scoring(asr=None, sv=None), checkpoint="c",
                    store_audio=True, sampling=Sampling(temperature=1.0, max_steps=1)).table
    lengths = table[GEN.codes_len].to_pylist()
    assert set(lengths) <= {0, 1} and 1 in lengths
    for codes, wav in zip(table[GEN.codes].to_pylist(), table[GEN.audio].to_pylist()):
        audio, sr = read_audio_bytes(wav)
        frames = np.asarray(codes, dtype=np.int64).reshape(8, -1)
        expected, _ = decode(policy.codec, frames)
        assert (sr, len(audio)) == (22050, frames.shape[1] * 1024)
        assert np.allclose(audio, expected, atol=1 / 2 ** 14)  # PCM_16 in the table
        assert frames.shape[1] == 0 or np.abs(audio).max() > 0


# --------------------------------------------------------- context codes
def test_an_unreadable_context_is_one_line_naming_the_prompt_in_generate_grpo_and_dpo(tmp_path):
    """One rule for generate, GRPO and DPO; a missing codes file was a BadFile traceback."""
    missing, bad = tmp_path / "missing.pt", tmp_path / "bad.wav"
    bad.write_text("not audio")
    audio = {PROMPT.context_type: "audio", PROMPT.record_type: "regular",
             PROMPT.context_audio_duration: 1.0}
    prompts = [
        {**audio, PROMPT.prompt_id: "p0", PROMPT.text: "a", PROMPT.position: 0,
         PROMPT.context_audio_filepath: str(bad), PROMPT.context_audio_codes_path: str(missing)},
        {**audio, PROMPT.prompt_id: "p1", PROMPT.text: "b", PROMPT.position: 1,
         PROMPT.context_audio_filepath: str(bad)},
        {PROMPT.prompt_id: "p2", PROMPT.text: "c", PROMPT.position: 2, PROMPT.context_type: "text",
         PROMPT.context_text: "calm", PROMPT.record_type: "regular"}]
    store = Store(tmp_path / "st")
    store.write("prompts", pa.Table.from_pylist(prompts, PROMPTS_SCHEMA), PROMPTS_SCHEMA,
                make_lineage("test", {}))
    torch.manual_seed(0)
    policy = load_policy("tiny", config=TINY)
    policy.save(str(tmp_path / "policy.pt"))
    result = CliRunner().invoke(cli, [
        "--store", str(store.root), "generate", "--run", "r", "--checkpoint",
        str(tmp_path / "policy.pt"), "--audio-dir", str(tmp_path / "audio"),
        "--where", "prompt_id = 'p0'"])
    assert (result.exit_code, result.output) == (
        1, f"Error: prompt p0: context codes {missing}: missing\n")
    assert not store.exists("generations")
    with pytest.raises(InputError, match=rf"^prompt p1: context {bad}: cannot read audio \("):
        load_prompts(store, where="prompt_id = 'p1'", encode=policy.codec.encode)
    with pytest.raises(InputError, match=r"^prompt p1: context audio .* needs a codec to encode it$"):
        prompt_context(prompts[1], None)
    assert prompt_context(prompts[2], policy.codec.encode) is None
    gen = {GEN.prompt_id: "p0", PROMPT.context_audio_codes_path: str(missing),
           GEN.context_audio_filepath: str(bad), GEN.context_text: None}
    with pytest.raises(InputError, match=rf"^generation g7: context codes {missing}: missing$"):
        context_codes({"g7": gen}, policy.codec.encode)
