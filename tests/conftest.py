"""Shared test settings: nothing in the suite may reach a model hub; torch on one
thread where a module asks for it."""

import os

import pytest

# NeMo and Hugging Face libraries fail fast (not after network time-outs) offline.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module (``pytestmark = pytest.mark.usefixtures(...)``):
    on a shared 2-core machine two spinning OpenMP threads run ~20x slower.
    TTSPO_TEST_THREADS=N runs them on N (another split of every reduction: the
    numerics check that the suite holds on another machine)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("TTSPO_TEST_THREADS", "1")))
    yield
    torch.set_num_threads(before)
