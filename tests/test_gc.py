"""`ttspo gc` and `ttspo compact` (Store.gc, Store.compact): what goes, what stays,
the bytes, the log, one-line errors, and writers running beside them."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pytest
from click.testing import CliRunner

from test_build_helpers import BASIC, gen_table, make_store
from ttspo.builder.api import Store as ApiStore
from ttspo.builder.cli.main import cli
from ttspo.builder.cli.store import ranges
from ttspo.builder.core.lifecycle import parse_age
from ttspo.builder.core.pins import lineage_pins
from ttspo.builder.core.render import render_table
from ttspo.builder.core.schemas import CHECKPOINTS_SCHEMA, CKPT, GENERATIONS_SCHEMA
from ttspo.builder.core.store import Store, make_lineage
from ttspo.builder.sets.build import build_set

COLUMNS = ["table", "removed", "versions", "bytes", "pinned", "tagged"]
REPO = Path(__file__).resolve().parents[1]


def append_run(store: Store, run: str, first_group: int) -> int:
    """An ingest-like append: its lineage names the generations version it was made on."""
    before = store.version("generations")
    return store.write("generations", gen_table(BASIC, run, first_group), GENERATIONS_SCHEMA,
                       make_lineage("test-ingest", {"run": run}, {"generations": before}))


def checkpoint_row(set_version: int, generations_version: int) -> pa.Table:
    row = {CKPT.run: "run1", CKPT.step: 10, CKPT.kind: "step", CKPT.path: "/runs/run1/p.pt",
           CKPT.sha256: "0" * 64, CKPT.architecture: "tiny", CKPT.trainer: "dpo",
           CKPT.set_name: "prefs", CKPT.set_version: set_version,
           CKPT.generations_version: generations_version, CKPT.created: "2026-01-01T00:00:00+00:00"}
    return pa.Table.from_pylist([row], schema=CHECKPOINTS_SCHEMA)


@pytest.fixture
def store(tmp_path) -> Store:
    """generations 1-4 (early@1 was built from generations@1); prefs 1-6 built from
    generations@1 (prefs@1) and @4 (the rest), prefs@2 tagged v1, prefs@3 named by a
    checkpoints row."""
    s = make_store(tmp_path / "store", BASIC)
    build_set(s, "pareto", "early", {"cer_threshold": 0.02})
    build_set(s, "pareto", "prefs", {"cer_threshold": 0.01})
    for i, run in enumerate(("b", "c", "d")):
        append_run(s, run, 10 * (i + 1))
    for threshold in (0.02, 0.05, 0.1, 0.2, 0.3):
        build_set(s, "pareto", "prefs", {"cer_threshold": threshold})
    s.tag("prefs", 2, "v1")
    s.write("checkpoints", checkpoint_row(3, 4), CHECKPOINTS_SCHEMA,
            make_lineage("train dpo", {"set_ref": "prefs@3"}, {"prefs": 3, "generations": 4}))
    return s


def ttspo(store: Store, *args: str):
    return CliRunner().invoke(cli, ["--store", str(store.root), *args])


def disk_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def every_version(store: Store) -> dict[str, list[int]]:
    return {t: [v["version"] for v in store.versions(t)] for t in store.tables()}


def contents(store: Store, table: str, version: int) -> list[dict]:
    return store.open(table, version).to_table(with_row_id=True).to_pylist()


def planned(store: Store, **kw):
    return ApiStore(store.root).gc(dry_run=True, **kw)


def gc_table(result) -> dict[str, tuple]:
    return {t.table: (t.removed, t.bytes) for t in result.tables}


# ----------------------------------------------------------------- dry run
def test_dry_run_lists_exactly_what_would_go_and_removes_nothing(store):
    before, size = every_version(store), disk_bytes(store.root)
    plan = gc_table(planned(store, keep_last=2))
    assert {t: v for t, (v, _) in plan.items()} == {
        "checkpoints": [], "early": [], "generations": [2], "prefs": [1, 4]}
    gen_bytes, prefs_bytes = plan["generations"][1], plan["prefs"][1]
    assert gen_bytes > 0 and prefs_bytes > 0
    result = ttspo(store, "gc", "--keep-last", "2", "--dry-run")
    rows = [
        {"table": "checkpoints", "removed": "", "versions": 0, "bytes": 0, "pinned": "", "tagged": ""},
        {"table": "early", "removed": "", "versions": 0, "bytes": 0, "pinned": "", "tagged": ""},
        {"table": "generations", "removed": "2", "versions": 1, "bytes": gen_bytes,
         "pinned": "1", "tagged": ""},
        {"table": "prefs", "removed": "1,4", "versions": 2, "bytes": prefs_bytes,
         "pinned": "3", "tagged": "2"},
    ]
    assert (result.exit_code, result.stderr) == (0, "")
    assert result.stdout == (
        "policy: keep the last 2 versions\n" + render_table(rows, COLUMNS)
        + f"dry run: would remove 3 versions from 2 tables, freeing {gen_bytes + prefs_bytes} "
          "bytes; nothing was removed\n")
    assert every_version(store) == before and disk_bytes(store.root) == size
    assert not store.exists("store_log")


def test_pins_say_what_names_them(store):
    result = planned(store, keep_last=2)
    pinned = {t.table: t.pinned for t in result.tables}
    assert pinned["generations"] == {1: ["the lineage of early@1"]}
    assert pinned["prefs"] == {3: ["a row of checkpoints", "the lineage of checkpoints@1"]}


def test_rows_alone_pin_in_any_table_with_version_columns(store):
    """ref_logps names set versions; a table made later (labels, pair_dynamics) with
    set_name/set_version or X_version columns pins the same way. Bare lineage: the
    rows alone pin."""
    from ttspo.builder.core.schemas import REF_LOGPS_SCHEMA

    ref = {"set_name": "prefs", "set_version": 4, "ref_sha256": "a", "ref_architecture": "tiny",
           "pair_id": "p", "split": "train", "chosen_logps": [0.0], "rejected_logps": [0.0]}
    store.write("ref_logps", pa.Table.from_pylist([ref], schema=REF_LOGPS_SCHEMA),
                REF_LOGPS_SCHEMA, make_lineage("test"))
    labels = pa.schema([("set_name", pa.string()), ("set_version", pa.int64()),
                        ("generations_version", pa.int64())])
    store.write("labels", pa.Table.from_pylist(
        [{"set_name": "prefs", "set_version": 1, "generations_version": 2}], schema=labels),
        labels, make_lineage("test"))
    pinned = {t.table: t.pinned for t in planned(store, keep_last=2).tables}
    assert pinned["prefs"] == {1: ["a row of labels"], 3: ["a row of checkpoints",
                               "the lineage of checkpoints@1"], 4: ["a row of ref_logps"]}
    assert pinned["generations"] == {1: ["the lineage of early@1", "the lineage of prefs@1"],
                                     2: ["a row of labels"]}


def test_default_policy_keeps_young_versions_and_either_option_alone_is_the_rule(store):
    default = ttspo(store, "gc", "--dry-run")
    assert default.stdout.splitlines()[0] == (
        "policy: keep the last 10 versions and versions younger than 7d")
    assert default.stdout.splitlines()[-1] == "dry run: nothing to remove"
    assert planned(store).removed == 0
    assert planned(store, older_than="1h").removed == 0  # all made just now
    young = gc_table(planned(store, older_than="0s"))  # every version is older than 0 s
    assert young["prefs"][0] == [1, 4, 5] and young["generations"][0] == [2, 3]


# -------------------------------------------------------------------- run
def test_gc_removes_exactly_what_the_dry_run_listed(store):
    kept = {("prefs", v): contents(store, "prefs", v) for v in (2, 3, 5, 6)}
    kept |= {("generations", v): contents(store, "generations", v) for v in (1, 3, 4)}
    plan = gc_table(planned(store, keep_last=2))
    freed = plan["generations"][1] + plan["prefs"][1]
    size = disk_bytes(store.root)
    result = ttspo(store, "gc", "--keep-last", "2")
    assert (result.exit_code, result.stderr) == (0, "")
    assert result.stdout.splitlines()[-1] == (
        f"removed 3 versions from 2 tables, freed {freed} bytes (logged in store_log version 1)")
    versions = every_version(store)
    assert versions["prefs"] == [2, 3, 5, 6] and versions["generations"] == [1, 3, 4]
    assert versions["early"] == [1] and versions["checkpoints"] == [1]
    for (table, version), rows in kept.items():  # latest, tagged, pinned: open and read the same
        assert contents(store, table, version) == rows
    log = store.open("store_log").to_table().to_pylist()
    assert disk_bytes(store.root) - disk_bytes(store.root / "store_log.lance") == size - freed
    assert [(r["table"], r["versions"], r["forced"], r["bytes"], r["latest"]) for r in log] == [
        ("generations", [2], [], plan["generations"][1], 4), ("prefs", [1, 4], [], plan["prefs"][1], 6)]
    lineage = store.lineage("store_log", 1)
    assert (lineage["command"], lineage["inputs"], lineage["removed"]) == (
        "gc", {"generations": 4, "prefs": 6}, {"generations": [2], "prefs": [1, 4]})
    assert lineage["args"]["keep_last"] == "2" and lineage["bytes_freed"] == freed
    assert every_version(store)["prefs"] == [2, 3, 5, 6]  # gc made no version of prefs
    again = ttspo(store, "gc", "--keep-last", "2")
    assert again.stdout.splitlines()[-1] == "nothing to remove"


def test_the_log_pins_nothing_so_a_second_gc_removes_what_the_first_kept(store):
    ApiStore(store.root).gc(keep_last=2)
    for threshold in (0.4, 0.5):
        build_set(store, "pareto", "prefs", {"cer_threshold": threshold})
    result = ApiStore(store.root).gc(keep_last=2)
    assert gc_table(result)["prefs"][0] == [5, 6]
    assert every_version(store)["prefs"] == [2, 3, 7, 8]
    assert [r["versions"] for r in store.open("store_log").to_table().to_pylist()] == [
        [2], [1, 4], [5, 6]]


def test_a_removed_version_reads_as_one_line(store):
    ttspo(store, "gc", "--keep-last", "2")
    when = store.open("store_log").to_table().to_pylist()[0]["time"]
    line = f"Error: version 1 of prefs was removed by gc on {when}\n"
    for args in (["sql", 'SELECT count(*) AS n FROM "prefs@1"'], ["restore", "prefs", "1"],
                 ["export", "trl", "prefs@1", "--out", str(store.root.parent / "o.jsonl")]):
        result = ttspo(store, *args)
        assert (result.exit_code, result.stdout, result.stderr) == (1, "", line), args
    never = ttspo(store, "sql", 'SELECT count(*) AS n FROM "prefs@99"')
    assert never.stderr == "Error: table 'prefs' has no version or tag '99' (tags: v1)\n"


def test_force_removes_pinned_versions_and_names_them(store):
    result = ttspo(store, "gc", "--keep-last", "2", "--force")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[-3:] == [
        "forced: generations@1 (named by the lineage of early@1)",
        "forced: prefs@3 (named by a row of checkpoints; the lineage of checkpoints@1)",
        lines[-1]]
    assert lines[-1].startswith("removed 5 versions from 2 tables, freed ")
    versions = every_version(store)
    assert versions["prefs"] == [2, 5, 6] and versions["generations"] == [3, 4]  # the tag stays
    log = {r["table"]: r["forced"] for r in store.open("store_log").to_table().to_pylist()}
    assert log == {"generations": [1], "prefs": [3]}
    when = store.open("store_log").to_table().to_pylist()[0]["time"]
    assert ttspo(store, "sql", 'SELECT 1 FROM "prefs@3"').stderr == (
        f"Error: version 3 of prefs was removed by gc --force on {when}\n")


def test_gc_of_one_table_touches_no_other(store):
    result = ApiStore(store.root).gc("prefs", keep_last=1)
    assert gc_table(result) == {"prefs": ([1, 4, 5], result.tables[0].bytes)}
    assert every_version(store)["generations"] == [1, 2, 3, 4]


def test_latest_is_kept_even_when_everything_may_go(store):
    result = ApiStore(store.root).gc("prefs", older_than="0s", force=True)
    assert result.tables[0].removed == [1, 3, 4, 5] and every_version(store)["prefs"] == [2, 6]


# ----------------------------------------------------------------- errors
@pytest.mark.parametrize("args, message", [
    (["--keep-last", "0"], "--keep-last 0: must be 1 or more (the latest version is always kept)"),
    (["--keep-last", "-3"], "--keep-last -3: must be 1 or more (the latest version is always kept)"),
    (["--keep-last", "ten"], "--keep-last ten: not a whole number"),
    (["--older-than", "7x"], "--older-than 7x: not an age (a whole number and s, m, h, d or w: "
                             "7d, 12h, 30m)"),
    (["--older-than", "d"], "--older-than d: not an age (a whole number and s, m, h, d or w: "
                            "7d, 12h, 30m)"),
    (["nosuch"], None),
])
def test_bad_options_give_one_line_and_change_nothing(store, args, message):
    message = message or f"no table 'nosuch' in store {store.root}"
    before, size = every_version(store), disk_bytes(store.root)
    for extra in ([], ["--dry-run"]):
        result = ttspo(store, "gc", *args, *extra)
        assert (result.exit_code, result.stdout, result.stderr) == (1, "", f"Error: {message}\n")
    assert every_version(store) == before and disk_bytes(store.root) == size


def test_parsers():
    assert parse_age("7d") == timedelta(days=7) and parse_age("30m") == timedelta(minutes=30)
    assert parse_age("12h") == timedelta(hours=12) and parse_age("2w") == timedelta(weeks=2)
    assert ranges([1, 2, 3, 5, 7, 8]) == "1-3,5,7-8" and ranges([]) == ""
    record = {"inputs": {"generations": 4, "prompts@3": 3}, "prompts_version": 2, "set": "s",
              "set_version": 5, "ttspo_version": "1.0", "args": {"set_ref": "prefs@7",
              "list": ["early@1", "prefs@v1"], "flag": True}}
    assert sorted(lineage_pins(record)) == [("early", 1), ("generations", 4), ("prefs", 7),
                                            ("prompts", 2), ("prompts", 3), ("s", 5)]


# ---------------------------------------------------------------- compact
def many_fragments(tmp_path) -> Store:
    s = make_store(tmp_path / "store", BASIC)
    for i in range(1, 6):
        append_run(s, f"r{i}", 10 * i)
    s.delete_rows("generations", "generation_id = 'r2:3'", make_lineage("test-delete"))
    return s


def test_compact_merges_fragments_and_keeps_every_row_and_row_id(tmp_path):
    store = many_fragments(tmp_path)
    latest = store.version("generations")
    rows = sorted(contents(store, "generations", latest), key=lambda r: r["_rowid"])
    before_set = build_set(store, "pareto", "prefs", {"cer_threshold": 0.05})
    result = ttspo(store, "compact", "generations")
    assert (result.exit_code, result.stderr) == (0, "")
    assert result.stdout == render_table(
        [{"table": "generations", "fragments_before": 6, "fragments_after": 1, "rows": 119,
          "version": latest + 1}],
        ["table", "fragments_before", "fragments_after", "rows", "version"]) + (
        "compacted 1 of 1 table; run gc to free the files only older versions read\n")
    assert len(store.open("generations").get_fragments()) == 1
    assert sorted(contents(store, "generations", latest + 1), key=lambda r: r["_rowid"]) == rows
    assert len(contents(store, "generations", latest)) == 119  # the old version still reads
    lineage = store.lineage("generations", latest + 1)
    assert (lineage["command"], lineage["inputs"], lineage["fragments_before"],
            lineage["fragments_after"]) == ("compact", {"generations": latest}, 6, 1)
    # a set built from the compacted table (its .derived caches keyed by the old
    # files miss) is the same set
    after_set = build_set(store, "pareto", "prefs", {"cer_threshold": 0.05})
    assert (store.open("prefs", after_set.version).to_table().drop(["pair_id"]).to_pylist()
            == store.open("prefs", before_set.version).to_table().drop(["pair_id"]).to_pylist())
    again = ttspo(store, "compact")
    assert again.stdout.splitlines()[-1] == "nothing to compact"


def test_gc_after_compact_frees_the_old_fragments(tmp_path):
    store = many_fragments(tmp_path)
    ApiStore(store.root).compact("generations")
    size = disk_bytes(store.root / "generations.lance")
    result = ApiStore(store.root).gc("generations", keep_last=1)
    assert result.tables[0].removed == list(range(1, store.version("generations")))
    assert size - disk_bytes(store.root / "generations.lance") == result.bytes > 0
    assert store.open("generations").count_rows() == 119


# ------------------------------------------------------------ concurrency
HOLDER = textwrap.dedent("""
    import sys
    from ttspo.builder.core.store import Store
    with Store(sys.argv[1]).writing("generations"):
        print("holding", flush=True)
        sys.stdin.read()  # until the test closes our stdin
""")

APPENDER = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[2])
    from test_gc import append_run
    from ttspo.builder.core.store import Store
    store = Store(sys.argv[1])
    for i in range(6):
        append_run(store, f"w{i}", 100 + 10 * i)
    print("appended", flush=True)
""")


def child(code: str, *args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO.parent)}
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env, text=True,
                            stdout=subprocess.PIPE, **kw)


@pytest.mark.slow  # ~1.1 s: waits on a real writer
def test_a_running_writer_makes_gc_and_compact_wait_then_refuse(store):
    before, size = every_version(store), disk_bytes(store.root)
    holder = child(HOLDER, str(store.root), stdin=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == "holding\n"
        for command in ("gc", "compact"):
            result = ttspo(store, command, "--wait", "0.3")
            assert (result.exit_code, result.stdout, result.stderr) == (1, "", (
                "Error: table 'generations' is being written by another command (waited 0.3 s); "
                f"{command} changed nothing, run it again when that command ends\n"))
        assert every_version(store) == before and disk_bytes(store.root) == size
        assert ttspo(store, "gc", "--keep-last", "2", "--dry-run").exit_code == 0  # reads only
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert ttspo(store, "gc", "--keep-last", "2").exit_code == 0


def test_compact_and_gc_beside_a_real_appender_lose_no_row(tmp_path):
    store = many_fragments(tmp_path)
    api = ApiStore(store.root)
    writer = child(APPENDER, str(store.root), str(Path(__file__).parent))
    done = []
    while writer.poll() is None or not done:
        api.compact("generations")
        api.gc("generations", keep_last=2)
        done.append(writer.poll() is not None)
    assert writer.stdout.read() == "appended\n" and writer.returncode == 0
    assert len(done) >= 2  # compact and gc ran while it appended
    ids = store.open("generations").to_table(columns=["generation_id"], with_row_id=True)
    assert ids.num_rows == 119 + 6 * 20
    assert len(set(ids["_rowid"].to_pylist())) == ids.num_rows
    assert len(set(ids["generation_id"].to_pylist())) == ids.num_rows


def test_json_output_is_the_typed_result(store):
    import json

    result = ttspo(store, "gc", "--keep-last", "2", "--dry-run", "--format", "json")
    assert (result.exit_code, result.stderr) == (0, "")
    out = json.loads(result.stdout)
    assert (out["dry_run"], out["removed"], out["policy"]) == (
        True, 3, {"keep_last": 2, "older_than": None})
    prefs = next(t for t in out["tables"] if t["table"] == "prefs")
    assert (prefs["removed"], prefs["tagged"], sorted(prefs["pinned"])) == ([1, 4], [2], ["3"])


def test_compact_of_a_missing_table_is_one_line(store):
    before = every_version(store)
    result = ttspo(store, "compact", "nosuch")
    assert (result.exit_code, result.stdout, result.stderr) == (
        1, "", f"Error: no table 'nosuch' in store {store.root}\n")
    assert every_version(store) == before


def test_a_missing_store_is_an_error_and_creates_nothing(tmp_path):
    from ttspo.builder.core.errors import StoreError

    store = ApiStore(tmp_path / "typo")
    for call in (store.gc, store.compact, lambda: store.gc(dry_run=True)):
        with pytest.raises(StoreError, match="no store at .*typo"):
            call()
    assert not (tmp_path / "typo").exists()


def test_gc_waits_for_a_writer_that_finishes(store):
    import threading
    import time

    holder = child(HOLDER, str(store.root), stdin=subprocess.PIPE)
    assert holder.stdout.readline() == "holding\n"
    release = threading.Timer(0.5, holder.stdin.close)
    start = time.monotonic()
    release.start()
    try:
        result = ApiStore(store.root).gc(keep_last=2, wait=60)
    finally:
        release.join()
        holder.wait(timeout=60)
    assert holder.returncode == 0 and result.removed == 3  # ran once the writer ended
    assert time.monotonic() - start >= 0.5  # gc blocked until the holder let go


def test_week_old_files_no_version_names_go_and_younger_ones_stay(tmp_path):
    """Uncommitted fragments (a writer killed before its commit) of a table none of whose
    versions go: gone once a week old, logged; younger (maybe a live writer's), kept.
    (A killed process: tests/test_gc_orphans.py.)"""
    import lance

    from ttspo.builder.core.table_files import UNVERIFIED_AGE, unnamed_files

    store = Store(tmp_path / "store")
    schema = pa.schema([pa.field("x", pa.int64())])
    store.write("t", pa.table({"x": [1, 2]}, schema=schema), schema, make_lineage("test", {}))
    data = store.path("t") / "data"
    named = set(os.listdir(data))

    def uncommitted() -> set[str]:
        before = set(os.listdir(data))
        lance.fragment.write_fragments(pa.table({"x": [3]}, schema=schema), str(store.path("t")),
                                       schema=schema, mode="append")
        return set(os.listdir(data)) - before

    old, young = uncommitted(), uncommitted()
    aged = (UNVERIFIED_AGE + timedelta(hours=1)).total_seconds()
    for name in old | named:
        stamp = os.stat(data / name).st_mtime - aged
        os.utime(data / name, (stamp, stamp))
    size = sum(os.stat(data / n).st_size for n in old)
    assert unnamed_files(store, "t") == {f"data/{n}": size for n in old}
    result = ttspo(store, "gc", "--keep-last", "1")
    assert result.exit_code == 0, result.output
    assert set(os.listdir(data)) == named | young and store.open("t").count_rows() == 2
    assert result.output.splitlines()[-1] == (
        f"removed 1 data file no version names, freed {size} bytes (logged in store_log version 1)")
    log = store.open("store_log").to_table().to_pylist()
    assert [(r["table"], r["versions"]) for r in log] == [("t", [])]
    assert store.lineage("store_log", 1)["orphan_files_removed"] == 1
