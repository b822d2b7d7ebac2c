"""Distributed scoring with real processes: torchrun ranks and `ttspo score --workers`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ttspo.builder.core.schemas import GEN
from ttspo.builder.scoring.run import ScoreOptions, score
from ttspo.builder.core.store import Store
from test_scoring_helpers import (STANDARD, generation, metrics_by_id, write_generations,
                                  write_prompts)

pytestmark = pytest.mark.slow  # torchrun ranks and worker processes

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]
FLOATS = (GEN.cer, GEN.wer, GEN.ssim, GEN.pesq)


def two_fragment_store(root: Path, copies: int = 1) -> Store:
    """Prompts plus STANDARD generations written in two appends (two fragments)."""
    store = Store(root)
    write_prompts(store)
    rows = [generation(k * len(STANDARD) + i, name, blob=blob, text_context=tc)
            for k in range(copies) for i, (name, blob, tc) in enumerate(STANDARD)]
    half = len(rows) // 2
    write_generations(store, rows[:half])
    write_generations(store, rows[half:])
    return store


def test_torchrun_two_ranks_give_the_numbers_of_one_process(tmp_path):
    one = two_fragment_store(tmp_path / "one")
    two = two_fragment_store(tmp_path / "two")
    score(one, ScoreOptions(metrics=("cer", "wer", "ssim", "pesq"), batch_size=2))

    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [str(BIN / "torchrun"), "--standalone", "--nproc-per-node", "2", "-m",
         "ttspo.builder.cli", "--", "--store", str(two.root), "score", "--metrics", "cer,wer,ssim,pesq",
         "--batch-size", "2"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines()[0] == \
        "scored 5 generation(s) of generations@2 -> version 3 (2 process(es))"

    expected, got = metrics_by_id(one), metrics_by_id(two)
    assert got.keys() == expected.keys()
    for gid, row in expected.items():
        for column, value in row.items():
            if column in FLOATS and value is not None:
                assert got[gid][column] == pytest.approx(value, rel=1e-5), (gid, column)
            else:
                assert got[gid][column] == value, (gid, column)
    assert [v["version"] for v in two.versions("generations")] == [1, 2, 3]
    lineage = two.lineage("generations", 3)
    assert lineage["launcher"] == "torchrun"
    assert lineage["scoring"]["world_size"] == 2
    assert lineage["inputs"] == {"generations": 2, "prompts": 1}
    # Each fragment got its column file from its own rank, all in one commit.
    for fragment in two.open("generations").get_fragments():
        assert len(fragment.data_files()) == 2


def _rank_pids(parent: int) -> dict[int, int]:
    """rank -> pid of the scoring workers PARENT started (read from /proc)."""
    out = {}
    children = Path(f"/proc/{parent}/task/{parent}/children")
    for pid in children.read_text().split() if children.exists() else []:
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for item in env:
            if item.startswith(b"RANK="):
                out[int(item[5:])] = int(pid)
    return out


def test_a_killed_worker_leaves_the_table_as_it_was_and_a_rerun_finishes(tmp_path):
    store = two_fragment_store(tmp_path / "st", copies=2)
    cmd = [str(BIN / "ttspo"), "--store", str(store.root), "score", "--workers", "2",
           "--metrics", "cer,wer", "--batch-size", "2"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 60
        while 1 not in _rank_pids(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        ranks = _rank_pids(proc.pid)
        assert set(ranks) == {0, 1}, "workers never started"
        time.sleep(3)  # mid-way: loading models or scoring, long before the commit
        os.kill(ranks[1], signal.SIGKILL)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1
    assert err.startswith("Error: scoring worker rank 1 died (exit code -9")
    assert err.endswith("generations is unchanged, run ttspo score again\n")
    assert not Path(f"/proc/{ranks[0]}").exists()  # the parent stopped the other rank
    assert store.version("generations") == 2

    summary = score(store, ScoreOptions(metrics=("cer", "wer")))
    assert summary.rows == 10 and summary.version == 3
    assert all(r[GEN.cer_source] for r in metrics_by_id(store).values())
