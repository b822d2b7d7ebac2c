"""Codes files with impossible views: rejected by name, and never shifting another row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ttspo.builder.cli.main import cli
from ttspo.builder.core.store import Store
from ttspo.builder.ingest.codes import read_codes_bytes
from ttspo.builder.ingest.files import BadFile
from codes_files import codes_file_bytes
from nemo_layout import make_nemo_run

OUTSIDE = "codes tensor reaches outside its storage"


def stored_codes(store: Path) -> dict[str, np.ndarray | None]:
    table = Store(store).open("generations").to_table(columns=["generation_id", "codes"])
    return {g: (None if c is None else np.array(c, dtype=np.int16))
            for g, c in zip(*table.to_pydict().values())}


def test_a_negative_size_is_rejected_and_neighbours_keep_their_codes(tmp_path):
    run = make_nemo_run(tmp_path, n_prompts=3, group_size=4, ranks=2)
    run.codes(5).write_bytes(codes_file_bytes(np.arange(40), 0, (-1, -1), (-1, 1)))
    store = tmp_path / "st"
    result = CliRunner().invoke(cli, ["--store", str(store), "ingest", "nemo", str(run.gen_dir),
                                      "--manifest", str(run.manifest), "--on-error", "skip"])
    assert result.exit_code == 0, result.output
    got = stored_codes(store)
    assert "demo:5" not in got
    for line in set(range(12)) - {5}:
        assert np.array_equal(got[f"demo:{line}"], torch.load(run.codes(line)).numpy()), line
    errors = Store(store).open("ingest_errors").to_table().to_pylist()
    assert errors == [{"run": "demo", "file": run.rel(5, 1),
                       "reason": "codes shape [-1, -1] has a negative size"}]


VALUES = np.arange(24)


@pytest.mark.parametrize("offset, size, stride, numel, reason", [
    (0, (-1, -1), (-1, 1), None, "codes shape [-1, -1] has a negative size"),
    (0, (-2, 3), (3, 1), None, "codes shape [-2, 3] has a negative size"),
    (0, (3, -8), (8, 1), None, "codes shape [3, -8] has a negative size"),
    (-1, (2, 3), (3, 1), None, "codes storage offset -1 is negative"),
    (0, (2, 3), (-3, 1), None, "codes stride [-3, 1] has a negative step"),
    (0, (4, 7), (7, 1), None, OUTSIDE),  # 28 > 24 values
    (20, (1, 5), (5, 1), None, OUTSIDE),
    (0, (3, 8), (9, 1), None, OUTSIDE),  # strided past the end
    (0, (3, 8), (8, 1), 10**6, "codes storage holds 24 values, its record says 1000000"),
    (0, (2, 3), (3, 1), -5, "codes storage length -5 is negative"),
    (0, (2**40, 2**40), (2**40, 1), None, OUTSIDE),
    (0, (3, 2**62), (0, 0), None, "codes shape [3, 4611686018427387904] is too large (over 1048576 values)"),
    (2**70, (2, 3), (3, 1), None, OUTSIDE),
    (0, (2.5, 3), (3, 1), None, "codes shape [2.5, 3] is not made of whole numbers"),
    (0, (True, 3), (3, 1), None, "codes shape [True, 3] is not made of whole numbers"),
])
def test_impossible_views_are_rejected(offset, size, stride, numel, reason):
    data = codes_file_bytes(VALUES, offset, size, stride, numel)
    with pytest.raises(BadFile) as exc:
        read_codes_bytes(data)
    assert str(exc.value) == reason


@pytest.mark.parametrize("offset, size, stride", [
    (0, (3, 8), (8, 1)), (2, (2, 11), (11, 1)), (1, (3, 4), (1, 3)),  # transposed view
    (0, (4, 6), (0, 1)), (5, (0, 3), (3, 1)), (0, (3, 0), (1, 1)), (23, (1, 1), (1, 1)),
])
def test_possible_views_read_as_torch_reads_them(offset, size, stride):
    data = codes_file_bytes(VALUES, offset, size, stride)
    import io

    want = torch.load(io.BytesIO(data)).numpy()
    assert np.array_equal(read_codes_bytes(data), want)
    assert read_codes_bytes(data).shape == tuple(size)
