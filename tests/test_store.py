"""Store: one commit per write, lineage per version, tags, restore, read-only SQL."""

from __future__ import annotations

import pyarrow as pa
import pytest

from ttspo.builder.core import query
from ttspo.builder.core.errors import QueryError, StoreError
from ttspo.builder.core.schemas import GEN, GENERATIONS_SCHEMA
from ttspo.builder.core.store import Store, make_lineage, parse_ref


def gen_rows(n: int, run: str = "r") -> pa.Table:
    rows = [{GEN.generation_id: f"{run}:{i}", GEN.run: run, GEN.prompt_id: "p1",
             GEN.group_id: f"{run}:g0", GEN.group_index: 0, GEN.sample_index: i,
             GEN.text: "hello", GEN.invalid: False, GEN.cer: i / 10,
             GEN.audio: b"RIFF", GEN.codes: [[1, 2], [3, 4]]} for i in range(n)]
    return pa.Table.from_pylist(rows, schema=GENERATIONS_SCHEMA)


@pytest.fixture
def store(tmp_path) -> Store:
    s = Store(tmp_path / "store")
    s.write("generations", gen_rows(3), GENERATIONS_SCHEMA, make_lineage("first", {"n": 3}))
    return s


def test_each_write_is_one_version_with_its_lineage(store):
    store.write("generations", gen_rows(2, "s"), GENERATIONS_SCHEMA,
                make_lineage("second", {"n": 2}, {"generations": 1}, note="x"))
    versions = store.versions("generations")
    assert [v["version"] for v in versions] == [1, 2]
    assert [v["rows"] for v in versions] == [3, 5]
    assert [v["command"] for v in versions] == ["first", "second"]
    lineage = store.lineage("generations", 2)
    assert lineage["args"] == {"n": 2}
    assert lineage["inputs"] == {"generations": 1}
    assert lineage["note"] == "x"
    assert lineage["ttspo_version"]


def test_tables_are_created_with_stable_row_ids(store):
    assert store.open("generations").has_stable_row_ids


def test_streamed_batches_make_one_commit(tmp_path):
    s = Store(tmp_path)
    batches = gen_rows(6).to_batches(max_chunksize=2)
    assert len(batches) == 3
    assert s.write("generations", iter(batches), GENERATIONS_SCHEMA, make_lineage("c", {})) == 1
    assert s.open("generations").count_rows() == 6


def test_tags_and_refs(store):
    store.tag("generations", 1, "v1")
    assert store.tags("generations") == {"v1": 1}
    assert store.open_ref("generations@v1").version == 1
    assert parse_ref("generations@12") == ("generations", 12)
    assert parse_ref("my-set@best") == ("my-set", "best")
    with pytest.raises(StoreError, match="already has a tag 'v1'"):
        store.tag("generations", 1, "v1")
    with pytest.raises(StoreError, match="has no version 7"):
        store.tag("generations", 7, "v7")
    with pytest.raises(StoreError, match="must not be a number"):
        store.tag("generations", 1, "12")
    with pytest.raises(StoreError, match="no version or tag 'nope' \\(tags: v1\\)"):
        store.open("generations", "nope")
    with pytest.raises(StoreError, match="no table 'missing'"):
        store.open("missing")
    with pytest.raises(StoreError, match="is not TABLE"):
        parse_ref("bad name@1")


def test_restore_is_a_new_version_with_lineage(store):
    store.write("generations", gen_rows(2, "s"), GENERATIONS_SCHEMA, make_lineage("second", {}))
    version = store.restore("generations", 1, make_lineage("restore", {"version": 1}))
    assert version == 3
    assert store.open("generations").count_rows() == 3
    assert store.lineage("generations", 3)["command"] == "restore"
    assert store.open("generations", 2).count_rows() == 5  # history kept


def test_set_names_cannot_shadow_core_tables():
    with pytest.raises(StoreError, match="core table name"):
        Store.check_set_name("generations")
    with pytest.raises(StoreError, match="not a valid set name"):
        Store.check_set_name("a b")
    Store.check_set_name("pareto-v2")


def test_a_create_killed_before_commit_does_not_block_the_next(tmp_path):
    s = Store(tmp_path)
    (tmp_path / "generations.lance" / "data").mkdir(parents=True)
    (tmp_path / "generations.lance" / "data" / "orphan.lance").write_bytes(b"x")
    assert not s.exists("generations")
    assert s.tables() == []
    s.write("generations", gen_rows(1), GENERATIONS_SCHEMA, make_lineage("c", {}))
    assert s.open("generations").count_rows() == 1
    assert s.versions("generations")[-1]["version"] == 1


def _first_write(root: str, run: str) -> None:
    Store(root).write("generations", gen_rows(50, run), GENERATIONS_SCHEMA,
                      make_lineage("w", {"run": run}))


@pytest.mark.slow  # real processes
def test_two_processes_creating_a_table_at_once_both_land(tmp_path):
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")  # Lance is not fork-safe
    procs = [ctx.Process(target=_first_write, args=(str(tmp_path), run)) for run in "ab"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    s = Store(tmp_path)
    result, _ = query.run(s, "select run, count(*) as n from generations group by run order by run")
    assert result.to_pylist() == [{"run": "a", "n": 50}, {"run": "b", "n": 50}]
    assert [v["version"] for v in s.versions("generations")] == [1, 2]


def test_sql_views_skip_blobs_and_codes_and_reach_old_versions(store):
    store.write("generations", gen_rows(2, "s"), GENERATIONS_SCHEMA, make_lineage("second", {}))
    store.tag("generations", 1, "v1")
    result, inputs = query.run(store, "select * from generations")
    assert result.num_rows == 5
    assert GEN.audio not in result.column_names and GEN.codes not in result.column_names
    assert GEN.cer in result.column_names
    assert inputs == {"generations": 2}
    old, inputs = query.run(store, 'select count(*) as n from "generations@1"')
    assert old.to_pylist() == [{"n": 3}] and inputs == {"generations@1": 1}
    tagged, _ = query.run(store, 'select count(*) as n from "generations@v1"')
    assert tagged.to_pylist() == [{"n": 3}]
    params, _ = query.run(store, "select count(*) as n from generations where cer >= $c", {"c": 0.15})
    assert params.to_pylist() == [{"n": 1}]


@pytest.mark.parametrize("sql, message", [
    ("select * from read_csv('/etc/passwd')", "Permission Error"),
    ("select * from read_parquet('/tmp/x.parquet')", "Permission Error"),
    ("copy (select 1) to '/tmp/ttspo-leak.csv'", "only SELECT queries are allowed (got COPY)"),
    ("create table t as select 1", "only SELECT queries are allowed (got CREATE)"),
    ("select 1; set enable_external_access = true", "one statement per query, please (got 2)"),
    ("set enable_external_access = true", "only SELECT queries are allowed (got SET)"),
    ("attach '/tmp/x.db'", "only SELECT queries are allowed (got ATTACH)"),
    ("select * frm generations", "SQL error: Parser Error"),
])
def test_queries_cannot_touch_files_or_write(store, sql, message, tmp_path):
    with pytest.raises(QueryError, match=message.replace("(", "\\(").replace(")", "\\)")):
        query.run(store, sql)
    assert store.versions("generations")[-1]["version"] == 1


def test_sessions_define_the_recipe_macros(store):
    import math

    zs = [-3.0, -1.0, 0.0, 0.5, 1.96]
    sql = "select " + ", ".join(f"normal_cdf({z}) as c{i}" for i, z in enumerate(zs))
    row = query.run(store, sql)[0].to_pylist()[0]
    for i, z in enumerate(zs):
        assert abs(row[f"c{i}"] - 0.5 * (1 + math.erf(z / math.sqrt(2)))) < 1e-7
    reward = query.run(store, "select nemo_rejected_reward(zscore(1, 1, 0), 0) as r")[0]
    assert abs(reward.to_pylist()[0]["r"]) < 1e-7  # std 0 gives z 0: 1 - (0.5 + 0.5)
