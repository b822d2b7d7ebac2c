"""NeMo backends on tiny NeMo models built from a config in the test (no download).

Skipped unless the `nemo` extra is installed (pip install 'ttspo[nemo]').
"""

from __future__ import annotations

import numpy as np
import pytest

nemo_asr = pytest.importorskip("nemo.collections.asr")

from omegaconf import DictConfig  # noqa: E402

from ttspo.builder.scoring import cosine, load_asr, load_speaker  # noqa: E402
from ttspo.builder.scoring.audio import read_audio  # noqa: E402
from test_scoring_helpers import fixture  # noqa: E402

VOCAB = [" "] + [chr(c) for c in range(ord("a"), ord("z") + 1)] + ["'"]


def conv_encoder(filters: int) -> dict:
    return {"_target_": "nemo.collections.asr.modules.ConvASREncoder", "feat_in": 64,
            "activation": "relu", "conv_mask": True,
            "jasper": [{"filters": filters, "repeat": 1, "kernel": [1], "stride": [1],
                        "dilation": [1], "dropout": 0.0, "residual": False,
                        "separable": False}]}


PREPROCESSOR = {"_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor"}


@pytest.fixture(scope="module")
def tiny_ctc(tmp_path_factory):
    cfg = DictConfig({
        "preprocessor": PREPROCESSOR, "encoder": conv_encoder(32),
        "decoder": {"_target_": "nemo.collections.asr.modules.ConvASRDecoder", "feat_in": 32,
                    "num_classes": len(VOCAB), "vocabulary": VOCAB},
    })
    path = tmp_path_factory.mktemp("nemo") / "tiny-ctc.nemo"
    nemo_asr.models.EncDecCTCModel(cfg=cfg).save_to(str(path))
    return path


@pytest.fixture(scope="module")
def tiny_speaker(tmp_path_factory):
    cfg = DictConfig({
        "preprocessor": PREPROCESSOR, "encoder": conv_encoder(32),
        "decoder": {"_target_": "nemo.collections.asr.modules.SpeakerDecoder", "feat_in": 32,
                    "num_classes": 2, "pool_mode": "xvector", "emb_sizes": [16]},
    })
    path = tmp_path_factory.mktemp("nemo") / "tiny-titanet.nemo"
    nemo_asr.models.EncDecSpeakerLabelModel(cfg=cfg).save_to(str(path))
    return path


def test_nemo_asr_backend_restores_and_transcribes(tiny_ctc):
    asr = load_asr(f"nemo:{tiny_ctc}")
    assert asr.name == "nemo:tiny-ctc.nemo"
    texts = asr.transcribe_batch([read_audio(fixture("clean"))[0],
                                  read_audio(fixture("other"), target_sr=22050)[0]], 16000)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    assert set("".join(texts)) <= set(VOCAB)  # untrained, but its own vocabulary


def test_nemo_speaker_backend_gives_unit_embeddings(tiny_speaker):
    sv = load_speaker(f"nemo:{tiny_speaker}")
    assert sv.name == "nemo:tiny-titanet.nemo"
    a = sv.embed(*read_audio(fixture("clean")))
    b = sv.embed(*read_audio(fixture("other")))
    assert a.shape == (16,) and np.linalg.norm(a) == pytest.approx(1.0, abs=1e-5)
    assert -1.0 <= cosine(a, b) <= 1.0


def test_score_with_nemo_backends_records_them(tmp_path, tiny_ctc, tiny_speaker):
    from ttspo.builder.core.schemas import GEN
    from ttspo.builder.scoring.run import ScoreOptions, score
    from test_scoring_helpers import metrics_by_id, standard_store

    store = standard_store(tmp_path)
    summary = score(store, ScoreOptions(asr=f"nemo:{tiny_ctc}", sv=f"nemo:{tiny_speaker}"))
    assert summary.sources == {"asr": "nemo:tiny-ctc.nemo+nemo-normalizer",
                               "ssim": "nemo:tiny-titanet.nemo"}
    rows = metrics_by_id(store).values()
    assert all(r[GEN.cer_source] == "nemo:tiny-ctc.nemo+nemo-normalizer" for r in rows)
