"""Scoring backends on real audio (espeak-ng fixtures) with the real offline models."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from ttspo.builder.core.errors import InputError, ModelError
from ttspo.builder.scoring.metrics import cer
from ttspo.builder.scoring import cosine, load_asr, load_quality, load_speaker
from ttspo.builder.scoring.audio import read_audio, read_audio_bytes, resample, wav_bytes
from test_scoring_helpers import CONTEXT, TEXT, fixture


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """As scoring ranks run the offline models (builder.scoring.dist.share_cores)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def asr():
    return load_asr("pocketsphinx")


@pytest.fixture(scope="module")
def sv():
    return load_speaker("resemblyzer")


def audio(name: str):
    return read_audio(fixture(name))


# ------------------------------------------------------------------ audio
def test_read_audio_gives_float32_mono_and_rate():
    samples, sr = audio("clean")
    assert samples.dtype == np.float32 and samples.ndim == 1 and sr == 16000
    assert 2.5 < len(samples) / sr < 3.5


def test_read_audio_resamples_on_request():
    samples, sr = read_audio(fixture("clean"), target_sr=22050)
    native, _ = audio("clean")
    assert sr == 22050
    assert abs(len(samples) - len(native) * 22050 / 16000) <= 1


def test_stereo_is_mixed_to_mono_and_bytes_read_like_files(tmp_path):
    mono, sr = audio("clean")
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([mono, mono], axis=1), sr)
    stereo, _ = read_audio(path)
    assert stereo.ndim == 1 and np.allclose(stereo, mono, atol=1e-4)
    from_bytes, sr2 = read_audio_bytes(fixture("clean").read_bytes())
    assert sr2 == sr and np.array_equal(from_bytes, mono)


def test_unreadable_audio_is_an_input_error_naming_the_file(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    with pytest.raises(InputError, match=r"bad\.wav: cannot read audio"):
        read_audio(bad)
    with pytest.raises(InputError, match=r"missing\.wav: cannot read audio"):
        read_audio(tmp_path / "missing.wav")
    with pytest.raises(InputError, match=r"row 7: cannot decode audio"):
        read_audio_bytes(b"junk", where="row 7")


def test_resample_keeps_a_tone_at_its_frequency():
    t = np.arange(22050) / 22050
    tone = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    out = resample(tone, 22050, 16000)
    peak = np.argmax(np.abs(np.fft.rfft(out))) * 16000 / len(out)
    assert len(out) == 16000 and abs(peak - 440) < 2


# -------------------------------------------------------------------- ASR
@pytest.mark.slow
def test_pocketsphinx_cer_of_clean_is_below_truncated_and_dropped(asr):
    rates = {name: cer(TEXT, asr.transcribe(*audio(name)))
             for name in ("clean", "truncated", "dropped")}
    assert rates["clean"] < rates["truncated"]
    assert rates["clean"] < rates["dropped"]
    assert rates["clean"] < 0.3


@pytest.mark.slow
def test_pocketsphinx_transcript_does_not_depend_on_what_came_before(asr):
    first = asr.transcribe(*audio("dropped"))
    asr.transcribe(*audio("truncated"))
    assert asr.transcribe(*audio("dropped")) == first


@pytest.mark.slow
def test_pocketsphinx_reads_any_rate_and_empty_audio(asr):
    samples, sr = read_audio(fixture("clean"), target_sr=22050)
    assert cer(TEXT, asr.transcribe(samples, sr)) < 0.4
    assert asr.transcribe(np.zeros(0, np.float32), 16000) == ""
    assert asr.name == "pocketsphinx:en-us"


def test_asr_loader_loads_once_per_process(asr):
    assert load_asr("pocketsphinx") is asr


# ------------------------------------------------------------------ SSIM
def test_resemblyzer_ssim_same_voice_above_other_voice(sv):
    context = sv.embed(*read_audio(CONTEXT))
    same = cosine(sv.embed(*audio("clean")), context)
    other = cosine(sv.embed(*audio("other")), context)
    assert same > other
    assert same > 0.75


def test_embeddings_are_unit_vectors_and_silence_has_none(sv):
    emb = sv.embed(*audio("clean"))
    assert emb.shape == (256,) and np.linalg.norm(emb) == pytest.approx(1.0, abs=1e-5)
    silent = sv.embed(np.zeros(16000, np.float32), 16000)
    assert not np.any(silent) and cosine(silent, emb) == 0.0
    assert sv.name == "resemblyzer:pretrained.pt"


# --------------------------------------------------------------- quality
def test_pesq_of_the_reference_itself_beats_another_voice():
    pesq = load_quality("pesq")
    ref = audio("clean")
    assert pesq.score(*audio("clean"), *ref) > 4.0
    assert pesq.score(*audio("other"), *ref) < 2.5
    assert pesq.score(np.zeros(100, np.float32), 16000, *ref) is None


@pytest.mark.slow
def test_squim_loads_a_local_weights_file(tmp_path):
    import torch
    from torchaudio.models import squim_objective_base

    weights = tmp_path / "squim-test.pt"
    torch.manual_seed(0)
    torch.save(squim_objective_base().state_dict(), weights)
    squim = load_quality(f"squim:{weights}")
    assert squim.name == "squim:squim-test.pt"
    value = squim.score(*audio("clean"))
    assert value is not None and np.isfinite(value)
    assert squim.score(np.zeros(100, np.float32), 16000) is None


def test_squim_rejects_a_file_that_is_not_its_weights(tmp_path):
    import torch

    wrong = tmp_path / "wrong.pt"
    torch.save({"layer.weight": torch.zeros(2)}, wrong)
    with pytest.raises(ModelError, match=r"--quality squim:.*wrong\.pt: not SQUIM objective weights"):
        load_quality(f"squim:{wrong}")


# ------------------------------------------- missing models: clear errors
@pytest.mark.parametrize("loader,spec,message", [
    (load_asr, "nemo:/no/such/parakeet.nemo", "--asr nemo:/no/such/parakeet.nemo: file not found"),
    (load_asr, "whisper:/no/such/dir", "--asr whisper:/no/such/dir: directory not found"),
    (load_asr, "nemo", "--asr nemo: give the NeMo ASR model (.nemo) as nemo:PATH "
                       "(models are never downloaded)"),
    (load_asr, "wav2vec", "--asr wav2vec: unknown backend (choose pocketsphinx, "
                          "nemo:PATH.nemo, whisper:DIR)"),
    (load_asr, "pocketsphinx:/x", "--asr pocketsphinx:/x: pocketsphinx takes no argument "
                                  "(its model ships in the wheel)"),
    (load_speaker, "nemo:/no/titanet.nemo", "--sv nemo:/no/titanet.nemo: file not found"),
    (load_speaker, "resemblyzer:/no/w.pt", "--sv resemblyzer:/no/w.pt: file not found"),
    (load_speaker, "ecapa", "--sv ecapa: unknown backend (choose resemblyzer, "
                            "resemblyzer:PATH.pt, nemo:PATH.nemo)"),
    (load_quality, "squim:/no/squim.pt", "--quality squim:/no/squim.pt: file not found"),
    (load_quality, "squim", "--quality squim: give the SQUIM objective weights file as "
                            "squim:PATH (models are never downloaded)"),
])
def test_missing_model_is_a_model_error_naming_the_option(loader, spec, message):
    with pytest.raises(ModelError) as err:
        loader(spec)
    assert str(err.value) == message


@pytest.mark.slow  # imports NeMo
def test_optional_backend_without_its_package_names_the_extra(tmp_path):
    import importlib.util

    model = tmp_path / "model.nemo"
    model.write_bytes(b"not a real archive")
    if importlib.util.find_spec("nemo") is None:
        with pytest.raises(ModelError) as err:
            load_asr(f"nemo:{model}")
        assert str(err.value) == (f"--asr nemo:{model}: needs the 'nemo' package "
                                  "(install the 'nemo' extra: pip install 'ttspo[nemo]')")
    else:  # with NeMo installed the same file fails as a bad archive, still a ModelError
        with pytest.raises(ModelError, match="cannot restore NeMo ASR model"):
            load_asr(f"nemo:{model}")
    if importlib.util.find_spec("transformers") is None:
        with pytest.raises(ModelError, match=r"needs the 'transformers' package"):
            load_asr(f"whisper:{tmp_path}")
    else:
        with pytest.raises(ModelError, match="cannot load Whisper model"):
            load_asr(f"whisper:{tmp_path}")


def test_wav_bytes_round_trip_through_blob_reader():
    samples, sr = audio("truncated")
    again, sr2 = read_audio_bytes(wav_bytes(samples, sr), target_sr=8000)
    assert sr2 == 8000 and abs(len(again) - len(samples) / 2) <= 1


@pytest.mark.slow
def test_resemblyzer_features_match_resemblyzers_own_pipeline(sv):
    """Our torchaudio mel features give the embedding Resemblyzer's librosa path gives."""
    from resemblyzer import preprocess_wav

    wav = preprocess_wav(audio("clean")[0])
    ours = sv.embed_utterance(wav)
    theirs = sv.encoder.embed_utterance(wav)
    assert cosine(ours, theirs) > 0.99999
    assert np.allclose(ours, theirs, atol=1e-4)
