"""One DPO pair batch's forward: the one place chosen and rejected are joined and split.

The B chosen rows and the B rejected rows go into ONE batch (:func:`collate_pairs`:
chosen first, rows k and k + B sharing a dropout group), the model runs once over
the 2B rows, and the per-codebook sequence log-probs are split back with
``chunk(2)`` (:func:`pair_pass`). The loop's training step, validation and the
reference (live or precomputed into ``ref_logps``) all call
:func:`concatenated_forward`, so the three cannot disagree on how a pair is put
together. This module imports with torch alone (no pyarrow, Lance or numpy), so
``bench/gpu.py`` runs the same step on a machine that has nothing else.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple, Sequence

import torch

from ttspo.trainer.policy.base import DROPOUT_GROUP, sequence_logps

if TYPE_CHECKING:  # the data layer (pyarrow, Lance) only for the annotations
    from ttspo.trainer.dpo.codes_reader import PairCodes
    from ttspo.trainer.dpo.data import Pairs


class PairPass(NamedTuple):
    """One forward over chosen + rejected: what the DPO step reads from it."""

    chosen: torch.Tensor  # [B, C] per-codebook sequence log-probs
    rejected: torch.Tensor
    chosen_tokens: torch.Tensor  # [B, C] target tokens per codebook (loss.length_normalize)
    rejected_tokens: torch.Tensor
    alignment: torch.Tensor | None  # the chosen rows' mean alignment loss (NeMo's DPO adds it)


def concatenated_forward(model: Any, policy: Any, pairs: Pairs, index: Sequence[int], *,
                         codes: PairCodes | None = None) -> PairPass:
    """Per-codebook sequence log-probs [B, C] of the chosen and the rejected of the
    pairs INDEX, in ONE forward, with their token counts and the model's alignment loss
    (None when the policy has none). MODEL runs it (the policy, or its DDP wrapper);
    POLICY collates. CODES: the pairs' codes when a worker read them ahead (streaming)."""
    device = next(policy.parameters()).device
    return pair_pass(model, collate_pairs(policy, pairs, index, codes).to(device))


def pair_pass(model: Any, batch: Any) -> PairPass:
    """The forward of a batch :func:`collate_pairs` made (on the model's device), split
    back into chosen and rejected."""
    tf = model(batch)
    chosen, rejected = sequence_logps(tf).chunk(2)  # [2B, C] -> chosen, rejected
    tokens = tf.mask.sum(-1).to(chosen.dtype).chunk(2)
    align = tf.alignment_loss
    return PairPass(chosen, rejected, *tokens,
                    None if align is None else align[: chosen.shape[0]].mean())


def collate_pairs(policy: Any, pairs: Pairs, index: Sequence[int],
                  codes: PairCodes | None = None) -> Any:
    """ONE batch: the chosen rows of INDEX, then their rejected rows (codes: see
    :meth:`~ttspo.trainer.dpo.data.Pairs.rows`)."""
    return collate_pair_rows(policy, *pairs.rows(index, codes))


def collate_pair_rows(policy: Any, chosen: Sequence[dict[str, Any]],
                      rejected: Sequence[dict[str, Any]]) -> Any:
    """ONE batch of CHOSEN's rows then REJECTED's (row k of each is one pair). Rows k
    and k + B share a dropout group, so conditioning dropout drops both or neither (a
    pair never compares a conditioned chosen with an unconditioned rejected)."""
    rows = [{**r, DROPOUT_GROUP: k} for k, r in enumerate(chosen)] + \
        [{**r, DROPOUT_GROUP: k} for k, r in enumerate(rejected)]
    return policy.collate(rows, with_targets=True)
