"""Preference losses against numbers worked by hand (nemo-formats.md §4)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ttspo.builder.core.errors import ConfigError
from ttspo.trainer.dpo import losses as L


def pair(pi_c=-10.0, pi_r=-12.0, ref_c=-11.0, ref_r=-11.0, rew_c=1.0, rew_r=0.25):
    t = lambda v: torch.tensor([v], dtype=torch.float64)
    # logits = (pi_c - pi_r) - (ref_c - ref_r) = 2 - 0 = 2
    return L.PairLogps(pi_chosen=t(pi_c), pi_rejected=t(pi_r), ref_chosen=t(ref_c),
                       ref_rejected=t(ref_r), reward_chosen=t(rew_c), reward_rejected=t(rew_r))


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
    no_rewards = L.PairLogps(**dict.fromkeys(
        ("pi_chosen", "pi_rejected", "ref_chosen", "ref_rejected"), torch.zeros(1)))
    with pytest.raises(ConfigError, match="rewards"):
        L.rpo(no_rewards, beta=0.5)


def test_sequence_logp_with_per_codebook_weights():
    per_codebook = torch.tensor([[-3.0, -1.0], [-0.5, -2.0]])
    assert L.sequence_logp(per_codebook).tolist() == [-4.0, -2.5]
    # 2*-3 + 0.5*-1 = -6.5; 2*-0.5 + 0.5*-2 = -2.0
    assert L.sequence_logp(per_codebook, [2.0, 0.5]).tolist() == [-6.5, -2.0]
    with pytest.raises(ConfigError, match="3 values; the policy has 2 codebooks"):
        L.sequence_logp(per_codebook, [1.0, 1.0, 1.0])


def test_length_normalize_makes_each_sequence_logp_a_per_token_mean():
    per_codebook = torch.tensor([[-3.0, -1.0], [-0.5, -2.0]])
    tokens = torch.tensor([[4.0, 4.0], [1.0, 1.0]])  # row 0: 4 frames x 2 codebooks
    assert L.sequence_logp(per_codebook, tokens=tokens).tolist() == [-0.5, -1.25]  # -4/8, -2.5/2
    # weights weigh the sum; the count stays the tokens': (2*-3 + 0.5*-1) / 8
    assert L.sequence_logp(per_codebook, [2.0, 0.5], tokens).tolist() == [-6.5 / 8, -1.0]
    # IPO on means: a length-independent margin. Two pairs with equal per-token log-probs,
    # one 10 times longer: summed, its margin (and the loss's target gap) is 10 times the
    # other's; averaged, they are equal.
    short, long_ = torch.tensor([[-1.0, -1.0]]), torch.tensor([[-10.0, -10.0]])
    n_short, n_long = torch.tensor([[2.0, 2.0]]), torch.tensor([[20.0, 20.0]])
    assert L.sequence_logp(short, tokens=n_short) == L.sequence_logp(long_, tokens=n_long)


def test_a_weighted_list_of_losses_plus_sft_combines():
    total, parts = L.combine(pair(), losses=[("dpo", 1.0), ("ipo", 0.5)], beta=0.5,
                             sft_weight=0.1)
    # 1*0.3132616875 + 0.5*1 + 0.1*10 (sft = -pi_c = 10)
    assert float(total) == pytest.approx(1.8132616875)
    assert {k: round(float(v), 6) for k, v in parts.items()} == {
        "loss/dpo": 0.313262, "loss/ipo": 1.0, "loss/sft": 10.0}


def test_combine_averages_over_the_batch():
    x = L.PairLogps(pi_chosen=torch.tensor([0.0, 0.0]), pi_rejected=torch.tensor([0.0, 0.0]),
                    ref_chosen=torch.tensor([0.0, 0.0]), ref_rejected=torch.tensor([-2.0, 2.0]))
    # logits = 0 - (0 - ref_r) = ref_r: ipo beta 0.5: (-2-1)^2 = 9, (2-1)^2 = 1 -> mean 5
    total, _ = L.combine(x, losses=[("ipo", 1.0)], beta=0.5)
    assert float(total) == pytest.approx(5.0)


def test_implicit_rewards():
    chosen, rejected = L.implicit_rewards(pair(), beta=0.5)
    assert float(chosen) == pytest.approx(0.5) and float(rejected) == pytest.approx(-0.5)


def test_an_unknown_loss_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"^unknown loss 'dpoo' \(known: dpo, ipo, rpo, rpo_sq\)$"):
        L.get_loss("dpoo")


# ------------------------------------------------------ reward accuracy's tie rule
def noisy_sums(seed: int, pairs: int = 64, terms: int = 2400) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequence log-probs of PAIRS sequences twice, as two computations give them:
    real float32 token log-probs (log_softmax over 256 codes; 300 frames x 8
    codebooks) summed by torch, and the same tokens one ulp apart (another kernel's
    rounding) summed one by one (another reduction order)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(pairs, terms, 256, generator=g)
    targets = torch.randint(0, 256, (pairs, terms, 1), generator=g)
    tokens = torch.log_softmax(logits, -1).gather(-1, targets).squeeze(-1)  # [P, T] <= 0
    once = tokens.sum(-1)
    ulp = torch.where(torch.rand(tokens.shape, generator=g) < 0.5, -torch.inf, torch.inf)
    other = torch.nextafter(tokens, ulp).numpy()
    again = torch.from_numpy(np.add.accumulate(other, axis=1, dtype=np.float32)[:, -1])
    return once, again


def test_a_policy_equal_to_its_reference_reads_0_5_through_rounding_noise():
    pi_c, ref_c = noisy_sums(0)
    pi_r, ref_r = noisy_sums(1)
    x = L.PairLogps(pi_chosen=pi_c, pi_rejected=pi_r, ref_chosen=ref_c, ref_rejected=ref_r)
    assert (pi_c != ref_c).float().mean() > 0.9  # the noise is there: `==` would not hold
    assert (x.logits() != 0).float().mean() > 0.9
    assert L.accuracy(x).tolist() == [0.5] * 64
    # Reference-free (the reference's log-probs are zeros): the policy compared with itself.
    free = L.PairLogps(pi_chosen=pi_c, pi_rejected=ref_c, ref_chosen=torch.zeros(64),
                       ref_rejected=torch.zeros(64))
    assert L.accuracy(free).tolist() == [0.5] * 64


def test_a_margin_beyond_the_tie_tolerance_counts():
    pi_c, ref_c = noisy_sums(2, pairs=8)
    pi_r, ref_r = noisy_sums(3, pairs=8)
    scale = pi_c.abs() + pi_r.abs() + ref_c.abs() + ref_r.abs()
    # Twice the tolerance (0.44 nats on these sums near -14500, log 256 ~ 5.5 per token).
    step = 2 * L.TIE_RTOL * scale
    up = L.PairLogps(pi_chosen=pi_c + step, pi_rejected=pi_r, ref_chosen=ref_c, ref_rejected=ref_r)
    down = L.PairLogps(pi_chosen=pi_c, pi_rejected=pi_r + step, ref_chosen=ref_c,
                       ref_rejected=ref_r)
    assert L.accuracy(up).tolist() == [1.0] * 8 and L.accuracy(down).tolist() == [0.0] * 8
    # Hand-made: 1 nat on sums of -10: a preference, whichever side.
    assert L.accuracy(pair()).tolist() == [1.0]
    assert L.accuracy(pair(pi_c=-12.0, pi_r=-10.0)).tolist() == [0.0]
