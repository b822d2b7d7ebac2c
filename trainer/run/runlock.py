"""One writer per run folder.

Two locks, taken by rank 0 before anything in the folder is read or written, held
for the run's life:

- on this machine, a flock on a lock file keyed by the folder's resolved path in the
  store's shared lock folder (builder/core/locks.py): the kernel drops it when the
  process dies, however it dies;
- across machines sharing the folder, ``OUT/writer.lock``: JSON naming the host, pid,
  the process's start (boot id and start time, so a reused pid is not taken for the
  holder) and since when. It is made whole aside and linked into place (``link``
  fails when the name exists, on NFS too), so it is never half-written. A lock file
  naming this host whose process is gone is taken over; one naming another host is
  taken over only with ``force`` (``--force-lock``), since no process there can be
  checked from here. A writer holding the flock on this machine is never taken over,
  not even with force.

The second writer gets one line naming the holder, every rank of it (rank 0 tells
the others), and writes nothing.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
import socket
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from ttspo.builder.core.dist import broadcast_object
from ttspo.builder.core.errors import TrainingError, TtspoError
from ttspo.builder.core.locks import open_lock_file

LOCK_FILE = "writer.lock"
STAGED = ".writer.lock."  # prefix of a lock file being made (host.pid.token)
FORCE_HINT = "if that process is gone, run again with --force-lock"


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _started(pid: int) -> str | None:
    """PID's start time (clock ticks since boot, /proc/PID/stat field 22), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(record: dict[str, Any]) -> bool:
    """Whether the process RECORD names (on this host) still runs."""
    pid = record.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    boot = _boot_id()
    if boot is not None and record.get("boot_id") not in (None, boot):
        return False  # the machine restarted since
    if Path("/proc/self/stat").exists():
        started = _started(pid)
        return started is not None and record.get("started") in (None, started)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def holder_text(record: dict[str, Any] | None) -> str:
    if not record:
        return "another process on this host (its lock file is not written yet)"
    return (f"pid {record.get('pid')} on host {record.get('host')} since "
            f"{record.get('since')}")


class RunLock:
    """Rank 0's hold on run folder OUT (see the module)."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self.path = self.out / LOCK_FILE
        self.fd: int | None = None
        self.made_folder = False
        self.record = {"host": socket.gethostname(), "pid": os.getpid(),
                       "started": _started(os.getpid()), "boot_id": _boot_id(),
                       "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                       "token": secrets.token_hex(8)}

    def acquire(self, *, force: bool = False) -> None:
        key = hashlib.sha256(f"{os.path.realpath(self.out)}\0run folder".encode()).hexdigest()[:24]
        fd = open_lock_file(key)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            self._refuse(self._read(wait=True), hint=False)
        self.fd = fd
        try:
            self._claim(force)
        except BaseException:
            self.release()
            raise

    def _claim(self, force: bool) -> None:
        if not self.out.exists():
            self.out.mkdir(parents=True)
            self.made_folder = True
        self._clean_staged()
        if self._link():
            return
        held = self._read(wait=False)
        here = held is not None and held.get("host") == self.record["host"]
        if held is not None and not force and (not here or _alive(held)):
            self._refuse(held, hint=True)  # the file, not a live flock, refuses: force may
        if held is None and not force:
            raise TrainingError(f"{self.path}: not a lock file ttspo wrote; if no run writes "
                                f"{self.out}, remove it or run again with --force-lock")
        self._link(replace=True)  # its holder is gone (or force): take it over

    def _link(self, *, replace: bool = False) -> bool:
        staged = self.out / f"{STAGED}{self.record['host']}.{os.getpid()}.{self.record['token']}"
        staged.write_text(json.dumps(self.record, sort_keys=True) + "\n")
        try:
            if replace:
                os.replace(staged, self.path)
            else:
                os.link(staged, self.path)
            return True
        except FileExistsError:
            return False
        finally:
            staged.unlink(missing_ok=True)

    def _clean_staged(self) -> None:
        """Lock files this host's killed writers left half-made (under the flock)."""
        mine = f"{STAGED}{self.record['host']}."
        for p in self.out.glob(f"{STAGED}*"):
            if p.name.startswith(mine):
                p.unlink(missing_ok=True)

    def _read(self, *, wait: bool) -> dict[str, Any] | None:
        import time

        for _ in range(40 if wait else 1):  # the holder writes it just after its flock
            try:
                record = json.loads(self.path.read_text())
                if isinstance(record, dict):
                    return record
            except (OSError, ValueError):
                pass
            if wait:
                time.sleep(0.05)
        return None

    def _refuse(self, held: dict[str, Any] | None, *, hint: bool) -> None:
        raise TrainingError(f"{self.out} is being written by {holder_text(held)} "
                            f"({self.path}); one writer per run folder"
                            + (f": {FORCE_HINT}" if hint else ""))

    def check(self) -> None:
        """Stop when the lock file no longer names this process (taken over by force)."""
        held = self._read(wait=False)
        if held is None or held.get("token") != self.record["token"]:
            raise TrainingError(f"{self.out}: the run folder was taken over by "
                                f"{holder_text(held)}; this process stopped writing")

    def release(self) -> None:
        if self.fd is None:
            return
        held = self._read(wait=False)
        if held is not None and held.get("token") == self.record["token"]:
            self.path.unlink(missing_ok=True)
        if self.made_folder:  # a run refused before it wrote anything leaves no folder
            try:
                self.out.rmdir()
            except OSError:
                pass
        os.close(self.fd)
        self.fd = None


@contextmanager
def run_lock(out: Path, c: Any, *, force: bool = False) -> Iterator[RunLock | None]:
    """Hold OUT for this run: rank 0 takes the lock and tells every rank whether it
    did; every rank raises the same one line when it did not (no rank waits on a
    collective the others never reach). Yields rank 0's lock (None on other ranks)."""
    lock = RunLock(out) if c.master else None
    error = None
    if lock is not None:
        try:
            lock.acquire(force=force)
        except TtspoError as exc:
            error = str(exc)
        except OSError as exc:  # an unwritable --out, a full disk: one line, not a traceback
            error = f"{out}: cannot take the run folder's lock ({exc.strerror or exc})"
    error = broadcast_object(error)
    if error is not None:
        raise TrainingError(error)
    try:
        yield lock
    finally:
        if lock is not None:
            lock.release()


def is_lock_file(name: str) -> bool:
    """A file of the lock's own (ignored when asking whether a folder is empty)."""
    return name == LOCK_FILE or name.startswith(STAGED)
