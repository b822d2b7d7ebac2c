"""The files of a Lance table: which each version names (what ``ttspo gc`` frees).

A table's folder holds manifests (``_versions``), transaction files, data files
(``data/``) and deletion files; a version names its manifest, its transaction and
the data and deletion files of its fragments. Lance's cleanup removes the files only
removed versions name (builder/core/lifecycle.py).
"""

from __future__ import annotations

import lance

from ttspo.builder.core.store import Store


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
