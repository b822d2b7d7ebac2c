"""What a sampled code sequence needs on its way to a table, for `generate` and GRPO alike.

:func:`sample_seed` gives each sample its own seed (the policy's ``sample_seed`` row
key, :data:`ttspo.trainer.policy.base.SAMPLE_SEED`) as a hash of a key that names the
sample: ``generate`` keys by (seed, prompt id, sample index), GRPO adds the step and
the split. A sample's noise then depends on nothing else: not the batch it shares,
not the process that draws it, not how often the run was resumed.

:func:`decode` turns a sample's frames into audio with the policy's codec.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # numpy on use: sampling imports SEED_BOUND on a torch-only machine
    import numpy as np

SEED_BOUND = 2 ** 62  # sample seeds lie in [0, SEED_BOUND)


def sample_seed(*key: Any) -> int:
    """The seed of one sample's noise: a function of KEY only (sha256 of its parts)."""
    digest = hashlib.sha256("\0".join(map(str, key)).encode()).digest()
    return int.from_bytes(digest[:8], "big") % SEED_BOUND


def decode(codec: Any, frames: np.ndarray) -> tuple[np.ndarray, int]:
    """(float32 mono audio, sample rate) of FRAMES [C, T], as the codec decodes them.

    Every sample of at least one frame is the codec's audio of its frames: a 1-frame
    sample is what the codec makes of that frame (the built-in codec gives 1024
    samples), never silence in its place, so the audio a table stores and the
    metrics scored on it are those of the codes beside it. A sample that ended at
    once (T = 0) has no frame to decode: audio of length 0.
    """
    import numpy as np

    if frames.shape[1] == 0:
        return np.zeros(0, dtype=np.float32), int(codec.sample_rate)
    audio, sr = codec.decode(frames)
    return np.asarray(audio, dtype=np.float32).reshape(-1), int(sr)
