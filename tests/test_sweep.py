"""`ttspo sweep`: per-value counts and margins, equal to what build would write."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from ttspo.builder.sets.build import build_set
from ttspo.builder.cli.main import cli
from ttspo.builder.core.errors import InputError
from ttspo.builder.sets.sweep import sweep
from test_build_helpers import BASIC, make_store


@pytest.fixture
def store(tmp_path):
    return make_store(tmp_path / "store", BASIC)


def test_each_value_reports_what_a_build_would_write(store):
    rows = sweep(store, "pareto", "cer_threshold", ["0.001", "0.008", "0.02"],
                 params={"val_size": "1"})
    assert [r["cer_threshold"] for r in rows] == [0.001, 0.008, 0.02]
    assert [r["pairs"] for r in rows] == [3, 4, 5]
    assert [(r["train"], r["val"]) for r in rows] == [(2, 1), (3, 1), (4, 1)]
    built = build_set(store, "pareto", "prefs", {"cer_threshold": 0.008, "val_size": 1})
    assert built.record.counts == {k: rows[1][k] for k in ("pairs", "train", "val", "groups", "prompts")}
    assert not store.exists("sweep") and store.version("prefs") == 1  # sweep wrote nothing


def test_margins_are_those_of_the_surviving_pairs(store):
    (row,) = sweep(store, "pareto", "cer_threshold", ["0.001"])
    # survivors: groups 0, 2, 4 (chosen CER 0): CER margins 0.3, 0.25, 0.09
    assert row["cer_margin_min"] == 0.09 and row["cer_margin_median"] == 0.25
    assert row["cer_margin_mean"] == pytest.approx((0.3 + 0.25 + 0.09) / 3)
    assert row["sim_margin_min"] == pytest.approx(0.38)  # 0.88 - 0.50
    assert row["chosen_cer_mean"] == 0.0


def test_a_value_nothing_survives_gives_zero_pairs(store):
    (row,) = sweep(store, "pareto", "cer_threshold", ["0.0"])
    assert row["pairs"] == 0 and row["cer_margin_median"] is None


def test_sweep_errors(store):
    with pytest.raises(InputError, match="recipe pareto has no parameter cer"):
        sweep(store, "pareto", "cer", ["0.1"])
    with pytest.raises(InputError, match="--param cer_threshold is the swept parameter"):
        sweep(store, "pareto", "cer_threshold", ["0.1"], params={"cer_threshold": "0.2"})


def test_cli_sweep_table_plot_and_errors(store, tmp_path):
    runner = CliRunner()
    base = ["--store", str(store.root), "sweep", "pareto"]
    plot = tmp_path / "sweep.png"
    result = runner.invoke(cli, base + ["--param", "cer_threshold=0.001,0.02", "--param", "seed=2",
                                        "--plot", str(plot), "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output.split("wrote plot")[0])
    assert [(r["cer_threshold"], r["pairs"], r["groups"]) for r in rows] == [(0.001, 3, 3), (0.02, 5, 5)]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = runner.invoke(cli, base + ["--param", "seed=2"])
    assert (result.exit_code, result.output) == (
        1, "Error: give exactly one --param NAME=V1,V2,... to sweep (got 0 lists)\n")
    result = runner.invoke(cli, base + ["--param", "seed=1,2", "--param", "val_size=1,2"])
    assert (result.exit_code, result.output) == (
        1, "Error: give exactly one --param NAME=V1,V2,... to sweep (got 2 lists)\n")
