"""``loss.length_normalize``: per-token mean sequence log-probs through the DPO step, and
run folders made before the key resume (its default reproduces what they computed)."""

from __future__ import annotations

import json

import pytest
import torch

from train_helpers import SET, pattern_store, tiny_overrides
from ttspo.builder.core.dist import Compute
from ttspo.builder.core.errors import TrainingError
from ttspo.trainer.dpo.data import load_pairs
from ttspo.trainer.dpo.loop import make_policy, pair_step
from ttspo.trainer.run.config import load_config
from ttspo.trainer.run.folder import RUN_FILE, identity_config, open_run_dir


def test_the_dpo_step_reads_per_token_means(tmp_path):
    store = pattern_store(tmp_path / "store", groups=4, frames=8, val_size=0)
    summed = load_config(None, tiny_overrides())
    mean = load_config(None, tiny_overrides(**{"loss.length_normalize": "true"}))
    policy = make_policy("tiny", None, summed, 0).eval()
    pairs = load_pairs(store, SET, encode=policy.codec.encode)
    with torch.no_grad():
        _, a = pair_step(policy, policy, None, None, pairs=pairs, idx=[0, 1], cfg=summed)
        _, b = pair_step(policy, policy, None, None, pairs=pairs, idx=[0, 1], cfg=mean)
    tokens = 8 * (8 + 1)  # 8 codebooks x (8 frames + EOS)
    # the same float32 sums divided by an exact count: a rounding or two (2^-24 relative)
    assert b["logps/chosen"].item() == pytest.approx(a["logps/chosen"].item() / tokens, rel=1e-6)
    assert b["logps/rejected"].item() == pytest.approx(a["logps/rejected"].item() / tokens, rel=1e-6)


def test_a_folder_made_before_the_key_resumes_with_its_default_only(tmp_path):
    cfg = load_config(None, [])
    identity = {"trainer": "dpo", "config": identity_config(cfg)}
    old = json.loads(json.dumps(identity))
    del old["config"]["loss"]["length_normalize"]  # what a run.json of before the key holds
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / RUN_FILE).write_text(json.dumps(old))
    assert open_run_dir(tmp_path / "run", identity, cfg, Compute()) is True  # resumes
    other = load_config(None, ["loss.length_normalize=true"])
    changed = {"trainer": "dpo", "config": identity_config(other)}
    with pytest.raises(TrainingError, match=r"config.loss.length_normalize false \(now true\)"):
        open_run_dir(tmp_path / "run", changed, other, Compute())
