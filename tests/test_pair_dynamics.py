"""pair_dynamics: a real tiny DPO run records every train pair once per epoch and every
val pair at each validation, with the margins the loss saw; a kill and resume leaves no
duplicate; torchrun's two ranks write what one process writes (trainer/dpo/dynamics.py).
The cartography macros (sql/macros.sql) read the rows."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from ttspo.builder.core import query
from ttspo.builder.core.errors import TrainingError
from ttspo.builder.core.schemas import DYN
from ttspo.trainer.dpo import losses as L
from ttspo.trainer.dpo.data import load_pairs
from ttspo.trainer.dpo.dynamics import RUN_NAME_FILE
from ttspo.trainer.dpo.forward import concatenated_forward
from ttspo.trainer.dpo.loop import read_metrics, train_dpo
from ttspo.trainer.policy.base import load_policy
from ttspo.trainer.run.config import load_config
from train_helpers import SET, pattern_store, tiny_overrides, torchrun_error

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
# 16 train pairs at 4 a step: an epoch is 4 steps, 8 steps are 2 epochs; validations at
# steps 0, 4 and 8; step checkpoints at 4 and 8 (the rows are committed before each).
RUN = {"train.max_steps": 8, "train.checkpoint_every": 4, "train.val_every": 4,
       "data.pairs_per_device": 4, "train.best_metric": "val/loss"}
TRAIN, VAL, EPOCHS, VALIDATIONS = 16, 8, 2, 3

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return pattern_store(tmp_path_factory.mktemp("store") / "store", groups=24, val_size=8)


@pytest.fixture(scope="module")
def whole(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("whole") / "run"
    train_dpo(store, SET, cfg=load_config(None, tiny_overrides(**RUN)), out=out,
              echo=lambda *_: None)
    return out


def rows(store, run: str) -> list[dict]:
    table = store.open("pair_dynamics").to_table(filter=f"{DYN.run} = '{run}'")
    return sorted(table.to_pylist(), key=lambda r: (r[DYN.split], r[DYN.step], r[DYN.pair_id]))


@pytest.mark.slow  # a real 8-step DPO run
def test_one_row_per_train_pair_per_epoch_and_per_val_pair_per_validation(store, whole):
    got = rows(store, whole.name)
    train = [r for r in got if r[DYN.split] == "train"]
    val = [r for r in got if r[DYN.split] == "val"]
    assert len(train) == TRAIN * EPOCHS and len(val) == VAL * VALIDATIONS
    # each train pair exactly once in each epoch; each val pair once at each validation
    assert set(Counter((r[DYN.pair_id], r[DYN.epoch]) for r in train).values()) == {1}
    assert len({r[DYN.pair_id] for r in train}) == TRAIN
    assert sorted({r[DYN.step] for r in val}) == [0, 4, 8]
    assert set(Counter((r[DYN.pair_id], r[DYN.step]) for r in val).values()) == {1}
    assert {r[DYN.epoch] for r in train if r[DYN.step] <= 4} == {0}
    assert {r[DYN.epoch] for r in train if r[DYN.step] > 4} == {1}
    assert {(r[DYN.set_name], r[DYN.set_version]) for r in got} == {(SET, 1)}
    # the first reads come from a policy equal to its reference: a tie by the tie rule
    assert {r[DYN.correct] for r in got if r[DYN.step] <= 1} == {0.5}
    assert {r[DYN.correct] for r in got} <= {0.0, 0.5, 1.0}
    # the sign of the margin decides correct wherever it is not a tie
    assert all(r[DYN.correct] == (1.0 if r[DYN.margin] > 0 else 0.0)
               for r in got if r[DYN.correct] != 0.5)
    assert any(r[DYN.correct] == 1.0 for r in got)  # the run learned something
    # one commit before each of the two step checkpoints, each naming its steps
    commits = [v["lineage"] for v in store.versions("pair_dynamics")
               if v["lineage"].get("run") == whole.name and "steps" in v["lineage"]]
    assert [c["steps"] for c in commits] == [[0, 4], [5, 8]]
    assert commits[0]["inputs"][SET] == 1


@pytest.mark.slow  # a real 8-step DPO run
def test_the_streaming_loader_writes_the_same_rows(store, whole, tmp_path):
    """data.loader=stream reads each micro-batch's codes by row id (workers 0: in this
    process); the pair ids come from the same order, so the rows are the in-memory run's,
    bit for bit (the same batches through the same arithmetic)."""
    out = tmp_path / "streamed"
    cfg = load_config(None, tiny_overrides(**RUN, **{"data.loader": "stream", "data.workers": 0}))
    train_dpo(store, SET, cfg=cfg, out=out, echo=lambda *_: None)
    strip = lambda rs: [{k: v for k, v in r.items() if k != DYN.run} for r in rs]
    assert strip(rows(store, run_of(out))) == strip(rows(store, whole.name))


def _mean_tolerance(values: list[float]) -> float:
    """A float32 mean of B values (B - 1 additions and a division, each rounding by at
    most 2^-24 of the running sum) against the float64 mean of the same float32s."""
    return (len(values) + 1) * 2.0 ** -24 * sum(abs(v) for v in values) / len(values) + 1e-12


@pytest.mark.slow  # a real 8-step DPO run
def test_margins_and_losses_are_what_the_loss_saw(store, whole):
    got = rows(store, whole.name)
    logged: dict[int, dict] = {}
    for m in read_metrics(whole):  # a step's train line and its val line
        logged.setdefault(m["step"], {}).update(m)
    for step in range(1, RUN["train.max_steps"] + 1):  # one micro-batch a step: its mean
        mine = [r for r in got if r[DYN.split] == "train" and r[DYN.step] == step]
        for column, metric in ((DYN.margin, "rewards/margins"), (DYN.loss, "loss/dpo")):
            values = [r[column] for r in mine]
            assert abs(sum(values) / len(values) - logged[step][metric]) <= \
                _mean_tolerance(values), (step, metric)
        assert sum(r[DYN.correct] for r in mine) / len(mine) == \
            pytest.approx(logged[step]["rewards/accuracies"], abs=1e-7)
    for step in (4, 8):
        mine = [r[DYN.margin] for r in got if r[DYN.split] == "val" and r[DYN.step] == step]
        assert abs(sum(mine) / len(mine) - logged[step]["val/margin"]) <= 1e-9 + \
            _mean_tolerance(mine)


@pytest.mark.slow  # a real DPO run and a second forward
def test_val_margins_recomputed_from_the_checkpoint(store, whole):
    """The val rows of step 4, recomputed here from step 4's weights and the seeded
    initial policy (the live reference), one pair at a time: other batch shapes,
    so equal within the tie rule's bound (trainer/dpo/losses.py: TIE_RTOL)."""
    cfg = load_config(None, tiny_overrides(**RUN))
    beta = cfg.loss.beta
    policy = load_policy("tiny", init=str(whole / "checkpoints" / "step_000004" / "policy.pt"),
                         config=cfg.policy.model).eval()
    torch.manual_seed(cfg.train.seed)
    reference = load_policy("tiny", config=cfg.policy.model).eval()
    val = load_pairs(store, SET, encode=policy.codec.encode).select("val")
    stored = {r[DYN.pair_id]: r for r in rows(store, whole.name)
              if r[DYN.split] == "val" and r[DYN.step] == 4}
    with torch.no_grad():
        for i, pair_id in enumerate(val.pair_ids):
            pi = concatenated_forward(policy, policy, val, [i])
            ref = concatenated_forward(reference, reference, val, [i])
            parts = [t.sum(-1).double().item() for t in (pi.chosen, pi.rejected,
                                                          ref.chosen, ref.rejected)]
            margin = beta * ((parts[0] - parts[2]) - (parts[1] - parts[3]))
            bound = beta * L.TIE_RTOL * sum(abs(p) for p in parts)
            assert abs(stored[pair_id][DYN.margin] - margin) <= bound, pair_id
            if abs(margin) > bound:
                assert stored[pair_id][DYN.correct] == (1.0 if margin > 0 else 0.0)


def _killed_at(store, out: Path, fault: str) -> None:
    args = [sys.executable, "-m", "ttspo.builder.cli", "--store", str(store.root), "train", "dpo",
            SET, "--out", str(out), *[w for o in tiny_overrides(**RUN) for w in ("-o", o)]]
    done = subprocess.run(args, env={**ENV, "TTSPO_FAULT": fault}, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, (fault, done.returncode, done.stderr[-2000:])


# Killed after the rows through step 8 were committed but before checkpoint 8 (a resume
# from 4 replays 5-8), while checkpoint 4 was written (a resume from 0 replays all), and
# right after checkpoint 4's row (its rows must be stored already: nothing replays them).
@pytest.mark.slow  # real processes killed
@pytest.mark.parametrize(("fault", "deletes"), [("after_dynamics@8", 1),
                                               ("after_meta@step_000004", 1),
                                               ("after_row@step_000004", 0)])
def test_a_resume_after_a_kill_leaves_no_duplicate(store, whole, tmp_path, fault, deletes):
    out = tmp_path / "run"
    _killed_at(store, out, fault)
    run = run_of(out)
    assert run != whole.name and rows(store, run), "no rows committed before the kill"
    train_dpo(store, SET, cfg=load_config(None, tiny_overrides(**RUN)), out=out,
              echo=lambda *_: None)
    strip = lambda rs: [{k: v for k, v in r.items() if k != DYN.run} for r in rs]
    # every row once, and exactly the uninterrupted run's (a resume replays exactly)
    assert strip(rows(store, run)) == strip(rows(store, whole.name))
    removals = [v["lineage"] for v in store.versions("pair_dynamics")
                if v["lineage"].get("run") == run and "removed" in v["lineage"]]
    assert len(removals) == deletes


def run_of(out: Path) -> str:
    """The run's name in pair_dynamics, as its folder keeps it."""
    return json.loads((out / RUN_NAME_FILE).read_text())["run"]


@pytest.mark.slow  # a real DPO step, twice
def test_a_new_folder_under_a_taken_name_writes_under_another(tmp_path):
    store = pattern_store(tmp_path / "store", groups=12, val_size=4)
    cfg = load_config(None, tiny_overrides(**{"train.max_steps": 1, "train.val_every": 1}))
    first, second = tmp_path / "a" / "run", tmp_path / "b" / "run"
    for out in (first, second):
        train_dpo(store, SET, cfg=cfg, out=out, echo=lambda *_: None)
    assert (run_of(first), run_of(second)) == ("run", "run~2")
    assert len(rows(store, "run")) == len(rows(store, "run~2")) == 4 + 4 * 2  # a step; val at 0, 1
    cfg = load_config(None, tiny_overrides(**{"train.max_steps": 2, "train.val_every": 1}))
    train_dpo(store, SET, cfg=cfg, out=second, echo=lambda *_: None)  # resumed: same name
    assert len(rows(store, "run~2")) == 2 * 4 + 3 * 4 and len(rows(store, "run")) == 12
    (second / RUN_NAME_FILE).write_text("{")
    with pytest.raises(TrainingError, match="pair_dynamics.json: not a readable run name"):
        train_dpo(store, SET, cfg=cfg, out=second, echo=lambda *_: None)


@pytest.mark.slow  # a real DPO step
def test_off_writes_nothing_and_on_at_a_resume_records_from_there(tmp_path):
    store = pattern_store(tmp_path / "store", groups=12, val_size=4)
    cfg = load_config(None, tiny_overrides(**{"train.max_steps": 1, "train.val_every": 1,
                                              "train.pair_dynamics": False}))
    train_dpo(store, SET, cfg=cfg, out=tmp_path / "run", echo=lambda *_: None)
    assert not store.exists("pair_dynamics")
    # switched on at a resume (it changes what is recorded, not computed): from there on
    cfg = load_config(None, tiny_overrides(**{"train.max_steps": 2, "train.val_every": 1}))
    train_dpo(store, SET, cfg=cfg, out=tmp_path / "run", echo=lambda *_: None)
    got = rows(store, "run")
    assert {r[DYN.step] for r in got} == {2} and len(got) == 4 + 4  # a step's 4, 4 val


def test_cartography_macros_read_the_rows(store, whole):
    table, read = query.run(store, f"SELECT * FROM pair_cartography('pair_dynamics', "
                                   f"'{whole.name}')")
    got = {r["pair_id"]: r for r in table.to_pylist()}
    assert read == {"pair_dynamics": store.version("pair_dynamics")}
    by_hand: dict[str, list[dict]] = {}
    for r in rows(store, whole.name):
        if r[DYN.split] == "train":
            by_hand.setdefault(r[DYN.pair_id], []).append(r)
    assert sorted(got) == sorted(by_hand) and len(got) == TRAIN
    for pair_id, reads in by_hand.items():
        margins = [r[DYN.margin] for r in reads]
        correct = [r[DYN.correct] for r in sorted(reads, key=lambda r: r[DYN.step])]
        mean = sum(margins) / len(margins)
        std = (sum((m - mean) ** 2 for m in margins) / len(margins)) ** 0.5
        g = got[pair_id]
        assert g["reads"] == EPOCHS
        assert g["confidence"] == pytest.approx(mean, rel=1e-12, abs=1e-15)
        assert g["variability"] == pytest.approx(std, rel=1e-9, abs=1e-12)
        assert g["share_correct"] == pytest.approx(sum(correct) / len(correct), abs=1e-15)
        assert g["never_learned"] == (max(correct) < 1)
        wrong_after_right = any(a == 1 and b == 0 for i, a in enumerate(correct)
                                for b in correct[i + 1:])
        assert g["forgotten"] == wrong_after_right
        assert g["forgets"] == sum(a == 1 and b == 0 for a, b in zip(correct, correct[1:]))
    never = query.run(store, f"SELECT pair_id FROM never_learned_pairs('pair_dynamics', "
                             f"'{whole.name}')")[0].column("pair_id").to_pylist()
    assert sorted(never) == sorted(p for p, g in got.items() if g["never_learned"])


@pytest.mark.slow  # torchrun processes
def test_two_processes_write_the_rows_one_process_writes(tmp_path):
    store = pattern_store(tmp_path / "store", groups=24, val_size=8)
    steps = {**RUN, "train.max_steps": 3, "train.val_every": 3, "train.checkpoint_every": 0}
    two = tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "ttspo.builder.cli", "--", "--store", str(store.root), "train", "dpo", SET,
           "--out", str(two), *[w for o in tiny_overrides(**{**steps, "data.pairs_per_device": 2})
                                for w in ("-o", o)]]
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, torchrun_error(done.stderr)
    commits = [v for v in store.versions("pair_dynamics") if v["lineage"].get("run") == "two"]
    assert len(commits) == 1  # both ranks' rows, one version
    train_dpo(store, SET, cfg=load_config(None, tiny_overrides(**steps)), out=tmp_path / "one",
              echo=lambda *_: None)
    a, b = rows(store, "two"), rows(store, "one")
    key = lambda r: (r[DYN.split], r[DYN.step], r[DYN.pair_id], r[DYN.epoch])
    assert [key(r) for r in a] == [key(r) for r in b]
    scale = max(abs(r[DYN.margin]) for r in b)
    for x, y in zip(a, b):
        if x[DYN.step] <= 1:  # the initial weights, equal to the reference: ties in both
            assert x[DYN.correct] == y[DYN.correct] == 0.5, key(x)
            continue
        # Later reads come from weights the two runs agree on to 6e-5 against the ~9e-3
        # training moved them (tests/test_train_dist.py): margins, first order in the
        # weights, then agree to 1% of the largest margin the run reached.
        tol = 0.01 * scale
        assert abs(x[DYN.margin] - y[DYN.margin]) <= tol, key(x)
        if abs(y[DYN.margin]) > tol:
            assert x[DYN.correct] == y[DYN.correct], key(x)


def test_rows_past_the_buffer_go_to_fragments_no_reader_sees_before_the_commit(tmp_path):
    """flush_rows 3: 8 rows make data files before the commit; readers see no row of them
    until it, then all 8 in ONE version. A writer that dies before its commit (dropped
    here) leaves the table as it was."""
    from ttspo.builder.core.store import Store, make_lineage
    from ttspo.trainer.dpo.dynamics import DynamicsWriter

    store = Store(tmp_path / "store")

    def writer(run: str) -> DynamicsWriter:
        return DynamicsWriter(store=store, run=run, set_name=SET, set_version=1,
                              lineage=make_lineage("test", {}), master=True, flush_rows=3)

    def add(w: DynamicsWriter, step: int, n: int) -> None:
        w.add(step=step, epoch=0, split="train", pair_ids=[f"p{step}.{i}" for i in range(n)],
              values={k: torch.full((n,), float(step)) for k in ("margin", "correct", "loss")})

    first = writer("a")
    for step in (1, 2, 3, 4):
        add(first, step, 2)
    assert first._fragments and not store.exists("pair_dynamics")  # files, no version
    version = first.commit(4)
    assert store.open("pair_dynamics").count_rows() == 8 and version == store.version(
        "pair_dynamics")
    assert store.lineage("pair_dynamics", version)["steps"] == [1, 4]
    dead = writer("b")
    for step in (5, 6, 7):
        add(dead, step, 2)
    assert dead._fragments  # written, never committed: the process "dies" here
    del dead
    assert store.version("pair_dynamics") == version
    assert store.open("pair_dynamics").count_rows() == 8


# What copies a tensor to the host: on a GPU, each one waits for the device (a sync).
HOST_COPIES = {"cpu", "numpy", "item", "tolist", "__array__", "__float__", "__int__", "__bool__"}


class NotedTensor(torch.Tensor):
    """A tensor that notes each host copy made of it or of what is computed from it."""

    copies: list[str] = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        to_cpu = name == "to" and any(str(a) == "cpu" for a in (*args[1:], *(kwargs or {}).values()))
        if name in HOST_COPIES or to_cpu:
            cls.copies.append(name)
        return super().__torch_function__(func, types, args, kwargs or {})


def test_values_stay_on_their_device_until_a_flush_copies_them_once(tmp_path):
    """No host copy (so, on a GPU, no device sync) per micro-batch recorded: each flush,
    at the buffer's limit or the commit, copies every buffered value at once."""
    from ttspo.builder.core.store import Store, make_lineage
    from ttspo.trainer.dpo.dynamics import DynamicsWriter

    store = Store(tmp_path / "store")
    w = DynamicsWriter(store=store, run="a", set_name=SET, set_version=1,
                       lineage=make_lineage("test", {}), master=True, flush_rows=8)

    def add(step: int) -> None:  # 4 pairs; margin 10*step+i, correct +1, loss +2
        values = {k: (torch.arange(4.0) + 10 * step + j).as_subclass(NotedTensor)
                  for j, k in enumerate(("margin", "correct", "loss"))}
        w.add(step=step, epoch=0, split="train", pair_ids=[f"p{step}.{i}" for i in range(4)],
              values=values)

    NotedTensor.copies = []
    add(1)
    assert NotedTensor.copies == []  # buffered as a tensor
    add(2)  # 8 rows: the buffer's limit, written as a fragment
    assert Counter(NotedTensor.copies)["cpu"] == 1 and set(NotedTensor.copies) <= {"cpu", "numpy"}
    flushed = list(NotedTensor.copies)
    add(3)
    assert NotedTensor.copies == flushed
    w.commit(3)
    assert Counter(NotedTensor.copies)["cpu"] == 2
    rows = store.open("pair_dynamics").to_table().to_pylist()
    got = sorted((r[DYN.pair_id], r[DYN.step], r[DYN.margin], r[DYN.correct], r[DYN.loss]) for r in rows)
    assert got == [(f"p{s}.{i}", s, 10.0 * s + i, 10.0 * s + i + 1, 10.0 * s + i + 2)
                   for s in (1, 2, 3) for i in range(4)]
