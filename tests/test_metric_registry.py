"""The metric registry: one definition per metric, and everything derives from it.

The toy metric of tests/toy_metric.py (its definition and backend: the only other file)
is loaded into real `ttspo` processes by TTSPO_METRICS and shows up in `score`, `sql`,
`compare`, `rewards` and a GRPO run, on a store made before it existed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from ttspo.builder.core import metrics as registry
from ttspo.builder.core.schemas import GEN, GENERATIONS_SCHEMA, METRIC_SOURCE, METRIC_STATUS
from ttspo.builder.core.store import Store, make_lineage

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from grpo_helpers import TINY, make_prompts  # noqa: E402
from test_scoring_helpers import fixture, generation, standard_store  # noqa: E402

TOY = "toy_level"


def ttspo(store: Store, *args: str) -> subprocess.CompletedProcess:
    """`ttspo --store STORE ARGS` in a fresh process that registers the toy metric."""
    env = dict(os.environ, TTSPO_METRICS="toy_metric:register_toy",
               PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "ttspo.builder.cli", "--store", str(store.root),
                           *args], env=env, capture_output=True, text=True, timeout=600)


# ------------------------------------------------------------- pure views
def test_every_metric_has_one_definition_that_the_schemas_follow():
    for name in registry.names():
        m = registry.metric(name)
        b = registry.backend_of(name)
        assert GENERATIONS_SCHEMA.field(name).type == pa.float64()
        assert METRIC_SOURCE[name] == b.source and METRIC_STATUS[name] == b.status
        assert GENERATIONS_SCHEMA.field(b.status).type == pa.string()
        assert m.better in registry.DIRECTIONS and b.kind in registry.KINDS
    # the columns generations had first keep their places; the rest come after them
    first = GENERATIONS_SCHEMA.names.index(GEN.seed)
    assert [c for c, _ in registry.new_columns()] == GENERATIONS_SCHEMA.names[first + 1:]


def test_directions_and_reward_names_come_from_the_registry():
    from ttspo.builder.analysis.compare import parse_metrics
    from ttspo.trainer.grpo.rewards import REWARDS

    assert set(registry.lower_is_better()) >= {"cer", "wer"}
    assert "ssim" not in registry.lower_is_better()
    assert set(REWARDS) == {*registry.rewarded(), "length"}
    names, lower, neither = parse_metrics(["cer", "codes_len:lower", "duration:higher",
                                           "context_audio_duration:neither"])
    assert names == ["cer", "codes_len", "duration", "context_audio_duration"]
    assert lower == ["cer", "codes_len"] and neither == ["context_audio_duration"]


@pytest.mark.parametrize("specs, message", [
    (["codes_len"], "--metric codes_len: 'codes_len' is not a registered metric"),
    (["cer:higher"], "--metric cer:higher: cer is registered with lower is better"),
    (["codes_len:down"], "--metric codes_len:down: the direction is 'lower', 'higher'"),
    (["cer", "cer"], "--metric cer is given twice"),
])
def test_compare_metric_specs_fail_with_one_line(specs, message):
    from ttspo.builder.analysis.compare import parse_metrics
    from ttspo.builder.core.errors import InputError

    with pytest.raises(InputError, match="^" + message.replace("(", r"\(")):
        parse_metrics(specs)


def test_a_bad_registration_is_refused_by_name():
    with pytest.raises(ValueError, match="metric x: unknown backend 'nope'"):
        registry.register(registry.Metric(name="x", backend="nope", better="lower"))
    assert "x" not in registry.names()


# ----------------------------------------------------- the toy metric, end to end
@pytest.fixture(scope="module")
def toy_store(tmp_path_factory):
    """A store made WITHOUT the toy metric (an older store, to it): two runs over the
    same prompts, r2 louder than r1, and one silent generation the toy backend raises on."""
    import numpy as np
    import soundfile as sf

    root = tmp_path_factory.mktemp("toy")
    store = standard_store(root / "st")
    audio, sr = sf.read(str(fixture("clean")))
    sf.write(str(root / "loud.wav"), np.clip(audio * 2.0, -1, 1), sr)
    sf.write(str(root / "silent.wav"), np.zeros(sr // 2), sr)
    rows = [generation(i, "clean", run="r2", audio_filepath=str(root / "loud.wav"))
            for i in range(4)]
    rows.append(generation(4, "clean", run="r2", text_context=True,
                           audio_filepath=str(root / "silent.wav")))
    store.write("generations", pa.Table.from_pylist(rows, schema=GENERATIONS_SCHEMA),
                GENERATIONS_SCHEMA, make_lineage("test", {}))
    scored = ttspo(store, "score", "--metrics", TOY)
    return store, scored


@pytest.mark.slow
def test_toy_metric_is_scored_with_source_and_a_null_with_reason(toy_store):
    store, scored = toy_store
    assert scored.returncode == 0, scored.stderr
    assert "  toy: toy:rms-x4" in scored.stdout
    assert "1 generation(s) could not be scored" in scored.stdout
    out = ttspo(store, "sql", "--format", "json", "SELECT generation_id, toy_level, toy_source, "
                "toy_status FROM generations ORDER BY generation_id")
    assert out.returncode == 0, out.stderr
    rows = {r["generation_id"]: r for r in json.loads(out.stdout)}
    assert len(rows) == 10
    silent = rows.pop("r2:4")
    assert silent["toy_level"] is None  # NULL with the reason, never 0
    assert silent["toy_status"] == "error: ValueError: silent audio has no level"
    for r in rows.values():
        assert 0 < r["toy_level"] <= 1 and r["toy_source"] == "toy:rms-x4"
        assert r["toy_status"] is None
    assert rows["r2:0"]["toy_level"] > rows["r1:0"]["toy_level"]  # louder is louder


@pytest.mark.slow
def test_toy_metric_in_compare_with_its_direction_and_in_the_summary(toy_store):
    store, _ = toy_store
    out = ttspo(store, "compare", "r1", "r2", "--format", "json")
    assert out.returncode == 0, out.stderr
    toy = [r for r in json.loads(out.stdout) if r["metric"] == TOY and r["breakdown"] == "all"]
    assert len(toy) == 1 and toy[0]["better"] == "higher" and toy[0]["diff"] > 0
    out = ttspo(store, "compare", "r1", "r2", "--summary", "--metric", TOY,
                "--metric", "codes_len:lower", "--format", "json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert {(r["run"], r["metric"], r["better"]) for r in rows} == {
        ("r1", TOY, "higher"), ("r2", TOY, "higher"), ("r1", "codes_len", "lower"),
        ("r2", "codes_len", "lower")}
    for r in rows:
        assert r["ci_low"] <= r["mean"] <= r["ci_high"]


@pytest.mark.slow
def test_toy_metric_as_a_reward_and_a_validity_limit(toy_store):
    store, _ = toy_store
    levels = {r["generation_id"]: r[TOY] for r in json.loads(ttspo(
        store, "sql", "--format", "json", f"SELECT generation_id, {TOY} FROM generations").stdout)}
    limit = (levels["r1:0"] + levels["r2:0"]) / 2  # r1's clean sample passes, r2's louder not
    out = ttspo(store, "rewards", "--table", "generations", "--weights", f"{TOY}=1",
                "--limits", f"{TOY}={limit!r}", "--min-valid-len", "0", "--as", "toy_rewards",
                "--format", "json")
    assert out.returncode == 0, out.stderr
    got = ttspo(store, "sql", "--format", "json",
                f"SELECT r.row_id, r.reward_{TOY} AS part, r.reward, r.valid, g.{TOY} AS value "
                "FROM toy_rewards r JOIN generations g ON r.row_id = g.generation_id")
    rows = {r["row_id"]: r for r in json.loads(got.stdout)}
    silent = rows.pop("r2:4")
    assert silent["valid"] is False and silent["reward"] == 0.0  # failed: invalid_reward zero
    for r in rows.values():
        assert r["part"] == pytest.approx(r["value"])  # linear 0..1
        assert r["valid"] is (r["value"] <= limit)
    assert {r["valid"] for r in rows.values()} == {True, False}  # the limit cut some


@pytest.mark.slow
def test_toy_metric_scored_and_rewarded_in_a_grpo_run(tmp_path):
    store = Store(tmp_path / "st")
    make_prompts(store, 2)
    args = ["train", "grpo", "--out", str(tmp_path / "run")]
    for o in [*[f"policy.model.{k}={v}" for k, v in TINY.items()], "train.progress=false",
              "train.tensorboard=false", "train.val_every=0", "grpo.prompts_per_step=1",
              "grpo.n_generations_per_item=2", "grpo.max_decoder_steps=12",
              "grpo.min_valid_codes_len=2", "train.max_steps=1", f"grpo.rewards={TOY}=1",
              f"grpo.limits={TOY}=0"]:  # every sample over its limit: all invalid
        args += ["-o", o]
    result = ttspo(store, *args)
    assert result.returncode == 0, result.stderr
    out = ttspo(store, "sql", "--format", "json",
                f"SELECT {TOY}, toy_source, reward_{TOY}, cer_source, valid FROM rollouts")
    rows = json.loads(out.stdout)
    assert len(rows) == 2
    for r in rows:
        assert r["toy_source"] == "toy:rms-x4" and r["cer_source"] is None  # only what's needed
        assert r[TOY] is not None and r["valid"] is False  # over its limit: invalid
        assert r[f"reward_{TOY}"] == pytest.approx(r[TOY])
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text()
              .splitlines() if line.strip()]
    step = [m for m in logged if "reward/failed" in m]
    assert step and f"reward/{TOY}" in step[0] and step[0]["reward/failed"] >= 0


def test_docs_list_every_registered_metric_with_its_direction():
    text = (HERE.parent / "docs" / "metrics.md").read_text()
    rows = {line.split("|")[1].strip(" `"): line for line in text.splitlines()
            if line.startswith("| `")}
    for name in registry.names():
        assert name in rows, f"docs/metrics.md has no row for {name}"
        assert f"| {registry.metric(name).better} |" in rows[name]


@pytest.mark.slow  # ~1.7 s
def test_an_older_table_reads_new_columns_as_null_and_gains_them_on_write(tmp_path):
    """generations as written before the registry's columns (no *_status, no newer
    metric): SQL reads them as NULL, an append adds them (nulls) first, scoring fills them."""
    from ttspo.builder.core.query import run
    from ttspo.builder.core.schemas import REGISTERED_FIELDS
    from ttspo.builder.scoring.run import ScoreOptions, score

    old = pa.schema([f for f in GENERATIONS_SCHEMA if f not in REGISTERED_FIELDS])
    store = Store(tmp_path)
    rows = [generation(0, "clean"), generation(1, "truncated")]
    store.write("generations", pa.Table.from_pylist(rows, schema=old), old,
                make_lineage("test", {}))
    assert GEN.cer_status not in store.open("generations").schema.names
    got = run(store, "SELECT generation_id, cer, cer_status FROM generations ORDER BY 1")[0]
    assert got.to_pylist() == [{"generation_id": "r1:0", "cer": None, "cer_status": None},
                               {"generation_id": "r1:1", "cer": None, "cer_status": None}]
    store.write("generations", pa.Table.from_pylist([generation(2, "dropped")],
                                                   schema=GENERATIONS_SCHEMA),
                GENERATIONS_SCHEMA, make_lineage("test", {}))
    assert store.open("generations").schema == GENERATIONS_SCHEMA
    assert [v["command"] for v in store.versions("generations")][-1] == "test"
    from ttspo.builder.sets.diff import diff_generations

    diff = diff_generations(store, "generations@1", "generations")  # old schema vs new
    assert diff["rows"]["added"] == 1 and diff["rows"]["kept"] == 2
    summary = score(store, ScoreOptions(metrics=("cer",)))
    assert summary.rows == 3 and summary.failed == 0
    got = run(store, "SELECT count(*) AS n FROM generations WHERE cer IS NOT NULL "
                     "AND cer_status IS NULL")[0].to_pylist()
    assert got == [{"n": 3}]


@pytest.mark.parametrize("recipe", ["best_worst", "pareto"])
def test_recipes_can_refuse_a_chosen_whose_trailing_silence_bought_its_cer(tmp_path, recipe):
    """--param max_trailing_silence (off by default): group g0's lowest CER has 1.5 s of
    trailing silence; with the limit its pair goes, g1's stays; unscored silence fails it."""
    from ttspo.builder.sets.recipes import load_recipe, run_recipe

    def row(i, group, cer, ssim, trail):
        return generation(i, "clean", group_id=f"r1:{group}", prompt_id=f"p{group}", cer=cer,
                          ssim=ssim, duration=3.0, trail_silence=trail, lead_silence=0.1)
    store = Store(tmp_path)
    rows = [row(0, "g0", 0.0, 0.8, 1.5), row(1, "g0", 0.01, 0.8, 0.1), row(2, "g0", 0.5, 0.5, 0.1),
            row(3, "g1", 0.0, 0.8, 0.1), row(4, "g1", 0.5, 0.5, None)]
    store.write("generations", pa.Table.from_pylist(rows, schema=GENERATIONS_SCHEMA),
                GENERATIONS_SCHEMA, make_lineage("test", {}))

    def chosen(**params):
        out = run_recipe(store, load_recipe(recipe), {"cer_threshold": 0.1, **params})
        return sorted(out.table["chosen_id"].to_pylist())
    assert chosen() == ["r1:0", "r1:3"]  # off by default: silence buys g0's best CER
    assert chosen(max_trailing_silence=0.5) == ["r1:3"]
    assert chosen(max_trailing_silence=0.5, max_leading_silence=0.05) == []


def test_compare_reports_every_registered_metric_with_the_registrys_direction(tmp_path):
    from ttspo.builder.analysis.compare import compare_runs

    store = Store(tmp_path)
    rows = [generation(i, "clean", run=run, prompt_id=f"p{i}", group_id=f"{run}:g{i}",
                       **{m: float(i + k) for m in registry.names()})
            for k, run in enumerate(("a", "b")) for i in range(3)]
    store.write("generations", pa.Table.from_pylist(rows, schema=GENERATIONS_SCHEMA),
                GENERATIONS_SCHEMA, make_lineage("test", {}))
    table = compare_runs(store, ["a", "b"], n_boot=10, n_perm=10)
    overall = {r["metric"]: r for r in table.to_dicts() if r["breakdown"] == "all"}
    assert list(overall) == list(registry.names())  # the registry's order
    for name, row in overall.items():
        assert row["better"] == registry.metric(name).better, name
        assert row["diff"] == pytest.approx(1.0)
    # the SQL macro's own defaults (what `ttspo sql` users get) are the registry's too
    from ttspo.builder.core.query import run

    sql = run(store, "SELECT metric, better FROM compare_runs('generations', 'a', 'b', "
                     "n_boot := 10, n_perm := 10) WHERE breakdown = 'all'")[0].to_pylist()
    assert [(r["metric"], r["better"]) for r in sql] == [
        (m, registry.metric(m).better) for m in registry.names()]
