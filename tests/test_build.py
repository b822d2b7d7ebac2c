"""`ttspo build`: versions, lineage, build records, determinism, the CLI."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from ttspo.builder.sets import recipes
from ttspo.builder.sets.build import build_set, open_set
from ttspo.builder.cli.main import cli
from ttspo.builder.core.errors import StoreError
from ttspo.builder.sets.export import export_nemo
from test_build_helpers import BASIC, add_run, gen_rows, make_store

PARETO_SHA = recipes.load_recipe("pareto").sha256


@pytest.fixture
def store(tmp_path):
    return make_store(tmp_path / "store", BASIC)


def test_a_build_is_one_version_with_its_lineage(store):
    result = build_set(store, "pareto", "prefs", {"val_size": 2, "seed": 5})
    assert result.version == 1 and store.versions("prefs")[0]["rows"] == 5
    lineage = store.lineage("prefs", 1)
    assert lineage["command"] == "build"
    assert lineage["inputs"] == {"generations": 1}
    assert lineage["recipe"] == "pareto" and lineage["recipe_sha256"] == PARETO_SHA
    assert lineage["params"] == {"cer_threshold": 0.02, "max_duration": 19.0, "min_duration": 1.5,
                                 "max_leading_silence": -1.0, "max_trailing_silence": -1.0,
                                 "num_chosen": 1, "seed": 5, "val_by": "pair", "val_size": 2}
    assert lineage["seed"] == 5
    assert lineage["counts"] == {"pairs": 5, "train": 3, "val": 2, "groups": 5, "prompts": 5}
    record = open_set(store, "prefs@1").record
    assert record.recipe_sha256 == PARETO_SHA and record.inputs == {"generations": 1}


def test_a_rebuild_is_a_new_version_and_old_ones_stay_readable(store):
    build_set(store, "pareto", "prefs")
    build_set(store, "pareto", "prefs", {"cer_threshold": 0.008})
    assert [v["rows"] for v in store.versions("prefs")] == [5, 4]
    assert open_set(store, "prefs@1").rows().num_rows == 5
    assert open_set(store, "prefs").record.params["cer_threshold"] == 0.008


def test_the_build_record_survives_a_restore(store):
    build_set(store, "pareto", "prefs")
    build_set(store, "pareto", "prefs", {"cer_threshold": 0.008})
    store.restore("prefs", 1, {"command": "restore"})
    assert open_set(store, "prefs").record.params["cer_threshold"] == 0.02


def test_same_inputs_and_seed_give_the_same_rows_and_the_same_bytes(store, tmp_path):
    build_set(store, "pareto", "prefs", {"val_size": 2, "seed": 3})
    build_set(store, "pareto", "prefs", {"val_size": 2, "seed": 3})
    assert open_set(store, "prefs@1").rows().equals(open_set(store, "prefs@2").rows())
    # and two independent stores made from the same inputs (codes files that exist:
    # the export writes them once as int32 under STORE/codes)
    import torch

    files = tmp_path / "files"
    files.mkdir()
    one, two = (make_store(tmp_path / name, BASIC, files=files) for name in ("one", "two"))
    for path in {r["codes_path"] for r in gen_rows(BASIC, files=files)}:
        torch.save(torch.zeros((8, 3), dtype=torch.int16), path)
    for s, out in ((one, "a"), (two, "b")):
        build_set(s, "pareto", "prefs", {"val_size": 2, "seed": 3})
        export_nemo(s, "prefs", tmp_path / out)
    # the manifests name each store's own codes files (STORE/codes): equal up to the store
    for name in ("dpo_train_manifest.json", "dpo_val_manifest.json"):
        a = (tmp_path / "a" / name).read_text().replace(str(tmp_path / "one"), "STORE")
        assert "STORE/codes/" in a
        assert a == (tmp_path / "b" / name).read_text().replace(str(tmp_path / "two"), "STORE")


def test_a_set_cannot_take_a_core_table_name(store):
    with pytest.raises(StoreError, match="'generations' is a core table name"):
        build_set(store, "pareto", "generations")


def test_a_store_without_generations(tmp_path):
    from ttspo.builder.core.errors import InputError
    from ttspo.builder.core.store import Store

    with pytest.raises(InputError, match="has no generations table"):
        build_set(Store(tmp_path / "empty"), "pareto", "prefs")


# --------------------------------------------------------------------- CLI
def invoke(store, *args):
    return CliRunner().invoke(cli, ["--store", str(store.root), *args])


def test_cli_build_prints_what_it_wrote(store):
    result = invoke(store, "build", "pareto", "--name", "prefs", "--param", "val_size=1",
                    "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == [{
        "set": "prefs", "version": 1, "recipe": "pareto", "pairs": 5, "train": 4, "val": 1,
        "groups": 5, "prompts": 5, "generations": 1, "recipe_sha256": PARETO_SHA}]
    assert store.lineage("prefs", 1)["args"] == {
        "recipe": "pareto", "name": "prefs", "params": ["val_size=1"], "runs": [], "fmt": "json"}


def test_cli_build_table_output(store):
    result = invoke(store, "build", "best_worst", "--name", "bw")
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[0].split() == ["set", "version", "recipe", "pairs", "train", "val", "groups",
                                "prompts", "generations", "recipe_sha256"]
    assert lines[2].split()[:9] == ["bw", "1", "best_worst", "5", "5", "0", "5", "5", "1"]


def test_cli_build_with_runs_and_a_user_recipe(store, tmp_path):
    add_run(store, BASIC[:2], "other", first_group=10)
    result = invoke(store, "build", "pareto", "--name", "o", "--run", "other", "--format", "json")
    assert json.loads(result.output)[0]["pairs"] == 2
    mine = tmp_path / "mine.sql"
    mine.write_text("SELECT * EXCLUDE (position) FROM o WHERE run = $run ORDER BY position")
    result = invoke(store, "build", str(mine), "--name", "copy", "--param", "run=other",
                    "--format", "json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)[0]
    assert (out["recipe"], out["pairs"]) == ("mine.sql", 2)
    assert store.lineage("copy", 1)["inputs"] == {"generations": 2, "o": 1}


@pytest.mark.parametrize("args, message", [
    (["build", "pareto", "--name", "p", "--param", "bogus=1"],
     "Error: recipe pareto has no parameter bogus (parameters: cer_threshold, max_duration, "
     "max_leading_silence, max_trailing_silence, min_duration, num_chosen, seed, val_by, "
     "val_size)\n"),
    (["build", "pareto", "--name", "p", "--param", "num_chosen=3"],
     "Error: recipe pareto: num_chosen must be 1 or 2, not 3\n"),
    (["build", "pareto", "--name", "p", "--param", "val_size=-1"],
     "Error: recipe pareto: val_size must be >= 0, not -1\n"),
    (["build", "pareto", "--name", "p", "--param", "val_by=prompts"],
     "Error: recipe pareto: val_by must be pair, group or prompt, not 'prompts'\n"),
    (["build", "pareto", "--name", "p", "--param", "seed"],
     "Error: --param 'seed' is not NAME=VALUE\n"),
    (["build", "paretto", "--name", "p"],
     "Error: no built-in recipe 'paretto' (built-in: best_worst, pareto, refine; a user recipe is a path "
     "ending in .sql)\n"),
    (["build", "pareto", "--name", "prompts"],
     "Error: 'prompts' is a core table name; choose another set name\n"),
    (["build", "pareto", "--name", "bad name"],
     "Error: 'bad name' is not a valid set name (letters, digits, _ and -)\n"),
    (["build", "pareto", "--name", "p", "--run", "nope"],
     "Error: no run nope in generations@1 (runs: r)\n"),
])
def test_cli_build_errors(store, args, message):
    result = invoke(store, *args)
    assert result.exit_code == 1
    assert result.output == message
    assert not store.exists("p")


def test_cli_recipes_lists_builtins_and_parameters(store):
    result = invoke(store, "recipes", "--format", "json")
    assert [r["recipe"] for r in json.loads(result.output)] == ["best_worst", "pareto", "refine"]
    result = invoke(store, "recipes", "pareto", "--format", "csv")
    assert result.output.splitlines()[:2] == [
        "parameter,default,required,description",
        "cer_threshold,0.02,False,keep a pair only if chosen CER < this (NeMo docs use 0.01)"]


def test_a_set_named_like_a_word_in_the_recipe_is_not_an_input(store):
    build_set(store, "pareto", "pareto")  # the recipe's comments say "pareto"
    build_set(store, "pareto", "pareto", {"cer_threshold": 0.008})
    assert store.lineage("pareto", 2)["inputs"] == {"generations": 1}
