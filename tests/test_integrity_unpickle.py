"""No file ttspo reads with torch.load runs code (issue 18, section 2).

A static scan of every package module (and bench/) for loads that can unpickle arbitrary
objects, and real files carrying a pickle payload that would create a marker file:
a run folder's state.pt (this and the older format), a policy file given to train,
precompute-ref and generate. Each is refused with one line, exit 1, and the marker
never appears. A run folder written before states were plain data (numpy's RNG state
as a pickled array, Python's as tuples, no state_sha256) still resumes, exactly.
(The Lightning checkpoint's case is in test_integrity_unpickle_nemo.py: NeMo is slow.)
"""

from __future__ import annotations

import ast
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ttspo.builder.cli.main import cli
from ttspo.trainer.run import checkpoints as ckpt
from ttspo.trainer.run.config import load_config
from ttspo.trainer.dpo.loop import read_metrics, train_dpo
from train_helpers import SET, pattern_store, tiny_overrides

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parent.parent
SCANNED = [ROOT / "__init__.py", *(p for d in ("builder", "trainer", "sql", "bench")
                                    for p in sorted((ROOT / d).rglob("*.py")))]
TORCH_LOADS = {"torch.load", "torch.serialization.load"}
# Calls that unpickle whatever a file names. (A pickle.Unpickler SUBCLASS with its own
# find_class, as builder/ingest/codes.py's, is not a call of these.)
UNPICKLERS = {"pickle.load", "pickle.loads", "pickle.Unpickler", "_pickle.load", "_pickle.loads",
              "dill.load", "dill.loads", "cloudpickle.load", "cloudpickle.loads", "joblib.load",
              "pandas.read_pickle", "torch.serialization.add_safe_globals"}


# ------------------------------------------------------------------ the scan
def aliases(tree: ast.AST) -> dict[str, str]:
    """Local name -> dotted name, from every import in TREE."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                names[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                names[a.asname or a.name] = f"{node.module}.{a.name}"
    return names


def dotted(node: ast.AST, names: dict[str, str]) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([names.get(node.id, node.id), *reversed(parts)])


def unsafe_loads(source: str) -> list[str]:
    """(line: what) for every load in SOURCE that could unpickle arbitrary objects."""
    tree = ast.parse(source)
    names = aliases(tree)
    calls = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    found = []
    for node in ast.walk(tree):
        name = dotted(node, names) if isinstance(node, (ast.Name, ast.Attribute)) else None
        if name in TORCH_LOADS and id(node) not in calls:
            found.append(f"{node.lineno}: {name} passed on (its call cannot be checked)")
        if not isinstance(node, ast.Call):
            continue
        name = dotted(node.func, names)
        kw = {k.arg: k.value for k in node.keywords}
        if name in TORCH_LOADS:
            safe = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True
            if not safe or None in kw or "pickle_module" in kw:
                found.append(f"{node.lineno}: {name} without a literal weights_only=True")
        elif name == "numpy.load" and "allow_pickle" in kw and not (
                isinstance(kw["allow_pickle"], ast.Constant) and kw["allow_pickle"].value is False):
            found.append(f"{node.lineno}: numpy.load that may allow pickles")
        elif name in UNPICKLERS:
            found.append(f"{node.lineno}: {name}")
    return found


def test_the_scan_finds_every_spelling_of_an_unsafe_load():
    unsafe = ["import torch\ntorch.load(p)", "import torch\ntorch.load(p, weights_only=False)",
              "import torch\ntorch.load(p, weights_only=flag)", "import torch\ntorch.load(p, **kw)",
              "import torch as t\nt.serialization.load(p)", "from torch import load as L\nL(p)",
              "from torch import serialization\nserialization.load(p, weights_only=None)",
              "import torch, functools\nf = functools.partial(torch.load, weights_only=True)",
              "import torch, pickle\ntorch.load(p, weights_only=True, pickle_module=pickle)",
              "import numpy as np\nnp.load(p, allow_pickle=True)", "import pickle\npickle.loads(b)",
              "from pickle import load\nload(f)", "import torch\ntorch.serialization.add_safe_globals([x])"]
    safe = ["import torch\ntorch.load(p, map_location='cpu', weights_only=True)",
            "import numpy as np\nnp.load(p)", "import numpy as np\nnp.load(p, allow_pickle=False)",
            "import json\njson.load(f)", "import pickle\nclass U(pickle.Unpickler): pass"]
    for source in unsafe:
        assert unsafe_loads(source), source
    for source in safe:
        assert not unsafe_loads(source), source


def test_no_load_in_the_package_can_unpickle_arbitrary_objects():
    assert len(SCANNED) > 50 and ROOT / "trainer" / "run" / "checkpoints.py" in SCANNED
    found = {str(p.relative_to(ROOT)): f for p in SCANNED
             if (f := unsafe_loads(p.read_text(encoding="utf-8")))}
    assert found == {}


# ------------------------------------------------------------- payload files
class Payload:
    """Unpickled, it runs CODE (creates a marker file): what a hostile file does."""

    def __init__(self, code: str):
        self.code = code

    def __reduce__(self):
        return exec, (self.code,)


class Shell:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def payloads(marker: Path) -> list[object]:
    return [Payload(f"open({str(marker)!r}, 'w').close()"), Shell(f"touch {marker}")]


def invoke(store, *args):
    return CliRunner().invoke(cli, ["--store", str(store.root), *args])


def overrides(**extra) -> list[str]:
    base = {"train.checkpoint_every": 2, "train.val_every": 2, **extra}
    return [w for o in tiny_overrides(**base) for w in ("-o", o)]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return pattern_store(tmp_path_factory.mktemp("unpickle") / "store", groups=16, val_size=4)


def one_line_refusal(store, *args) -> str:
    result = invoke(store, *args)
    assert result.exit_code == 1, result.output
    assert len(result.output.splitlines()) == 1 and "Traceback" not in result.output, result.output
    return result.output


def hostile_state(folder: Path, payload: object, *, record: bool) -> None:
    """FOLDER's state.pt with PAYLOAD among its values; RECORD: meta.json's state_sha256
    edited to match it (whoever can write the folder can edit meta.json), else removed
    (a folder from before state_sha256)."""
    good = torch.load(folder / "state.pt", weights_only=True)
    good["rng"][0]["extra"] = payload
    buffer = io.BytesIO()
    torch.save(good, buffer)
    (folder / "state.pt").write_bytes(buffer.getvalue())
    meta = json.loads((folder / "meta.json").read_text())
    meta.pop(ckpt.STATE_SHA256)
    if record:
        meta[ckpt.STATE_SHA256] = ckpt.bytes_sha256(buffer.getvalue())
    (folder / "meta.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("record", [True, False], ids=["with-state-sha256", "older-folder"])
@pytest.mark.parametrize("which", [0, 1], ids=["exec", "os.system"])
def test_a_state_pt_with_a_pickle_payload_is_refused_and_never_runs(store, tmp_path, record, which):
    out, marker = tmp_path / "run", tmp_path / "marker"
    assert invoke(store, "train", "dpo", SET, "--out", str(out),
                  *overrides(**{"train.max_steps": 2})).exit_code == 0
    hostile_state(out / "checkpoints" / "step_000002", payloads(marker)[which], record=record)
    metrics = (out / "metrics.jsonl").read_bytes()
    said = one_line_refusal(store, "train", "dpo", SET, "--out", str(out),
                            *overrides(**{"train.max_steps": 4}))
    name = ["exec", "posix.system"][which]
    assert said == (f"Error: {out}/checkpoints/step_000002/state.pt: not a ttspo checkpoint "
                    f"state, refused (it holds {name}, which ttspo never unpickles)\n")
    assert not marker.exists()
    assert (out / "metrics.jsonl").read_bytes() == metrics
    assert not (out / "checkpoints" / "step_000004").exists()


@pytest.mark.parametrize("command", ["dpo --init", "precompute-ref --ref", "generate --checkpoint"])
def test_a_policy_file_with_a_pickle_payload_is_refused_and_never_runs(store, tmp_path, command):
    marker, given = tmp_path / "marker", tmp_path / "given.pt"
    torch.save({"format": "ttspo-policy-v1", "architecture": "tiny",
                "state_dict": {"w": torch.zeros(2)}, "config": payloads(marker)[0]}, given)
    verb, flag = command.split()
    args = {"dpo": ("train", "dpo", SET, "--out", str(tmp_path / "new"), *overrides()),
            "precompute-ref": ("train", "precompute-ref", SET, *overrides()),
            "generate": ("generate", "--run", "g", "--embed-audio")}[verb]
    said = one_line_refusal(store, *args, flag, str(given))
    assert said == (f"Error: {given}: not a ttspo policy checkpoint (it holds exec, which "
                    "ttspo never unpickles)\n")
    assert not marker.exists() and not (tmp_path / "new").exists()


def as_older_format(folder: Path) -> None:
    """Rewrite FOLDER's state as ttspo wrote it before: numpy's get_state() tuple (its
    keys a uint32 array), Python's getstate() tuples; meta.json without state_sha256."""
    state = torch.load(folder / "state.pt", weights_only=True)
    for rng in state["rng"]:
        n, p = rng["numpy"], rng["python"]
        rng["numpy"] = (n["kind"], np.asarray(n["keys"], dtype=np.uint32), n["pos"],
                        n["has_gauss"], n["cached_gaussian"])
        rng["python"] = (p["version"], tuple(p["internal"]), p["gauss_next"])
    torch.save(state, folder / "state.pt")
    meta = json.loads((folder / "meta.json").read_text())
    del meta[ckpt.STATE_SHA256]
    (folder / "meta.json").write_text(json.dumps(meta))


def draws(state: dict) -> tuple:
    """What every stream gives after STATE is restored."""
    ckpt.set_rng_state(state)
    import random

    return torch.rand(4).tolist(), np.random.standard_normal(4).tolist(), random.random()


def test_an_older_run_folder_with_numpy_rng_state_resumes_exactly(store, tmp_path):
    # Dropout on: the torch stream restored from the older state decides the losses.
    cfg = lambda steps: load_config(None, tiny_overrides(**{
        "train.max_steps": steps, "train.checkpoint_every": 2, "train.val_every": 2,
        "policy.model.dropout": 0.1}))
    train_dpo(store, SET, cfg=cfg(4), out=tmp_path / "whole", echo=lambda *_: None)
    train_dpo(store, SET, cfg=cfg(2), out=tmp_path / "older", echo=lambda *_: None)
    folder = tmp_path / "older" / "checkpoints" / "step_000002"
    want = draws(ckpt.load_state(folder, rank=0, world_size=1)["rng"])
    as_older_format(folder)
    unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(folder / "state.pt"))
    assert "numpy.ndarray" in unsafe  # what a plain weights-only load refuses
    assert draws(ckpt.load_state(folder, rank=0, world_size=1)["rng"]) == want  # numpy's too
    said = []
    train_dpo(store, SET, cfg=cfg(4), out=tmp_path / "older", echo=said.append)
    assert any("resuming at step 2" in line for line in said), said
    strip = lambda run: [{k: v for k, v in m.items() if k != "pairs_per_second"}
                         for m in read_metrics(tmp_path / run)]
    assert strip("older") == strip("whole")
    final = lambda run: ckpt.read_meta(tmp_path / run / "checkpoints" / "step_000004")["sha256"]
    assert final("older") == final("whole")


def test_the_rng_state_is_plain_data_and_restores_every_stream():
    import random

    np.random.seed(5)
    random.seed(6)
    np.random.standard_normal()  # numpy keeps a cached gaussian: it must come back too
    state = ckpt.rng_state()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    assert torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(buffer.getvalue())) == []
    want = (torch.rand(3), np.random.standard_normal(3), random.random())
    ckpt.set_rng_state(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
    got = (torch.rand(3), np.random.standard_normal(3), random.random())
    assert torch.equal(want[0], got[0]) and np.array_equal(want[1], got[1]) and want[2] == got[2]
