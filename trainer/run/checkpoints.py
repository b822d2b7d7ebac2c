"""Step-numbered checkpoints in a run folder, and their rows in the `checkpoints` table.

A run folder (``--out DIR``) holds::

    run.json                      what run this is (set, versions, config): resume checks it
    config.yaml                   the resolved config
    metrics.jsonl, tb/            metrics (loop.py)
    checkpoints/step_000040/      policy.pt (weights: the policy's own format),
                                  state.pt (optimizer, scheduler, every rank's RNG state),
                                  meta.json (step, data position, sha256, val metrics, lineage)
    checkpoints/best/             the best so far by the chosen validation metric (same files)

A checkpoint folder is written under a temporary name and renamed when complete,
so a run killed while saving leaves the previous checkpoint as the latest; what a
kill between the rename and the row leaves, a resume repairs (trainer/run/repair.py), and
TTSPO_FAULT kills at each of these moments (trainer/run/faults.py). Rank 0
writes the files and the table row; every rank's RNG state reaches it by a gather.
DPO and GRPO save through one Checkpointer (trainer/run/checkpointer.py).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import torch

from ttspo.builder.core.dist import gather_objects
from ttspo.builder.core.errors import InputError, first_line
from ttspo.builder.core.files import file_sha256
from ttspo.builder.core.schemas import CHECKPOINTS_SCHEMA, CKPT
from ttspo.builder.core.store import sql_string
from ttspo.trainer.run import faults

# The folder layout lives with the checks of its files (trainer/run/verify.py).
from ttspo.trainer.run.verify import (CHECKPOINTS, step_folders, META_FILE, POLICY_FILE, STATE_FILE,  # noqa: F401
                                  STATE_SHA256, STEP_DIR, bytes_sha256, mismatch,
                                  recorded, refused_reason)


@dataclass
class Saved:
    """A checkpoint written: where, its weights' sha256, its meta record."""

    path: Path  # the checkpoint folder
    sha256: str
    meta: dict[str, Any]

    @property
    def policy_path(self) -> Path:
        return self.path / POLICY_FILE


def step_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step_{step:06d}"


def rng_state() -> dict[str, Any]:
    """This process's RNG streams (dropout and sampling draw from torch's), as tensors,
    numbers, strings, lists and dicts: what a weights-only load reads back (numpy's
    state is an array, Python's nested tuples: both become lists)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    version, internal, gauss_next = random.getstate()
    return {"torch": torch.get_rng_state(),
            "numpy": {"kind": str(kind), "keys": [int(k) for k in keys], "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(gauss)},
            "python": {"version": int(version), "internal": list(internal),
                       "gauss_next": gauss_next}}


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore RNG_STATE (as :func:`rng_state` makes it, or as checkpoints before it
    held it: numpy's tuple with its array, Python's tuples)."""
    torch.set_rng_state(state["torch"])
    n, p = state["numpy"], state["python"]
    if isinstance(n, dict):
        n = (n["kind"], np.asarray(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"],
             n["cached_gaussian"])
    if isinstance(p, dict):
        p = (p["version"], tuple(p["internal"]), p["gauss_next"])
    np.random.set_state(n)
    random.setstate(p)


def gather_rng_states() -> list[dict[str, Any]]:
    """Every rank's RNG state, in rank order (a collective: all ranks call it)."""
    return gather_objects(rng_state())


def gather_weight_digests(model: torch.nn.Module) -> list[str]:
    """sha256 of each rank's parameters, in rank order (a collective)."""
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return gather_objects(h.hexdigest())


def save_checkpoint(run_dir: Path, step: int, *, policy: Any, optimizer: Any, scheduler: Any,
                    rng_states: list[dict[str, Any]], data_state: dict[str, Any],
                    meta: dict[str, Any], kind: str = "step",
                    before_replace: Callable[[], None] | None = None) -> Saved:
    """Write one checkpoint folder (rank 0 only) and return it.

    ``meta`` carries what the row and a resume need (config, lineage, val metrics);
    this adds step, kind, data position, sha256 and the policy identity.
    """
    # Every checkpoint gets its own folder, so each `checkpoints` row keeps pointing at
    # the weights its sha256 names; "best" is a link to the newest best_NNNNNN.
    final = step_dir(run_dir, step) if kind == "step" else \
        Path(run_dir) / CHECKPOINTS / f"{kind}_{step:06d}"
    tmp = final.with_name(final.name + ".tmp")
    faults.point("before_tmp", step=step, folder=final.name)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    sha = policy.save(str(tmp / POLICY_FILE))  # the weights serialised once: sha of those bytes
    faults.point("after_policy", step=step, folder=final.name)
    # Streamed to the file, then hashed from it: no second copy of the optimizer in memory.
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "rng": rng_states, "data": data_state, "step": step}, tmp / STATE_FILE)
    faults.point("after_state", step=step, folder=final.name)
    identity = policy.identity(with_sha256=False)  # the sha is the file's, above
    record = {**meta, "step": step, "kind": kind, "sha256": sha, "data": data_state,
              STATE_SHA256: file_sha256(tmp / STATE_FILE),  # a resume checks state.pt against it
              "architecture": identity.architecture, "policy_config": identity.config,
              "world_size": len(rng_states)}
    (tmp / META_FILE).write_text(json.dumps(record, indent=2, sort_keys=True, default=str))
    faults.point("after_meta", step=step, folder=final.name)
    publish(tmp, final, before_replace=before_replace)
    faults.point("after_rename", step=step, folder=final.name)
    if kind != "step":
        _point(Path(run_dir) / CHECKPOINTS / kind, final)
        faults.point("after_link", step=step, folder=final.name)
    return Saved(final, sha, record)


def publish(tmp: Path, final: Path, *, before_replace: Callable[[], None] | None = None) -> None:
    """Rename the complete folder TMP to FINAL, replacing a FINAL there (a step a
    resumed run redoes). BEFORE_REPLACE runs first (the old folder's rows are
    removed while it is still in place: a row never names weights its folder does not
    hold, so a row that differs from its folder is damage, never a kill, and a resume
    refuses it). The old one is renamed aside, never removed in place: a kill
    mid-removal would leave a FINAL with its meta.json and without its weights, which
    a resume would take for complete. A kill between the renames leaves no FINAL and
    two ``*.tmp`` folders, which a resume removes."""
    if not final.exists():
        os.replace(tmp, final)
        return
    if before_replace is not None:
        before_replace()
    aside = final.with_name(final.name + ".old.tmp")
    shutil.rmtree(aside, ignore_errors=True)
    os.replace(final, aside)
    faults.point("after_set_aside", folder=final.name)
    os.replace(tmp, final)
    shutil.rmtree(aside, ignore_errors=True)


def _point(link: Path, target: Path) -> None:
    """Make LINK a relative symlink to TARGET, swapped in atomically."""
    staged = link.with_name(link.name + ".link")
    if staged.is_symlink() or staged.exists():
        staged.unlink()
    os.symlink(target.name, staged)
    if link.is_dir() and not link.is_symlink():  # a run folder from before best_NNNNNN
        shutil.rmtree(link)
    os.replace(staged, link)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete step folder of a run, or None."""
    folders = step_folders(run_dir)
    return folders[0] if folders else None


def read_meta(path: Path) -> dict[str, Any]:
    return json.loads((Path(path) / META_FILE).read_text())


def load_state(path: Path, *, rank: int, world_size: int) -> dict[str, Any]:
    """Optimizer, scheduler, data position and THIS rank's RNG state of a checkpoint.

    state.pt is read once: checked against meta.json's state_sha256, then loaded
    weights-only from those bytes (a file from a shared run folder runs no code). A
    checkpoint from before state_sha256 holds numpy's RNG state as a pickled array:
    numpy's array reconstruct globals, and nothing else, are allowed for it."""
    file = Path(path) / STATE_FILE
    meta = recorded(path)
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise InputError(f"{file}: cannot read ({first_line(exc, 120)})") from None
    actual = bytes_sha256(data) if STATE_SHA256 in meta else None
    if actual is not None and actual != meta[STATE_SHA256]:
        # verified_latest checked it before; it changed since (another writer, a fault)
        raise InputError(mismatch(file, actual, str(Path(path) / META_FILE),
                                  meta[STATE_SHA256], run_dir=Path(path).parent.parent, store=None))
    older = STATE_SHA256 not in meta
    try:
        with torch.serialization.safe_globals(numpy_array_globals()) if older else nullcontext():
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  any unreadable file: one line, never code run
        raise InputError(f"{file}: not a ttspo checkpoint state, refused "
                         f"({refused_reason(exc)})") from None
    if not (isinstance(state, dict) and {"optimizer", "scheduler", "rng", "step"} <= state.keys()
            and isinstance(state["rng"], list) and isinstance(state["step"], int)):
        raise InputError(f"{file}: not a ttspo checkpoint state (no optimizer, scheduler, rng "
                         "and step)")
    saved_world = len(state["rng"])
    if saved_world != world_size:
        raise InputError(f"{path}: saved by {saved_world} process(es), resumed with "
                         f"{world_size}: resume with --nproc-per-node {saved_world}")
    state["rng"] = state["rng"][rank]
    return state


def numpy_array_globals() -> list[Any]:
    """What pickling numpy's RNG key array (uint32) writes: its reconstruct function
    (under numpy 1's and numpy 2's module names), ndarray, dtype and the uint32 dtype's
    class. None of them calls code a file names: an array's class and dtype must
    themselves be allowed, so an array can only be a plain ndarray of uint32."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1
        from numpy.core.multiarray import _reconstruct
    return [(_reconstruct, "numpy._core.multiarray._reconstruct"),
            (_reconstruct, "numpy.core.multiarray._reconstruct"), np.ndarray, np.dtype,
            type(np.dtype(np.uint32))]  # the keys' dtype alone may be built


def resume(latest: Path | None, run_dir: Path, *, optimizer: Any, scheduler: Any, rank: int,
           world_size: int, best_metric: str) -> tuple[int, float | None]:
    """(step to start at, best BEST_METRIC value so far: None when `best` was picked by
    another metric) of a run resumed from LATEST, its optimizer, schedule and THIS
    rank's RNG streams restored; (0, None) without one. DPO and GRPO resume alike (the
    weights are loaded before: the optimizer holds them; LATEST was checked against
    its records then: verify.verified_latest)."""
    if latest is None:
        return 0, None
    state = load_state(latest, rank=rank, world_size=world_size)
    try:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as exc:
        raise InputError(f"{Path(latest) / STATE_FILE}: does not fit this run "
                         f"({first_line(exc, 120)})") from None
    best_dir = Path(run_dir) / CHECKPOINTS / "best"
    meta = read_meta(best_dir) if (best_dir / META_FILE).exists() else {}
    return state["step"], meta.get("best_value") if meta.get("best_metric") == best_metric else None


# ------------------------------------------------------------------ table rows
def checkpoint_row(saved: Saved, *, run: str, trainer: str) -> dict[str, Any]:
    """The `checkpoints` row for a written checkpoint (its meta says the rest)."""
    meta = saved.meta
    val = meta.get("val_metrics") or {}
    return {
        CKPT.run: run, CKPT.step: meta["step"], CKPT.kind: meta["kind"],
        CKPT.path: str(saved.policy_path.absolute()), CKPT.sha256: saved.sha256,
        CKPT.architecture: meta["architecture"],
        CKPT.policy_config: json.dumps(meta["policy_config"], sort_keys=True, default=str),
        CKPT.init_sha256: meta.get("init_sha256"), CKPT.trainer: trainer,
        CKPT.set_name: meta.get("set_name"), CKPT.set_version: meta.get("set_version"),
        CKPT.generations_version: meta.get("generations_version"),
        CKPT.prompts_version: meta.get("prompts_version"),
        CKPT.val_loss: val.get("val/loss"), CKPT.val_accuracy: val.get("val/accuracy"),
        CKPT.val_margin: val.get("val/margin"),
        CKPT.val_metrics: json.dumps(val, sort_keys=True) if val else None,
        CKPT.config: json.dumps(meta.get("config"), sort_keys=True, default=str),
        CKPT.created: datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def record_checkpoint(store: Any, row: dict[str, Any], lineage: Any) -> int:
    """Append one row to the store's `checkpoints` table (one commit)."""
    table = pa.Table.from_pylist([row], schema=CHECKPOINTS_SCHEMA)
    return store.write(CHECKPOINTS, table, CHECKPOINTS_SCHEMA, lineage)


def remove_rows(store: Any, paths: list[str], lineage: Any) -> int | None:
    """Delete the `checkpoints` rows naming PATHS (policy.pt files), one commit."""
    if not paths or not store.exists(CHECKPOINTS):
        return None
    where = f"{CKPT.path} IN ({', '.join(sql_string(p) for p in paths)})"
    return store.delete_rows(CHECKPOINTS, where, lineage)
