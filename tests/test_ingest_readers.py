"""The torch-free readers of NeMo's files, checked against torch.load and soundfile."""

from __future__ import annotations

import io
import os
import pickle
import zipfile

import numpy as np
import pytest
import soundfile as sf
import torch

from ttspo.builder.ingest import codes as nc
from ttspo.builder.ingest import files as nf


def saved(tmp_path, tensor, name="x_codes.pt"):
    path = tmp_path / name
    torch.save(tensor, str(path))
    return str(path)


BASE = torch.arange(-500, 2500, dtype=torch.int16).reshape(30, 100)


@pytest.mark.parametrize("make", [
    lambda: torch.randint(-32768, 32767, (8, 100), dtype=torch.int16),
    lambda: torch.tensor([[-32768, 32767, 0]], dtype=torch.int16),
    lambda: BASE[3:11, 7:57],  # a view: storage offset, row stride 100
    lambda: BASE[2:10],  # contiguous view with an offset
    lambda: BASE.t()[5:25, 1:9],  # transposed: not contiguous
    lambda: BASE[::3, ::2],  # strided both ways
    lambda: BASE[:, 4:5],  # a single frame column
    lambda: torch.zeros(8, 0, dtype=torch.int16),  # no frames
    lambda: torch.zeros(0, 5, dtype=torch.int16),
])
def test_codes_reader_matches_torch_load(tmp_path, make):
    tensor = make()
    path = saved(tmp_path, tensor)
    expected = torch.load(path).numpy()
    for _ in range(2):  # the second read takes the cached-layout path
        got = nc.read_codes(path)
        assert got.dtype == np.int16 and got.shape == expected.shape
        assert np.array_equal(got, expected)


def test_cached_layout_is_not_fooled_by_a_different_file_of_the_same_size(tmp_path):
    a = saved(tmp_path, torch.full((8, 100), 1, dtype=torch.int16), "a_codes.pt")
    b = saved(tmp_path, BASE[0:8, 0:100].clone(), "b_codes.pt")
    view = saved(tmp_path, BASE[1:9, 0:100], "c_codes.pt")  # same shape, offset storage
    for path in (a, b, view, a, view, b):
        assert np.array_equal(nc.read_codes(path), torch.load(path).numpy())


def test_many_shapes_in_one_process(tmp_path):
    rng = np.random.default_rng(1)
    for k in range(60):
        frames = int(rng.integers(1, 300))
        tensor = torch.from_numpy(rng.integers(-2000, 2000, (8, frames), dtype=np.int16))
        path = saved(tmp_path, tensor, f"predicted_audioRank{k % 3}_{k}_codes.pt")
        assert np.array_equal(nc.read_codes(path), tensor.numpy())


def test_a_pickle_that_would_run_code_is_refused_not_run(tmp_path):
    marker = tmp_path / "ran"
    payload = pickle.dumps(_RunsCode(f"touch {marker}"), protocol=2)
    path = tmp_path / "evil_codes.pt"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("evil_codes/data.pkl", payload)
        zf.writestr("evil_codes/data/0", b"\0" * 16)
    with pytest.raises(nf.BadFile, match=r"^codes file holds posix\.system, not a plain tensor$"):
        nc.read_codes(str(path))
    assert not marker.exists()


class _RunsCode:
    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


def test_legacy_torch_save_is_refused_with_a_reason(tmp_path):
    path = tmp_path / "old_codes.pt"
    torch.save(torch.zeros(8, 4, dtype=torch.int16), str(path), _use_new_zipfile_serialization=False)
    with pytest.raises(nf.BadFile, match="legacy"):
        nc.read_codes(str(path))


@pytest.mark.parametrize("rate, subtype, channels", [
    (22050, "PCM_16", 1), (16000, "PCM_24", 1), (44100, "FLOAT", 2), (8000, "PCM_U8", 1),
])
def test_wav_header_reader_matches_soundfile(tmp_path, rate, subtype, channels):
    path = str(tmp_path / "a.wav")
    frames = 1234
    data = np.zeros((frames, channels), dtype=np.float32)
    sf.write(path, data, rate, subtype=subtype)
    info = nf.wav_info(path)
    assert (info.sample_rate, info.frames, info.channels) == (rate, frames, channels)
    with open(path, "rb") as fh:
        whole = fh.read()
    assert nf.wav_info(path, whole).frames == frames


def test_wav_with_a_big_chunk_before_its_data(tmp_path):
    path = tmp_path / "list.wav"
    sf.write(str(path), np.zeros(500, dtype=np.float32), 16000, subtype="PCM_16")
    raw = path.read_bytes()
    extra = b"LIST" + (4000).to_bytes(4, "little") + b"\0" * 4000
    fmt_end = 12 + 8 + int.from_bytes(raw[16:20], "little")
    patched = raw[:fmt_end] + extra + raw[fmt_end:]
    patched = patched[:4] + (len(patched) - 8).to_bytes(4, "little") + patched[8:]
    path.write_bytes(patched)
    assert nf.wav_info(str(path)).frames == 500 == sf.info(str(path)).frames


def test_other_audio_containers_go_through_soundfile(tmp_path):
    path = str(tmp_path / "a.flac")
    sf.write(path, np.zeros(800, dtype=np.float32), 16000)
    info = nf.wav_info(path)
    assert (info.sample_rate, info.frames) == (16000, 800)


def test_metrics_parser_values_and_order():
    data = (b'{"cer_gt": 0, "wer_gt": 0.5, "spk_similarity": 0.75, "codes_len": 42, '
            b'"pred_transcript": "hi", "gt_transcript": "hi", "duration": 1.0}')
    assert nf.parse_metrics(data) == (0, 0.5, 0.75, None, 42, "hi", "hi")
    with pytest.raises(nf.BadFile, match=r"^codes_len is not a whole number \(4\.5\)$"):
        nf.parse_metrics(b'{"codes_len": 4.5}')
    with pytest.raises(nf.BadFile, match=r"^pesq is not a number \(true\)$"):
        nf.parse_metrics(b'{"pesq": true}')


def test_read_codes_bytes_equals_file_reader(tmp_path):
    tensor = torch.randint(0, 1000, (4, 9), dtype=torch.int16)
    buf = io.BytesIO()
    torch.save(tensor, buf)
    assert np.array_equal(nc.read_codes_bytes(buf.getvalue()), tensor.numpy())
