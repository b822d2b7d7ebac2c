"""A read-only store, an unwritable output folder, a lock folder made by another user:
one line, exit 1, nothing written (and a lock folder made by root serves nobody too)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from ttspo.builder.core.store import Store
from ttspo.builder.sets.build import build_set
from as_other_user import open_to_all, run_as_nobody
from nemo_layout import make_nemo_run
from test_build_helpers import BASIC, make_store
from test_ingest_errors import tree

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user"),
              pytest.mark.slow]  # every write command as another user, in processes


@pytest.fixture
def shared():
    """A folder all users can reach (pytest's tmp_path is root's alone)."""
    with tempfile.TemporaryDirectory(prefix="ttspo-perm-") as folder:
        root = Path(folder)
        store = make_store(root / "st", BASIC)
        build_set(store, "pareto", "prefs")
        run = make_nemo_run(root / "gen", n_prompts=2, group_size=2, ranks=1)
        (root / "out").mkdir()
        (root / "tmp").mkdir()
        open_to_all(root)
        os.chmod(root / "tmp", 0o777)
        yield root, store, run


def test_a_read_only_store_gives_one_line_per_write_command(shared):
    root, store, run = shared
    before = tree(store.root)
    st = str(store.root)
    cases = [
        (["ingest", "nemo", str(run.gen_dir), "--manifest", str(run.manifest)], "generations"),
        (["tag", "generations", "1", "v9"], "generations"),
        (["build", "pareto", "--name", "prefs"], "prefs"),
        (["restore", "prefs", "1"], "prefs"),
    ]
    for args, table in cases:
        code, out, err, exc = run_as_nobody(["--store", st, *args], str(root / "tmp"))
        assert (code, exc, out) == (1, None, ""), (args, err)
        assert err.startswith(f"Error: cannot write table '{table}' in store {st}: "), err
        assert "Permission denied" in err and err.count("\n") == 1, err
    assert tree(store.root) == before


def test_an_unwritable_output_folder_gives_one_line(shared):
    root, store, run = shared
    out = root / "out"
    code, stdout, err, exc = run_as_nobody(
        ["--store", str(store.root), "export", "nemo", "prefs", "--out", str(out)], str(root / "tmp"))
    assert (code, exc, stdout) == (1, None, "")
    assert err.startswith("Error: Permission denied: ") and str(out) in err and err.count("\n") == 1
    code, stdout, err, exc = run_as_nobody(
        ["--store", str(store.root), "export", "trl", "prefs", "--out", str(out / "p.jsonl")],
        str(root / "tmp"))
    assert (code, exc, stdout) == (1, None, "")
    assert err.startswith(f"Error: Permission denied: {out}/") and err.count("\n") == 1, err
    assert list(out.iterdir()) == []


def test_a_lock_folder_made_by_root_serves_another_user(shared):
    root, store, run = shared
    tmp = root / "tmp"
    writable = root / "st2"
    writable.mkdir(mode=0o777)
    os.chmod(writable, 0o777)
    os.environ["TMPDIR"] = str(tmp)
    tempfile.tempdir = None
    try:
        with Store(writable).lock("something"):  # root makes TMPDIR/ttspo-locks
            pass
    finally:
        del os.environ["TMPDIR"]
        tempfile.tempdir = None
    code, out, err, exc = run_as_nobody(
        ["--store", str(writable), "ingest", "nemo", str(run.gen_dir), "--manifest",
         str(run.manifest)], str(tmp))
    assert (code, exc, err) == (0, None, ""), err
    assert out == "ingested 4 generations (2 groups) from run demo into generations@1\n"


def test_a_lock_folder_nobody_may_write_gives_one_line(shared):
    root, store, run = shared
    tmp = root / "tmp"
    (tmp / "ttspo-locks").mkdir(mode=0o755)
    os.chmod(tmp / "ttspo-locks", 0o755)  # root's, and not writable by others
    writable = root / "st2"
    writable.mkdir()
    os.chmod(writable, 0o777)
    code, out, err, exc = run_as_nobody(
        ["--store", str(writable), "ingest", "nemo", str(run.gen_dir), "--manifest",
         str(run.manifest)], str(tmp))
    assert (code, exc, out) == (1, None, "")
    assert err.startswith(f"Error: cannot use the lock file {tmp}/ttspo-locks/")
    assert err.endswith(" (Permission denied); set TMPDIR to a folder you can write\n")
    assert list(writable.iterdir()) == []
