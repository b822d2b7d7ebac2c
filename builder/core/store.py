"""The store: a folder of versioned Lance tables, each commit carrying its lineage.

A store is a directory holding ``<table>.lance`` datasets. Every write goes
through :meth:`Store.write` (or passes :func:`commit_properties` to a Lance call),
so every version records which command made it, with which arguments, from
which versions of which tables, under which ttspo version.

Tables are created with stable row ids: without them Lance version deltas
(``ttspo diff``) silently return nothing after compaction or updates.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import time
from contextlib import contextmanager
from datetime import timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

import lance
import pyarrow as pa

from ttspo.builder.core.errors import StoreError, first_line
from ttspo.builder.core.locks import clean_temp_dirs, open_lock_file
# The lineage every commit carries (builder/core/lineage.py); writers import it from here too.
from ttspo.builder.core.lineage import (LINEAGE_KEY, Lineage, as_lineage,  # noqa: F401
                                        commit_properties, lineage_of, make_lineage)
from ttspo.builder.core.schemas import CORE_TABLES, LOG, STORE_LOG

# Lance file format for new tables. 2.0 rather than the newer default 2.2: it
# encodes the nested int16 `codes` lists 3-5x faster (measured by bench/ingest.py)
# at the cost of larger files.
STORAGE_VERSION = "2.0"
TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")
TAG_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")  # what a TABLE@TAG reference can spell
TAG_DOTS = re.compile(r"^\.|\.$|\.\.")  # Lance refuses these tags (they are file names)
MAX_NAME = 128  # table, set and tag names become file names: keep well under NAME_MAX
REF = re.compile(r"^(?P<table>[A-Za-z_][A-Za-z0-9_\-]*)(?:@(?P<version>[A-Za-z0-9_.\-]+))?$")


COMMIT_RETRIES = 8  # Lance commit conflicts retried before a one-line error


def is_commit_conflict(exc: BaseException) -> bool:
    """Lance's 'Retryable commit conflict' (another writer committed first)."""
    return "commit conflict" in str(exc).lower()


def write_error(root: Path, table: str, exc: BaseException) -> StoreError:
    """One line for a write that failed: a concurrent commit, or the file system's reason."""
    if is_commit_conflict(exc):
        return StoreError(f"table '{table}' in store {root} was changed by another command "
                          "while this one wrote it; nothing was written, run it again")
    return StoreError(f"cannot write table '{table}' in store {root}: {os_error_reason(exc)}")


def os_error_reason(exc: BaseException) -> str:
    """An OSError (Python's or Lance's) as one line: reason and path, no Rust source location."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    first = re.sub(r"^LanceError\(\w+\): (Generic \w+ error: )?", "", first_line(exc))
    return re.sub(r",? /\S+\.rs:\d+:\d+.*$", "", first)


def parse_ref(ref: str) -> tuple[str, int | str | None]:
    """``"generations@12"`` -> ("generations", 12); ``"set@v1"`` -> ("set", "v1")."""
    m = REF.match(ref)
    if not m:
        raise StoreError(f"'{ref}' is not TABLE, TABLE@VERSION or TABLE@TAG")
    version = m.group("version")
    if version is not None and version.isdigit():
        return m.group("table"), int(version)
    return m.group("table"), version


def sql_string(value: str) -> str:
    """VALUE as a SQL string literal (Lance filters and DuckDB alike)."""
    return "'" + value.replace("'", "''") + "'"


def default_store_path() -> Path:
    """The store a command uses without --store: $TTSPO_STORE, else ./ttspo-store."""
    return Path(os.environ.get("TTSPO_STORE") or "ttspo-store")


class Store:
    """A folder of Lance tables. Cheap to construct; opens tables on demand."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).absolute()

    # ------------------------------------------------------------- naming
    def path(self, table: str) -> Path:
        if not TABLE_NAME.match(table) or len(table) > MAX_NAME:
            raise StoreError(f"'{table}' is not a valid table name")
        return self.root / f"{table}.lance"

    def exists(self, table: str) -> bool:
        return (self.path(table) / "_versions").is_dir()

    def tables(self) -> list[str]:
        if not self.root.is_dir():
            return []
        names = [p.name[: -len(".lance")] for p in self.root.glob("*.lance")]
        return sorted(n for n in names if self.exists(n))

    @staticmethod
    def check_set_name(name: str) -> None:
        """Preference sets share the store's namespace with the core tables."""
        if name in CORE_TABLES:
            raise StoreError(f"'{name}' is a core table name; choose another set name")
        if not TABLE_NAME.match(name):
            raise StoreError(f"'{name}' is not a valid set name (letters, digits, _ and -)")
        if len(name) > MAX_NAME:
            raise StoreError(f"'{name[:20]}...' is not a valid set name (longer than {MAX_NAME} "
                             "characters)")

    # -------------------------------------------------------------- reading
    def open(self, table: str, version: int | str | None = None) -> lance.LanceDataset:
        """Open TABLE at its latest version, a version number, or a tag."""
        if not self.exists(table):
            raise StoreError(f"no table '{table}' in store {self.root}")
        ds = lance.dataset(str(self.path(table)))
        if version is None:
            return ds
        try:
            return ds.checkout_version(version)
        except (ValueError, OSError) as exc:
            note = self.removed_by_gc(table, version) if isinstance(version, int) else None
            if note:
                raise StoreError(note) from None
            known = sorted(ds.tags.list())
            hint = f" (tags: {', '.join(known)})" if known else ""
            raise StoreError(f"table '{table}' has no version or tag '{version}'{hint}") from exc

    def open_ref(self, ref: str) -> lance.LanceDataset:
        table, version = parse_ref(ref)
        return self.open(table, version)

    def removed_by_gc(self, table: str, version: int) -> str | None:
        """"version 12 of generations was removed by gc on ..." when store_log (what
        `ttspo gc` removed: builder/core/lifecycle.py) says so, else None."""
        if table == STORE_LOG or not self.exists(STORE_LOG):
            return None
        try:
            rows = self.open(STORE_LOG).to_table(
                columns=[LOG.time, LOG.versions, LOG.forced],
                filter=f"{LOG.table} = {sql_string(table)}").to_pylist()
        except (OSError, ValueError):
            return None  # the log itself unreadable: the caller's own message stands
        for row in rows:
            if version in row[LOG.versions]:
                how = " --force" if version in row[LOG.forced] else ""
                return f"version {version} of {table} was removed by gc{how} on {row[LOG.time]}"
        return None

    def version(self, table: str) -> int | None:
        """Latest version of TABLE, or None if it does not exist."""
        return self.open(table).version if self.exists(table) else None

    def lineage(self, table: str, version: int) -> dict[str, Any]:
        return lineage_of(self.open(table), version)
    def versions(self, table: str) -> list[dict[str, Any]]:
        """One dict per version: version, time (UTC ISO), command, rows, lineage."""
        ds = self.open(table)
        out = []
        for v in ds.versions():
            lineage = lineage_of(ds, v["version"])  # the dataset opened once
            stamp = v["timestamp"]
            if stamp.tzinfo is None:
                stamp = stamp.replace(tzinfo=timezone.utc)
            out.append({
                "version": v["version"],
                "time": stamp.isoformat(timespec="seconds"),
                "command": lineage.get("command", ""),
                "rows": int(v["metadata"].get("total_rows", 0)),
                "lineage": lineage,
            })
        return out

    def tags(self, table: str) -> dict[str, int]:
        return {name: info["version"] for name, info in self.open(table).tags.list().items()}

    # -------------------------------------------------------------- writing
    def write(self, table: str, data: pa.Table | pa.RecordBatchReader | Iterable[pa.RecordBatch],
              schema: pa.Schema, lineage: Lineage, *, mode: str = "append") -> int:
        """Write data to TABLE in ONE Lance commit and return the new version.

        mode: "append" (creates the table if missing) or "overwrite". Data may be a
        stream of batches: Lance writes fragments as they come and commits once at
        the end, so memory is bounded by a batch and a crash leaves no new version.
        """
        if mode not in ("append", "overwrite"):
            raise ValueError(f"bad mode {mode}")
        self.root.mkdir(parents=True, exist_ok=True)
        if isinstance(data, pa.Table):
            data = data.cast(schema) if data.schema != schema else data
        elif not isinstance(data, pa.RecordBatchReader):
            data = pa.RecordBatchReader.from_batches(schema, data)
        clean_temp_dirs()
        if self.exists(table):
            if mode == "append":  # an older table gains the columns added since (nulls)
                self._add_trailing_columns(table, schema, lineage)
            return self._write(table, data, schema, lineage, mode=mode)
        # Two first writers would both "create": one fails, or one's rows are lost.
        # Serialise creation; whoever comes second finds the table and appends
        # (or overwrites): the mode is decided here, under the lock, never before it.
        with self.lock(f"create {table}"):
            return self._write(table, data, schema, lineage,
                               mode=mode if self.exists(table) else "create")

    def _write(self, table: str, data: Any, schema: pa.Schema, lineage: Lineage,
               *, mode: str) -> int:
        # A create killed before its first commit leaves data files and no version:
        # Lance creates over them (the orphans are never referenced by a manifest).
        for attempt in range(COMMIT_RETRIES):
            try:
                with self.writing(table):
                    ds = lance.write_dataset(
                        data,
                        str(self.path(table)),
                        schema=schema,
                        mode=mode,
                        enable_stable_row_ids=True,
                        data_storage_version=STORAGE_VERSION,
                        transaction_properties=commit_properties(lineage),
                    )
                return ds.version
            except OSError as exc:
                # A table can be written again after a conflict; a stream cannot be replayed.
                if (is_commit_conflict(exc) and isinstance(data, pa.Table)
                        and attempt + 1 < COMMIT_RETRIES):
                    time.sleep(0.05 * (attempt + 1))
                    continue
                raise write_error(self.root, table, exc) from None
        raise AssertionError("unreachable")

    @contextmanager
    def writing(self, table: str) -> Iterator[None]:
        """Held (shared) while this process writes TABLE's files. First, when no other
        command writes TABLE, remove the unfinished files (``.tmp*``: Lance writes a
        file there, then renames it) that a killed writer left."""
        self._clean_interrupted(table)
        fd = open_lock_file(self._lock_key(f"writing {table}"))
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    def _clean_interrupted(self, table: str) -> int:
        folder = self.path(table)
        if not folder.is_dir():
            return 0
        fd = open_lock_file(self._lock_key(f"writing {table}"))
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return 0  # another command is writing: its .tmp files are alive
            orphans = [p for p in folder.rglob(".tmp*") if p.is_file()]
            for path in orphans:
                path.unlink(missing_ok=True)
            return len(orphans)
        finally:
            os.close(fd)

    def _lock_key(self, what: str) -> str:
        # Keyed on the resolved path: a symlink or a '..' spelling is the same store.
        return hashlib.sha256(f"{os.path.realpath(self.root)}\0{what}".encode()).hexdigest()[:24]

    @contextmanager
    def lock(self, what: str) -> Iterator[None]:
        """An exclusive lock among this host's processes on (this store, what).

        The lock files live in the temp folder, not in the store, so a failed
        command leaves the store untouched. Lance itself resolves concurrent
        appends; this is for what it cannot: creating a table, or two ingests of
        the same run that would both find their rows missing.
        """
        fd = open_lock_file(self._lock_key(what))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def tag(self, table: str, version: int, name: str) -> None:
        ds = self.open(table)
        if version not in {v["version"] for v in ds.versions()}:
            raise StoreError(f"table '{table}' has no version {version}")
        if not TAG_NAME.match(name):
            raise StoreError(f"tag '{name}' may only use letters, digits, '_', '.' and '-'")
        if TAG_DOTS.search(name):
            raise StoreError(f"tag '{name}' must not begin or end with '.' or hold '..'")
        if len(name) > MAX_NAME:
            raise StoreError(f"tag '{name[:20]}...' is longer than {MAX_NAME} characters")
        if name.isdigit():
            raise StoreError(f"tag '{name}' must not be a number (it would read as a version)")
        if name in ds.tags.list():
            raise StoreError(f"table '{table}' already has a tag '{name}'")
        try:
            ds.tags.create(name, version)
        except OSError as exc:
            raise write_error(self.root, table, exc) from None

    def restore(self, table: str, version: int | str, lineage: Lineage) -> int:
        """Make VERSION the latest again, as a new version (history is kept).

        A Lance Restore operation: no data is copied, and the commit carries lineage.
        """
        target = self.open(table, version).version
        latest = self.open(table)
        tx = lance.Transaction(
            read_version=latest.version,
            operation=lance.LanceOperation.Restore(target),
            transaction_properties=commit_properties(lineage),
        )
        try:
            with self.writing(table):
                return lance.LanceDataset.commit(latest.uri, tx).version
        except OSError as exc:
            raise write_error(self.root, table, exc) from None

    def add_null_columns(self, table: str, schema: pa.Schema, lineage: Lineage) -> int:
        """Give TABLE the columns of SCHEMA it lacks (appended, null in its rows), ONE
        commit with lineage; SCHEMA must be TABLE's schema plus those columns at the end
        (a table made before a schema gained columns). Returns the new version."""
        latest = self.open(table)
        have = latest.schema
        if list(schema)[:len(have)] != list(have):
            raise StoreError(f"table '{table}' in store {self.root} has columns "
                             f"{have.names}, not a prefix of {schema.names}")
        from lance.schema import LanceSchema

        # Field ids follow the schema's order (as when the table was made from the
        # old prefix), so the old columns keep theirs and the new ones read as null.
        tx = lance.Transaction(read_version=latest.version,
                               operation=lance.LanceOperation.Project(LanceSchema.from_pyarrow(schema)),
                               transaction_properties=commit_properties(lineage))
        try:
            with self.writing(table):
                return lance.LanceDataset.commit(latest.uri, tx).version
        except OSError as exc:
            raise write_error(self.root, table, exc) from None

    def _add_trailing_columns(self, table: str, schema: pa.Schema, lineage: Lineage) -> None:
        have = list(self.open(table).schema)
        if len(have) < len(schema) and list(schema)[:len(have)] == have:
            self.add_null_columns(table, schema, lineage)

    def add_missing_columns(self, table: str, schema: pa.Schema, lineage: Lineage) -> int | None:
        """add_null_columns when TABLE is an older table lacking SCHEMA's trailing
        columns (e.g. a metric registered since); None when it has them all or is missing."""
        if not self.exists(table):
            return None
        have = self.open(table).schema.names
        if all(name in have for name in schema.names):
            return None
        return self.add_null_columns(table, schema, lineage.with_extra(
            added_columns=[n for n in schema.names if n not in have]))

    def delete_rows(self, table: str, predicate: str, lineage: Lineage) -> int | None:
        """Delete the rows of TABLE matching PREDICATE (a Lance SQL filter) in ONE commit
        carrying LINEAGE (``LanceDataset.delete`` takes none); the new version, or None
        when no row matched (nothing committed). History keeps the rows."""
        for attempt in range(COMMIT_RETRIES):
            latest = self.open(table)
            if latest.count_rows(filter=predicate) == 0:
                return None
            updated, removed = [], []
            for fragment in latest.get_fragments():
                new = fragment.delete(predicate)  # writes a deletion file; None: all rows
                if new is None:
                    removed.append(fragment.fragment_id)
                elif new != fragment.metadata:
                    updated.append(new)
            try:
                return self.commit(table, lance.LanceOperation.Delete(updated, removed, predicate),
                                   latest.version, lineage)
            except OSError as exc:
                if is_commit_conflict(exc) and attempt + 1 < COMMIT_RETRIES:
                    time.sleep(0.05 * (attempt + 1))
                    continue
                raise write_error(self.root, table, exc) from None
        raise AssertionError("unreachable")

    def commit(self, table: str, operation: Any, read_version: int,
               lineage: Lineage) -> int:
        """Commit a prepared Lance operation (e.g. fragments written by several
        ranks) as ONE version carrying lineage. Used by distributed writers."""
        tx = lance.Transaction(read_version=read_version, operation=operation,
                               transaction_properties=commit_properties(lineage))
        with self.writing(table):
            return lance.LanceDataset.commit(str(self.path(table)), tx).version
