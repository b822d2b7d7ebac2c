"""What a sampled code sequence needs on its way to a table, for `generate` and GRPO alike.

:func:`sample_seed` gives each sample its own seed (the policy's ``sample_seed`` row
key, :data:`ttspo.trainer.policy.SAMPLE_SEED`) as a hash of a key that names the
sample: ``generate`` keys by (seed, prompt id, sample index), GRPO adds the step and
the split. A sample's noise then depends on nothing else: not the batch it shares,
not the process that draws it, not how often the run was resumed.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

SEED_BOUND = 2 ** 62  # sample seeds lie in [0, SEED_BOUND)


def sample_seed(*key: Any) -> int:
    """The seed of one sample's noise: a function of KEY only (sha256 of its parts)."""
    digest = hashlib.sha256("\0".join(map(str, key)).encode()).digest()
    return int.from_bytes(digest[:8], "big") % SEED_BOUND

