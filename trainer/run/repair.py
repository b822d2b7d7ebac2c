"""What a resume repairs of what a kill left, so the run folder and the `checkpoints`
table agree again: one row per checkpoint folder, no row naming a folder that is not
there, no half-made folder or link. A row whose sha256 differs from its folder's
meta.json is damage, not a kill: it is said and left alone.

A save (trainer/run/checkpoints.py) writes a folder under ``NAME.tmp``, removes the rows
of a folder of the same name (a step a resume redoes), renames it into place, points
``best`` at it (best checkpoints), then commits its row; a kill can land between any
two of those. Run by rank 0 of a resume, under the run lock (trainer/run/runlock.py),
after the latest checkpoint's files were checked (trainer/run/verify.py). Metrics and lineage
lines are repaired where they are written (trainer/run/folder.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from ttspo.builder.core.dist import broadcast_object
from ttspo.builder.core.errors import TrainingError, TtspoError, first_line
from ttspo.builder.core.schemas import CKPT
from ttspo.builder.core.store import as_lineage
from ttspo.trainer.run.checkpoints import (CHECKPOINTS, META_FILE, POLICY_FILE, Saved, checkpoint_row,
                                       record_checkpoint, remove_rows)
from ttspo.trainer.run.folder import LINEAGE_FILE, METRICS_FILE, jsonl_records

FOLDER = re.compile(r"^(step|best)_(\d{6,})$")
REBUILT = "row rebuilt from meta.json by a resume (the run was killed before committing it)"


def repair_run(store: Any, out: Path, *, trainer: str, lineage: Any) -> list[str]:
    """Repair run folder OUT and its rows; what was repaired, one note each."""
    for staged in [*Path(out).glob(".metrics.jsonl.*.tmp"), *Path(out).glob(".lineage.jsonl.*.tmp")]:
        staged.unlink(missing_ok=True)  # a log rewrite killed before its rename
    for log in (METRICS_FILE, LINEAGE_FILE):  # damage stops every rank here, not rank 0 later
        jsonl_records(Path(out) / log)
    notes = clean_folder(Path(out) / CHECKPOINTS)
    folders = complete_folders(Path(out) / CHECKPOINTS)
    notes += sync_rows(store, Path(out), folders, trainer=trainer, lineage=lineage)
    return notes


def clean_folder(folder: Path) -> list[str]:
    """Remove what a kill left half-made: ``*.tmp`` folders (a checkpoint being written,
    or one renamed aside), a staged ``*.link``, a step or best folder without its
    meta.json (an older ttspo removed a folder in place); repoint a dangling `best`."""
    if not folder.is_dir():
        return []
    notes = []
    for p in sorted(folder.iterdir()):
        half = p.name.endswith((".tmp", ".link")) or (
            FOLDER.match(p.name) and not p.is_symlink() and not (p / META_FILE).is_file())
        if half:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            notes.append(f"removed {p.name} (left by a killed save)")
    best = folder / "best"
    if best.is_symlink() and not (best / META_FILE).is_file():
        notes.append(_repoint_best(folder, best))
    return notes


def _repoint_best(folder: Path, best: Path) -> str:
    candidates = sorted(p for p in folder.iterdir()
                        if (m := FOLDER.match(p.name)) and m.group(1) == "best"
                        and (p / META_FILE).is_file())
    staged = best.with_name("best.link")
    if not candidates:
        best.unlink()
        return "removed the dangling best link"
    os.symlink(candidates[-1].name, staged)
    os.replace(staged, best)
    return f"pointed best at {candidates[-1].name} (it named a folder that is gone)"


def complete_folders(folder: Path) -> dict[str, tuple[Path, dict[str, Any]]]:
    """{policy.pt path as rows spell it: (folder, its meta)} of every complete folder."""
    found = {}
    if not folder.is_dir():
        return found
    for p in sorted(folder.iterdir()):
        # `best` itself is a folder (not a link) in a run folder from before best_NNNNNN
        if (FOLDER.match(p.name) or p.name == "best") and not p.is_symlink() \
                and (p / META_FILE).is_file():
            found[str((p / POLICY_FILE).absolute())] = (p, read_meta_checked(p))
    return found


def read_meta_checked(folder: Path) -> dict[str, Any]:
    """A checkpoint's meta.json, or one line naming it (run folders are untrusted input)."""
    path = folder / META_FILE
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise TrainingError(f"{path}: not a readable checkpoint meta.json "
                            f"({first_line(exc, 80)}); the run folder is damaged") from None
    if not (isinstance(meta, dict) and isinstance(meta.get("sha256"), str)
            and isinstance(meta.get("step"), int) and isinstance(meta.get("kind"), str)
            and isinstance(meta.get("lineage", {}), dict)
            and {"architecture", "policy_config"} <= set(meta)):
        raise TrainingError(f"{path}: lacks its step, kind, sha256 or policy; the run folder "
                            "is damaged")
    return meta


def repair_on_resume(store: Any, out: Path, c: Any, *, trainer: str, lineage: Any) -> list[str]:
    """:func:`repair_run` on rank 0; every rank gets its notes, or raises its one line."""
    notes, error = [], None
    if c.master:
        try:
            notes = repair_run(store, out, trainer=trainer, lineage=lineage)
        except TtspoError as exc:
            error = str(exc)
    notes, error = broadcast_object((notes, error))
    if error is not None:
        raise TrainingError(error)
    return notes


def sync_rows(store: Any, out: Path, folders: dict[str, tuple[Path, dict[str, Any]]], *,
              trainer: str, lineage: Any) -> list[str]:
    """Make the rows naming OUT's checkpoints one per complete folder, with its sha256."""
    prefix = str(out / CHECKPOINTS) + os.sep
    rows: dict[str, list[str]] = {}
    if store.exists(CHECKPOINTS):
        table = store.open(CHECKPOINTS).to_table(columns=[CKPT.path, CKPT.sha256])
        for path, sha in zip(table[CKPT.path].to_pylist(), table[CKPT.sha256].to_pylist()):
            if path is not None and path.startswith(prefix):
                rows.setdefault(path, []).append(sha)
    # A row naming other weights than its folder's meta.json is damage, never a kill (a
    # save removes a replaced folder's rows before the folder): it is left as it is and
    # said, never rebuilt from meta.json, which would take an edited meta.json's word
    # over the store's (verify.py refuses such a folder wherever it is used).
    damaged = sorted(p for p, shas in rows.items()
                     if p in folders and any(sha != folders[p][1]["sha256"] for sha in shas))
    stale = sorted(p for p, shas in rows.items()
                   if p not in damaged and (p not in folders or len(shas) > 1))
    notes = [f"left the row of {Path(p).parent.name} as it is: its sha256 is not its "
             "meta.json's (damage: the folder is refused wherever it is used)" for p in damaged]
    if stale:
        what = "rows naming a missing folder, or a folder twice"
        remove_rows(store, stale, as_lineage(lineage).with_extra(run=out.name, removed=what))
        notes.append(f"removed the rows of {', '.join(Path(p).parent.name for p in stale)} ({what})")
    for path in sorted(p for p in folders if p not in rows or p in stale):
        folder, meta = folders[path]
        row = checkpoint_row(Saved(folder, meta["sha256"], meta), run=out.name, trainer=trainer)
        record_checkpoint(store, row, as_lineage(meta.get("lineage") or lineage).with_extra(
            run=out.name, step=meta["step"], kind=meta["kind"], repaired=REBUILT))
        notes.append(f"rebuilt the row of {folder.name} from its meta.json")
    return notes
