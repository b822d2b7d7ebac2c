"""Store lifecycle: `ttspo gc` (remove old table versions) and `ttspo compact`
(merge small fragments).

gc never removes a table's latest version, a tagged version, or a version the
store names (a row's *_version column, a lineage record: ``pins.py``) unless
forced; pins are found over every table, whichever table is cleaned. What it
removes is logged as rows of ``store_log`` in ONE new version (its commit carries
the lineage), so the cleaned tables get no new version. Files go through Lance's
``cleanup_old_versions(versions=[...])``: files only the removed versions name
(their manifests, transaction files, data and deletion files). Files NO version names
(a writer killed before its commit: pair_dynamics' fragments past its buffer) go once
a week old (Lance's rule: younger, a live writer may be about to commit them), removed
by gc itself under the lock, also from a table none of whose versions go
(table_files.py: unnamed_files; counted as ``orphans``, logged with the versions).

Both take every named table's writing lock exclusively before changing anything
(writers wait for them, and they wait up to WAIT seconds for running writers,
then refuse having changed nothing). Readers of a latest version are unaffected;
a reader of a version gc removes fails, with the one line of ``Store.removed_by_gc``.

Cleaning ``generations`` (or every table) also removes the ``STORE/codes`` files
(the NeMo export's codes: codes_store.py) whose generation no kept version of
``generations`` holds, under the codes lock (exports hold it shared); the dry run
lists them and their bytes. Not cleaning generations, gc leaves STORE/codes alone.

``.derived`` entries are left alone: they are keyed by a version's data files, so
an entry of a removed version is never read again, and each kind keeps only its
8 most recently used files (session_cache.py), so they age out on their own.
"""

from __future__ import annotations

import fcntl
import os
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Iterator

import lance
import pyarrow as pa

from ttspo.builder.core import codes_store
from ttspo.builder.core import pins as P
from ttspo.builder.core.errors import InputError, StoreError
from ttspo.builder.core.locks import open_lock_file
from ttspo.builder.core.schemas import LOG, STORE_LOG, STORE_LOG_SCHEMA
from ttspo.builder.core.store import Lineage, Store, commit_properties, write_error
from ttspo.builder.core.table_files import freed_bytes, unnamed_files

LOG_TABLE = STORE_LOG
GENERATIONS = "generations"  # the table whose versions hold the STORE/codes files' generations
# With neither --keep-last nor --older-than: a version goes when 10 newer ones exist
# AND it is a week old. A week covers a working session's re-thresholds (their
# diffs, a restore); 10 covers a fast sweep. Either option alone is the whole rule.
DEFAULT_KEEP_LAST = 10
DEFAULT_OLDER_THAN = "7d"
AGE = re.compile(r"^(?P<n>\d+)(?P<unit>[smhdw])$")
UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
COMPACT_ROWS = 1 << 20  # rows per fragment after compaction (Lance's default target)


# ---------------------------------------------------------------- options
@dataclass(frozen=True)
class GcPolicy:
    keep_last: int | None  # versions kept counting back from the latest
    older_than: str | None  # AGE text: only versions older than this go

    def describe(self) -> str:
        keep = f"the last {self.keep_last} versions" if self.keep_last else ""
        young = f"versions younger than {self.older_than}" if self.older_than else ""
        return "keep " + " and ".join(p for p in (keep, young) if p)


def parse_age(text: str) -> timedelta:
    """``7d``, ``12h``, ``30m``, ``45s``, ``2w`` -> a timedelta."""
    m = AGE.match(str(text).strip())
    if not m:
        raise InputError(f"--older-than {text}: not an age (a whole number and s, m, h, d "
                         "or w: 7d, 12h, 30m)")
    return timedelta(**{UNITS[m.group("unit")]: int(m.group("n"))})


def parse_keep_last(value: int | str) -> int:
    text = str(value).strip()
    if not text.lstrip("-").isdigit():
        raise InputError(f"--keep-last {value}: not a whole number")
    if int(text) < 1:
        raise InputError(f"--keep-last {value}: must be 1 or more (the latest version "
                         "is always kept)")
    return int(text)


def policy_of(keep_last: int | str | None, older_than: str | None) -> GcPolicy:
    if keep_last is None and older_than is None:
        return GcPolicy(DEFAULT_KEEP_LAST, DEFAULT_OLDER_THAN)
    if older_than is not None:
        parse_age(older_than)
    return GcPolicy(None if keep_last is None else parse_keep_last(keep_last),
                    None if older_than is None else str(older_than).strip())


# ---------------------------------------------------------------- results
@dataclass(kw_only=True)
class TableGc:
    table: str
    removed: list[int]  # removed (a dry run: would be)
    bytes: int  # freed (a dry run: would be)
    pinned: dict[int, list[str]] = field(default_factory=dict)  # kept: what names them
    tagged: list[int] = field(default_factory=list)  # kept: tagged (the policy would remove)
    forced: dict[int, list[str]] = field(default_factory=dict)  # pinned, removed by force
    latest: int = 0
    orphans: int = 0  # week-old data files no version names, removed (a dry run: would be)


@dataclass(kw_only=True)
class GcResult:
    policy: GcPolicy
    dry_run: bool
    force: bool
    tables: list[TableGc]
    log_version: int | None = None  # store_log's version holding this run (None: no run)
    codes: codes_store.CodesGc | None = None  # STORE/codes files removed (None: not looked at)

    @property
    def removed(self) -> int:
        return sum(len(t.removed) for t in self.tables)

    @property
    def bytes(self) -> int:
        return sum(t.bytes for t in self.tables)

    @property
    def orphans(self) -> int:
        return sum(t.orphans for t in self.tables)


@dataclass(kw_only=True)
class TableCompaction:
    table: str
    fragments_before: int
    fragments_after: int
    rows: int
    version: int  # the compaction's new version, or the latest when nothing was done

    @property
    def compacted(self) -> bool:
        return self.fragments_after != self.fragments_before


# ------------------------------------------------------------------ locks
@contextmanager
def exclusive(store: Store, tables: list[str], *, wait: float, command: str) -> Iterator[None]:
    """Every TABLE's writing lock, exclusively: writers wait until this ends. Waits up
    to WAIT seconds for running writers; all or none (nothing is changed before)."""
    deadline, fds = time.monotonic() + wait, []
    try:
        for table in sorted(tables):  # one order for every caller
            fds.append(_take(store, table, deadline, wait=wait, command=command))
        yield
    finally:
        for fd in fds:
            os.close(fd)


def _take(store: Store, table: str, deadline: float, *, wait: float, command: str) -> int:
    fd = open_lock_file(store._lock_key(f"writing {table}"))
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise StoreError(f"table '{table}' is being written by another command "
                                 f"(waited {wait:g} s); {command} changed nothing, run it "
                                 "again when that command ends") from None
            time.sleep(0.1)


# --------------------------------------------------------------------- gc
def gc(store: Store, table: str | None = None, *, policy: GcPolicy, dry_run: bool = False,
       force: bool = False, wait: float = 60.0, lineage: Lineage) -> GcResult:
    names = [table] if table is not None else store.tables()
    for name in names:
        store.open(name)  # a table that does not exist: one line
    codes = GENERATIONS in names
    if dry_run:  # reads only: no lock, writers go on
        plans = plan_gc(store, names, policy, force)
        return GcResult(policy=policy, dry_run=dry_run, force=force, tables=plans,
                        codes=unused_codes(store, plans) if codes else None)
    # Planned under the locks: no writer can add a version, a pinning row or a tag
    # between the plan and the removal.
    done: list[TableGc] = []
    removed_codes = None
    try:
        with exclusive(store, names, wait=wait, command="gc"):
            # under the locks: no estimate (Lance reports what it removed), writers wait less
            for plan in plan_gc(store, names, policy, force, estimate=False):
                plan.bytes = _remove(store, plan)
                done.append(plan)
            if codes:  # no export names a file meanwhile (they hold this lock shared)
                with codes_store.codes_lock(store, exclusive=True, wait=wait):
                    removed_codes = unused_codes(store, done)
                    removed_codes.bytes = codes_store.remove(store, removed_codes.files)
    finally:
        # Logged even when a later table failed: what went must be on record.
        result = GcResult(policy=policy, dry_run=dry_run, force=force, tables=done, codes=removed_codes)
        if result.removed or result.orphans or (removed_codes is not None and removed_codes.files):
            result.log_version = _log(store, result, lineage)
    return result


def unused_codes(store: Store, plans: list[TableGc]) -> codes_store.CodesGc:
    """The STORE/codes files whose generation no version of generations that stays
    (not among PLANS' removed) holds."""
    gone = {v for p in plans if p.table == GENERATIONS for v in p.removed}
    ds = store.open(GENERATIONS)
    kept = [v["version"] for v in ds.versions() if v["version"] not in gone]
    return codes_store.unused_files(store, codes_store.held_generations(ds, kept))


def plan_gc(store: Store, names: list[str], policy: GcPolicy, force: bool, *,
            estimate: bool = True) -> list[TableGc]:
    """What gc would remove from each of NAMES, and what it keeps for tags and pins.
    ESTIMATE: the bytes it would free (a dry run's figure; a real run reports Lance's)."""
    now = datetime.now()  # Lance's version times are naive local times
    every = store.tables()
    infos = {t: _versions(store, t) for t in every}
    remove, tagged = {}, {}
    for name in names:
        stamps, tags = infos[name]
        allowed = _candidates(stamps, policy, now)
        tagged[name] = sorted(v for v in allowed if v in tags)
        remove[name] = {v for v in allowed if v not in tags}
    wanted = {t: set(vs) for t, vs in remove.items()}
    pins = _pins(store, every, infos, remove, force=force)  # drops what stays from remove
    plans = []
    for name in names:
        held = {v: pins[(name, v)] for v in sorted(wanted[name]) if (name, v) in pins}
        plan = TableGc(table=name, removed=sorted(wanted[name]), bytes=0, tagged=tagged[name],
                       latest=max(infos[name][0]))
        if force:
            plan.forced = held
        else:
            plan.pinned = held
            plan.removed = [v for v in plan.removed if v not in held]
        if estimate:  # a real run counts what Lance removes
            unnamed = unnamed_files(store, name)
            plan.orphans = len(unnamed)
            plan.bytes = freed_bytes(store, name, plan.removed) + sum(unnamed.values())
        plans.append(plan)
    return plans


def _versions(store: Store, table: str) -> tuple[dict[int, datetime], set[int]]:
    ds = store.open(table)
    stamps = {v["version"]: v["timestamp"] for v in ds.versions()}
    return stamps, set(store.tags(table).values())


def _candidates(stamps: dict[int, datetime], policy: GcPolicy, now: datetime) -> set[int]:
    """Versions the policy lets go: never the latest; outside the last N; older than AGE."""
    ordered = sorted(stamps)
    out = set(ordered[:-1])
    if policy.keep_last:
        out -= set(ordered[-policy.keep_last:])
    if policy.older_than:
        cutoff = now - parse_age(policy.older_than)
        out = {v for v in out if stamps[v].replace(tzinfo=None) < cutoff}
    return out


def _pins(store: Store, every: list[str], infos: dict, remove: dict[str, set[int]], *,
          force: bool) -> P.Pins:
    """What names each version, from rows and from the lineage of every version that
    stays. Not forced, a pinned version stays, and its own lineage then pins too:
    repeated until nothing changes."""
    rows, cache = P.row_pins(store, every), P.LineageCache(store)
    while True:
        pins = {k: list(v) for k, v in rows.items()}
        for table in every:
            if table == LOG_TABLE:  # names what gc saw, not what anything uses
                continue
            for version in infos[table][0]:
                if version not in remove.get(table, ()):
                    for pin in cache.pins_of(table, version):
                        # A version's own table in its lineage is what it was made on
                        # (an append's previous version, a restore's source): its rows
                        # are in this version or were replaced on purpose. Counting
                        # it would chain every version of generations to the first.
                        if pin[0] != table:
                            P.add(pins, pin, f"the lineage of {table}@{version}")
        held = {(t, v) for t, vs in remove.items() for v in vs if (t, v) in pins}
        if force or not held:
            return pins
        for t, v in held:
            remove[t].discard(v)


def _remove(store: Store, plan: TableGc) -> int:
    """The week-old files no version names (unnamed_files, the dry run's own rule), then
    the versions (Lance's cleanup). Why not Lance's cleanup for the first: it lists only
    files older than the oldest version it keeps, and a killed writer's files are always
    newer than the table's first version, so keeping every version it removed none."""
    try:
        unnamed = unnamed_files(store, plan.table)
        for relative in unnamed:  # under the table's writer lock (gc holds it)
            (store.path(plan.table) / relative).unlink(missing_ok=True)
        plan.orphans = len(unnamed)
        freed = sum(unnamed.values())
        if plan.removed:  # forced versions are among them
            freed += int(store.open(plan.table).cleanup_old_versions(
                versions=plan.removed).bytes_removed)
    except OSError as exc:
        raise write_error(store.root, plan.table, exc) from None
    return freed


def _log(store: Store, result: GcResult, lineage: Lineage) -> int:
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    rows = [{LOG.time: stamp, LOG.command: "gc", LOG.table: t.table, LOG.versions: t.removed,
             LOG.forced: sorted(t.forced), LOG.bytes: t.bytes, LOG.latest: t.latest}
            for t in result.tables if t.removed or t.orphans]
    codes = result.codes
    if codes is not None and codes.files:  # the folder, not a table: no versions
        rows.append({LOG.time: stamp, LOG.command: "gc", LOG.table: codes_store.CODES_DIR, LOG.versions: [],
                     LOG.forced: [], LOG.bytes: codes.bytes, LOG.latest: store.version(GENERATIONS)})
    record = lineage.with_inputs({t.table: t.latest for t in result.tables if t.removed})
    record = record.with_extra(removed={t.table: t.removed for t in result.tables if t.removed},
                               bytes_freed=result.bytes, orphan_files_removed=result.orphans,
                               codes_files_removed=0 if codes is None else len(codes.files),
                               codes_bytes_freed=0 if codes is None else codes.bytes)
    return store.write(LOG_TABLE, pa.Table.from_pylist(rows, schema=STORE_LOG_SCHEMA),
                       STORE_LOG_SCHEMA, record)


# ---------------------------------------------------------------- compact
def compact(store: Store, table: str | None = None, *, wait: float = 60.0,
            lineage: Lineage) -> list[TableCompaction]:
    """Merge each table's small fragments (and drop deleted rows' data) into one new
    version carrying LINEAGE. Row ids are stable ids (tables are made with
    stable row ids), so every row keeps its id; older versions still read their
    old files until gc removes them."""
    names = [table] if table is not None else store.tables()
    for name in names:
        store.open(name)
    with exclusive(store, names, wait=wait, command="compact"):
        return [_compact_one(store, name, lineage) for name in names]


def _compact_one(store: Store, table: str, lineage: Lineage) -> TableCompaction:
    from lance.optimize import Compaction

    ds = store.open(table)
    before, rows = len(ds.get_fragments()), ds.count_rows()
    plan = Compaction.plan(ds, {"target_rows_per_fragment": COMPACT_ROWS})
    if plan.num_tasks() == 0:
        return TableCompaction(table=table, fragments_before=before, fragments_after=before,
                               rows=rows, version=ds.version)
    try:
        results = [task.execute(ds) for task in plan.tasks]
        groups = [lance.LanceOperation.RewriteGroup(r.original_fragments, r.new_fragments)
                  for r in results]
        after = before - sum(len(g.old_fragments) - len(g.new_fragments) for g in groups)
        record = lineage.with_inputs({table: plan.read_version}).with_extra(
            fragments_before=before, fragments_after=after)
        tx = lance.Transaction(read_version=plan.read_version,
                               operation=lance.LanceOperation.Rewrite(groups, []),
                               transaction_properties=commit_properties(record))
        new = lance.LanceDataset.commit(str(store.path(table)), tx)
    except OSError as exc:
        raise write_error(store.root, table, exc) from None
    return TableCompaction(table=table, fragments_before=before,
                           fragments_after=len(new.get_fragments()), rows=new.count_rows(),
                           version=new.version)
