"""`ttspo compare`, the compare_runs SQL macro and the Python API, on hand-made runs
whose differences are known."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner

from ttspo.builder.cli.main import cli
from ttspo.builder.core.errors import InputError
from ttspo.builder.core.schemas import GEN, GENERATIONS_SCHEMA
from ttspo.builder.core.store import Store, make_lineage
from ttspo.builder.analysis.compare import compare_runs, prompt_differences


def rows_for(run: str, values: dict[str, list[float]], *, metric: str = GEN.cer,
             ssim: dict[str, list[float]] | None = None) -> list[dict]:
    """One row per sample: values maps prompt id -> that prompt's samples' METRIC.

    Prompt pN is challenging when N is even, and has a text context when N % 3 == 0."""
    rows = []
    for prompt, samples in values.items():
        n = int(prompt[1:])
        for i, v in enumerate(samples):
            line = len(rows)
            rows.append({
                GEN.generation_id: f"{run}:{line}", GEN.run: run, GEN.prompt_id: prompt,
                GEN.group_id: f"{run}:g{n}", GEN.group_index: n, GEN.sample_index: i,
                GEN.text: f"text {n}", GEN.invalid: False,
                GEN.record_type: "challenging" if n % 2 == 0 else "regular",
                GEN.context_text: "a calm voice" if n % 3 == 0 else None,
                metric: v,
                GEN.ssim: None if ssim is None else ssim[prompt][i],
            })
    return rows


def write_runs(path, *runs: list[dict]) -> Store:
    store = Store(path)
    for rows in runs:
        store.write("generations", pa.Table.from_pylist(rows, schema=GENERATIONS_SCHEMA),
                    GENERATIONS_SCHEMA, make_lineage("test", {}))
    return store


def shifted_runs(tmp_path, shift, noise_sd=0.02, prompts=80, seed=0) -> Store:
    """Run a: 3 samples per prompt around a per-prompt level; run b: that level + shift
    + noise, 2 samples. The true paired difference is SHIFT."""
    rng = np.random.default_rng(seed)
    level = rng.uniform(0.05, 0.5, prompts)
    noise = rng.normal(0.0, noise_sd, prompts)
    a = {f"p{i}": [level[i] - 0.01, level[i], level[i] + 0.01] for i in range(prompts)}
    b = {f"p{i}": [level[i] + shift + noise[i] - 0.03, level[i] + shift + noise[i] + 0.03]
         for i in range(prompts)}
    return write_runs(tmp_path, rows_for("a", a), rows_for("b", b))


def overall(frame, metric="cer"):
    return frame.filter((frame["metric"] == metric) & (frame["breakdown"] == "all")).to_dicts()[0]


def test_a_known_difference_is_inside_a_narrow_interval(tmp_path):
    store = shifted_runs(tmp_path, shift=0.05)
    row = overall(compare_runs(store, ["a", "b"], seed=1))
    assert row["prompts"] == 80  # prompts, not the 240 + 160 samples
    assert row["ci_low"] < 0.05 < row["ci_high"]
    # independent resamples: the interval is as wide as the normal one, 2 * 1.96 * SE
    diffs = prompt_differences(store, ["a", "b"])["diff"].to_numpy()
    normal_width = 2 * 1.96 * diffs.std() / np.sqrt(len(diffs))
    assert row["ci_high"] - row["ci_low"] == pytest.approx(normal_width, rel=0.2)
    assert row["p_value"] == pytest.approx(1 / 1001)
    assert row["mean_b"] - row["mean_a"] == pytest.approx(row["diff"])


def test_a_null_difference_gives_an_interval_around_zero(tmp_path):
    store = shifted_runs(tmp_path, shift=0.0)
    row = overall(compare_runs(store, ["a", "b"], seed=1))
    assert row["ci_low"] < 0.0 < row["ci_high"]
    assert row["p_value"] > 0.05


def test_samples_are_averaged_per_prompt_before_the_difference(tmp_path):
    # p0: a has one sample 0.0, b has three (0.0, 0.0, 0.9) -> per-prompt diff 0.3;
    # p1: a 0.4, b 0.4 -> 0. A per-sample mean would say (0.9) / 4 - 0.2 = 0.025.
    store = write_runs(tmp_path, rows_for("a", {"p0": [0.0], "p1": [0.4]}),
                       rows_for("b", {"p0": [0.0, 0.0, 0.9], "p1": [0.4]}))
    row = overall(compare_runs(store, ["a", "b"]))
    assert row["diff"] == pytest.approx(0.15)
    per = prompt_differences(store, ["a", "b"]).sort("prompt_id").to_dicts()
    assert [(r["prompt_id"], r["samples_a"], r["samples_b"]) for r in per] == [("p0", 1, 3), ("p1", 1, 1)]
    assert per[0]["diff"] == pytest.approx(0.3)


def test_breakdowns_by_record_type_and_context(tmp_path):
    # challenging prompts (even) get 0.1 worse, regular ones stay the same
    a = {f"p{i}": [0.2] for i in range(12)}
    b = {f"p{i}": [0.3 if i % 2 == 0 else 0.2] for i in range(12)}
    store = write_runs(tmp_path, rows_for("a", a), rows_for("b", b))
    frame = compare_runs(store, ["a", "b"])
    got = {(r["breakdown"], r["slice"]): (r["prompts"], round(r["diff"], 9)) for r in frame.to_dicts()}
    assert got == {("all", "all"): (12, 0.05),
                   ("record_type", "challenging"): (6, 0.1), ("record_type", "regular"): (6, 0.0),
                   # text contexts: p0 p3 p6 p9 (two of them challenging)
                   ("context", "text"): (4, 0.05), ("context", "audio"): (8, 0.05)}


def test_only_shared_prompts_count_and_each_run_is_compared_with_the_first(tmp_path):
    a = {f"p{i}": [0.1 * i] for i in range(4)}
    b = {f"p{i}": [0.1 * i + 0.2] for i in range(2, 6)}  # shares p2, p3 with a
    c = {f"p{i}": [0.1 * i] for i in range(4)}
    store = write_runs(tmp_path, rows_for("a", a), rows_for("b", b), rows_for("c", c))
    frame = compare_runs(store, ["a", "b", "c"], metrics=["cer"])
    rows = frame.filter(frame["breakdown"] == "all").to_dicts()
    assert [(r["run_a"], r["run_b"], r["prompts"]) for r in rows] == [("a", "b", 2), ("a", "c", 4)]
    assert [round(r["diff"], 9) for r in rows] == [0.2, 0.0]


def test_sql_macro_and_python_api_give_the_same_numbers(tmp_path):
    store = shifted_runs(tmp_path, shift=0.03, prompts=30)
    api = compare_runs(store, ["a", "b"], seed=7, n_boot=300, n_perm=300).to_dicts()
    query = "SELECT * FROM compare_runs('generations', 'a', 'b', seed := 7, n_boot := 300, n_perm := 300)"
    result = CliRunner().invoke(cli, ["--store", str(tmp_path), "sql", query, "--format", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == api
    again = compare_runs(store, ["a", "b"], seed=7, n_boot=300, n_perm=300).to_dicts()
    other_seed = compare_runs(store, ["a", "b"], seed=8, n_boot=300, n_perm=300).to_dicts()
    assert again == api
    assert other_seed[0]["ci_low"] != api[0]["ci_low"] and other_seed[0]["diff"] == api[0]["diff"]


def test_cli_identical_runs_exact_json(tmp_path):
    write_runs(tmp_path, rows_for("a", {"p1": [0.25], "p2": [0.5]}),
               rows_for("b", {"p1": [0.25], "p2": [0.5]}))
    result = CliRunner().invoke(cli, ["--store", str(tmp_path), "compare", "a", "b",
                                      "--format", "json", "--bootstrap", "50"])
    assert result.exit_code == 0, result.output
    common = {"run_a": "a", "run_b": "b", "metric": "cer", "better": "lower", "mean_a": 0.375,
              "mean_b": 0.375, "diff": 0.0, "ci_low": 0.0, "ci_high": 0.0, "p_value": 1.0}
    assert json.loads(result.output) == [
        {**common, "breakdown": "all", "slice": "all", "prompts": 2},
        {**common, "breakdown": "record_type", "slice": "challenging", "prompts": 1, "mean_a": 0.5,
         "mean_b": 0.5},
        {**common, "breakdown": "record_type", "slice": "regular", "prompts": 1, "mean_a": 0.25,
         "mean_b": 0.25},
        {**common, "breakdown": "context", "slice": "audio", "prompts": 2},
    ]


@pytest.mark.slow
def test_cli_plot_writes_a_png(tmp_path):
    shifted_runs(tmp_path / "st", shift=0.05, prompts=10)
    png = tmp_path / "diff.png"
    result = CliRunner().invoke(cli, ["--store", str(tmp_path / "st"), "compare", "a", "b",
                                      "--format", "csv", "--plot", str(png)])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == ",".join(
        ["run_a", "run_b", "metric", "better", "breakdown", "slice", "prompts", "mean_a", "mean_b",
         "diff", "ci_low", "ci_high", "p_value"])
    assert result.stderr == f"per-prompt differences drawn to {png}\n"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("args, message", [
    (["a", "zz"], "Error: no run 'zz' in generations (runs: a, b, c)\n"),
    (["a", "c"], "Error: runs 'a' and 'c' share no prompt with a metric value in generations\n"),
    (["a", "b", "--metric", "pesq"],
     "Error: runs 'a' and 'b' share no prompt with a 'pesq' value in generations\n"),
    (["a", "a"], "Error: run 'a' is given twice\n"),
    (["a", "c", "--generations", "generations@2"],
     "Error: no run 'c' in generations@2 (runs: a, b)\n"),
])
def test_cli_bad_input_is_one_line_and_exit_1(tmp_path, args, message):
    write_runs(tmp_path, rows_for("a", {"p1": [0.2]}), rows_for("b", {"p1": [0.3]}),
               rows_for("c", {"p7": [0.3]}))
    result = CliRunner().invoke(cli, ["--store", str(tmp_path), "compare", *args])
    assert (result.exit_code, result.output) == (1, message)


def test_one_run_is_an_error(tmp_path):
    store = write_runs(tmp_path, rows_for("a", {"p1": [0.2]}))
    with pytest.raises(InputError, match="at least two runs"):
        compare_runs(store, ["a"])
