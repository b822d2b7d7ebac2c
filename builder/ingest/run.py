"""Ingest generations (step 2 output) into the store's ``generations`` table.

Python API behind ``ttspo ingest nemo`` and ``ttspo ingest jsonl``::

    from ttspo.builder.ingest.run import ingest_nemo, ingest_jsonl
    result = ingest_nemo(Store("st"), "exp/audios", "pairs.json", run="base")

How a run lands, and why:

- Everything is read and checked first; checked batches are spilled to
  temporary Arrow files meanwhile (by the reader processes themselves), so
  memory is bounded by a batch, not by the corpus.
- Only when the whole input is good (or ``on_error="skip"``) are the spilled
  batches streamed into ONE Lance commit. An error, a crash or a SIGKILL before that
  leaves the store exactly as it was.
- Generation ids are ``run:line``: rows already in the store are skipped, so
  re-ingesting changes nothing and an interrupted run can simply be rerun.
- Different runs ingested at the same time both land: Lance appends commute.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa

from ttspo.builder.core.errors import InputError
from ttspo.builder.core.files import file_digest
from ttspo.builder.core.schemas import ERR, GEN, GENERATIONS_SCHEMA, INGEST_ERRORS_SCHEMA
from ttspo.builder.core.locks import temp_dir
from ttspo.builder.core.store import Lineage, Store, as_lineage, make_lineage, sql_string

GENERATIONS = "generations"
INGEST_ERRORS = "ingest_errors"
ON_ERROR = ("fail", "skip")
PARALLEL_FROM = 4096  # below this many generations, starting worker processes costs more


@dataclass(kw_only=True)
class IngestResult:
    """What one ingest did. `version` is the generations version now current."""

    run: str
    ingested: int = 0
    groups: int = 0
    present: int = 0  # already in the store (same run and line): left alone
    skipped: int = 0  # bad generations left out with on_error="skip"
    version: int | None = None
    errors_version: int | None = None
    errors_logged: int = 0  # new rows in ingest_errors
    problems: list[tuple[str, str]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # prepare, read, commit

    @property
    def changed(self) -> bool:
        return self.ingested > 0 or self.errors_logged > 0


# ------------------------------------------------------------------- NeMo
def ingest_nemo(store: Store, gen_dir: str | os.PathLike, manifest: str | os.PathLike, *,
                run: str | None = None, group_size: int | None = None, on_error: str = "fail",
                embed_audio: bool = False, lineage: Lineage | None = None,
                workers: int | None = None, batch_rows: int = 1024,
                progress: bool = False) -> IngestResult:
    """Ingest a NeMo generation folder (files found anywhere under GEN_DIR) against
    its text-context manifest. Raises InputError listing every bad file (store
    unchanged) unless on_error="skip". With workers > 1 the files are read in
    'spawn' processes: scripts calling this need the usual `if __name__ == "__main__":`."""
    from ttspo.builder.ingest import nemo

    _check_on_error(on_error)
    gen_label, man_label = str(gen_dir), str(manifest)
    run = check_run(run or os.path.basename(os.path.abspath(gen_dir)))
    started = time.perf_counter()
    digest = file_digest(man_label, man_label)
    man_sha, estimate = digest.sha256, digest.newlines
    with Readers(_workers(workers, estimate)) as readers, SpillDir() as spill, \
            store.lock(f"ingest run {run}"):
        # A reader parses the manifest while this process scans the folder.
        parsing = readers.submit(nemo.read_manifest, man_label, man_label, man_sha)
        try:
            layout = nemo.scan(gen_label, gen_label)
        finally:
            man = parsing.result()  # a bad manifest is reported first, scan or not
        where, ranks = nemo.place(layout, man.lines, man_label, gen_label)
        starts = nemo.group_starts(man, group_size, man_label)
        before = store.version(GENERATIONS)
        present = existing_lines(store, run)
        todo = lines_to_do(man.lines, present)
        tasks = nemo.plan_tasks(layout, where, ranks, man, starts=starts, todo=todo, run=run,
                                batch_rows=batch_rows, embed_audio=embed_audio, spill_dir=spill.dir)
        lineage = as_lineage(lineage or make_lineage("ingest nemo", dict(
            gen_dir=gen_label, manifest=man_label, run=run, group_size=group_size,
            on_error=on_error, embed_audio=embed_audio))).with_extra(
            gen_dir=layout.gen_dir, manifest_path=os.path.abspath(man_label),
            manifest_sha256=man.sha256, manifest_lines=man.lines, ranks=ranks,
            groups_in_manifest=len(starts))
        results = readers.map(nemo.build_batch, tasks)
        return land(store, run, results, spill, todo=len(todo), present=len(present), before=before,
                    on_error=on_error, lineage=lineage, progress=progress, unit="file",
                    started=started)


# ------------------------------------------------------------------ JSONL
def ingest_jsonl(store: Store, path: str | os.PathLike, *, run: str | None = None,
                 on_error: str = "fail", embed_audio: bool = False,
                 lineage: Lineage | None = None, batch_rows: int = 1024,
                 progress: bool = False, codec: Any = None) -> IngestResult:
    """Ingest one generation per JSON line (data from systems other than NeMo).

    CODEC (an object with ``encode(audio, sr)``, e.g. ttspo.trainer.policy.nemo.codec.NemoCodec)
    encodes the audio of lines without a codes_path; the lineage names it."""
    from ttspo.builder.ingest import jsonl as jl

    _check_on_error(on_error)
    label = str(path)
    run = check_run(run or os.path.splitext(os.path.basename(label))[0])
    started = time.perf_counter()
    with SpillDir() as spill, store.lock(f"ingest run {run}"):
        before = store.version(GENERATIONS)
        plan = jl.plan(label, run, set(existing_lines(store, run).tolist()))  # fatal problems (unreadable file) raise here
        codec_info = ({"codec": {"path": str(getattr(codec, "path", "") or ""),
                                 "fingerprint": getattr(codec, "fingerprint", "")}}
                      if codec is not None else {})
        lineage = as_lineage(lineage or make_lineage("ingest jsonl", dict(
            file=label, run=run, on_error=on_error, embed_audio=embed_audio))).with_extra(
            file_path=os.path.abspath(label), file_sha256=plan.sha256, file_lines=plan.records,
            **codec_info)
        results = jl.read_batches(plan, embed_audio, batch_rows, spill.dir,
                                  encode=codec.encode if codec is not None else None)
        return land(store, run, results, spill, todo=plan.todo, present=plan.present, before=before,
                    on_error=on_error, lineage=lineage, progress=progress, unit="line",
                    started=started)


# ----------------------------------------------------------------- common
def check_run(run: str) -> str:
    if not run or not run.strip() or any(ch in run for ch in "\n\r\t"):
        raise InputError(f"'{run}' is not a usable run name (use --run NAME)")
    return run


def _check_on_error(on_error: str) -> None:
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, not {on_error!r}")


def _workers(workers: int | None, todo: int) -> int:
    if workers is not None:
        return max(1, workers)
    if todo < PARALLEL_FROM:
        return 1
    return max(1, min(len(os.sched_getaffinity(0)), 8))


def existing_lines(store: Store, run: str) -> np.ndarray:
    """Lines of RUN already in the store: its generation ids are ``run:line``
    (one projected, filtered scan; numbers, not id strings)."""
    if not store.exists(GENERATIONS):
        return np.zeros(0, dtype=np.int64)
    table = store.open(GENERATIONS).to_table(
        columns=[GEN.manifest_line], filter=f"{GEN.run} = {sql_string(run)}")
    return table.column(0).to_numpy()


def lines_to_do(lines: int, present: np.ndarray) -> np.ndarray:
    """Manifest lines not in the store yet."""
    return np.setdiff1d(np.arange(lines, dtype=np.int64), present, assume_unique=True)


class Readers:
    """Where the files are read: in this process, or in a pool of 'spawn' processes
    (Lance is not fork-safe) started on entry, so they boot while the caller scans."""

    def __init__(self, workers: int):
        self.workers = workers
        self.pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> "Readers":
        if self.workers > 1:
            from ttspo.builder.ingest.nemo import warm_up

            ctx = multiprocessing.get_context("spawn")
            self.pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=ctx)
            for _ in range(self.workers):
                self.pool.submit(warm_up)
        return self

    def submit(self, fn: Callable, *args: Any) -> Future:
        """fn(*args) in a reader process (here, at once, without a pool)."""
        if self.pool is not None:
            return self.pool.submit(fn, *args)
        done: Future = Future()
        try:
            done.set_result(fn(*args))
        except Exception as exc:  # noqa: BLE001 - handed to the caller by .result()
            done.set_exception(exc)
        return done

    def map(self, fn: Callable, tasks: Iterable[Any]) -> Iterator[Any]:
        """fn over tasks, results in order; at most 2 tasks per process in flight."""
        if self.pool is None:
            yield from map(fn, tasks)
            return
        window: deque = deque()
        for task in tasks:
            window.append(self.pool.submit(fn, task))
            if len(window) >= 2 * self.workers:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()

    def __exit__(self, *exc: Any) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


class SpillDir:
    """Checked batches wait here, one Arrow stream file per batch, until the commit.

    A temporary folder (TMPDIR), removed on exit: a failed ingest leaves nothing,
    and the folder of a killed one goes with the next command that writes
    (core.locks.temp_dir).
    """

    def __init__(self):
        self.dir = ""
        self.files: list[str] = []
        self._owner: Any = None

    def __enter__(self) -> "SpillDir":
        self._owner = temp_dir("ingest")
        self.dir = self._owner.__enter__()
        return self

    def reader(self, schema: pa.Schema) -> pa.RecordBatchReader:
        """All spilled batches in order, read one at a time."""
        def batches() -> Iterator[pa.RecordBatch]:
            for path in self.files:
                with pa.OSFile(path, "rb") as source:
                    yield from pa.ipc.open_stream(source)
        return pa.RecordBatchReader.from_batches(schema, batches())

    def __exit__(self, *exc: Any) -> None:
        self._owner.__exit__(*exc)


def land(store: Store, run: str, results: Iterable[tuple], spill: SpillDir, *, todo: int,
         present: int, before: int | None, on_error: str, lineage: Lineage, progress: bool,
         unit: str, started: float) -> IngestResult:
    """Collect every chunk's outcome, then commit the good rows (one commit) and, in
    skip mode, the rejects (one commit to ingest_errors).

    results: (spill file or None, rows, group indexes, [(line, file, reason)]) per chunk.
    """
    from tqdm import tqdm

    result = IngestResult(run=run, present=present, version=before)
    problems: list[tuple[int, str, str]] = []
    groups: set[int] = set()
    rows = 0
    prepared = time.perf_counter()
    with tqdm(total=todo, unit="gen", desc=f"ingest {run}", leave=False,
              disable=None if progress else True) as bar:
        for path, n, chunk_groups, bad in results:
            problems.extend(bad)
            if path is not None:
                spill.files.append(path)
                rows += n
                groups.update(chunk_groups)
            bar.update(n + len({p[0] for p in bad}))
    result.problems = [(f, why) for _, f, why in problems]
    read = time.perf_counter()
    result.seconds = {"prepare": prepared - started, "read": read - prepared}
    if problems and on_error == "fail":
        raise InputError(f"cannot ingest run {run}: {len(problems)} bad {unit}(s); "
                         "nothing was written", result.problems)
    result.skipped = len({p[0] for p in problems})
    lineage = lineage.with_inputs({GENERATIONS: before} if before is not None else {}).with_extra(
        ingested=rows, skipped=result.skipped, already_present=present)
    if rows:
        reader = spill.reader(GENERATIONS_SCHEMA)
        result.version = store.write(GENERATIONS, reader, GENERATIONS_SCHEMA, lineage)
        result.ingested, result.groups = rows, len(groups)
    if result.problems:
        result.errors_version, result.errors_logged = _write_errors(
            store, run, result.problems, lineage)
    result.seconds["commit"] = time.perf_counter() - read
    return result


def _write_errors(store: Store, run: str, problems: list[tuple[str, str]],
                  lineage: Lineage) -> tuple[int | None, int]:
    """Append the rejects not already logged for this run (reruns add no duplicates)."""
    seen: set[tuple[str, str]] = set()
    if store.exists(INGEST_ERRORS):
        old = store.open(INGEST_ERRORS).to_table(
            columns=[ERR.file, ERR.reason], filter=f"{ERR.run} = {sql_string(run)}")
        seen = set(zip(old.column(0).to_pylist(), old.column(1).to_pylist()))
    new = [(f, why) for f, why in dict.fromkeys(problems) if (f, why) not in seen]
    if not new:
        return store.version(INGEST_ERRORS), 0
    table = pa.table({ERR.run: [run] * len(new), ERR.file: [f for f, _ in new],
                      ERR.reason: [why for _, why in new]}, schema=INGEST_ERRORS_SCHEMA)
    return store.write(INGEST_ERRORS, table, INGEST_ERRORS_SCHEMA, lineage), len(new)
