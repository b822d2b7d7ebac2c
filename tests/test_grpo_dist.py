"""GRPO as real processes: 2-process torchrun, and SIGKILL mid-run then resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ttspo.builder.core.schemas import CKPT, GEN, ROLL, RWD
from ttspo.builder.core.store import Store
from ttspo.trainer.grpo.rollouts import committed_steps

sys.path.insert(0, str(Path(__file__).parent))
from grpo_helpers import TINY, make_prompts  # noqa: E402

pytestmark = pytest.mark.slow  # torchrun processes and a SIGKILL-resume matrix

BIN = Path(sys.executable).parent
# A length reward: no scoring models, so the runs stay short.
LENGTH = [f"policy.model.{k}={v}" for k, v in TINY.items()] + [
    "grpo.rewards=length=1", "grpo.length_target=3", "grpo.max_decoder_steps=12",
    "grpo.min_valid_codes_len=1", "grpo.store_audio=false", "grpo.n_generations_per_item=4",
    "grpo.topk=0", "grpo.temperature=1.0", "optim.lr=1e-2", "train.progress=false",
    "train.tensorboard=false", "train.val_every=0"]
KEYS = (ROLL.rollout_id, GEN.codes, GEN.codes_len, RWD.reward, RWD.advantage)


def command(store: Store, out: Path, *overrides: str, nproc: int = 1) -> list[str]:
    # torchrun reads no option after `--`: the rest is the command's.
    head = ([str(BIN / "torchrun"), "--nproc-per-node", str(nproc), "--master-port",
             str(29500 + os.getpid() % 1000), "-m", "ttspo.builder.cli", "--"] if nproc > 1
            else [sys.executable, "-m", "ttspo.builder.cli"])
    args = [*head, "--store", str(store.root), "train", "grpo", "--out", str(out)]
    for o in (*LENGTH, *overrides):
        args += ["-o", o]
    return args


def rollouts(store: Store) -> dict[str, dict]:
    rows = store.open("rollouts").to_table(columns=list(KEYS)).to_pylist()
    ids = [r[ROLL.rollout_id] for r in rows]
    assert len(ids) == len(set(ids)), "a rollout row is stored twice"
    return {r[ROLL.rollout_id]: r for r in rows}


def run(args: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def test_two_torchrun_processes_sample_what_one_process_samples(tmp_path):
    """2 ranks x 1 prompt per step = 1 process x 2 prompts: the same groups, the same
    per-sample seeds and the same update (DDP averages what one process averages over
    its two prompts), so every step's rollouts are identical. (The weights agree to
    rounding, not bit for bit: the checkpoints' sha256s differ.) Both ranks' rows
    carry rank 0's checkpoint sha256."""
    stores = []
    for nproc, per_rank in ((1, 2), (2, 1)):
        store = Store(tmp_path / f"st{nproc}")
        make_prompts(store, 4)
        run(command(store, tmp_path / f"p{nproc}" / "run", f"grpo.prompts_per_step={per_rank}",
                    "train.max_steps=3", "train.checkpoint_every=1",
                    "grpo.n_generations_per_item=8", nproc=nproc))
        stores.append(store)
    one, two = (rollouts(s) for s in stores)
    assert sorted(one) == sorted(two) and len(one) == 3 * 2 * 8  # steps x prompts x samples
    for rid in one:
        assert one[rid] == two[rid], rid
    # the updates before steps 1 and 2 have signal (8 samples a group: some finish), so
    # their rows test the update too (a rank's gradient left out fails at step 1)
    learning = {rid.split(":")[1] for rid, r in one.items() if r[RWD.advantage] != 0}
    assert {"0", "1"} <= learning
    tags = {}
    for r in stores[1].open("rollouts").to_table(columns=[ROLL.step, ROLL.checkpoint]).to_pylist():
        tags.setdefault(r[ROLL.step], set()).add(r[ROLL.checkpoint])
    ckpts = stores[1].open("checkpoints").to_table(columns=[CKPT.step, CKPT.sha256]).to_pylist()
    shas = {c[CKPT.step]: c[CKPT.sha256] for c in ckpts}
    assert tags[1] == {shas[1]} and tags[2] == {shas[2]}
    assert tags[0] == {stores[1].lineage("rollouts", 1)["start_sha256"]}  # the start weights, on both ranks


def test_sigkill_then_resume_loses_and_doubles_no_rollout_row(tmp_path):
    overrides = ("grpo.prompts_per_step=1", "train.max_steps=6", "train.checkpoint_every=2")
    straight = Store(tmp_path / "a" / "st")
    make_prompts(straight, 3)
    run(command(straight, tmp_path / "a" / "run", *overrides))

    store = Store(tmp_path / "b" / "st")
    make_prompts(store, 3)
    out = tmp_path / "b" / "run"
    proc = subprocess.Popen(command(store, out, *overrides), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:  # kill once step 2 is checkpointed and step 2's rollouts (past it) are committed
        deadline = time.time() + 300
        while not (out / "checkpoints" / "step_000002" / "meta.json").exists() or \
                (2, "train") not in committed_steps(store, "run"):
            assert proc.poll() is None and time.time() < deadline, "the run ended before the kill"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (out / "checkpoints" / "step_000006").exists()
    # Steps 2-3's rollouts are flushed just before step 4's checkpoint: a kill in
    # between (the usual case) makes the resume from step 2 find them stored; a
    # kill that lands after step 4's checkpoint resumes past them.
    from_step_2 = not (out / "checkpoints" / "step_000004").exists()
    killed = rollouts(store)
    resumed = run(command(store, out, *overrides))
    assert ("already stored" in resumed.stdout) == from_step_2, resumed.stdout
    after, expected = rollouts(store), rollouts(straight)
    assert sorted(after) == sorted(expected)
    for rid, row in expected.items():
        assert after[rid] == row, rid  # the resumed run sampled and trained exactly the same
    assert all(killed[rid] == after[rid] for rid in killed)
