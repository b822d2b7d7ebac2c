"""Each best checkpoint keeps its own folder: an earlier row never points at later weights."""

from __future__ import annotations

import hashlib

import pytest
import torch

from ttspo.trainer.run import checkpoints as ckpt
from ttspo.trainer.policy.base import load_policy

pytestmark = pytest.mark.slow  # trains to two best checkpoints (~4 s)

SMALL = {"d_model": 32, "n_heads": 2, "d_ffn": 64, "encoder_layers": 1, "decoder_layers": 1}


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_new_best_leaves_the_earlier_best_file_as_its_row_says(tmp_path):
    policy = load_policy("tiny", config=SMALL)
    optimizer = torch.optim.AdamW(policy.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    saved = []
    for step in (5, 10):
        with torch.no_grad():  # other weights at each best
            next(policy.parameters()).add_(1.0)
        s = ckpt.save_checkpoint(tmp_path, step, policy=policy, optimizer=optimizer,
                                 scheduler=scheduler, rng_states=[{}], data_state={},
                                 meta={}, kind="best")
        saved.append(ckpt.checkpoint_row(s, run="r", trainer="dpo"))
    first, second = saved
    assert first["sha256"] != second["sha256"]
    for row in saved:  # each row's file still holds the weights its sha256 names
        assert _sha(type(tmp_path)(row["path"])) == row["sha256"]
    best = tmp_path / ckpt.CHECKPOINTS / "best"
    assert best.is_symlink() and ckpt.read_meta(best)["step"] == 10
