"""loss.types/loss.weights and grpo.reward_weights became loss.terms and grpo.rewards
(one weighted-terms syntax): a run folder made with the old keys still resumes, by
its own command or the new spelling; a new run with an old key is one line naming
the new key, and nothing is written."""

from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner

from ttspo.builder.cli.main import cli
from ttspo.trainer.run.folder import read_metrics
from train_helpers import SET, pattern_store, tiny_overrides

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return pattern_store(tmp_path_factory.mktemp("old_keys") / "store", groups=8, val_size=2)


def train(store, out, *overrides):
    quick = tiny_overrides(**{"train.max_steps": 1, "train.val_every": 0})
    args = [w for o in (*quick, *overrides) for w in ("-o", o)]
    return CliRunner().invoke(cli, ["--store", str(store.root), "train", "dpo", SET,
                                    "--out", str(out), *args])


def as_made_before(out):
    """Rewrite OUT's run.json and config.yaml as ttspo wrote them before loss.terms."""
    record = json.loads((out / "run.json").read_text())
    config = yaml.safe_load((out / "config.yaml").read_text())
    for conf in (record["config"], config):
        loss, grpo = conf["loss"], conf["grpo"]
        assert loss.pop("terms") == "dpo=1,ipo=0.5"
        loss["types"], loss["weights"] = ["dpo", "ipo"], [1.0, 0.5]
        grpo["reward_weights"] = grpo.pop("rewards")
    (out / "run.json").write_text(json.dumps(record, indent=2, sort_keys=True))
    (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


@pytest.mark.slow  # ~1.6 s: a DPO run and its resume
def test_a_run_folder_made_with_the_old_keys_resumes(store, tmp_path):
    out = tmp_path / "run"
    assert train(store, out, "loss.terms=dpo=1, ipo=0.50").exit_code == 0
    as_made_before(out)
    # its own command, old keys and all (max_steps may change on resume)
    old = ["loss.types=dpo,ipo", "loss.weights=1,0.5"]
    result = train(store, out, *old, "train.max_steps=2")
    assert result.exit_code == 0, result.output
    assert read_metrics(out)[-1]["step"] == 2
    # the new spelling resumes it too
    result = train(store, out, "loss.terms=dpo=1,ipo=0.5", "train.max_steps=3")
    assert result.exit_code == 0, result.output
    assert read_metrics(out)[-1]["step"] == 3
    # other weights, either spelling: another run, named in the new key
    result = train(store, out, "loss.types=dpo,ipo", "loss.weights=1,0.7", "train.max_steps=4")
    assert (result.exit_code, result.output) == (
        1, f'Error: {out} holds another run (config.loss.terms "dpo=1,ipo=0.5" (now '
           f'"dpo=1,ipo=0.7")); choose another --out\n')


@pytest.mark.parametrize("overrides, old, new, example", [
    (["loss.types=dpo,ipo", "loss.weights=1,0.5"], "loss.types", "loss.terms",
     "loss.terms=dpo=1,rpo=0.5"),
    (["grpo.reward_weights=cer=1"], "grpo.reward_weights", "grpo.rewards",
     "grpo.rewards=cer=0.5,ssim=0.5"),
])
def test_a_new_run_with_an_old_key_names_the_new_one(store, tmp_path, overrides, old, new,
                                                      example):
    out = tmp_path / "new"
    result = train(store, out, *overrides)
    assert (result.exit_code, result.output) == (
        1, f"Error: -o: config key '{old}' is now '{new}' (e.g. {example}); the old key only "
           "resumes a run folder made with it\n")
    assert not out.exists()
