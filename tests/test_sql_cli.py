"""`ttspo sql`: formats, versions and tags, parameters, --out files, refusals."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from ttspo.builder.cli.main import cli
from ttspo.builder.core.schemas import GEN, GENERATIONS_SCHEMA
from ttspo.builder.core.store import Store, make_lineage

LONG = "a transcript longer than any table cell would show, " * 2


def gen_rows(cers: list[float], run: str) -> pa.Table:
    rows = [{GEN.generation_id: f"{run}:{i}", GEN.run: run, GEN.prompt_id: f"p{i}",
             GEN.group_id: f"{run}:g0", GEN.group_index: 0, GEN.sample_index: i,
             GEN.text: "hello", GEN.invalid: False, GEN.cer: cer,
             GEN.pred_transcript: LONG if i == 0 else "hi", GEN.audio: b"RIFF",
             GEN.codes: [[1, 2]]} for i, cer in enumerate(cers)]
    return pa.Table.from_pylist(rows, schema=GENERATIONS_SCHEMA)


@pytest.fixture
def store(tmp_path) -> Store:
    """generations v1: run a (2 rows), v2: + run b (1 row); v1 tagged 'v1'."""
    s = Store(tmp_path / "store")
    s.write("generations", gen_rows([0.125, 1 / 3], "a"), GENERATIONS_SCHEMA,
            make_lineage("ingest", {"run": "a"}))
    s.write("generations", gen_rows([0.5], "b"), GENERATIONS_SCHEMA,
            make_lineage("ingest", {"run": "b"}))
    s.tag("generations", 1, "v1")
    return s


def sql(store: Store, *args: str, stdin: str | None = None):
    return CliRunner().invoke(cli, ["--store", str(store.root), "sql", *args], input=stdin)


def ok(result) -> str:
    assert (result.exit_code, result.stderr) == (0, ""), result.output
    return result.stdout


COUNT_BY_RUN = "SELECT run, count(*) AS n FROM generations GROUP BY run ORDER BY run"


# ---------------------------------------------------------------- formats
def test_table_csv_and_json(store):
    assert ok(sql(store, COUNT_BY_RUN)) == "run  n\n---  -\na    2\nb    1\n"
    assert ok(sql(store, COUNT_BY_RUN, "--format", "csv")) == "run,n\na,2\nb,1\n"
    assert json.loads(ok(sql(store, COUNT_BY_RUN, "--format", "json"))) == [
        {"run": "a", "n": 2}, {"run": "b", "n": 1}]


def test_a_table_shows_control_characters_escaped_json_and_csv_keep_them(tmp_path):
    # ESC sequences (colour, window title), BEL, DEL, a C1 CSI (0x9b), NUL, tab, CR, newline
    text = "\x1b[31mred\x1b]0;title\x07\x7f\x9b2J\x00\tx\r\ny"
    rows = gen_rows([0.5], "a").to_pylist()
    rows[0][GEN.pred_transcript] = text
    store = Store(tmp_path / "store")
    store.write("generations", pa.Table.from_pylist(rows, schema=GENERATIONS_SCHEMA),
                GENERATIONS_SCHEMA, make_lineage("ingest", {"run": "a"}))
    query = 'SELECT pred_transcript AS "said\x1b[0m" FROM generations'
    shown = r"\x1b[31mred\x1b]0;title\x07\x7f\x9b2J\x00\tx\r\ny"
    assert ok(sql(store, query)) == f"said\\x1b[0m\n{'-' * len(shown)}\n{shown}\n"
    assert json.loads(ok(sql(store, query, "--format", "json"))) == [{"said\x1b[0m": text}]
    csv_out = sql(store, query, "--format", "csv")
    assert csv_out.stdout_bytes.decode() == f'said\x1b[0m\n"{text}"\n'  # not even \r\n changed


def test_csv_keeps_every_value_whole(store):
    query = "SELECT cer, pred_transcript FROM generations WHERE run = 'a' ORDER BY cer"
    assert ok(sql(store, query, "--format", "csv")) == (
        f'cer,pred_transcript\n0.125,"{LONG}"\n{1 / 3!r},hi\n')


def test_empty_result_keeps_its_header(store):
    query = "SELECT run, cer FROM generations WHERE cer > 9"
    assert ok(sql(store, query)) == "run  cer\n---  ---\n"
    assert ok(sql(store, query, "--format", "json")) == "[]\n"


def test_views_leave_out_blobs_and_codes(store):
    columns = json.loads(ok(sql(store, "SELECT * FROM generations LIMIT 1", "--format", "json")))[0]
    assert GEN.audio not in columns and GEN.codes not in columns and GEN.cer in columns


# ------------------------------------------------------- query sources
def test_query_from_stdin(store):
    assert ok(sql(store, "-", "--format", "csv", stdin=COUNT_BY_RUN)) == "run,n\na,2\nb,1\n"


def test_query_from_sql_file(store, tmp_path):
    path = tmp_path / "count.sql"
    path.write_text("-- rows per run\n" + COUNT_BY_RUN + ";\n")
    assert ok(sql(store, str(path), "--format", "csv")) == "run,n\na,2\nb,1\n"


# ---------------------------------------------------- versions and tags
def test_older_version_and_tag(store):
    for ref in ("generations@1", "generations@v1"):
        query = f'SELECT count(*) AS n FROM "{ref}"'
        assert ok(sql(store, query, "--format", "csv")) == "n\n2\n"
    both = ('SELECT (SELECT count(*) FROM generations) - (SELECT count(*) FROM "generations@v1") '
            'AS added')
    assert ok(sql(store, both, "--format", "csv")) == "added\n1\n"


# -------------------------------------------------------------- params
def test_named_params_are_typed(store):
    query = ("SELECT count(*) AS n, $label AS label, typeof($k) AS k, typeof($lo) AS lo, "
             "typeof($label) AS t FROM generations WHERE cer > $lo AND sample_index < $k")
    out = ok(sql(store, query, "--param", "lo=0.2", "--param", "k=1", "--param", "label=x y",
                 "--format", "json"))
    assert json.loads(out) == [{"n": 1, "label": "x y", "k": "INTEGER", "lo": "DOUBLE", "t": "VARCHAR"}]


# ------------------------------------------------------------------ --out
@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".json"])
def test_out_file(store, tmp_path, suffix):
    out = tmp_path / f"result{suffix}"
    result = sql(store, COUNT_BY_RUN, "--out", str(out))
    assert (result.exit_code, result.stdout, result.stderr) == (
        0, "", f"wrote 2 rows to {out}\n")
    if suffix == ".parquet":
        assert pq.read_table(out).to_pylist() == [{"run": "a", "n": 2}, {"run": "b", "n": 1}]
    elif suffix == ".csv":
        assert out.read_text() == "run,n\na,2\nb,1\n"
    else:
        assert json.loads(out.read_text()) == [{"run": "a", "n": 2}, {"run": "b", "n": 1}]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".result")] == []


# ----------------------------------------------------------------- errors
def fails(store: Store, args: list[str], message: str, stdin: str | None = None) -> None:
    """Exit 1, one line on stderr, nothing on stdout, the store untouched."""
    before = store.versions("generations"), store.tags("generations")
    result = sql(store, *args, stdin=stdin)
    assert (result.exit_code, result.stdout, result.stderr) == (1, "", f"Error: {message}\n")
    assert (store.versions("generations"), store.tags("generations")) == before


def test_reading_files_is_refused(store):
    fails(store, ["SELECT * FROM read_csv('/etc/passwd')"],
          'SQL error: Permission Error: Cannot access file "/etc/passwd" - file system '
          "operations are disabled by configuration")


def test_copy_to_is_refused(store, tmp_path):
    target = tmp_path / "leak.csv"
    fails(store, [f"COPY generations TO '{target}'"], "only SELECT queries are allowed (got COPY)")
    fails(store, [f"COPY (SELECT 1) TO '{target}'"], "only SELECT queries are allowed (got COPY)")
    assert not target.exists()


def test_create_and_writes_are_refused(store):
    fails(store, ["CREATE TABLE x AS SELECT 1"], "only SELECT queries are allowed (got CREATE)")
    fails(store, ["DELETE FROM generations"], "only SELECT queries are allowed (got DELETE)")


def test_syntax_error(store):
    fails(store, ["SELEC 1"], 'SQL error: Parser Error: syntax error at or near "SELEC"')


def test_unknown_table(store):
    fails(store, ["SELECT * FROM nope"],
          "SQL error: Catalog Error: Table with name nope does not exist!")


def test_unknown_version_and_tag(store):
    fails(store, ['SELECT * FROM "generations@9"'],
          "table 'generations' has no version or tag '9' (tags: v1)")
    fails(store, ['SELECT * FROM "generations@v9"'],
          "table 'generations' has no version or tag 'v9' (tags: v1)")


def test_missing_parameter_and_bad_param(store):
    fails(store, ["SELECT $x AS x"], "SQL error: Invalid Input Error: Values were not provided "
                                     "for the following parameters: x")
    fails(store, ["SELECT 1", "--param", "novalue"], "--param 'novalue' is not NAME=VALUE")


def test_missing_sql_file_and_empty_stdin(store, tmp_path):
    fails(store, [str(tmp_path / "nope.sql")], f"{tmp_path / 'nope.sql'}: no such SQL file")
    fails(store, ["-"], "empty query", stdin="  \n")


def test_bad_out_paths(store, tmp_path):
    fails(store, [COUNT_BY_RUN, "--out", str(tmp_path / "r.txt")],
          f"{tmp_path / 'r.txt'}: unknown output format '.txt' (use .parquet, .csv, .json)")
    fails(store, [COUNT_BY_RUN, "--out", str(tmp_path / "no" / "r.csv")],
          f"{tmp_path / 'no' / 'r.csv'}: directory {tmp_path / 'no'} does not exist")


def test_failed_query_writes_no_out_file(store, tmp_path):
    out = tmp_path / "r.parquet"
    fails(store, ["SELECT * FROM nope", "--out", str(out)],
          "SQL error: Catalog Error: Table with name nope does not exist!")
    assert list(tmp_path.iterdir()) == [store.root]


def test_out_file_gets_ordinary_permissions(store, tmp_path):
    mask = os.umask(0o022)
    try:
        out = tmp_path / "r.csv"
        assert sql(store, COUNT_BY_RUN, "--out", str(out)).exit_code == 0
    finally:
        os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o644
