"""Score the generations table: CER/WER, SSIM, PESQ, SQUIM, with provenance.

    from ttspo.builder.scoring.run import score, ScoreOptions
    summary = score(Store("st"), ScoreOptions(metrics=("cer", "wer", "ssim")), workers=2)

Only rows lacking the asked metrics are scored (all selected rows with
``rescore``). The metric columns, their ``*_source`` columns and the transcripts
are written back in ONE new version of ``generations``; audio and codes are not
rewritten (see builder.scoring.write).

Distributed: ``torchrun --nproc-per-node N -m ttspo.builder.cli -- --store ST score ...``
runs :func:`run_rank` in N processes (:func:`run_as_rank`); ``score(..., workers=N)``
(and ``ttspo score --workers N``) spawns N local processes running the same command.
Rank 0 plans at one pinned version, ranks score interleaved rows, each fragment
is written by one rank, and rank 0 commits once.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ttspo.builder.core import errors
from ttspo.builder.core.errors import InputError, ModelError, StoreError, TtspoError
from ttspo.builder.scoring.options import ScoreOptions, to_argv
from ttspo.builder.core.store import Lineage, Store, as_lineage, make_lineage

MAX_PROBLEMS_SHOWN = 20


@dataclass(kw_only=True)
class ScoreSummary:
    """What a scoring run did."""

    version: int | None  # the new version of generations, None if nothing to score
    read_version: int
    rows: int  # rows scored
    groups: list[str]
    sources: dict[str, str]  # group -> backend/model that produced it
    world_size: int = 1
    seconds: dict[str, float] = field(default_factory=dict)  # per stage, summed over ranks
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0
    failed: int = 0  # rows with a metric left NULL (the reason in its *_status column)
    problems: list = field(default_factory=list)  # (generation id, reason), the first few

    def rtf(self, stage: str) -> float | None:
        """Real-time factor of a stage: its compute seconds per second of audio."""
        if not self.audio_seconds or stage not in self.seconds:
            return None
        return self.seconds[stage] / self.audio_seconds


# ---------------------------------------------------------------- the rank
def run_rank(comm, store_root: str | os.PathLike, options: ScoreOptions,
             lineage: Lineage) -> ScoreSummary:
    """One rank's whole run. Every rank returns the same summary or raises the same error."""
    from ttspo.builder.core.dist import share_cores
    from ttspo.builder.scoring.plan import make_plan

    started = time.perf_counter()
    store = Store(store_root)
    plan = _agreed(comm, lambda: make_plan(store, options, as_lineage(lineage)))
    if plan.rows.num_rows == 0:
        return ScoreSummary(version=None, read_version=plan.version, rows=0, groups=plan.groups,
                            sources={}, world_size=comm.world)
    threads = share_cores(comm.world, large_models=_large_models(options))
    try:
        dataset = store.open("generations", plan.version)
        results = _score_and_share(comm, plan, options, dataset)
        version = _write_and_commit(comm, store, plan, options, results=results, lineage=lineage)
    finally:
        import torch

        torch.set_num_threads(threads)
    return _summary(plan, options, results, version, world=comm.world,
                    wall=time.perf_counter() - started)


def _large_models(options: ScoreOptions) -> bool:
    from ttspo.builder.scoring.backends import split_spec

    return any(split_spec(spec)[0] in ("nemo", "whisper") for spec in (options.asr, options.sv))


def _agreed(comm, make):
    """Rank 0 computes a value (or a domain error); every rank gets the same outcome."""
    outcome = None
    if comm.rank == 0:
        try:
            outcome = ("ok", make())
        except TtspoError as exc:
            outcome = ("error", type(exc).__name__, str(exc))
    return _unwrap(comm.broadcast(outcome))


def _unwrap(outcome):
    if outcome[0] == "ok":
        return outcome[1]
    raise _rebuild(outcome[1], outcome[2])


def _rebuild(kind: str, message: str) -> TtspoError:
    """The domain error another process raised, by class name (it travels as text)."""
    cls = getattr(errors, kind, TtspoError)
    return cls(message) if isinstance(cls, type) and issubclass(cls, TtspoError) \
        else TtspoError(message)


def _score_and_share(comm, plan, options, dataset):
    from ttspo.builder.scoring.scorer import score_shard

    mine = score_shard(plan.shard(comm.rank, comm.world), options, plan.groups,
                       plan.write_columns, dataset=dataset)
    results = comm.all_gather(mine)
    failed = [r.error for r in results if r.error]
    if failed:
        raise ModelError(failed[0])
    problems = [p for r in results for p in r.problems]
    if problems and sum(r.unscored for r in results) >= sum(r.rows for r in results):
        # not one row scored: nothing is written, the command fails (exit 1)
        shown = problems[:MAX_PROBLEMS_SHOWN]
        more = f" (first {len(shown)} shown)" if len(problems) > len(shown) else ""
        raise InputError(f"none of {len(problems)} generation(s) could be scored, nothing "
                         f"written{more}:", shown)
    return results


def _write_and_commit(comm, store, plan, options, *, results, lineage) -> int:
    import pyarrow as pa

    from ttspo.builder.scoring.scorer import sources
    from ttspo.builder.scoring.write import commit_updates, owned_fragments, write_fragment_updates

    table = pa.concat_tables([r.table for r in results])
    fragments = sorted(set(table["_fragment"].to_pylist()))
    dataset = store.open("generations", plan.version)
    with store.writing("generations"):  # a later write must not take these files for orphans
        mine = write_fragment_updates(dataset, table, plan.write_columns,
                                      owned_fragments(fragments, comm.rank, comm.world))
    gathered = comm.gather(mine)

    def commit():
        updates = [u for part in gathered for u in part]
        record = as_lineage(lineage).with_inputs(plan.inputs).with_extra(scoring={
            "sources": sources(options, plan.groups), "rows": table.num_rows,
            "world_size": comm.world})
        return commit_updates(store, updates, plan.version, record)

    return _agreed(comm, commit)


def _summary(plan, options, results, version, *, world, wall) -> ScoreSummary:
    from ttspo.builder.scoring.scorer import sources

    stages = dict.fromkeys(k for r in results for k in r.seconds)
    seconds = {k: sum(r.seconds.get(k, 0.0) for r in results) for k in stages}
    problems = [p for r in results for p in r.problems]
    return ScoreSummary(version=version, read_version=plan.version,
                        rows=sum(r.rows for r in results), groups=plan.groups,
                        sources=sources(options, plan.groups), world_size=world, seconds=seconds,
                        audio_seconds=sum(r.audio_seconds for r in results), wall_seconds=wall,
                        failed=sum(r.failed for r in results),
                        problems=[list(p) for p in problems[:MAX_PROBLEMS_SHOWN]])


# ------------------------------------------------------------ public API
def score(store: Store, options: ScoreOptions | None = None, workers: int = 1,
          lineage: Lineage | None = None) -> ScoreSummary:
    """Score STORE's generations in this process (workers=1) or in N spawned ones."""
    options = options or ScoreOptions()
    options.check()
    check_backends(options)
    lineage = as_lineage(lineage or make_lineage("score", _options_args(options, workers)))
    if not store.exists("generations"):
        raise StoreError(f"no table 'generations' in store {store.root}")
    if workers <= 1:
        from ttspo.builder.core.dist import LocalComm

        return run_rank(LocalComm(), store.root, options, lineage)
    return spawn_workers(workers, store.root, options, lineage)


def check_backends(options: ScoreOptions) -> None:
    """Fail before any process starts when a backend spec or model file is wrong."""
    from ttspo.builder.scoring.asr import check_asr
    from ttspo.builder.scoring.backends import require_file
    from ttspo.builder.scoring.scorer import squim_spec
    from ttspo.builder.scoring.speaker import check_speaker

    groups = options.groups()
    if "asr" in groups:
        check_asr(options.asr)
    if "ssim" in groups:
        check_speaker(options.sv)
    if "squim" in groups:  # (other registered backends fail, by name, when they load)
        squim_spec(options)  # --squim given at all
        # named as the user typed it (the backend spec would read "squim:PATH")
        require_file("--squim", options.squim, options.squim, "SQUIM objective weights file")


def _options_args(options: ScoreOptions, workers: int) -> dict[str, Any]:
    return {**options.args(), "workers": workers}


def worst(store: Store, metric: str = "cer", limit: int = 5) -> list[dict[str, Any]]:
    """The LIMIT worst scored generations by METRIC (highest where lower is better,
    lowest otherwise: the registry's direction), with the transcript and the metric's
    source; nulls are left out."""
    from ttspo.builder.core import metrics as registry
    from ttspo.builder.core.query import run
    from ttspo.builder.core.schemas import GEN, METRIC_SOURCE

    if metric not in registry.names():
        raise InputError(f"unknown metric '{metric}' (choose {', '.join(registry.names())})")
    order = "DESC" if registry.metric(metric).lower_is_better else "ASC"
    source = METRIC_SOURCE[metric]
    sql = (f"SELECT {GEN.generation_id}, {GEN.text}, {GEN.pred_transcript}, {metric}, "
           f"{source} FROM generations WHERE {metric} IS NOT NULL "
           f"ORDER BY {metric} {order}, {GEN.generation_id} LIMIT {int(limit)}")
    return run(store, sql)[0].to_pylist()


# ------------------------------------------------------- local workers
def spawn_workers(n: int, store_root, options: ScoreOptions, lineage: Lineage) -> ScoreSummary:
    """Run N ranks as fresh ``python -m ttspo.builder.cli --store ST score ...`` processes
    (what torchrun would start, with a file rendezvous instead of a TCP one). Fresh
    interpreters, not fork: Lance and the models' thread pools are not fork-safe, and
    unlike multiprocessing's spawn this does not re-import the caller's main module.
    A dead rank stops the others; nothing is committed then."""
    tmp = Path(tempfile.mkdtemp(prefix="ttspo-score-"))
    (tmp / "lineage.json").write_text(lineage.to_json())
    argv = ["--store", str(store_root), "score", *to_argv(options), "--lineage-file",
            str(tmp / "lineage.json"), "--outcome-file", str(tmp / "outcome.json")]
    procs, logs = [], []
    try:
        for rank in range(n):
            env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(n),
                       TTSPO_RENDEZVOUS_FILE=str(tmp / "rendezvous"))
            logs.append(open(tmp / f"rank{rank}.log", "wb"))
            procs.append(subprocess.Popen([sys.executable, "-m", "ttspo.builder.cli", *argv],
                                          env=env, stdout=logs[-1], stderr=subprocess.STDOUT))
        _wait_all(procs, tmp)
        outcome = json.loads((tmp / "outcome.json").read_text())
        if outcome[0] == "ok":
            outcome = ("ok", ScoreSummary(**outcome[1]))
        return _unwrap(outcome)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for log in logs:
            log.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _wait_all(procs, tmp: Path) -> None:
    while True:
        codes = [p.poll() for p in procs]
        dead = [(r, c) for r, c in enumerate(codes) if c not in (None, 0)]
        if dead:
            rank, code = dead[0]
            raise StoreError(f"scoring worker rank {rank} died (exit code {code}"
                             f"{_last_line(tmp / f'rank{rank}.log')}); "
                             "generations is unchanged, run ttspo score again")
        if all(c == 0 for c in codes):
            return
        time.sleep(0.05)


def _last_line(log: Path) -> str:
    try:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return f": {lines[-1].strip()[:200]}" if lines else ""


# ------------------------------------------------------------ torchrun
def run_as_rank(store_root: str | os.PathLike, options: ScoreOptions,
                lineage_file: str | None = None, outcome_file: str | None = None) -> int:
    """`ttspo score` in one rank of torchrun's or ``--workers``' processes: rank 0
    reports (or writes OUTCOME_FILE for the parent of ``--workers``), all exit alike."""
    from ttspo.builder.core.dist import comm_from_env

    rank = int(os.environ.get("RANK", "0"))
    comm = None
    try:
        options.check()
        check_backends(options)
        comm = comm_from_env()
        lineage = _lineage_for_rank(lineage_file, options, comm.world)
        outcome = ("ok", run_rank(comm, store_root, options, lineage))
    except TtspoError as exc:
        outcome = ("error", type(exc).__name__, str(exc))
    finally:
        if comm is not None:
            comm.close()
    if rank == 0:
        _report(outcome, outcome_file)
    return 0 if outcome[0] == "ok" else 1


def _lineage_for_rank(lineage_file: str | None, options: ScoreOptions, world: int) -> Lineage:
    if lineage_file:  # the parent of --workers made it
        return Lineage.from_record(json.loads(Path(lineage_file).read_text()))
    return make_lineage("score", _options_args(options, world), launcher="torchrun")


def _report(outcome, outcome_file: str | None) -> None:
    if outcome_file:  # the parent process reports
        if outcome[0] == "ok":
            outcome = ("ok", dataclasses.asdict(outcome[1]))
        Path(outcome_file).write_text(json.dumps(outcome))
    elif outcome[0] == "ok":
        print(describe(outcome[1]))
    else:
        print(f"Error: {outcome[2]}", file=sys.stderr)


def describe(summary: ScoreSummary) -> str:
    """The one-paragraph report the CLI and torchrun print."""
    if summary.version is None:
        return f"generations@{summary.read_version}: nothing to score"
    lines = [f"scored {summary.rows} generation(s) of generations@{summary.read_version} "
             f"-> version {summary.version} ({summary.world_size} process(es))"]
    lines += [f"  {group}: {src}" for group, src in summary.sources.items()]
    if summary.failed:
        lines.append(f"{summary.failed} generation(s) could not be scored: their metrics are "
                     "NULL, the reason in the *_status columns (ttspo score retries them), e.g.")
        lines += [f"  {where}: {why}" for where, why in summary.problems[:3]]
    return "\n".join(lines)


if __name__ == "__main__":  # the old torchrun entry: say where it went
    sys.exit("python -m ttspo.builder.scoring.run is gone: run `ttspo score ...`, under torchrun "
             "`torchrun ... -m ttspo.builder.cli -- --store ST score ...`")
