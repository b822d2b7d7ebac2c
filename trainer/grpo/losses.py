"""GRPO's losses: pure functions of tensors, as the DPO losses (trainer/dpo/losses.py).

``grpo`` (per-sequence token means) and ``dr_grpo`` (token sums over batch x max
decoder steps), NeMo's ``MagpieTTSModelOnlinePO.process_batch_online_po``: an on-policy
ratio times the group advantage, the k3 KL estimate to the reference times
``grpo_beta``, and ttspo's entropy bonus. Rewards and advantages are
:mod:`ttspo.trainer.grpo.rewards`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


# Pure functions of tensors. Shapes: logps, ref_logps, entropy, mask [B, C, T]
# (per codebook, per token of the sampled codes); advantages, seq_mask [B].
# seq_mask is False for samples of invalid groups (past the CER thresholds): as in
# NeMo's MagpieTTSModelOnlinePO.process_batch_online_po, it zeroes their advantage
# term only; their KL term (grpo_beta > 0) stays in the loss, so a masked group still
# pulls the policy towards the reference. (ttspo's entropy bonus, which NeMo has not,
# goes with the advantage term.)
@dataclass
class GrpoLossOut:
    loss: torch.Tensor  # scalar, what backward() is called on
    kl: torch.Tensor  # NeMo's kl_loss: per-sequence token mean of the KL estimate, averaged
    # over codebooks and every sequence (masked groups too; 0 if reference-free)
    entropy: torch.Tensor  # mean per-token entropy over the unmasked tokens of valid groups


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of each token's distribution: logits [..., V] -> [...]."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def _per_token(logps, advantages, seq_mask, ref_logps, *, entropy, kl_beta, entropy_coef):
    # exp(logp - logp.detach()) is 1 in value but carries d logp: the on-policy ratio.
    loss = -torch.exp(logps - logps.detach()) * advantages[:, None, None]
    if entropy is not None and entropy_coef:
        loss = loss - entropy_coef * entropy  # a bonus: higher entropy, lower loss
    loss = loss * seq_mask.float()[:, None, None]  # masked groups: no advantage term
    kl = torch.zeros_like(logps)
    if ref_logps is not None:
        # k3 estimator of KL(pi || ref): exp(ref - pi) - (ref - pi) - 1 >= 0.
        diff = ref_logps - logps
        kl = torch.exp(diff) - diff - 1.0
        loss = loss + kl_beta * kl  # every sequence, masked groups too (NeMo)
    return loss, kl


def _stats(kl, entropy, mask, seq_mask):
    per_seq_kl = (kl * mask).sum(-1) / mask.sum(-1).clamp(min=1)  # [B, C]
    valid = mask * seq_mask.float()[:, None, None]
    ent = (entropy * valid).sum() / valid.sum().clamp(min=1) if entropy is not None else torch.zeros(())
    return per_seq_kl.mean().detach(), ent.detach()


def grpo_loss(logps, advantages, mask, seq_mask, *, ref_logps=None, entropy=None,
              kl_beta=0.0, entropy_coef=0.0, max_steps=None) -> GrpoLossOut:
    """``grpo``: each sequence's token mean (per codebook), averaged over codebooks,
    then over the whole batch (NeMo's mean: a masked sequence counts with its KL term
    alone; dividing by the valid count would scale the step up whenever a group is
    masked)."""
    mask = mask.float()
    per_token, kl = _per_token(logps, advantages, seq_mask, ref_logps, entropy=entropy,
                               kl_beta=kl_beta, entropy_coef=entropy_coef)
    per_seq = (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)  # [B, C]
    return GrpoLossOut(per_seq.mean(), *_stats(kl, entropy, mask, seq_mask))


def dr_grpo_loss(logps, advantages, mask, seq_mask, *, ref_logps=None, entropy=None,
                 kl_beta=0.0, entropy_coef=0.0, max_steps=None) -> GrpoLossOut:
    """``dr_grpo``: token sums divided by a constant (batch * max decoder steps), so
    long and short samples weigh by their tokens, not per sequence; averaged over
    codebooks."""
    if not max_steps:
        raise ValueError("dr_grpo needs max_steps (the max decoder steps)")
    mask = mask.float()
    per_token, kl = _per_token(logps, advantages, seq_mask, ref_logps, entropy=entropy,
                               kl_beta=kl_beta, entropy_coef=entropy_coef)
    loss = (per_token * mask).sum(-1).mean(-1).sum() / (logps.shape[0] * max_steps)
    return GrpoLossOut(loss, *_stats(kl, entropy, mask, seq_mask))


GRPO_LOSSES = {"grpo": grpo_loss, "dr_grpo": dr_grpo_loss}
