"""`ttspo train grpo`: config checks, an end-to-end step with real audio and real
scorers, learning a length target, and `ttspo rewards` equal to training's rewards."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from ttspo.builder.cli.main import cli
from ttspo.builder.core.schemas import CKPT, GEN, ROLL, RWD
from ttspo.builder.core.store import Store

sys.path.insert(0, str(Path(__file__).parent))
from grpo_helpers import TINY, make_prompts  # noqa: E402

SMALL = [f"policy.model.{k}={v}" for k, v in TINY.items()] + [
    "train.progress=false", "train.tensorboard=false", "train.val_every=0"]


def train(store: Store, out: Path, *overrides: str):
    args = ["--store", str(store.root), "train", "grpo", "--out", str(out)]
    for o in (*SMALL, *overrides):
        args += ["-o", o]
    return CliRunner().invoke(cli, args)


def test_misspelt_nemo_key_is_an_error_naming_the_right_one(tmp_path):
    store = Store(tmp_path / "st")
    make_prompts(store, 2)
    result = train(store, tmp_path / "run", "grpo.num_generations_per_item=4")
    assert result.exit_code == 1
    assert result.output == ("Error: -o: unknown config key 'grpo.num_generations_per_item'; "
                             "did you mean 'grpo.n_generations_per_item'?\n")
    assert not (tmp_path / "run").exists()


def test_bad_reward_weights_and_too_few_prompts_fail_cleanly(tmp_path):
    from ttspo.trainer.grpo.rewards import RETIRED
    from ttspo.trainer.run.config import REWARD_NAMES

    store = Store(tmp_path / "st")
    make_prompts(store, 2)
    result = train(store, tmp_path / "run", "grpo.rewards=wer=1")
    assert result.exit_code == 1
    assert result.output == ("Error: config grpo.rewards: unknown term 'wer' in 'wer=1' (did you "
                             f"mean 'cer'? choose {', '.join(REWARD_NAMES)})\n")
    result = train(store, tmp_path / "run", "grpo.rewards=utmos=1")  # retired: says what replaced it
    assert result.exit_code == 1
    assert result.output == f"Error: grpo.rewards: {RETIRED['utmos']}\n"
    result = train(store, tmp_path / "run", "grpo.prompts_per_step=3")
    assert result.output == ("Error: 2 training prompts, fewer than one step's 3 "
                             "(grpo.prompts_per_step x processes)\n")
    result = train(store, tmp_path / "run", "grpo.where=text = 'nothing like this'")
    assert result.output == "Error: prompts@1: no prompt matches \"text = 'nothing like this'\"\n"
    assert store.tables() == ["prompts"]


@pytest.mark.slow
def test_one_step_end_to_end_real_audio_asr_and_speaker_metrics(tmp_path):
    store = Store(tmp_path / "st")
    make_prompts(store, 2)
    result = train(store, tmp_path / "run", "grpo.prompts_per_step=1",
                   "grpo.n_generations_per_item=2", "grpo.max_decoder_steps=12",
                   "grpo.min_valid_codes_len=2", "train.max_steps=1", "optim.lr=1e-3",
                   "grpo.val_prompts=1", "train.val_every=1")
    assert result.exit_code == 0, result.output
    ds = store.open("rollouts")
    names = [n for n in ds.schema.names if n != GEN.audio]
    everything = ds.to_table(columns=[ROLL.step, ROLL.split])
    assert sorted(zip(everything[ROLL.step].to_pylist(), everything[ROLL.split].to_pylist())) == \
        [(0, "train"), (0, "train"), (0, "val"), (0, "val"), (1, "val"), (1, "val")]
    table = ds.to_table(columns=names, with_row_id=True, filter="split = 'train'")
    rows = table.to_pylist()
    blobs = ds.take_blobs(GEN.audio, ids=table["_rowid"].to_pylist())
    assert len(rows) == 2 and {r[ROLL.split] for r in rows} == {"train"}
    run = "run"
    assert sorted(r[ROLL.rollout_id] for r in rows) == [f"{run}:0:train:{rows[0][GEN.group_index]}:{s}"
                                                        for s in (0, 1)]
    for r, blob in zip(rows, blobs):
        audio, sr = sf.read(io.BytesIO(blob.readall()))
        assert sr == 22050 and len(audio) == r[GEN.codes_len] * 1024  # the codec's hop
        assert np.asarray(r[GEN.codes]).shape == (8, r[GEN.codes_len])
        assert r[GEN.cer_source].startswith("pocketsphinx") and r[GEN.cer] >= 0
        assert r[GEN.ssim_source].startswith("resemblyzer") and -1 <= r[GEN.ssim] <= 1
        assert r[GEN.pred_transcript] is not None
        assert r[ROLL.checkpoint] and len(r[ROLL.checkpoint]) == 64
    # rollouts commit lineage and the checkpoint row trace back to the prompts version
    assert store.lineage("rollouts", 1)["inputs"]["prompts"] == 1
    ckpts = store.open("checkpoints").to_table().to_pylist()
    assert sorted((c[CKPT.trainer], c[CKPT.kind], c[CKPT.step], c[CKPT.prompts_version])
                  for c in ckpts) == [("grpo", "best", 1, 1), ("grpo", "step", 1, 1)]
    best = json.loads(next(c for c in ckpts if c[CKPT.kind] == "best")[CKPT.val_metrics])
    assert set(best) == {"val/cer", "val/ssim", "val/reward"}  # best = lowest val CER
    # `ttspo rewards` over the stored rollouts, same weights: the same numbers
    again = CliRunner().invoke(cli, ["--store", str(store.root), "rewards", "--weights",
                                     "cer=0.5,ssim=0.5", "--max-valid-len", "11",
                                     "--min-valid-len", "2", "--as", "rw"])
    assert again.exit_code == 0, again.output
    recomputed = {r[RWD.row_id]: r for r in store.open("rw").to_table().to_pylist()}
    for r in rows:
        for column in (RWD.reward_cer, RWD.reward_ssim, RWD.reward, RWD.advantage, RWD.valid):
            assert recomputed[r[ROLL.rollout_id]][column] == r[column], column
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert {"reward/mean", "reward/cer", "reward/ssim", "advantage/std", "groups/valid_fraction",
            "kl", "entropy", "time/generate", "time/decode", "time/score",
            "time/update"} <= set(metrics[1])
    assert [m["step"] for m in metrics] == [0, 1, 1] and "val/cer" in metrics[0]


LENGTH = ["grpo.rewards=length=1", "grpo.length_target=3", "grpo.max_decoder_steps=16",
          "grpo.min_valid_codes_len=1", "grpo.store_audio=false", "grpo.topk=0",
          "grpo.temperature=1.0", "train.checkpoint_every=0"]


@pytest.mark.slow
def test_tiny_policy_learns_a_length_target(tmp_path):
    """Reward 1 - |frames - 3| / 3: the mean reward of steps 11-14 beats steps 1-4 by 0.15."""
    store = Store(tmp_path / "st")
    make_prompts(store, 4)
    result = train(store, tmp_path / "run", *LENGTH, "grpo.n_generations_per_item=8",
                   "grpo.prompts_per_step=2", "optim.lr=1e-2", "train.max_steps=14")
    assert result.exit_code == 0, result.output
    rewards = [json.loads(line)["reward/mean"] for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert len(rewards) == 14
    assert np.mean(rewards[-4:]) - np.mean(rewards[:4]) > 0.15, rewards


@pytest.mark.slow
def test_rollouts_name_the_newest_checkpoint_or_the_start_weights(tmp_path):
    """The policy tag is not a per-step hash: steps 0-1 carry the start weights' sha256
    (the lineage's start_sha256), steps 2-3 step 2's checkpoint file's."""
    import hashlib

    import torch

    from ttspo.trainer.policy.base import load_policy

    store = Store(tmp_path / "st")
    make_prompts(store, 2)
    result = train(store, tmp_path / "run", *LENGTH, "grpo.n_generations_per_item=4",
                   "grpo.prompts_per_step=2", "optim.lr=1e-2", "train.max_steps=4",
                   "train.checkpoint_every=2")
    assert result.exit_code == 0, result.output
    torch.manual_seed(0)  # train.seed: the fresh policy the run starts from
    start = load_policy("tiny", config=TINY).identity().sha256
    step2 = tmp_path / "run" / "checkpoints" / "step_000002" / "policy.pt"
    at2 = hashlib.sha256(step2.read_bytes()).hexdigest()
    rows = store.open("rollouts").to_table(columns=[ROLL.step, ROLL.checkpoint]).to_pylist()
    tags = {r[ROLL.step]: r[ROLL.checkpoint] for r in rows}
    assert len(rows) == 32 and tags == {0: start, 1: start, 2: at2, 3: at2}
    assert start != at2 and store.lineage("rollouts", 1)["start_sha256"] == start
    ckpts = store.open("checkpoints").to_table(columns=[CKPT.step, CKPT.sha256]).to_pylist()
    assert {c[CKPT.step]: c[CKPT.sha256] for c in ckpts}[2] == at2


@pytest.mark.slow
def test_a_best_checkpoint_does_not_tag_rollouts(tmp_path):
    """Only step checkpoints tag rollouts (a resume finds those, and best/ is
    overwritten): with validation every step and the first step checkpoint at 4,
    every training row carries the start weights' sha256."""
    from ttspo.trainer.policy.base import load_policy

    import torch

    store = Store(tmp_path / "st")
    make_prompts(store, 3)
    result = train(store, tmp_path / "run", *LENGTH, "grpo.n_generations_per_item=4",
                   "grpo.prompts_per_step=2", "grpo.val_prompts=1", "train.val_every=1",
                   "train.max_steps=3", "train.checkpoint_every=4")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "checkpoints" / "best").is_dir()
    torch.manual_seed(0)
    start = load_policy("tiny", config=TINY).identity().sha256
    rows = store.open("rollouts").to_table(columns=[ROLL.step, ROLL.split, ROLL.checkpoint]).to_pylist()
    assert {r[ROLL.checkpoint] for r in rows if r[ROLL.split] == "train"} == {start}
    assert {r[ROLL.step] for r in rows if r[ROLL.split] == "train"} == {0, 1, 2}


@pytest.mark.slow
def test_a_nan_loss_stops_grpo_naming_the_last_good_checkpoint_whose_meta_has_every_rank(tmp_path):
    """DPO's and GRPO's checkpoints are one implementation (checkpointer.Checkpointer)."""
    import pytest

    from ttspo.builder.core.errors import TrainingError
    from ttspo.trainer.run import checkpoints as ckpt
    from ttspo.trainer.run.config import load_config
    from ttspo.trainer.grpo.loop import train_grpo

    store = Store(tmp_path / "st")
    make_prompts(store, 2)
    # lr 1e30 and an entropy bonus (argmax samples: a group has no spread, so only the
    # bonus has a gradient): step 1 is finite, its update blows the weights up, step 2's
    # loss is nan
    cfg = load_config(None, [*SMALL, *LENGTH, "grpo.temperature=0", "grpo.entropy_coef=0.1",
                             "grpo.max_decoder_steps=8", "grpo.n_generations_per_item=2",
                             "grpo.prompts_per_step=1", "optim.lr=1e30", "train.max_steps=5",
                             "train.checkpoint_every=1"])
    out = tmp_path / "run"
    with pytest.raises(TrainingError) as err:
        train_grpo(store, cfg=cfg, out=out, echo=lambda *_: None)
    assert str(err.value) == (f"step 2: the loss is nan; the run stopped. Last good checkpoint: "
                              f"{out}/checkpoints/step_000001")
    assert ckpt.latest_checkpoint(out).name == "step_000001"
    meta = ckpt.read_meta(out / "checkpoints" / "step_000001")
    assert meta["rank_weights_sha256"] == [ckpt.gather_weight_digests(
        load_policy_file(out / "checkpoints" / "step_000001" / "policy.pt"))[0]]
    assert meta["trainer"] == "grpo" and meta["sha256"] == \
        store.open("checkpoints").to_table().to_pylist()[0][CKPT.sha256]


def load_policy_file(path):
    from ttspo.trainer.policy.base import load_policy

    return load_policy("tiny", init=str(path), config=TINY)


@pytest.mark.slow
def test_grpo_best_checkpoint_by_the_configs_best_metric(tmp_path):
    """train.best_metric/best_mode pick GRPO's best (here the LOWEST val reward: not
    the built-in rule's choice); a metric GRPO does not measure fails before anything
    is written; a resume may change them."""
    store = Store(tmp_path / "st")
    make_prompts(store, 3)
    quick = [*LENGTH, "grpo.n_generations_per_item=4", "grpo.prompts_per_step=1",
             "optim.lr=1e-2", "grpo.val_prompts=1", "train.val_every=1"]
    bad = train(store, tmp_path / "bad", *quick, "train.best_metric=val/accuracy")
    assert bad.exit_code == 1 and bad.output == (
        "Error: config train.best_metric: 'val/accuracy' is not a grpo metric "
        "(choose auto, val/cer, val/reward, val/ssim)\n")
    assert not (tmp_path / "bad").exists() and store.tables() == ["prompts"]
    result = train(store, tmp_path / "run", *quick, "train.max_steps=3",
                   "train.best_metric=val/reward", "train.best_mode=min")
    assert result.exit_code == 0, result.output
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    rewards = {m["step"]: m["val/reward"] for m in metrics if "val/reward" in m}
    ckpts = store.open("checkpoints").to_table().to_pylist()
    bests = sorted(c[CKPT.step] for c in ckpts if c[CKPT.kind] == "best")
    expected, top = [], None
    for s in (1, 2, 3):  # a best whenever the val reward is below every earlier one
        if top is None or rewards[s] < top:
            expected.append(s)
            top = rewards[s]
    assert bests == expected
    meta = json.loads((tmp_path / "run" / "checkpoints" / "best" / "meta.json").read_text())
    assert (meta["best_metric"], meta["best_value"]) == ("val/reward", top)
    # a run folder made when best_metric/best_mode were part of the run's identity
    run_json = tmp_path / "run" / "run.json"
    identity = json.loads(run_json.read_text())
    identity["config"]["train"].update(best_metric="val/accuracy", best_mode="max")
    run_json.write_text(json.dumps(identity))
    again = train(store, tmp_path / "run", *quick, "train.max_steps=4",
                  "train.best_metric=val/reward", "train.best_mode=max")
    assert again.exit_code == 0 and "resuming at step 3" in again.output, again.output


@pytest.mark.parametrize("command", [["grpo"], ["dpo", "some-set"]])
def test_train_commands_go_through_the_api(tmp_path, command):
    """`ttspo train dpo|grpo` call Store.train_dpo|train_grpo (trainer/api.py): a store
    that does not exist is the API's one-line error, and nothing is made."""
    missing = tmp_path / "nostore"
    result = CliRunner().invoke(cli, ["--store", str(missing), "train", *command,
                                      "--out", str(tmp_path / "run")])
    assert result.exit_code == 1
    assert result.output == f"Error: no store at {missing} (no such folder; check --store)\n"
    assert not missing.exists() and not (tmp_path / "run").exists()


def test_a_new_folder_named_like_a_stored_run_is_refused_and_left_absent(tmp_path):
    """Rollouts are keyed by the run folder's name: a new run in another folder of the
    same name is refused before anything is written (no run folder left behind)."""
    store = Store(tmp_path / "st")
    make_prompts(store, 2)
    args = (*LENGTH, "grpo.n_generations_per_item=2", "grpo.prompts_per_step=2",
            "train.max_steps=1")
    assert train(store, tmp_path / "a" / "run", *args).exit_code == 0
    versions = len(store.versions("rollouts"))
    result = train(store, tmp_path / "b" / "run", *args)
    assert result.exit_code == 1
    assert result.output == (f"Error: rollouts already holds a run named 'run' that "
                             f"{tmp_path / 'b' / 'run'} did not make; train into a folder "
                             "with another name\n")
    assert not (tmp_path / "b" / "run").exists()
    assert len(store.versions("rollouts")) == versions
