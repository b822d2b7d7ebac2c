"""`ttspo demo` and the bundled corpus it runs on."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

import ttspo.trainer.demo
from ttspo.trainer.demo import run as demo_api
from ttspo.builder.cli.main import cli
from ttspo.builder.core.errors import InputError
from ttspo.builder.core import query
from ttspo.builder.core.store import Store
from ttspo.trainer.policy import codec as C
from train_helpers import log_2_tolerance

CORPUS = Path(ttspo.trainer.demo.__file__).resolve().parent / "corpus"
AUDIOS = CORPUS / "generations" / "audios"
CONFIG = json.loads((CORPUS / "corpus.json").read_text())
METRIC_KEYS = ["cer_gt", "wer_gt", "duration", "spk_similarity", "pred_transcript",
               "gt_transcript"]


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def nemo_file(line: int, suffix: str) -> Path:
    ranks = CONFIG["ranks"]
    return AUDIOS / f"predicted_audioRank{line % ranks}_{line // ranks}{suffix}"


MANIFEST = jsonl(CORPUS / "manifest.json")


# ------------------------------------------------------------ the corpus
def test_every_manifest_line_has_its_wav_codes_and_metrics():
    assert len(MANIFEST) == 120 == len(jsonl(CORPUS / "variants.jsonl"))
    expected = {nemo_file(n, s).name for n in range(len(MANIFEST))
                for s in (".wav", "_codes.pt", "_metrics.json")}
    assert {p.name for p in AUDIOS.iterdir()} == expected


def test_codes_are_int16_and_one_frame_per_hop_of_their_wav():
    import torch

    codec = C.Codec.load()
    for line in range(len(MANIFEST)):
        codes = torch.load(nemo_file(line, "_codes.pt"), weights_only=True)
        info = sf.info(str(nemo_file(line, ".wav")))
        assert codes.dtype == torch.int16 and codes.shape[0] == 8, line
        assert abs(codes.shape[1] - info.duration * codec.frame_rate) <= 1, line
    # They are the shipped codec's codes (nearest-entry ties may differ across CPUs).
    audio, sr = sf.read(str(nemo_file(7, ".wav")), dtype="float32")
    shipped = torch.load(nemo_file(7, "_codes.pt"), weights_only=True).numpy()
    assert (codec.encode(audio, sr) == shipped).mean() > 0.99


def test_metrics_files_have_nemo_keys_and_the_invalid_group():
    invalid_lines = []
    for line, record in enumerate(MANIFEST):
        m = json.loads(nemo_file(line, "_metrics.json").read_text())
        assert list(m) == METRIC_KEYS, line
        assert abs(m["duration"] - sf.info(str(nemo_file(line, ".wav"))).duration) < 1e-6
        if m["pred_transcript"] == "<INVALID>":
            assert (m["cer_gt"], m["wer_gt"], m["spk_similarity"]) == (1.0, 1.0, 0.0)
            invalid_lines.append(line)
        else:
            assert 0.0 <= m["cer_gt"] and -1.0 <= m["spk_similarity"] <= 1.0
    group = CONFIG["invalid_group"] * 6
    assert invalid_lines == list(range(group, group + 6))


def test_a_group_has_an_exact_cer_ssim_tie():
    group = CONFIG["tie_group"]
    keys = [(m["cer_gt"], m["spk_similarity"]) for m in
            (json.loads(nemo_file(group * 6 + s, "_metrics.json").read_text()) for s in range(6))]
    assert len(set(keys)) < len(keys)


def test_failures_are_real_and_durations_mostly_in_nemos_range():
    variants = jsonl(CORPUS / "variants.jsonl")
    assert {v["kind"] for v in variants} == {"clean", "dropped", "repeated", "truncated",
                                             "other_speaker", "pause"}
    metrics = [json.loads(nemo_file(v["line"], "_metrics.json").read_text()) for v in variants]
    valid = [(v, m) for v, m in zip(variants, metrics) if m["pred_transcript"] != "<INVALID>"]
    mean = lambda kind, key: np.mean([m[key] for v, m in valid if v["kind"] == kind])  # noqa
    # The ASR and speaker model see the failures: clean samples are understood
    # best, another speaker is the least similar to the context.
    assert mean("clean", "cer_gt") < min(mean(k, "cer_gt") for k in ("truncated", "dropped"))
    assert mean("other_speaker", "spk_similarity") < mean("clean", "spk_similarity") - 0.05
    durations = np.array([m["duration"] for m in metrics])
    assert ((durations >= 1.5) & (durations <= 19.0)).mean() > 0.8


def test_inputs_are_relative_to_the_corpus_and_present():
    for ctx in jsonl(CORPUS / "audio_contexts.jsonl"):
        assert not Path(ctx["context_audio_filepath"]).is_absolute()
        assert (CORPUS / ctx["context_audio_filepath"]).is_file()
        assert (CORPUS / ctx["context_audio_codes_path"]).is_file()
    for ref in jsonl(CORPUS / "reference_audios.jsonl"):
        assert (CORPUS / ref["reference_audio_filepath"]).is_file()
    size = sum(p.stat().st_size for p in CORPUS.rglob("*") if p.is_file())
    assert size < 12_000_000


def test_a_manifest_the_draw_does_not_reproduce_is_refused(tmp_path):
    lines = (CORPUS / "manifest.json").read_text().splitlines()
    records = [json.loads(line) for line in lines[::6]]  # one record per pair
    demo_api.check_reproduces(records, 6, CORPUS, CORPUS / "manifest.json")
    committed = tmp_path / "manifest.json"
    changed = list(lines)
    changed[13] = changed[13].replace('"text": "', '"text": "Not ')
    committed.write_text("\n".join(changed) + "\n")
    with pytest.raises(InputError, match=r"manifest.json:14: the seeded draw differs"):
        demo_api.check_reproduces(records, 6, CORPUS, committed)
    committed.write_text("\n".join(lines[:-6]) + "\n")
    with pytest.raises(InputError, match=r"manifest.json: 114 lines, the seeded draw makes 120"):
        demo_api.check_reproduces(records, 6, CORPUS, committed)


# --------------------------------------------------------------- the demo
# The whole demo runs once for these tests (about 30 s): each is marked slow.
@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    store = tmp_path_factory.mktemp("demo") / "store"
    result = CliRunner().invoke(cli, ["demo", "--store", str(store)])
    return store, result


@pytest.mark.slow
def test_demo_runs_each_step_and_says_what_it_did(demo_run):
    store, result = demo_run
    assert result.exit_code == 0, result.output
    out = result.output
    names = ["corpus", "prompts", "ingest", "summaries", "score", "build", "train", "review",
             "rebuild", "grpo", "loop"]
    for n, name in enumerate(names, start=1):
        assert re.search(rf"^== {n}/{len(names)} {name}: ", out, re.M), name
    work = store.absolute() / "demo"
    assert "copied the bundled corpus" in out and str(work) in out
    assert (f"  $ ttspo --store {store.absolute()} ingest nemo {work / 'generations'} "
            f"--manifest {work / 'pairs.json'} --run base --group-size 6\n") in out
    assert ("ingested 120 generations (20 groups) of run base into generations@1: audio path, "
            "int16 codes, metrics and transcripts per row, in one commit\n") in out
    assert f"wrote the NeMo manifest {work / 'pairs.json'} (120 lines)" in out
    for title, _, _ in demo_api.SUMMARIES:
        assert title in out
    # the loop: both checkpoints sampled and scored, then one verdict per metric
    assert re.search(r"^demo-base: 3 held-out prompts lacked samples, 6 generations written", out, re.M)
    assert re.search(r"^CER: (no difference shown|demo-dpo is (higher|lower) than demo-base) \(",
                     out, re.M)


@pytest.mark.slow
def test_demo_tables_have_the_corpus_rows(demo_run):
    store, result = demo_run
    assert result.exit_code == 0, result.output
    st = Store(store)
    assert {"prompts", "generations"} <= set(st.tables())
    distinct = {json.dumps([r["text"], r.get("context_audio_filepath"), r.get("context_text")])
                for r in MANIFEST}
    assert st.open("prompts").count_rows() == len(distinct)
    gens = st.open("generations").to_table(columns=["invalid", "group_id", "codes"],
                                           filter="run = 'base'")  # the loop step adds runs
    assert gens.num_rows == 120
    assert sum(gens.column("invalid").to_pylist()) == 6
    assert len(set(gens.column("group_id").to_pylist())) == 20
    assert all(len(c) == 8 for c in gens.column("codes").to_pylist())
    # Contexts point at absolute paths inside the store's copy of the corpus.
    ctx = st.open("prompts").to_table(columns=["context_audio_filepath"]).column(0).to_pylist()
    assert all(p is None or (p.startswith(str(store.absolute() / "demo")) and Path(p).is_file())
               for p in ctx)


@pytest.mark.slow
def test_demo_summaries_print_tables(demo_run):
    _, result = demo_run
    out = result.output
    # The per-record-type table: challenging/regular x audio/text context.
    header = re.search(r"^record_type\s+context\s+generations\s+invalid\s+mean_cer\s+mean_ssim",
                       out, re.M)
    assert header
    rows = re.findall(r"^(challenging|regular)\s+(audio|text)\s+(\d+)\s+(\d+)\s", out, re.M)
    assert sum(int(r[2]) for r in rows) == 120 and sum(int(r[3]) for r in rows) == 6
    assert re.search(rf"^base:g{CONFIG['invalid_group']}\s.*\s6\s+6$", out, re.M)
    assert re.search(rf"^base:g{CONFIG['tie_group']}\s", out, re.M)


@pytest.mark.slow
def test_demo_again_on_the_same_store_writes_nothing(demo_run):
    store, first = demo_run
    assert first.exit_code == 0, first.output
    versions = {t: Store(store).version(t) for t in ("prompts", "generations", "demo-pareto",
                                                     "ref_logps", "checkpoints", "rollouts",
                                                     "pair_dynamics", "labels", "demo-refined")}
    again = CliRunner().invoke(cli, ["demo", "--store", str(store)])
    assert again.exit_code == 0, again.output
    assert "-> no new version (all present)\n" in again.output
    assert ("nothing to ingest: the 120 generations of run base are already in "
            "generations@4\n") in again.output  # 3, 4: the loop step's two runs
    assert "already scored by an earlier demo run in generations@2; nothing written" in again.output
    assert "demo-pareto is already built and tagged v1 (version 1); nothing written" in again.output
    assert "demo-pareto@2 was rebuilt by an earlier demo run; nothing written" in again.output
    assert "already in ref_logps; nothing written" in again.output
    assert "already trained to step 30; nothing to do" in again.output
    assert "labels by script:prefer-shorter are already stored; nothing written" in again.output
    assert "demo-refined was built by an earlier demo run; nothing written" in again.output
    assert ("demo-dpo: 0 held-out prompts lacked samples, 0 generations written (all there "
            "already; nothing written)\n") in again.output
    assert "grpo-run was trained by an earlier demo run; nothing written" in again.output
    assert {t: Store(store).version(t) for t in versions} == versions


@pytest.mark.slow
def test_demo_scores_builds_exports_tags_and_diffs(demo_run):
    store, result = demo_run
    out = result.output
    st = Store(store)
    # score: one new generations version, written by real pocketsphinx/resemblyzer/PESQ
    assert "scored 12 generation(s) of generations@1 -> version 2 (1 process(es))" in out
    assert st.lineage("generations", 2)["command"] == "score"
    rescored, _ = query.run(st, """
        SELECT count(*) AS n, count(*) FILTER (WHERE a.cer = b.cer) AS same_cer,
               count(*) FILTER (WHERE b.pesq IS NOT NULL) AS with_pesq,
               count(*) FILTER (WHERE b.cer_source LIKE 'pocketsphinx%') AS by_sphinx
        FROM "generations@1" a JOIN generations b USING (generation_id)
        WHERE b.group_index < 2""")
    # the corpus JSON came from the same models: rescoring reproduces its CER
    assert rescored.to_pylist() == [{"n": 12, "same_cer": 12, "with_pesq": 6, "by_sphinx": 12}]
    # build, tag, rebuild: two versions of the set, the first tagged v1
    assert st.tags("demo-pareto") == {"v1": 1}
    assert [v["rows"] for v in st.versions("demo-pareto")] == [5, 8]
    assert st.lineage("demo-pareto", 1)["inputs"]["generations"] == 2
    # export: NeMo manifests, pairs of lines with chosen reward 1 and rejected < 1
    lines = []
    for split in ("train", "val"):
        path = store.absolute() / "demo" / "nemo_manifests" / f"dpo_{split}_manifest.json"
        lines += [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == 10
    assert all(c["reward"] == 1 and r["reward"] < 1 and c["text"] == r["text"]
               for c, r in zip(lines[::2], lines[1::2]))
    # diff: the parameter change and the pairs it added
    assert "param cer_threshold: 0.3 -> 0.5" in out
    assert "pairs: 3 added, 0 removed, 5 kept (0 changed split)" in out


@pytest.mark.slow
def test_demo_trains_on_the_cached_reference_and_records_checkpoints(demo_run):
    store, result = demo_run
    out = result.output
    st = Store(store)
    assert "5 pairs of demo-pareto@1 under reference " in out and "wrote ref_logps@1" in out
    assert ("train dpo: demo-pareto@1 (generations@2), 4 train / 1 val pairs, 1 process(es), "
            "reference cached, from step 0") in out
    # The policy equals its reference at step 1 (cached in batches of 16, the live
    # forward in batches of 2): log 2 within the tie rule's bound (plus the printed
    # loss's 5e-5), and a tie, so accuracy 0.5 however the rounding fell.
    start = re.search(r"^start \(step 1\): loss (\S+), reward accuracy 0\.50, margin \S+, "
                      r"logp chosen (\S+), rejected (\S+)$", out, re.M)
    assert start, out
    loss, chosen, rejected = map(float, start.groups())
    # beta 0.1 (the demo's); the logps print with one decimal: 0.05 more in each.
    bound = log_2_tolerance(0.1, abs(chosen) + 0.05, abs(rejected) + 0.05)
    assert abs(loss - math.log(2)) <= 5e-5 + bound
    end = re.search(r"^end \(step 30\): loss (\S+), reward accuracy (\S+),", out, re.M)
    assert end and float(end.group(1)) < 0.6931 and float(end.group(2)) > 0.5
    rows, _ = query.run(st, "SELECT step, kind, set_name, set_version, generations_version "
                            "FROM checkpoints WHERE kind = 'step' AND trainer = 'dpo'")
    assert rows.to_pylist() == [{"step": 30, "kind": "step", "set_name": "demo-pareto",
                                 "set_version": 1, "generations_version": 2}]
    assert st.lineage("ref_logps", 1)["inputs"] == {"demo-pareto": 1, "generations": 2,
                                                    "prompts": 1}


def test_demo_refuses_a_store_path_that_is_a_file(tmp_path):
    path = tmp_path / "f"
    path.write_text("x")
    result = CliRunner().invoke(cli, ["demo", "--store", str(path)])
    assert result.exit_code == 2
    assert f"Invalid value for '--store': Directory '{path}' is a file." in result.output


@pytest.mark.slow
def test_demo_review_labels_by_a_named_script_and_refines_the_set(demo_run):
    store, result = demo_run
    assert result.exit_code == 0, result.output
    st = Store(store)
    # the DPO run's dynamics: 4 train pairs x 15 epochs (30 steps of 2), 1 val pair x 4
    rows, _ = query.run(st, "SELECT split, count(*) AS n FROM pair_dynamics GROUP BY ALL "
                            "ORDER BY split")
    assert rows.to_pylist() == [{"split": "train", "n": 60}, {"split": "val", "n": 4}]
    labels = st.open("labels").to_table().to_pylist()
    assert labels and {r["labeler"] for r in labels} == {"script:prefer-shorter"}
    lineage = st.lineage("labels", st.version("labels"))
    assert lineage["labeler"] == "script:prefer-shorter" and lineage["demo"] is True
    refined = st.lineage("demo-refined", 1)
    assert (refined["inputs"]["labels"], refined["inputs"]["pair_dynamics"],
            refined["inputs"]["demo-pareto"]) == (1, 1, 1)
    why = re.search(r"^why: (.+)$", result.output, re.M)
    assert why and "labels@1" in why.group(1)
    agreement = re.search(r"^cer +(\d+) +(\d+) ", result.output, re.M)
    assert agreement and int(agreement.group(1)) >= int(agreement.group(2))


@pytest.mark.slow
def test_demo_grpo_steps_fill_rollouts_and_summarise_them(demo_run):
    store, result = demo_run
    assert result.exit_code == 0, result.output
    st = Store(store)
    rows, _ = query.run(st, "SELECT step, count(*) AS n, count(cer) AS with_cer, "
                            "count(ssim) AS with_ssim FROM rollouts GROUP BY step ORDER BY step")
    assert rows.to_pylist() == [{"step": s, "n": 6, "with_cer": 6, "with_ssim": 6} for s in range(2)]
    assert st.versions("rollouts")[-1]["lineage"]["steps"] == [0, 1]  # one batched commit
    assert re.search(r"^step\s+samples\s+frames\s+mean_cer\s+mean_ssim\s+mean_reward\s+valid$",
                     result.output, re.M)
