"""One command line: `ttspo train grpo` takes --prompts and --where (the click command
is also what torchrun runs), and the old torchrun entries say where they went."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from grpo_helpers import make_prompts
from test_grpo_dist import LENGTH
from ttspo.builder.cli.main import cli
from ttspo.builder.core.schemas import CKPT, GEN
from ttspo.builder.core.store import Store


@pytest.mark.slow
def test_grpo_trains_on_the_prompts_where_selects(tmp_path):
    store = Store(tmp_path / "st")
    make_prompts(store, 4)
    out = tmp_path / "run"
    args = ["--store", str(store.root), "train", "grpo", "--out", str(out), "--prompts",
            "prompts@1", "--where", "prompt_id >= 'p2'", *[w for o in LENGTH for w in ("-o", o)],
            "-o", "grpo.prompts_per_step=1", "-o", "train.max_steps=1"]
    done = CliRunner().invoke(cli, args)
    assert done.exit_code == 0, done.output
    ids = set(store.open("rollouts").to_table(columns=[GEN.prompt_id])[GEN.prompt_id].to_pylist())
    assert ids and ids <= {"p2", "p3"}
    config = (out / "config.yaml").read_text()
    assert "prompts: prompts@1" in config and "where: prompt_id >= 'p2'" in config
    assert store.lineage("rollouts", 1)["args"]["where"] == "prompt_id >= 'p2'"
    lines = done.output.splitlines()
    assert lines[-3].startswith("last step 1: reward/mean ")
    sha = store.open("checkpoints").to_table(columns=[CKPT.sha256]).column(0).to_pylist()[-1]
    assert lines[-2:] == ["rollouts: 1 commit(s)", f"checkpoint step step 1: "
                          f"{out}/checkpoints/step_000001/policy.pt (sha256 {sha[:12]})"]


@pytest.mark.slow  # fresh interpreters
@pytest.mark.parametrize("module, command", [("ttspo.trainer", "ttspo train dpo|grpo"),
                                             ("ttspo.builder.scoring.run", "ttspo score")])
def test_the_old_torchrun_entries_name_the_new_command(module, command):
    done = subprocess.run([sys.executable, "-m", module, "dpo", "x"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1 and done.stdout == ""
    assert len(done.stderr.splitlines()) == 1
    assert f"`{command} ...`" in done.stderr and "-m ttspo.builder.cli -- --store ST" in done.stderr
