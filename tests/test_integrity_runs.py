"""One writer per run folder, and the `checkpoints` table equal to the run folders after
any kill: a tiny DPO killed (TTSPO_FAULT, trainer/run/faults.py) at each moment of a save,
then resumed, ends exactly as an uninterrupted run; a second writer is refused by one
line naming the holder. Real processes, real SIGKILLs, real Lance tables."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from ttspo.builder.cli.main import cli
from ttspo.builder.core.schemas import CKPT
from ttspo.trainer.run import checkpoints as ckpt
from ttspo.trainer.run.config import load_config
from ttspo.trainer.dpo.loop import train_dpo
from ttspo.trainer.run.folder import read_lineage, read_metrics
from train_helpers import SET, pattern_store, tiny_overrides

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # 2 cores, shared: one thread per process
# The tiniest run that saves every kind of checkpoint twice: val (so best) and step
# checkpoints at steps 2 and 4; val/loss falls, so step 4 is a best again.
RUN = {"train.max_steps": 4, "train.checkpoint_every": 2, "train.val_every": 2,
       "train.best_metric": "val/loss", "data.pairs_per_device": 4}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return pattern_store(tmp_path_factory.mktemp("store") / "store", groups=24, val_size=8)


@pytest.fixture(scope="module")
def whole(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("whole") / "run"
    train_dpo(store, SET, cfg=load_config(None, tiny_overrides(**RUN)), out=out, echo=quiet)
    assert (out / "checkpoints" / "best_000004").is_dir(), "the config no longer saves best at 4"
    return out


def quiet(*_):
    pass


def command(store, out: Path, **extra) -> list[str]:
    args = [sys.executable, "-m", "ttspo.builder.cli", "--store", str(store.root), "train", "dpo",
            SET, "--out", str(out)]
    for o in tiny_overrides(**{**RUN, **extra}):
        args += ["-o", o]
    return args


def killed_at(store, out: Path, fault: str) -> None:
    """Run the DPO command in a process that SIGKILLs itself at FAULT."""
    done = subprocess.run(command(store, out), env={**ENV, "TTSPO_FAULT": fault},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, (fault, done.returncode, done.stderr[-2000:])


def rows_of(store, out: Path) -> list[tuple[str, int, str]]:
    table = store.open("checkpoints").to_table(columns=[CKPT.path, CKPT.kind, CKPT.step,
                                                        CKPT.sha256]).to_pylist()
    prefix = str(out / "checkpoints") + os.sep
    return sorted((r[CKPT.path], r[CKPT.kind], r[CKPT.step], r[CKPT.sha256])
                  for r in table if r[CKPT.path].startswith(prefix))


def folders(out: Path) -> list[str]:
    return sorted(str((p / "policy.pt").absolute()) for p in (out / "checkpoints").iterdir()
                  if not p.is_symlink() and (p / "meta.json").is_file())


def assert_rows_equal_folders(store, out: Path) -> None:
    paths = [r[0] for r in rows_of(store, out)]
    assert paths == folders(out), "not exactly one row per checkpoint folder"
    for path, _, _, sha in rows_of(store, out):
        assert json.loads((Path(path).parent / "meta.json").read_text())["sha256"] == sha


def assert_equals_whole(store, out: Path, whole: Path) -> None:
    strip = lambda run: [{k: v for k, v in m.items() if k != "pairs_per_second"}
                         for m in read_metrics(run)]
    assert strip(out) == strip(whole)  # every step once, every loss exactly
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len(strip(whole)) and all(json.loads(line) for line in lines)
    same = lambda run: [(k, s, sha) for _, k, s, sha in rows_of(store, run)]
    assert same(out) == same(whole)
    assert_rows_equal_folders(store, out)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == \
        sorted(p.name for p in (whole / "checkpoints").iterdir())  # no *.tmp, no *.link
    assert os.readlink(out / "checkpoints" / "best") == os.readlink(whole / "checkpoints" / "best")
    assert not (out / "writer.lock").exists()


def resume(store, out: Path) -> list[str]:
    said: list[str] = []
    train_dpo(store, SET, cfg=load_config(None, tiny_overrides(**RUN)), out=out, echo=said.append)
    return said


# Each moment of a save, at the second best and at the second step checkpoint (a
# resume from step 2 then redoes steps 3-4 over what the kill left), and cut lines.
MOMENTS = [f"{m}@best_000004" for m in ("before_tmp", "after_policy", "after_state",
                                         "after_meta", "after_rename", "after_link", "after_row")]
MOMENTS += [f"{m}@step_000004" for m in ("before_tmp", "after_meta", "after_rename", "after_row")]
MOMENTS += ["mid_metrics_line@3", "mid_metrics_line@4", "mid_lineage_line@0"]


@pytest.mark.slow  # real processes killed at each moment
@pytest.mark.parametrize("fault", MOMENTS)
def test_a_kill_at_any_moment_of_a_save_then_resume_equals_an_uninterrupted_run(
        store, whole, tmp_path, fault):
    out = tmp_path / "run"
    killed_at(store, out, fault)
    said = resume(store, out)
    assert_equals_whole(store, out, whole)
    if fault == "after_rename@step_000004":  # the case: resumed at 4, its row rebuilt
        assert "resuming at step 4" in said[0]
        repaired = read_lineage(out)[-1]["lineage"]["repaired"]
        assert repaired == ["rebuilt the row of step_000004 from its meta.json"]
        versions = store.versions("checkpoints")
        assert any("rebuilt from meta.json" in str(v.get("lineage", v)) for v in versions)


# A kill while a resumed run rewrites a folder the first kill left (best_000004 in
# place, `best` not yet pointing at it): the second resume still ends exact.
@pytest.mark.slow  # real processes killed
@pytest.mark.parametrize("second", ["after_set_aside", "after_rows_removed", "after_rename"])
def test_a_kill_while_a_resume_rewrites_a_checkpoint_then_resume(store, whole, tmp_path, second):
    out = tmp_path / "run"
    killed_at(store, out, "after_rename@best_000004")
    killed_at(store, out, f"{second}@best_000004")
    resume(store, out)
    assert_equals_whole(store, out, whole)


def test_rows_of_a_removed_folder_and_a_doubled_row_are_repaired(store, tmp_path):
    out = tmp_path / "run"
    train_dpo(store, SET, cfg=load_config(None, tiny_overrides(**RUN)), out=out, echo=quiet)
    before = rows_of(store, out)
    import shutil

    shutil.rmtree(out / "checkpoints" / "step_000002")  # a folder gone (a user, a disk)
    stored = {r[CKPT.path]: r for r in store.open("checkpoints").to_table().to_pylist()}
    ckpt.record_checkpoint(store, stored[before[0][0]], {"command": "test"})  # a row twice
    assert len(rows_of(store, out)) == len(before) + 1
    said = resume(store, out)
    assert_rows_equal_folders(store, out)
    assert rows_of(store, out) == [r for r in before if "step_000002" not in r[0]]
    assert any("removed the rows of" in s for s in said)


# A row naming other weights than its folder is damage, never what a kill leaves (a
# save removes a replaced folder's rows first): a resume leaves it and says so, and
# never rebuilds it from meta.json (an edited meta.json would then be believed).
def test_a_row_naming_other_weights_is_left_as_it_is_and_said(store, tmp_path):
    out = tmp_path / "run"
    train_dpo(store, SET, cfg=load_config(None, tiny_overrides(**RUN)), out=out, echo=quiet)
    before = rows_of(store, out)
    best2 = next(r[0] for r in before if "best_000002" in r[0])
    stored = {r[CKPT.path]: r for r in store.open("checkpoints").to_table().to_pylist()}
    ckpt.remove_rows(store, [best2], {"command": "test"})
    ckpt.record_checkpoint(store, {**stored[best2], CKPT.sha256: "0" * 64}, {"command": "test"})
    said = resume(store, out)
    assert [r for r in rows_of(store, out) if r[0] == best2][0][3] == "0" * 64  # not laundered
    assert any("left the row of best_000002 as it is" in s for s in said), said


def test_a_damaged_metrics_line_before_the_last_is_one_line(store, tmp_path):
    out = tmp_path / "run"
    train_dpo(store, SET, cfg=load_config(None, tiny_overrides(**RUN)), out=out, echo=quiet)
    lines = (out / "metrics.jsonl").read_text().splitlines(keepends=True)
    lines[1] = lines[1][:20] + "\n"
    (out / "metrics.jsonl").write_text("".join(lines))
    result = cli_dpo(store, out)
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines()[-1].startswith(
        f"Error: {out / 'metrics.jsonl'} line 2: not a JSON object")
    assert "Traceback" not in result.output


# ------------------------------------------------------------------ one writer
def snapshot(out: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(out)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(out.rglob("*")) if p.is_file()}


def cli_dpo(store, out: Path, *extra: str, **overrides):
    return CliRunner().invoke(cli, ["--store", str(store.root), "train", "dpo", SET, "--out",
                                    str(out), *extra, *[w for o in tiny_overrides(**{**RUN, **overrides})
                                                        for w in ("-o", o)]])


@pytest.mark.slow  # a real process
def test_a_second_writer_gets_one_line_naming_the_holder_and_writes_nothing(store, tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen(command(store, out, **{"train.max_steps": 400}), env=ENV,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (out / "metrics.jsonl").exists():  # it holds the folder and writes in it
            assert first.poll() is None and time.monotonic() < deadline, "the first run ended"
            time.sleep(0.02)
        first.send_signal(signal.SIGSTOP)  # alive, holding the lock, writing nothing
        held = json.loads((out / "writer.lock").read_text())
        assert (held["pid"], held["host"]) == (first.pid, socket.gethostname())
        files, rows = snapshot(out), rows_of(store, out)
        second = cli_dpo(store, out, **{"train.max_steps": 400})
        assert second.exit_code == 1
        line = f"Error: {out} is being written by pid {first.pid} on host " \
               f"{socket.gethostname()} since {held['since']}"
        assert second.output.strip().startswith(line), second.output
        assert len(second.output.strip().splitlines()) == 1
        assert snapshot(out) == files and rows_of(store, out) == rows  # wrote nothing
        # Even --force-lock never takes the folder from a live writer on this host.
        assert cli_dpo(store, out, "--force-lock", **{"train.max_steps": 400}).exit_code == 1
        first.send_signal(signal.SIGKILL)
        first.wait()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    # Its holder is gone: the next run takes the folder over and resumes.
    assert json.loads((out / "writer.lock").read_text())["pid"] == first.pid
    said = resume(store, out)
    assert "train dpo" in said[0] and not (out / "writer.lock").exists()
    assert_rows_equal_folders(store, out)


def test_a_lock_of_another_host_is_taken_only_with_force(store, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    lock = {"host": "node-elsewhere", "pid": 4242, "since": "2026-01-02T03:04:05+00:00"}
    (out / "writer.lock").write_text(json.dumps(lock))
    refused = cli_dpo(store, out, **{"train.max_steps": 1})
    assert refused.exit_code == 1
    assert refused.output.strip() == (
        f"Error: {out} is being written by pid 4242 on host node-elsewhere since "
        f"2026-01-02T03:04:05+00:00 ({out / 'writer.lock'}); one writer per run folder: if "
        "that process is gone, run again with --force-lock")
    assert sorted(p.name for p in out.iterdir()) == ["writer.lock"]  # nothing written
    forced = cli_dpo(store, out, "--force-lock", **{"train.max_steps": 1})
    assert forced.exit_code == 0, forced.output
    assert (out / "run.json").exists() and not (out / "writer.lock").exists()


def test_a_lock_of_a_live_process_on_this_host_holds_until_it_is_gone(store, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    other = subprocess.Popen(["sleep", "300"])
    try:
        stat = Path(f"/proc/{other.pid}/stat").read_text().rsplit(")", 1)[1].split()
        (out / "writer.lock").write_text(json.dumps({
            "host": socket.gethostname(), "pid": other.pid, "started": stat[19],
            "boot_id": Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
            "since": "2026-01-02T03:04:05+00:00"}))
        refused = cli_dpo(store, out, **{"train.max_steps": 1})
        assert refused.exit_code == 1 and f"pid {other.pid} on host" in refused.output
    finally:
        other.kill()
        other.wait()
    taken = cli_dpo(store, out, **{"train.max_steps": 1})  # gone: taken over, no force
    assert taken.exit_code == 0, taken.output


@pytest.mark.slow  # torchrun
def test_torchrun_ranks_all_stop_with_the_line(store, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "writer.lock").write_text(json.dumps({"host": "node-elsewhere", "pid": 7,
                                                 "since": "2026-01-02T03:04:05+00:00"}))
    args = command(store, out, **{"train.max_steps": 1})
    torchrun = [str(Path(sys.executable).parent / "torchrun"), "--nproc-per-node", "2",
                "--master-port", str(29500 + os.getpid() % 1000 + 7), "-m", args[2], "--",
                *args[3:]]
    done = subprocess.run(torchrun, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines()
             if "is being written by pid 7 on host node-elsewhere" in line]
    assert len(lines) == 2, done.stderr[-3000:]  # one per rank, none waited forever
    assert sorted(p.name for p in out.iterdir()) == ["writer.lock"]


# ------------------------------------------------------------------------ GRPO
def grpo_cfg():
    from test_grpo_dist import LENGTH

    return load_config(None, [*LENGTH, "grpo.prompts_per_step=1", "train.max_steps=4",
                              "train.checkpoint_every=2"])


def grpo_state(store, out: Path) -> tuple:
    from ttspo.builder.core.schemas import ROLL, RWD

    rollouts = sorted(store.open("rollouts").to_table(columns=[
        ROLL.rollout_id, ROLL.checkpoint, RWD.reward, RWD.advantage]).to_pylist(),
        key=lambda r: r[ROLL.rollout_id])
    metrics = [{k: v for k, v in m.items() if not k.startswith("time/")
                and k != "rollouts_per_second"} for m in read_metrics(out)]
    return rollouts, metrics, [(k, s, sha) for _, k, s, sha in rows_of(store, out)]


@pytest.fixture(scope="module")
def grpo_whole(tmp_path_factory):
    from grpo_helpers import make_prompts
    from ttspo.builder.core.store import Store
    from ttspo.trainer.grpo.loop import train_grpo

    root = tmp_path_factory.mktemp("grpo_whole")
    store = Store(root / "st")
    make_prompts(store, 3)
    train_grpo(store, cfg=grpo_cfg(), out=root / "run", echo=quiet)
    return grpo_state(store, root / "run")


@pytest.mark.slow  # real processes killed
@pytest.mark.parametrize("fault", ["after_rename@step_000002", "after_row@step_000002",
                                   "after_rename@step_000004", "after_meta@4"])
def test_grpo_killed_at_a_save_then_resumed_equals_an_uninterrupted_run(grpo_whole, tmp_path,
                                                                       fault):
    from grpo_helpers import make_prompts
    from test_grpo_dist import command as grpo_command
    from ttspo.builder.core.store import Store
    from ttspo.trainer.grpo.loop import train_grpo

    store = Store(tmp_path / "st")
    make_prompts(store, 3)
    out = tmp_path / "run"
    args = grpo_command(store, out, "grpo.prompts_per_step=1", "train.max_steps=4",
                        "train.checkpoint_every=2")
    done = subprocess.run(args, env={**ENV, "TTSPO_FAULT": fault}, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    train_grpo(store, cfg=grpo_cfg(), out=out, echo=quiet)
    assert grpo_state(store, out) == grpo_whole
    assert_rows_equal_folders(store, out)
    assert not (out / "writer.lock").exists()


@pytest.mark.slow  # a real process killed
def test_tensorboard_shows_each_step_once_after_a_kill_and_resume(store, whole, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    done = subprocess.run(command(store, out, **{"train.tensorboard": True}),
                          env={**ENV, "TTSPO_FAULT": "after_row@step_000002"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    cfg = load_config(None, tiny_overrides(**{**RUN, "train.tensorboard": True}))
    train_dpo(store, SET, cfg=cfg, out=out, echo=quiet)  # resumed at 2: logs 3 and 4
    # (the killed process's last events, step 2's, were unflushed without a flush per step)
    events = EventAccumulator(str(out / "tb"))
    events.Reload()
    steps = lambda tag: [e.step for e in events.Scalars(tag)]
    assert steps("loss/total") == [1, 2, 3, 4]
    assert steps("val/loss") == [0, 2, 4]
    want = {m["step"]: m["loss/total"] for m in read_metrics(whole) if "loss/total" in m}
    assert {e.step: e.value for e in events.Scalars("loss/total")} == pytest.approx(want)


@pytest.mark.slow  # a real process
def test_a_writer_whose_folder_was_taken_over_stops_at_its_next_save(store, tmp_path):
    out = tmp_path / "run"
    args = command(store, out, **{"train.max_steps": 400, "train.checkpoint_every": 1})
    proc = subprocess.Popen(args, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "checkpoints" / "step_000001").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended"
            time.sleep(0.02)
        # What --force-lock on another host leaves: the lock file names that writer.
        (out / "writer.lock").write_text(json.dumps({"host": "node-elsewhere", "pid": 9,
                                                     "since": "2026-01-02T03:04:05+00:00",
                                                     "token": "theirs"}))
        err = proc.communicate(timeout=120)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1
    assert err.strip().splitlines()[-1] == (
        f"Error: {out}: the run folder was taken over by pid 9 on host node-elsewhere since "
        "2026-01-02T03:04:05+00:00; this process stopped writing")
    assert (out / "writer.lock").exists()  # the new holder's, left alone


def test_an_unknown_fault_moment_is_refused_before_anything_is_written(store, tmp_path, monkeypatch):
    monkeypatch.setenv("TTSPO_FAULT", "after_rowz@4")  # a typo must not let a test pass unkilled
    out = tmp_path / "run"
    result = cli_dpo(store, out)
    assert result.exit_code == 1
    assert result.output.startswith("Error: TTSPO_FAULT=after_rowz@4: 'after_rowz' is not a "
                                    "fault moment (one of before_tmp, ")
    assert not out.exists()


@pytest.mark.parametrize("text", ['{"trainer": "dpo", "set"', "[1, 2]"])
def test_a_damaged_run_json_is_one_line(store, tmp_path, text):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text(text)
    result = cli_dpo(store, out)
    assert result.exit_code == 1, result.output
    assert result.output.startswith(f"Error: {out / 'run.json'}: not a ")
    assert result.output.endswith("the run folder is damaged\n") and "Traceback" not in result.output
