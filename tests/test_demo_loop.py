"""The demo's loop step: base and trained checkpoints sampled on held-out prompts,
scored, compared, with verdicts that claim only what the intervals show."""

from __future__ import annotations

import pytest

from ttspo.trainer.demo import loop as demo_loop
from ttspo.trainer.demo import run as demo_api
from ttspo.trainer.demo import sets as demo_sets
from ttspo.trainer.demo.train import MODEL


def row(metric="cer", diff=0.1, low=0.05, high=0.15, p=0.01, better="lower", n=6):
    return {"run_a": "demo-base", "run_b": "demo-dpo", "metric": metric, "better": better,
            "prompts": n, "diff": diff, "ci_low": low, "ci_high": high, "p_value": p}


def test_verdicts_say_no_difference_when_the_interval_holds_zero():
    assert demo_loop.verdict(row(diff=-0.02, low=-0.1, high=0.05, p=0.6)) == (
        "CER: no difference shown (-0.020, 95% CI [-0.100, +0.050], p = 0.600, 6 prompts): "
        "the interval includes 0.")
    assert demo_loop.verdict(row()) == (
        "CER: demo-dpo is higher than demo-base (+0.100, 95% CI [+0.050, +0.150], p = 0.010, "
        "6 prompts): worse on these prompts.")
    assert demo_loop.verdict(row("ssim", better="higher")).endswith("better on these prompts.")
    assert demo_loop.verdict(row(diff=-0.1, low=-0.15, high=-0.05)).startswith(
        "CER: demo-dpo is lower than demo-base")
    # an interval that excludes 0 over 2 prompts, with a test that cannot reject
    assert demo_loop.verdict(row("ssim", diff=-0.062, low=-0.108, high=-0.015, p=0.499, n=2,
                                 better="higher")) == (
        "speaker similarity: no difference shown (-0.062, 95% CI [-0.108, -0.015], p = 0.499, "
        "2 prompts): p >= 0.05; over 2 prompts the interval alone is not evidence.")


@pytest.mark.slow
def test_the_loop_step_generates_scores_and_compares_then_a_rerun_writes_nothing(tmp_path):
    import torch

    from ttspo.trainer.policy.base import load_policy

    steps = [s for s in demo_api.STEPS if s[0] in ("corpus", "prompts", "ingest", "build")]
    lines: list[str] = []
    demo = demo_api.run_demo(tmp_path / "st", echo=lines.append, steps=steps)
    for seed, key in ((0, "init_checkpoint"), (1, "checkpoint")):  # two real policies
        torch.manual_seed(seed)
        path = tmp_path / f"{key}.pt"
        load_policy("tiny", config=MODEL).save(str(path))
        demo.facts[key] = str(path)
    lines.clear()
    small = {"prompts": 3, "samples": 1, "max_steps": 8}  # the demo's 6 x 2 x 40, smaller
    demo_loop.step_loop(demo, **small)
    counts = demo.store.open("generations").to_table(columns=["run"]).column("run").to_pylist()
    assert counts.count("demo-base") == counts.count("demo-dpo") == 3
    text = "\n".join(lines)
    assert "demo-base: 3 held-out prompts lacked samples, 3 generations written" in text
    for name in ("CER", "WER", "speaker similarity"):
        assert sum(line.startswith(f"{name}: ") for line in lines) == 1, name
    version = demo.store.version("generations")
    lines.clear()
    demo_loop.step_loop(demo, **small)
    assert demo.store.version("generations") == version
    assert "demo-dpo: 0 held-out prompts lacked samples, 0 generations written (all there " \
           "already; nothing written)" in "\n".join(lines)


def test_the_demo_closes_the_loop_last():
    # after training, and after the rebuild (which reads all of generations)
    assert [n for n, _ in demo_api.STEPS][-1] == "loop"
    assert f'"{demo_sets.SET}@{demo_sets.TAG}"' in demo_loop.held_out(6)
