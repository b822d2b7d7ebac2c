"""NeMo scoring backends on tiny NeMo models built from configs in the test (no download).

CTC and RNNT ASR and a TitaNet-shaped speaker model, saved as .nemo and restored by
``--asr nemo:PATH`` / ``--sv nemo:PATH``. Untrained, so transcripts are gibberish:
the tests check that the backends give what the model itself gives on the same
file, and that the store records which file (and its sha256) scored each row.
Skipped unless the `nemo` extra is installed.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

import nemo_models
from ttspo.builder.scoring import cosine, load_asr, load_speaker
from ttspo.builder.scoring.audio import read_audio
from test_scoring_helpers import fixture


# On a loaded machine OpenMP threads spin: an untrained RNNT's transcribe took 331 s
# with the default threads and 5 s with one.
pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.slow]  # NeMo


@pytest.fixture(scope="module", autouse=True)
def nemo_installed():
    """Skips the module unless the `nemo` extra is installed. NeMo is imported here, at
    set-up, not at collection: `pytest -m "not slow"` collects this module without it."""
    pytest.importorskip("nemo.collections.asr")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("nemo-scorers")
    return {"ctc": nemo_models.save_ctc_asr(d / "tiny-ctc.nemo"),
            "rnnt": nemo_models.save_rnnt_asr(d / "tiny-rnnt.nemo"),
            "speaker": nemo_models.save_speaker(d / "tiny-titanet.nemo")}


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("kind", ["ctc", "rnnt"])
def test_nemo_asr_transcribes_as_the_model_does(models, kind):
    path = models[kind]
    asr = load_asr(f"nemo:{path}")
    assert asr.name == f"nemo:{path.name}@sha256:{sha(path)}"
    # A 22.05 kHz recording: the backend resamples to the model's 16 kHz.
    clean, clean_sr = read_audio(fixture("clean"))
    other, other_sr = read_audio(fixture("other"), target_sr=22050)
    assert clean_sr == 16000 and other_sr == 22050
    texts = asr.transcribe_batch([clean, clean], clean_sr) + [asr.transcribe(other, other_sr)]
    own = asr.model.transcribe([str(fixture("clean"))], batch_size=1, verbose=False)[0].text
    assert texts[:2] == [own.strip()] * 2
    assert texts[0] and texts[2] and set("".join(texts)) <= set(nemo_models.ASR_VOCAB)


def test_nemo_speaker_embeds_as_the_model_does(models):
    path = models["speaker"]
    sv = load_speaker(f"nemo:{path}")
    assert sv.name == f"nemo:tiny-titanet.nemo@sha256:{sha(path)}"
    a = sv.embed(*read_audio(fixture("clean")))
    b = sv.embed(*read_audio(fixture("other"), target_sr=22050))
    from omegaconf import open_dict

    with open_dict(sv.model.cfg):  # get_embedding reads the rate from its training config
        sv.model.cfg.train_ds = {"sample_rate": 16000}
    own = sv.model.get_embedding(str(fixture("clean"))).reshape(-1).numpy()
    assert a.shape == (16,) and np.linalg.norm(a) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(a, own / np.linalg.norm(own), atol=1e-4)
    assert -1.0 <= cosine(a, b) < 0.9999
    assert not np.any(sv.embed(np.zeros(16000, np.float32), 16000))  # silence: no speaker


def test_score_with_nemo_backends_records_file_and_sha256(tmp_path, models):
    from ttspo.builder.core.schemas import GEN
    from ttspo.builder.scoring.run import ScoreOptions, score
    from test_scoring_helpers import metrics_by_id, standard_store

    store = standard_store(tmp_path)
    ctc, spk = models["ctc"], models["speaker"]
    summary = score(store, ScoreOptions(asr=f"nemo:{ctc}", sv=f"nemo:{spk}"))
    asr_source = f"nemo:tiny-ctc.nemo@sha256:{sha(ctc)}+nemo-normalizer"
    sv_source = f"nemo:tiny-titanet.nemo@sha256:{sha(spk)}"
    assert summary.sources == {"asr": asr_source, "ssim": sv_source}
    rows = metrics_by_id(store)
    assert {r[GEN.cer_source] for r in rows.values()} == {asr_source}
    assert all(r[GEN.cer] is not None and r[GEN.pred_transcript] is not None for r in rows.values())
    assert {r[GEN.ssim_source] for r in rows.values() if r[GEN.ssim] is not None} == {sv_source}
    assert rows["r1:4"][GEN.ssim] is None  # a text context has no voice to compare with
    assert sum(r[GEN.ssim] is not None for r in rows.values()) == 4
