"""`ttspo diff`: sets by pair id, generations by Lance row versions or by id."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from ttspo.builder.sets.build import build_set
from ttspo.builder.cli.main import cli
from ttspo.builder.sets.diff import diff
from ttspo.builder.core.errors import InputError
from test_build_helpers import BASIC, add_run, make_store


@pytest.fixture
def store(tmp_path):
    s = make_store(tmp_path / "store", BASIC)
    build_set(s, "pareto", "prefs")  # 5 pairs, all train
    build_set(s, "pareto", "prefs", {"cer_threshold": 0.008})  # drops r:4>r:7 (chosen CER 0.01)
    return s


def test_a_rethreshold_removes_pairs(store):
    d = diff(store, "prefs@1", "prefs@2")
    assert d["kind"] == "set"
    assert d["pairs"] == {"added": 0, "removed": 1, "kept": 4, "changed_split": 0}
    assert d["by_split"] == [
        {"split": "train", "record_type": "challenging", "added": 0, "removed": 0, "kept": 3},
        {"split": "train", "record_type": "regular", "added": 0, "removed": 1, "kept": 1}]
    assert d["changes"] == {"param cer_threshold": [0.02, 0.008]}
    chosen_cer = next(m for m in d["metrics"] if m["metric"] == "chosen_cer")
    assert chosen_cer["a_mean"] == pytest.approx(0.015 / 5)
    assert chosen_cer["b_mean"] == pytest.approx(0.005 / 4)
    assert chosen_cer["a_median"] == 0.0 and chosen_cer["b_median"] == 0.0


def test_pairs_moving_to_val_count_per_split(store):
    build_set(store, "pareto", "prefs", {"val_size": 2, "cer_threshold": 0.008})
    d = diff(store, "prefs@2", "prefs@3")
    assert d["pairs"] == {"added": 0, "removed": 0, "kept": 4, "changed_split": 2}
    moved = {(r["split"], r["record_type"]): (r["added"], r["removed"], r["kept"]) for r in d["by_split"]}
    assert sum(a for a, _, _ in moved.values()) == 2 and sum(r for _, r, _ in moved.values()) == 2
    assert sum(a for (split, _), (a, _, _) in moved.items() if split == "val") == 2
    assert d["changes"] == {"param val_size": [0, 2]}


def test_tags_and_different_sets_and_recipes(store):
    store.tag("prefs", 1, "v1")
    build_set(store, "best_worst", "bw")
    d = diff(store, "prefs@v1", "bw")
    assert d["a"]["ref"] == "prefs@1" and d["b"]["ref"] == "bw@1"
    assert set(d["changes"]) == {"recipe", "recipe_sha256", "param num_chosen"}
    assert d["changes"]["recipe"] == ["pareto", "best_worst"]
    assert d["pairs"]["added"] + d["pairs"]["kept"] == 5


def test_generations_diff_uses_lance_row_versions_when_they_fit(store):
    add_run(store, BASIC[:2], "more", first_group=10)  # generations@2: 8 rows added
    ds = store.open("generations")
    ds.update({"cer": "cer + 0.5"}, where="run = 'r' AND sample_index = 0")  # @3: 5 rows rescored
    store.open("generations").delete("run = 'r' AND sample_index = 3")  # @4: 5 rows removed
    forward = diff(store, "generations@1", "generations@4")
    assert forward["method"] == "lance-delta"
    assert forward["rows"] == {"added": 8, "removed": 5, "kept": 15, "updated": 5}
    assert forward["by_run"] == [
        {"run": "more", "added": 8, "removed": 0, "kept": 0, "updated": 0},
        {"run": "r", "added": 0, "removed": 5, "kept": 15, "updated": 5}]
    backward = diff(store, "generations@4", "generations@1")
    assert backward["method"] == "join"
    assert backward["rows"] == {"added": 5, "removed": 8, "kept": 15, "updated": 5}
    cer = next(m for m in forward["metrics"] if m["metric"] == "cer")
    assert cer["b_mean"] > cer["a_mean"]


def test_a_restore_in_between_falls_back_to_the_join(store):
    add_run(store, BASIC[:2], "more", first_group=10)
    store.restore("generations", 1, {"command": "restore"})
    d = diff(store, "generations@2", "generations@3")
    assert d["method"] == "join"
    assert d["rows"] == {"added": 0, "removed": 8, "kept": 20, "updated": 0}


def test_a_set_and_generations_do_not_compare(store):
    with pytest.raises(InputError, match="cannot diff prefs@1 with generations"):
        diff(store, "prefs@1", "generations")


def test_cli_diff_text_and_json(store):
    runner = CliRunner()
    result = runner.invoke(cli, ["--store", str(store.root), "diff", "prefs@1", "prefs@2"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[:8] == [
        "prefs@1 -> prefs@2 (set)",
        "changes:",
        "  param cer_threshold: 0.02 -> 0.008",
        "pairs: 0 added, 1 removed, 4 kept (0 changed split)",
        "",
        "split  record_type  added  removed  kept",
        "-----  -----------  -----  -------  ----",
        "train  challenging  0      0        3"]
    assert lines[8] == "train  regular      0      1        1"
    assert lines[10].split() == ["metric", "a_mean", "b_mean", "mean_shift", "a_median", "b_median"]
    assert [line.split()[0] for line in lines[12:]] == [
        "chosen_cer", "rejected_cer", "chosen_ssim", "rejected_ssim", "rejected_reward",
        "cer_delta", "sim_delta"]
    result = runner.invoke(cli, ["--store", str(store.root), "diff", "prefs@1", "prefs@2",
                                 "--format", "json"])
    assert json.loads(result.output)["pairs"] == {"added": 0, "removed": 1, "kept": 4, "changed_split": 0}
    result = runner.invoke(cli, ["--store", str(store.root), "diff", "prefs@1", "prefs@9"])
    assert (result.exit_code, result.output) == (1, "Error: table 'prefs' has no version or tag '9'\n")


def test_the_same_pairs_in_another_order_shift_by_exactly_zero(tmp_path):
    # Sums of floats depend on their order; a different seed reorders the pairs.
    groups = [[(0.0, 0.9 - g / 97), (0.1 + g / 89, 0.5), (0.3 + g / 83, 0.2 + g / 101)] for g in range(60)]
    s = make_store(tmp_path / "store", groups)
    build_set(s, "pareto", "prefs", {"seed": 1, "cer_threshold": 0.5})
    build_set(s, "pareto", "prefs", {"seed": 2, "cer_threshold": 0.5})
    d = diff(s, "prefs@1", "prefs@2")
    assert d["pairs"] == {"added": 0, "removed": 0, "kept": 39, "changed_split": 0}
    assert [(m["metric"], m["mean_shift"]) for m in d["metrics"]] == [
        (m["metric"], 0.0) for m in d["metrics"]]
