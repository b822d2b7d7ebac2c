"""Offline preference losses: small pure functions over log-prob tensors.

Formulas as NeMo's MagpieTTS offline PO (shared/reference/nemo-formats.md §4). A
loss never sees a model: it takes :class:`PairLogps`, the sequence log-probs of
chosen and rejected under the policy and the reference (zeros when
reference-free), plus the pairs' rewards (for rpo), and returns one value per pair.

    logits = (pi_c - pi_r) - (ref_c - ref_r)
    dpo     -logsigmoid(beta*logits)*(1-ls) - logsigmoid(-beta*logits)*ls
    ipo     (logits - 1/(2*beta))**2
    rpo     exp(a)*(a-b) + exp(a')*(a'-b'), a=logsigmoid(d), b=logsigmoid(beta*logits),
            primes with the signs flipped, d = gt_reward_scale*(reward_c - reward_r)
    rpo_sq  (beta*logits - d)**2
    sft     -pi_c (the chosen's negative log-likelihood)

:func:`combine` takes a weighted list of preference losses plus the SFT weight:
``total = sum_i w_i * mean(loss_i) + sft_weight * mean(-pi_c)``. Sequence log-probs
come from the policy per codebook, ``[B, C]``; :func:`sequence_logp` sums them with
optional per-codebook weights (early codebooks carry most of the content).
:func:`accuracy` is the reward-accuracy metric, with its tie rule (TIE_RTOL).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from ttspo.builder.core.errors import ConfigError


@dataclass(kw_only=True)
class PairLogps:
    """Per-pair inputs of the losses, each [B]."""

    pi_chosen: torch.Tensor
    pi_rejected: torch.Tensor
    ref_chosen: torch.Tensor
    ref_rejected: torch.Tensor
    reward_chosen: torch.Tensor | None = None
    reward_rejected: torch.Tensor | None = None

    def logits(self) -> torch.Tensor:
        return (self.pi_chosen - self.pi_rejected) - (self.ref_chosen - self.ref_rejected)


def sequence_logp(per_codebook: torch.Tensor,
                  weights: Sequence[float] | torch.Tensor | None = None,
                  tokens: torch.Tensor | None = None) -> torch.Tensor:
    """[B, C] per-codebook log-prob sums -> [B], optionally weighted per codebook.

    TOKENS ([B, C], each codebook's target tokens; ``loss.length_normalize``) makes it a
    per-token mean: the (weighted) sum over the row's tokens of every codebook divided
    by their count, so a sequence's log-prob no longer grows with its length (TRL's
    IPO averages over tokens; NeMo sums)."""
    if weights is None:
        total = per_codebook.sum(dim=-1)
    else:
        w = torch.as_tensor(weights, dtype=per_codebook.dtype, device=per_codebook.device)
        if w.shape != per_codebook.shape[-1:]:
            raise ConfigError(f"loss.codebook_weights has {w.numel()} values; the policy has "
                              f"{per_codebook.shape[-1]} codebooks")
        total = (per_codebook * w).sum(dim=-1)
    if tokens is None:
        return total
    return total / tokens.to(total.dtype).sum(dim=-1).clamp(min=1)


def dpo(x: PairLogps, *, beta: float, label_smoothing: float = 0.0, **_) -> torch.Tensor:
    z = beta * x.logits()
    return -F.logsigmoid(z) * (1 - label_smoothing) - F.logsigmoid(-z) * label_smoothing


def ipo(x: PairLogps, *, beta: float, **_) -> torch.Tensor:
    return (x.logits() - 1 / (2 * beta)) ** 2


def _reward_gap(x: PairLogps, gt_reward_scale: float) -> torch.Tensor:
    if x.reward_chosen is None or x.reward_rejected is None:
        raise ConfigError("rpo and rpo_sq need the pairs' rewards")
    return gt_reward_scale * (x.reward_chosen - x.reward_rejected)


def rpo(x: PairLogps, *, beta: float, gt_reward_scale: float = 1.0, **_) -> torch.Tensor:
    d = _reward_gap(x, gt_reward_scale)
    a, a_neg = F.logsigmoid(d), F.logsigmoid(-d)
    z = beta * x.logits()
    b, b_neg = F.logsigmoid(z), F.logsigmoid(-z)
    return torch.exp(a) * (a - b) + torch.exp(a_neg) * (a_neg - b_neg)


def rpo_sq(x: PairLogps, *, beta: float, gt_reward_scale: float = 1.0, **_) -> torch.Tensor:
    return (beta * x.logits() - _reward_gap(x, gt_reward_scale)) ** 2


def sft(x: PairLogps, **_) -> torch.Tensor:
    return -x.pi_chosen


LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "dpo": dpo, "ipo": ipo, "rpo": rpo, "rpo_sq": rpo_sq,
}


def get_loss(name: str) -> Callable[..., torch.Tensor]:
    try:
        return LOSSES[name]
    except KeyError:
        raise ConfigError(f"unknown loss '{name}' (known: {', '.join(sorted(LOSSES))})") from None


# Reward accuracy's tie rule. A sequence log-prob is a float32 sum of per-token
# log-probs, all <= 0, so its magnitude is the sum of its terms' magnitudes. Computed
# in another batch shape (the reference cache in batches of 16, a live forward in
# batches of 2) or on another CPU (other SIMD kernels, other thread counts), the
# matmuls and sums reduce in another order: a reduction in blocks (as torch's CPU and
# GPU kernels do) rounds each term ~log2(n) times at float32's 2^-24. TIE_RTOL allows
# 2^6 such roundings of the four magnitudes compared (more than log2(n) for any
# sequence), so a policy equal to its reference reads 0.5 however its reference was
# computed. Seen: the demo's cached-vs-live gap, 0.1 of one rounding (a margin of
# 6e-6 at beta 0.1 on sums near -2700); sums added one by one, the worst order, stay
# within 10 (tests/test_losses.py). A real margin lies beyond it: for four sequence
# log-probs near -2700, 2^-18 of their 10800 is 0.04 nats. Not covered: a bf16
# policy forward (2^-9 rounding) against its fp32 reference; its first steps may
# read other than 0.5.
TIE_RTOL = 2.0 ** -18


def accuracy(x: PairLogps) -> torch.Tensor:
    """Per pair: 1 where chosen's implicit reward is higher, 0 where lower, 0.5 on a tie,
    a margin within TIE_RTOL of the magnitudes compared (a policy equal to its reference
    prefers neither, so it starts at 0.5 whichever way float32 rounding fell). Beta > 0
    scales the margin, not its sign: the rule needs none."""
    parts = [t.detach() for t in (x.pi_chosen, x.pi_rejected, x.ref_chosen, x.ref_rejected)]
    delta = (parts[0] - parts[2]) - (parts[1] - parts[3])  # the margin over beta
    tolerance = TIE_RTOL * sum(t.abs() for t in parts)
    return torch.where(delta.abs() <= tolerance, 0.5, (delta > 0).to(delta.dtype))


def implicit_rewards(x: PairLogps, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """beta * (pi - ref) for chosen and rejected, detached (they are metrics)."""
    return ((beta * (x.pi_chosen - x.ref_chosen)).detach(),
            (beta * (x.pi_rejected - x.ref_rejected)).detach())


def combine(x: PairLogps, *, losses: Sequence[tuple[str, float]], beta: float,
            label_smoothing: float = 0.0, gt_reward_scale: float = 1.0,
            sft_weight: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The total loss (a scalar) and its parts (``loss/NAME``: unweighted batch means)."""
    parts: dict[str, torch.Tensor] = {}
    total = x.pi_chosen.new_zeros(())
    for name, weight in losses:
        value = get_loss(name)(x, beta=beta, label_smoothing=label_smoothing,
                               gt_reward_scale=gt_reward_scale).mean()
        parts[f"loss/{name}"] = value.detach()
        total = total + weight * value
    if sft_weight:
        value = sft(x).mean()
        parts["loss/sft"] = value.detach()
        total = total + sft_weight * value
    return total, parts
