"""Ingest under SIGKILL and under concurrency, with real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ttspo.builder.ingest.run import ingest_nemo
from ttspo.builder.core.store import Store
from nemo_layout import make_nemo_run

pytestmark = pytest.mark.slow  # real ingest processes: SIGKILL matrix, concurrency

REPO = Path(__file__).resolve().parent.parent
TTSPO = [sys.executable, "-c", "from ttspo.builder.cli.main import main; main()"]


def ingest_process(store: Path, run, name: str, tmpdir: Path, batch_rows: int = 4):
    """`ingest_nemo` in its own process (readers in-process, small batches)."""
    tmpdir.mkdir(exist_ok=True)
    code = ("import sys\nfrom ttspo.builder.ingest.run import ingest_nemo\nfrom ttspo.builder.core.store import Store\n"
            "r = ingest_nemo(Store(sys.argv[1]), sys.argv[2], sys.argv[3], run=sys.argv[4], "
            "workers=1, batch_rows=int(sys.argv[5]))\nprint(r.ingested)\n")
    env = {**os.environ, "TMPDIR": str(tmpdir)}
    return subprocess.Popen([sys.executable, "-c", code, str(store), str(run.gen_dir),
                             str(run.manifest), name, str(batch_rows)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def spilled(tmpdir: Path) -> int:
    return sum(1 for _ in tmpdir.glob("ttspo-ingest-*/*.arrows"))


def wait_for(condition, proc, timeout: float = 60.0) -> None:
    end = time.time() + timeout
    while not condition():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < end, "timed out"
        time.sleep(0.005)


def count(store: Path, run: str) -> int:
    return Store(store).open("generations").count_rows(filter=f"run = '{run}'")


def test_sigkill_part_way_leaves_the_previous_version_and_a_rerun_completes(tmp_path):
    run = make_nemo_run(tmp_path, n_prompts=40, group_size=4, ranks=2)
    store = tmp_path / "st"
    ingest_nemo(Store(store), run.gen_dir, run.manifest, run="first", workers=1)
    # Killed part-way through reading: 7 of 40 batches spilled. (A FIFO no longer
    # blocks the reader: ingest refuses special files without opening them blocking.)
    proc = ingest_process(store, run, "second", tmp_path / "tmp")
    wait_for(lambda: spilled(tmp_path / "tmp") >= 7, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert Store(store).version("generations") == 1
    assert count(store, "first") == 160 and count(store, "second") == 0

    result = ingest_nemo(Store(store), run.gen_dir, run.manifest, run="second", workers=1)
    assert (result.ingested, result.version) == (160, 2)
    assert count(store, "second") == 160


def test_sigkill_at_any_moment_is_all_or_nothing(tmp_path):
    run = make_nemo_run(tmp_path, n_prompts=40, group_size=4, ranks=2)
    store = tmp_path / "st"
    ingest_nemo(Store(store), run.gen_dir, run.manifest, run="first", workers=1)
    for k, delay in enumerate((0.0, 0.01, 0.03, 0.06)):
        proc = ingest_process(store, run, "second", tmp_path / f"tmp{k}", batch_rows=2)
        wait_for(lambda: spilled(tmp_path / f"tmp{k}") >= 1, proc)  # reading has begun
        time.sleep(delay)  # then anywhere: reading, writing fragments, committing
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert count(store, "second") in (0, 160)  # never half a run
        assert count(store, "first") == 160
    result = ingest_nemo(Store(store), run.gen_dir, run.manifest, run="second", workers=1)
    assert count(store, "second") == 160
    assert result.ingested in (0, 160)


def cli_process(store: Path, run, name: str):
    return subprocess.Popen([*TTSPO, "--store", str(store), "ingest", "nemo", str(run.gen_dir),
                             "--manifest", str(run.manifest), "--run", name],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("existing", [True, False], ids=["appending", "creating"])
def test_two_ingests_of_different_runs_at_once_both_land(tmp_path, existing):
    run = make_nemo_run(tmp_path, n_prompts=25, group_size=4, ranks=2)
    store = tmp_path / "st"
    if existing:
        ingest_nemo(Store(store), run.gen_dir, run.manifest, run="base", workers=1)
    procs = [cli_process(store, run, name) for name in ("a", "b")]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert sorted(out.split(" into ")[0] for out, _ in outputs) == [
        "ingested 100 generations (25 groups) from run a",
        "ingested 100 generations (25 groups) from run b"]
    runs = ("base", "a", "b") if existing else ("a", "b")
    ids = Store(store).open("generations").to_table(columns=["generation_id"]).column(0).to_pylist()
    assert sorted(ids) == sorted(f"{r}:{i}" for r in runs for i in range(100))
    assert Store(store).version("generations") == len(runs)


def test_two_ingests_of_the_same_run_at_once_add_it_once(tmp_path):
    run = make_nemo_run(tmp_path, n_prompts=25, group_size=4, ranks=2)
    store = tmp_path / "st"
    procs = [cli_process(store, run, "same") for _ in range(2)]
    outputs = sorted(p.communicate(timeout=120)[0] for p in procs)
    assert outputs == [
        "ingested 100 generations (25 groups) from run same into generations@1\n",
        "nothing to ingest: all 100 generations of run same are already in generations@1; "
        "store unchanged\n"]
    assert Store(store).open("generations").count_rows() == 100
