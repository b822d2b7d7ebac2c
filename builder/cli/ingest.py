"""`ttspo ingest`: bring generations and their metrics into the store (step 2 in).

Thin over ttspo.builder.api.Store; heavy libraries are imported inside the commands so
`ttspo --help` stays fast (and nothing here ever imports torch).
"""

from __future__ import annotations

import click

from ttspo.builder.cli.common import get_store, lineage_for

ON_ERROR_HELP = ("fail: list every bad {unit} and write nothing. skip: ingest the rest and "
                 "log the rejects (run, file, reason) in the ingest_errors table.")


@click.group()
def ingest() -> None:
    """Ingest generations into the `generations` table.

    One row per generated audio: run, prompt, group and sample index, manifest
    line, audio path, codec codes, duration, sample rate, metrics and
    transcripts. Ids are deterministic (run + line): ingesting the same data
    again changes nothing; another run appends.
    """


def _common(unit: str):
    def decorate(f):
        f = click.option("--embed-audio", is_flag=True,
                         help="Also store the wav bytes (a Lance blob column); "
                              "default: the path only.")(f)
        return click.option("--on-error", type=click.Choice(["fail", "skip"]), default="fail",
                            show_default=True, help=ON_ERROR_HELP.format(unit=unit))(f)
    return decorate


@ingest.command("nemo", short_help="Ingest a NeMo generation folder (wav, codes, metrics).")
@click.argument("gen_dir", type=click.Path(file_okay=False))
@click.option("--manifest", required=True, type=click.Path(dir_okay=False),
              help="The text-context manifest NeMo generated from (JSON lines).")
@click.option("--run", "run_name", help="Run name.  [default: GEN_DIR's folder name]")
@click.option("--group-size", type=click.IntRange(min=1),
              help="Samples per prompt. Default: runs of identical consecutive manifest "
                   "records (a run that is a multiple of the usual length is split).")
@click.option("--workers", type=click.IntRange(min=1),
              help="Reader processes.  [default: the CPUs, 1 for small inputs]")
@_common("file")
@click.pass_context
def ingest_nemo_cmd(ctx: click.Context, *, gen_dir: str, manifest: str, run_name: str | None,
                    group_size: int | None, workers: int | None, on_error: str,
                    embed_audio: bool) -> None:
    """Ingest NeMo's generations: predicted_audioRank{r}_{i}.wav, _codes.pt and
    _metrics.json found anywhere under GEN_DIR. File (r, i) is manifest line
    i*R + r, R the number of ranks in the file names.

    Generations already in the store (same run and line) are left alone, so a
    rerun only adds what is missing. Problems with the manifest itself, or a
    manifest/file count mismatch, always stop the ingest (the file-to-line
    mapping would be wrong), even with --on-error skip.
    """
    result = get_store(ctx).ingest_nemo(
        gen_dir, manifest=manifest, run=run_name, group_size=group_size, on_error=on_error,
        embed_audio=embed_audio, lineage=lineage_for(ctx), workers=workers, progress=True)
    _report(result)


@ingest.command("jsonl", short_help="Ingest one generation per JSON line (other systems).")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--run", "run_name", help="Run name.  [default: FILE's name without extension]")
@click.option("--codec", "codec_spec", metavar="nemo:PATH",
              help="Encode the audio of lines without codes_path with this NeMo codec (.nemo).")
@_common("line")
@click.pass_context
def ingest_jsonl_cmd(ctx: click.Context, *, file: str, run_name: str | None, codec_spec: str | None,
                     on_error: str, embed_audio: bool) -> None:
    """Ingest one generation per JSON line (data from other systems).

    Required per line: text, group, audio_filepath (relative paths are taken
    from FILE's folder; the audio must exist, its header gives duration and
    sample rate). Optional: sample, record_type, context_audio_filepath,
    context_audio_duration, context_text, codes_path (.pt or .npy, int16
    [codebooks, frames]), cer, wer, ssim, pesq, squim, codes_len,
    pred_transcript, gt_transcript, invalid. Line N (from 0) is generation RUN:N.
    With --codec nemo:CODEC.nemo, lines without codes_path get the codes of their
    audio under that codec (the lineage records the codec file and its hash).
    """
    result = get_store(ctx).ingest_jsonl(file, run=run_name, on_error=on_error,
                                         embed_audio=embed_audio, lineage=lineage_for(ctx),
                                         progress=True, codec=codec_spec)
    _report(result)


def _report(result) -> None:
    """One summary line (exact wording is tested)."""
    if not result.changed:
        where = f"generations@{result.version}" if result.version is not None else "the store"
        if result.skipped:
            click.echo(f"nothing to ingest from run {result.run}: {result.present} already "
                       f"present, {result.skipped} bad generation(s) skipped again (already in "
                       f"ingest_errors@{result.errors_version}); store unchanged")
        else:
            click.echo(f"nothing to ingest: all {result.present} generations of run "
                       f"{result.run} are already in {where}; store unchanged")
        return
    if result.ingested:
        line = (f"ingested {result.ingested} generations ({result.groups} groups) "
                f"from run {result.run} into generations@{result.version}")
    else:
        line = f"ingested no generations from run {result.run}"
    if result.present:
        line += f"; {result.present} already present"
    if result.skipped:
        line += (f"; skipped {result.skipped} bad generation(s) ({result.errors_logged} new "
                 f"problem(s) in ingest_errors@{result.errors_version})")
    click.echo(line)


COMMANDS = [ingest]
