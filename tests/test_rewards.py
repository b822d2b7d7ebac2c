"""GRPO rewards, validity, advantages and both loss types against hand-worked numbers."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
import torch

from ttspo.builder.core.errors import ConfigError, InputError
from ttspo.builder.core.schemas import GEN, RWD
from ttspo.trainer.grpo.losses import GRPO_LOSSES, token_entropy
from ttspo.trainer.grpo.rewards import RewardConfig, compute_rewards
from ttspo.trainer.run.config_rules import parse_terms


def frame(groups, cer, ssim=None, codes_len=None, **extra):
    n = len(groups)
    data = {GEN.group_id: groups, GEN.cer: cer,
            GEN.ssim: ssim if ssim is not None else [0.6] * n,
            GEN.codes_len: codes_len if codes_len is not None else [20] * n,
            GEN.invalid: extra.pop("invalid", [False] * n)}
    data.update(extra)
    return pl.DataFrame(data)


def col(df, name):
    return df[name].to_list()


# ------------------------------------------------------------------ parts
def test_cer_reward_piecewise_around_mean_cer():
    df = compute_rewards(frame(["g"] * 7, [0.0, 0.05, 0.1, 0.55, 1.0, 2.0, -0.1]),
                         RewardConfig(weights={"cer": 1.0}))
    assert col(df, RWD.reward_cer) == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0, 0.0, 1.0])


def test_ssim_reward_clamped_to_best_achievable():
    df = compute_rewards(frame(["g"] * 6, [0.0] * 6, ssim=[0.9, 0.95, 0.75, 0.3, 0.0, -0.2]),
                         RewardConfig(weights={"ssim": 1.0}))
    assert col(df, RWD.reward_ssim) == pytest.approx([1.0, 1.0, 0.75, 0.25, 0.0, 0.0])


def test_quality_and_length_rewards():
    df = frame(["g"] * 3, [0.0] * 3, codes_len=[20, 15, 45], pesq=[2.25, 4.5, 9.0],
               squim=[4.5, 0.0, 2.25])
    cfg = RewardConfig(weights={"pesq": 1, "squim": 1, "length": 1}, length_target=20)
    out = compute_rewards(df, cfg)
    assert col(out, RWD.reward_pesq) == pytest.approx([0.5, 1.0, 1.0])
    assert col(out, RWD.reward_squim) == pytest.approx([1.0, 0.0, 0.5])
    assert col(out, RWD.reward_utmos) == [None] * 3  # retired: the old column stays, null
    assert col(out, RWD.reward_length) == pytest.approx([1.0, 0.75, 0.0])
    assert col(out, RWD.reward) == pytest.approx([2.5, 1.75, 1.5])


def test_mos_reward_maps_1_to_5_onto_0_to_1():
    df = frame(["g"] * 4, [0.0] * 4, mos=[3.0, 5.0, 1.0, 6.0])
    out = compute_rewards(df, RewardConfig(weights={"mos": 1}))
    assert col(out, RWD.reward_mos) == pytest.approx([0.5, 1.0, 0.0, 1.0])


def test_a_limit_makes_a_silent_tail_invalid():
    """grpo.limits: appended silence cannot buy a better CER (NULL: not held against it)."""
    df = frame(["g"] * 3, [0.0, 0.0, 0.55], trail_silence=[2.0, 0.1, None])
    out = compute_rewards(df, RewardConfig(weights={"cer": 1}, limits={"trail_silence": 0.5}))
    assert col(out, RWD.valid) == [False, True, True]
    assert col(out, RWD.reward) == pytest.approx([0.0, 1.0, 0.25])
    with pytest.raises(InputError, match="no validity limit for 'cer'"):
        RewardConfig(limits={"cer": 0.5})


def test_utmos_is_retired_with_one_line_naming_mos():
    with pytest.raises(InputError, match=r"^reward 'utmos' is retired .*use 'mos'"):
        RewardConfig(weights={"utmos": 1})


def test_a_failed_metric_makes_the_sample_invalid_never_a_zero_part():
    """cer NULL because its scorer raised ("error: ..." in cer_status): the sample is
    invalid and its total follows invalid_reward; a NULL that does not apply (n/a) is not."""
    df = frame(["g"] * 3, [0.0, None, 0.55], cer_status=[None, "error: ValueError: x", None])
    for invalid_reward, floor in (("zero", 0.0), ("group_min", 0.25)):
        out = compute_rewards(df, RewardConfig(weights={"cer": 1}, invalid_reward=invalid_reward))
        assert col(out, RWD.valid) == [True, False, True]
        assert col(out, RWD.reward) == pytest.approx([1.0, floor, 0.25])
    na = frame(["g"] * 2, [0.0, 0.0], ssim=[None, None], ssim_status=["n/a: text context"] * 2)
    out = compute_rewards(na, RewardConfig(weights={"cer": 0.5, "ssim": 0.5}))
    assert col(out, RWD.valid) == [True, True]


def test_null_part_counts_zero_and_keeps_advantages():
    # Text-context prompts have no SSIM: the part is null, the sum treats it as 0.
    df = compute_rewards(frame(["g", "g"], [0.0, 0.1], ssim=[None, None]),
                         RewardConfig(weights={"cer": 0.5, "ssim": 0.5}, scale_rewards=False))
    assert col(df, RWD.reward_ssim) == [None, None]
    assert col(df, RWD.reward) == pytest.approx([0.5, 0.25])
    assert col(df, RWD.advantage) == pytest.approx([0.125, -0.125])


# -------------------------------------------------------- totals, advantages
def test_weighted_sum_and_both_advantage_scalings():
    df = frame(["a", "a", "a", "b", "b", "c"], [0.0, 0.1, 1.0, 0.3, 0.3, 0.0],
               ssim=[0.9, 0.6, 0.0, 0.5, 0.5, 0.9])
    grpo = compute_rewards(df, RewardConfig(weights={"cer": 0.5, "ssim": 0.5}))
    assert col(grpo, RWD.reward)[:3] == pytest.approx([1.0, 0.5, 0.0])
    # group a: mean 0.5, std (ddof 0, NeMo's np.std) sqrt(1/6) -> +-0.5 / (sqrt(1/6) + 1e-4)
    a = 0.5 / (math.sqrt(1 / 6) + 1e-4)
    assert col(grpo, RWD.advantage) == pytest.approx([a, 0.0, -a, 0.0, 0.0, 0.0])
    assert not any(math.isnan(x) for x in col(grpo, RWD.advantage))  # zero spread, group of one
    dr = compute_rewards(df, RewardConfig(weights={"cer": 0.5, "ssim": 0.5}, scale_rewards=False))
    assert col(dr, RWD.advantage) == pytest.approx([0.5, 0.0, -0.5, 0.0, 0.0, 0.0])


def test_normalize_then_sum_zscores_each_part_within_its_group():
    df = frame(["a"] * 3, [0.0, 0.1, 1.0], ssim=[0.75] * 3)  # cer parts 1, .5, 0; ssim constant
    out = compute_rewards(df, RewardConfig(weights={"cer": 1.0, "ssim": 1.0}, normalize="group",
                                           scale_rewards=False))
    z = 0.5 / 0.5001
    assert col(out, RWD.reward) == pytest.approx([z, 0.0, -z])  # ssim: zero spread -> 0
    assert col(out, RWD.reward_ssim) == pytest.approx([0.75] * 3)  # parts stay un-normalised


# -------------------------------------------------------------- validity
def test_invalid_samples_get_zero_or_the_group_minimum():
    df = frame(["a"] * 4, [0.0, 0.1, 0.0, 0.0], ssim=[0.9, 0.6, 0.9, 0.9],
               codes_len=[10, 10, 3, 430], invalid=[False] * 4)
    cfg = dict(weights={"cer": 0.5, "ssim": 0.5}, max_valid_len=429, scale_rewards=False)
    zero = compute_rewards(df, RewardConfig(**cfg))
    assert col(zero, RWD.valid) == [True, True, False, False]  # empty (<= 3), unfinished
    assert col(zero, RWD.reward) == pytest.approx([1.0, 0.5, 0.0, 0.0])
    assert col(zero, RWD.advantage) == pytest.approx([0.625, 0.125, -0.375, -0.375])
    low = compute_rewards(df, RewardConfig(**cfg, invalid_reward="group_min"))
    assert col(low, RWD.reward) == pytest.approx([1.0, 0.5, 0.5, 0.5])


def test_failed_asr_makes_a_sample_invalid():
    df = frame(["a", "a"], [0.0, 1.0], invalid=[False, True])
    out = compute_rewards(df, RewardConfig(weights={"cer": 1.0}))
    assert col(out, RWD.valid) == [True, False]


def test_group_validity_best_and_worst_cer_thresholds():
    df = frame(["a", "a", "b", "b", "c", "c"], [0.1, 0.2, 0.0, 0.8, 0.0, 0.4])
    out = compute_rewards(df, RewardConfig(weights={"cer": 1.0}, best_cer_threshold=0.05,
                                           worst_cer_threshold=0.5))
    assert col(out, RWD.group_valid) == [False, False, False, False, True, True]


# ------------------------------------------------------- weights, callables
def half_codes(df):  # a user reward: used by name "test_rewards:half_codes"
    return pl.col(GEN.codes_len) / 40


def out_of_range(df):
    return np.full(df.height, 1.5)


def test_user_callable_by_import_path():
    df = frame(["a", "a"], [0.0, 0.0], codes_len=[20, 10])
    out = compute_rewards(df, RewardConfig(weights={"test_rewards:half_codes": 2.0}))
    assert out[RWD.reward_custom].to_list() == [[{"name": "test_rewards:half_codes", "value": 0.5}],
                                               [{"name": "test_rewards:half_codes", "value": 0.25}]]
    assert col(out, RWD.reward) == pytest.approx([1.0, 0.5])
    with pytest.raises(InputError, match=r"reward 'test_rewards:out_of_range' must return one "
                                         r"finite value in \[0, 1\] per row"):
        compute_rewards(df, RewardConfig(weights={"test_rewards:out_of_range": 1.0}))


def test_weights_parse_and_bad_names_fail_early():
    assert parse_terms("cer=0.5, ssim=0.5,pkg.mod:fn=1", "--weights") == {
        "cer": 0.5, "ssim": 0.5, "pkg.mod:fn": 1.0}
    with pytest.raises(ConfigError, match="^--weights: 'cer' is not NAME=WEIGHT$"):
        parse_terms("cer", "--weights")
    with pytest.raises(ConfigError, match="'cer=x': 'x' is not a number"):
        parse_terms("cer=x", "--weights")
    with pytest.raises(InputError, match="unknown reward 'wer'"):
        RewardConfig(weights={"wer": 1.0})
    with pytest.raises(InputError, match="reward 'nosuchmod:fn': cannot import it"):
        RewardConfig(weights={"nosuchmod:fn": 1.0})
    with pytest.raises(InputError, match="'length' reward needs length_target"):
        RewardConfig(weights={"length": 1.0})
    with pytest.raises(InputError, match="no column\\(s\\) pesq"):
        compute_rewards(frame(["a"], [0.0]), RewardConfig(weights={"pesq": 1.0}))


def divides_by_zero(df):
    return 1 / 0


def a_failing_expression(df):
    return pl.col("no_such_metric") / 2  # fails when polars evaluates it


def text_values(df):
    return ["high"] * df.height


@pytest.mark.parametrize("fn, error", [
    ("divides_by_zero", "raised ZeroDivisionError: division by zero"),
    ("a_failing_expression", "raised ColumnNotFoundError: "),
    ("text_values", "must return one finite value in [0, 1] per row (it returned list: "
                    "ValueError: could not convert string to float: 'high')"),
])
def test_a_user_reward_that_fails_is_one_error_naming_it(fn, error):
    with pytest.raises(InputError) as err:
        compute_rewards(frame(["a", "a"], [0.0, 0.5]),
                        RewardConfig(weights={f"test_rewards:{fn}": 1}))
    assert str(err.value).startswith(f"reward 'test_rewards:{fn}' {error}")
    assert len(str(err.value).splitlines()) == 1


def test_a_reward_module_that_raises_on_import_is_one_error(tmp_path, monkeypatch):
    (tmp_path / "broken_reward.py").write_text("import json\njson.loads('{')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(InputError, match=r"^reward 'broken_reward:fn': importing broken_reward "
                                         r"raised JSONDecodeError: Expecting property name"):
        RewardConfig(weights={"broken_reward:fn": 1.0})


@pytest.mark.parametrize("text, name", [
    ("cer=1,cer=2", "cer"), ("cer=0.5, ssim=0.5, cer =0.5", "cer"),
    ("pkg.mod:fn=1,ssim=1,pkg.mod:fn=1", "pkg.mod:fn"),
])
def test_a_reward_weighted_twice_is_refused(text, name):
    with pytest.raises(ConfigError) as err:
        parse_terms(text, "grpo.rewards")
    assert str(err.value) == (f"grpo.rewards: '{name}' is weighted twice in '{text}': "
                              "give each term once")


# ------------------------------------------------------------------ losses
def _logps():
    return torch.tensor([[[-1.0, -2.0]], [[-0.5, -0.5]]], requires_grad=True)


MASK = torch.tensor([[[True, True]], [[True, False]]])
ADV = torch.tensor([1.0, -1.0])
ALL = torch.tensor([True, True])


def test_grpo_loss_token_mean_per_sequence_then_batch():
    logps = _logps()
    out = GRPO_LOSSES["grpo"](logps, ADV, MASK, ALL)
    assert out.loss.item() == pytest.approx(0.0)  # seq0 mean -1, seq1 mean +1
    out.loss.backward()
    assert logps.grad.flatten().tolist() == pytest.approx([-0.25, -0.25, 0.5, 0.0])
    assert out.kl.item() == 0.0
    only_first = GRPO_LOSSES["grpo"](_logps(), ADV, MASK, torch.tensor([True, False]))
    # invalid groups are masked out; the mean is over the batch, as NeMo's
    assert only_first.loss.item() == pytest.approx(-0.5)


def test_dr_grpo_loss_divides_by_batch_times_max_steps():
    logps = _logps()
    out = GRPO_LOSSES["dr_grpo"](logps, ADV, MASK, ALL, max_steps=4)
    assert out.loss.item() == pytest.approx((-2.0 + 1.0) / 8)
    out.loss.backward()
    assert logps.grad.flatten().tolist() == pytest.approx([-0.125, -0.125, 0.125, 0.0])


def test_kl_term_and_entropy_bonus():
    logps = _logps()
    ref = logps.detach() + torch.tensor([[[math.log(2), 0.0]], [[0.0, 0.0]]])
    out = GRPO_LOSSES["grpo"](logps, ADV, MASK, ALL, ref_logps=ref, kl_beta=0.1)
    k3 = 2 - math.log(2) - 1  # exp(d) - d - 1 at d = ln 2
    assert out.loss.item() == pytest.approx((-1 + 0.1 * k3 / 2 + 1) / 2)
    assert out.kl.item() == pytest.approx((k3 / 2 + 0) / 2)  # NeMo's: mean of per-sequence means
    entropy = torch.tensor([[[1.0, 1.0]], [[2.0, 2.0]]])
    bonus = GRPO_LOSSES["grpo"](_logps(), ADV, MASK, ALL, entropy=entropy, entropy_coef=0.1)
    assert bonus.loss.item() == pytest.approx((-1.1 + 0.8) / 2)
    assert bonus.entropy.item() == pytest.approx(4 / 3)
    assert token_entropy(torch.zeros(2, 4)).tolist() == pytest.approx([math.log(4)] * 2)


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo"])
def test_a_masked_group_keeps_its_kl_term(loss_type):
    # NeMo masks a group's advantage term only: its KL term (beta > 0) stays.
    ref = _logps().detach() + torch.tensor([[[0.0, 0.0]], [[math.log(2), 0.0]]])
    k3 = 2 - math.log(2) - 1  # exp(d) - d - 1 at d = ln 2, sequence 1's first token
    first = torch.tensor([True, False])
    out = GRPO_LOSSES[loss_type](_logps(), ADV, MASK, first, ref_logps=ref, kl_beta=0.1,
                                 max_steps=4)
    if loss_type == "grpo":  # seq 0: mean of -1, -1; seq 1: its KL alone (one token)
        assert out.loss.item() == pytest.approx((-1 + 0.1 * k3) / 2)
    else:  # token sums over batch * max_steps = 8
        assert out.loss.item() == pytest.approx((-2 + 0.1 * k3) / 8)
    assert out.kl.item() == pytest.approx((0 + k3) / 2)


def test_normalize_then_sum_scales_by_the_valid_samples_only():
    # An unfinished sample (4th: 2 frames) must not set the group's mean or std.
    df = frame(["a"] * 4, [0.0, 0.1, 0.1, 1.0], codes_len=[20, 20, 20, 2])
    out = compute_rewards(df, RewardConfig(weights={"cer": 1.0}, normalize="group"))
    std = math.sqrt(1 / 12)  # of the valid parts 1, .5, .5 (ddof 1)
    assert col(out, RWD.reward) == pytest.approx([(1 / 3) / (std + 1e-4), (-1 / 6) / (std + 1e-4),
                                                  (-1 / 6) / (std + 1e-4), 0.0])
