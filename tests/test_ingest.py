"""`ttspo ingest nemo` / `ingest jsonl`: what lands in the store, idempotence, runs."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ttspo.builder.core import ids
from ttspo.builder.cli.main import cli
from ttspo.builder.ingest.run import ingest_nemo
from ttspo.builder.core.store import Store
from nemo_layout import codes_for, make_nemo_run, metrics_for, write_codes, write_wav

LIGHT = ["generation_id", "run", "prompt_id", "group_id", "group_index", "sample_index",
         "manifest_line", "text", "record_type", "context_audio_filepath",
         "context_audio_duration", "context_text", "audio_filepath", "codes_path", "codes",
         "duration", "sample_rate", "cer", "wer", "ssim", "pesq", "squim", "codes_len",
         "pred_transcript", "gt_transcript", "invalid", "cer_source", "ssim_source",
         "pesq_source", "squim_source", "source_file"]


def invoke(store: Path, *args: str):
    result = CliRunner().invoke(cli, ["--store", str(store), *args])
    assert "Traceback" not in result.output
    return result


def rows(store: Path, run: str | None = None) -> list[dict]:
    table = Store(store).open("generations").to_table(columns=LIGHT)
    out = sorted(table.to_pylist(), key=lambda r: (r["run"], r["manifest_line"]))
    return [r for r in out if run is None or r["run"] == run]


@pytest.fixture()
def demo(tmp_path):
    return make_nemo_run(tmp_path, n_prompts=3, group_size=4, ranks=2, invalid=(5,), pesq=True)


def test_nemo_ingest_stores_one_row_per_generation(tmp_path, demo):
    store = tmp_path / "st"
    result = invoke(store, "ingest", "nemo", str(demo.gen_dir), "--manifest", str(demo.manifest))
    assert result.exit_code == 0, result.output
    assert result.stdout == "ingested 12 generations (3 groups) from run demo into generations@1\n"

    got = rows(store)
    assert [r["generation_id"] for r in got] == [ids.generation_id("demo", i) for i in range(12)]
    for line, row in enumerate(got):
        record = demo.lines[line]
        metrics = metrics_for(line, record, invalid=line == 5, pesq=True)
        assert row["run"] == "demo"
        assert (row["group_index"], row["sample_index"]) == (line // 4, line % 4)
        assert row["group_id"] == ids.group_id("demo", line // 4)
        assert row["manifest_line"] == line
        assert row["text"] == record["text"]
        assert row["record_type"] == record["record_type"]
        assert row["audio_filepath"] == str(demo.wav(line)) and Path(row["audio_filepath"]).is_absolute()
        assert row["codes_path"] == str(demo.codes(line))
        assert row["source_file"] == str(demo.metrics(line))
        codes = np.array(row["codes"], dtype=np.int16)
        assert codes.shape == (8, 20 + line % 5)
        assert np.array_equal(codes, torch.load(demo.codes(line)).numpy())
        assert row["duration"] == pytest.approx(0.2) and row["sample_rate"] == 22050
        assert (row["cer"], row["wer"], row["ssim"]) == (
            metrics["cer_gt"], metrics["wer_gt"], metrics["spk_similarity"])
        assert (row["pesq"], row["codes_len"]) == (metrics["pesq"], metrics["codes_len"])
        assert row["squim"] is None and row["squim_source"] is None
        assert (row["pred_transcript"], row["gt_transcript"]) == (
            metrics["pred_transcript"], metrics["gt_transcript"])
        assert row["invalid"] is (line == 5)
        assert row["cer_source"] == row["ssim_source"] == row["pesq_source"] == "nemo-metrics-json"


def test_prompt_ids_follow_the_context_kind(tmp_path, demo):
    store = tmp_path / "st"
    invoke(store, "ingest", "nemo", str(demo.gen_dir), "--manifest", str(demo.manifest))
    got = rows(store)
    audio_ctx, text_ctx = got[0], got[8]  # prompt 2 of make_records has a text context
    assert audio_ctx["context_audio_filepath"] == "/data/contexts/ctx_0.wav"
    assert audio_ctx["context_audio_duration"] == 3.5 and audio_ctx["context_text"] is None
    assert audio_ctx["prompt_id"] == ids.prompt_id(audio_ctx["text"], "/data/contexts/ctx_0.wav")
    # Text context: NeMo's dummy audio path is not the context, the text is.
    assert text_ctx["context_audio_filepath"] is None and text_ctx["context_audio_duration"] is None
    assert text_ctx["context_text"] == "Speaker 2 speaks calmly."
    assert text_ctx["prompt_id"] == ids.prompt_id(text_ctx["text"], None, "Speaker 2 speaks calmly.")
    assert len({r["prompt_id"] for r in got}) == 3


def test_reingest_changes_nothing_and_another_run_appends(tmp_path, demo):
    store = tmp_path / "st"
    args = ["ingest", "nemo", str(demo.gen_dir), "--manifest", str(demo.manifest)]
    assert invoke(store, *args).exit_code == 0
    again = invoke(store, *args)
    assert again.exit_code == 0
    assert again.stdout == ("nothing to ingest: all 12 generations of run demo are already in "
                            "generations@1; store unchanged\n")
    assert [v["version"] for v in Store(store).versions("generations")] == [1]

    other = invoke(store, *args, "--run", "second")
    assert other.stdout == "ingested 12 generations (3 groups) from run second into generations@2\n"
    got = rows(store)
    assert len(got) == 24
    assert {r["generation_id"] for r in got} == (
        {f"demo:{i}" for i in range(12)} | {f"second:{i}" for i in range(12)})


def test_lineage_records_inputs_and_manifest(tmp_path, demo):
    store = tmp_path / "st"
    args = ["ingest", "nemo", str(demo.gen_dir), "--manifest", str(demo.manifest)]
    invoke(store, *args)
    invoke(store, *args, "--run", "b")
    first, second = Store(store).lineage("generations", 1), Store(store).lineage("generations", 2)
    assert first["command"] == "ingest nemo" and first["inputs"] == {}
    assert second["inputs"] == {"generations": 1}
    assert second["args"]["run_name"] == "b"
    assert second["manifest_sha256"] == hashlib.sha256(demo.manifest.read_bytes()).hexdigest()
    assert second["gen_dir"] == str(demo.gen_dir)
    assert (second["ingested"], second["ranks"], second["manifest_lines"]) == (12, 2, 12)


def test_files_are_found_anywhere_under_gen_dir(tmp_path, demo):
    # Move codes and metrics of rank 1 into other folders (e.g. per-node outputs).
    for line in range(1, 12, 2):
        for kind, sub in ((1, "node1/codes"), (2, "node1/metrics")):
            target = demo.gen_dir / sub
            target.mkdir(parents=True, exist_ok=True)
            shutil.move(demo.path(line, kind), target / demo.path(line, kind).name)
    store = tmp_path / "st"
    assert invoke(store, "ingest", "nemo", str(demo.gen_dir), "--manifest",
                  str(demo.manifest)).exit_code == 0
    got = rows(store)
    assert got[3]["codes_path"] == str(demo.gen_dir / "node1/codes/predicted_audioRank1_1_codes.pt")
    assert np.array_equal(np.array(got[3]["codes"], dtype=np.int16), codes_for(3))


def test_ranks_are_read_off_the_file_names(tmp_path):
    run = make_nemo_run(tmp_path, n_prompts=3, group_size=3, ranks=3)
    store = tmp_path / "st"
    assert invoke(store, "ingest", "nemo", str(run.gen_dir), "--manifest",
                  str(run.manifest)).exit_code == 0
    for line, row in enumerate(rows(store)):
        # file (r, i) holds line i*3 + r: its codes are the ones written for that line
        assert Path(row["codes_path"]).name == f"predicted_audioRank{line % 3}_{line // 3}_codes.pt"
        assert np.array_equal(np.array(row["codes"], dtype=np.int16), codes_for(line))


def test_groups_adjacent_repeats_split_and_group_size_override(tmp_path):
    run = make_nemo_run(tmp_path, n_prompts=3, group_size=4, ranks=2)
    # The shuffle put prompt 0 twice in a row: lines 0-7 are one record.
    lines = [run.lines[0]] * 8 + run.lines[8:]
    run.manifest.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines))
    store = tmp_path / "st"
    out = invoke(store, "ingest", "nemo", str(run.gen_dir), "--manifest", str(run.manifest))
    assert out.stdout == "ingested 12 generations (3 groups) from run demo into generations@1\n"
    assert [r["group_index"] for r in rows(store)] == [0] * 4 + [1] * 4 + [2] * 4
    assert len({r["prompt_id"] for r in rows(store)[:8]}) == 1

    out = invoke(store, "ingest", "nemo", str(run.gen_dir), "--manifest", str(run.manifest),
                 "--run", "pairs", "--group-size", "2")
    assert out.stdout == "ingested 12 generations (6 groups) from run pairs into generations@2\n"
    got = rows(store, "pairs")
    assert [(r["group_index"], r["sample_index"]) for r in got] == [(i // 2, i % 2) for i in range(12)]


def test_embed_audio_stores_the_wav_bytes_as_a_blob(tmp_path, demo):
    store = tmp_path / "st"
    out = invoke(store, "ingest", "nemo", str(demo.gen_dir), "--manifest", str(demo.manifest),
                 "--embed-audio")
    assert out.exit_code == 0
    ds = Store(store).open("generations")
    lines = ds.to_table(columns=["manifest_line"]).column(0).to_pylist()
    blobs = ds.take_blobs("audio", indices=list(range(len(lines))))
    for line, blob in zip(lines, blobs):
        assert blob.read() == demo.wav(line).read_bytes()


@pytest.mark.slow
def test_parallel_readers_give_the_same_rows(tmp_path, demo):
    one, two = tmp_path / "one", tmp_path / "two"
    ingest_nemo(Store(one), demo.gen_dir, demo.manifest, workers=1)
    ingest_nemo(Store(two), demo.gen_dir, demo.manifest, workers=2, batch_rows=5)
    assert rows(one) == rows(two)


# ------------------------------------------------------------------ jsonl
def write_jsonl_corpus(root: Path) -> Path:
    """Two groups of three from 'another system': relative paths, .pt and .npy codes."""
    (root / "wav").mkdir(parents=True)
    records = []
    for line in range(6):
        write_wav(root / "wav" / f"g{line}.wav", line, seconds=0.25, sample_rate=16000)
        record = {"text": "Hello there." if line < 3 else "General Kenobi.",
                  "group": "a" if line < 3 else 7, "audio_filepath": f"wav/g{line}.wav",
                  "cer": 0.1 * line, "ssim": 0.8 - 0.01 * line}
        if line < 3:
            record["context_audio_filepath"] = "/ctx/spk1.wav"
            write_codes(root / "wav" / f"g{line}.pt", codes_for(line))
            record["codes_path"] = f"wav/g{line}.pt"
        else:
            record.update(context_text="A calm voice.", sample=5 - line, record_type="regular",
                          pred_transcript="<INVALID>" if line == 4 else "general kenobi",
                          wer=0.5, pesq=3.25)
            np.save(root / "wav" / f"g{line}.npy", codes_for(line))
            record["codes_path"] = f"wav/g{line}.npy"
        records.append(record)
    path = root / "other.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_jsonl_ingest(tmp_path):
    path = write_jsonl_corpus(tmp_path / "data")
    store = tmp_path / "st"
    out = invoke(store, "ingest", "jsonl", str(path))
    assert out.exit_code == 0, out.output
    assert out.stdout == "ingested 6 generations (2 groups) from run other into generations@1\n"
    got = rows(store)
    assert [r["generation_id"] for r in got] == [f"other:{i}" for i in range(6)]
    assert [(r["group_index"], r["sample_index"]) for r in got] == [
        (0, 0), (0, 1), (0, 2), (1, 2), (1, 1), (1, 0)]
    first, last = got[0], got[5]
    assert first["audio_filepath"] == str(tmp_path / "data/wav/g0.wav")
    assert first["source_file"] == f"{path}:1" and last["source_file"] == f"{path}:6"
    assert first["sample_rate"] == 16000 and first["duration"] == pytest.approx(0.25)
    assert first["prompt_id"] == ids.prompt_id("Hello there.", "/ctx/spk1.wav")
    assert last["prompt_id"] == ids.prompt_id("General Kenobi.", None, "A calm voice.")
    assert np.array_equal(np.array(first["codes"], dtype=np.int16), codes_for(0))
    assert np.array_equal(np.array(last["codes"], dtype=np.int16), codes_for(5))
    assert (first["cer"], first["wer"], first["pesq"]) == (0.0, None, None)
    assert (first["cer_source"], first["ssim_source"], first["pesq_source"]) == ("jsonl", "jsonl", None)
    assert (last["wer"], last["pesq"], last["pesq_source"]) == (0.5, 3.25, "jsonl")
    assert [r["invalid"] for r in got] == [False, False, False, False, True, False]

    again = invoke(store, "ingest", "jsonl", str(path))
    assert again.stdout == ("nothing to ingest: all 6 generations of run other are already in "
                            "generations@1; store unchanged\n")
    named = invoke(store, "ingest", "jsonl", str(path), "--run", "x")
    assert named.stdout == "ingested 6 generations (2 groups) from run x into generations@2\n"


@pytest.mark.slow  # a fresh interpreter
def test_ingest_never_imports_torch(tmp_path, demo):
    code = ("import sys\nfrom click.testing import CliRunner\nfrom ttspo.builder.cli.main import cli\n"
            "r = CliRunner().invoke(cli, sys.argv[1:])\n"
            "print(r.exit_code, 'torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code, "--store", str(tmp_path / "st"), "ingest",
                          "nemo", str(demo.gen_dir), "--manifest", str(demo.manifest)],
                         capture_output=True, text=True, check=True)
    assert out.stdout == "0 False\n"
