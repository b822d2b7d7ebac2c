"""`ttspo generate`: sample a checkpoint into generations (thin over
ttspo.trainer.generate.run); `ttspo compare` is the builder's (builder/cli/compare.py)."""

from __future__ import annotations

import click

from ttspo.builder.cli.common import FiniteFloat, emit, format_option, get_store, lineage_for

# Guidance far past any useful value (NeMo's default is 2.5); larger scales only
# push the guided logits toward float32 overflow.
CFG_SCALE_MAX = 100
GENERATE_COLUMNS = ["run", "version", "rows", "prompts", "already_there", "ranks", "score_failed",
                    "sampling_s", "decoding_s", "scoring_s", "writing_s"]


@click.command()
@click.option("--run", required=True, help="Name of the run the rows are written as.")
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False),
              help="The policy weights file to sample from.")
@click.option("--policy", default="tiny", show_default=True,
              help="Which policy reads the checkpoint: tiny, or nemo:MODEL.nemo[,codec=CODEC.nemo] (extra nemo).")
@click.option("--samples", type=click.IntRange(min=1), default=4, show_default=True,
              help="Samples per prompt.")
@click.option("--prompts", "prompts_ref", default="prompts", show_default=True,
              help="The prompts version to read: prompts, prompts@VERSION, prompts@TAG.")
@click.option("--where", default=None, metavar="SQL",
              help="DuckDB condition on the prompts: generate for matching prompts only.")
@click.option("--temperature", type=FiniteFloat(min=0), default=1.0, show_default=True,
              help="Sampling temperature (0: argmax).")
@click.option("--top-k", type=click.IntRange(min=0), default=0, show_default=True,
              help="Sample among the k likeliest codes (0: all).")
@click.option("--cfg-scale", type=FiniteFloat(0, CFG_SCALE_MAX), default=1.0,
              show_default=True,
              help="Classifier-free guidance scale (1: off; 0: the unconditional branch alone).")
@click.option("--max-steps", type=click.IntRange(min=1), default=430, show_default=True,
              help="Frames before a sample counts as unfinished.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Sample k of prompt p is seeded by (seed, p, k).")
@click.option("--no-kv-cache", is_flag=True, help="Recompute every step (same codes, slower).")
@click.option("--audio-dir", type=click.Path(file_okay=False),
              help="Write a wav per generation under DIR/RUN/.")
@click.option("--embed-audio", is_flag=True, help="Store the wav bytes as a Lance blob.")
@click.option("--score", "do_score", is_flag=True,
              help="Score on the way (the `ttspo score` backends, in this process).")
@click.option("--metrics", default="cer,wer,ssim", show_default=True,
              help="With --score: the metrics to compute (any of ttspo score --metrics).")
@click.option("--asr", default="pocketsphinx", show_default=True, metavar="BACKEND",
              help="With --score: ASR backend (see ttspo score).")
@click.option("--sv", default="resemblyzer", show_default=True, metavar="BACKEND",
              help="With --score: speaker-embedding backend (see ttspo score).")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True,
              help="Samples per policy batch.")
@format_option
@click.pass_context
def generate(ctx: click.Context, *, run: str, checkpoint: str, policy: str, samples: int,
             prompts_ref: str, where: str | None, temperature: float, top_k: int,
             cfg_scale: float, max_steps: int, seed: int, no_kv_cache: bool,
             audio_dir: str | None, embed_audio: bool, do_score: bool, metrics: str, asr: str,
             sv: str, batch_size: int, fmt: str) -> None:
    """Sample SAMPLES codes per prompt from CHECKPOINT into generations as run RUN.

    Rows carry the codes, the decoded audio (--audio-dir and/or --embed-audio),
    duration, the sampling parameters and the checkpoint's sha256 and its
    `checkpoints` row. Samples the run already has are skipped, so a rerun after
    a crash completes the run; a run made with other weights or sampling is
    refused. Under `torchrun --nproc-per-node N -m ttspo.builder.cli -- --store ST
    generate ...` (the `--` keeps torchrun from reading --run as its --run-path)
    each rank samples its share of the prompts and rank 0 commits once.
    Prints the time spent sampling, decoding, scoring and writing (summed over ranks).
    """
    result = get_store(ctx).generate(
        run=run, checkpoint=checkpoint, policy=policy, samples=samples, prompts=prompts_ref,
        where=where, temperature=temperature, top_k=top_k, cfg_scale=cfg_scale,
        max_steps=max_steps, seed=seed, use_kv_cache=not no_kv_cache, audio_dir=audio_dir,
        embed_audio=embed_audio, score=do_score, metrics=metrics, asr=asr, sv=sv,
        batch_size=batch_size, lineage=lineage_for(ctx))
    if result.rank == 0:
        emit([result.summary()], fmt, GENERATE_COLUMNS)


COMMANDS = [generate]
