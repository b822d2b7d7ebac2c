"""User recipes: the output contract, its completion and every invariant check."""

from __future__ import annotations

import pytest

from ttspo.builder.sets import pair_contract, recipes
from ttspo.builder.sets.build import build_set
from ttspo.builder.core.errors import InputError, QueryError, RecipeError
from test_build_helpers import BASIC, add_run, make_store

GOOD = """-- my recipe: sample 0 against sample 3 of each group
-- param margin = 0.0  minimum CER margin
SELECT c.prompt_id, c.group_id, c.generation_id AS chosen_id, r.generation_id AS rejected_id,
       1.0 AS chosen_reward, 0.0 AS rejected_reward, 'train' AS split
FROM generations c JOIN generations r ON c.group_id = r.group_id
WHERE c.sample_index = 0 AND r.sample_index = 3 AND r.cer - c.cer > $margin
ORDER BY c.group_id
"""
CONTRACT = "recipe bad.sql broke the preference-set contract, nothing written: "


@pytest.fixture
def store(tmp_path):
    return make_store(tmp_path / "store", BASIC)


def recipe_file(tmp_path, sql, name="bad.sql"):
    path = tmp_path / name
    path.write_text(sql)
    return recipes.load_recipe(str(path))


def test_a_user_recipe_is_completed_from_generations(store, tmp_path):
    out = recipes.run_recipe(store, recipe_file(tmp_path, GOOD, "good.sql"))
    rows = out.table.to_pylist()
    assert [r["pair_id"] for r in rows] == [f"r:{4 * g}>r:{4 * g + 3}" for g in range(5)]
    assert [r["position"] for r in rows] == [0, 1, 2, 3, 4]  # the recipe's row order
    first = rows[0]
    assert (first["run"], first["record_type"]) == ("r", "challenging")
    assert (first["chosen_cer"], first["rejected_cer"]) == (0.0, 0.3)
    assert (first["chosen_ssim"], first["rejected_ssim"]) == (0.9, 0.4)
    assert first["cer_delta"] == 0.3 and first["sim_delta"] == 0.9 - 0.4
    assert out.params == {"margin": 0.0} and out.inputs == {"generations": 1}
    assert out.table.column_names == pair_contract.ALLOWED  # completed, in the schema's order


def test_header_defaults_can_be_overridden(store, tmp_path):
    recipe = recipe_file(tmp_path, GOOD, "good.sql")
    assert recipe.params["margin"].description == "minimum CER margin"
    out = recipes.run_recipe(store, recipe, {"margin": "0.35"})
    assert [r["pair_id"] for r in out.table.to_pylist()] == ["r:4>r:7", "r:12>r:15"]


def test_an_undeclared_parameter_must_be_given(store, tmp_path):
    recipe = recipe_file(tmp_path, GOOD.replace("-- param margin = 0.0  minimum CER margin\n", ""))
    with pytest.raises(InputError, match=r"^recipe bad.sql needs --param margin=VALUE \(no default\)$"):
        recipes.run_recipe(store, recipe)
    assert recipes.run_recipe(store, recipe, {"margin": "0.35"}).table.num_rows == 2


BROKEN = [
    (GOOD.replace("1.0 AS chosen_reward", "0.5 AS chosen_reward"),
     "5 pair(s) have chosen_reward != 1 (first: r:0>r:3)"),
    (GOOD.replace("0.0 AS rejected_reward", "1.0 AS rejected_reward"),
     "5 pair(s) have rejected_reward >= 1 (or NaN) (first: r:0>r:3)"),
    (GOOD.replace("r.sample_index = 3 AND r.cer - c.cer > $margin", "r.sample_index = 0"),
     "5 pair(s) have the same generation on both sides (first: r:0>r:0)"),
    (GOOD.replace("c.sample_index = 0 AND r.sample_index = 3", "c.sample_index = 3 AND r.sample_index = 0")
         .replace("r.cer - c.cer > $margin", "c.cer - r.cer > $margin"),
     "5 pair(s) have a rejected better than its chosen on both CER and SSIM (first: r:3>r:0)"),
    (GOOD.replace("'train' AS split", "CASE WHEN c.group_id = 'r:g0' THEN 'test' ELSE 'train' END AS split"),
     "1 pair(s) have a split other than 'train' or 'val' (first: r:0>r:3)"),
    (GOOD.replace("r.generation_id AS rejected_id", "'nope' AS rejected_id"),
     "5 pair(s) name a rejected_id that is not in generations (first: r:0>nope)"),
    (GOOD.replace("ON c.group_id = r.group_id", "ON r.group_index = c.group_index + 1"),
     "4 pair(s) pair generations of different prompts (or not of prompt_id) (first: r:0>r:7)"),
    (GOOD.replace("'train' AS split", "'train' AS split, c.cer + 1 AS chosen_cer"),
     "5 pair(s) have a chosen_cer that differs from generations (first: r:0>r:3)"),
    (GOOD.replace("ORDER BY c.group_id", "") + "UNION ALL " + GOOD.replace("'train'", "'val'")
         .replace("-- param margin = 0.0  minimum CER margin\n", "").replace("ORDER BY c.group_id", ""),
     "5 pair(s) appear in both splits"),
    (GOOD.replace("ORDER BY c.group_id", "") + "UNION ALL " + GOOD
         .replace("-- param margin = 0.0  minimum CER margin\n", "").replace("ORDER BY c.group_id", ""),
     "5 pair(s) appear more than once"),
    (GOOD.replace("'train' AS split", "'train' AS split, 7 AS position"),
     "1 position(s) are shared by several pairs (first: 7)"),
]


@pytest.mark.parametrize("sql, problem", BROKEN)
def test_broken_recipes_are_refused_and_nothing_is_written(store, tmp_path, sql, problem):
    recipe = recipe_file(tmp_path, sql)
    with pytest.raises(RecipeError) as err:
        build_set(store, recipe, "myset")
    assert str(err.value).startswith(CONTRACT + problem)
    assert not store.exists("myset")


def test_a_refused_rebuild_leaves_the_set_at_its_version(store, tmp_path):
    assert build_set(store, recipe_file(tmp_path, GOOD, "good.sql"), "myset").version == 1
    with pytest.raises(RecipeError):
        build_set(store, recipe_file(tmp_path, BROKEN[0][0]), "myset")
    assert store.version("myset") == 1


def test_unknown_and_missing_columns(store, tmp_path):
    unknown = recipe_file(tmp_path, GOOD.replace("'train' AS split", "'train' AS split, c.text AS foo"))
    with pytest.raises(RecipeError, match=r"^recipe bad.sql returned unknown column\(s\) foo \(allowed: pair_id, "):
        recipes.run_recipe(store, unknown)
    missing = recipe_file(tmp_path, GOOD.replace(", 'train' AS split", ""))
    with pytest.raises(RecipeError, match=r"^recipe bad.sql did not return required column\(s\) split$"):
        recipes.run_recipe(store, missing)


def test_sql_errors_and_writes_are_reported(store, tmp_path):
    with pytest.raises(QueryError, match="recipe bad.sql: .*nonexistent"):
        recipes.run_recipe(store, recipe_file(tmp_path, "SELECT * FROM nonexistent"))
    with pytest.raises(QueryError, match="only SELECT queries are allowed"):
        recipes.run_recipe(store, recipe_file(tmp_path, "DELETE FROM generations"))


def test_runs_restrict_what_the_recipe_sees(store, tmp_path):
    add_run(store, BASIC[:2], "other", first_group=10)
    recipe = recipes.load_recipe("pareto")
    both = recipes.run_recipe(store, recipe).table
    only = recipes.run_recipe(store, recipe, runs=["other"]).table
    assert both.num_rows == 7
    assert only.column("pair_id").to_pylist() and set(only.column("run").to_pylist()) == {"other"}
    assert only.num_rows == 2
    with pytest.raises(InputError, match=r"^no run nope in generations@2 \(runs: other, r\)$"):
        recipes.run_recipe(store, recipe, runs=["nope"])


def test_columns_of_the_wrong_type_are_refused(store, tmp_path):
    recipe = recipe_file(tmp_path, GOOD.replace("1.0 AS chosen_reward", "'one' AS chosen_reward"))
    with pytest.raises(RecipeError, match=r"^recipe bad.sql returned columns of the wrong type for a "
                                          r"preference set \("):
        recipes.run_recipe(store, recipe)
