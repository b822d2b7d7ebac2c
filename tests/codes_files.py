"""Hand-made torch.save files: any storage offset, size, stride and storage length.

torch itself refuses to save impossible views (negative sizes, strides past the
storage), but a damaged or hostile ``_codes.pt`` can hold them: these files are
what the ingest's codes reader must reject by name. The layout is torch.save's
(a zip of ``archive/data.pkl``, ``archive/byteorder``, ``archive/data/0``), the
pickle is the one torch writes (``_rebuild_tensor_v2`` over a persistent storage).
"""

from __future__ import annotations

import collections
import io
import pickle
import zipfile

import numpy as np


class _Storage:
    """Stands for the storage in the pickle (written as a persistent id)."""


class _Tensor:
    def __init__(self, offset, size, stride):
        self.args = (offset, tuple(size), tuple(stride))

    def __reduce__(self):
        import torch._utils

        offset, size, stride = self.args
        return (torch._utils._rebuild_tensor_v2,
                (_Storage(), offset, size, stride, False, collections.OrderedDict()))


class _Pickler(pickle.Pickler):
    def __init__(self, file, numel):
        super().__init__(file, protocol=2)
        self.numel = numel

    def persistent_id(self, obj):
        import torch

        if isinstance(obj, _Storage):
            return ("storage", torch.ShortStorage, "0", "cpu", self.numel)
        return None


def codes_file_bytes(values, offset: int, size, stride, numel: int | None = None) -> bytes:
    """A torch.save-format file: storage VALUES (int16), the view (offset, size, stride),
    the storage length recorded in the pickle NUMEL (default: len(values))."""
    values = np.asarray(values, dtype="<i2")
    pkl = io.BytesIO()
    _Pickler(pkl, len(values) if numel is None else numel).dump(_Tensor(offset, size, stride))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("archive/data.pkl", pkl.getvalue())
        zf.writestr("archive/byteorder", b"little")
        zf.writestr("archive/data/0", values.tobytes())
        zf.writestr("archive/version", b"3\n")
    return out.getvalue()
