"""Scoring backends: ASR (for CER/WER), speaker verification (SSIM), quality (PESQ, SQUIM).

    from ttspo.builder.scoring import load_asr, load_speaker
    asr = load_asr("pocketsphinx")          # .name, .transcribe(audio, sr) -> str
    sv = load_speaker("resemblyzer")        # .name, .embed(audio, sr) -> unit vector

Loaders cache by spec, so a model loads once per process however often it is
asked for. Nothing is ever downloaded: see builder.scoring.backends.
"""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=None)
def load_asr(spec: str = "pocketsphinx", option: str = "--asr"):
    """The ASR backend SPEC (pocketsphinx, nemo:PATH.nemo, whisper:DIR)."""
    from ttspo.builder.scoring.asr import make_asr

    return make_asr(spec, option)


@lru_cache(maxsize=None)
def load_speaker(spec: str = "resemblyzer", option: str = "--sv"):
    """The speaker-verification backend SPEC (resemblyzer[:PATH.pt], nemo:PATH.nemo)."""
    from ttspo.builder.scoring.speaker import make_speaker

    return make_speaker(spec, option)


@lru_cache(maxsize=None)
def load_quality(spec: str, option: str = "--quality"):
    """A quality backend: ``pesq`` (needs a reference) or ``squim:PATH`` (reference-free)."""
    from ttspo.builder.scoring.quality import make_quality

    return make_quality(spec, option)


@lru_cache(maxsize=None)
def load_squim(path: str | None, option: str = "--squim"):
    """SQUIM objective from the local weights file PATH (``ttspo score --squim``)."""
    from ttspo.builder.core.errors import ModelError

    if not path:
        raise ModelError("--metrics squim needs --squim PATH (SQUIM objective weights; "
                         "models are never downloaded)")
    return load_quality(f"squim:{path}", option)


def __getattr__(name: str):
    # Lazy: importing ttspo.builder.scoring.options (the CLI's defaults) must not
    # load numpy and the speaker models' code.
    if name == "cosine":
        from ttspo.builder.scoring.speaker import cosine

        return cosine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["load_asr", "load_speaker", "load_quality", "load_squim", "cosine"]
