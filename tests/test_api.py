"""The notebook API (`ttspo.Store`): every operation on a real store, and the
notebook snippets of docs/store.md run as written."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

import ttspo
from ttspo.builder.core.errors import InputError, StoreError
from ttspo.builder.core.store import Lineage
from ttspo.builder.prompts.draw import PairCounts
from nemo_layout import make_nemo_run, write_wav

NOTEBOOK = Path(__file__).parent.parent / "docs" / "store.md"  # its notebook section
RELAXED = {"min_duration": 0.1}  # the layout's wavs last 0.2 s


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """A NeMo run (4 prompts x 4 samples) ingested, a JSONL run, a set built twice."""
    root = tmp_path_factory.mktemp("api")
    run = make_nemo_run(root, n_prompts=4, group_size=4, ranks=2, gen_name="generations")
    store = ttspo.Store(root / "store")
    ingested = store.ingest_nemo(run.gen_dir, manifest=run.manifest, run="base")
    write_wav(root / "other.wav", 3)
    (root / "other.jsonl").write_text(
        json.dumps({"text": "hello there", "group": 0, "audio_filepath": "other.wav", "cer": 0.5})
        + "\n", encoding="utf-8")
    jsonl = store.ingest_jsonl(root / "other.jsonl")
    first = store.build("pareto", name="prefs", params={"cer_threshold": 0.005, **RELAXED})
    second = store.build("pareto", name="prefs", params={"cer_threshold": "0.05", **RELAXED},
                         runs=["base"])
    return store, root, ingested, jsonl, first, second


@pytest.mark.slow
def test_the_store_is_loaded_lazily():
    code = "import sys, ttspo; assert 'ttspo.builder.api' not in sys.modules; " \
           "assert 'lance' not in sys.modules and 'duckdb' not in sys.modules; " \
           "S = ttspo.Store; assert 'torch' not in sys.modules; assert S is ttspo.Store"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_store_is_assembled_from_both_halves(tmp_path):
    # The registry mixes the trainer's methods into the data half; the data half
    # alone says where they are.
    import ttspo
    from ttspo.builder.api import Store as DataStore
    from ttspo.trainer.api import TrainerMethods

    assert issubclass(ttspo.Store, DataStore) and issubclass(ttspo.Store, TrainerMethods)
    assert repr(ttspo.Store(tmp_path)) == f"ttspo.Store({str(tmp_path)!r})"
    assert not hasattr(DataStore, "train_dpo")
    with pytest.raises(AttributeError, match="the data half; ttspo.Store adds the trainer's"):
        DataStore(tmp_path).train_dpo


def test_ingest_results(pipeline):
    store, _, ingested, jsonl, _, _ = pipeline
    assert (ingested.run, ingested.ingested, ingested.groups, ingested.version) == ("base", 16, 4, 1)
    assert (jsonl.run, jsonl.ingested, jsonl.version) == ("other", 1, 2)
    lineage = store.versions("generations")[1]["lineage"]
    assert lineage["command"] == "ingest jsonl" and lineage["args"]["run"] == "other"
    assert lineage["inputs"] == {"generations": 1} and lineage["file_lines"] == 1


def test_sql_returns_a_polars_frame_with_typed_params(pipeline):
    store = pipeline[0]
    df = store.sql("SELECT run, count(*) AS n, sum(sample_index) AS s FROM generations "
                   "WHERE cer <= $max GROUP BY run ORDER BY run", max=0.5)
    assert isinstance(df, pl.DataFrame)
    assert df.to_dicts() == [{"run": "base", "n": 16, "s": 24}, {"run": "other", "n": 1, "s": 0}]
    assert df.schema["s"] == pl.Int64  # DuckDB's HUGEINT sum, as a plain integer
    # a Python value keeps its type (only --param text is typed)
    assert store.sql("SELECT $x AS x, typeof($x) AS t", x="007").to_dicts() == [
        {"x": "007", "t": "VARCHAR"}]
    # duplicate names stay apart (polars refuses duplicates outright)
    assert store.sql("SELECT 1 AS a, 2 AS a").to_dicts() == [{"a": 1, "a_1": 2}]
    assert store.sql('SELECT count(*) AS n FROM "generations@1"').item() == 16


def test_tables_versions_tag_restore(pipeline, tmp_path):
    store, root = pipeline[:2]
    assert store.tables() == [
        {"table": "generations", "rows": 17, "version": 2, "tags": []},
        {"table": "prefs", "rows": 3, "version": 2, "tags": []}]
    assert store.tag("prefs", 1, "v1") == 1 and store.tag("prefs", "v1", "first") == 1
    assert [v["tags"] for v in store.versions("prefs")] == [["first", "v1"], []]
    assert store.resolve("prefs", "v1") == 1
    with pytest.raises(StoreError, match="table 'prefs' has no version 9 \\(latest is 2\\)"):
        store.resolve("prefs", 9)
    new = store.restore("prefs", "v1")
    assert new == 3 and store.sql("SELECT count(*) FROM prefs").item() == 2
    last = store.versions("prefs")[-1]
    assert (last["command"], last["lineage"]["inputs"]) == ("restore", {"prefs": 1})
    store.restore("prefs", 2)  # back to the second build for the tests after this one


def test_build_records_typed_params_and_its_lineage(pipeline):
    store, _, _, _, first, second = pipeline
    assert (first.version, first.summary()["pairs"]) == (1, 2)
    assert (second.version, second.summary()["pairs"]) == (2, 3)
    lineage = store.versions("prefs")[1]["lineage"]
    assert lineage["command"] == "build"
    assert lineage["args"] == {"recipe": "sql/pareto.sql", "name": "prefs",
                               "params": {"cer_threshold": "0.05", "min_duration": 0.1},
                               "runs": ["base"]}
    assert lineage["params"]["cer_threshold"] == 0.05  # typed like the recipe's default
    assert lineage["inputs"] == {"generations": 2} and lineage["runs"] == ["base"]


def test_diff_and_sweep(pipeline):
    store = pipeline[0]
    assert store.diff("prefs@1", "prefs@2")["pairs"] == {
        "added": 1, "removed": 0, "kept": 2, "changed_split": 0}
    rows = store.sweep("pareto", param="cer_threshold", values=["0.005", 0.05], params=RELAXED)
    assert [(r["cer_threshold"], r["pairs"]) for r in rows] == [(0.005, 2), (0.05, 3)]
    assert [v["version"] for v in store.versions("prefs")][-1] >= 2  # sweep wrote nothing new


def test_exports(pipeline, tmp_path):
    store = pipeline[0]
    nemo = store.export_nemo("prefs@2", out=tmp_path / "manifests")
    assert nemo.pairs == {"train": 3, "val": 0}
    lines = (tmp_path / "manifests" / "dpo_train_manifest.json").read_text().splitlines()
    assert len(lines) == 6 and json.loads(lines[0])["reward"] == 1.0
    trl = store.export_trl("prefs@2", out=tmp_path / "prefs.parquet")
    assert trl.pairs == {"train": 3, "val": 0}
    assert pq.read_table(tmp_path / "prefs.parquet").num_rows == 3
    assert store.save_sql("SELECT 1 AS a, 2 AS a", tmp_path / "r.parquet") == 1
    assert pq.read_table(tmp_path / "r.parquet").column_names == ["a", "a_1"]


@pytest.mark.slow
def test_score_in_process_records_its_options(pipeline):
    store = pipeline[0]
    before = store.tables()[0]["version"]
    summary = store.score(metrics=["cer", "wer"], where="run = 'other'", rescore=True)
    assert (summary.rows, summary.version) == (1, before + 1)
    lineage = store.versions("generations")[-1]["lineage"]
    assert lineage["command"] == "score"
    assert lineage["args"]["metrics"] == ["cer", "wer"] and lineage["args"]["asr"] == "pocketsphinx"
    assert lineage["scoring"]["rows"] == 1


def test_prompts(tmp_path):
    (tmp_path / "hard.txt").write_text("One hard sentence.\nAnother hard one.\n")
    write_wav(tmp_path / "ctx.wav", 0)
    (tmp_path / "contexts.jsonl").write_text(json.dumps(
        {"context_audio_filepath": str(tmp_path / "ctx.wav"), "context_audio_duration": 0.2}) + "\n")
    store = ttspo.Store(tmp_path / "store")
    result, manifest, records = store.prompts(
        challenging_texts=tmp_path / "hard.txt", audio_contexts=tmp_path / "contexts.jsonl",
        counts=PairCounts(audio_per_challenging=1, text_per_challenging=0), seed=1,
        manifest_out=tmp_path / "pairs.json", nsamples_perpair=2)
    assert (result.new, result.version, manifest.lines, len(records)) == (2, 1, 4, 2)
    lineage = store.versions("prompts")[0]["lineage"]
    assert lineage["args"]["seed"] == 1 and lineage["manifest"]["lines"] == 4


def test_the_default_store_is_the_clis(tmp_path, monkeypatch):
    monkeypatch.setenv("TTSPO_STORE", str(tmp_path / "env"))
    assert ttspo.Store().root == tmp_path / "env"
    monkeypatch.delenv("TTSPO_STORE")
    monkeypatch.chdir(tmp_path)
    assert ttspo.Store().root == tmp_path / "ttspo-store"


def test_the_core_store_is_one_attribute_away(tmp_path):
    store = ttspo.Store(tmp_path)
    with pytest.raises(AttributeError, match=r"ttspo.Store has no 'open'; .* store.core.open"):
        store.open("generations")
    assert store.core.root == tmp_path


def test_recipes():
    assert [r["recipe"] for r in ttspo.recipes()] == ["best_worst", "pareto", "refine"]
    params = {p["parameter"]: p for p in ttspo.recipes("pareto")}
    assert params["cer_threshold"]["default"] == 0.02 and not params["seed"]["required"]


def test_reading_a_missing_store_is_an_error_and_creates_nothing(tmp_path):
    store = ttspo.Store(tmp_path / "typo")
    message = f"no store at {tmp_path / 'typo'} \\(no such folder; check --store\\)"
    for read in (lambda: store.sql("SELECT 1"), store.tables, lambda: store.versions("x"),
                 lambda: store.diff("a", "b"), lambda: store.tag("t", 1, "v1"),
                 lambda: store.export_nemo("s", out=tmp_path / "o"),
                 lambda: store.sweep("pareto", param="seed", values=[1])):
        with pytest.raises(StoreError, match=message):
            read()
    assert not (tmp_path / "typo").exists() and not (tmp_path / "o").exists()
    (tmp_path / "file").write_text("")
    with pytest.raises(StoreError, match=r"no store at .*file \(not a folder; check --store\)"):
        ttspo.Store(tmp_path / "file").tables()


def test_non_finite_parameters_are_refused(pipeline):
    store = pipeline[0]
    with pytest.raises(InputError, match="recipe pareto: --param cer_threshold=nan is not a finite"):
        store.build("pareto", name="nan_set", params={"cer_threshold": float("nan")})
    with pytest.raises(InputError, match="--param x=inf is not a finite number"):
        store.sql("SELECT $x AS x", x=float("inf"))
    assert "nan_set" not in [t["table"] for t in store.tables()]


def test_an_explicit_lineage_is_the_one_recorded(pipeline):
    store = pipeline[0]
    v = store.tag("generations", 1, "lineage-test")
    new = store.restore("generations", v, lineage=Lineage("restore", {"why": "test"}, n=1))
    record = store.versions("generations")[-1]["lineage"]
    assert (record["args"], record["n"], record["inputs"]) == ({"why": "test"}, 1, {"generations": 1})
    store.restore("generations", new - 1)


# ------------------------------------------------------------ docs/store.md
def notebook_snippets() -> list[str]:
    """The ```python blocks of the notebook section of docs/store.md, in order."""
    text = NOTEBOOK.read_text(encoding="utf-8")
    section = text.split("## In a notebook", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


@pytest.mark.slow
def test_docs_notebook_snippets_run(tmp_path, monkeypatch):
    """Exactly as written, in a folder holding what they name: a NeMo generation
    folder `generations/` and its manifest `pairs.json`."""
    make_nemo_run(tmp_path, n_prompts=4, group_size=4, ranks=2, gen_name="generations")
    monkeypatch.chdir(tmp_path)
    snippets = notebook_snippets()
    assert len(snippets) >= 3
    namespace: dict = {}
    for code in snippets:
        exec(compile(code, "docs/store.md", "exec"), namespace)
    store = namespace["store"]
    assert [v["command"] for v in store.versions("prefs")] == ["build", "build", "restore"]
    assert (tmp_path / "manifests" / "dpo_train_manifest.json").is_file()
    assert (tmp_path / "prefs.parquet").is_file()
