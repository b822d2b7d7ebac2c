"""Bad config values are refused where the config loads: one line naming the key, the
value and the allowed range, exit 1, and no run folder written. A refused run folder's
"holds another run" names the keys that differ."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from ttspo.builder.cli.main import cli
from ttspo.trainer.run.config import LOSS_TYPES, REWARD_NAMES, RULES, load_config, valid_keys
from train_helpers import SET, pattern_store, tiny_overrides

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SEED_RANGE = "[0, 4294967295]"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return pattern_store(tmp_path_factory.mktemp("ranges") / "store", groups=8, val_size=2)


def train(store, out, *overrides, trainer="dpo"):
    quick = tiny_overrides(**{"train.max_steps": 1, "train.val_every": 0})
    args = [w for o in (*quick, *overrides) for w in ("-o", o)]
    target = [trainer, SET] if trainer == "dpo" else [trainer]
    return CliRunner().invoke(cli, ["--store", str(store.root), "train", *target, "--out", str(out),
                                    *args])


BAD = [  # (override(s), the message after "Error: config ")
    # a float that must be positive: nan, inf, 0, negative, past float's range
    (["optim.lr=nan"], "optim.lr: nan is not in (0, inf)"),
    (["optim.lr=-1"], "optim.lr: -1.0 is not in (0, inf)"),
    (["optim.lr=0"], "optim.lr: 0.0 is not in (0, inf)"),
    (["optim.lr=.inf"], "optim.lr: inf is not in (0, inf)"),
    (["optim.lr=1e999"], "optim.lr: inf is not in (0, inf)"),
    (["loss.beta=0"], "loss.beta: 0.0 is not in (0, inf)"),
    (["loss.beta=.NaN"], "loss.beta: nan is not in (0, inf)"),
    (["loss.gt_reward_scale=-2"], "loss.gt_reward_scale: -2.0 is not in (0, inf)"),
    (["grpo.length_target=0"], "grpo.length_target: 0.0 is not in (0, inf)"),
    # a float that must not be negative (nan, inf too)
    (["optim.weight_decay=-0.01"], "optim.weight_decay: -0.01 is not in [0, inf)"),
    (["optim.clip_grad_norm=nan"], "optim.clip_grad_norm: nan is not in [0, inf)"),
    (["loss.sft_weight=-.inf"], "loss.sft_weight: -inf is not in [0, inf)"),
    (["grpo.grpo_beta=-1e-9"], "grpo.grpo_beta: -1e-09 is not in [0, inf)"),
    (["grpo.entropy_coef=.inf"], "grpo.entropy_coef: inf is not in [0, inf)"),
    (["grpo.temperature=-0.5"], "grpo.temperature: -0.5 is not in [0, inf)"),
    (["grpo.inference_cfg_scale=nan"], "grpo.inference_cfg_scale: nan is not in [0, inf)"),
    # list items: each checked, the item named; the count
    (["optim.betas=[2,3]"], "optim.betas[0]: 2.0 is not in [0, 1)"),
    (["optim.betas=[0.9,1]"], "optim.betas[1]: 1.0 is not in [0, 1)"),
    (["optim.betas=0.9,-0.1"], "optim.betas[1]: -0.1 is not in [0, 1)"),
    (["optim.betas=[0.9]"], "optim.betas has 1 value(s); it takes 2"),
    (["optim.betas=[0.9,0.99,0.999]"], "optim.betas has 3 value(s); it takes 2"),
    # weighted terms: each weight in range, each name known, given once
    (["loss.terms=dpo=nan"], "loss.terms: dpo=nan is not in [0, inf)"),
    (["loss.terms=dpo=1,ipo=-1"], "loss.terms: ipo=-1.0 is not in [0, inf)"),
    (["grpo.rewards=cer=1,ssim=-0.5"], "grpo.rewards: ssim=-0.5 is not in [0, inf)"),
    (["loss.terms=dpo=1,dpo=2"], "loss.terms: 'dpo' is weighted twice in 'dpo=1,dpo=2': "
                                 "give each term once"),
    (["loss.terms=dpo"], "loss.terms: 'dpo' is not NAME=WEIGHT"),
    (["loss.terms=dpo=x"], "loss.terms: 'dpo=x': 'x' is not a number"),
    (["loss.terms="], "loss.terms: '' is not NAME=WEIGHT,... (e.g. dpo=1,rpo=0.5)"),
    (["loss.codebook_weights=[1,.inf]"], "loss.codebook_weights[1]: inf is not in [0, inf)"),
    (["loss.codebook_weights=[]"], "loss.codebook_weights is empty; it takes at least 1 value"),
    # shares and probabilities
    (["loss.label_smoothing=0.5"], "loss.label_smoothing: 0.5 is not in [0, 0.5)"),
    (["loss.label_smoothing=-0.1"], "loss.label_smoothing: -0.1 is not in [0, 0.5)"),
    (["optim.min_lr_ratio=1.5"], "optim.min_lr_ratio: 1.5 is not in [0, 1]"),
    (["grpo.inference_cfg_prob=1.01"], "grpo.inference_cfg_prob: 1.01 is not in [0, 1]"),
    (["grpo.best_cer_threshold=2"], "grpo.best_cer_threshold: 2.0 is not in [0, 1]"),
    (["grpo.mean_cer_dataset=1"], "grpo.mean_cer_dataset: 1.0 is not in (0, 1)"),
    (["grpo.best_ssim_achievable=0"], "grpo.best_ssim_achievable: 0.0 is not in (0, 1]"),
    # counts: at least 1 (or 0, or 2)
    (["train.max_steps=0"], "train.max_steps: 0 is not in [1, inf)"),
    (["train.max_steps=-5"], "train.max_steps: -5 is not in [1, inf)"),
    (["data.pairs_per_device=0"], "data.pairs_per_device: 0 is not in [1, inf)"),
    (["data.val_pairs_per_device=-2"], "data.val_pairs_per_device: -2 is not in [1, inf)"),
    (["optim.grad_accum=0"], "optim.grad_accum: 0 is not in [1, inf)"),
    (["train.log_every=0"], "train.log_every: 0 is not in [1, inf)"),
    (["train.val_every=-1"], "train.val_every: -1 is not in [0, inf)"),
    (["train.checkpoint_every=-50"], "train.checkpoint_every: -50 is not in [0, inf)"),
    (["grpo.topk=-1"], "grpo.topk: -1 is not in [0, inf)"),
    (["grpo.n_generations_per_item=1"], "grpo.n_generations_per_item: 1 is not in [2, inf)"),
    (["grpo.val_prompts=-1"], "grpo.val_prompts: -1 is not in [0, inf)"),
    (["grpo.rollouts_every=0"], "grpo.rollouts_every: 0 is not in [1, inf)"),
    (["grpo.max_decoder_steps=0"], "grpo.max_decoder_steps: 0 is not in [1, inf)"),
    # seeds: numpy's 32 bits
    (["data.seed=-1"], f"data.seed: -1 is not in {SEED_RANGE}"),
    (["data.seed=4294967296"], f"data.seed: 4294967296 is not in {SEED_RANGE}"),
    (["train.seed=-3"], f"train.seed: -3 is not in {SEED_RANGE}"),
    (["train.seed=99999999999999999999"], f"train.seed: 99999999999999999999 is not in {SEED_RANGE}"),
    # bounds that are other keys (the other key's value named)
    (["optim.warmup_steps=2"], "optim.warmup_steps: 2 is not in [0, train.max_steps]; "
                               "train.max_steps is 1"),
    (["optim.warmup_steps=-1"], "optim.warmup_steps: -1 is not in [0, train.max_steps]; "
                                "train.max_steps is 1"),
    (["grpo.mean_ssim_dataset=0.95"], "grpo.mean_ssim_dataset: 0.95 is not in "
     "(0, grpo.best_ssim_achievable); grpo.best_ssim_achievable is 0.9"),
    (["grpo.max_valid_codes_len=2"], "grpo.max_valid_codes_len: 2 is not in "
     "[grpo.min_valid_codes_len, grpo.max_decoder_steps]; grpo.min_valid_codes_len is 4; "
     "grpo.max_decoder_steps is 430"),
    (["grpo.min_valid_codes_len=20", "grpo.max_decoder_steps=10"],
     "grpo.min_valid_codes_len: 20 is not in [0, grpo.max_decoder_steps]; "
     "grpo.max_decoder_steps is 10"),
    # the key bounding another is itself out of range: it is the one named
    (["train.max_steps=-5", "optim.warmup_steps=3"], "train.max_steps: -5 is not in [1, inf)"),
    # choices
    (["loss.terms=dpo=1,rpoo=1"], "loss.terms: unknown term 'rpoo' in 'dpo=1,rpoo=1' (did "
                                  "you mean 'rpo'? choose " + ", ".join(LOSS_TYPES) + ")"),
    (["grpo.rewards=wer=1"], "grpo.rewards: unknown term 'wer' in 'wer=1' (did you mean "
                             "'cer'? choose " + ", ".join(REWARD_NAMES) + ")"),
    (["train.precision=fp16"], "train.precision: 'fp16' is not one of fp32, bf16"),
    (["grpo.loss_type=ppo"], "grpo.loss_type: 'ppo' is not one of grpo, dr_grpo"),
]


@pytest.mark.parametrize("overrides, message", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_a_bad_value_is_one_line_and_no_run_folder(store, tmp_path, overrides, message):
    out = tmp_path / "run"
    result = train(store, out, *overrides)
    assert (result.exit_code, result.output) == (1, f"Error: config {message}\n")
    assert not out.exists()


@pytest.mark.parametrize("override, message", [
    ("policy.model.encoder_layers=-1", "encoder_layers must be an integer >= 0, got -1"),
    ("policy.model.decoder_layers=1.5", "decoder_layers must be an integer >= 0, got 1.5"),
    ("policy.model.dropout=.nan", "dropout must lie in [0, 1], got nan"),
    ("policy.model.cfg_dropout=2", "cfg_dropout must lie in [0, 1], got 2"),
])
def test_the_policys_own_keys_are_refused_before_the_run_folder(store, tmp_path, override, message):
    out = tmp_path / "run"
    result = train(store, out, override)
    assert (result.exit_code, result.output) == (1, f"Error: tiny policy config: {message}\n")
    assert not out.exists()


def test_grpo_refuses_before_anything_is_written_too(store, tmp_path):
    out = tmp_path / "run"
    result = train(store, out, "grpo.temperature=nan", trainer="grpo")
    assert (result.exit_code, result.output) == (
        1, "Error: config grpo.temperature: nan is not in [0, inf)\n")
    assert not out.exists()


def test_codebook_weights_must_match_the_policy_before_the_run_folder(store, tmp_path):
    out = tmp_path / "run"
    result = train(store, out, "loss.codebook_weights=1,2,3")
    assert (result.exit_code, result.output) == (
        1, "Error: config loss.codebook_weights has 3 values; the policy has 8 codebooks\n")
    assert not out.exists()


@pytest.mark.slow  # trains
def test_edge_values_load_and_the_corrected_command_trains_in_the_same_out(store, tmp_path):
    out = tmp_path / "run"
    assert train(store, out, "optim.betas=[0.9,1.5]").exit_code == 1
    edges = ["optim.betas=[0,0.999]", "loss.label_smoothing=0.49", f"data.seed={2**32 - 1}",
             "train.seed=0", "optim.schedule=cosine", "optim.warmup_steps=1",
             "optim.min_lr_ratio=1", "optim.clip_grad_norm=0", "train.val_every=0",
             "grpo.temperature=0", "grpo.best_ssim_achievable=1", "grpo.max_valid_codes_len=430"]
    result = train(store, out, *edges)
    assert result.exit_code == 0, result.output
    assert (out / "run.json").exists()


def test_every_key_has_a_rule_and_the_loss_names_are_the_losses():
    from ttspo.trainer.dpo.losses import LOSSES

    assert list(RULES) == valid_keys()  # the table's order is the dataclasses'
    assert set(LOSS_TYPES) == set(LOSSES)
    from ttspo.trainer.grpo.rewards import RETIRED, REWARDS

    assert set(REWARD_NAMES) == set(REWARDS) | set(RETIRED)


def test_a_yaml_file_is_checked_as_overrides_are(tmp_path):
    from ttspo.builder.core.errors import ConfigError

    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  betas: [0.9, .nan]\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == "config optim.betas[1]: nan is not in [0, 1)"


def test_holds_another_run_names_the_keys_that_differ(store, tmp_path):
    out = tmp_path / "run"
    assert train(store, out).exit_code == 0
    result = train(store, out, "loss.beta=0.1", "optim.lr=1e-3")
    assert (result.exit_code, result.output) == (
        1, f"Error: {out} holds another run (config.loss.beta 0.5 (now 0.1), config.optim.lr "
           f"0.003 (now 0.001)); choose another --out\n")
    many = ["loss.beta=0.1", "optim.lr=1e-3", "optim.weight_decay=0.1", "data.seed=5",
            "train.seed=6", "loss.sft_weight=0.2", "optim.clip_grad_norm=2"]
    result = train(store, out, *many)
    assert result.output == (
        f"Error: {out} holds another run (config.data.seed 0 (now 5), config.loss.beta 0.5 (now "
        "0.1), config.loss.sft_weight 0.0 (now 0.2), config.optim.clip_grad_norm 1.0 (now 2.0), "
        "config.optim.lr 0.003 (now 0.001) and 2 more key(s)); choose another --out\n")
    # a run folder whose run.json lacks a key (an older ttspo's) names it as absent
    record = json.loads((out / "run.json").read_text())
    del record["config"]["loss"]["sft_weight"]
    (out / "run.json").write_text(json.dumps(record))
    result = train(store, out)
    assert result.output == (f"Error: {out} holds another run (config.loss.sft_weight absent "
                             "(now 0.0)); choose another --out\n")


def test_a_missing_reference_cache_leaves_no_run_folder(store, tmp_path):
    out = tmp_path / "run"
    result = train(store, out, "train.require_ref_cache=true")
    assert (result.exit_code, result.output) == (
        1, "Error: train.require_ref_cache needs --init (the checkpoint precompute-ref used)\n")
    assert not out.exists()
    assert train(store, out).exit_code == 0  # the corrected command, same --out


def test_the_rules_table_renders_as_the_docs_table():
    from ttspo.trainer.run.config_rules import markdown

    lines = markdown(RULES).splitlines()
    assert lines[:2] == ["| key | allowed |", "|---|---|"] and len(lines) == 2 + len(RULES)
    assert "| `optim.betas` | [0, 1); 2 values |" in lines
    assert ("| `loss.terms` | NAME=WEIGHT,...: NAME dpo &#124; ipo &#124; rpo &#124; rpo_sq; "
            "WEIGHT [0, inf) |") in lines
    assert "| `optim.warmup_steps` | [0, train.max_steps] |" in lines
    assert "| `train.precision` | fp32 &#124; bf16 |" in lines


@pytest.mark.slow  # torchrun
def test_the_torchrun_entry_refuses_the_same_way(store, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "ttspo.builder.cli", "--store", str(store.root),
                           "train", "dpo", SET, "--out", str(out), "-o", "optim.betas=[0.9,nan]"],
                          capture_output=True, text=True, timeout=300)
    assert (done.returncode, done.stdout, done.stderr) == (
        1, "", "Error: config optim.betas[1]: nan is not in [0, 1)\n")
    assert not out.exists()
