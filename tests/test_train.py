"""Offline DPO end to end on real Lance tables and a real TinyCodecLM: learning, the
reference cache, checkpoints as rows, resume after SIGKILL, bad input."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from click.testing import CliRunner

from ttspo.builder.cli.main import cli
from ttspo.builder.core.errors import TrainingError
from ttspo.trainer.run import checkpoints as ckpt
from ttspo.trainer.run.config import load_config
from ttspo.trainer.dpo.data import load_pairs
from ttspo.trainer.dpo import losses as L
from ttspo.builder.core.dist import Compute
from ttspo.trainer.dpo.loop import autocast, read_metrics, train_dpo
from ttspo.trainer.policy.base import load_policy
from ttspo.builder.core.files import file_sha256
from ttspo.trainer.dpo.forward import concatenated_forward
from ttspo.trainer.dpo.ref import lookup, precompute, reference_logps
from train_helpers import SET, TINY, log_2_tolerance, pattern_store, tiny_overrides

# 2 cores, shared: one thread per process, as many as the in-process runs (conftest's
# one_torch_thread; TTSPO_TEST_THREADS): a resumed run must equal them bit for bit.
ENV = {**os.environ, "OMP_NUM_THREADS": os.environ.get("TTSPO_TEST_THREADS", "1")}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return pattern_store(tmp_path_factory.mktemp("store") / "store")


def quiet(*_):
    pass


def test_held_out_preference_accuracy_rises_from_half_to_above_0_9(store, tmp_path):
    cfg = load_config(None, tiny_overrides(**{"train.max_steps": 10, "train.val_every": 5,
                                              "optim.lr": 1e-3, "data.pairs_per_device": 8}))
    result = train_dpo(store, SET, cfg=cfg, out=tmp_path / "run", echo=quiet)
    val = [m for m in read_metrics(tmp_path / "run") if "val/accuracy" in m]
    assert [m["step"] for m in val] == [0, 5, 10]
    assert val[0]["val/accuracy"] == 0.5 and val[0]["val/margin"] == 0.0  # policy == reference
    assert val[-1]["val/accuracy"] > 0.9
    assert result.first["loss/dpo"] == pytest.approx(0.6931472, abs=1e-6)  # log 2 at step 1
    # Checkpoints are rows: which data made this model, and the best by val accuracy.
    rows = store.open("checkpoints").to_table().to_pylist()
    mine = [r for r in rows if r["path"].startswith(str(tmp_path))]
    assert {(r["kind"], r["step"]) for r in mine} >= {("step", 10), ("best", 5)}
    final = next(r for r in mine if r["kind"] == "step" and r["step"] == 10)
    assert (final["set_name"], final["set_version"], final["generations_version"]) == (SET, 1, 1)
    assert final["sha256"] == file_sha256(final["path"]) and final["val_accuracy"] > 0.9
    assert json.loads(final["config"])["optim"]["lr"] == 1e-3


def test_cached_and_live_reference_give_the_same_losses(store, tmp_path):
    init = tmp_path / "init.pt"
    torch.manual_seed(7)  # an init (so a cache key) of its own: the store is shared
    load_policy("tiny", config=TINY).save(str(init))
    cfg = load_config(None, tiny_overrides(**{"train.max_steps": 3, "train.val_every": 3}))
    live = train_dpo(store, SET, cfg=cfg, out=tmp_path / "live", init=str(init), echo=quiet)
    policy = load_policy("tiny", init=str(init))
    pairs = load_pairs(store, SET)
    wrote = precompute(store, pairs, policy, init, lineage={"command": "test"})
    key = (file_sha256(init), policy.identity().config_sha256)
    assert wrote["version"] is not None and lookup(store, pairs, *key) is not None
    again = precompute(store, pairs, policy, init, lineage={"command": "test"})
    assert again["version"] is None  # the key is there: nothing written
    cached = train_dpo(store, SET, cfg=cfg, out=tmp_path / "cached", init=str(init), echo=quiet)
    assert (live.reference, cached.reference) == ("live", "cached")
    losses = lambda run: [(m["step"], k, m[k]) for m in read_metrics(tmp_path / run)
                          for k in ("loss/total", "val/loss", "rewards/margins") if k in m]
    assert len(losses("live")) == 3 * 2 + 2  # 3 steps, val at steps 0 and 3
    # Log-probs are sums of ~-400 in float32; the cache was computed in batches of
    # another shape, so differences of 1e-5 in a margin are rounding.
    for a, b in zip(losses("live"), losses("cached"), strict=True):
        assert a[:2] == b[:2] and a[2] == pytest.approx(b[2], rel=1e-5, abs=1e-4)
    # Another checkpoint is another key: with the cache required, the run stops.
    other = tmp_path / "other.pt"
    load_policy("tiny", config={**TINY, "d_ffn": 32}).save(str(other))
    strict = load_config(None, tiny_overrides(**{"train.require_ref_cache": True,
                                                 "policy.model.d_ffn": 32}))
    with pytest.raises(TrainingError, match="no ref_logps for prefs@1, reference sha256"):
        train_dpo(store, SET, cfg=strict, out=tmp_path / "strict", init=str(other), echo=quiet)


RESUME = {"train.max_steps": 8, "train.checkpoint_every": 3, "train.val_every": 0,
          "data.pairs_per_device": 4}


@pytest.mark.slow  # a real process, SIGKILLed
def test_sigkill_then_resume_equals_an_uninterrupted_run(store, tmp_path):
    # The killed run is a real process (torch import and all); the others run here,
    # with the same thread count (ENV), so the numbers must agree bit for bit.
    cmd = [sys.executable, "-m", "ttspo.builder.cli", "--store", str(store.root), "train", "dpo", SET,
           "--out", str(tmp_path / "killed"), *[w for o in tiny_overrides(**RESUME)
                                                for w in ("-o", o)]]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cfg = load_config(None, tiny_overrides(**RESUME))
    train_dpo(store, SET, cfg=cfg, out=tmp_path / "whole", echo=quiet)
    metrics = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 5:
            break  # step 3's checkpoint is written, step 6's is not yet
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = len(metrics.read_text().splitlines())
    assert 5 <= killed_at < 8, "the run was not killed mid-way"
    assert ckpt.latest_checkpoint(tmp_path / "killed").name in ("step_000003", "step_000006")
    said = []
    train_dpo(store, SET, cfg=cfg, out=tmp_path / "killed", echo=said.append)
    assert "resuming at step" in said[0]
    strip = lambda run: [{k: v for k, v in m.items() if k != "pairs_per_second"}
                         for m in read_metrics(tmp_path / run)]
    assert len(strip("whole")) == 8
    assert strip("killed") == strip("whole")  # every loss, reward, lr and grad norm, exactly
    final = lambda run: ckpt.read_meta(tmp_path / run / "checkpoints" / "step_000008")["sha256"]
    assert final("killed") == final("whole")


def invoke(store, *args):
    return CliRunner().invoke(cli, ["--store", str(store.root), "train", *args])


def test_cli_train_and_precompute(store, tmp_path):
    init = tmp_path / "init.pt"
    torch.manual_seed(8)  # an init (so a cache key) of its own: the store is shared
    load_policy("tiny", config=TINY).save(str(init))
    sha = file_sha256(init)
    key = f"{sha[:12]} (policy config {load_policy('tiny', init=str(init)).identity().config_sha256[:12]})"
    first = invoke(store, "precompute-ref", f"{SET}@1", "--ref", str(init))
    assert first.exit_code == 0, first.output
    assert first.output.startswith(f"{SET}@1: 64 pairs under reference {key}: wrote ref_logps@")
    again = invoke(store, "precompute-ref", SET, "--ref", str(init))
    assert again.output == (f"{SET}@1: 64 pairs under reference {key}: already in "
                            "ref_logps; nothing written\n")
    args = ["dpo", SET, "--init", str(init), "--out", str(tmp_path / "run"),
            *[w for o in tiny_overrides(**{"train.max_steps": 2, "train.val_every": 2})
              for w in ("-o", o)]]
    result = invoke(store, *args)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == (f"train dpo: {SET}@1 (generations@1), 48 train / 16 val pairs, "
                        "1 process(es), reference cached, from step 0")
    # policy == reference: log 2 and accuracy 0.5 (a tie), though the cache was computed
    # in other batch shapes; the printed loss rounds to 4 digits (.4g), 5e-5 more.
    first = re.match(r"first step 1: loss/total (\S+), rewards/accuracies 0\.5, ", lines[1])
    step1 = next(m for m in read_metrics(tmp_path / "run") if "loss/total" in m)
    assert first and step1["rewards/accuracies"] == 0.5
    assert abs(float(first.group(1)) - math.log(2)) <= 5e-5 + log_2_tolerance(
        0.5, step1["logps/chosen"], step1["logps/rejected"])  # beta 0.5: tiny_overrides
    assert lines[-1].startswith(f"checkpoint step step 2: {tmp_path}/run/checkpoints/step_000002/")
    lineage = store.versions("checkpoints")[-1]["lineage"]
    assert lineage["command"] == "train dpo" and lineage["inputs"] == {
        SET: 1, "generations": 1, "ref_logps": store.version("ref_logps")}
    # The same command again: the run is complete, it resumes at its end and writes nothing.
    rows = store.open("checkpoints").count_rows()
    again = invoke(store, *args)
    assert again.exit_code == 0 and "resuming at step 2" in again.output
    assert store.open("checkpoints").count_rows() == rows


@pytest.fixture(scope="module")
def bad_store(tmp_path_factory):
    store = pattern_store(tmp_path_factory.mktemp("bad") / "store", groups=8, val_size=2,
                          no_codes=(5,))
    store.tag(SET, 1, "v1")
    return store


def test_bad_input_is_one_line_and_exit_1(store, bad_store, tmp_path):
    small = tmp_path / "small.pt"
    load_policy("tiny", config={**TINY, "d_model": 16}).save(str(small))
    not_ckpt = tmp_path / "notes.pt"
    not_ckpt.write_text("hello")
    used = tmp_path / "used"
    quick = [w for o in tiny_overrides(**{"train.max_steps": 1, "train.val_every": 0})
             for w in ("-o", o)]
    assert invoke(store, "dpo", SET, "--out", str(used), *quick).exit_code == 0
    cases = [
        (store, ["dpo", "nosuch", "--out", str(tmp_path / "a")],
         f"Error: no table 'nosuch' in store {store.root}"),
        (store, ["dpo", f"{SET}@7", "--out", str(tmp_path / "a")],
         f"Error: table '{SET}' has no version or tag '7'"),
        (bad_store, ["dpo", f"{SET}@v2", "--out", str(tmp_path / "a")],
         f"Error: table '{SET}' has no version or tag 'v2' (tags: v1)"),
        (bad_store, ["dpo", f"{SET}@v1", "--out", str(tmp_path / "a")],
         f"Error: {SET}@1: generation r:5 has no codes in generations@1 (ingest it with its "
         "*_codes.pt file, or generate it with ttspo)"),
        (store, ["dpo", SET, "--out", str(tmp_path / "a"), "-o", "optim.lrate=1"],
         "Error: -o: unknown config key 'optim.lrate'; did you mean 'optim.lr'?"),
        (store, ["dpo", SET, "--init", str(small), "--out", str(tmp_path / "a"), *quick],
         f"Error: {small}: a tiny policy of another size: d_model=16 (expected 32)"),
        (store, ["dpo", SET, "--init", str(not_ckpt), "--out", str(tmp_path / "a"), *quick],
         None),
        (store, ["dpo", SET, "--out", str(used), *quick, "-o", "loss.beta=0.1"],
         None),
    ]
    for target, args, message in cases:
        result = invoke(target, *args)
        assert result.exit_code == 1, (args, result.output)
        assert len(result.output.splitlines()) == 1 and "Traceback" not in result.output
        if message is not None:
            assert result.output == message + "\n"
    assert invoke(store, "dpo", SET, "--init", str(not_ckpt), "--out", str(tmp_path / "a"),
                  *quick).output.startswith(f"Error: {not_ckpt}: not a ttspo policy checkpoint")
    assert invoke(store, "dpo", SET, "--out", str(used), *quick, "-o", "loss.beta=0.1").output \
        == f"Error: {used} holds another run (config.loss.beta 0.5 (now 0.1)); choose another --out\n"
    assert not (tmp_path / "a").exists()  # nothing half-written


def test_a_nan_loss_stops_the_run_and_names_the_last_good_checkpoint(tmp_path):
    store = pattern_store(tmp_path / "store", groups=16, val_size=2)
    cfg = load_config(None, tiny_overrides(**{"train.max_steps": 6, "train.val_every": 0,
                                              "train.checkpoint_every": 1, "optim.lr": 1e30}))
    out = tmp_path / "run"
    with pytest.raises(TrainingError) as err:
        train_dpo(store, SET, cfg=cfg, out=out, echo=quiet)
    # lr 1e30: step 1 is finite, its update blows the weights up, step 2's loss is nan
    assert str(err.value) == (f"step 2: the loss is nan; the run stopped. Last good checkpoint: "
                              f"{out}/checkpoints/step_000001")
    assert [r["step"] for r in store.open("checkpoints").to_table().to_pylist()] == [1]
    assert ckpt.latest_checkpoint(out).name == "step_000001"


def test_under_bf16_the_live_reference_is_fp32_as_the_cache(store, tmp_path):
    """Under a bf16 run's autocast, the live reference's log-probs are the fp32 ones the
    cache holds: they agree to float32 rounding, where a bf16 forward would not."""
    init = tmp_path / "init.pt"
    torch.manual_seed(11)
    load_policy("tiny", config=TINY).save(str(init))
    policy = load_policy("tiny", init=str(init)).eval()
    pairs = load_pairs(store, SET)
    precompute(store, pairs, policy, init, lineage={"command": "test"})  # batches of 16
    cache = lookup(store, pairs, file_sha256(init), policy.identity().config_sha256)
    cfg = load_config(None, tiny_overrides(**{"train.precision": "bf16"}))
    idx = range(0, 2)  # a live forward's batch: data.pairs_per_device (2), another shape
    with autocast(cfg, Compute()):
        live = reference_logps(policy, pairs, idx)
        with torch.no_grad():
            bf16 = concatenated_forward(policy, policy, pairs, idx)[:2]  # the policy's own forward
    cached = cache.lookup(pairs.pair_ids, idx)
    # Per-codebook sums of float32 token log-probs (all <= 0) reduced in other blocks:
    # a few roundings of 2^-24 of the magnitude per term; the tie rule's 2^-18 (64
    # roundings) bounds them. bf16 logits keep 8 bits (2^-9 rounding): its sums of ~-50
    # land ~1e-3 (2e-5 relative) away, beyond that bound, so the check tells them apart.
    for got, want, low in zip(live, cached, bf16, strict=True):
        assert got.dtype == torch.float32
        assert ((got - want).abs() <= L.TIE_RTOL * want.abs()).all()
        assert ((low.float() - want).abs() > 2 * L.TIE_RTOL * want.abs()).any()
