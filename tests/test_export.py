"""Exports, read back the way their trainers read them (real wavs and codes files)."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from ttspo.builder.sets.build import build_set
from ttspo.builder.cli.main import cli
from ttspo.builder.core.errors import InputError
from ttspo.builder.sets.export import export_nemo, export_trl, safe_name
from ttspo.builder.core.schemas import GEN, GENERATIONS_SCHEMA
from ttspo.builder.core.store import Store, make_lineage
from test_build_helpers import BASIC, gen_rows

SR = 22050


def write_files(rows, folder):
    """A real wav for every generation and context, a real codes file per generation."""
    rng = np.random.default_rng(0)
    for r in rows:
        sf.write(r[GEN.audio_filepath], rng.uniform(-0.1, 0.1, int(SR * 0.2)).astype("float32"), SR)
        torch.save(torch.randint(0, 1000, (8, 5), dtype=torch.int16), r[GEN.codes_path])
        if r[GEN.context_audio_filepath] and not os.path.exists(r[GEN.context_audio_filepath]):
            sf.write(r[GEN.context_audio_filepath], np.zeros(SR // 10, dtype="float32"), SR)


@pytest.fixture
def store(tmp_path):
    files = tmp_path / "files"
    files.mkdir()
    rows = gen_rows(BASIC, files=files)
    for r in rows:  # group 1 is a text-context prompt (no context audio)
        if r[GEN.group_id] == "r:g1":
            r[GEN.context_audio_filepath], r[GEN.context_audio_duration] = None, None
            r[GEN.context_text] = "Speak calmly."
    write_files(rows, files)
    s = Store(tmp_path / "store")
    s.write("generations", pa.Table.from_pylist(rows, schema=GENERATIONS_SCHEMA), GENERATIONS_SCHEMA,
            make_lineage("test-ingest", {}))
    build_set(s, "pareto", "prefs", {"val_size": 2, "seed": 1})
    return s


def read_like_magpie_dpo(path, min_duration=None, max_duration=None):
    """What MagpieTTSDatasetDPO does with a manifest: JSON lines, the duration filter,
    then item k = (line 2k, line 2k+1), loading codes, audio and context of each, and
    asserting chosen reward == 1 and rejected reward < 1."""
    entries = [json.loads(line) for line in open(path, encoding="utf-8")]
    entries = [e for e in entries if (min_duration is None or e["duration"] >= min_duration)
               and (max_duration is None or e["duration"] <= max_duration)]
    items = []
    for k in range(len(entries) // 2):
        chosen, rejected = entries[2 * k], entries[2 * k + 1]
        for e in (chosen, rejected):
            codes = torch.load(e["target_audio_codes_path"])
            assert codes.dtype == torch.int32 and codes.dim() == 2  # NeMo's DPO gather needs int32/64
            audio, sr = sf.read(os.path.join("/", e["audio_filepath"]))
            assert sr == SR and len(audio) > 0
            if "context_audio_filepath" in e:
                sf.read(os.path.join("/", e["context_audio_filepath"]))
                assert e["context_audio_duration"] > 0
            else:
                assert e["context_text"]
        assert chosen["reward"] == 1.0
        assert rejected["reward"] < 1.0
        items.append((chosen, rejected))
    return items


def test_nemo_export_reads_back_as_pairs_of_lines(store, tmp_path):
    result = export_nemo(store, "prefs", tmp_path / "out")
    assert result.pairs == {"train": 3, "val": 2}
    train = read_like_magpie_dpo(tmp_path / "out" / "dpo_train_manifest.json")
    val = read_like_magpie_dpo(tmp_path / "out" / "dpo_val_manifest.json")
    assert (len(train), len(val)) == (3, 2)
    pairs = store.open("prefs").to_table().sort_by("position").to_pylist()
    assert [c["pair_id"] for c, _ in val + train] == [p["pair_id"] for p in pairs]
    for chosen, rejected in val + train:
        for key in ("text", "record_type", "context_audio_filepath", "context_text"):
            assert chosen.get(key) == rejected.get(key)
        assert chosen["generation_id"] + ">" + rejected["generation_id"] == chosen["pair_id"]
        assert rejected["cer_delta"] == rejected["cer_gts"] - chosen["cer_gts"]
        assert rejected["sim_delta"] == chosen["pred_context_similarity"] - rejected["pred_context_similarity"]
        assert "cer_delta" not in chosen


def test_nemo_records_carry_nemo_fields(store, tmp_path):
    export_nemo(store, "prefs", tmp_path / "out")
    records = [json.loads(line) for name in ("dpo_train_manifest.json", "dpo_val_manifest.json")
               for line in (tmp_path / "out" / name).read_text().splitlines()]
    audio = next(r for r in records if r["generation_id"] == "r:0")
    assert list(audio) == [
        "text", "record_type", "context_audio_filepath", "context_audio_duration", "audio_filepath",
        "target_audio_codes_path", "duration", "cer_gts", "wer_gts", "pred_context_similarity",
        "pred_transcript", "gt_transcript", "reward", "pair_id", "generation_id"]
    assert audio["audio_filepath"].endswith("/files/r_0.wav")
    codes = audio["target_audio_codes_path"]  # in the store, named by the SHA-256 of its bytes
    sha = hashlib.sha256(open(codes, "rb").read()).hexdigest()
    assert codes == str(store.root.absolute() / "codes" / sha[:2] / f"{sha}-{safe_name('r:0')}.pt")
    text_context = next(r for r in records if r["generation_id"] == "r:4")
    assert text_context["context_text"] == "Speak calmly."
    assert "context_audio_filepath" not in text_context


def test_codes_kept_only_in_the_table_are_written_as_pt_files(tmp_path):
    rows = gen_rows(BASIC[:2])
    for i, r in enumerate(rows):
        r[GEN.codes_path], r[GEN.codes] = None, [[i, i + 1, 7], [3, 2, 1]]
    s = Store(tmp_path / "store")
    s.write("generations", pa.Table.from_pylist(rows, schema=GENERATIONS_SCHEMA), GENERATIONS_SCHEMA,
            make_lineage("t", {}))
    build_set(s, "pareto", "prefs")
    result = export_nemo(s, "prefs", tmp_path / "out", codes_dtype="int64")
    assert result.codes_written == 4
    for line in (tmp_path / "out" / "dpo_train_manifest.json").read_text().splitlines():
        record = json.loads(line)
        i = int(record["generation_id"].split(":")[1])
        codes = torch.load(record["target_audio_codes_path"])
        assert codes.dtype == torch.int64 and codes.tolist() == [[i, i + 1, 7], [3, 2, 1]]
        assert record["target_audio_codes_path"].startswith(str(s.root.absolute() / "codes") + "/")


def test_codes_only_in_files_are_rewritten_as_int32_and_int16_is_refused(tmp_path):
    rows = gen_rows(BASIC[:2], files=tmp_path)  # codes in NeMo's int16 files, none in the table
    for i, r in enumerate(rows):
        torch.save(torch.tensor([[i, 5], [6, i]], dtype=torch.int16), r[GEN.codes_path])
    s = Store(tmp_path / "store")
    s.write("generations", pa.Table.from_pylist(rows, schema=GENERATIONS_SCHEMA), GENERATIONS_SCHEMA,
            make_lineage("t", {}))
    build_set(s, "pareto", "prefs")
    assert export_nemo(s, "prefs", tmp_path / "out").codes_written == 4
    for line in (tmp_path / "out" / "dpo_train_manifest.json").read_text().splitlines():
        record = json.loads(line)
        i = int(record["generation_id"].split(":")[1])
        codes = torch.load(record["target_audio_codes_path"])
        assert codes.dtype == torch.int32 and codes.tolist() == [[i, 5], [6, i]]
    with pytest.raises(InputError, match=r"^--codes-dtype int16: choose int32 or int64 \(NeMo's DPO step"):
        export_nemo(s, "prefs", tmp_path / "out2", codes_dtype="int16")
    os.remove(rows[0][GEN.codes_path])
    with pytest.raises(InputError, match=r"_codes.pt: cannot read the codes of generation r:0 \("):
        export_nemo(s, "prefs", tmp_path / "out3")


def test_a_mix_of_generations_with_and_without_codes_is_refused(tmp_path):
    rows = gen_rows(BASIC[:2])
    rows[0][GEN.codes_path] = None  # r:0 is a chosen generation without codes
    s = Store(tmp_path / "store")
    s.write("generations", pa.Table.from_pylist(rows, schema=GENERATIONS_SCHEMA), GENERATIONS_SCHEMA,
            make_lineage("t", {}))
    build_set(s, "pareto", "prefs")
    with pytest.raises(InputError, match=r"^prefs@1: 1 of 4 generations have no codes \(first: r:0\); "
                                         r"NeMo cannot batch codes with audio, export none or all$"):
        export_nemo(s, "prefs", tmp_path / "out")
    assert not (tmp_path / "out" / "dpo_train_manifest.json").exists()


def test_export_reads_the_generations_version_the_set_was_built_from(store, tmp_path):
    export_nemo(store, "prefs", tmp_path / "a")
    later = gen_rows(BASIC[:1], run="later")
    store.write("generations", pa.Table.from_pylist(later, schema=GENERATIONS_SCHEMA),
                GENERATIONS_SCHEMA, make_lineage("t", {}))
    export_nemo(store, "prefs", tmp_path / "b")
    for name in ("dpo_train_manifest.json", "dpo_val_manifest.json"):  # same but for the folder
        a = (tmp_path / "a" / name).read_text().replace(str(tmp_path / "a"), "OUT")
        assert a == (tmp_path / "b" / name).read_text().replace(str(tmp_path / "b"), "OUT")
    assert not (tmp_path / "a" / "codes").exists()  # the manifests name STORE/codes


def test_trl_export_parquet_and_jsonl(store, tmp_path):
    export_trl(store, "prefs", tmp_path / "prefs.parquet")
    table = pq.read_table(tmp_path / "prefs.parquet")
    assert table.column_names[:3] == ["prompt", "chosen", "rejected"]
    rows = table.to_pylist()
    assert [r["split"] for r in rows] == ["val", "val", "train", "train", "train"]
    first = next(r for r in rows if r["pair_id"] == "r:0>r:3")
    assert first["prompt"] == "text number 0"
    assert first["chosen"].endswith("r_0.wav") and first["rejected"].endswith("r_3.wav")
    assert (first["chosen_cer"], first["rejected_cer"], first["chosen_reward"]) == (0.0, 0.3, 1.0)
    assert first["rejected_reward"] < 1
    export_trl(store, "prefs", tmp_path / "prefs.jsonl")
    lines = [json.loads(x) for x in (tmp_path / "prefs.jsonl").read_text().splitlines()]
    assert lines == rows
    with pytest.raises(InputError, match="the TRL export writes .parquet or .jsonl"):
        export_trl(store, "prefs", tmp_path / "prefs.csv")


def test_cli_export_by_tag_and_errors(store, tmp_path):
    store.tag("prefs", 1, "first")
    runner = CliRunner()
    base = ["--store", str(store.root), "export"]
    result = runner.invoke(cli, base + ["nemo", "prefs@first", "--out", str(tmp_path / "o"),
                                        "--format", "json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)[0]
    assert (out["train_pairs"], out["val_pairs"], out["codes_written"]) == (3, 2, 10)
    assert (out["min_duration"], out["max_duration"]) == (5.0, 5.0)
    assert result.stderr == ("set train_ds.datasets.min_duration <= 5.0 and max_duration >= 5.0: "
                             "NeMo drops lines outside them before pairing\n")
    result = runner.invoke(cli, base + ["nemo", "prefs@nope", "--out", str(tmp_path / "o")])
    assert (result.exit_code, result.output) == (1, "Error: table 'prefs' has no version or tag 'nope' "
                                                    "(tags: first)\n")
    result = runner.invoke(cli, base + ["trl", "generations", "--out", str(tmp_path / "g.parquet")])
    assert (result.exit_code, result.output) == (
        1, "Error: 'generations' is not a preference set built by ttspo (no build record)\n")
