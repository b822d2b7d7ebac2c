"""NeMo's audio codec (``AudioCodecModel`` from a local ``.nemo``) as a ttspo codec.

Implements :class:`ttspo.trainer.policy.base.Codec`: ``encode(audio, sr)`` gives int64
codes ``[C, T]``, ``decode(codes)`` gives ``(float32 audio, sample rate)``. Used by
the MagpieTTS policy adapter (generate, GRPO rollouts) and by ``ttspo ingest
--codec nemo:PATH`` for generations that have audio but no codes.

Nothing is downloaded: a ``nvidia/...`` name is refused, the path must exist.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
from pathlib import Path

import numpy as np
import torch

from ttspo.builder.core.errors import ModelError


def restore_codec(path: str | Path):
    """The AudioCodecModel in the .nemo at PATH, on the CPU in eval mode, frozen.

    As MagpieTTS restores its codec: without the SCL loss (it needs an ASR model)
    and without the discriminator (inference never uses it).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"codec {path}: file not found (give a local .nemo; nothing is downloaded)")
    if importlib.util.find_spec("nemo") is None:
        raise ModelError(f"codec {path}: needs the 'nemo' package (install the 'nemo' extra)")
    from nemo.collections.tts.models import AudioCodecModel

    try:
        cfg = AudioCodecModel.restore_from(str(path), return_config=True)
        if "use_scl_loss" in cfg:
            cfg.use_scl_loss = False
        model = AudioCodecModel.restore_from(str(path), strict=False, override_config_path=cfg,
                                             map_location="cpu")
    except Exception as exc:  # NeMo raises many types for a bad archive
        raise ModelError(f"codec {path}: cannot restore a NeMo AudioCodecModel ({exc})") from None
    if getattr(model, "discriminator", None) is not None:
        del model.discriminator
    model.freeze()
    return model


class NemoCodec:
    """A NeMo AudioCodecModel behind ttspo's codec interface (one item at a time)."""

    def __init__(self, model, path: str | Path | None = None) -> None:
        self.model = model
        self.path = Path(path) if path is not None else None

    @classmethod
    def load(cls, path: str | Path) -> "NemoCodec":
        return cls(restore_codec(path), path)

    @property
    def num_codebooks(self) -> int:
        return int(self.model.num_codebooks)

    @property
    def codebook_size(self) -> int:
        return int(self.model.codebook_size)

    @property
    def sample_rate(self) -> int:
        return int(self.model.output_sample_rate)

    @property
    def frame_rate(self) -> float:
        return self.model.sample_rate / self.model.samples_per_frame

    @functools.cached_property
    def fingerprint(self) -> str:
        """Short hash of the codec file: codes only mean something under one codec.
        Once per loaded codec (the model in memory is what it was loaded from)."""
        if self.path is None:
            return ""
        return hashlib.sha256(self.path.read_bytes()).hexdigest()[:16]

    def encode(self, audio: np.ndarray, sr: int) -> np.ndarray:
        """int64 codes [C, frames] of mono float AUDIO at rate SR (resampled by the codec)."""
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim != 1 or audio.size == 0:
            raise ValueError(f"audio must be mono and non-empty, shape [samples], got {audio.shape}")
        x = torch.from_numpy(audio)[None]
        with torch.no_grad():
            codes, lens = self.model.encode(audio=x, audio_len=torch.tensor([x.shape[1]]), sample_rate=sr)
        return codes[0, :, : int(lens[0])].to(torch.int64).numpy()

    def decode(self, codes) -> tuple[np.ndarray, int]:
        """(float32 audio, sample rate) for CODES [C, frames]: frames * samples_per_frame samples."""
        codes = torch.as_tensor(np.asarray(codes), dtype=torch.int64)
        if codes.ndim != 2 or codes.shape[0] != self.num_codebooks:
            raise ValueError(f"codes must have shape [{self.num_codebooks}, frames], got {list(codes.shape)}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError(f"codes must lie in [0, {self.codebook_size}), "
                             f"got [{int(codes.min())}, {int(codes.max())}]")
        with torch.no_grad():
            audio, lens = self.model.decode(tokens=codes[None], tokens_len=torch.tensor([codes.shape[1]]))
        return audio[0, : int(lens[0])].float().numpy(), self.sample_rate
