"""`ttspo train dpo|grpo` and `python -m ttspo.trainer dpo|grpo` (torchrun's entry) take
the same options, defined once (trainer/train_options.py), and print the same lines."""

from __future__ import annotations

import pytest

from grpo_helpers import make_prompts
from test_grpo_dist import LENGTH
from ttspo.trainer.cli.train import dpo, grpo
from ttspo.builder.core.schemas import CKPT, GEN
from ttspo.builder.core.store import Store
from ttspo.trainer.__main__ import main, parser


def click_options(command) -> dict[str, tuple]:
    return {p.opts[0]: (p.name, p.default if p.default != () else None, p.required, p.multiple)
            for p in command.params if p.param_type_name == "option"}


def argparse_options(name: str) -> dict[str, tuple]:
    sub = next(a for a in parser()._actions if a.dest == "trainer").choices[name]
    return {a.option_strings[0]: (a.dest, a.default if a.default != [] else None, a.required,
                                  a.nargs is None and type(a).__name__ == "_AppendAction")
            for a in sub._actions if a.option_strings and a.dest not in ("help", "store")}


@pytest.mark.parametrize("name, command", [("dpo", dpo), ("grpo", grpo)])
def test_the_torchrun_entry_takes_the_clis_options(name, command):
    assert argparse_options(name) == click_options(command)
    if name == "grpo":
        assert {"--prompts", "--where"} <= set(argparse_options(name))


def test_torchrun_grpo_trains_on_the_prompts_where_selects(tmp_path, capsys):
    store = Store(tmp_path / "st")
    make_prompts(store, 4)
    out = tmp_path / "run"
    args = ["grpo", "--store", str(store.root), "--out", str(out), "--prompts", "prompts@1",
            "--where", "prompt_id >= 'p2'", *[w for o in LENGTH for w in ("-o", o)],
            "-o", "grpo.prompts_per_step=1", "-o", "train.max_steps=1"]
    assert main(args) == 0
    ids = set(store.open("rollouts").to_table(columns=[GEN.prompt_id])[GEN.prompt_id].to_pylist())
    assert ids and ids <= {"p2", "p3"}
    config = (out / "config.yaml").read_text()
    assert "prompts: prompts@1" in config and "where: prompt_id >= 'p2'" in config
    assert store.lineage("rollouts", 1)["args"]["where"] == "prompt_id >= 'p2'"
    lines = capsys.readouterr().out.splitlines()
    assert lines[-3].startswith("last step 1: reward/mean ")
    sha = store.open("checkpoints").to_table(columns=[CKPT.sha256]).column(0).to_pylist()[-1]
    assert lines[-2:] == ["rollouts: 1 commit(s)", f"checkpoint step step 1: "
                          f"{out}/checkpoints/step_000001/policy.pt (sha256 {sha[:12]})"]
