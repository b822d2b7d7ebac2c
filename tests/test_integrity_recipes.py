"""The recipe contract checks every copied id against the generations the recipe read,
and a pair is the unordered pair of its two generations."""

from __future__ import annotations

import pytest

from ttspo.builder.core.errors import RecipeError
from ttspo.builder.sets.build import build_set
from test_build_helpers import BASIC, make_store
from test_recipes_contract import CONTRACT, GOOD, recipe_file

SELECT = "SELECT c.prompt_id, c.group_id,"


@pytest.fixture
def store(tmp_path):
    return make_store(tmp_path / "store", BASIC)


@pytest.mark.parametrize("sql, problem", [
    (GOOD.replace(SELECT, "SELECT c.prompt_id, 'r:g99' AS group_id,"),
     "5 pair(s) have a group_id that is neither their chosen's nor their rejected's (first: r:0>r:3)"),
    (GOOD.replace("'train' AS split", "'train' AS split, 'ghost' AS run"),
     "5 pair(s) have a run that is neither their chosen's nor their rejected's (first: r:0>r:3)"),
    (GOOD.replace("'train' AS split", "'train' AS split, 'made-up' AS record_type"),
     "5 pair(s) have a record_type that is neither their chosen's nor their rejected's "
     "(first: r:0>r:3)"),
    (GOOD.replace("'train' AS split", "'train' AS split, CAST(NULL AS VARCHAR) AS run"),
     "5 pair(s) have a run that is neither their chosen's nor their rejected's (first: r:0>r:3)"),
])
def test_copied_ids_that_no_generation_has_are_refused(store, tmp_path, sql, problem):
    with pytest.raises(RecipeError) as err:
        build_set(store, recipe_file(tmp_path, sql), "myset")
    assert str(err.value) == CONTRACT + problem
    assert not store.exists("myset")


# Group 3: sample 0 (cer 0.005, ssim 0.70) against sample 1 (cer 0.10, ssim 0.75):
# neither is better on both, so each order passes the per-pair checks.
ONE_WAY = """SELECT c.prompt_id, c.group_id, c.generation_id AS chosen_id,
       r.generation_id AS rejected_id, 1.0 AS chosen_reward, 0.0 AS rejected_reward,
       '{split}' AS split
FROM generations c JOIN generations r ON c.group_id = r.group_id
WHERE c.group_index = 3 AND c.sample_index = {a} AND r.sample_index = {b}"""


@pytest.mark.parametrize("second_split, where", [("val", "in both splits"),
                                                  ("train", "more than once")])
def test_one_pair_in_both_orders_is_refused(store, tmp_path, second_split, where):
    sql = (ONE_WAY.format(split="train", a=0, b=1) + "\nUNION ALL\n"
           + ONE_WAY.format(split=second_split, a=1, b=0))
    with pytest.raises(RecipeError) as err:
        build_set(store, recipe_file(tmp_path, sql), "myset")
    assert str(err.value) == CONTRACT + f"1 pair(s) appear {where} (first: r:12>r:13)"
    assert not store.exists("myset")


def test_a_pair_across_two_runs_of_one_prompt_may_name_either_group(store, tmp_path):
    sql = GOOD.replace(SELECT, "SELECT c.prompt_id, r.group_id,")
    assert build_set(store, recipe_file(tmp_path, sql, "ok.sql"), "myset").version == 1
