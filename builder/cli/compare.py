"""`ttspo compare`: runs side by side on the prompts they share (thin over
ttspo.builder.analysis.compare). It reads generations only, so it is the builder's."""

from __future__ import annotations

import click

from ttspo.builder.cli.common import FiniteFloat, emit, format_option, get_store


@click.command()
@click.argument("runs", nargs=-1, required=True, metavar="RUN_A RUN_B [RUN]...")
@click.option("--metric", "metrics", multiple=True,
              type=click.Choice(["cer", "wer", "ssim", "pesq", "squim"]),
              help="Only this metric (repeatable); default: every metric both runs have.")
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
def compare(ctx: click.Context, *, runs: tuple[str, ...], metrics: tuple[str, ...], seed: int,
            n_boot: int, n_perm: int, confidence: float, generations: str,
            plot_path: str | None, fmt: str) -> None:
    """Compare RUN_B (and any further run) with RUN_A on the prompts they share.

    Per metric (cer, wer, ssim, pesq, squim where both runs have it), overall and
    per record type and context kind: prompts, each run's mean (a run's samples
    of a prompt are averaged first), the paired difference b - a, its seeded
    bootstrap interval (prompts resampled) and a sign-flip permutation p-value.
    The same numbers in SQL: SELECT * FROM compare_runs('generations', 'a', 'b').
    """
    from ttspo.builder.analysis.compare import COLUMNS

    table = get_store(ctx).compare(runs, metrics=metrics or None, seed=seed, n_boot=n_boot,
                                   n_perm=n_perm, confidence=confidence,
                                   generations=generations, plot=plot_path)
    emit(table.to_dicts(), fmt, list(COLUMNS))
    if plot_path:
        click.echo(f"per-prompt differences drawn to {plot_path}", err=True)


COMMANDS = [compare]
