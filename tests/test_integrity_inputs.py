"""Bad input that once ended in a traceback (or a hang): one line per bad file, exit 1,
nothing written; --on-error skip skips such files. And valid wavs with long metadata."""

from __future__ import annotations

import json
import os
import struct

import pytest
import soundfile as sf

from ttspo.builder.core.store import Store
from test_ingest_errors import assert_fails, demo, ingest, invoke, jsonl, one_bad, tree  # noqa: F401

HUGE = "1" + "0" * 400  # beyond int64 and float64
HUGE_SHOWN = "10000000000000000000... (401 digits)"


@pytest.mark.parametrize("content, reason", [
    ('{"cer_gt": %s}' % HUGE, f"cer_gt is out of range ({HUGE_SHOWN})"),
    ('{"pesq": -%s}' % HUGE, "pesq is out of range (-1000000000000000000... (401 digits))"),
    ('{"codes_len": 10000000000}', "codes_len is out of range (10000000000)"),
    ('{"codes_len": -3000000000}', "codes_len is out of range (-3000000000)"),
    ('{"cer_gt": %s}' % ("9" * 5000), "malformed JSON (a number with too many digits)"),
])
def test_metrics_numbers_out_of_range(demo, content, reason):
    demo.metrics(4).write_text(content)
    assert_fails(demo, one_bad(demo, 4, 2, reason))
    skipped = ingest(demo, "--on-error", "skip")
    assert skipped.exit_code == 0, skipped.output
    assert skipped.stdout.startswith("ingested 11 generations (3 groups) from run demo")
    errors = Store(demo.store).open("ingest_errors").to_table().to_pylist()
    assert errors == [{"run": "demo", "file": demo.rel(4, 2), "reason": reason}]


def test_a_big_number_that_a_float_holds_is_stored_as_it_is(demo):
    demo.metrics(4).write_text('{"pesq": -100000000000000000000000, "codes_len": 2147483647}')
    assert ingest(demo).exit_code == 0
    row = Store(demo.store).open("generations").to_table(
        filter="generation_id = 'demo:4'", columns=["pesq", "codes_len"]).to_pylist()
    assert row == [{"pesq": -1e23, "codes_len": 2147483647}]


def test_manifest_number_out_of_range(demo):
    lines = demo.manifest.read_text().splitlines()
    record = json.loads(lines[0])
    record["context_audio_duration"] = int(HUGE)
    lines[:4] = [json.dumps(record)] * 4
    demo.manifest.write_text("\n".join(lines) + "\n")
    problems = "".join(f"  {demo.manifest} line {n}: context_audio_duration is out of range "
                       f"({HUGE_SHOWN})\n" for n in range(1, 5))
    assert_fails(demo, f"Error: cannot ingest: 4 bad manifest line(s) in {demo.manifest}\n" + problems)


@pytest.mark.parametrize("extra, reason", [
    ('"sample": 1099511627776', "sample is out of range (1099511627776)"),
    ('"codes_len": 10000000000', "codes_len is out of range (10000000000)"),
    ('"cer": %s' % HUGE, f"cer is out of range ({HUGE_SHOWN})"),
    ('"context_audio_duration": %s' % HUGE, f"context_audio_duration is out of range ({HUGE_SHOWN})"),
])
def test_jsonl_numbers_out_of_range(jsonl, extra, reason):
    path, store, before = jsonl
    with open(path, "a") as fh:
        fh.write('{"text": "a", "group": 1, "audio_filepath": "wav/1.wav", %s}\n' % extra)
    result = invoke(store, "ingest", "jsonl", str(path))
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == ("Error: cannot ingest run gen: 1 bad line(s); nothing was written\n"
                             f"  {path}:3: {reason}\n")
    assert tree(store) == before
    skipped = invoke(store, "ingest", "jsonl", str(path), "--on-error", "skip")
    assert skipped.exit_code == 0 and "skipped 1 bad generation(s)" in skipped.stdout


def test_wav_sample_rate_out_of_range(demo):
    data = bytearray(demo.wav(2).read_bytes())
    struct.pack_into("<I", data, 24, 0xFFFFFFF0)  # fmt's sample rate
    demo.wav(2).write_bytes(bytes(data))
    assert_fails(demo, one_bad(demo, 2, 0, "wav sample rate 4294967280 is out of range"))


def with_metadata_chunk(path, size: int) -> None:
    """A LIST chunk of SIZE bytes between the RIFF header and 'fmt ' (valid RIFF)."""
    data = path.read_bytes()
    chunk = b"LIST" + struct.pack("<I", size) + b"INFO" + b"\0" * (size - 4)
    data = data[:12] + chunk + data[12:]
    path.write_bytes(data[:4] + struct.pack("<I", len(data) - 8) + data[8:])


@pytest.mark.parametrize("embed", [False, True])
def test_a_wav_with_a_long_metadata_chunk_before_fmt_is_read(demo, embed):
    with_metadata_chunk(demo.wav(5), 3 << 20)
    frames = sf.info(str(demo.wav(5))).frames
    result = ingest(demo, *(["--embed-audio"] if embed else []))
    assert result.exit_code == 0, result.output
    row = Store(demo.store).open("generations").to_table(
        filter="generation_id = 'demo:5'", columns=["duration", "sample_rate"]).to_pylist()
    assert row == [{"duration": frames / 22050, "sample_rate": 22050}]


@pytest.mark.parametrize("name", ["predicted_audioRank99999999999999999999_0.wav",
                                  "predicted_audioRank0_4611686018427387904_codes.pt"])
def test_absurd_numbers_in_file_names(demo, name):
    (demo.audio_dir / name).write_bytes(b"")
    assert_fails(demo, f"Error: {name}: rank or index out of range (at most 9 digits)\n")


def test_a_fifo_or_a_device_is_rejected_not_read(demo):
    demo.wav(1).unlink()
    os.mkfifo(demo.wav(1))  # no writer: opening it for reading would block forever
    demo.codes(3).unlink()
    demo.codes(3).symlink_to("/dev/zero")  # endless
    demo.metrics(5).unlink()
    demo.metrics(5).symlink_to("/dev/urandom")
    expected = ("Error: cannot ingest run demo: 3 bad file(s); nothing was written\n"
                f"  {demo.rel(1, 0)}: not a regular file (a FIFO)\n"
                f"  {demo.rel(3, 1)}: not a regular file (a character device)\n"
                f"  {demo.rel(5, 2)}: not a regular file (a character device)\n")
    assert_fails(demo, expected)
    assert ingest(demo, "--on-error", "skip").exit_code == 0


def test_a_fifo_manifest_or_jsonl_is_rejected(demo, tmp_path):
    fifo = tmp_path / "pairs.fifo"
    os.mkfifo(fifo)
    result = invoke(demo.store, "ingest", "nemo", str(demo.gen_dir), "--manifest", str(fifo))
    assert (result.exit_code, result.stderr) == (1, f"Error: {fifo}: not a regular file (a FIFO)\n")
    result = invoke(demo.store, "ingest", "jsonl", str(fifo), "--run", "x")
    assert (result.exit_code, result.stderr) == (1, f"Error: {fifo}: not a regular file (a FIFO)\n")
    assert tree(demo.store) == demo.before


def test_a_fifo_npy_codes_file_is_rejected(jsonl):
    path, store, before = jsonl
    os.mkfifo(path.parent / "c.npy")
    with open(path, "a") as fh:
        fh.write('{"text": "a", "group": 1, "audio_filepath": "wav/1.wav", "codes_path": "c.npy"}\n')
    result = invoke(store, "ingest", "jsonl", str(path))
    assert result.stderr == ("Error: cannot ingest run gen: 1 bad line(s); nothing was written\n"
                             f"  {path}:3: codes c.npy: not a regular file (a FIFO)\n")
    assert tree(store) == before
