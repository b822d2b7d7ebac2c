"""`ttspo compare`: runs side by side on the prompts they share (thin over
ttspo.builder.analysis.compare). It reads generations only, so it is the builder's."""

from __future__ import annotations

import click

from ttspo.builder.cli.common import FiniteFloat, emit, format_option, get_store
from ttspo.builder.core import metrics as registry


@click.command()
@click.argument("runs", nargs=-1, required=True, metavar="RUN_A RUN_B [RUN]...")
@click.option("--metric", "metrics", multiple=True, metavar="NAME[:lower|higher]",
              help="Only this metric (repeatable); default: every registered metric "
                   f"({', '.join(registry.names())}) the runs have. Any other numeric "
                   "column with the direction that is better: --metric codes_len:lower.")
@click.option("--prompts", "prompts_ref", metavar="PROMPTS@TAG",
              help="The test set: only the prompts of this prompts version "
                   "(prompts@test-clean, prompts@3).")
@click.option("--where", metavar="SQL",
              help="The test set: a DuckDB condition on generations (record_type = 'regular').")
@click.option("--summary", is_flag=True,
              help="Instead, each run's mean per metric with its bootstrap interval "
                   "(the table a paper reports); one run is enough.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the bootstrap and permutation draws.")
@click.option("--bootstrap", "n_boot", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Bootstrap resamples of the prompts.")
@click.option("--permutations", "n_perm", type=click.IntRange(min=1), default=1000,
              show_default=True, help="Sign flips of the permutation test.")
@click.option("--confidence", type=FiniteFloat(0, 1, min_open=True, max_open=True),
              default=0.95, show_default=True, help="Level of the bootstrap interval.")
@click.option("--generations", "generations", default="generations", show_default=True,
              help="The generations version to read (generations@12, generations@v1).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False),
              help="Also draw the per-prompt differences to this PNG file.")
@format_option
@click.pass_context
def compare(ctx: click.Context, *, runs: tuple[str, ...], metrics: tuple[str, ...],
            prompts_ref: str | None, where: str | None, summary: bool, seed: int,
            n_boot: int, n_perm: int, confidence: float, generations: str,
            plot_path: str | None, fmt: str) -> None:
    """Compare RUN_B (and any further run) with RUN_A on the prompts they share.

    Per metric (every registered metric both runs have, or --metric), overall and
    per record type and context kind: prompts, each run's mean (a run's samples
    of a prompt are averaged first), the paired difference b - a, its seeded
    bootstrap interval (prompts resampled) and a sign-flip permutation p-value.
    The same numbers in SQL: SELECT * FROM compare_runs('generations', 'a', 'b').
    --summary prints each run's mean and interval per metric instead (SQL:
    run_summary('generations', 'a')); --prompts and --where pick the test set.
    """
    from ttspo.builder.analysis.compare import COLUMNS, SUMMARY_COLUMNS

    table = get_store(ctx).compare(runs, metrics=metrics or None, seed=seed, n_boot=n_boot,
                                   n_perm=n_perm, confidence=confidence,
                                   generations=generations, prompts=prompts_ref, where=where,
                                   plot=None if summary else plot_path, summary=summary)
    emit(table.to_dicts(), fmt, list(SUMMARY_COLUMNS if summary else COLUMNS))
    if plot_path:
        click.echo(f"per-prompt differences drawn to {plot_path}", err=True)


COMMANDS = [compare]
