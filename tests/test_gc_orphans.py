"""`ttspo gc` and the data files no version names: what a writer killed before its
commit leaves (pair_dynamics' fragments past its buffer: trainer/dpo/dynamics.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from click.testing import CliRunner

from ttspo.builder.cli.main import cli
from ttspo.builder.core.store import Store, make_lineage
from ttspo.trainer.dpo.dynamics import PAIR_DYNAMICS, DynamicsWriter

pytestmark = pytest.mark.slow  # a real writer process, killed

VALUES = ("margin", "correct", "loss")
# 12 rows past a 4-row buffer: 3 data files, then the process is killed before its commit
KILLED_WRITER = """
import os, signal, sys, torch
from ttspo.builder.core.store import Store, make_lineage
from ttspo.trainer.dpo.dynamics import DynamicsWriter
w = DynamicsWriter(store=Store(sys.argv[1]), run="killed", set_name="prefs", set_version=1,
                   lineage=make_lineage("test", {}), master=True, flush_rows=4)
for step in (1, 2, 3):
    w.add(step=step, epoch=0, split="train", pair_ids=[f"k{step}.{i}" for i in range(4)],
          values={k: torch.full((4,), float(step)) for k in %r})
os.kill(os.getpid(), signal.SIGKILL)
""" % (VALUES,)
WEEK_AND_A_DAY = 8 * 86400


def ttspo(store: Store, *args: str):
    return CliRunner().invoke(cli, ["--store", str(store.root), *args])


def data_files(store: Store) -> set[str]:
    return set(os.listdir(store.path(PAIR_DYNAMICS) / "data"))


def committed_run(store: Store) -> None:
    w = DynamicsWriter(store=store, run="done", set_name="prefs", set_version=1,
                       lineage=make_lineage("test", {}), master=True)
    w.add(step=1, epoch=0, split="train", pair_ids=[f"d{i}" for i in range(5)],
          values={k: torch.arange(5.0) for k in VALUES})
    w.commit(1)


def test_gc_removes_a_killed_writers_files_once_a_week_old_and_nothing_else(tmp_path):
    store = Store(tmp_path / "store")
    committed_run(store)
    kept = data_files(store)
    killed = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(store.root)],
                            capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    orphans = data_files(store) - kept
    assert len(orphans) == 3 and store.version(PAIR_DYNAMICS) == 1  # files, no version

    # Younger than Lance's 7 days, a file no version names may be a live writer's: kept.
    result = ttspo(store, "gc", PAIR_DYNAMICS, "--keep-last", "1")
    assert result.exit_code == 0, result.output
    assert data_files(store) == kept | orphans

    old = time.time() - WEEK_AND_A_DAY  # as if a week had passed since the kill
    for name in orphans:
        os.utime(store.path(PAIR_DYNAMICS) / "data" / name, (old, old))
    for name in kept:  # committed files as old: a version names them, they stay
        os.utime(store.path(PAIR_DYNAMICS) / "data" / name, (old, old))
    size = sum((store.path(PAIR_DYNAMICS) / "data" / n).stat().st_size for n in orphans)
    dry = ttspo(store, "gc", PAIR_DYNAMICS, "--keep-last", "1", "--dry-run")
    assert dry.exit_code == 0 and data_files(store) == kept | orphans
    assert "3 data files no version names" in dry.output and str(size) in dry.output

    result = ttspo(store, "gc", PAIR_DYNAMICS, "--keep-last", "1")
    assert result.exit_code == 0, result.output
    assert data_files(store) == kept  # the killed writer's files went, every committed one stayed
    assert "3 data files no version names" in result.output
    assert store.version(PAIR_DYNAMICS) == 1 and store.open(PAIR_DYNAMICS).count_rows() == 5
    again = ttspo(store, "gc", PAIR_DYNAMICS, "--keep-last", "1")
    assert (again.exit_code, again.output.strip().splitlines()[-1]) == (0, "nothing to remove")
