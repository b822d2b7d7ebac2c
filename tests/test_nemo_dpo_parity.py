"""ttspo's DPO step against NeMo's ``MagpieTTSModelOfflinePO`` on the same pairs.

One pareto set, exported for NeMo: NeMo's ``MagpieTTSDatasetDPO`` batches the export
and ``process_batch_dpo`` gives its loss; ttspo's ``pair_step`` reads the same set
from the store and runs the SAME model object (NeMo's policy, wrapped by ttspo's
adapter) against NeMo's own reference model (its weights the policy's plus noise, so
the preference terms are not at their value for equal models). For dpo, ipo, rpo and
rpo_sq, with the model's alignment loss (``alignment_loss_scale`` 0.1) and without.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import nemo_models  # noqa: E402
from test_nemo import manifest_pairs, nemo_dpo_batch, world  # noqa: E402,F401 (fixtures)
from test_nemo import codec, models  # noqa: E402,F401
from ttspo.builder.core.schemas import GEN  # noqa: E402
from ttspo.trainer.dpo.data import load_pairs  # noqa: E402
from ttspo.trainer.dpo.loop import pair_step  # noqa: E402
from ttspo.trainer.policy.nemo.policy import NemoMagpiePolicy  # noqa: E402
from ttspo.trainer.run.config import load_config  # noqa: E402

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.slow]  # NeMo


@pytest.fixture(scope="module", autouse=True)
def nemo_installed():
    """Skips the module unless the `nemo` extra is installed; NeMo is imported at
    set-up, not at collection (the fast tier collects this module without it)."""
    pytest.importorskip("nemo.collections.tts.models")


ALIGNMENT_SCALE = 0.1


@pytest.fixture(scope="module", params=[0.0, ALIGNMENT_SCALE], ids=["no-alignment", "alignment"])
def nemo_po(request, models, tmp_path_factory):
    """MagpieTTSModelOfflinePO; its reference the policy's weights plus noise."""
    from nemo.collections.tts.models.magpietts_preference_optimization import MagpieTTSModelOfflinePO

    scale = request.param
    base = nemo_models.build_magpie(models["codec"], alignment_loss_scale=scale)
    g = torch.Generator().manual_seed(3)
    noisy = {k: v + 0.05 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
             for k, v in base.state_dict().items()}
    ref = tmp_path_factory.mktemp("nemo-ref") / "reference.ckpt"
    torch.save({"state_dict": noisy}, ref)
    po = nemo_models.build_magpie(models["codec"], cls=MagpieTTSModelOfflinePO,
                                  alignment_loss_scale=scale, reference_model_ckpt_path=str(ref))
    po.load_state_dict(base.state_dict(), strict=False)
    return po.eval(), scale


@pytest.mark.parametrize("loss_type", ["dpo", "ipo", "rpo", "rpo_sq"])
def test_dpo_step_equals_nemos(world, nemo_po, loss_type):
    from omegaconf import open_dict

    po, scale = nemo_po
    beta = 0.05
    with open_dict(po.cfg):
        po.cfg.dpo_beta, po.cfg.dpo_loss_type = beta, loss_type
    batch, _ = nemo_dpo_batch(po, world["dir"] / "export" / "dpo_train_manifest.json")
    policy, reference = NemoMagpiePolicy(po), NemoMagpiePolicy(po._reference_model)
    pairs = load_pairs(world["store"], "prefs", encode=policy.codec.encode)
    # ttspo's pairs in the manifest's order: match each by its chosen codes
    by_codes = {np.asarray(r[GEN.codes]).tobytes(): i for i, r in enumerate(pairs.chosen)}
    idx = [by_codes[np.asarray(world["rows"][c][GEN.codes]).tobytes()]
           for c, _ in manifest_pairs(world)]
    cfg = load_config(None, [f"loss.terms={loss_type}=1", f"loss.beta={beta}"])
    with torch.no_grad():
        theirs = po.process_batch_dpo(batch)
        ours, parts = pair_step(policy, policy, reference, None, pairs=pairs, idx=idx, cfg=cfg)
    if scale:
        assert theirs["alignment_loss"] is not None and theirs["alignment_loss"] > 0.01
        # The alignment loss: float32 CTC over a few hundred cells, row by row here and
        # over the batch in NeMo: a few 2^-24 roundings of values near 1 -> 1e-5.
        torch.testing.assert_close(parts["loss/alignment"], theirs["alignment_loss"],
                                   rtol=1e-5, atol=1e-6)
    else:
        assert theirs["alignment_loss"] is None and "loss/alignment" not in parts
    torch.testing.assert_close(parts[f"loss/{loss_type}"], theirs["pref_loss"], rtol=1e-4, atol=1e-5)
    # Sequence log-probs are float32 sums near 1e3 (rounding 2^-24 * 1e3 * log2(T) ~ 1e-4
    # each, 1.2e-4 measured); the preference logits difference four of them, so its error
    # is ~5e-4 nats: times beta 0.05 for dpo/rpo/rpo_sq (2.5e-5), and for ipo a square of
    # logits near 1/(2 beta) = 10 has an error of 2 * 10 * 5e-4 = 1e-2 of a value near
    # 100: rtol 1e-4 holds both.
    torch.testing.assert_close(ours, theirs["loss"], rtol=1e-4, atol=1e-5)
