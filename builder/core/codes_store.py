"""``STORE/codes/``: the codes files NeMo exports name, kept once in the store.

A NeMo export's manifests name each generation's codes as a file NeMo's dataset
``torch.load``s (an int32 or int64 ``[codebooks, frames]`` tensor: export.py).
Those files live here, written once per generation (and codes dtype) by the first
export that needs them; every later export names the same files and writes only
its manifests (``--copy-codes`` copies them into OUT instead: a folder to move to
another machine).

A file's name is its content's address: ``codes/<h[:2]>/<h>-<safe_name(id)>.pt``
with ``h`` the SHA-256 of the file's bytes and ``safe_name(id)`` its generation's
id made a file name. So:

- a file never changes once written: new content is a new name (a manifest never
  points at codes other than those it was exported with);
- whoever reads a file can check it (the name is the hash): ``--copy-codes`` does,
  for every file it copies; a plain export checks each named file's size by one
  ``stat`` (cheap; a whole-file check of every file would cost more than the
  export: bench/RESULTS.md), and writes a missing one again;
- ``ttspo gc`` removes a file only when no kept version of ``generations`` holds its
  generation (the id is in the name): :func:`unused_files`.

Writes are atomic and safe under concurrent exports: the bytes go to a temporary
name in the same folder, then ``link`` to the final name (the first writer wins;
an existing name is never replaced: its content is the same by construction).
Exports hold the codes lock shared, gc exclusive (:func:`codes_lock`), so gc never
removes a file an export is about to name.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from ttspo.builder.core.errors import InputError, StoreError
from ttspo.builder.core.locks import open_lock_file
from ttspo.builder.core.schemas import GEN

CODES_DIR = "codes"
TMP_AGE = 3600.0  # seconds: a temporary file this old was left by a killed writer
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
_NAME = re.compile(r"^(?P<sha>[0-9a-f]{64})-(?P<safe>[A-Za-z0-9_.-]+)\.pt$")


def safe_name(generation_id: str) -> str:
    """A file name for an id: readable, and unique even if two ids clean alike."""
    clean = _UNSAFE.sub("_", generation_id)
    return f"{clean}-{hashlib.sha256(generation_id.encode()).hexdigest()[:8]}"


def codes_root(store) -> Path:
    return Path(store.root).absolute() / CODES_DIR


def relative_name(sha: str, generation_id: str) -> str:
    """Where the file whose bytes hash to SHA, of GENERATION_ID, lives under codes/."""
    return f"{sha[:2]}/{sha}-{safe_name(generation_id)}.pt"


@contextmanager
def codes_lock(store, *, exclusive: bool, wait: float | None = None) -> Iterator[None]:
    """The store's codes lock: exports hold it shared, gc exclusive (waiting up to
    WAIT seconds, then refusing having removed nothing)."""
    fd = open_lock_file(store._lock_key("codes files"))
    try:
        if not exclusive:
            fcntl.flock(fd, fcntl.LOCK_SH)
        else:
            deadline = time.monotonic() + (wait or 0.0)
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise StoreError(f"{codes_root(store)} is being used by an export (waited "
                                         f"{wait or 0:g} s); gc removed no codes file, run it again "
                                         "when the export ends") from None
                    time.sleep(0.1)
        yield
    finally:
        os.close(fd)


# ------------------------------------------------------------------ writing
def put(root: Path, rel: str, data: bytes | memoryview) -> bool:
    """DATA as ROOT/REL unless a file is there already (of DATA's size: else it is
    damaged, one line). True if this call wrote it."""
    path = root / rel
    if check(path, len(data)):
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.close(fd)
        fd = -1
        try:
            os.link(tmp, path)  # never replaces: another writer's file (same bytes) stays
        except FileExistsError:
            return False
    finally:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    return True


def check(path: Path, size: int) -> bool:
    """True if PATH is there with SIZE bytes, False if missing; another size is a
    damaged file (one line naming it)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    if st.st_size != size:
        raise InputError(_wrong_size(path, st.st_size, size))
    return True


def _wrong_size(path, found: int, size: int) -> str:
    return (f"{path}: damaged codes file ({found} bytes, its content had {size}); remove it and "
            "export again (the export writes it anew)")


def missing(root: Path, files: Iterable[tuple[str, int]]) -> list[int]:
    """The positions in FILES ((path under ROOT, size) pairs; None: not to check) of
    the files that are not there; one of another size is a damaged file (one line
    naming it). One stat per file, by name in its folder (a path walk per file costs
    several times more)."""
    folders: dict[str, int] = {}
    out = []
    try:
        for i, item in enumerate(files):
            if item is None:
                continue
            rel, size = item
            shard, name = rel.split("/", 1)
            fd = folders.get(shard)
            if fd is None:
                try:
                    fd = folders[shard] = os.open(root / shard, os.O_RDONLY | os.O_DIRECTORY)
                except FileNotFoundError:
                    out.append(i)
                    continue
            try:
                found = os.stat(name, dir_fd=fd).st_size
            except FileNotFoundError:
                out.append(i)
                continue
            if found != size:
                raise InputError(_wrong_size(root / rel, found, size))
    finally:
        for fd in folders.values():
            os.close(fd)
    return out


def read_verified(path: Path) -> bytes:
    """PATH's bytes, once their SHA-256 is the one its name says (else one line)."""
    m = _NAME.match(path.name)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read the codes file ({exc.strerror})") from None
    if m is None or hashlib.sha256(data).hexdigest() != m.group("sha"):
        raise InputError(f"{path}: damaged codes file (its SHA-256 is not the one its name "
                         "says); remove it and export again (the export writes it anew)")
    return data


# ----------------------------------------------------------------------- gc
@dataclass(kw_only=True)
class CodesGc:
    """STORE/codes files no kept generations version holds: removed (a dry run:
    would be), with their bytes; KEPT: the files that stay."""

    files: list[str] = field(default_factory=list)  # relative to STORE/codes
    bytes: int = 0
    kept: int = 0


def held_generations(ds: Any, versions: list[int]) -> set[str]:
    """The generation ids VERSIONS of DS hold (each fragment read once, whichever
    versions share it)."""
    seen, ids = set(), set()
    for version in versions:
        for fragment in ds.checkout_version(version).get_fragments():
            meta = fragment.metadata
            deletion = meta.deletion_file
            key = (fragment.fragment_id, tuple(f.path for f in meta.files),
                   None if deletion is None else deletion.path(meta.id))
            if key not in seen:
                seen.add(key)
                ids.update(fragment.to_table(columns=[GEN.generation_id]).column(0).to_pylist())
    return ids


def unused_files(store, held_ids: Iterable[str]) -> CodesGc:
    """The files under STORE/codes whose generation is not among HELD_IDS (and
    temporary files older than TMP_AGE: a killed writer's)."""
    root = codes_root(store)
    result = CodesGc()
    if not root.is_dir():
        return result
    held = {safe_name(g) for g in held_ids}
    old = time.time() - TMP_AGE
    for shard in sorted(p for p in root.iterdir() if p.is_dir()):
        for entry in sorted(os.scandir(shard), key=lambda e: e.name):
            m = _NAME.match(entry.name)
            st = entry.stat(follow_symlinks=False)
            if m is not None and m.group("safe") in held:
                result.kept += 1
            elif m is not None or (entry.name.endswith(".tmp") and st.st_mtime < old):
                result.files.append(f"{shard.name}/{entry.name}")
                result.bytes += st.st_size
    return result


def remove(store, files: list[str]) -> int:
    """Remove FILES (relative to STORE/codes); the bytes freed."""
    root, freed = codes_root(store), 0
    for rel in files:
        path = root / rel
        with contextlib.suppress(FileNotFoundError):
            freed += path.stat().st_size
            path.unlink()
    return freed
