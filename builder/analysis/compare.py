"""`ttspo compare RUN_A RUN_B [...]`: did a run help, and where, with confidence intervals.

The numbers come from two DuckDB table macros in ``sql/macros.sql``, so SQL users
and this API get the same numbers by construction:

``compare_prompts(gen, run_a, run_b)``
    one row per metric and prompt both runs have a value for: each run's samples
    of that prompt averaged (rows NeMo marked invalid left out), ``diff = b - a``.
``compare_runs(gen, run_a, run_b, seed := 0, n_boot := 1000, n_perm := 1000, confidence := 0.95)``
    per metric, overall and per record type and context kind: prompts, means, the
    mean paired difference, a seeded percentile bootstrap interval (prompts
    resampled with replacement) and a seeded sign-flip permutation p-value.
``run_summary(gen, run, ...)``
    one run's mean per metric over the prompts and its bootstrap interval: the table a
    paper reports (``ttspo compare --summary``).

The metrics and their directions are the metric registry's (builder/core/metrics.py);
any other numeric column is compared with ``NAME:lower`` or ``NAME:higher``. The rows
compared are a test set: a generations version, narrowed to a prompts version's
prompts (``prompts@test-clean``) and/or a ``where`` condition.

The unit is the prompt, not the generation: samples of one prompt are not
independent, so the bootstrap resamples prompts and the test flips per-prompt
differences. With more than two runs, each run is compared with the first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ttspo.builder.core import metrics as registry
from ttspo.builder.core.errors import InputError, QueryError, first_line
from ttspo.builder.core.query import check_read_only, open_session, sql_list
from ttspo.builder.core.schemas import GEN
from ttspo.builder.core.store import Store, parse_ref, sql_string

GEN_TABLE = "generations"
TEST_SET = "__compare_generations"  # the session view of the rows a comparison reads
# What compare reports by default, in order: the metric registry's metrics.
COMPARED_METRICS = registry.names()
COLUMNS = ("run_a", "run_b", "metric", "better", "breakdown", "slice", "prompts",
           "mean_a", "mean_b", "diff", "ci_low", "ci_high", "p_value")
SUMMARY_COLUMNS = ("run", "metric", "better", "prompts", "mean", "ci_low", "ci_high")
DIRECTIONS = registry.DIRECTIONS


@dataclass(frozen=True, kw_only=True)
class TestSet:
    """The rows compared: the generations version, an optional prompts version whose
    prompts make the test set (``prompts@test-clean``) and an optional SQL condition."""

    generations: str = "generations"
    prompts: str | None = None
    where: str | None = None


def parse_metrics(specs: Sequence[str] | None) -> tuple[list[str] | None, list[str], list[str]]:
    """``["cer", "codes_len:lower"]`` -> (names, the names where lower is better, the
    names with no better direction).

    A registered metric's direction is the registry's (a contradicting one is an
    error); any other column needs its direction after a colon."""
    if not specs:
        return None, list(registry.lower_is_better()), list(registry.no_direction())
    names, lower, neither = [], [], []
    for spec in specs:
        name, _, direction = spec.partition(":")
        name, direction = name.strip(), direction.strip().lower()
        if direction and direction not in DIRECTIONS:
            raise InputError(f"--metric {spec}: the direction is 'lower', 'higher' "
                             "(which is better) or 'neither'")
        if name in registry.names():
            known = registry.metric(name).better
            if direction and direction != known:
                raise InputError(f"--metric {spec}: {name} is registered with {known} is "
                                 f"better; drop ':{direction}'")
            direction = known
        elif not direction:
            raise InputError(f"--metric {spec}: '{name}' is not a registered metric (known: "
                             f"{', '.join(registry.names())}); say which way is better: "
                             f"--metric {name}:lower or --metric {name}:higher")
        if name in names:
            raise InputError(f"--metric {name} is given twice")
        names.append(name)
        lower += [name] if direction == registry.LOWER else []
        neither += [name] if direction == registry.NEITHER else []
    return names, lower, neither


def compare_runs(store: Store, runs: Sequence[str], *, metrics: Sequence[str] | None = None,
                 seed: int = 0, n_boot: int = 1000, n_perm: int = 1000,
                 confidence: float = 0.95, generations: str = "generations",
                 prompts: str | None = None, where: str | None = None):
    """Each run after the first against the first: a polars DataFrame (COLUMNS).
    METRICS: names or ``NAME:lower|higher`` (any numeric column); default every
    registered metric the runs have."""
    import polars as pl

    _check_options(runs, n_boot, n_perm, confidence=confidence)
    names, lower, neither = parse_metrics(metrics)
    options = f"seed := {int(seed)}, n_boot := {int(n_boot)}, n_perm := {int(n_perm)}, " \
              f"confidence := {float(confidence)!r}"
    test_set = TestSet(generations=generations, prompts=prompts, where=where)
    frames = [_query(store, test_set, "compare_runs", runs[0], run_b=other, options=options,
                     metrics=names, lower=lower, neither=neither)
              for other in runs[1:]]
    return pl.concat(frames)


def prompt_differences(store: Store, runs: Sequence[str], *,
                       metrics: Sequence[str] | None = None, generations: str = "generations",
                       prompts: str | None = None, where: str | None = None):
    """Per metric and shared prompt: each run's mean and the difference (a DataFrame)."""
    import polars as pl

    _check_options(runs, 1, 1, confidence=0.5)
    names, _, _ = parse_metrics(metrics)
    test_set = TestSet(generations=generations, prompts=prompts, where=where)
    frames = [_query(store, test_set, "compare_prompts", runs[0], run_b=other, options="",
                     metrics=names, lower=None, neither=None)
              for other in runs[1:]]
    return pl.concat(frames)


def run_summaries(store: Store, runs: Sequence[str], *, metrics: Sequence[str] | None = None,
                  seed: int = 0, n_boot: int = 1000, confidence: float = 0.95,
                  generations: str = "generations", prompts: str | None = None,
                  where: str | None = None):
    """The table a paper reports: per run and metric, the mean over the test set's
    prompts and its bootstrap interval (a DataFrame, SUMMARY_COLUMNS)."""
    import polars as pl

    _check_options(runs, n_boot, 1, confidence=confidence, least=1)
    names, lower, neither = parse_metrics(metrics)
    options = f"seed := {int(seed)}, n_boot := {int(n_boot)}, " \
              f"confidence := {float(confidence)!r}"
    test_set = TestSet(generations=generations, prompts=prompts, where=where)
    return pl.concat([_query(store, test_set, "run_summary", run, run_b=None, options=options,
                             metrics=names, lower=lower, neither=neither) for run in runs])


def _check_options(runs, n_boot, n_perm, *, confidence, least: int = 2) -> None:
    if len(runs) < least:
        raise InputError("compare needs at least two runs" if least == 2 else "name a run")
    seen = [r for i, r in enumerate(runs) if r in runs[:i]]
    if seen:
        raise InputError(f"run '{seen[0]}' is given twice")
    if n_boot < 1 or n_perm < 1:
        raise InputError("the bootstrap and permutation counts must be at least 1")
    if not 0 < confidence < 1:
        raise InputError(f"confidence must lie between 0 and 1, not {confidence}")


def _open_test_set(store: Store, test_set: TestSet):
    """A session whose view TEST_SET holds the rows compared; and its label for messages."""
    table, version = parse_ref(test_set.generations)
    if table != GEN_TABLE:
        raise InputError(f"compare reads the generations table, not '{table}'")
    refs = [test_set.generations] if version is not None else []
    if test_set.prompts:
        if parse_ref(test_set.prompts)[0] != "prompts":
            raise InputError(f"--prompts {test_set.prompts}: name a prompts version "
                             "(prompts@TAG, prompts@VERSION)")
        refs.append(test_set.prompts)
    session = open_session(store, refs, [] if version is not None else [GEN_TABLE])
    conditions = []
    if test_set.prompts:
        conditions.append(f'{GEN.prompt_id} IN (SELECT prompt_id FROM "{test_set.prompts}")')
    if test_set.where:
        check_read_only(f"SELECT 1 FROM generations WHERE {test_set.where}")
        conditions.append(f"({test_set.where})")
    body = f'SELECT * FROM "{test_set.generations}"'
    body += f" WHERE {' AND '.join(conditions)}" if conditions else ""
    try:
        session.con.execute(f'CREATE OR REPLACE TEMP VIEW "{TEST_SET}" AS {body}')
        session.con.execute(f'SELECT 1 FROM "{TEST_SET}" LIMIT 0')
    except Exception as exc:  # duckdb.Error: a bad --where names the column it lacks
        session.con.close()
        raise QueryError(f"--where: {first_line(exc)}") from None
    label = test_set.generations + (f" (prompts of {test_set.prompts})" if test_set.prompts
                                    else "") + (f" where {test_set.where}" if test_set.where else "")
    return session, label


def _query(store: Store, test_set: TestSet, macro: str, run_a: str, *, run_b: str | None,
           options: str, metrics: list[str] | None, lower: list[str] | None,
           neither: list[str] | None):
    import polars as pl

    session, label = _open_test_set(store, test_set)
    try:
        columns = {name: kind for name, kind in session.con.execute(
            f'SELECT column_name, column_type FROM (DESCRIBE "{TEST_SET}")').fetchall()}
        _check_columns(metrics, columns)
        known = {r for (r,) in session.con.execute(
            f'SELECT DISTINCT {GEN.run} FROM "{TEST_SET}"').fetchall()}
        for run in (run_a, run_b) if run_b is not None else (run_a,):
            if run not in known:
                raise InputError(f"no run '{run}' in {label} (runs: {', '.join(sorted(known))})")
        args = ", ".join(sql_string(x) for x in (TEST_SET, run_a, run_b) if x is not None)
        args += f", {options}" if options else ""
        if metrics:
            args += f", metrics := {sql_list(metrics)}"
        if lower is not None and macro != "compare_prompts":
            args += f", lower := {sql_list(lower)}, neither := {sql_list(neither or [])}"
        frame = pl.from_arrow(session.con.sql(f"SELECT * FROM {macro}({args})").to_arrow_table())
    finally:
        session.con.close()
    what = f"run '{run_a}' has" if run_b is None else f"runs '{run_a}' and '{run_b}' share"
    missing = [m for m in metrics or () if m not in set(frame["metric"])]
    if missing:
        raise InputError(f"{what} no prompt with a '{missing[0]}' value in {label}")
    if frame.is_empty():
        raise InputError(f"{what} no prompt with a metric value in {label}")
    return frame


NUMERIC = ("DOUBLE", "FLOAT", "INTEGER", "BIGINT", "SMALLINT", "TINYINT", "HUGEINT",
           "UINTEGER", "UBIGINT", "USMALLINT", "UTINYINT", "REAL")


def _check_columns(metrics: list[str] | None, columns: dict[str, str]) -> None:
    """Every asked metric is a numeric column of the view (one line naming it if not)."""
    for name in metrics or ():
        kind = columns.get(name)
        if kind is None:
            raise InputError(f"--metric {name}: generations has no column '{name}'")
        if not (kind in NUMERIC or kind.startswith("DECIMAL")):
            raise InputError(f"--metric {name}: column '{name}' is {kind}, not a number")


def plot_differences(per_prompt, path: str | Path) -> None:
    """Per-prompt differences (b - a), sorted, one panel per metric, one series per
    compared pair; the zero line and each pair's mean difference drawn across."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = list(dict.fromkeys(per_prompt["metric"]))
    fig, axes = plt.subplots(len(metrics), 1, figsize=(8, 2.6 * len(metrics)), squeeze=False)
    for ax, metric in zip(axes[:, 0], metrics):
        rows = per_prompt.filter(per_prompt["metric"] == metric)
        for (run_a, run_b), pair in rows.group_by(["run_a", "run_b"], maintain_order=True):
            diffs = sorted(pair["diff"].to_list())
            line = ax.plot(range(len(diffs)), diffs, marker=".", linestyle="",
                           label=f"{run_b} - {run_a}")[0]
            ax.axhline(sum(diffs) / len(diffs), color=line.get_color(), linewidth=1)
        ax.axhline(0.0, color="black", linewidth=0.8, linestyle="--")
        better = registry.metric(metric).better if metric in registry.names() else ""
        better = "" if better == registry.NEITHER else better
        ax.set_title(f"{metric}: per-prompt difference" +
                     (f" ({better} is better)" if better else ""))
        ax.set_xlabel("prompt (sorted by difference)")
        ax.legend(loc="upper left", fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
