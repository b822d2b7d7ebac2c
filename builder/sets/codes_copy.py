"""The ``--copy-codes`` export: the STORE/codes files an export names, copied into
``OUT/codes`` (codes.py keeps them in the store).

``--copy-codes`` makes OUT a folder to copy to another machine: each file is
copied to ``OUT/codes/<safe_name(generation id)>.pt`` (the bytes and names
exports wrote before STORE/codes existed), its SHA-256 checked against its name
on the way. A copy into an OUT that already holds a file keeps it when
``OUT/.ttspo-codes.json`` says so: for each file it copied, the content key and
the file's size, mtime, ctime and inode right after writing (each write makes a
new file: a new name directly, an existing one under a temporary name renamed
into place; so those details name exactly the bytes this export wrote). A later
copy leaves a file as it is only if its content key is the same AND the file
still has that size, mtime, ctime and inode (the quick check of rsync and make:
any write, rename or ``touch`` changes the ctime); otherwise it copies it again.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from pathlib import Path
from typing import Any

from ttspo.builder.core import codes_store
from ttspo.builder.core.codes_store import safe_name
from ttspo.builder.core.files import write_text_atomic
from ttspo.builder.sets.codes import CHUNK, StoredCodes
from ttspo.builder.sets.session_cache import cached

INDEX_NAME = ".ttspo-codes.json"
INDEX_FORMAT = 2  # 2: content keys are the STORE/codes files' "<sha256>:<size>"


def copy_codes(stored: StoredCodes, out_dir: Path) -> tuple[list[str], int, int]:
    """Copy (or keep, see the module doc) STORED's files into OUT_DIR/codes as
    <safe_name(id)>.pt, each checked against its name, CHUNK at a time. Returns
    (the copies' names in the order of stored.ids, files copied now, files kept as
    they were)."""
    codes_dir = out_dir / "codes"
    codes_dir.mkdir(parents=True, exist_ok=True)  # an unwritable OUT fails first
    index = _read_index(out_dir)
    base = str(codes_dir.absolute())
    every = stored.ids.to_pylist()
    names, copied = [f"{safe_name(g)}.pt" for g in every], 0
    for start in range(0, len(names), CHUNK):
        ids = every[start:start + CHUNK]
        chunk_names = dict(zip(ids, names[start:start + CHUNK]))
        keys = dict(zip(ids, stored.part(stored.keys, start, len(ids)).to_pylist()))
        rels = dict(zip(ids, stored.part(stored.rels, start, len(ids)).to_pylist()))
        for gid in _stale(ids, chunk_names, keys, index, codes_dir=codes_dir):
            data = codes_store.read_verified(stored.root / rels[gid])
            index[chunk_names[gid]] = [keys[gid], *_write_file(memoryview(data), f"{base}/{chunk_names[gid]}")]
            copied += 1
    if copied:
        _write_index(out_dir, index)
    return names, copied, len(names) - copied


def _stat(path: str) -> list[int]:
    return _details(os.stat(path))


def _details(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _write_file(view: memoryview, path: str) -> list[int]:
    """VIEW's bytes as the file PATH, always a new inode; returns its details.

    Why never write an existing PATH in place: a stat taken after it may see another
    export's write into the same OUT (the index would then vouch for bytes it did
    not write). A new inode per write, stat'ed through its own descriptor, names
    exactly these bytes. A name that exists gets a new file renamed over it
    (readers see the old bytes or the new, never half); a new name is created
    directly (no rename: a third of the cost of a file on a busy disk; nothing
    refers to it yet, as the manifests are written after every codes file).
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return _replace_file(view, path)
    try:
        _write_all(fd, view)
        return _details(os.fstat(fd))
    except BaseException:
        with contextlib.suppress(OSError):
            if os.stat(path).st_ino == os.fstat(fd).st_ino:  # still ours: leave no half file
                os.unlink(path)
        raise
    finally:
        os.close(fd)


def _replace_file(view: memoryview, path: str) -> list[int]:
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        _write_all(fd, view)
        os.replace(tmp, path)
        return _details(os.fstat(fd))  # after the rename, which sets the ctime
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    finally:
        os.close(fd)


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        view = view[os.write(fd, view):]


def _stale(gids: list[str], names: dict[str, str], keys: dict[str, str], index: dict[str, Any],
           *, codes_dir: Path) -> list[str]:
    """The GIDS whose file must be written: no index entry of ours, another content
    key, or a file whose size, mtime, ctime or inode are not those the entry names
    (deleted, replaced, edited or touched). One stat per file, by name in the folder."""
    stale = []
    folder = os.open(codes_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for gid in gids:
            name = names[gid]
            entry = index.get(name)
            if not (type(entry) is list and len(entry) == 5 and entry[0] == keys[gid]):
                stale.append(gid)  # unknown, not an entry we write, or other codes
                continue
            try:
                st = os.stat(name, dir_fd=folder)
            except OSError:  # deleted: write it again
                stale.append(gid)
                continue
            if (entry[1] != st.st_size or entry[2] != st.st_mtime_ns or entry[3] != st.st_ctime_ns
                    or entry[4] != st.st_ino):
                stale.append(gid)
    finally:
        os.close(folder)
    return stale


def _read_index(out_dir: Path) -> dict[str, list]:
    """A copy of the index of an earlier export into this OUT (empty if none or
    unreadable); parsed once per version of the file in a session."""
    path = out_dir / INDEX_NAME
    try:
        stamp = (str(path.absolute()), *_stat(path))
    except OSError:
        return {}
    return dict(cached("export.index", stamp, lambda: _parse_index(path)))


def _parse_index(path: Path) -> dict[str, list]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != INDEX_FORMAT or not isinstance(data.get("files"), dict):
        return {}
    return data["files"]


def _write_index(out_dir: Path, index: dict[str, list]) -> None:
    path = write_text_atomic(out_dir / INDEX_NAME, json.dumps({"format": INDEX_FORMAT, "files": index}))
    cached("export.index", (str(Path(path).absolute()), *_stat(path)), lambda: dict(index))
