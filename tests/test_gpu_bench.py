"""bench/gpu.sh runs with torch and ttspo's source alone (the lent GPU machine has
nothing else), and its CPU check catches CPU kernels.

The runs happen in a child process whose ``sitecustomize`` hides every module that
is neither the standard library, torch and its own dependencies, nor ttspo: numpy,
pyarrow, Lance, polars, DuckDB, click, yaml, soundfile... import as if not installed.
Without CUDA the script refuses to run unless ``--allow-cpu`` (the smoke mode).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
# What the lent machine has: torch, its requirements (torch's METADATA), the standard library.
TORCH_ONLY = '''
import sys
ALLOW = {"torch", "torchgen", "functorch", "ttspo", "filelock", "typing_extensions", "sympy",
         "mpmath", "networkx", "jinja2", "markupsafe", "fsspec", "triton", "nvidia", "cuda",
         "setuptools", "pkg_resources", "_distutils_hack", "optree", "opt_einsum"}


class Hide:  # as if not installed: every finder says it has no such module
    def __init__(self, inner):
        self.inner = inner

    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if (top not in ALLOW and top not in sys.stdlib_module_names
                and not top.startswith(("__editable__", "_sysconfigdata"))):
            return None
        return self.inner.find_spec(name, path, target)

    def __getattr__(self, attr):
        return getattr(self.inner, attr)


sys.meta_path[:] = [Hide(f) for f in sys.meta_path]
'''
SMALL = ["--pairs", "2", "--samples", "4", "--frames", "8", "--context", "4", "--d-model", "16",
         "--layers", "1", "--warmup", "0", "--steps", "1", "--seconds", "0"]


def torch_only_env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "sitecustomize.py").write_text(TORCH_ONLY)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return {**env, "PYTHONPATH": str(tmp_path), "PYTHON": sys.executable,
            "PYTHONWARNINGS": "ignore"}


def gpu_sh(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), *args], cwd=tmp_path,
                          env=torch_only_env(tmp_path), capture_output=True, text=True, timeout=300)


def test_the_blocker_hides_the_data_half(tmp_path):
    code = ("import importlib.util as u\n"
            "for m in ('numpy', 'pyarrow', 'lance', 'polars', 'duckdb', 'click', 'yaml', 'soundfile'):\n"
            "    assert u.find_spec(m) is None, m\n"
            "import pyarrow\n")
    run = subprocess.run([sys.executable, "-c", code], env=torch_only_env(tmp_path),
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and "No module named 'pyarrow'" in run.stderr, run.stderr


@pytest.mark.slow
def test_gpu_sh_runs_every_part_with_torch_alone(tmp_path):
    run = gpu_sh(tmp_path, "--allow-cpu", *SMALL)
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout
    assert "SMOKE CHECK ONLY" in out and "codec: shape only (no numpy here)" in out
    # ttspo came from this checkout, through gpu.sh's link
    assert f"(-> {ROOT})" in out
    for part in ("dpo fp32", "dpo bf16", "sample kv", "sample no-cache", "grpo fp32"):
        row = next(line for line in out.splitlines() if line.startswith(f"| {part} |"))
        assert float(row.split("|")[2].split()[0]) > 0
        # on the CPU every step's model kernels are CPU kernels: the check saw them
        checked = next(line for line in out.splitlines() if line.strip().startswith(f"{part}: checked"))
        assert int(checked.split("step: ")[1].split()[0]) > 100
    assert "ran on the CPU:" in run.stderr and "(allowed: --allow-cpu" in run.stderr


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_gpu_sh_refuses_unless_allowed(tmp_path):
    run = gpu_sh(tmp_path, *SMALL)
    assert run.returncode == 1
    assert run.stderr.strip().splitlines() == [
        f"gpu.py: no CUDA device (torch {torch.__version__}, cuda built {torch.version.cuda}); "
        "--allow-cpu runs the smoke check on the CPU"]


def load_bench():
    spec = importlib.util.spec_from_file_location("gpu_bench", ROOT / "bench" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (its dataclasses look their module up)
    spec.loader.exec_module(module)
    return module


def test_the_cpu_check_counts_cpu_kernels_and_allows_small_ones():
    bench = load_bench()
    with bench.CpuKernels(4) as guard:
        torch.ones(8, 8) @ torch.ones(8, 8)  # a CPU matmul: 64 elements
        torch.zeros(()) + 1  # a 0-dim step count, as AdamW keeps it
        torch.rand(4)  # per-row noise within the allowance
    assert guard.seen == ["ones", "ones", "mm"]
    assert guard.allowed_seen == 3


def test_ops_across_devices_are_transfers_not_cpu_kernels():
    bench = load_bench()
    meta, scalar = torch.ones(3, device="meta"), torch.ones(())
    with bench.CpuKernels(0) as guard:
        meta + scalar  # a CPU scalar into another device's kernel: not a CPU kernel
    assert guard.seen == [] and guard.allowed_seen == 0


def test_column_names_import_without_pyarrow_and_are_the_schemas_names(tmp_path):
    from ttspo.builder.core import columns, schemas

    for name in ("PROMPT", "GEN", "PAIR", "REF", "CKPT", "RWD", "ROLL", "DYN", "LABEL", "LOG"):
        assert getattr(schemas, name) is getattr(columns, name)
    assert set(schemas.GENERATIONS_SCHEMA.names) <= set(vars(columns.GEN).values())
    code = "import sys, ttspo.builder.core.columns; assert 'pyarrow' not in sys.modules"
    run = subprocess.run([sys.executable, "-c", code], env=torch_only_env(tmp_path),
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
