"""Fuzzing ingest: for any metrics JSON, manifest line, JSONL line, wav header or codes
file, ingest stores exactly what the files hold or exits 1 with an error naming the
file, never a traceback, never a partial write. (Bounded: about 20 s.)"""

from __future__ import annotations

import io
import json
import math
import shutil
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ttspo.builder.cli.main import cli
from ttspo.builder.core.store import Store
from codes_files import codes_file_bytes
from nemo_layout import make_nemo_run

pytestmark = pytest.mark.slow  # hypothesis fuzzing (~20 s)

NUMBERS = (st.integers(-2**70, 2**70) | st.sampled_from([2**31 - 1, 2**31, -2**31 - 1, 10**400])
           | st.floats(allow_nan=True, allow_infinity=True))
LEAVES = st.none() | st.booleans() | NUMBERS | st.text(max_size=4)
JSON = st.recursive(LEAVES, lambda inner: st.lists(inner, max_size=2)
                    | st.dictionaries(st.text(max_size=2), inner, max_size=2), max_leaves=4)
METRIC_KEYS = ["cer_gt", "wer_gt", "spk_similarity", "pesq", "codes_len", "pred_transcript",
               "gt_transcript"]
SIZES = st.integers(-3, 30) | st.sampled_from([2**31, 2**40, 2**63, -2**63])


def dumps(obj) -> str:
    try:
        return json.dumps(obj, allow_nan=True)
    except ValueError:  # an int beyond the 4300-digit str limit
        return '{"cer_gt": 1}'


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    run = make_nemo_run(root, n_prompts=1, group_size=2, ranks=1)
    wav = root / "w.wav"
    shutil.copy(run.wav(0), wav)
    (root / "gen.jsonl").write_text("")
    return Layout(root, run, {p: p.read_bytes() for p in (run.metrics(1), run.codes(1),
                                                          run.wav(1), run.manifest)})


class Layout:
    """The written files (repr kept short: hypothesis prints it with a failing case)."""

    def __init__(self, root, run, originals):
        self.root, self.run, self.originals = root, run, originals

    def __repr__(self) -> str:
        return f"Layout({self.root})"


class Case:
    counter = 0


def ingest(root: Path, *args: str):
    Case.counter += 1
    store = root / f"st{Case.counter}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = CliRunner().invoke(cli, ["--store", str(store), "ingest", *args])
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code in (0, 1), result.output
    if result.exit_code == 1:
        assert result.stdout == "" and result.stderr.startswith("Error: ")
        assert not Store(store).exists("generations")  # nothing written
    return result, store


def stored(store: Path, gid: str) -> dict:
    table = Store(store).open("generations").to_table(filter=f"generation_id = '{gid}'")
    (row,) = table.to_pylist()
    return row


def expect_float(value):
    return None if value is None else float(value)


def check_metrics(store, obj):
    row = stored(store, "demo:1")
    for key, col in (("cer_gt", "cer"), ("wer_gt", "wer"), ("spk_similarity", "ssim"),
                     ("pesq", "pesq")):
        assert row[col] == expect_float(obj.get(key)), key
    assert row["codes_len"] == obj.get("codes_len")
    assert (row["pred_transcript"], row["gt_transcript"]) == (obj.get("pred_transcript"),
                                                              obj.get("gt_transcript"))


def check_manifest(store, record):
    row = stored(store, "demo:0")
    assert row["text"] == record["text"]
    text_context = record.get("context_text") or None
    assert row["context_text"] == text_context
    want = None if text_context else expect_float(record.get("context_audio_duration"))
    assert row["context_audio_duration"] == want


def check_codes(store, data):
    want = torch.load(io.BytesIO(data), weights_only=True).numpy()  # the oracle
    got = stored(store, "demo:1")["codes"]
    assert np.array_equal(np.array(got, dtype=np.int16).reshape(want.shape), want)


def check_wav(store, path):
    info = sf.info(str(path))  # the oracle: libsndfile must read it the same way
    row = stored(store, "demo:1")
    assert row["sample_rate"] == info.samplerate
    assert math.isclose(row["duration"], info.frames / info.samplerate, rel_tol=1e-9)


metrics_case = st.tuples(st.just("metrics"), st.dictionaries(st.sampled_from(METRIC_KEYS), JSON | LEAVES,
                                                            max_size=4))
manifest_case = st.tuples(st.just("manifest"), st.fixed_dictionaries(
    {"text": st.text(max_size=6) | LEAVES},
    optional={"context_audio_duration": LEAVES, "context_text": LEAVES, "record_type": LEAVES,
              "context_audio_filepath": LEAVES}))
jsonl_case = st.tuples(st.just("jsonl"), st.fixed_dictionaries(
    {"text": st.text(max_size=4), "group": LEAVES, "audio_filepath": st.just("w.wav")},
    optional={"sample": LEAVES, "cer": LEAVES, "codes_len": LEAVES, "invalid": LEAVES,
              "duration": LEAVES}))
codes_case = st.tuples(st.just("codes"), st.tuples(  # values, offset, size, stride, numel
    st.integers(0, 40), SIZES, st.tuples(SIZES, SIZES), st.tuples(SIZES, SIZES),
    st.none() | SIZES))
wav_case = st.tuples(st.just("wav"), st.lists(st.tuples(
    st.sampled_from([4, 16, 22, 24, 28, 32, 34, 40]), st.integers(0, 2**32 - 1)), min_size=1,
    max_size=3))


@settings(max_examples=100, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(case=st.one_of(metrics_case, manifest_case, jsonl_case, codes_case, wav_case))
def test_ingest_stores_what_the_files_hold_or_names_the_bad_file(layout, case):
    root, run, originals = layout.root, layout.run, layout.originals
    kind, value = case
    args = ["nemo", str(run.gen_dir), "--manifest", str(run.manifest)]
    try:
        if kind == "metrics":
            run.metrics(1).write_text(dumps(value))
            named = run.metrics(1).name
        elif kind == "manifest":
            line = dumps(value)
            run.manifest.write_text(line + "\n" + line + "\n")
            named = str(run.manifest)
        elif kind == "jsonl":
            path = root / "gen.jsonl"
            path.write_text(dumps(value) + "\n")
            args = ["jsonl", str(path), "--run", "demo"]
            named = f"{path}:1"
        elif kind == "codes":
            values, offset, size, stride, numel = value
            data = codes_file_bytes(np.arange(values) % 2000, offset, size, stride, numel)
            run.codes(1).write_bytes(data)
            named = run.codes(1).name
        else:
            data = bytearray(originals[run.wav(1)])
            for at, number in value:
                struct.pack_into("<I" if at in (4, 24, 28, 40) else "<H", data, at,
                                 number if at in (4, 24, 28, 40) else number & 0xFFFF)
            run.wav(1).write_bytes(bytes(data))
            named = run.wav(1).name
        result, store = ingest(root, *args)
        if result.exit_code == 1:
            assert named in result.stderr, result.stderr
            return
        if kind == "metrics":
            check_metrics(store, value)
        elif kind == "manifest":
            check_manifest(store, value)
        elif kind == "jsonl":
            row = stored(store, "demo:0")
            assert row["cer"] == expect_float(value.get("cer"))
            assert row["codes_len"] == value.get("codes_len")
            assert row["sample_index"] == (value.get("sample") if value.get("sample") is not None else 0)
        elif kind == "codes":
            check_codes(store, data)
        else:
            check_wav(store, run.wav(1))
    finally:
        for path, data in originals.items():
            path.write_bytes(data)
