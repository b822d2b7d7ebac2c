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

The unit is the prompt, not the generation: samples of one prompt are not
independent, so the bootstrap resamples prompts and the test flips per-prompt
differences. With more than two runs, each run is compared with the first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ttspo.builder.core.errors import InputError
from ttspo.builder.core.query import open_session
from ttspo.builder.core.schemas import GEN
from ttspo.builder.core.store import Store, parse_ref, sql_string

GEN_TABLE = "generations"
# What compare reports, in order (the SQL macros unpivot the same columns).
COMPARED_METRICS = (GEN.cer, GEN.wer, GEN.ssim, GEN.pesq, GEN.squim)
COLUMNS = ("run_a", "run_b", "metric", "better", "breakdown", "slice", "prompts",
           "mean_a", "mean_b", "diff", "ci_low", "ci_high", "p_value")


def compare_runs(store: Store, runs: Sequence[str], *, metrics: Sequence[str] | None = None,
                 seed: int = 0, n_boot: int = 1000, n_perm: int = 1000,
                 confidence: float = 0.95, generations: str = "generations"):
    """Each run after the first against the first: a polars DataFrame (COLUMNS)."""
    import polars as pl

    _check_options(runs, metrics, n_boot, n_perm, confidence=confidence)
    options = f"seed := {int(seed)}, n_boot := {int(n_boot)}, n_perm := {int(n_perm)}, " \
              f"confidence := {float(confidence)!r}"
    frames = [_query(store, generations, "compare_runs", runs[0], run_b=other, options=options,
                     metrics=metrics)
              for other in runs[1:]]
    return pl.concat(frames)


def prompt_differences(store: Store, runs: Sequence[str], *,
                       metrics: Sequence[str] | None = None, generations: str = "generations"):
    """Per metric and shared prompt: each run's mean and the difference (a DataFrame)."""
    import polars as pl

    _check_options(runs, metrics, 1, 1, confidence=0.5)
    frames = [_query(store, generations, "compare_prompts", runs[0], run_b=other, options="",
                     metrics=metrics)
              for other in runs[1:]]
    return pl.concat(frames)


def _check_options(runs, metrics, n_boot, n_perm, *, confidence) -> None:
    if len(runs) < 2:
        raise InputError("compare needs at least two runs")
    seen = [r for i, r in enumerate(runs) if r in runs[:i]]
    if seen:
        raise InputError(f"run '{seen[0]}' is given twice")
    unknown = [m for m in (metrics or ()) if m not in COMPARED_METRICS]
    if unknown:
        raise InputError(f"unknown metric '{unknown[0]}' (known: {', '.join(COMPARED_METRICS)})")
    if n_boot < 1 or n_perm < 1:
        raise InputError("the bootstrap and permutation counts must be at least 1")
    if not 0 < confidence < 1:
        raise InputError(f"confidence must lie between 0 and 1, not {confidence}")


def _query(store: Store, generations: str, macro: str, run_a: str, *, run_b: str,
           options: str, metrics: Sequence[str] | None):
    import polars as pl

    table, version = parse_ref(generations)
    if table != GEN_TABLE:
        raise InputError(f"compare reads the generations table, not '{table}'")
    refs = [generations] if version is not None else []
    session = open_session(store, refs, [] if refs else [GEN_TABLE])
    try:
        known = {r for (r,) in session.con.execute(
            f'SELECT DISTINCT {GEN.run} FROM "{generations}"').fetchall()}
        for run in (run_a, run_b):
            if run not in known:
                raise InputError(f"no run '{run}' in {generations} (runs: {', '.join(sorted(known))})")
        args = f"{sql_string(generations)}, {sql_string(run_a)}, {sql_string(run_b)}"
        args += f", {options}" if options else ""
        frame = pl.from_arrow(session.con.sql(f"SELECT * FROM {macro}({args})").to_arrow_table())
    finally:
        session.con.close()
    if frame.is_empty():
        raise InputError(f"runs '{run_a}' and '{run_b}' share no prompt with a metric value "
                         f"in {generations}")
    if metrics:
        frame = frame.filter(pl.col("metric").is_in(list(metrics)))
        missing = [m for m in metrics if m not in set(frame["metric"])]
        if missing:
            raise InputError(f"runs '{run_a}' and '{run_b}' share no prompt with a "
                             f"'{missing[0]}' value in {generations}")
    return frame



def plot_differences(per_prompt, path: str | Path) -> None:
    """Per-prompt differences (b - a), sorted, one panel per metric, one series per
    compared pair; the zero line and each pair's mean difference drawn across."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in COMPARED_METRICS if m in set(per_prompt["metric"])]
    fig, axes = plt.subplots(len(metrics), 1, figsize=(8, 2.6 * len(metrics)), squeeze=False)
    for ax, metric in zip(axes[:, 0], metrics):
        rows = per_prompt.filter(per_prompt["metric"] == metric)
        for (run_a, run_b), pair in rows.group_by(["run_a", "run_b"], maintain_order=True):
            diffs = sorted(pair["diff"].to_list())
            line = ax.plot(range(len(diffs)), diffs, marker=".", linestyle="",
                           label=f"{run_b} - {run_a}")[0]
            ax.axhline(sum(diffs) / len(diffs), color=line.get_color(), linewidth=1)
        ax.axhline(0.0, color="black", linewidth=0.8, linestyle="--")
        better = "lower" if metric in (GEN.cer, GEN.wer) else "higher"
        ax.set_title(f"{metric}: per-prompt difference ({better} is better)")
        ax.set_xlabel("prompt (sorted by difference)")
        ax.legend(loc="upper left", fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
