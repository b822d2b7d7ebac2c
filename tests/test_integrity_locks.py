"""Locks key on the resolved store path; a first build decides create vs overwrite
under the lock; what a build committed is what it checked.

The races are made deterministic: the test holds the lock the commands need, waits
until the kernel lists both command processes as waiting for it (/proc/locks), then
lets them go at once.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ttspo.builder.core.store import Store
from nemo_layout import make_nemo_run
from test_build_helpers import BASIC, make_store

TESTS = Path(__file__).parent


def spellings(tmp_path: Path, real: Path) -> tuple[Path, Path]:
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    return link, real / ".." / real.name


def ttspo(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ttspo.builder.cli", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_until_blocked(procs: list[subprocess.Popen], timeout: float = 60.0) -> None:
    """Until every process waits for a lock (a '->' line of /proc/locks)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        waiting = {int(line.split()[5]) for line in Path("/proc/locks").read_text().splitlines()
                   if line.split()[1] == "->"}
        if all(p.pid in waiting for p in procs):
            return
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.05)
    raise AssertionError("the commands never waited for the held lock")


def finish(procs: list[subprocess.Popen]) -> list[tuple[int, str, str]]:
    return [(p.wait(120), *p.communicate()) for p in procs]


def test_a_symlink_or_dotdot_spelling_takes_the_same_lock(tmp_path):
    real = tmp_path / "st"
    real.mkdir()
    taken = []
    with Store(real).lock("ingest run a"):
        threads = []
        for other in spellings(tmp_path, real):
            def take(other=other):
                with Store(other).lock("ingest run a"):
                    taken.append(other)
            threads.append(threading.Thread(target=take, daemon=True))
            threads[-1].start()
        time.sleep(0.5)
        assert taken == []  # both wait for the lock held through the real path
    for t in threads:
        t.join(10)
    assert len(taken) == 2


@pytest.mark.slow
def test_one_run_ingested_twice_at_once_through_two_spellings_lands_once(tmp_path):
    run = make_nemo_run(tmp_path, n_prompts=2, group_size=3, ranks=2)
    real = tmp_path / "st"
    real.mkdir()
    link, dotdot = spellings(tmp_path, real)
    with Store(real).lock("ingest run demo"):
        procs = [ttspo("--store", str(s), "ingest", "nemo", str(run.gen_dir), "--manifest",
                       str(run.manifest)) for s in (link, dotdot)]
        wait_until_blocked(procs)
    outcomes = finish(procs)
    assert [code for code, _, _ in outcomes] == [0, 0], outcomes
    assert sorted(out for _, out, _ in outcomes) == [
        "ingested 6 generations (2 groups) from run demo into generations@1\n",
        "nothing to ingest: all 6 generations of run demo are already in generations@1; "
        "store unchanged\n"]
    ids = Store(real).open("generations").to_table(columns=["generation_id"]).column(0)
    assert sorted(ids.to_pylist()) == [f"demo:{i}" for i in range(6)]


@pytest.mark.slow
def test_two_first_builds_at_once_do_not_commit_a_doubled_set(tmp_path):
    store = make_store(tmp_path / "st", BASIC)
    # Both builds find no set 'prefs' and queue for its creation.
    with store.lock("create prefs"):
        procs = [ttspo("--store", str(store.root), "build", "pareto", "--name", "prefs",
                       "--format", "csv") for _ in range(2)]
        wait_until_blocked(procs)
    outcomes = finish(procs)
    assert [code for code, _, _ in outcomes] == [0, 0], outcomes
    assert [v["rows"] for v in store.versions("prefs")] == [5, 5]
    pairs = store.open("prefs").to_table(columns=["pair_id"]).column(0).to_pylist()
    assert len(pairs) == len(set(pairs)) == 5
