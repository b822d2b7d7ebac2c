"""What the CLI prints and writes is exactly the data (issues 8 and 9): integers
as JSON numbers, strict JSON, every column of a result under its own name, no
output inside the store's tables, no non-finite parameters, comments and string
literals left alone, and no empty answer from a store that does not exist."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from ttspo.builder.cli.main import cli
from ttspo.builder.core.schemas import GENERATIONS_SCHEMA
from ttspo.builder.core.store import make_lineage
from ttspo.builder.sets.build import build_set
from test_build_helpers import BASIC, gen_table, make_store


@pytest.fixture
def store(tmp_path):
    s = make_store(tmp_path / "store", BASIC)  # 5 groups x 4 samples, run r
    build_set(s, "pareto", "prefs", {"val_size": 2, "seed": 1})
    return s


def ttspo(store, *args: str):
    return CliRunner().invoke(cli, ["--store", str(store.root), *args])


def ok(result) -> str:
    assert (result.exit_code, result.stderr) == (0, ""), result.output
    return result.stdout


def strict(text: str):
    """json.loads that refuses NaN, Infinity and -Infinity, as strict parsers do."""
    def refuse(name):
        raise ValueError(f"not JSON: {name}")
    return json.loads(text, parse_constant=refuse)


# ------------------------------------------------------------ integers
def test_integer_sums_are_json_numbers(store):
    query = "SELECT sum(sample_index) AS s, sum(group_index) AS g, count(*) AS n FROM generations"
    assert strict(ok(ttspo(store, "sql", query, "--format", "json"))) == [
        {"s": 30, "g": 40, "n": 20}]
    assert ok(ttspo(store, "sql", query, "--format", "csv")) == "s,g,n\n30,40,20\n"
    huge = "SELECT 170141183460469231731687303715884105727::HUGEINT AS big, sum(1.5) AS d"
    assert strict(ok(ttspo(store, "sql", huge, "--format", "json"))) == [
        {"big": 170141183460469231731687303715884105727, "d": 1.5}]


# ---------------------------------------------------- duplicate columns
def test_repeated_column_names_keep_every_value(store):
    query = "SELECT 1 AS a, 2 AS a, 3 AS a_1"
    assert ok(ttspo(store, "sql", query)) == "a  a_2  a_1\n-  ---  ---\n1  2    3\n"
    assert ok(ttspo(store, "sql", query, "--format", "csv")) == "a,a_2,a_1\n1,2,3\n"
    assert strict(ok(ttspo(store, "sql", query, "--format", "json"))) == [
        {"a": 1, "a_2": 2, "a_1": 3}]


def test_a_join_keeps_both_tables_columns(store):
    query = ("SELECT c.cer, r.cer FROM prefs p JOIN generations c ON c.generation_id = p.chosen_id "
             "JOIN generations r ON r.generation_id = p.rejected_id ORDER BY p.position")
    truth = ("SELECT chosen_cer AS cer, rejected_cer AS cer_1 FROM prefs ORDER BY position")
    joined = strict(ok(ttspo(store, "sql", query, "--format", "json")))
    assert joined == strict(ok(ttspo(store, "sql", truth, "--format", "json")))
    assert any(row["cer"] != row["cer_1"] for row in joined)


# ------------------------------------------------------- strict JSON
def test_json_output_has_no_nan_or_infinity(store, tmp_path):
    query = "SELECT 'nan'::DOUBLE AS n, 'inf'::DOUBLE AS i, '-inf'::DOUBLE AS m, 0.5 AS f"
    expected = [{"n": None, "i": None, "m": None, "f": 0.5}]
    assert strict(ok(ttspo(store, "sql", query, "--format", "json"))) == expected
    out = tmp_path / "r.json"
    assert ttspo(store, "sql", query, "--out", str(out)).exit_code == 0
    assert strict(out.read_text()) == expected


def test_lineage_is_strict_json_where_stored_and_printed(store):
    store.write("generations", gen_table([[(0.1, 0.5)]], run="x", first_group=9),
                GENERATIONS_SCHEMA, make_lineage("test", {"t": float("nan"), "u": float("-inf")}))
    assert store.lineage("generations", 2)["args"] == {"t": None, "u": None}
    printed = strict(ok(ttspo(store, "versions", "generations", "--format", "json")))
    assert printed[1]["lineage"]["args"] == {"t": None, "u": None}


# ------------------------------------------------- non-finite parameters
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN", "1e999"])
def test_non_finite_recipe_parameters_are_refused(store, value):
    result = ttspo(store, "build", "pareto", "--name", "other", "--param", f"cer_threshold={value}")
    assert (result.exit_code, result.output) == (
        1, f"Error: recipe pareto: --param cer_threshold={value} is not a finite number\n")
    assert not store.exists("other")
    result = ttspo(store, "sweep", "pareto", "--param", f"cer_threshold=0.01,{value}")
    assert (result.exit_code, result.output) == (
        1, f"Error: recipe pareto: --param cer_threshold={value} is not a finite number\n")


def test_sql_parameters_that_are_not_finite_numbers_stay_text(store):
    out = ok(ttspo(store, "sql", "SELECT $x AS x, typeof($x) AS t", "--param", "x=nan",
                   "--format", "json"))
    assert strict(out) == [{"x": "nan", "t": "VARCHAR"}]


# ------------------------------------------------ outputs inside the store
def test_outputs_inside_the_store_tables_are_refused(store, tmp_path):
    store.tag("generations", 1, "v1")
    tag_file = store.root / "generations.lance" / "_refs" / "tags" / "v1.json"
    before = tag_file.read_bytes()
    link = tmp_path / "link"
    link.symlink_to(store.root / "generations.lance")
    for path in (tag_file, link / "_refs" / "tags" / "v1.json"):
        result = ttspo(store, "sql", "SELECT 1 AS version", "--out", str(path))
        assert (result.exit_code, result.output) == (
            1, f"Error: {path}: is inside the store's table 'generations'; write outputs elsewhere\n")
    prefs_dir = store.root / "prefs.lance"
    result = ttspo(store, "export", "nemo", "prefs", "--out", str(prefs_dir))
    assert (result.exit_code, result.output) == (
        1, f"Error: {prefs_dir}: is inside the store's table 'prefs'; write outputs elsewhere\n")
    trl = store.root / "new.lance" / "pairs.parquet"
    result = ttspo(store, "export", "trl", "prefs", "--out", str(trl))
    assert (result.exit_code, result.output) == (
        1, f"Error: {trl}: is inside the store's table 'new'; write outputs elsewhere\n")
    assert tag_file.read_bytes() == before and not trl.parent.exists()
    assert ok(ttspo(store, "tables", "--format", "csv")).splitlines()[1] == "generations,20,1,v1"


# ------------------------------------------- references in comments/strings
def test_quoted_refs_in_comments_and_string_literals_are_not_read(store):
    query = ("SELECT count(*) AS n, '\"generations@99\"' AS s FROM generations "
             "-- was \"generations@98\"\n/* \"generations@v7\" */")
    assert strict(ok(ttspo(store, "sql", query, "--format", "json"))) == [
        {"n": 20, "s": '"generations@99"'}]


# ------------------------------------------------ a store that is not there
@pytest.mark.parametrize("args", [
    ["sql", "SELECT 1 AS x"], ["tables"], ["versions", "generations"],
    ["diff", "prefs@1", "prefs"], ["tag", "generations", "1", "v1"],
    ["restore", "generations", "1"], ["export", "nemo", "prefs", "--out", "{tmp}/out"],
    ["export", "trl", "prefs", "--out", "{tmp}/out.parquet"],
    ["sweep", "pareto", "--param", "cer_threshold=0.01,0.02"],
])
def test_reading_a_store_that_does_not_exist_is_an_error(tmp_path, args):
    missing = tmp_path / "typo"
    result = CliRunner().invoke(cli, ["--store", str(missing),
                                      *[a.replace("{tmp}", str(tmp_path)) for a in args]])
    assert (result.exit_code, result.output) == (
        1, f"Error: no store at {missing} (no such folder; check --store)\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == []
