"""`ttspo prompts`: step 1, text-context pairs (thin over ttspo.builder.api.Store.prompts)."""

from __future__ import annotations

import click

from ttspo.builder.cli.common import get_store, lineage_for

# Input file options: (option, parameter) in NeMo's order.
INPUT_FILES = (
    ("--challenging-texts", "challenging_texts"),
    ("--regular-texts-for-audiocontext", "regular_texts_for_audiocontext"),
    ("--regular-texts-for-textcontext", "regular_texts_for_textcontext"),
    ("--audio-contexts", "audio_contexts"),
    ("--text-contexts", "text_contexts"),
    ("--reference-audios", "reference_audios"),
)

COUNT = click.IntRange(min=0)


@click.command()
@click.option("--challenging-texts", type=click.Path(dir_okay=False),
              help="Challenging texts, one per line.")
@click.option("--regular-texts-for-audiocontext", type=click.Path(dir_okay=False),
              help="Regular texts to pair with audio contexts, one per line.")
@click.option("--regular-texts-for-textcontext", type=click.Path(dir_okay=False),
              help="Regular texts to pair with text contexts, one per line.")
@click.option("--audio-contexts", type=click.Path(dir_okay=False),
              help="JSON lines: context_audio_filepath, context_audio_duration, "
                   "optional context_audio_codes_path.")
@click.option("--text-contexts", type=click.Path(dir_okay=False),
              help="Text contexts (speaker/style descriptions), one per line.")
@click.option("--audio-contexts-per-challenging", type=COUNT, default=10, show_default=True,
              help="Audio contexts drawn for each challenging text.")
@click.option("--text-contexts-per-challenging", type=COUNT, default=3, show_default=True,
              help="Text contexts drawn for each challenging text.")
@click.option("--audio-contexts-per-regular", type=COUNT, default=1, show_default=True,
              help="Audio contexts drawn for each regular text for audio context.")
@click.option("--text-contexts-per-regular", type=COUNT, default=1, show_default=True,
              help="Text contexts drawn for each regular text for text context.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the draw and shuffle: same inputs and seed, same pairs and manifest.")
@click.option("--reference-audios", type=click.Path(dir_okay=False),
              help="Optional JSON lines: text, context_audio_filepath, reference_audio_filepath "
                   "(a recording of that text in that voice, for PESQ).")
@click.option("--manifest-out", type=click.Path(dir_okay=False),
              help="Also write the NeMo text-context manifest (JSON lines) here.")
@click.option("--nsamples-perpair", type=click.IntRange(min=1), default=6, show_default=True,
              help="Manifest lines per pair (generations per pair in step 2).")
@click.pass_context
def prompts(ctx: click.Context, **opts) -> None:
    """Pair texts with contexts (NeMo step 1) into the `prompts` table.

    Same semantics as NeMo's create_text_contextpairs.py: contexts drawn with
    replacement per text, records shuffled, each repeated --nsamples-perpair
    times in the manifest; but seeded. Appends only pairs whose prompt_id is
    new, in one commit; a pair drawn twice stays twice in the manifest (two
    groups) and is one row in the table.
    """
    from ttspo.builder.prompts.draw import PairCounts

    paths = {param: opts[param] for _, param in INPUT_FILES}
    counts = PairCounts(
        audio_per_challenging=opts["audio_contexts_per_challenging"],
        text_per_challenging=opts["text_contexts_per_challenging"],
        audio_per_regular=opts["audio_contexts_per_regular"],
        text_per_regular=opts["text_contexts_per_regular"],
    )
    result, staged, records = get_store(ctx).prompts(
        **paths, counts=counts, seed=opts["seed"], manifest_out=opts["manifest_out"],
        nsamples_perpair=opts["nsamples_perpair"], lineage=lineage_for(ctx))
    _report(records, result, staged, opts["nsamples_perpair"])


def _report(records, result, staged, nsamples: int) -> None:
    audio = sum(1 for r in records if "context_audio_filepath" in r)
    challenging = sum(1 for r in records if r["record_type"] == "challenging")
    click.echo(f"drew {result.pairs} pairs: {challenging} challenging, "
               f"{result.pairs - challenging} regular; {audio} with audio context, "
               f"{result.pairs - audio} with text context")
    where = f"version {result.version}" if result.version is not None else "no new version"
    click.echo(f"prompts: {result.new} new rows ({result.duplicates} repeated pairs in this draw, "
               f"{result.already_present} already in the table) -> {where}")
    if staged is not None:
        click.echo(f"manifest: {staged.path} ({staged.lines} lines, {nsamples} per pair)")


COMMANDS = [prompts]
