"""Files the store's commands read and write: a file's digest, atomic writes.

A result, manifest or export is written to a temporary file beside its
destination and renamed over it only when whole, so a failed or killed command
never leaves a half-written file where a reader looks (os.replace is atomic on
one file system, hence beside the destination, not in the temp folder).
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator

from ttspo.builder.core.errors import InputError

CHUNK = 1 << 20


@dataclass(frozen=True)
class Digest:
    sha256: str
    newlines: int  # lines, for a file whose last line ends with a newline


def file_digest(path: str | os.PathLike, label: str | None = None) -> Digest:
    """SHA-256 and newline count of PATH in one chunked pass (InputError naming
    LABEL, else PATH, if it cannot be read)."""
    check_regular(path, label)
    sha, lines = hashlib.sha256(), 0
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(CHUNK):
                sha.update(chunk)
                lines += chunk.count(b"\n")
    except OSError as exc:
        raise InputError(f"{label or path}: cannot read ({exc.strerror})") from None
    return Digest(sha.hexdigest(), lines)


def check_regular(path: str | os.PathLike, label: str | None = None) -> None:
    """InputError unless PATH is a regular file: open() blocks forever on a FIFO without
    a writer, and a device (a link to /dev/zero) never ends."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise InputError(f"{label or path}: cannot read ({exc.strerror})") from None
    if not stat.S_ISREG(mode):
        raise InputError(f"{label or path}: not a regular file ({special_kind(mode)})")


def special_kind(mode: int) -> str:
    """What a file that is not a regular file is, in words."""
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISDIR, "a directory")):
        if test(mode):
            return name
    return "not a file"


def file_sha256(path: str | os.PathLike) -> str:
    return file_digest(path).sha256


class StagedFile:
    """A temporary file beside PATH; publish() renames it into place, discard()
    removes it (a no-op once published)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp",
                                   dir=self.path.parent)
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; outputs are ordinary files
        self.tmp = Path(tmp)
        self._fd: int | None = fd

    def open(self, mode: str = "wb", **kw) -> IO:
        fd, self._fd = self._fd, None
        return os.fdopen(fd, mode, **kw) if fd is not None else open(self.tmp, mode, **kw)

    def publish(self) -> Path:
        os.replace(self.tmp, self.path)
        return self.path

    def discard(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.tmp.unlink(missing_ok=True)


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", **kw) -> Iterator[IO]:
    """``with atomic_write(p) as f: f.write(...)``: P appears whole or not at all."""
    staged = StagedFile(path)
    try:
        with staged.open(mode, **({"encoding": "utf-8"} if "b" not in mode else {}) | kw) as fh:
            yield fh
        staged.publish()
    finally:
        staged.discard()


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_write(path) as fh:
        fh.write(text)
    return Path(path)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> str:
    """DATA to PATH (its folder made if missing), whole or not at all; its sha256."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as fh:
        fh.write(data)
    return hashlib.sha256(data).hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
