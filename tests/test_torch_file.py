"""torch_file.py writes the bytes torch.save writes, for the arrays an export makes."""

import io

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ttspo.builder.sets.torch_file import torch_file_bytes

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def torch_saved(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    torch.save(torch.from_numpy(array), buffer)
    return buffer.getvalue()


def export_array(values: np.ndarray, start: int, shape: tuple, dtype: str) -> np.ndarray:
    """As codes.py makes it: a slice of the table's flat codes, reshaped, cast."""
    size = int(np.prod(shape))
    return np.ascontiguousarray(values[start:start + size].reshape(shape).astype(dtype))


SHAPES = [(8, 215), (2, 12), (8, 0), (0,), (0, 5), (1, 1), (3,), (8, 255), (8, 256),
          (8, 8192), (1, 70000), (300, 2), (4, 3, 2), (2, 2, 2, 2)]


@pytest.mark.parametrize("dtype", ["int32", "int64"])
@pytest.mark.parametrize("shape", SHAPES)
def test_the_bytes_are_torch_saves(shape, dtype):
    values = np.random.default_rng(1).integers(-2**31, 2**31, 600_000).astype(np.int16)
    array = export_array(values, 7, shape, dtype)
    assert torch_file_bytes(array) == torch_saved(array)


@settings(max_examples=60, deadline=None)
@given(books=st.integers(0, 40), frames=st.integers(0, 3000), wide=st.booleans(),
       seed=st.integers(0, 2**32 - 1))
def test_any_codes_shape_gives_torch_saves_bytes_and_loads_back(books, frames, wide, seed):
    dtype = "int64" if wide else "int32"
    shape = (books, frames) if books else (0,)
    array = np.random.default_rng(seed).integers(-(2**31), 2**31 - 1, shape).astype(dtype)
    data = torch_file_bytes(array)
    assert data == torch_saved(array)
    loaded = torch.load(io.BytesIO(data), weights_only=True)
    assert loaded.dtype == getattr(torch, dtype) and tuple(loaded.shape) == shape
    assert np.array_equal(loaded.numpy(), array)


@pytest.mark.parametrize("array, reason", [
    (np.zeros((2, 3), np.int16), "int32/int64"),
    (np.zeros((4, 6), np.int32)[:, ::2], "C-contiguous"),
    (np.zeros((2, 3), ">i4"), "not >i4"),
])
def test_what_it_cannot_write_is_refused(array, reason):
    with pytest.raises(ValueError, match=reason):
        torch_file_bytes(array)
