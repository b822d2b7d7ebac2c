"""GRPO against NeMo's own code: advantages, group masks and both loss types.

NeMo's ``MagpieTTSModelOnlinePO`` downloads parakeet and titanet in its constructor,
so it cannot be built offline. The test runs its methods unchanged
(``generate_and_reward``, ``process_batch_online_po``) on a tiny MagpieTTS built from
config whose class is set to ``WithoutHub`` (in the fixture): a subclass that overrides
only what reaches outside (the Lightning logger's folder, and ``infer_batch``, which
returns a stored rollout instead of sampling), with the attributes NeMo's constructor
sets assigned by hand, and stand-ins for the two hub models that return stored
transcripts and speaker embeddings (NeMo's own CER and cosine similarity run on them).
ttspo then computes rewards and advantages from the metrics NeMo measured, and its loss
from its own teacher-forced pass over the same codes, with the same weights.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest
import soundfile as sf
import torch

import nemo_models  # noqa: E402
from ttspo.builder.core.schemas import GEN, RWD  # noqa: E402
from ttspo.trainer.grpo.losses import GRPO_LOSSES  # noqa: E402
from ttspo.trainer.grpo.rewards import RewardConfig, compute_rewards  # noqa: E402
from ttspo.trainer.policy.base import CONTEXT_CODES, token_logps  # noqa: E402
from ttspo.trainer.policy.nemo.policy import NemoMagpiePolicy  # noqa: E402

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.slow]  # NeMo


@pytest.fixture(scope="module", autouse=True)
def nemo_installed():
    """Skips the module unless the `nemo` extra is installed; NeMo is imported at
    set-up, not at collection (the fast tier collects this module without it)."""
    pytest.importorskip("nemo.collections.tts.models")


N = 4  # samples per group
TEXTS = ["hello world", "good morning", "thank you"]
# Group 0 is ordinary; group 1 holds two invalid samples (2 and 3 frames: NeMo's
# codes_len <= 3); group 2 is masked (its best CER is past best_cer_threshold).
TRANSCRIPTS = ["hello world", "hello wurld", "hxllo wurld", "", "good morning",
               "good mornin", "god mornin", "good morning", "x", "xyz", "", "tnx"]
LENGTHS = [6, 9, 7, 8, 5, 2, 3, 10, 7, 6, 9, 8]
BEST_CER_THRESHOLD = 0.6
BETA = 0.5  # large enough that the KL term is a visible share of the loss


@pytest.fixture(scope="module")
def nemo_grpo(tmp_path_factory):
    from nemo.collections.tts.models.magpietts_preference_optimization import MagpieTTSModelOnlinePO

    class WithoutHub(MagpieTTSModelOnlinePO):
        """NeMo's GRPO class minus what its constructor downloads; every other method NeMo's."""

        @property
        def logger(self):  # generate_and_reward writes rollout audio under logger.log_dir
            return SimpleNamespace(log_dir=str(self.log_dir))

        def infer_batch(self, batch, use_cfg=False, use_local_transformer_for_inference=False):
            return self.rollout  # a stored rollout in place of sampling

    d = tmp_path_factory.mktemp("nemo-grpo")
    codec = nemo_models.save_codec(d / "codec.nemo")
    model = nemo_models.build_magpie(codec, seed=0, prior_scaling_factor=None)
    reference = nemo_models.build_magpie(codec, seed=1, prior_scaling_factor=None)
    model.__class__ = WithoutHub
    # What MagpieTTSModelOnlinePO.__init__ sets, minus the hub models.
    model.reference_free = False
    model._reference_model = reference.eval().requires_grad_(False)
    model.max_decoder_steps = 430
    model.best_cer_threshold, model.worst_cer_threshold = BEST_CER_THRESHOLD, 1.0
    model.log_dir = d / "log"
    return {"model": model, "reference": reference, "dir": d}


class StandInASR:
    """parakeet's place: the stored transcripts, in NeMo's order (one per rollout sample)."""

    def transcribe(self, paths, batch_size):
        assert len(paths) == len(TRANSCRIPTS)
        return [SimpleNamespace(text=t) for t in TRANSCRIPTS]


class StandInSV:
    """titanet's place: stored embeddings, the rollout's first, then the contexts'."""

    def __init__(self, rng):
        b = len(TRANSCRIPTS)
        self.calls = [torch.from_numpy(rng.normal(size=(b, 16))).float(),
                      torch.from_numpy(np.repeat(rng.normal(size=(1, 16)), b, 0)).float()]

    def forward(self, input_signal, input_signal_length):
        return None, self.calls.pop(0)


def rollout(rng, num_codebooks):
    lens = torch.tensor(LENGTHS)
    codes = torch.from_numpy(rng.integers(0, nemo_models.CODEBOOK_SIZE,
                                          (len(LENGTHS), num_codebooks, max(LENGTHS))))
    for i, n in enumerate(LENGTHS):
        codes[i, :, n:] = 0  # as a sampler pads
    audio = torch.from_numpy(rng.uniform(-0.1, 0.1, (len(LENGTHS), max(LENGTHS) * 1024))).float()
    return SimpleNamespace(predicted_codes=codes, predicted_codes_lens=lens,
                           predicted_audio=audio, predicted_audio_lens=lens * 1024)


def prompt_rows(rng, d):
    rows, wavs = [], []
    for g, text in enumerate(TEXTS):
        wav = d / f"context{g}.wav"
        sf.write(wav, rng.uniform(-0.3, 0.3, nemo_models.CODEC_SR).astype("float32"),
                 nemo_models.CODEC_SR)
        wavs.append(str(wav))
        rows.append({GEN.text: text, GEN.context_text: None,
                     CONTEXT_CODES: rng.integers(0, nemo_models.CODEBOOK_SIZE, (8, 30))})
    return rows, wavs


def run_nemo(model, policy, rows, wavs, *, loss_type, seed):
    """NeMo's process_batch_online_po on the stored rollout: (its outputs, the policy's grads)."""
    rng = np.random.default_rng(seed)
    model.rollout = rollout(rng, model.num_audio_codebooks)
    model.eval_asr_model, model.eval_speaker_verification_model = StandInASR(), StandInSV(rng)
    model.loss_type = loss_type
    model.scale_rewards = loss_type == "grpo"
    from omegaconf import open_dict

    with open_dict(model.cfg):
        model.cfg.grpo_beta = BETA
    batch = dict(policy.collate(rows, with_targets=False))
    batch.update(raw_texts=TEXTS, audio_filepaths=wavs)
    policy.zero_grad(set_to_none=True)
    out = model.process_batch_online_po(batch, N)
    out["loss"].backward()
    return out, grads(policy)


def grads(policy):
    return {k: p.grad.clone() for k, p in policy.named_parameters() if p.grad is not None}


def ttspo_step(model, reference, rows, metrics, *, loss_type):
    """ttspo's rewards from NeMo's measured metrics, then its loss over the same codes."""
    df = pl.DataFrame({
        GEN.group_id: [i // N for i in range(len(metrics))],
        GEN.codes_len: [m["codes_len"] for m in metrics],
        GEN.invalid: [False] * len(metrics),
        GEN.cer: [m["cer_gt"] for m in metrics], GEN.ssim: [m["spk_similarity"] for m in metrics]})
    # NeMo hard-codes invalid as codes_len >= 425 or <= 3
    cfg = RewardConfig(weights={"cer": 0.5, "ssim": 0.5}, min_valid_len=4, max_valid_len=424,
                       best_cer_threshold=BEST_CER_THRESHOLD, scale_rewards=loss_type == "grpo")
    rewards = compute_rewards(df, cfg)
    codes = model.rollout.predicted_codes
    train_rows = [{**rows[i // N], GEN.codes: codes[i, :, :n].numpy()}
                  for i, n in enumerate(LENGTHS)]
    policy, ref = NemoMagpiePolicy(model), NemoMagpiePolicy(reference)
    policy.zero_grad(set_to_none=True)
    batch = policy.collate(train_rows)
    tf = policy.train().forward_teacher(batch)
    with torch.no_grad():
        ref_logps = token_logps(ref.forward_teacher(batch))
    adv = torch.tensor(rewards[RWD.advantage].to_list(), dtype=torch.float32)
    keep = torch.tensor(rewards[RWD.group_valid].to_list())
    out = GRPO_LOSSES[loss_type](token_logps(tf), adv, tf.mask, keep, ref_logps=ref_logps,
                                 kl_beta=BETA, max_steps=model.max_decoder_steps)
    out.loss.backward()
    return rewards, out, grads(policy)


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo"])
def test_rewards_advantages_masks_and_loss_equal_nemos(nemo_grpo, loss_type):
    model, reference = nemo_grpo["model"], nemo_grpo["reference"]
    policy = NemoMagpiePolicy(model)
    rows, wavs = prompt_rows(np.random.default_rng(5), nemo_grpo["dir"])
    theirs, their_grads = run_nemo(model, policy, rows, wavs, loss_type=loss_type, seed=7)
    metrics = theirs["batch_metrics"]
    rewards, ours, our_grads = ttspo_step(model, reference, rows, metrics, loss_type=loss_type)
    # Rewards and advantages: the same float64 formulas in another order: a few 2^-52
    # roundings of values below 1/(std + 1e-4) ~ 1e4 -> 1e-9 is far above them.
    assert rewards[RWD.reward].to_list() == pytest.approx([m["reward"] for m in metrics], abs=1e-9)
    assert rewards[RWD.advantage].to_list() == pytest.approx([m["advantage"] for m in metrics],
                                                             abs=1e-9)
    assert rewards[RWD.valid].to_list() == [n > 3 for n in LENGTHS]  # the invalid samples
    assert rewards[RWD.group_valid].to_list() == [True] * 8 + [False] * 4  # group 2 masked
    assert theirs["kl_loss"].item() > 1e-3  # the KL term is real (reference != policy)
    # Loss and KL: float32 token log-probs (|logp| < 10, rounding ~2^-24 * 10 = 6e-7 each)
    # through exp and means over at most 8 x 12 x 11 tokens: well under 1e-5 absolute.
    # (NeMo's advantages are float64, so its loss is; ttspo's float32.)
    close = dict(rtol=0, atol=1e-5, check_dtype=False)
    torch.testing.assert_close(ours.loss.detach(), theirs["loss"].detach(), **close)
    torch.testing.assert_close(ours.kl, theirs["kl_loss"].detach(), **close)
    # Gradients: grpo's loss VALUE is blind to the advantage mask (a group's advantages
    # sum to 0), its gradient is not. The same float32 sums in another order: 1e-4
    # relative to the largest gradient entry (some 2^-24 roundings per term, summed
    # over ~1e3 terms).
    assert our_grads.keys() == their_grads.keys()
    scale = max(g.abs().max().item() for g in their_grads.values())
    for name, g in their_grads.items():
        torch.testing.assert_close(our_grads[name], g, rtol=0, atol=1e-4 * scale, msg=name)
