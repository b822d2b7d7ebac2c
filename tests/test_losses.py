"""Preference losses against numbers worked by hand (nemo-formats.md §4)."""

from __future__ import annotations

import pytest
import torch

from ttspo.builder.core.errors import ConfigError
from ttspo.trainer.dpo import losses as L


def pair(pi_c=-10.0, pi_r=-12.0, ref_c=-11.0, ref_r=-11.0, rew_c=1.0, rew_r=0.25):
    t = lambda v: torch.tensor([v], dtype=torch.float64)
    # logits = (pi_c - pi_r) - (ref_c - ref_r) = 2 - 0 = 2
    return L.PairLogps(t(pi_c), t(pi_r), t(ref_c), t(ref_r), t(rew_c), t(rew_r))


def value(fn, x, **kw):
    return float(fn(x, **kw)[0])


def test_dpo_with_and_without_label_smoothing():
    # beta*logits = 1: -logsigmoid(1) = log(1 + e^-1) = 0.3132616875
    assert value(L.dpo, pair(), beta=0.5) == pytest.approx(0.3132616875)
    # 0.9*log(1+e^-1) + 0.1*log(1+e^1) = log(1+e^-1) + 0.1
    assert value(L.dpo, pair(), beta=0.5, label_smoothing=0.1) == pytest.approx(0.4132616875)
    # policy equal to reference: log 2 whatever beta
    same = pair(pi_c=-11.0, pi_r=-11.0)
    assert value(L.dpo, same, beta=0.01) == pytest.approx(0.6931471806)


def test_ipo():
    # (2 - 1/(2*0.5))^2 = 1; beta 0.25: (2 - 2)^2 = 0
    assert value(L.ipo, pair(), beta=0.5) == pytest.approx(1.0)
    assert value(L.ipo, pair(), beta=0.25) == pytest.approx(0.0)


def test_rpo_and_rpo_sq_use_the_reward_gap():
    # d = 2*(1 - 0.25) = 1.5; beta*logits = 1
    # rpo: s(1.5)*(ls(1.5) - ls(1)) + s(-1.5)*(ls(-1.5) - ls(-1))
    #    = 0.8175744762*(0.1118484 ) + 0.1824255238*(-0.3881516) = 0.0206356
    assert value(L.rpo, pair(), beta=0.5, gt_reward_scale=2.0) == pytest.approx(0.0206356, abs=1e-6)
    # rpo_sq: (1 - 1.5)^2 = 0.25
    assert value(L.rpo_sq, pair(), beta=0.5, gt_reward_scale=2.0) == pytest.approx(0.25)
    no_rewards = L.PairLogps(*[torch.zeros(1)] * 4)
    with pytest.raises(ConfigError, match="rewards"):
        L.rpo(no_rewards, beta=0.5)


def test_sequence_logp_with_per_codebook_weights():
    per_codebook = torch.tensor([[-3.0, -1.0], [-0.5, -2.0]])
    assert L.sequence_logp(per_codebook).tolist() == [-4.0, -2.5]
    # 2*-3 + 0.5*-1 = -6.5; 2*-0.5 + 0.5*-2 = -2.0
    assert L.sequence_logp(per_codebook, [2.0, 0.5]).tolist() == [-6.5, -2.0]
    with pytest.raises(ConfigError, match="3 values; the policy has 2 codebooks"):
        L.sequence_logp(per_codebook, [1.0, 1.0, 1.0])


def test_a_weighted_list_of_losses_plus_sft_combines():
    total, parts = L.combine(pair(), losses=[("dpo", 1.0), ("ipo", 0.5)], beta=0.5,
                             sft_weight=0.1)
    # 1*0.3132616875 + 0.5*1 + 0.1*10 (sft = -pi_c = 10)
    assert float(total) == pytest.approx(1.8132616875)
    assert {k: round(float(v), 6) for k, v in parts.items()} == {
        "loss/dpo": 0.313262, "loss/ipo": 1.0, "loss/sft": 10.0}


def test_combine_averages_over_the_batch():
    x = L.PairLogps(torch.tensor([0.0, 0.0]), torch.tensor([0.0, 0.0]),
                    torch.tensor([0.0, 0.0]), torch.tensor([-2.0, 2.0]))
    # logits = 0 - (0 - ref_r) = ref_r: ipo beta 0.5: (-2-1)^2 = 9, (2-1)^2 = 1 -> mean 5
    total, _ = L.combine(x, losses=[("ipo", 1.0)], beta=0.5)
    assert float(total) == pytest.approx(5.0)


def test_implicit_rewards():
    chosen, rejected = L.implicit_rewards(pair(), beta=0.5)
    assert float(chosen) == pytest.approx(0.5) and float(rejected) == pytest.approx(-0.5)


def test_an_unknown_loss_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"^unknown loss 'dpoo' \(known: dpo, ipo, rpo, rpo_sq\)$"):
        L.get_loss("dpoo")
