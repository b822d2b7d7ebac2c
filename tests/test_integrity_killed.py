"""What a SIGKILLed ingest leaves (its spill folder in the temp dir, unfinished
``data/.tmp*`` files in the store) goes with the rerun or any later write."""

from __future__ import annotations

import os
import signal
import tempfile
from pathlib import Path

import pytest

from ttspo.builder.core.store import Store
from ttspo.builder.ingest.run import ingest_nemo
from ttspo.builder.sets.build import build_set
from nemo_layout import make_nemo_run
from test_build_helpers import BASIC, make_store
from test_ingest_crash import ingest_process, spilled, wait_for

pytestmark = pytest.mark.slow  # real ingest processes killed with SIGKILL


@pytest.fixture
def tmpdir_env(tmp_path):
    """TMPDIR for this process too (the killed ingest's temp dir is this one)."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    old = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(folder)
    tempfile.tempdir = None
    yield folder
    if old is None:
        del os.environ["TMPDIR"]
    else:
        os.environ["TMPDIR"] = old
    tempfile.tempdir = None


def spill_folders(tmp: Path) -> list[Path]:
    return sorted(tmp.glob("ttspo-ingest-*"))


def kill_while_reading(store: Path, run, tmp: Path):
    proc = ingest_process(store, run, "second", tmp, batch_rows=1)
    wait_for(lambda: spilled(tmp) >= 2, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(spill_folders(tmp)) == 1  # SIGKILL skips every cleanup


def test_a_rerun_removes_the_spill_folder_of_a_killed_ingest(tmp_path, tmpdir_env):
    run = make_nemo_run(tmp_path, n_prompts=10, group_size=4, ranks=2)
    store = tmp_path / "st"
    kill_while_reading(store, run, tmpdir_env)
    result = ingest_nemo(Store(store), run.gen_dir, run.manifest, run="second", workers=1)
    assert result.ingested == 40
    assert spill_folders(tmpdir_env) == []


def test_any_later_write_removes_it_but_not_a_live_commands_folder(tmp_path, tmpdir_env):
    run = make_nemo_run(tmp_path, n_prompts=10, group_size=4, ranks=2)
    kill_while_reading(tmp_path / "st", run, tmpdir_env)
    dead = spill_folders(tmpdir_env)
    other = make_store(tmp_path / "other", BASIC)
    with Store(tmp_path / "x").lock("ingest run held"):  # not an ingest: a live temp folder
        from ttspo.builder.core.locks import temp_dir

        with temp_dir("ingest") as live:
            build_set(other, "pareto", "prefs")  # a write to another store
            assert spill_folders(tmpdir_env) == [Path(live)]
    assert not dead[0].exists()


def tmp_files(store: Path) -> list[Path]:
    return [p for p in (store / "generations.lance").rglob(".tmp*") if p.is_file()]


def kill_mid_write(store: Path, run, name: str, tmp: Path) -> bool:
    """SIGKILL an ingest of run NAME as soon as Lance has an unfinished data file open;
    whether one was still unfinished at the kill."""
    data = store / "generations.lance" / "data"
    proc = ingest_process(store, run, name, tmp, batch_rows=1024)
    while proc.poll() is None and not any(n.startswith(".tmp") for n in os.listdir(data)):
        pass
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return bool(tmp_files(store))


def test_unfinished_store_files_of_a_killed_ingest_go_with_the_rerun(tmp_path):
    run = make_nemo_run(tmp_path, n_prompts=75, group_size=4, ranks=2)
    store = tmp_path / "st"
    ingest_nemo(Store(store), run.gen_dir, run.manifest, run="first", workers=1)
    for attempt in range(10):  # until the kill lands while a data file is unfinished
        name = f"second{attempt}"
        if kill_mid_write(store, run, name, tmp_path / f"tmp{attempt}"):
            break
    else:
        pytest.fail("never killed while a data file was unfinished")
    orphans = tmp_files(store)
    assert Store(store).open("generations").count_rows(filter=f"run = '{name}'") == 0
    result = ingest_nemo(Store(store), run.gen_dir, run.manifest, run=name, workers=1)
    assert result.ingested == 300
    assert [p for p in orphans if p.exists()] == []
    assert tmp_files(store) == []
