"""`ttspo train dpo`, `ttspo train precompute-ref`, `ttspo train grpo` (thin over ttspo.trainer).

The same run under torchrun: ``torchrun --nproc-per-node N -m ttspo.trainer dpo ...``
(trainer/__main__.py takes the same options).
"""

from __future__ import annotations

import click

from ttspo.builder.cli.common import get_store, lineage_for
from ttspo.trainer.train_options import (DPO_OPTIONS, DPO_SHOWN, GRPO_OPTIONS, GRPO_SHOWN,
                                         PRECOMPUTE_OPTIONS, SET_METAVAR, Option, grpo_overrides,
                                         result_lines)


@click.group()
def train() -> None:
    """Train a policy: offline on a preference set (DPO, IPO, RPO), or online (GRPO)."""


def options(specs: tuple[Option, ...]):
    """Click options made from SPECS (trainer/train_options.py, torchrun's parser's too)."""
    types = {"file": click.Path(dir_okay=False), "dir": click.Path(file_okay=False)}

    def decorate(f):
        for o in reversed(specs):
            f = click.option(o.flag, o.dest, default=o.default, type=types.get(o.path),
                             metavar=o.metavar, required=o.required, multiple=o.multiple,
                             show_default=o.default is not None, help=o.help)(f)
        return f

    return decorate


@train.command("dpo")
@click.argument("set_ref", metavar=SET_METAVAR)
@options(DPO_OPTIONS)
@click.pass_context
def dpo(ctx: click.Context, set_ref: str, spec: str, init: str | None, config_file: str | None,
        overrides: tuple[str, ...], out: str) -> None:
    """Train on SET's train split with DPO/IPO/RPO; validate on its val split.

    Reads the set version and the generations version it was built from; uses
    the ref_logps table when precompute-ref made it for this set version, --init
    and policy config, else a live reference. Checkpoints go to OUT/checkpoints and to the
    store's checkpoints table; metrics to OUT/metrics.jsonl and OUT/tb. The best
    checkpoint: -o train.best_metric=val/accuracy|val/loss|val/margin (auto:
    val/accuracy; train.best_mode auto: min for the loss, else max).
    """
    result = get_store(ctx).train_dpo(set_ref, out=out, policy=spec, init=init,
                                      config=config_file, overrides=overrides,
                                      lineage=lineage_for(ctx), echo=click.echo)
    for line in result_lines(result, DPO_SHOWN):
        click.echo(line)


@train.command("precompute-ref")
@click.argument("set_ref", metavar=SET_METAVAR)
@options(PRECOMPUTE_OPTIONS)
@click.option("--batch-pairs", default=16, show_default=True, type=click.IntRange(min=1))
@click.pass_context
def precompute_ref(ctx: click.Context, set_ref: str, spec: str, ref_path: str,
                   config_file: str | None, overrides: tuple[str, ...], batch_pairs: int) -> None:
    """Compute the reference log-probs of every pair of SET once, per codebook, into the
    ref_logps table keyed by (set, version, sha256 of --ref, sha256 of the policy's
    config). Give the --config and -o of the dpo runs that will use it: a run whose
    policy config differs does not use these rows. Nothing is written when that key
    is already there."""
    summary = get_store(ctx).precompute_ref(set_ref, ref=ref_path, policy=spec,
                                            config=config_file, overrides=overrides,
                                            batch_pairs=batch_pairs, lineage=lineage_for(ctx))
    where = (f"wrote ref_logps@{summary['version']}" if summary["version"] is not None
             else "already in ref_logps; nothing written")
    click.echo(f"{summary['set']}: {summary['pairs']} pairs under reference "
               f"{summary['ref_sha256'][:12]} (policy config {summary['policy_sha256'][:12]}): "
               f"{where}")


@train.command("grpo")
@options(GRPO_OPTIONS)
@click.pass_context
def grpo(ctx: click.Context, spec: str, init: str | None, prompts_ref: str | None,
         where: str | None, config_file: str | None, overrides: tuple[str, ...], out: str) -> None:
    """Online GRPO on the store's prompts: sample N per prompt, decode, score in-process,
    reward, update. Every sample lands in the rollouts table (batched commits, with
    lineage); checkpoints in OUT/checkpoints and the checkpoints table; metrics in
    OUT/metrics.jsonl and OUT/tb. Killed, the same command resumes. The best
    checkpoint: -o train.best_metric=val/cer|val/reward|val/ssim (auto: val/cer, or
    val/reward when the rewards score no CER; train.best_mode auto: min for CER,
    else max)."""
    result = get_store(ctx).train_grpo(out=out, policy=spec, init=init, config=config_file,
                                       overrides=grpo_overrides(overrides, prompts_ref, where),
                                       lineage=lineage_for(ctx), echo=click.echo)
    for line in result_lines(result, GRPO_SHOWN):
        click.echo(line)


COMMANDS = [train]
