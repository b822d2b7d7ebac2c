"""Bad input to `ttspo ingest`: exact messages, exit code 1, store unchanged; --on-error skip."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ttspo.builder.cli.main import cli
from ttspo.builder.core.errors import InputError
from ttspo.builder.ingest.run import ingest_nemo
from ttspo.builder.core.store import Store
from nemo_layout import make_nemo_run, write_wav

AUDIO = "T5TTS/version_0/audios"


def invoke(store: Path, *args: str):
    result = CliRunner().invoke(cli, ["--store", str(store), *args])
    assert "Traceback" not in result.output
    return result


def tree(path: Path) -> dict[str, int]:
    """Every file under the store with its size: 'unchanged' means byte for byte."""
    if not path.exists():
        return {}
    return {str(p.relative_to(path)): p.stat().st_size for p in path.rglob("*") if p.is_file()}


@pytest.fixture()
def demo(tmp_path):
    run = make_nemo_run(tmp_path, n_prompts=3, group_size=4, ranks=2)
    store = tmp_path / "st"
    # A store that already holds another run: a failed ingest must leave it as it was.
    result = invoke(store, "ingest", "nemo", str(run.gen_dir), "--manifest", str(run.manifest),
                    "--run", "earlier")
    assert result.exit_code == 0
    run.store = store
    run.before = tree(store)
    return run


def ingest(run, *extra: str):
    return invoke(run.store, "ingest", "nemo", str(run.gen_dir), "--manifest", str(run.manifest),
                  *extra)


def assert_fails(run, expected: str, *extra: str) -> None:
    result = ingest(run, *extra)
    assert result.exit_code == 1
    assert result.stderr == expected
    assert result.stdout == ""
    assert tree(run.store) == run.before


def one_bad(run, line: int, kind: int, reason: str) -> str:
    return ("Error: cannot ingest run demo: 1 bad file(s); nothing was written\n"
            f"  {run.rel(line, kind)}: {reason}\n")


@pytest.mark.parametrize("content, reason", [
    ('{"cer_gt": 0.1, "wer', "truncated JSON (ends at line 1 column 21)"),
    ('{"cer_gt": 0.1,, "wer_gt": 0.2}', "malformed JSON (line 1 column 16)"),
    ("", "empty file"),
    ('[0.1, 0.2]', "JSON is a list, expected an object"),
    ('{"cer_gt": NaN, "wer_gt": 0.1}', "cer_gt is NaN"),
    ('{"cer_gt": 0.1, "spk_similarity": Infinity}', "spk_similarity is inf"),
    ('{"wer_gt": -Infinity}', "wer_gt is -inf"),
    ('{"cer_gt": "0.1"}', 'cer_gt is not a number ("0.1")'),
    ('{"cer_gt": 0.1, "pred_transcript": 7}', "pred_transcript is not a string"),
    ('{"pred_transcript": "\\ud800"}', "pred_transcript is not UTF-8 (lone surrogate escape)"),
])
def test_bad_metrics_json(demo, content, reason):
    demo.metrics(3).write_text(content)
    assert_fails(demo, one_bad(demo, 3, 2, reason))


def test_metrics_text_not_utf8(demo):
    demo.metrics(4).write_bytes(b'{"cer_gt": 0.0, "pred_transcript": "caf\xe9"}')
    assert_fails(demo, one_bad(demo, 4, 2, "text is not UTF-8 (byte 0xe9 at offset 39)"))


@pytest.mark.parametrize("kind", [0, 1, 2])
def test_missing_file(demo, kind):
    demo.path(2, kind).unlink()
    assert_fails(demo, one_bad(demo, 2, kind, "missing"))


@pytest.mark.parametrize("tensor, reason", [
    (torch.zeros(8, 10, dtype=torch.int64), "codes dtype is int64, expected int16"),
    (torch.zeros(8, 10, dtype=torch.float32), "codes dtype is float32, expected int16"),
    (torch.zeros(160, dtype=torch.int16), "codes shape is [160], expected [codebooks, frames]"),
    (torch.zeros(2, 8, 10, dtype=torch.int16),
     "codes shape is [2, 8, 10], expected [codebooks, frames]"),
    ({"codes": torch.zeros(8, 10, dtype=torch.int16)}, "codes file holds a dict, not a tensor"),
    (torch.nn.Parameter(torch.zeros(8, 10)),
     "codes file holds torch._utils._rebuild_parameter, not a plain tensor"),
])
def test_codes_of_wrong_dtype_or_shape(demo, tensor, reason):
    torch.save(tensor, demo.codes(6))
    assert_fails(demo, one_bad(demo, 6, 1, reason))


def test_codes_that_are_not_a_torch_file(demo):
    demo.codes(6).write_bytes(b"not a zip at all")
    assert_fails(demo, one_bad(demo, 6, 1, "not a torch.save file (File is not a zip file)"))
    data = (demo.codes(7)).read_bytes()
    demo.codes(6).write_bytes(data[: len(data) // 2])
    assert_fails(demo, one_bad(demo, 6, 1, "not a torch.save file (File is not a zip file)"))


def test_wav_that_is_truncated_or_not_audio(demo):
    data = demo.wav(1).read_bytes()
    demo.wav(1).write_bytes(data[:2000])
    demo.wav(9).write_bytes(b"hello, not audio")
    assert_fails(demo, "Error: cannot ingest run demo: 2 bad file(s); nothing was written\n"
                       f"  {demo.rel(1, 0)}: truncated wav (header says 8820 audio bytes, file has 1956)\n"
                       f"  {demo.rel(9, 0)}: not a readable audio file\n")


def test_every_bad_file_is_listed_in_line_order(demo):
    demo.metrics(3).write_text('{"cer_gt": NaN}')
    demo.wav(0).unlink()
    torch.save(torch.zeros(5, dtype=torch.int16), demo.codes(3))
    demo.path(11, 1).unlink()
    demo.path(11, 2).unlink()
    assert_fails(demo, "Error: cannot ingest run demo: 5 bad file(s); nothing was written\n"
                       f"  {demo.rel(0, 0)}: missing\n"
                       f"  {demo.rel(3, 1)}: codes shape is [5], expected [codebooks, frames]\n"
                       f"  {demo.rel(3, 2)}: cer_gt is NaN\n"
                       f"  {demo.rel(11, 1)}: missing\n"
                       f"  {demo.rel(11, 2)}: missing\n")


def test_manifest_with_more_lines_than_generations(demo):
    lines = demo.manifest.read_text().splitlines(keepends=True)
    demo.manifest.write_text("".join(lines + lines[-2:]))
    assert_fails(demo, f"Error: manifest has 14 lines but {demo.gen_dir} has 12 generations\n"
                       f"  {demo.manifest} line 13: no generation files "
                       "(expected predicted_audioRank0_6.*)\n"
                       f"  {demo.manifest} line 14: no generation files "
                       "(expected predicted_audioRank1_6.*)\n")


def test_generations_without_manifest_lines(demo):
    lines = demo.manifest.read_text().splitlines(keepends=True)
    demo.manifest.write_text("".join(lines[:8]))
    assert_fails(demo, f"Error: manifest has 8 lines but {demo.gen_dir} has 12 generations\n"
                       "  predicted_audioRank0_4.*: maps to manifest line 9 (i*2 + r + 1), past its end\n"
                       "  predicted_audioRank1_4.*: maps to manifest line 10 (i*2 + r + 1), past its end\n"
                       "  predicted_audioRank0_5.*: maps to manifest line 11 (i*2 + r + 1), past its end\n"
                       "  predicted_audioRank1_5.*: maps to manifest line 12 (i*2 + r + 1), past its end\n")


def test_a_generation_with_all_its_files_missing_is_a_count_mismatch(demo):
    for kind in range(3):
        demo.path(5, kind).unlink()
    assert_fails(demo, f"Error: manifest has 12 lines but {demo.gen_dir} has 11 generations\n"
                       f"  {demo.manifest} line 6: no generation files "
                       "(expected predicted_audioRank1_2.*)\n",
                 "--on-error", "skip")  # the mapping itself is in doubt: never skipped


def test_manifest_lines_that_are_bad(demo):
    raw = demo.manifest.read_bytes().splitlines(keepends=True)
    raw[2] = raw[2].replace("café".encode(), b"caf\xe9")
    raw[4] = b'{"text": "cut off", "record_type": \n'
    raw[8] = b'{"record_type": "regular"}\n'
    demo.manifest.write_bytes(b"".join(raw))
    assert_fails(demo, f"Error: cannot ingest: 3 bad manifest line(s) in {demo.manifest}\n"
                       f"  {demo.manifest} line 3: text is not UTF-8 (byte 0xe9 at offset 49)\n"
                       f"  {demo.manifest} line 5: truncated JSON (ends at line 1 column 35)\n"
                       f"  {demo.manifest} line 9: no 'text' field\n")


def test_the_same_file_twice_under_gen_dir(demo):
    copy = demo.gen_dir / "copy"
    copy.mkdir()
    shutil.copy(demo.metrics(1), copy / demo.metrics(1).name)
    assert_fails(demo, "Error: the same NeMo file appears twice under GEN_DIR (two runs in one "
                       "folder?)\n"
                       f"  copy/{demo.metrics(1).name}: duplicate of {demo.rel(1, 2)}\n")


def test_no_nemo_files(demo, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = invoke(demo.store, "ingest", "nemo", str(empty), "--manifest", str(demo.manifest))
    assert result.exit_code == 1
    assert result.stderr == (f"Error: {empty}: no NeMo generation files (predicted_audioRank*_*.wav, "
                             "*_codes.pt, *_metrics.json) found\n")
    assert tree(demo.store) == demo.before


def test_group_size_that_does_not_divide(demo):
    assert_fails(demo, f"Error: {demo.manifest} has 12 lines, not a multiple of --group-size 5\n",
                 "--group-size", "5")


def test_on_error_skip_ingests_the_rest_and_logs_rejects(demo):
    demo.metrics(3).write_text('{"cer_gt": NaN}')
    demo.wav(7).unlink()
    torch.save(torch.zeros(8, 3, dtype=torch.int32), demo.codes(7))
    result = ingest(demo, "--on-error", "skip")
    assert result.exit_code == 0, result.output
    assert result.stdout == ("ingested 10 generations (3 groups) from run demo into generations@2; "
                             "skipped 2 bad generation(s) (3 new problem(s) in ingest_errors@1)\n")
    table = Store(demo.store).open("generations").to_table(columns=["generation_id", "run"])
    ids = {g for g, r in zip(*table.to_pydict().values()) if r == "demo"}
    assert ids == {f"demo:{i}" for i in range(12)} - {"demo:3", "demo:7"}
    errors = Store(demo.store).open("ingest_errors").to_table().to_pylist()
    assert errors == [
        {"run": "demo", "file": demo.rel(3, 2), "reason": "cer_gt is NaN"},
        {"run": "demo", "file": demo.rel(7, 0), "reason": "missing"},
        {"run": "demo", "file": demo.rel(7, 1), "reason": "codes dtype is int32, expected int16"},
    ]

    # Nothing new the second time: no commit to either table.
    again = ingest(demo, "--on-error", "skip")
    assert again.stdout == ("nothing to ingest from run demo: 10 already present, 2 bad "
                            "generation(s) skipped again (already in ingest_errors@1); "
                            "store unchanged\n")
    assert len(Store(demo.store).versions("generations")) == 2
    assert len(Store(demo.store).versions("ingest_errors")) == 1

    # Fix the files and rerun: only the two missing generations land.
    (demo.gen_dir / "fixed").mkdir()
    write_wav(demo.gen_dir / "fixed" / demo.wav(7).name, 7)
    torch.save(torch.zeros(8, 3, dtype=torch.int16), demo.codes(7))
    demo.metrics(3).write_text('{"cer_gt": 0.25}')
    fixed = ingest(demo)
    assert fixed.stdout == ("ingested 2 generations (2 groups) from run demo into generations@3; "
                            "10 already present\n")
    cer = Store(demo.store).open("generations").to_table(
        columns=["cer"], filter="generation_id = 'demo:3'").column(0).to_pylist()
    assert cer == [0.25]


# ------------------------------------------------------------------ jsonl
@pytest.fixture()
def jsonl(tmp_path):
    (tmp_path / "wav").mkdir()
    for i in range(2):
        write_wav(tmp_path / "wav" / f"{i}.wav", i)
    path = tmp_path / "gen.jsonl"
    good = [{"text": "a", "group": 1, "audio_filepath": f"wav/{i}.wav", "cer": 0.1} for i in range(2)]
    path.write_text("".join(json.dumps(r) + "\n" for r in good))
    store = tmp_path / "st"
    assert invoke(store, "ingest", "jsonl", str(path), "--run", "earlier").exit_code == 0
    return path, store, tree(store)


@pytest.mark.parametrize("line, reason", [
    (b'{"text": "a", "group": 2, "audio_filepath": "wav/0.wav",\n',
     "truncated JSON (ends at line 1 column 57)"),
    (b'{"text": "a", "group": 2 "audio_filepath": "wav/0.wav"}\n', "malformed JSON (line 1 column 26)"),
    (b'{"text": "a", "group": 2}\n', "no 'audio_filepath' field"),
    (b'{"group": 2, "audio_filepath": "wav/0.wav"}\n', "no 'text' field"),
    (b'{"text": "a", "audio_filepath": "wav/0.wav"}\n', "no 'group' field"),
    (b'{"text": "a", "group": 2, "audio_filepath": "wav/0.wav", "cer": NaN}\n', "cer is NaN"),
    (b'{"text": "a", "group": 2, "audio_filepath": "wav/0.wav", "ssim": Infinity}\n', "ssim is inf"),
    (b'{"text": "a", "group": 2, "audio_filepath": "wav/nope.wav"}\n', "audio wav/nope.wav: missing"),
    (b'{"text": "caf\xe9", "group": 2, "audio_filepath": "wav/0.wav"}\n',
     "text is not UTF-8 (byte 0xe9 at offset 13)"),
    (b'{"text": "b", "group": 1, "audio_filepath": "wav/0.wav"}\n',
     "group 1 has another text/context on line 1"),
    (b'{"text": "a", "group": 1, "sample": 0, "audio_filepath": "wav/0.wav"}\n',
     "group 1 already has a sample 0"),
    (b'{"text": "a", "group": [2], "audio_filepath": "wav/0.wav"}\n',
     "group is not a string or an integer"),
    (b'{"text": "a", "group": 2, "audio_filepath": "wav/0.wav", "codes_path": "c.pt"}\n',
     "codes c.pt: missing"),
])
def test_bad_jsonl_line(jsonl, line, reason):
    path, store, before = jsonl
    with open(path, "ab") as fh:
        fh.write(line)
    result = invoke(store, "ingest", "jsonl", str(path))
    assert result.exit_code == 1
    assert result.stderr == ("Error: cannot ingest run gen: 1 bad line(s); nothing was written\n"
                             f"  {path}:3: {reason}\n")
    assert tree(store) == before


def test_jsonl_codes_of_wrong_dtype_or_shape(jsonl):
    path, store, before = jsonl
    np.save(path.parent / "c64.npy", np.zeros((8, 4), dtype=np.int64))
    torch.save(torch.zeros(3, dtype=torch.int16), path.parent / "c1d.pt")
    with open(path, "a") as fh:
        for codes in ("c64.npy", "c1d.pt"):
            fh.write(json.dumps({"text": "a", "group": 1, "audio_filepath": "wav/1.wav",
                                 "codes_path": codes}) + "\n")
    result = invoke(store, "ingest", "jsonl", str(path), "--on-error", "skip")
    assert result.exit_code == 0
    assert result.stdout == ("ingested 2 generations (1 groups) from run gen into generations@2; "
                             "skipped 2 bad generation(s) (2 new problem(s) in ingest_errors@1)\n")
    errors = Store(store).open("ingest_errors").to_table().to_pylist()
    assert errors == [
        {"run": "gen", "file": f"{path}:3", "reason": "codes c64.npy: codes dtype is int64, expected int16"},
        {"run": "gen", "file": f"{path}:4",
         "reason": "codes c1d.pt: codes shape is [3], expected [codebooks, frames]"},
    ]


def test_unreadable_or_empty_jsonl(tmp_path):
    store = tmp_path / "st"
    missing = invoke(store, "ingest", "jsonl", str(tmp_path / "nope.jsonl"))
    assert missing.exit_code == 1
    assert missing.stderr == f"Error: {tmp_path / 'nope.jsonl'}: cannot read (No such file or directory)\n"
    (tmp_path / "empty.jsonl").write_text("\n\n")
    empty = invoke(store, "ingest", "jsonl", str(tmp_path / "empty.jsonl"))
    assert empty.stderr == f"Error: {tmp_path / 'empty.jsonl'}: no records (empty file)\n"
    assert not store.exists()


def test_missing_gen_dir_or_manifest(demo, tmp_path):
    nowhere = tmp_path / "nowhere"
    result = invoke(demo.store, "ingest", "nemo", str(nowhere), "--manifest", str(demo.manifest))
    assert (result.exit_code, result.stderr) == (1, f"Error: {nowhere}: not a directory\n")
    result = invoke(demo.store, "ingest", "nemo", str(demo.gen_dir), "--manifest", str(nowhere))
    assert (result.exit_code, result.stderr) == (
        1, f"Error: {nowhere}: cannot read (No such file or directory)\n")
    result = ingest(demo, "--run", " ")
    assert (result.exit_code, result.stderr) == (
        1, "Error: ' ' is not a usable run name (use --run NAME)\n")
    assert tree(demo.store) == demo.before


@pytest.mark.slow  # a reader process
def test_bad_manifest_read_by_a_reader_process_reports_the_same(demo):
    # With reader processes the manifest is parsed in one of them (beside the
    # folder scan): its error must come back whole, every problem listed.
    raw = demo.manifest.read_bytes().splitlines(keepends=True)
    raw[4] = b'{"text": "cut off", "record_type": \n'
    raw[8] = b'{"record_type": "regular"}\n'
    demo.manifest.write_bytes(b"".join(raw))
    empty = demo.gen_dir.parent / "empty"  # the folder scan fails too: the manifest's
    empty.mkdir()                           # problems are reported first all the same
    errors = []
    for workers in (1, 2):
        with pytest.raises(InputError) as caught:
            ingest_nemo(Store(demo.store), empty, demo.manifest, workers=workers)
        errors.append((str(caught.value), caught.value.problems))
    assert errors[0] == errors[1]
    assert errors[1][1] == [(f"{demo.manifest} line 5", "truncated JSON (ends at line 1 column 35)"),
                            (f"{demo.manifest} line 9", "no 'text' field")]
    assert tree(demo.store) == demo.before


def test_a_failed_first_ingest_leaves_no_table_behind(tmp_path):
    run = make_nemo_run(tmp_path, n_prompts=3, group_size=4, ranks=2)
    run.metrics(7).write_text("{not json")
    store = tmp_path / "fresh"
    with pytest.raises(InputError, match="1 bad file"):
        ingest_nemo(Store(store), run.gen_dir, run.manifest, workers=1, batch_rows=2)
    assert not (store / "generations.lance").exists()
    assert Store(store).tables() == []
