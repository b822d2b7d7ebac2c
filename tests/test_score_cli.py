"""`ttspo score` on real stores: metrics, provenance, one version, untouched audio/codes."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from ttspo.builder.cli.main import cli
from ttspo.builder.core import metrics as registry
from ttspo.builder.core.schemas import GEN
from ttspo.builder.scoring.run import ScoreOptions, score
from ttspo.builder.core.store import Store
from test_scoring_helpers import (data_files, fixture, generation, metrics_by_id,
                                  standard_store, write_generations)

SOURCES = ["  asr: pocketsphinx:en-us+nemo-normalizer", "  ssim: resemblyzer:pretrained.pt",
           "  pesq: pesq:wb-16k"]


def invoke(store: Store, *args: str):
    return CliRunner().invoke(cli, ["--store", str(store.root), "score", *args])


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """The standard store, scored once by the CLI: (store, result, files before)."""
    store = standard_store(tmp_path_factory.mktemp("scored"))
    before = data_files(store)
    result = invoke(store, "--metrics", "cer,wer,ssim,pesq", "--batch-size", "2")
    return store, result, before


@pytest.mark.slow
def test_score_reports_one_new_version_and_its_sources(scored):
    store, result, _ = scored
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "scored 5 generation(s) of generations@1 -> version 2 (1 process(es))", *SOURCES]
    assert [v["version"] for v in store.versions("generations")] == [1, 2]


@pytest.mark.slow
def test_metrics_rank_the_fixtures_as_expected(scored):
    m = metrics_by_id(scored[0])
    clean, truncated, dropped, other, text_ctx = (m[f"r1:{i}"] for i in range(5))
    assert clean[GEN.cer] < truncated[GEN.cer] and clean[GEN.cer] < dropped[GEN.cer]
    assert clean[GEN.ssim] > other[GEN.ssim]
    assert clean[GEN.pesq] > 4.0 > other[GEN.pesq]  # clean is its prompt's reference


@pytest.mark.slow
def test_text_context_has_null_ssim_with_its_source(scored):
    row = metrics_by_id(scored[0])["r1:4"]
    assert row[GEN.ssim] is None
    assert row[GEN.ssim_source] == "resemblyzer:pretrained.pt"
    assert row[GEN.pesq] is None  # its prompt has no reference recording
    assert row[GEN.pesq_source] == "pesq:wb-16k"
    assert row[GEN.cer] is not None


@pytest.mark.slow
def test_transcripts_and_provenance_are_stored(scored):
    from ttspo.builder.scoring.metrics import cer

    for row in metrics_by_id(scored[0]).values():
        assert row[GEN.cer_source] == "pocketsphinx:en-us+nemo-normalizer"
        assert row[GEN.gt_transcript] == "please call stella and ask her to bring these things"
        # The stored pair reproduces the stored CER: the number is traceable.
        assert cer(row[GEN.gt_transcript], row[GEN.pred_transcript], "none") == row[GEN.cer]
        assert row[GEN.squim] is None and row[GEN.squim_source] is None
        assert row[GEN.invalid] is False


def field_ids(ds, name: str) -> set[int]:
    """Lance field ids of column NAME and of its nested children."""
    def walk(f):
        return {f.id()} | {i for c in f.children() for i in walk(c)}
    return walk(ds.lance_schema.field(name))


@pytest.mark.slow
def test_audio_and_codes_files_are_not_rewritten(scored):
    store, _, before = scored
    after = data_files(store)
    ds = store.open("generations")
    written = {i for c in (GEN.cer, GEN.wer, GEN.pred_transcript, GEN.gt_transcript,
                           GEN.invalid, GEN.cer_source, GEN.ssim, GEN.ssim_source,
                           GEN.pesq, GEN.pesq_source, GEN.cer_status, GEN.ssim_status,
                           GEN.pesq_status) for i in field_ids(ds, c)}
    heavy = field_ids(ds, GEN.audio) | field_ids(ds, GEN.codes)
    for fragment, files in before.items():
        (old_path, old_fields), = files.items()
        assert old_path in after[fragment]  # the same file, where it was
        kept = after[fragment][old_path]
        assert [f for f in old_fields if f in heavy] == [f for f in kept if f in heavy]
        assert any(f in heavy for f in kept)
        (new_path, new_fields), = [(p, f) for p, f in after[fragment].items() if p != old_path]
        assert set(new_fields) == written  # only the metric, source and transcript columns
        assert sorted(f for f, k in zip(old_fields, kept) if k == -2) == sorted(written)
    assert ds.to_table(columns=[GEN.codes])[GEN.codes].to_pylist()[1] == [[1, 2, 3], [7, 8, 9]]
    blob = ds.take_blobs(GEN.audio, indices=[1])[0]
    assert blob.readall() == fixture("truncated").read_bytes()


@pytest.mark.slow
def test_lineage_records_inputs_and_sources(scored):
    store = scored[0]
    lineage = store.lineage("generations", 2)
    assert lineage["command"] == "score"
    assert lineage["inputs"] == {"generations": 1, "prompts": 1}
    assert lineage["args"]["metrics"] == "cer,wer,ssim,pesq"
    assert lineage["scoring"]["sources"] == {
        "asr": "pocketsphinx:en-us+nemo-normalizer", "ssim": "resemblyzer:pretrained.pt",
        "pesq": "pesq:wb-16k"}


@pytest.mark.slow
def test_sql_views_see_the_scores(scored):
    from ttspo.builder.core.query import run

    table, versions = run(scored[0], "SELECT count(*) AS n FROM generations WHERE cer IS NOT NULL")
    assert table.to_pylist() == [{"n": 5}] and versions == {"generations": 2}


@pytest.mark.slow
def test_nothing_left_to_score_writes_nothing(scored):
    store = scored[0]
    result = invoke(store, "--metrics", "cer,wer,ssim,pesq")
    assert result.exit_code == 0
    assert result.output == "generations@2: nothing to score\n"
    assert store.version("generations") == 2


# ------------------------------------------------------------ incremental
@pytest.mark.slow
def test_incremental_scoring_touches_only_unscored_rows(tmp_path):
    store = standard_store(tmp_path)
    nemo = {GEN.cer: 0.5, GEN.wer: 0.5, GEN.cer_source: "nemo-metrics-json",
            GEN.pred_transcript: "from nemo", GEN.gt_transcript: "x"}
    write_generations(store, [generation(10, "dropped", run="r2", **nemo),
                              generation(11, "clean", run="r2")])
    summary = score(store, ScoreOptions(metrics=("cer", "wer")))
    assert summary.rows == 6 and store.version("generations") == 3
    first = metrics_by_id(store)
    assert first["r2:10"][GEN.cer] == 0.5  # scored by NeMo already: kept
    assert first["r2:10"][GEN.cer_source] == "nemo-metrics-json"

    write_generations(store, [generation(12, "truncated", run="r3")])
    summary = score(store, ScoreOptions(metrics=("cer", "wer")))
    assert summary.rows == 1 and summary.version == 5
    delta = store.open("generations").delta(compared_against=4)
    updated = delta.get_updated_rows().read_all()[GEN.generation_id].to_pylist()
    assert updated == ["r3:12"]
    after = metrics_by_id(store)
    assert {k: v for k, v in after.items() if k != "r3:12"} == first
    assert after["r3:12"][GEN.cer] is not None


@pytest.mark.slow
def test_new_metric_added_to_scored_rows_keeps_the_others(tmp_path):
    store = Store(tmp_path)
    write_generations(store, [generation(0, "clean"), generation(1, "other", blob=True)])
    score(store, ScoreOptions(metrics=("cer", "wer")))
    before = metrics_by_id(store)
    summary = score(store, ScoreOptions(metrics=("cer", "wer", "ssim")))
    assert summary.groups == ["ssim"] and summary.rows == 2
    after = metrics_by_id(store)
    for gid, row in after.items():
        assert row[GEN.cer] == before[gid][GEN.cer]
        assert row[GEN.pred_transcript] == before[gid][GEN.pred_transcript]
        assert row[GEN.ssim_source] == "resemblyzer:pretrained.pt"


@pytest.mark.slow
def test_rescore_with_where_rescores_only_matching_rows(tmp_path):
    store = Store(tmp_path)
    write_generations(store, [generation(i, "truncated") for i in range(3)])
    score(store, ScoreOptions(metrics=("cer", "wer")))
    result = invoke(store, "--metrics", "cer", "--rescore", "--normalizer", "basic",
                    "--where", "sample_index < 2 AND run = 'r1'")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "scored 2 generation(s) of generations@2 -> version 3 (1 process(es))",
        "  asr: pocketsphinx:en-us+basic-normalizer"]
    sources = {g: r[GEN.cer_source] for g, r in metrics_by_id(store).items()}
    assert sources == {"r1:0": "pocketsphinx:en-us+basic-normalizer",
                       "r1:1": "pocketsphinx:en-us+basic-normalizer",
                       "r1:2": "pocketsphinx:en-us+nemo-normalizer"}


@pytest.mark.slow
def test_invalid_rows_from_nemo_are_rescored_and_cleared(tmp_path):
    store = Store(tmp_path)
    placeholder = {GEN.cer: 1.0, GEN.wer: 1.0, GEN.ssim: 0.0, GEN.invalid: True,
                   GEN.pred_transcript: "<INVALID>", GEN.cer_source: "nemo-metrics-json",
                   GEN.ssim_source: "nemo-metrics-json"}
    write_generations(store, [generation(0, "clean", **placeholder)])
    score(store)
    row = metrics_by_id(store)["r1:0"]
    assert row[GEN.invalid] is False and row[GEN.cer] < 0.5 and row[GEN.ssim] > 0.5


# ------------------------------------------------------------------ errors
def test_unreadable_audio_alone_fails_listing_it_and_writes_nothing(tmp_path):
    store = Store(tmp_path)
    write_generations(store, [generation(9, "clean", run="bad",
                                         audio_filepath=str(tmp_path / "gone.wav"))])
    result = invoke(store, "--metrics", "cer")
    assert result.exit_code == 1
    assert result.output == (
        "Error: none of 1 generation(s) could be scored, nothing written:\n"
        f"  bad:9: error: audio: {tmp_path / 'gone.wav'}: cannot read audio "
        f"(Error opening '{tmp_path / 'gone.wav'}': System error.)\n")
    assert store.version("generations") == 1


def test_unreadable_audio_among_good_is_null_with_its_reason(tmp_path):
    """A corrupt (zero-length) wav and a missing one among good files: those two are
    NULL with the reason in cer_status, the good one is scored, exit 0 with the count."""
    store = Store(tmp_path)
    (tmp_path / "empty.wav").write_bytes(b"")
    write_generations(store, [generation(0, "truncated"),
                              generation(8, "clean", run="bad",
                                         audio_filepath=str(tmp_path / "empty.wav")),
                              generation(9, "clean", run="bad",
                                         audio_filepath=str(tmp_path / "gone.wav"))])
    result = invoke(store, "--metrics", "cer")
    assert result.exit_code == 0, result.output
    assert "2 generation(s) could not be scored" in result.output
    rows = metrics_by_id(store)
    good, empty, gone = rows["r1:0"], rows["bad:8"], rows["bad:9"]
    assert good[GEN.cer] is not None and good[GEN.cer_status] is None
    for bad, name in ((empty, "empty.wav"), (gone, "gone.wav")):
        assert bad[GEN.cer] is None and bad[GEN.wer] is None  # NULL, never 0
        assert bad[GEN.cer_status].startswith(f"error: audio: {tmp_path / name}: cannot read")
    # the failures are tried again by the next run (the good row is not)
    again = invoke(store, "--metrics", "cer")
    assert again.exit_code == 1 and "none of 2 generation(s)" in again.output


@pytest.mark.parametrize("args,message", [
    (["--metrics", "cer,nope"], "Error: --metrics: unknown metric 'nope' "
                                f"(choose from {','.join(registry.names())})\n"),
    (["--metrics", ","], f"Error: --metrics: name at least one of {','.join(registry.names())}\n"),
    (["--asr", "nemo:/no/model.nemo"], "Error: --asr nemo:/no/model.nemo: file not found\n"),
    (["--sv", "nemo:/no/titanet.nemo"], "Error: --sv nemo:/no/titanet.nemo: file not found\n"),
    (["--metrics", "squim"], "Error: --metrics squim needs --squim PATH (SQUIM objective "
                             "weights; models are never downloaded)\n"),
    (["--metrics", "squim", "--squim", "/no/squim.pt"],
     "Error: --squim /no/squim.pt: file not found\n"),
    (["--where", "no_such_column = 1"], None),
])
def test_bad_options_fail_cleanly_and_write_nothing(tmp_path, args, message):
    store = standard_store(tmp_path)
    result = invoke(store, *args)
    assert result.exit_code == 1
    if message is None:
        assert result.output.startswith("Error: --where: Binder Error: Referenced column "
                                        '"no_such_column" not found')
    else:
        assert result.output == message
    assert store.version("generations") == 1


def test_score_without_generations_table(tmp_path):
    result = CliRunner().invoke(cli, ["--store", str(tmp_path / "empty"), "score"])
    assert result.exit_code == 1
    assert result.output == f"Error: no table 'generations' in store {tmp_path / 'empty'}\n"


def test_help_lists_the_backends():
    result = CliRunner().invoke(cli, ["score", "--help"])
    assert result.exit_code == 0
    flat = " ".join(result.output.split())
    for text in ("pocketsphinx | nemo:PATH.nemo | whisper:DIR",
                 "resemblyzer[:PATH.pt] | nemo:PATH.nemo", "--workers", "--rescore"):
        assert text in flat


def test_summary_round_trips_through_json():
    from dataclasses import asdict

    from ttspo.builder.scoring.run import ScoreSummary

    s = ScoreSummary(version=3, read_version=2, rows=5, groups=["asr"], sources={"asr": "x"},
                     world_size=2, seconds={"asr": 1.5}, audio_seconds=10.0, wall_seconds=3.0)
    assert ScoreSummary(**json.loads(json.dumps(asdict(s)))) == s
    assert s.rtf("asr") == 0.15


@pytest.mark.slow
def test_worst_generations_by_cer_and_by_ssim(scored):
    from ttspo.builder.scoring.run import worst

    store = scored[0]
    by_cer = worst(store, "cer", limit=2)
    assert [r[GEN.generation_id] for r in by_cer] == ["r1:3", "r1:1"]  # other, truncated
    assert set(by_cer[0]) == {GEN.generation_id, GEN.text, GEN.pred_transcript, GEN.cer,
                              GEN.cer_source}
    by_ssim = worst(store, "ssim", limit=10)
    assert by_ssim[0][GEN.generation_id] == "r1:3"  # the other voice
    assert len(by_ssim) == 4  # the text-context row has no SSIM
    with pytest.raises(Exception, match="unknown metric 'nope'"):
        worst(store, "nope")


def test_in_process_scoring_restores_the_callers_torch_threads(tmp_path):
    import torch

    store = Store(tmp_path)
    write_generations(store, [generation(0, "truncated")])
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        score(store, ScoreOptions(metrics=("cer",)))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow
def test_scores_land_on_the_right_rows_after_deletes_and_compaction(tmp_path):
    """Row ids are stable ids, not positions: the write joins on them."""
    store = Store(tmp_path)
    write_generations(store, [generation(0, "clean"), generation(1, "truncated")])
    write_generations(store, [generation(2, "other", blob=True), generation(3, "clean")])
    store.open("generations").delete("generation_id = 'r1:1'")
    store.open("generations").optimize.compact_files()
    assert len(store.open("generations").get_fragments()) == 1
    score(store, ScoreOptions(metrics=("cer",)))
    m = metrics_by_id(store)
    assert sorted(m) == ["r1:0", "r1:2", "r1:3"]
    assert m["r1:0"][GEN.pred_transcript] == m["r1:3"][GEN.pred_transcript]  # both clean
    assert m["r1:2"][GEN.cer] > m["r1:0"][GEN.cer]  # the other voice


def test_shards_balance_audio_not_row_counts(tmp_path):
    from ttspo.builder.scoring.plan import make_plan

    store = Store(tmp_path)
    # Long and short rows alternate: dealing every other row would give one rank
    # all the long ones.
    durations = [10.0, 1.0] * 4
    write_generations(store, [generation(i, "clean", duration=d)
                              for i, d in enumerate(durations)])
    plan = make_plan(store, ScoreOptions())
    shards = [plan.shard(r, 2) for r in range(2)]
    loads = [sum(s[GEN.duration].to_pylist()) for s in shards]
    assert loads == [22.0, 22.0]
    ids = sorted(i for s in shards for i in s[GEN.generation_id].to_pylist())
    assert ids == sorted(f"r1:{i}" for i in range(8))  # every row once
    assert plan.shard(0, 1)[GEN.generation_id].to_pylist() == [f"r1:{i}" for i in range(8)]
