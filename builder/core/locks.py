"""Machine-wide lock files and the temp folders of running commands.

Lock files live in one folder of the temp dir shared by every user (so two
spellings of a store path, or two users, meet on the same lock); a command's
private temp folder holds an owner file locked for the command's life, so a
later command can tell the leftovers of a killed one from a live one's.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from typing import Iterator

from ttspo.builder.core.errors import StoreError

LOCK_FOLDER = "ttspo-locks"


def open_lock_file(key: str) -> int:
    """A descriptor on the lock file KEY in the shared lock folder.

    The folder is shared by every user of the machine (sticky and world-writable,
    like /tmp itself), and a lock file is opened read-only (flock needs no more),
    so a lock folder or file made by another user still works.
    """
    folder = os.path.join(tempfile.gettempdir(), LOCK_FOLDER)
    path = os.path.join(folder, key)
    try:
        os.makedirs(folder, exist_ok=True)
        info = os.stat(folder)
        if info.st_uid == os.getuid() and info.st_mode & 0o7777 != 0o1777:
            os.chmod(folder, 0o1777)
        fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StoreError(f"cannot use the lock file {path} ({exc.strerror}); "
                         "set TMPDIR to a folder you can write") from None
    return fd


# ------------------------------------------------- what killed commands leave
OWNER_FILE = ".owner"  # in a temp folder: locked while its command lives
TEMP_KINDS = ("ingest",)  # ttspo-<kind>-* folders in the temp dir (ingest: spilled batches)
STALE_UNOWNED = 60.0  # seconds: an owner-less folder this old was never finished by anyone


@contextmanager
def temp_dir(kind: str) -> Iterator[str]:
    """A private folder in the temp dir for one command, removed on exit.

    A SIGKILL skips the removal, so the folder holds a lock file locked for the
    command's life: any later command finds the lock free and removes the folder
    (clean_temp_dirs). The descriptor is not inherited by spawned workers.
    """
    clean_temp_dirs()
    path = tempfile.mkdtemp(prefix=f"ttspo-{kind}-")
    fd = os.open(os.path.join(path, OWNER_FILE), os.O_RDONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        os.close(fd)


def clean_temp_dirs() -> int:
    """Remove the temp folders of ttspo commands that died; returns how many."""
    removed = 0
    base = tempfile.gettempdir()
    prefixes = tuple(f"ttspo-{kind}-" for kind in TEMP_KINDS)
    try:
        entries = [e for e in os.scandir(base) if e.name.startswith(prefixes)]
    except OSError:
        return 0
    for entry in entries:
        try:
            if not entry.is_dir(follow_symlinks=False) or entry.stat().st_uid != os.getuid():
                continue
            fd = os.open(os.path.join(entry.path, OWNER_FILE), os.O_RDONLY)
        except FileNotFoundError:  # being made right now, or made before owner files
            try:
                if time.time() - entry.stat().st_mtime > STALE_UNOWNED:
                    shutil.rmtree(entry.path, ignore_errors=True)
                    removed += 1
            except OSError:
                pass
            continue
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # its command is alive
        finally:
            os.close(fd)
        shutil.rmtree(entry.path, ignore_errors=True)
        removed += 1
    return removed
