"""Writers of every kind at once (ingest, build, score, tag) on one store, through three
spellings of its path: no row lost or doubled; each command exits 0 or with one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ttspo.builder.core.store import Store
from ttspo.builder.ingest.run import ingest_nemo
from nemo_layout import make_nemo_run

pytestmark = pytest.mark.slow  # many real writer processes at once

REPO = Path(__file__).resolve().parent.parent


def start(store: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ttspo.builder.cli", "--store", str(store), *args],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_every_kind_of_writer_at_once_through_three_spellings(tmp_path):
    run = make_nemo_run(tmp_path, n_prompts=6, group_size=4, ranks=2)
    real = tmp_path / "st"
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    dotdot = tmp_path / "st" / ".." / "st"
    ingest_nemo(Store(real), run.gen_dir, run.manifest, run="base", workers=1)
    nemo = ["ingest", "nemo", str(run.gen_dir), "--manifest", str(run.manifest), "--run"]
    commands = [
        (link, *nemo, "a"), (dotdot, *nemo, "a"),
        (real, "build", "pareto", "--name", "prefs", "--param", "min_duration=0.1"),
        (link, "build", "best_worst", "--name", "prefs", "--param", "min_duration=0.1",
         "--param", "cer_threshold=0.05"),
        (dotdot, "score", "--metrics", "pesq", "--rescore", "--where", "run = 'base'"),
        (real, "tag", "generations", "1", "base-only"),
    ]
    procs = [start(*command) for command in commands]
    outcomes = [(p.wait(300), *p.communicate()) for p in procs]
    for command, (code, out, err) in zip(commands, outcomes):
        assert "Traceback" not in err, (command, err)
        if code != 0:  # a clean refusal: one line
            assert code == 1 and err.startswith("Error: ") and err.count("\n") == 1, (command, err)
    assert [code for code, _, _ in outcomes[:2]] == [0, 0], outcomes[:2]

    store = Store(real)
    ids = store.open("generations").to_table(columns=["generation_id"]).column(0).to_pylist()
    assert sorted(ids) == sorted(f"{r}:{i}" for r in ("base", "a") for i in range(24))
    assert sum("ingested 24 generations" in out for _, out, _ in outcomes[:2]) == 1
    for version in store.versions("prefs"):  # every committed set: each pair once
        pairs = store.open("prefs", version["version"]).to_table(columns=["pair_id"]).column(0)
        assert len(pairs) == len(set(pairs.to_pylist())) == version["lineage"]["counts"]["pairs"]
        assert len(pairs) > 0
    assert len(store.versions("prefs")) == sum(c == 0 for c, _, _ in outcomes[2:4])
    assert store.tags("generations") == {"base-only": 1}


def test_four_concurrent_builds_of_an_existing_set(tmp_path):
    """Four rebuilds of one existing set at once: each lands as its own version
    (each pair once, its counts true) or is refused in one line, never a traceback."""
    run = make_nemo_run(tmp_path, n_prompts=6, group_size=4, ranks=2)
    store = Store(tmp_path / "st")
    ingest_nemo(store, run.gen_dir, run.manifest, run="base", workers=1)
    build = ["build", "best_worst", "--name", "prefs", "--param", "min_duration=0.1"]
    first = start(store.root, *build)
    assert first.wait(300) == 0, first.communicate()
    thresholds = ("0.01", "0.05", "0.2", "1.0")
    procs = [start(store.root, *build, "--param", f"cer_threshold={t}") for t in thresholds]
    outcomes = [(p.wait(300), *p.communicate()) for p in procs]
    for code, out, err in outcomes:
        assert "Traceback" not in err, err
        if code != 0:
            assert code == 1 and err.startswith("Error: ") and err.count("\n") == 1, err
    versions = Store(store.root).versions("prefs")
    # Lance commits of overwrites do not conflict (and conflicts are retried): all land
    assert [code for code, _, _ in outcomes] == [0, 0, 0, 0], outcomes
    assert len(versions) == 1 + len(thresholds)
    for version in versions:
        pairs = store.open("prefs", version["version"]).to_table(columns=["pair_id"]).column(0)
        assert len(pairs) == len(set(pairs.to_pylist())) == version["lineage"]["counts"]["pairs"]
    params = sorted(v["lineage"]["params"]["cer_threshold"] for v in versions[1:])
    assert params == sorted(float(t) for t, (c, _, _) in zip(thresholds, outcomes) if c == 0)
