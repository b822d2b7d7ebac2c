"""The training config: YAML + key=value overrides, typed by field, unknown keys named."""

from __future__ import annotations

import pytest
import yaml

from ttspo.builder.core.errors import ConfigError
from ttspo.trainer.run.config import FREE_FORM, Config, load_config, save_config
from ttspo.trainer.run.config_parse import flatten, read_yaml, typed


def test_yaml_then_overrides_typed_by_field(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 1e-3\n  schedule: cosine\nloss:\n  terms: dpo=1, ipo=0.50\n"
                    "policy:\n  model: {d_model: 32}\n")
    cfg = load_config(path, ["optim.lr=2e-4", "train.max_steps=7", "loss.codebook_weights=1,2",
                             "policy.model.n_heads=2", "train.require_ref_cache=true"])
    assert cfg.optim.lr == 2e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.schedule == "cosine" and cfg.train.max_steps == 7
    assert cfg.loss.terms == "dpo=1,ipo=0.5"  # one spelling, whatever was written
    assert cfg.loss.codebook_weights == [1.0, 2.0]
    assert cfg.policy.model == {"d_model": 32, "n_heads": 2}
    assert cfg.train.require_ref_cache is True
    assert Config().optim.lr == 2e-7 and Config().loss.beta == 0.01  # NeMo's recipe


def test_a_file_reads_as_dotted_keys_and_values_are_typed_by_their_field(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 1e-3\npolicy:\n  model: {d_model: 32}\n")
    assert flatten(read_yaml(path), FREE_FORM) == [("optim.lr", "1e-3"),  # YAML: a string
                                                   ("policy.model", {"d_model": 32})]
    assert typed("1e-3", float, "optim.lr", "-o") == 1e-3
    assert typed("1,2", list[float], "optim.betas", "-o") == [1.0, 2.0]
    with pytest.raises(ConfigError, match=r"^-o: config train.max_steps wants int, got True$"):
        typed(True, int, "train.max_steps", "-o")


def test_saved_config_loads_back_equal(tmp_path):
    cfg = load_config(None, ["optim.lr=0.01", "loss.terms=ipo=1", "policy.model.d_model=16"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


@pytest.mark.parametrize("override, message", [
    ("optim.lrr=1", "-o: unknown config key 'optim.lrr'; did you mean 'optim.lr'?"),
    ("trian.max_steps=3", "-o: unknown config key 'trian.max_steps'; did you mean 'train.max_steps'?"),
    ("train.max_steps=1.5", "-o: config train.max_steps wants int, got 1.5"),
    ("train.require_ref_cache=yes please", "-o: config train.require_ref_cache wants bool, got 'yes please'"),
    ("optim.schedule=linear", "config optim.schedule: 'linear' is not one of constant, cosine"),
    ("loss.weights=1,2", "-o: config key 'loss.weights' is now 'loss.terms' (e.g. loss.terms="
                         "dpo=1,rpo=0.5); the old key only resumes a run folder made with it"),
    ("grpo.reward_weights=cer=1", "-o: config key 'grpo.reward_weights' is now 'grpo.rewards' "
     "(e.g. grpo.rewards=cer=0.5,ssim=0.5); the old key only resumes a run folder made with it"),
    ("lr", "override 'lr' is not key=value"),
])
def test_bad_overrides(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert str(err.value) == message


def test_unknown_key_in_a_file_names_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"loss": {"betta": 0.1}}))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}: unknown config key 'loss.betta'; did you mean 'loss.beta'?"


def test_best_rule_per_trainer():
    from ttspo.trainer.run.config import BEST_METRICS, best_rule

    dpo, grpo = list(BEST_METRICS["dpo"]), ["val/reward", "val/cer", "val/ssim"]
    rule = lambda trainer, measured, *o: best_rule(load_config(None, list(o)), trainer, measured)
    assert rule("dpo", dpo) == ("val/accuracy", "max")  # auto: what DPO always used
    assert rule("dpo", dpo, "train.best_metric=val/loss") == ("val/loss", "min")
    assert rule("dpo", dpo, "train.best_metric=val/loss", "train.best_mode=max") == ("val/loss", "max")
    assert rule("grpo", grpo) == ("val/cer", "min")
    assert rule("grpo", ["val/reward", "val/ssim"]) == ("val/reward", "max")  # no CER scored
    assert rule("grpo", grpo, "train.best_metric=val/ssim") == ("val/ssim", "max")
    with pytest.raises(ConfigError) as err:
        rule("grpo", grpo, "train.best_metric=val/accuracy")
    assert str(err.value) == ("config train.best_metric: 'val/accuracy' is not a grpo metric "
                              "(choose auto, val/cer, val/reward, val/ssim)")
    with pytest.raises(ConfigError) as err:
        rule("grpo", ["val/reward"], "train.best_metric=val/cer")
    assert str(err.value) == ("config train.best_metric: 'val/cer' is not measured by this run "
                              "(it measures val/reward)")
    with pytest.raises(ConfigError) as err:
        rule("dpo", dpo, "train.best_metric=val/reward")
    assert str(err.value) == ("config train.best_metric: 'val/reward' is not a dpo metric "
                              "(choose auto, val/accuracy, val/loss, val/margin)")
