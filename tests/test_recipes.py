"""Golden cases for the built-in recipes, written by hand (nemo-formats.md section 3).

Each case is a tiny `generations` table in a real Lance store; the expected pairs
were worked out on paper from NeMo's rules with its defects fixed.
"""

from __future__ import annotations

import math

import pytest

from ttspo.builder.sets import recipes
from ttspo.builder.core.errors import InputError, QueryError
from test_build_helpers import BASIC, add_run, make_store


def run(tmp_path, groups, recipe="pareto", **params):
    store = make_store(tmp_path / "store", groups)
    out = recipes.run_recipe(store, recipes.load_recipe(recipe), params)
    return out.table.to_pylist()


def ids(rows):
    return sorted(r["pair_id"] for r in rows)


def phi(z):
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


# ------------------------------------------------------------ Pareto ties
def test_two_points_tied_exactly_share_the_first_front(tmp_path):
    # s0 and s1 are equal: NeMo's loop never ends here; they share front 1,
    # the sample index orders them, s2 and s3 are fronts 2 and 3.
    group = [(0.0, 0.9), (0.0, 0.9), (0.1, 0.5), (0.2, 0.4)]
    assert ids(run(tmp_path, [group])) == ["r:0>r:3"]


def test_tie_on_the_worst_front_takes_the_higher_sample_index(tmp_path):
    group = [(0.0, 0.9), (0.3, 0.2), (0.3, 0.2)]
    assert ids(run(tmp_path, [group])) == ["r:0>r:2"]


def test_whole_group_tied_gives_no_pair_and_does_not_hang(tmp_path):
    tied = [(0.05, 0.7)] * 6
    rows = run(tmp_path, [tied, BASIC[0]])
    assert ids(rows) == ["r:6>r:9"]  # only the second group (lines 6..9)


def test_num_chosen_2_with_ties_pairs_both_tied_best(tmp_path):
    group = [(0.0, 0.9), (0.0, 0.9), (0.1, 0.5), (0.2, 0.4)]
    assert ids(run(tmp_path, [group], num_chosen=2)) == ["r:0>r:2", "r:0>r:3", "r:1>r:2", "r:1>r:3"]


# ---------------------------------------------------------- group skipping
def test_a_group_with_an_invalid_row_is_skipped_entirely(tmp_path):
    bad = [(0.0, 0.9), (0.1, 0.5, 5.0, True), (0.3, 0.2)]
    assert ids(run(tmp_path, [bad, BASIC[0]])) == ["r:3>r:6"]


def test_a_group_with_a_missing_or_infinite_metric_is_skipped(tmp_path):
    missing = [(0.0, 0.9), (None, 0.5), (0.3, 0.2)]
    infinite = [(0.0, 0.9), (float("inf"), 0.5), (0.3, 0.2)]
    assert ids(run(tmp_path, [missing, infinite, BASIC[0]])) == ["r:6>r:9"]


def test_a_group_of_one_gives_no_pair(tmp_path):
    assert run(tmp_path, [[(0.0, 0.9)]], num_chosen=2) == []


# -------------------------------------------------------------- num_chosen
def test_num_chosen_2_computes_deltas_per_pair(tmp_path):
    # Fronts 1..4 in sample order. NeMo would give both pairs with rejected s3 the
    # deltas of s1 > s3 (the last chosen it met); here each pair has its own.
    group = [(0.0, 0.9), (0.01, 0.85), (0.2, 0.5), (0.3, 0.3)]
    rows = {r["pair_id"]: r for r in run(tmp_path, [group], num_chosen=2)}
    assert sorted(rows) == ["r:0>r:2", "r:0>r:3", "r:1>r:2", "r:1>r:3"]
    points = dict(enumerate(group))
    for pid, row in rows.items():
        c, r = (int(x.split(":")[1]) for x in pid.split(">"))
        assert row["cer_delta"] == points[r][0] - points[c][0]
        assert row["sim_delta"] == points[c][1] - points[r][1]


def test_num_chosen_2_drops_a_rejected_better_on_ssim_and_the_same_generation(tmp_path):
    # s0 and s1 share front 1 (s1: worse CER, better SSIM), s2 is front 2.
    # chosen {s0, s1} x rejected {s2, s1}: s0>s1 has a rejected with better SSIM,
    # s1>s1 is one generation: both dropped.
    group = [(0.0, 0.9), (0.05, 0.95), (0.2, 0.3)]
    assert ids(run(tmp_path, [group], num_chosen=2, cer_threshold=0.1)) == ["r:0>r:2", "r:1>r:2"]


def test_num_chosen_must_be_1_or_2(tmp_path):
    with pytest.raises(QueryError, match="recipe pareto: num_chosen must be 1 or 2, not 3"):
        run(tmp_path, BASIC, num_chosen=3)


# --------------------------------------------------------- filter bounds
@pytest.mark.parametrize("chosen_cer, kept", [(0.02, False), (0.019999, True), (0.0, True)])
def test_cer_threshold_is_strict(tmp_path, chosen_cer, kept):
    rows = run(tmp_path, [[(chosen_cer, 0.9), (0.3, 0.2)]], cer_threshold=0.02)
    assert len(rows) == (1 if kept else 0)


@pytest.mark.parametrize("durations, kept", [
    ((1.5, 19.0), True), ((19.0, 1.5), True), ((1.49, 5.0), False), ((5.0, 19.01), False),
    ((5.0, None), False)])
def test_durations_at_the_limits(tmp_path, durations, kept):
    group = [(0.0, 0.9, durations[0]), (0.3, 0.2, durations[1])]
    assert len(run(tmp_path, [group])) == (1 if kept else 0)


def test_duration_limits_are_parameters(tmp_path):
    group = [(0.0, 0.9, 1.0), (0.3, 0.2, 25.0)]
    assert len(run(tmp_path, [group], min_duration=1.0, max_duration=25.0)) == 1
    assert len(run(tmp_path / "b", [group], min_duration=1.01, max_duration=25.0)) == 0


# ----------------------------------------------------------------- rewards
def test_rejected_reward_is_one_minus_two_normal_cdfs_of_z_scores(tmp_path):
    groups = [[(0.0, 0.9), (0.1, 0.8)], [(0.0, 0.9), (0.2, 0.8)], [(0.0, 0.9), (0.6, 0.5)]]
    rows = {r["pair_id"]: r for r in run(tmp_path, groups)}
    deltas = {"r:0>r:1": (0.1 - 0.0, 0.9 - 0.8), "r:2>r:3": (0.2 - 0.0, 0.9 - 0.8),
              "r:4>r:5": (0.6 - 0.0, 0.9 - 0.5)}
    stats = []
    for k in (0, 1):
        values = [d[k] for d in deltas.values()]
        mean = sum(values) / 3
        stats.append((mean, math.sqrt(sum((v - mean) ** 2 for v in values) / 3)))
    for pid, (cd, sd) in deltas.items():
        expected = 1 - phi((cd - stats[0][0]) / stats[0][1]) - phi((sd - stats[1][0]) / stats[1][1])
        assert rows[pid]["rejected_reward"] == pytest.approx(expected, abs=1e-6)
        assert rows[pid]["chosen_reward"] == 1.0
        assert rows[pid]["cer_delta"] == cd and rows[pid]["sim_delta"] == sd


def test_zero_std_gives_z_zero_not_a_division_by_zero(tmp_path):
    # Two pairs with identical deltas: both standard deviations are 0.
    rows = run(tmp_path, [[(0.0, 0.9), (0.1, 0.5)], [(0.0, 0.9), (0.1, 0.5)]])
    assert len(rows) == 2
    for row in rows:
        assert row["rejected_reward"] == pytest.approx(0.0, abs=1e-6)  # 1 - 2 * Phi(0)
        assert row["rejected_reward"] < 1


def test_a_single_pair_has_zero_std_too(tmp_path):
    (row,) = run(tmp_path, [BASIC[0]])
    assert row["rejected_reward"] == pytest.approx(0.0, abs=1e-6)


# -------------------------------------------------------- split and shuffle
def test_odd_val_size_takes_whole_pairs(tmp_path):
    rows = run(tmp_path, BASIC, val_size=3)
    assert len(rows) == 5
    assert [r["split"] for r in rows] == ["val"] * 3 + ["train"] * 2
    assert [r["position"] for r in rows] == [0, 1, 2, 3, 4]


def test_val_size_larger_than_the_set_puts_everything_in_val(tmp_path):
    assert {r["split"] for r in run(tmp_path, BASIC, val_size=50)} == {"val"}


def two_runs_of_the_same_prompts(tmp_path):
    store = make_store(tmp_path / "store", BASIC)
    add_run(store, BASIC, "s")  # prompts p0..p4 again: each prompt has 2 groups, 2 pairs
    return store


@pytest.mark.parametrize("val_size, val_pairs", [(4, 4), (3, 2), (1, 0), (10, 10)])
def test_val_by_prompt_keeps_each_prompt_on_one_side(tmp_path, val_size, val_pairs):
    store = two_runs_of_the_same_prompts(tmp_path)
    rows = recipes.run_recipe(store, recipes.load_recipe("pareto"),
                              {"val_size": val_size, "val_by": "prompt"}).table.to_pylist()
    assert len(rows) == 10
    val = {r["prompt_id"] for r in rows if r["split"] == "val"}
    train = {r["prompt_id"] for r in rows if r["split"] == "train"}
    assert not val & train
    # whole prompts while they fit in val_size: val is a prefix of the positions
    assert [r["split"] for r in rows] == ["val"] * val_pairs + ["train"] * (10 - val_pairs)
    assert [r["position"] for r in rows] == list(range(10))


def test_val_by_group_keeps_each_group_on_one_side(tmp_path):
    store = make_store(tmp_path / "store", BASIC)
    rows = recipes.run_recipe(store, recipes.load_recipe("pareto"),
                              {"val_size": 5, "val_by": "group", "num_chosen": 2}).table.to_pylist()
    sides = {}
    for r in rows:
        sides.setdefault(r["group_id"], set()).add(r["split"])
    assert all(len(s) == 1 for s in sides.values())
    assert 0 < sum(r["split"] == "val" for r in rows) <= 5


def test_val_by_pair_is_the_plain_shuffle(tmp_path):
    store = two_runs_of_the_same_prompts(tmp_path)
    recipe = recipes.load_recipe("pareto")
    by_pair = recipes.run_recipe(store, recipe, {"val_size": 3, "val_by": "pair"}).table
    default = recipes.run_recipe(store, recipe, {"val_size": 3}).table
    assert by_pair.equals(default)
    assert by_pair.column("split").to_pylist() == ["val"] * 3 + ["train"] * 7


def test_val_by_must_name_a_unit(tmp_path):
    with pytest.raises(QueryError, match="recipe pareto: val_by must be pair, group or prompt, not 'prompts'"):
        run(tmp_path, BASIC, val_by="prompts")


def test_the_shuffle_is_seeded(tmp_path):
    store = make_store(tmp_path / "s", BASIC)
    recipe = recipes.load_recipe("pareto")
    order = lambda seed: [r["pair_id"] for r in  # noqa: E731
                          recipes.run_recipe(store, recipe, {"seed": seed}).table.to_pylist()]
    assert order(7) == order(7)
    assert order(7) != order(8)
    assert sorted(order(7)) == sorted(order(8))


# -------------------------------------------------------------- best_worst
def test_best_worst_lowest_cer_against_highest_cer(tmp_path):
    groups = [
        [(0.0, 0.6), (0.0, 0.9), (0.2, 0.95), (0.2, 0.7)],  # SSIM breaks both CER ties
        [(0.0, 0.5), (0.1, 0.9)],  # rejected has the better SSIM: still a pair
        [(0.05, 0.7)] * 3,  # all equal: no preference
        [(0.0, 0.9), (0.0, 0.5)],  # equal CER, lower SSIM rejected
    ]
    rows = {r["pair_id"]: r for r in run(tmp_path, groups, recipe="best_worst")}
    assert sorted(rows) == ["r:1>r:3", "r:4>r:5", "r:9>r:10"]
    assert rows["r:4>r:5"]["sim_delta"] == pytest.approx(-0.4)


def test_pareto_drops_the_pair_best_worst_keeps(tmp_path):
    assert run(tmp_path, [[(0.0, 0.5), (0.1, 0.9)]]) == []


# --------------------------------------------------------------- loading
def test_builtin_recipes_and_their_declared_parameters():
    assert recipes.builtin_names() == ["best_worst", "pareto", "refine"]
    pareto = recipes.load_recipe("pareto")
    assert {n: p.default for n, p in pareto.params.items()} == {
        "cer_threshold": 0.02, "min_duration": 1.5, "max_duration": 19.0,
        "num_chosen": 1, "max_trailing_silence": -1.0, "max_leading_silence": -1.0,
        "val_size": 0, "val_by": "pair", "seed": 0}
    assert pareto.source == "sql/pareto.sql"
    assert len(pareto.sha256) == 64


def test_parameters_are_typed_like_their_defaults():
    pareto = recipes.load_recipe("pareto")
    values = recipes.resolve_params(pareto, recipes.parse_assignments(
        ["cer_threshold=0.01", "num_chosen=2", "seed=3"]))
    assert values["cer_threshold"] == 0.01 and values["num_chosen"] == 2 and values["seed"] == 3
    with pytest.raises(InputError, match=r"--param num_chosen=two is not a int"):
        recipes.resolve_params(pareto, {"num_chosen": "two"})
    with pytest.raises(InputError, match="recipe pareto has no parameter cer"):
        recipes.resolve_params(pareto, {"cer": "0.1"})
    with pytest.raises(InputError, match="--param 'cer_threshold' is not NAME=VALUE"):
        recipes.parse_assignments(["cer_threshold"])


def test_unknown_recipe_names_and_paths(tmp_path):
    with pytest.raises(InputError, match="no built-in recipe 'paretto'"):
        recipes.load_recipe("paretto")
    with pytest.raises(InputError, match="recipe file .*nope.sql not found"):
        recipes.load_recipe(str(tmp_path / "nope.sql"))
