"""The files of a Lance table: which each version names (what ``ttspo gc`` frees).

A table's folder holds manifests (``_versions``), transaction files, data files
(``data/``) and deletion files; a version names its manifest, its transaction and
the data and deletion files of its fragments. Lance's cleanup removes the files only
removed versions name (builder/core/lifecycle.py), and the files NO version names once
they are UNVERIFIED_AGE old: a writer killed before its commit leaves such files
(pair_dynamics' fragments past its buffer: trainer/dpo/dynamics.py); younger, they may
be a live writer's, not yet committed.
"""

from __future__ import annotations

import time
from datetime import timedelta

import lance

from ttspo.builder.core.store import Store

UNVERIFIED_AGE = timedelta(days=7)  # Lance's cleanup: a file no version names, this old, goes
UNNAMED_DIRS = ("data", "_deletions")  # where a writer's uncommitted files lie


def freed_bytes(store: Store, table: str, versions: list[int]) -> int:
    """Bytes of the files only VERSIONS name (what Lance's cleanup removes)."""
    if not versions:
        return 0
    root = store.path(table)
    ds = store.open(table)
    found = manifests(root)
    gone = set(versions)
    drop, keep = set(), set()
    for v in (x["version"] for x in ds.versions()):
        (drop if v in gone else keep).update(version_files(ds, v, found))
    return sum((root / f).stat().st_size for f in drop - keep if (root / f).is_file())


def manifests(root) -> dict[int, str]:
    """version -> its manifest file (Lance's v2 names count down from 2**64 - 1)."""
    out = {}
    for path in (root / "_versions").glob("*.manifest"):
        n = int(path.stem)
        out[(2 ** 64 - 1 - n) if n >= 2 ** 63 else n] = f"_versions/{path.name}"
    return out


def version_files(ds: lance.LanceDataset, version: int, found: dict[int, str]) -> set[str]:
    """The files VERSION of DS names (FOUND: manifests(root))."""
    files = {found[version]} if version in found else set()
    tx = ds.read_transaction(version)
    if tx is not None:
        files.add(f"_transactions/{tx.read_version}-{tx.uuid}.txn")
    for fragment in ds.checkout_version(version).get_fragments():
        meta = fragment.metadata
        files.update(f"data/{f.path}" for f in meta.files)
        if meta.deletion_file is not None:
            files.add(meta.deletion_file.path(meta.id))
    return files


def unnamed_files(store: Store, table: str, *, now: float | None = None) -> dict[str, int]:
    """The data and deletion files of TABLE no version names, last modified more than
    UNVERIFIED_AGE before NOW (epoch seconds): what Lance's cleanup removes though no
    version goes. Relative path -> bytes."""
    root = store.path(table)
    cutoff = (time.time() if now is None else now) - UNVERIFIED_AGE.total_seconds()
    old = {}
    for folder in UNNAMED_DIRS:
        for path in (root / folder).glob("*") if (root / folder).is_dir() else ():
            stat = path.stat()
            if path.is_file() and stat.st_mtime < cutoff:
                old[f"{folder}/{path.name}"] = stat.st_size
    if not old:
        return {}
    ds, found = store.open(table), manifests(root)
    named = set().union(*(version_files(ds, v["version"], found) for v in ds.versions()))
    return {rel: size for rel, size in old.items() if rel not in named}
