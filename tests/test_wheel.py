"""The built wheel, installed NOT editable into a fresh venv, works on its own.

A source checkout hides packaging mistakes: with the repo root on sys.path, bare
`builder`/`sql` imports and files missing from the wheel still resolve. Here the
wheel is built from a copy of the source (`uv build --wheel`, with the setuptools
of the project's .venv: no build environment to fetch), installed with `--no-deps`
into a new venv, and run from a folder outside the repo: its top-level import
names must be exactly `ttspo`, and `ttspo --help`, an ingest, a build and an export
of a tiny NeMo-layout corpus must work there.

The new venv takes its dependencies from the project's .venv: one `.pth` line puts
that site-packages on the path AFTER the venv's own, so `ttspo` is the wheel's.
Only the site-packages folder is added, not processed as a site dir: the editable
install's `.pth` there (which would put the repo root on the path) is not run.
No step needs the network or uv's index cache: `uv sync --locked` fetches by URL
from the lock and never fills the index cache that an offline resolve by name needs.

Part of the suite (CI runs it): it needs `uv` on PATH, which `.ci/setup` installs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from nemo_layout import make_nemo_run

pytestmark = pytest.mark.slow  # builds the wheel and a fresh venv

ROOT = Path(__file__).resolve().parent.parent
# Outside a git checkout: what the wheel must not be built from (venvs, stores, builds).
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__",
                                    ".pytest_cache", ".hypothesis", "_data", "ttspo-store",
                                    "ttspo-demo-store")


def copy_source(dest: Path) -> None:
    """The source tree as git sees it (tracked and new files, not ignored ones:
    no venvs, stores or bench data), else the tree less NOT_SOURCE."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, capture_output=True)
    if listed.returncode:
        shutil.copytree(ROOT, dest, ignore=NOT_SOURCE)
        return
    for rel in filter(None, listed.stdout.decode().split("\0")):
        if (ROOT / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)


def run(cmd: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"{' '.join(map(str, cmd))} exited {out.returncode}:\n{out.stderr}"
    return out


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """Build the wheel, install it alone into a fresh venv over the locked dependencies."""
    uv = shutil.which("uv")
    assert uv, "uv is not on PATH (bash .ci/setup installs it)"
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    copy_source(src)
    run([uv, "build", "--wheel", "--offline", "--no-build-isolation", "-q", "--python",
         sys.executable, "--out-dir", str(tmp / "dist")], cwd=src)
    wheels = list((tmp / "dist").glob("ttspo-*.whl"))
    assert len(wheels) == 1, wheels
    venv = tmp / "venv"
    run([uv, "venv", "-q", "--offline", "--python", sys.executable, str(venv)], cwd=tmp)
    run([uv, "pip", "install", "-q", "--offline", "--no-deps", "--python",
         str(venv / "bin" / "python"), str(wheels[0])], cwd=tmp)
    (site_packages(venv) / "_locked_dependencies.pth").write_text(
        sysconfig.get_paths()["purelib"] + "\n")
    # The child sees none of this process's paths (pytest puts tests/ and the repo
    # root on sys.path) and reaches no model hub.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["HF_HUB_OFFLINE"] = "1"
    work = tmp / "work"
    work.mkdir()
    return {"wheel": wheels[0], "venv": venv, "env": env, "work": work}


def site_packages(venv: Path) -> Path:
    (found,) = (venv / "lib").glob("python3.*/site-packages")
    return found


def test_the_wheel_installs_only_ttspo(installed):
    with zipfile.ZipFile(installed["wheel"]) as whl:
        names = whl.namelist()
        (top_level,) = [n for n in names if n.endswith(".dist-info/top_level.txt")]
        assert whl.read(top_level).decode().split() == ["ttspo"]
    assert {n.split("/")[0] for n in names if ".dist-info/" not in n} == {"ttspo"}
    # What landed in site-packages, by the installed RECORD.
    site = site_packages(installed["venv"])
    (record,) = site.glob("ttspo-*.dist-info/RECORD")
    tops = {line.split(",")[0].split("/")[0] for line in record.read_text().splitlines()}
    assert {t for t in tops if not t.endswith(".dist-info") and t != ".."} == {"ttspo"}
    for generic in ("builder", "trainer", "sql"):
        assert not (site / generic).exists(), f"{generic}/ landed in site-packages"
    # Every stage package and the data files that ship with them.
    for path in ("builder/core/store.py", "builder/scoring/run.py", "builder/analysis/compare.py",
                 "builder/cli/main.py", "trainer/policy/codec.py", "trainer/policy/assets/codec.npz",
                 "trainer/policy/nemo/load.py", "trainer/run/config.py", "trainer/dpo/loop.py",
                 "trainer/generate/run.py", "trainer/grpo/loop.py", "trainer/api.py",
                 "trainer/cli/train.py", "sql/pareto.sql", "sql/macros.sql",
                 "trainer/demo/corpus/manifest.json", "builder/review/serve/app.py",
                 "builder/review/serve/static/index.html", "builder/review/serve/static/app.js",
                 "builder/review/serve/static/style.css"):
        assert (site / "ttspo" / path).is_file(), path
    assert not (site / "ttspo" / "setup.py").exists()
    assert not (site / "ttspo" / "tests").exists()


def test_the_installed_ttspo_runs_outside_the_repo(installed, tmp_path):
    venv, env, work = installed["venv"], installed["env"], installed["work"]
    bin_ = venv / "bin"
    where = run([str(bin_ / "python"), "-c", "import ttspo; print(ttspo.__file__)"], work, env)
    assert where.stdout.strip() == str(site_packages(venv) / "ttspo" / "__init__.py")

    help_ = run([str(bin_ / "ttspo"), "--help"], work, env).stdout
    for command in ("prompts", "ingest", "score", "build", "export", "sql", "train", "generate",
                    "compare", "rewards", "demo", "serve"):  # both halves' commands
        assert f"\n  {command} " in help_, command

    corpus = make_nemo_run(tmp_path, n_prompts=6, group_size=4, ranks=2)
    store = ["--store", str(tmp_path / "store")]
    ingest = run([str(bin_ / "ttspo"), *store, "ingest", "nemo", str(corpus.gen_dir),
                  "--manifest", str(corpus.manifest), "--run", "base"], work, env)
    assert ingest.stdout == "ingested 24 generations (6 groups) from run base into generations@1\n"

    build = run([str(bin_ / "ttspo"), *store, "build", "pareto", "--name", "prefs", "--format", "json",
                 "--param", "min_duration=0.1", "--param", "val_size=0"], work, env)
    # The recipe the installed package ran is the repo's sql/pareto.sql, byte for byte.
    sha = hashlib.sha256((ROOT / "sql" / "pareto.sql").read_bytes()).hexdigest()
    assert json.loads(build.stdout) == [{
        "set": "prefs", "version": 1, "recipe": "pareto", "pairs": 4, "train": 4, "val": 0,
        "groups": 4, "prompts": 4, "generations": 1, "recipe_sha256": sha}]

    out = tmp_path / "manifests"
    export = run([str(bin_ / "ttspo"), *store, "export", "nemo", "prefs", "--out", str(out),
                  "--format", "json"], work, env)
    assert json.loads(export.stdout) == [{
        "files": f"{out}/dpo_train_manifest.json {out}/dpo_val_manifest.json", "train_pairs": 4,
        "val_pairs": 0, "codes_written": 8, "codes_copied": 0, "codes_reused": 0, "min_duration": 0.2, "max_duration": 0.2}]
    lines = [json.loads(line) for line in (out / "dpo_train_manifest.json").read_text().splitlines()]
    assert len(lines) == 8 and (out / "dpo_val_manifest.json").read_text() == ""
    assert [line["reward"] for line in lines[0::2]] == [1.0] * 4
    assert all(line["reward"] < 1 for line in lines[1::2])
    assert {line["audio_filepath"] for line in lines} <= {str(corpus.wav(i)) for i in range(24)}
