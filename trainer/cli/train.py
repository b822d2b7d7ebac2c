"""`ttspo train dpo`, `ttspo train precompute-ref`, `ttspo train grpo` (thin over ttspo.Store).

The same commands run under torchrun, one process per rank:
``torchrun --nproc-per-node N -m ttspo.builder.cli -- --store ST train dpo SET --out DIR``
(the ``--`` keeps torchrun from reading the command's options as its own). Rank 0
prints what one process prints; an error is one line from every rank, exit code 1.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

import click

from ttspo.builder.cli.common import get_store, is_rank0, lineage_for

SET_METAVAR = "SET[@VERSION|@TAG]"
DPO_SHOWN = ("loss/total", "rewards/accuracies", "rewards/margins", "rewards/chosen",
             "rewards/rejected", "grad_norm")
GRPO_SHOWN = ("reward/mean", "advantage/std", "groups/valid_fraction", "kl", "entropy",
              "rollouts_per_second")


def policy_option(f):
    return click.option("--policy", "spec", default="tiny", show_default=True,
                        help="Policy from the registry (tiny; nemo:PATH when installed).")(f)


def config_option(help: str):
    return click.option("--config", "config_file", type=click.Path(dir_okay=False), help=help)


def overrides_option(help: str):
    return click.option("-o", "overrides", metavar="KEY=VALUE", multiple=True, help=help)


force_lock_option = click.option(
    "--force-lock", is_flag=True,
    help="Force: take the run folder over from the writer its writer.lock names on another "
         "host (one writer per run folder; a lock of a process gone on this host is taken "
         "over without it). Only when that process is surely gone: two writers corrupt the run.")

out_option = click.option("--out", required=True, type=click.Path(file_okay=False),
                          help="Run folder: checkpoints, metrics, config. An existing run "
                               "there resumes.")


@click.group()
def train() -> None:
    """Train a policy: offline on a preference set (DPO, IPO, RPO), or online (GRPO)."""


@train.command("dpo")
@click.argument("set_ref", metavar=SET_METAVAR)
@policy_option
@click.option("--init", type=click.Path(dir_okay=False),
              help="Start from this checkpoint (also the reference). Default: a fresh policy "
                   "of policy.model's size, seeded by train.seed.")
@config_option("YAML config (sections policy, data, loss, optim, train).")
@overrides_option("Override a config key, e.g. -o optim.lr=1e-4 -o loss.sft_weight=0.1.")
@out_option
@force_lock_option
@click.pass_context
def dpo(ctx: click.Context, *, set_ref: str, spec: str, init: str | None, config_file: str | None,
        overrides: tuple[str, ...], out: str, force_lock: bool) -> None:
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
                                      lineage=lineage_for(ctx), echo=click.echo,
                                      force_lock=force_lock)
    if is_rank0():  # every rank holds the result; one prints it
        for line in result_lines(result, DPO_SHOWN):
            click.echo(line)


@train.command("precompute-ref")
@click.argument("set_ref", metavar=SET_METAVAR)
@policy_option
@click.option("--ref", "ref_path", required=True, type=click.Path(dir_okay=False),
              help="The reference checkpoint (the --init of the training runs that use it).")
@config_option("The YAML config the training runs take: its policy.model loads the policy.")
@overrides_option("Override a config key, as for train dpo (e.g. -o policy.model.dropout=0.1).")
@click.option("--batch-pairs", default=16, show_default=True, type=click.IntRange(min=1))
@click.pass_context
def precompute_ref(ctx: click.Context, *, set_ref: str, spec: str, ref_path: str,
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
@policy_option
@click.option("--init", type=click.Path(dir_okay=False),
              help="Start from this checkpoint (also the KL reference). Default: a fresh policy.")
@click.option("--prompts", "prompts_ref", metavar="prompts[@VERSION|@TAG]",
              help="Prompts table version or tag (sets grpo.prompts).")
@click.option("--where", metavar="SQL",
              help="DuckDB condition on prompts: train on matching prompts (sets grpo.where).")
@config_option("YAML config (sections policy, optim, train, grpo ...).")
@overrides_option("Override a config key, e.g. -o grpo.n_generations_per_item=4.")
@out_option
@force_lock_option
@click.pass_context
def grpo(ctx: click.Context, *, spec: str, init: str | None, prompts_ref: str | None,
         where: str | None, config_file: str | None, overrides: tuple[str, ...], out: str,
         force_lock: bool) -> None:
    """Online GRPO on the store's prompts: sample N per prompt, decode, score in-process,
    reward, update. Every sample lands in the rollouts table (batched commits, with
    lineage); checkpoints in OUT/checkpoints and the checkpoints table; metrics in
    OUT/metrics.jsonl and OUT/tb. Killed, the same command resumes. The best
    checkpoint: -o train.best_metric=val/cer|val/reward|val/ssim (auto: val/cer, or
    val/reward when the rewards score no CER; train.best_mode auto: min for CER,
    else max)."""
    result = get_store(ctx).train_grpo(out=out, policy=spec, init=init, config=config_file,
                                       overrides=grpo_overrides(overrides, prompts_ref, where),
                                       lineage=lineage_for(ctx), echo=click.echo,
                                       force_lock=force_lock)
    if is_rank0():
        for line in result_lines(result, GRPO_SHOWN):
            click.echo(line)


def grpo_overrides(overrides: Sequence[str], prompts_ref: str | None,
                   where: str | None) -> list[str]:
    """OVERRIDES, then the config keys ``--prompts`` and ``--where`` set (they win).
    The condition goes in as a JSON string: an override's value is parsed as YAML, and
    JSON is YAML that stays a string whatever the SQL holds (quotes, colons, "1")."""
    return [*overrides, *([f"grpo.prompts={prompts_ref}"] if prompts_ref else []),
            *([f"grpo.where={json.dumps(where)}"] if where else [])]


def result_lines(result: Any, shown: Sequence[str]) -> list[str]:
    """What a finished DPO or GRPO run prints: first and last logged step (the SHOWN
    metrics), the last validation, GRPO's rollout commits, the checkpoints written."""
    lines = [f"{name} step {metrics['step']}: " + ", ".join(
                 f"{k} {metrics[k]:.4g}" for k in shown if k in metrics)
             for name, metrics in (("first", result.first), ("last", result.last)) if metrics]
    if result.val:
        lines.append(f"val at step {result.val['step']}: " + ", ".join(
            f"{k} {v:.4g}" for k, v in result.val.items() if k != "step"))
    if hasattr(result, "rollout_commits"):  # a GRPO run
        lines.append(f"rollouts: {result.rollout_commits} commit(s)" + (
            f", {result.skipped_rows} row(s) already stored" if result.skipped_rows else ""))
    lines += [f"checkpoint {row['kind']} step {row['step']}: {row['path']} "
              f"(sha256 {row['sha256'][:12]})" for row in result.checkpoints]
    return lines


COMMANDS = [train]
