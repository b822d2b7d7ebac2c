"""The built-in codec: real speech in, int16 codes out, and back to audio."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import ttspo.trainer.demo
from ttspo.trainer.policy import codec as C

CORPUS = Path(ttspo.trainer.demo.__file__).resolve().parent / "corpus"
AUDIOS = CORPUS / "generations" / "audios"


def read(path: Path) -> tuple[np.ndarray, int]:
    audio, sr = sf.read(str(path), dtype="float32")
    return audio, sr


def variants() -> list[dict]:
    return [json.loads(line) for line in (CORPUS / "variants.jsonl").read_text().splitlines()]


def wav_of(line: int) -> Path:
    return AUDIOS / f"predicted_audioRank{line % 2}_{line // 2}.wav"


def clean_speech(skip_groups=()) -> list[tuple[dict, Path]]:
    return [(v, wav_of(v["line"])) for v in variants()
            if v["kind"] == "clean" and v["group"] not in skip_groups]


def mel_distance(a: np.ndarray, sr_a: int, b: np.ndarray, sr_b: int) -> float:
    """Mean absolute log-mel difference over the frames both signals have."""
    ma, mb = C.log_mel(a, sr_a), C.log_mel(b, sr_b)
    n = min(len(ma), len(mb))
    return float(np.abs(ma[:n] - mb[:n]).mean())


@pytest.fixture(scope="module")
def codec() -> C.Codec:
    return C.Codec.load()


def test_shipped_codec_is_small_and_is_the_one_the_corpus_used(codec):
    assert (codec.num_codebooks, codec.codebook_size) == (8, 256)
    assert codec.codebooks.shape == (8, 256, C.N_MELS)
    assert C.ASSET_PATH.stat().st_size < 1_000_000
    assert abs(codec.frame_rate - 21.533) < 1e-3
    config = json.loads((CORPUS / "corpus.json").read_text())
    assert codec.fingerprint == config["codec"]["fingerprint"]


def test_encode_gives_int16_codes_one_frame_per_hop_deterministically(codec):
    audio, sr = read(CORPUS / "contexts" / "edward.wav")
    codes = codec.encode(audio, sr)
    again = codec.encode(audio.copy(), sr)
    assert codes.dtype == np.int16
    assert codes.shape == (8, C.num_frames(len(audio), sr))
    assert abs(codes.shape[1] - len(audio) / sr * C.FRAME_RATE) <= 1
    assert codes.min() >= 0 and codes.max() < 256
    np.testing.assert_array_equal(codes, again)
    # All codebooks are in use: no stage collapsed to one entry.
    assert all(len(np.unique(row)) > 5 for row in codes)


def test_encode_at_the_codec_rate_and_resampled_agree_on_length(codec):
    import torch
    import torchaudio.functional as F

    audio, sr = read(CORPUS / "contexts" / "f5.wav")
    assert sr != C.SAMPLE_RATE  # the corpus is 16 kHz: encode must resample
    at_22k = F.resample(torch.from_numpy(audio), sr, C.SAMPLE_RATE).numpy()
    frames = codec.encode(audio, sr).shape[1]
    assert codec.encode(at_22k, C.SAMPLE_RATE).shape[1] == frames
    # independent of the resampler: the clip's duration at ~21.5 frames per second
    assert abs(frames - len(audio) / sr * C.FRAME_RATE) <= 1


@pytest.mark.slow
def test_decode_keeps_coarse_structure_and_duration(codec):
    (v1, path), (v2, other_path) = clean_speech()[:2]
    assert v1["text"] != v2["text"] or v1["voice"] != v2["voice"]
    audio, sr = read(path)
    other, other_sr = read(other_path)
    decoded, out_sr = codec.decode(codec.encode(audio, sr))
    assert out_sr == 22050 and decoded.dtype == np.float32
    assert abs(len(decoded) / out_sr - len(audio) / sr) <= 1 / C.FRAME_RATE
    assert np.abs(decoded).max() <= 1.0
    self_distance = mel_distance(audio, sr, decoded, out_sr)
    unrelated = mel_distance(audio, sr, other, other_sr)
    assert self_distance < 0.4 * unrelated, (self_distance, unrelated)
    again, _ = codec.decode(codec.encode(audio, sr))
    np.testing.assert_array_equal(decoded, again)


def test_every_codebook_stage_lowers_the_quantisation_error(codec):
    audio, sr = read(clean_speech()[3][1])
    target = C.log_mel(audio, sr)
    codes = codec.encode(audio, sr)
    errors = []
    for k in range(1, codec.num_codebooks + 1):
        partial = np.zeros_like(target)
        for j in range(k):
            partial += codec.codebooks[j][codes[j].astype(np.int64)]
        errors.append(float(np.abs(partial * codec.std + codec.mean - target).mean()))
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.5 * errors[0]


def test_log_mel_matches_torchaudio():
    import torch
    import torchaudio

    fbank = torchaudio.functional.melscale_fbanks(
        C.N_FFT // 2 + 1, C.F_MIN, C.F_MAX, C.N_MELS, C.SAMPLE_RATE, norm=None, mel_scale="htk")
    np.testing.assert_allclose(C.mel_filterbank(), fbank.numpy(), atol=1e-5)
    audio, _ = read(CORPUS / "contexts" / "f2.wav")  # treated as 22050 Hz here
    spec = torchaudio.transforms.Spectrogram(n_fft=C.N_FFT, hop_length=C.HOP_LENGTH,
                                             power=1.0)(torch.from_numpy(audio)).numpy().T
    ours = C.log_mel(audio, C.SAMPLE_RATE)
    theirs = np.log(np.maximum(spec @ fbank.numpy(), C.LOG_FLOOR))[: len(ours)]
    np.testing.assert_allclose(ours, theirs, atol=1e-3)


def test_short_and_silent_audio_encode():
    codec = C.Codec.load()
    assert codec.encode(np.zeros(10, np.float32), 16000).shape == (8, 1)
    assert codec.encode(np.zeros(0, np.float32), 22050).shape == (8, 1)
    with pytest.raises(ValueError, match="mono"):
        codec.encode(np.zeros((2, 100), np.float32), 22050)


def test_bad_codes_are_refused(codec):
    with pytest.raises(ValueError, match=r"shape \[8, frames\], got \[7, 3\]"):
        codec.decode(np.zeros((7, 3), np.int16))
    with pytest.raises(ValueError, match=r"lie in \[0, 256\), got \[0, 256\]"):
        codec.decode(np.array([[0, 256]] * 8, np.int16))


@pytest.mark.slow
def test_fit_is_deterministic_and_round_trips_through_save(tmp_path):
    audios = [read(p) for _, p in clean_speech()[:4]]
    a = C.fit(audios, num_codebooks=3, codebook_size=16, iters=5, seed=7)
    b = C.fit(audios, num_codebooks=3, codebook_size=16, iters=5, seed=7)
    np.testing.assert_array_equal(a.codebooks, b.codebooks)
    assert a.fingerprint == b.fingerprint
    a.save(tmp_path / "c.npz")
    loaded = C.Codec.load(tmp_path / "c.npz")
    assert loaded.fingerprint == a.fingerprint  # stored as float16, learned on float16
    np.testing.assert_array_equal(loaded.encode(*audios[0]), a.encode(*audios[0]))
    with pytest.raises(ValueError, match="need at least 4096 frames"):
        C.fit(audios[:1], num_codebooks=1, codebook_size=4096)


def test_load_refuses_a_codec_made_for_other_settings(tmp_path):
    np.savez(tmp_path / "c.npz", codebooks=np.zeros((8, 4, 80), np.float16),
             mean=np.zeros(80, np.float32), std=np.ones(80, np.float32),
             sample_rate=24000, hop_length=C.HOP_LENGTH, n_fft=C.N_FFT, n_mels=C.N_MELS)
    with pytest.raises(ValueError, match="codec made for"):
        C.Codec.load(tmp_path / "c.npz")
