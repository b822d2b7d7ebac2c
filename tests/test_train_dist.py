"""DDP under torchrun on CPU (gloo): 2 processes equal 1 with the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from ttspo.trainer.run import checkpoints as ckpt
from ttspo.trainer.run.config import load_config
from ttspo.trainer.dpo.loop import read_metrics, train_dpo
from ttspo.trainer.policy.base import load_policy
from train_helpers import SET, pattern_store, tiny_overrides, torchrun_error

pytestmark = pytest.mark.slow  # torchrun processes

STEPS = {"train.max_steps": 3, "train.val_every": 3, "train.checkpoint_every": 0}


def test_two_processes_hold_equal_weights_equal_to_one_process(tmp_path):
    store = pattern_store(tmp_path / "store")
    two = tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "ttspo.builder.cli", "--", "--store", str(store.root), "train", "dpo", SET,
           "--out", str(two),
           *[w for o in tiny_overrides(**STEPS, **{"data.pairs_per_device": 4})
             for w in ("-o", o)]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, torchrun_error(run.stderr)
    assert "2 process(es)" in run.stdout
    torch.set_num_threads(1)
    cfg = load_config(None, tiny_overrides(**STEPS, **{"data.pairs_per_device": 8}))
    train_dpo(store, SET, cfg=cfg, out=tmp_path / "one", echo=lambda *_: None)
    meta = ckpt.read_meta(two / "checkpoints" / "step_000003")
    digests = meta["rank_weights_sha256"]
    assert len(digests) == 2 and digests[0] == digests[1]  # the ranks hold identical weights
    a = load_policy("tiny", init=str(two / "checkpoints" / "step_000003" / "policy.pt"))
    b = load_policy("tiny", init=str(tmp_path / "one" / "checkpoints" / "step_000003" / "policy.pt"))
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        # Adam divides by sqrt(v): a near-zero gradient (a token neither side uses) that
        # differs in its last bits between a 2-rank and a 1-rank mean can move a weight by
        # ~1e-5 (lr 3e-3). Wrong sharding moves many weights by ~lr.
        assert torch.allclose(p, q, rtol=0, atol=6e-5), name
    torch.manual_seed(cfg.train.seed)  # the same seeded init both runs started from
    init = load_policy("tiny", config=cfg.policy.model)
    moved = any(not torch.equal(p, q) for p, q in zip(a.state_dict().values(),
                                                        init.state_dict().values()))
    assert moved  # training changed them: equal weights are not just the untouched init
    losses = lambda out: [m["loss/total"] for m in read_metrics(out) if "loss/total" in m]
    assert losses(two) == pytest.approx(losses(tmp_path / "one"), rel=1e-5)
    val = lambda out: [m["val/loss"] for m in read_metrics(out) if "val/loss" in m]
    assert len(val(two)) == 2 and val(two) == pytest.approx(val(tmp_path / "one"), rel=1e-5)
