"""`ttspo generate`: N samples per prompt from a checkpoint, straight into `generations`.

One run = one ``--run`` name, one checkpoint and one set of sampling parameters.
Each row records the policy, the checkpoint (path, sha256 and its `checkpoints`
row when the table has one) and the sampling parameters (GENERATE_COLUMNS), next to
the usual columns: codes, the audio the policy's codec decodes (a wav file per
generation under ``--audio-dir``, and/or the wav bytes as a Lance blob with
``--embed-audio``), duration and, with ``--score``, the metrics.

Ids: ``RUN:PROMPT_ID:SAMPLE``; the group of a prompt is ``RUN:g<position>`` (its
position in the prompts draw), so recipes pick pairs inside it as for NeMo's runs.

Seeds: sample k of prompt p draws its noise from a generator seeded by
sha256(seed, p, k) alone (the policy's ``sample_seed`` row key). The same
checkpoint, prompts and seed give the same codes however the rows are batched or
sharded.

Sharding (torchrun, or one process): rank 0 plans (which prompts, which samples
are missing) and broadcasts the plan; each rank generates the samples of every
world-th prompt (whole prompts), writes its rows as Lance fragments, and rank 0
commits all fragments in ONE version. A killed run leaves the table at its
previous version; a rerun generates only the samples the run lacks. A run that
exists with another checkpoint or other sampling parameters is refused.
"""

from __future__ import annotations

import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ttspo.builder.core.errors import InputError, TtspoError, first_line
from ttspo.builder.core.schemas import CKPT, GEN, GENERATE_COLUMNS, GENERATIONS_SCHEMA, PROMPT
from ttspo.builder.core.store import Lineage, Store, as_lineage, parse_ref, sql_string
from ttspo.builder.scoring.plan import failed_rows
from ttspo.trainer.generate.rows import (GENERATIONS, PROMPTS, STAGES, GenerateOptions,
                                         generation_id, settings_columns)

CHECKPOINTS = "checkpoints"


@dataclass(kw_only=True)
class Plan:
    """Made by rank 0 at pinned versions and sent to every rank."""

    prompts: list[dict[str, Any]]  # selected prompt rows that lack samples, in order
    missing: list[list[int]]  # per prompt: the sample indices to generate
    checkpoint: dict[str, Any]  # GEN checkpoint columns
    inputs: dict[str, int]  # table versions read (lineage)
    existing: int = 0  # rows of the run already in the table

    def share(self, rank: int, world: int) -> list[int]:
        """The prompt indices rank RANK generates: every world-th whole prompt."""
        return list(range(rank, len(self.prompts), world))


@dataclass(kw_only=True)
class Outcome:
    """What one rank sends to rank 0: its fragments, its times, or its error."""

    fragments: list = field(default_factory=list)
    rows: int = 0
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    error: str | None = None
    failed: int = 0  # rows `--score` left a metric NULL in (the reason in its *_status)


@dataclass(kw_only=True)
class Result:
    run: str
    version: int | None  # new generations version (None: nothing was missing)
    rows: int
    prompts: int
    existing: int
    seconds: dict[str, float]
    world: int
    rank: int = 0  # of the process holding this result (only rank 0 prints it)
    failed: int = 0  # rows `--score` left a metric NULL in

    def summary(self) -> dict[str, Any]:
        out = {"run": self.run, "version": self.version, "rows": self.rows,
               "prompts": self.prompts, "already_there": self.existing, "ranks": self.world,
               "score_failed": self.failed}
        out.update({f"{s}_s": round(self.seconds[s], 3) for s in STAGES})
        return out


# ------------------------------------------------------------------- driver
def generate(store: Store, options: GenerateOptions, *, lineage: Lineage,
             comm: Any = None) -> Result:
    """Plan on rank 0, generate on every rank, commit once on rank 0 (see module doc)."""
    import torch

    from ttspo.builder.core.dist import LocalComm

    comm = comm or LocalComm()
    previous = torch.get_num_threads()
    # Why: the tiny policy's small matmuls and Griffin-Lim's short STFTs gain nothing
    # from OpenMP threads, and threads spinning on a busy CPU made decoding 15-30x
    # slower (measured: 0.15 s vs 2-5 s per sample). Parallelism comes from ranks.
    torch.set_num_threads(options.threads or max(1, (os.cpu_count() or 1) // comm.world))
    try:
        # Two generates of one run would both find the same samples missing: rank 0
        # holds the run's lock from the plan to the commit (as ingest does).
        with store.lock(f"generate {options.run}") if comm.rank == 0 else nullcontext():
            return _generate(store, options, lineage, comm)
    finally:
        torch.set_num_threads(previous)


def _generate(store: Store, options: GenerateOptions, lineage: Lineage, comm: Any) -> Result:
    from ttspo.trainer.generate import rows as generate_rows

    def plan_on_rank0():
        # an older table first gains the columns registered since (nulls, one commit)
        store.add_missing_columns(GENERATIONS, GENERATIONS_SCHEMA, as_lineage(lineage))
        return make_plan(store, options)

    plan = _agreed(comm, plan_on_rank0)
    outcome = Outcome()
    try:
        mine = plan.share(comm.rank, comm.world)
        if mine:
            table = generate_rows.make_rows(plan.prompts, plan.missing, plan.checkpoint, mine,
                                            options=options, seconds=outcome.seconds)
            t = time.perf_counter()
            outcome.fragments = generate_rows.write_fragments(store, table)
            outcome.seconds["writing"] += time.perf_counter() - t
            outcome.rows = table.num_rows
            outcome.failed = failed_rows(table)  # `--score`'s NULL metrics with a reason
    except TtspoError as exc:
        outcome = Outcome(error=str(exc))
    outcomes = comm.all_gather(outcome)
    errors = [o.error for o in outcomes if o.error]
    if errors:
        raise InputError(errors[0])
    seconds = {s: sum(o.seconds[s] for o in outcomes) for s in STAGES}
    version = None
    if comm.rank == 0 and any(o.fragments for o in outcomes):
        t = time.perf_counter()
        fragments = [f for o in outcomes for f in o.fragments]
        full = as_lineage(lineage).with_inputs(plan.inputs).with_extra(
            checkpoint=plan.checkpoint, sampling=options.sampling.as_dict(), world_size=comm.world)
        version = generate_rows.commit(store, fragments, full)
        seconds["writing"] += time.perf_counter() - t
    version = comm.broadcast(version)
    return Result(run=options.run, version=version, rows=sum(o.rows for o in outcomes),
                  prompts=len(plan.prompts), existing=plan.existing, seconds=seconds,
                  world=comm.world, rank=comm.rank, failed=sum(o.failed for o in outcomes))


def _agreed(comm: Any, make):
    """Rank 0 makes it; every rank gets it, or raises the same error."""
    made = None
    if comm.rank == 0:
        try:
            made = make()
        except TtspoError as exc:
            made = exc
    made = comm.broadcast(made)
    if isinstance(made, TtspoError):
        raise made
    return made


# --------------------------------------------------------------------- plan
def make_plan(store: Store, options: GenerateOptions) -> Plan:
    options.check()
    inputs: dict[str, int] = {}
    checkpoint = checkpoint_columns(store, options, inputs)
    prompts = select_prompts(store, options, inputs)
    have = existing_samples(store, options, checkpoint, inputs)
    todo, missing = [], []
    for row in prompts:
        lacking = [k for k in range(options.samples)
                   if generation_id(options.run, row[PROMPT.prompt_id], k) not in have]
        if lacking:
            todo.append(row)
            missing.append(lacking)
    return Plan(prompts=todo, missing=missing, checkpoint=checkpoint, inputs=inputs,
                existing=len(have))


def checkpoint_columns(store: Store, options: GenerateOptions,
                       inputs: dict[str, int]) -> dict[str, Any]:
    """The checkpoint's GEN columns; loads it once here so a bad file fails the plan."""
    from ttspo.trainer.policy.base import load_policy

    from ttspo.trainer.run.verify import checked_sha256

    path = Path(options.checkpoint)
    sha = checked_sha256(path, store)  # against its folder's meta.json and its rows, before use
    policy = load_policy(options.policy, init=str(path))
    out = {GEN.policy: policy.identity(with_sha256=False).architecture, GEN.checkpoint_path: str(path.absolute()),
           GEN.checkpoint_sha256: sha, GEN.checkpoint_run: None, GEN.checkpoint_step: None}
    if store.exists(CHECKPOINTS):
        ds = store.open(CHECKPOINTS)
        rows = ds.to_table(columns=[CKPT.run, CKPT.step, CKPT.kind],
                           filter=f"{CKPT.sha256} = {sql_string(sha)}").to_pylist()
        if rows:  # a step row before a "best" copy of the same weights
            row = min(rows, key=lambda r: (r[CKPT.kind] != "step", r[CKPT.step]))
            out[GEN.checkpoint_run], out[GEN.checkpoint_step] = row[CKPT.run], row[CKPT.step]
            inputs[CHECKPOINTS] = ds.version
    return out


def select_prompts(store: Store, options: GenerateOptions,
                   inputs: dict[str, int]) -> list[dict[str, Any]]:
    """The prompt rows --prompts and --where select, ordered by position then id."""
    import duckdb

    from ttspo.builder.core.query import (check_read_only, inputs_by_table, mentions,
                                          open_session, refs_in)

    table, version = parse_ref(options.prompts)
    if table != PROMPTS:
        raise InputError(f"--prompts reads the prompts table, not '{table}'")
    ref = options.prompts if version is not None else PROMPTS
    sql = f'SELECT * FROM "{ref}"' + (f" WHERE {options.where}" if options.where else "")
    sql += f" ORDER BY {PROMPT.position} NULLS LAST, {PROMPT.prompt_id}"
    check_read_only(sql)
    # --where may read other tables too (e.g. the prompts a set did not train on)
    where = options.where or ""
    others = [t for t in store.tables() if t != PROMPTS and mentions(where, t)]
    session = open_session(store, ([ref] if version is not None else []) + refs_in(where),
                           others + ([] if version is not None else [PROMPTS]))
    try:
        rows = session.con.sql(sql).to_arrow_table().to_pylist()
    except duckdb.Error as exc:
        raise InputError(f"--where: {first_line(exc)}") from None
    finally:
        session.con.close()
    if not rows:
        raise InputError(f"no prompt in {options.prompts} matches --where {options.where}"
                         if options.where else f"{options.prompts} holds no prompt")
    inputs.update(inputs_by_table(session.inputs_for(where), {PROMPTS: session.versions[ref]}))
    # group_index is informational (positions repeat across draws): groups are keyed
    # by prompt id (generate_rows.base_row)
    for i, row in enumerate(rows):
        row["_group"] = row[PROMPT.position] if row[PROMPT.position] is not None else i
    return rows


def existing_samples(store: Store, options: GenerateOptions, checkpoint: dict[str, Any],
                     inputs: dict[str, int]) -> set[str]:
    """Ids the run already has; refuses a run made with other weights or sampling."""
    if not store.exists(GENERATIONS):
        return set()
    ds = store.open(GENERATIONS)
    inputs[GENERATIONS] = ds.version
    have = ds.to_table(columns=[GEN.generation_id, *GENERATE_COLUMNS],
                       filter=f"{GEN.run} = {sql_string(options.run)}")
    if have.num_rows == 0:
        return set()
    wanted = settings_columns(options, checkpoint)
    for name, value in wanted.items():
        if name == GEN.checkpoint_path:
            continue  # the same weights may have moved
        found = set(have[name].to_pylist())
        if found != {value}:
            shown = ", ".join(sorted(map(str, found)))
            raise InputError(f"run '{options.run}' exists with {name} {shown}, not {value}: "
                             "choose another --run")
    return set(have[GEN.generation_id].to_pylist())
