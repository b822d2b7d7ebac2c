"""`ttspo tables | versions | tag | restore`: output, lineage, and every error."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
from click.testing import CliRunner

from ttspo.builder.cli.main import cli
from ttspo.builder.core.schemas import GEN, GENERATIONS_SCHEMA
from ttspo.builder.core.store import Store, make_lineage


def gen_rows(n: int, run: str) -> pa.Table:
    rows = [{GEN.generation_id: f"{run}:{i}", GEN.run: run, GEN.prompt_id: f"p{i % 2}",
             GEN.group_id: f"{run}:g0", GEN.group_index: 0, GEN.sample_index: i,
             GEN.text: "hello", GEN.invalid: False, GEN.cer: i / 10} for i in range(n)]
    return pa.Table.from_pylist(rows, schema=GENERATIONS_SCHEMA)


@pytest.fixture
def store(tmp_path) -> Store:
    """generations: v1 with 3 rows (run a), v2 with 5 (run b appended)."""
    s = Store(tmp_path / "store")
    s.write("generations", gen_rows(3, "a"), GENERATIONS_SCHEMA,
            make_lineage("ingest", {"run": "a"}))
    s.write("generations", gen_rows(2, "b"), GENERATIONS_SCHEMA,
            make_lineage("ingest", {"run": "b"}, {"generations": 1}))
    return s


def ttspo(store: Store, *args: str):
    return CliRunner().invoke(cli, ["--store", str(store.root), *args])


def snapshot(store: Store) -> tuple:
    return store.versions("generations"), store.tags("generations")


def fails(store: Store, args: list[str], message: str) -> None:
    """Exit 1, one line on stderr, nothing on stdout, the store untouched."""
    before = snapshot(store)
    result = ttspo(store, *args)
    assert (result.exit_code, result.stdout, result.stderr) == (1, "", f"Error: {message}\n")
    assert snapshot(store) == before


# ----------------------------------------------------------------- tables
def test_tables(store):
    store.tag("generations", 1, "v1")
    store.tag("generations", 2, "best")
    result = ttspo(store, "tables")
    assert (result.exit_code, result.output) == (0, (
        "table        rows  version  tags\n"
        "-----------  ----  -------  -------\n"
        "generations  5     2        best,v1\n"))
    as_json = json.loads(ttspo(store, "tables", "--format", "json").stdout)
    assert as_json == [{"table": "generations", "rows": 5, "version": 2, "tags": ["best", "v1"]}]


def test_tables_of_an_empty_store(tmp_path):
    (tmp_path / "empty").mkdir()
    result = ttspo(Store(tmp_path / "empty"), "tables", "--format", "csv")
    assert (result.exit_code, result.output) == (0, "table,rows,version,tags\n")
    # a store path that does not exist is a typo, not an empty store (issue 9)
    result = ttspo(Store(tmp_path / "none"), "tables", "--format", "csv")
    assert (result.exit_code, result.output) == (
        1, f"Error: no store at {tmp_path / 'none'} (no such folder; check --store)\n")


# --------------------------------------------------------------- versions
def test_versions(store):
    store.tag("generations", 1, "v1")
    times = [v["time"] for v in store.versions("generations")]
    result = ttspo(store, "versions", "generations", "--format", "csv")
    assert (result.exit_code, result.output) == (0, (
        "version,time,command,rows,tags\n"
        f"1,{times[0]},ingest,3,v1\n"
        f"2,{times[1]},ingest,5,\n"))
    table = ttspo(store, "versions", "generations").output.splitlines()
    assert table[0].split() == ["version", "time", "command", "rows", "tags"]
    assert table[2].split() == ["1", times[0], "ingest", "3", "v1"]


def test_versions_json_carries_the_full_lineage(store):
    result = ttspo(store, "versions", "generations", "--format", "json")
    assert result.exit_code == 0
    versions = json.loads(result.stdout)
    assert [(v["version"], v["rows"], v["tags"]) for v in versions] == [(1, 3, []), (2, 5, [])]
    lineage = versions[1]["lineage"]
    assert lineage["command"] == "ingest"
    assert lineage["args"] == {"run": "b"}
    assert lineage["inputs"] == {"generations": 1}
    assert lineage["ttspo_version"] == "0.1.0"


# -------------------------------------------------------------------- tag
def test_tag_a_version_then_tag_the_tag(store):
    result = ttspo(store, "tag", "generations", "1", "v1")
    assert (result.exit_code, result.output) == (0, "tagged generations version 1 as 'v1'\n")
    result = ttspo(store, "tag", "generations", "v1", "paper-2025.1")
    assert (result.exit_code, result.output) == (
        0, "tagged generations version 1 as 'paper-2025.1'\n")
    assert store.tags("generations") == {"v1": 1, "paper-2025.1": 1}
    assert store.open_ref("generations@paper-2025.1").count_rows() == 3


def test_duplicate_tag(store):
    store.tag("generations", 1, "v1")
    fails(store, ["tag", "generations", "2", "v1"], "table 'generations' already has a tag 'v1'")


def test_tag_unknown_version(store):
    fails(store, ["tag", "generations", "7", "v7"], "table 'generations' has no version 7 (latest is 2)")


def test_tag_unknown_tag(store):
    fails(store, ["tag", "generations", "nope", "v7"],
          "table 'generations' has no version or tag 'nope'")


def test_tag_unknown_table(store):
    fails(store, ["tag", "nope", "1", "v1"], f"no table 'nope' in store {store.root}")


def test_numeric_tag(store):
    fails(store, ["tag", "generations", "1", "12"],
          "tag '12' must not be a number (it would read as a version)")


def test_tag_name_a_reference_cannot_spell(store):
    fails(store, ["tag", "generations", "1", "my tag"],
          "tag 'my tag' may only use letters, digits, '_', '.' and '-'")


# ---------------------------------------------------------------- restore
def test_restore_by_number_and_by_tag_records_lineage(store):
    result = ttspo(store, "restore", "generations", "1")
    assert (result.exit_code, result.output) == (
        0, "restored generations to version 1 as new version 3\n")
    assert store.open("generations").to_table() == store.open("generations", 1).to_table()
    lineage = store.lineage("generations", 3)
    assert (lineage["command"], lineage["args"], lineage["inputs"]) == (
        "restore", {"table": "generations", "version": "1"}, {"generations": 1})
    store.tag("generations", 2, "five")
    result = ttspo(store, "restore", "generations", "five")
    assert (result.exit_code, result.output) == (
        0, "restored generations to version 2 as new version 4\n")
    assert store.open("generations").count_rows() == 5
    assert [v["command"] for v in store.versions("generations")] == [
        "ingest", "ingest", "restore", "restore"]


def test_restore_unknown_version(store):
    fails(store, ["restore", "generations", "0"], "table 'generations' has no version 0 (latest is 2)")


def test_restore_unknown_tag(store):
    store.tag("generations", 1, "v1")
    fails(store, ["restore", "generations", "v2"],
          "table 'generations' has no version or tag 'v2' (tags: v1)")


def test_versions_and_restore_of_unknown_table(store):
    fails(store, ["versions", "nope"], f"no table 'nope' in store {store.root}")
    fails(store, ["restore", "nope", "1"], f"no table 'nope' in store {store.root}")


def test_bad_table_name(store):
    fails(store, ["versions", "../etc"], "'../etc' is not a valid table name")
