"""`ttspo score`: compute metrics for generations that lack them (thin over
ttspo.builder.api.Store.score; the defaults are ScoreOptions').

Under torchrun (``torchrun --nproc-per-node N -m ttspo.builder.cli -- --store ST
score ...``) and in the processes ``--workers N`` starts, each process is one rank
of the same command (``ttspo.builder.scoring.run.run_as_rank``).
"""

from __future__ import annotations

import os

import click

from ttspo.builder.cli.common import get_store, lineage_for
from ttspo.builder.core import metrics as registry
from ttspo.builder.scoring.options import DEFAULTS

# Kept literal so `ttspo --help` does not import jiwer; a test checks they equal
# ttspo.builder.scoring.metrics.NORMALIZERS.
NORMALIZER_CHOICES = ("nemo", "basic", "none")


@click.command()
@click.option("--metrics", default=",".join(DEFAULTS.metrics), show_default=True,
              help=f"Comma-separated metrics: {','.join(registry.names())} (docs/metrics.md). "
                   "Metrics of one backend (CER and WER: one transcript) are computed together.")
@click.option("--asr", default=DEFAULTS.asr, show_default=True, metavar="BACKEND",
              help="ASR for CER/WER: pocketsphinx | nemo:PATH.nemo | whisper:DIR.")
@click.option("--sv", default=DEFAULTS.sv, show_default=True, metavar="BACKEND",
              help="Speaker embeddings for SSIM: resemblyzer[:PATH.pt] | nemo:PATH.nemo.")
@click.option("--squim", default=DEFAULTS.squim, metavar="PATH",
              help="SQUIM objective weights file (needed by --metrics squim).")
@click.option("--normalizer", type=click.Choice(NORMALIZER_CHOICES), default=DEFAULTS.normalizer,
              show_default=True, help="Text normalisation before CER/WER (nemo = NeMo's).")
@click.option("--where", default=DEFAULTS.where, metavar="SQL",
              help="DuckDB condition on generations: score only matching rows.")
@click.option("--rescore", is_flag=True, default=DEFAULTS.rescore,
              help="Score the selected rows again even if they have the metrics.")
@click.option("--batch-size", type=click.IntRange(min=1), default=DEFAULTS.batch_size,
              show_default=True,
              help="Rows per model batch.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Local processes (ranks) to score with; torchrun -m ttspo.builder.cli "
                   "score does the same across machines.")
# Set by --workers for the processes it starts (the parent records and reports).
@click.option("--lineage-file", hidden=True)
@click.option("--outcome-file", hidden=True)
@click.pass_context
def score(ctx: click.Context, *, metrics: str, asr: str, sv: str, squim: str | None,
          normalizer: str, where: str | None, rescore: bool, batch_size: int,
          workers: int, lineage_file: str | None, outcome_file: str | None) -> None:
    """Score generations that lack the asked metrics, in ONE new version.

    Writes the metric columns, their *_source columns (backend and model), their
    *_status columns and the transcripts; audio and codes are not rewritten. Models
    are never downloaded: a missing model file is an error naming the option to fix.
    A file a backend fails on is NULL with the reason in *_status ("error: ...",
    retried by the next run); the rest is scored, the count printed, exit 0 (exit 1
    when no row could be scored: nothing written).
    """
    from ttspo.builder.scoring.run import describe

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # one rank of torchrun's or --workers'
        from ttspo.builder.scoring.options import options_from
        from ttspo.builder.scoring.run import run_as_rank

        options = options_from(metrics, asr=asr, sv=sv, squim=squim, normalizer=normalizer,
                               where=where, rescore=rescore, batch_size=batch_size)
        ctx.exit(run_as_rank(ctx.find_root().obj["store_path"], options, lineage_file,
                             outcome_file))
    summary = get_store(ctx).score(metrics=metrics, asr=asr, sv=sv, squim=squim,
                                   normalizer=normalizer, where=where, rescore=rescore,
                                   batch_size=batch_size, workers=workers,
                                   lineage=lineage_for(ctx))
    click.echo(describe(summary))


COMMANDS = [score]
