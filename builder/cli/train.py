"""`ttspo train dpo`, `ttspo train precompute-ref`, `ttspo train grpo` (thin over ttspo.trainer).

The same run under torchrun: ``torchrun --nproc-per-node N -m ttspo.trainer dpo ...``
(trainer/__main__.py takes the same options).
"""

from __future__ import annotations

import click

from ttspo.builder.cli.common import get_store, lineage_for

SHOWN = ("loss/total", "rewards/accuracies", "rewards/margins", "rewards/chosen",
         "rewards/rejected", "grad_norm")


@click.group()
def train() -> None:
    """Train a policy: offline on a preference set (DPO, IPO, RPO), or online (GRPO)."""


@train.command("dpo")
@click.argument("set_ref", metavar="SET[@VERSION|@TAG]")
@click.option("--policy", "spec", default="tiny", show_default=True,
              help="Policy from the registry (tiny; nemo:PATH when installed).")
@click.option("--init", type=click.Path(dir_okay=False),
              help="Start from this checkpoint (also the reference). Default: a fresh policy "
                   "of policy.model's size, seeded by train.seed.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="YAML config (sections policy, data, loss, optim, train).")
@click.option("-o", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config key, e.g. -o optim.lr=1e-4 -o loss.sft_weight=0.1.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Run folder: checkpoints, metrics, config. An existing run there resumes.")
@click.pass_context
def dpo(ctx: click.Context, set_ref: str, spec: str, init: str | None, config_file: str | None,
        overrides: tuple[str, ...], out: str) -> None:
    """Train on SET's train split with DPO/IPO/RPO; validate on its val split.

    Reads the set version and the generations version it was built from; uses
    the ref_logps table when precompute-ref made it for this set version, --init
    and policy config, else a live reference. Checkpoints go to OUT/checkpoints and to the
    store's checkpoints table; metrics to OUT/metrics.jsonl and OUT/tb.
    """
    from ttspo.trainer.config import load_config
    from ttspo.trainer.loop import train_dpo

    cfg = load_config(config_file, overrides)
    result = train_dpo(get_store(ctx).core, set_ref, cfg=cfg, out=out, spec=spec, init=init,
                       lineage=lineage_for(ctx), echo=click.echo)
    for name, metrics in (("first", result.first), ("last", result.last)):
        if metrics:
            click.echo(f"{name} step {metrics['step']}: " + ", ".join(
                f"{k} {metrics[k]:.4g}" for k in SHOWN if k in metrics))
    if result.val:
        click.echo(f"val at step {result.val['step']}: " + ", ".join(
            f"{k} {v:.4g}" for k, v in result.val.items() if k != "step"))
    for row in result.checkpoints:
        click.echo(f"checkpoint {row['kind']} step {row['step']}: {row['path']} "
                   f"(sha256 {row['sha256'][:12]})")


@train.command("precompute-ref")
@click.argument("set_ref", metavar="SET[@VERSION|@TAG]")
@click.option("--policy", "spec", default="tiny", show_default=True, help="Policy from the registry.")
@click.option("--ref", "ref_path", required=True, type=click.Path(dir_okay=False),
              help="The reference checkpoint (the --init of the training runs that use it).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="The YAML config the training runs take: its policy.model loads the policy.")
@click.option("-o", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config key, as for train dpo (e.g. -o policy.model.dropout=0.1).")
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


GRPO_SHOWN = ("reward/mean", "advantage/std", "groups/valid_fraction", "kl", "entropy",
              "rollouts_per_second")


@train.command("grpo")
@click.option("--policy", "spec", default="tiny", show_default=True,
              help="Policy from the registry (tiny; nemo:PATH when installed).")
@click.option("--init", type=click.Path(dir_okay=False),
              help="Start from this checkpoint (also the KL reference). Default: a fresh policy.")
@click.option("--prompts", "prompts_ref", default=None, metavar="prompts[@VERSION|@TAG]",
              help="Prompts table version or tag (sets grpo.prompts).")
@click.option("--where", default=None, metavar="SQL",
              help="DuckDB condition on prompts: train on matching prompts (sets grpo.where).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="YAML config (sections policy, optim, train, grpo ...).")
@click.option("-o", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config key, e.g. -o grpo.n_generations_per_item=4.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Run folder: checkpoints, metrics, config. An existing run there resumes.")
@click.pass_context
def grpo(ctx: click.Context, spec: str, init: str | None, prompts_ref: str | None,
         where: str | None, config_file: str | None, overrides: tuple[str, ...], out: str) -> None:
    """Online GRPO on the store's prompts: sample N per prompt, decode, score in-process,
    reward, update. Every sample lands in the rollouts table (batched commits, with
    lineage); checkpoints in OUT/checkpoints and the checkpoints table; metrics in
    OUT/metrics.jsonl and OUT/tb. Killed, the same command resumes."""
    from ttspo.trainer.config import load_config
    from ttspo.trainer.grpo import train_grpo

    extra = ([f"grpo.prompts={prompts_ref}"] if prompts_ref else []) + \
        ([f"grpo.where={json_string(where)}"] if where else [])
    cfg = load_config(config_file, [*overrides, *extra])
    result = train_grpo(get_store(ctx).core, cfg=cfg, out=out, spec=spec, init=init,
                        lineage=lineage_for(ctx), echo=click.echo)
    for name, metrics in (("first", result.first), ("last", result.last)):
        if metrics:
            click.echo(f"{name} step {metrics['step']}: " + ", ".join(
                f"{k} {metrics[k]:.4g}" for k in GRPO_SHOWN if k in metrics))
    if result.val:
        click.echo(f"val at step {result.val['step']}: " + ", ".join(
            f"{k} {v:.4g}" for k, v in result.val.items() if k != "step"))
    click.echo(f"rollouts: {result.rollout_commits} commit(s)"
               + (f", {result.skipped_rows} row(s) already stored" if result.skipped_rows else ""))
    for row in result.checkpoints:
        click.echo(f"checkpoint {row['kind']} step {row['step']}: {row['path']} "
                   f"(sha256 {row['sha256'][:12]})")


def json_string(text: str) -> str:
    """TEXT as a YAML scalar that stays a string (an override value is parsed as YAML)."""
    import json

    return json.dumps(text)


COMMANDS = [train]
