"""A checkpoint's files are checked against the sha256 recorded for them, before use.

A checkpoint folder (``checkpoints/step_NNNNNN/``, ``best_NNNNNN/``) records

- ``policy.pt``: the ``sha256`` of ``meta.json`` and of the folder's `checkpoints` row
  (the row whose ``path`` names the file; the newest when several do);
- ``state.pt``: the ``state_sha256`` of ``meta.json`` (folders written before that key
  have none: their ``state.pt`` is read unchecked, weights-only all the same).

A page-level disk fault or an edit keeps a zip readable and its tensors loadable, so
only the hash tells. A file that differs from any of its records stops the command with
one line naming the file, the record and the last intact checkpoint of its run folder;
nothing was used (:func:`verified_latest` for a resume, :func:`checked_sha256` for a
file a command is given: ``--init``, ``--ref``, ``generate --checkpoint``). Run folders
may live on a shared filesystem: their files are untrusted, read weights-only
(:func:`refused_reason` words what a weights-only load refused).

(Added with issue 18; the folder layout constants moved here from checkpoints.py,
which re-exports them, so this module needs nothing above it.)
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from ttspo.builder.core.errors import InputError, ModelError, first_line
from ttspo.builder.core.files import file_sha256
from ttspo.builder.core.schemas import CKPT

CHECKPOINTS = "checkpoints"  # the table, and the run folder's sub-folder
POLICY_FILE = "policy.pt"
STATE_FILE = "state.pt"
META_FILE = "meta.json"
STEP_DIR = re.compile(r"^step_(\d{6,})$")
STATE_SHA256 = "state_sha256"  # meta.json's key for state.pt's sha256


def bytes_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def recorded(folder: Path) -> dict[str, Any]:
    """FOLDER's meta.json, which must record its policy file's sha256 (one line if not)."""
    path = Path(folder) / META_FILE
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{path}: not a readable checkpoint record ({first_line(exc, 120)})") from None
    if not isinstance(meta, dict) or not _is_sha(meta.get("sha256")):
        raise InputError(f"{path}: records no sha256 of {POLICY_FILE}; the checkpoint cannot be trusted")
    if STATE_SHA256 in meta and not _is_sha(meta[STATE_SHA256]):
        raise InputError(f"{path}: its {STATE_SHA256} is not a sha256")
    return meta


def _is_sha(value: Any) -> bool:
    return isinstance(value, str) and re.fullmatch(r"[0-9a-f]{64}", value) is not None


def rows_naming(store: Any, policy_file: Path) -> list[dict[str, Any]]:
    """The `checkpoints` rows whose path is POLICY_FILE (as spelled, or resolved: a
    `best` link names best_NNNNNN's file), oldest first."""
    if store is None or not store.exists(CHECKPOINTS):
        return []
    from ttspo.builder.core.store import sql_string

    names = sorted({str(Path(policy_file).absolute()), str(Path(policy_file).resolve())})
    where = " OR ".join(f"{CKPT.path} = {sql_string(n)}" for n in names)
    return store.open(CHECKPOINTS).to_table(
        columns=[CKPT.run, CKPT.step, CKPT.kind, CKPT.sha256], filter=where).to_pylist()


def policy_records(folder: Path | None, meta: dict[str, Any] | None, store: Any,
                   policy_file: Path) -> list[tuple[str, str]]:
    """(where, sha256) of every record of POLICY_FILE: meta.json, the newest row."""
    records = [(str(Path(folder) / META_FILE), meta["sha256"])] if meta else []
    rows = rows_naming(store, policy_file)
    if rows:  # an append-only table: the last row describes the file now there
        r = rows[-1]
        records.append((f"its checkpoints row (run {r[CKPT.run]}, step {r[CKPT.step]}, "
                        f"{r[CKPT.kind]})", r[CKPT.sha256]))
    return records


def check(path: Path, actual: str, records: list[tuple[str, str]], *,
          run_dir: Path | None, store: Any) -> None:
    """Refuse PATH (one line) when its ACTUAL sha256 differs from a recorded one. When
    the file matches its row and only meta.json differs, meta.json is what was damaged."""
    for where, want in records:
        if actual == want:
            continue
        if where.endswith(META_FILE) and len(records) > 1 and records[-1][1] == actual:
            raise InputError(f"{where}: damaged, not used: it records sha256 {want[:16]} for "
                             f"{Path(path).name}, whose file and {records[-1][0]} hold "
                             f"{actual[:16]}{_tail(run_dir, store)}")
        raise InputError(mismatch(path, actual, where, want, run_dir=run_dir, store=store))


def _tail(run_dir: Path | None, store: Any) -> str:
    return f"; last intact checkpoint: {_last(run_dir, store)}" if run_dir is not None else ""


def mismatch(path: Path, actual: str, where: str, want: str, *, run_dir: Path | None,
             store: Any) -> str:
    return (f"{path}: damaged or replaced, not used: sha256 {actual[:16]} is not the "
            f"{want[:16]} recorded in {where}{_tail(run_dir, store)}")


# ------------------------------------------------------------ a whole folder
def verify_folder(folder: Path, store: Any, *, run_dir: Path | None = None) -> dict[str, Any]:
    """FOLDER's meta, after its policy.pt (meta.json and its row) and its state.pt
    (meta.json's state_sha256, when recorded) were checked; one line if not."""
    folder = Path(folder)
    meta = recorded(folder)
    for name in (POLICY_FILE, STATE_FILE):
        if not (folder / name).is_file():
            raise InputError(f"{folder / name}: missing from its checkpoint; "
                             f"last intact checkpoint: {_last(run_dir, store)}")
    policy = folder / POLICY_FILE
    check(policy, file_sha256(policy), policy_records(folder, meta, store, policy),
          run_dir=run_dir, store=store)
    if STATE_SHA256 in meta:
        check(folder / STATE_FILE, file_sha256(folder / STATE_FILE),
              [(str(folder / META_FILE), meta[STATE_SHA256])], run_dir=run_dir, store=store)
    return meta


def _last(run_dir: Path | None, store: Any) -> str:
    return str(last_intact(run_dir, store) or "none") if run_dir is not None else "none"


def step_folders(run_dir: Path) -> list[Path]:
    """RUN_DIR's step checkpoint folders with a meta.json, newest first."""
    folder = Path(run_dir) / CHECKPOINTS
    if not folder.is_dir():
        return []
    steps = [(int(m.group(1)), p) for p in folder.iterdir()
             if (m := STEP_DIR.match(p.name)) and (p / META_FILE).is_file()]
    return [p for _, p in sorted(steps, reverse=True)]


def last_intact(run_dir: Path, store: Any) -> Path | None:
    """The newest step checkpoint of RUN_DIR whose files all match their records."""
    for folder in step_folders(run_dir):
        try:
            verify_folder(folder, store, run_dir=None)
        except (InputError, OSError):
            continue
        return folder
    return None


def verified_latest(run_dir: Path, store: Any) -> Path | None:
    """The newest step checkpoint of RUN_DIR, every file checked (a resume's); None
    without one. Refuses (one line) rather than fall back to an older one silently."""
    folders = step_folders(run_dir)
    if not folders:
        return None
    verify_folder(folders[0], store, run_dir=Path(run_dir))
    return folders[0]


# ------------------------------------------------------- a file a command is given
def checked_sha256(path: str | Path, store: Any) -> str:
    """sha256 of the policy file PATH (``--init``, ``--ref``, ``generate --checkpoint``),
    checked against every record naming it: its checkpoint folder's meta.json (when PATH
    is one's policy.pt) and its `checkpoints` rows. A file nothing records is taken as
    given (the command records its sha256)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such checkpoint file")
    folder = path.parent
    in_folder = path.name == POLICY_FILE and (folder / META_FILE).is_file()
    run_dir = folder.parent.parent if in_folder and folder.parent.name == CHECKPOINTS else None
    meta = recorded(folder) if in_folder else None
    actual = file_sha256(path)
    check(path, actual, policy_records(folder, meta, store, path), run_dir=run_dir, store=store)
    return actual


def check_sha256(path: str | Path, want: str) -> None:
    """Refuse PATH when it no longer holds the file a plan hashed (WANT)."""
    actual = file_sha256(path)
    if actual != want:
        raise InputError(f"{path}: changed since it was checked (sha256 {actual[:16]}, "
                         f"was {want[:16]}); not used")


# ------------------------------------------------------- weights-only refusals
def refused_reason(exc: BaseException) -> str:
    """What a weights-only torch.load refused, in a few words (its message is a
    paragraph that suggests loading the file unsafely: never shown)."""
    text = str(exc)
    found = re.search(r"GLOBAL (\S+)", text) or re.search(r"unrecognized function (\S+)", text)
    if found:
        return f"it holds {found.group(1)}, which ttspo never unpickles"
    _, marker, detail = text.partition("WeightsUnpickler error:")
    lines = [line.strip() for line in detail.splitlines() if line.strip()]
    return lines[0][:160] if marker and lines else first_line(exc, 160)
