"""`ttspo rewards` (recompute GRPO rewards from stored metrics) and `ttspo rollouts
promote` (rollouts into generations, for the next DPO set): ttspo.trainer.grpo.rollouts."""

from __future__ import annotations

import click

from ttspo.builder.cli.common import FiniteFloat, emit, format_option, get_store, lineage_for
from ttspo.builder.core import metrics as registry


@click.command()
@click.option("--table", "source", default="rollouts", show_default=True, metavar="TABLE[@V]",
              help="rollouts or generations (at a version or tag).")
@click.option("--weights", default="cer=0.5,ssim=0.5", show_default=True,
              help=f"NAME=WEIGHT,... as in grpo.rewards: {', '.join(registry.rewarded())}, "
                   "length, or pkg.mod:fn.")
@click.option("--normalize", type=click.Choice(["none", "group"]), default="none",
              show_default=True,
              help="group: z-score each reward within its group before the weighted sum.")
@click.option("--as", "name", required=True, help="Rewards table to write (a new version).")
@click.option("--plot", default=None, type=click.Path(dir_okay=False),
              help="PNG of the new reward distribution over the one it replaces.")
@click.option("--scale-rewards/--no-scale-rewards", default=True, show_default=True,
              help="Divide advantages by the group std (grpo); dr_grpo does not.")
@click.option("--invalid-reward", type=click.Choice(["zero", "group_min"]), default="zero",
              show_default=True, help="Total of an invalid sample: 0, or its group's minimum.")
@click.option("--mean-cer", type=FiniteFloat(), default=0.1, show_default=True,
              help="CER anchor.")
@click.option("--mean-ssim", type=FiniteFloat(), default=0.6, show_default=True,
              help="SSIM anchor.")
@click.option("--best-ssim", type=FiniteFloat(), default=0.9, show_default=True,
              help="SSIM that earns the full reward.")
@click.option("--length-target", type=FiniteFloat(), default=None,
              help="Frames, for the length reward.")
@click.option("--min-valid-len", type=int, default=4, show_default=True,
              help="Shorter samples (frames) are invalid.")
@click.option("--max-valid-len", type=int, default=429, show_default=True,
              help="Longer samples are invalid (unfinished): max decoder steps - 1.")
@click.option("--best-cer-threshold", type=FiniteFloat(), default=1.0, show_default=True,
              help="A group whose best CER is above this is invalid.")
@click.option("--worst-cer-threshold", type=FiniteFloat(), default=1.0, show_default=True,
              help="A group whose worst CER is above this is invalid.")
@click.option("--limits", default="", metavar="METRIC=MAX,...",
              help="Validity limits as in grpo.limits (e.g. trail_silence=0.5): a sample "
                   "over one is invalid.")
@format_option
@click.pass_context
def rewards(ctx: click.Context, *, source: str, weights: str, normalize: str, name: str,
            plot: str | None, scale_rewards: bool, invalid_reward: str, mean_cer: float,
            mean_ssim: float, best_ssim: float, length_target: float | None,
            min_valid_len: int, max_valid_len: int, best_cer_threshold: float,
            worst_cer_threshold: float, limits: str, fmt: str) -> None:
    """Recompute rewards, validity and advantages from stored metrics, without
    regenerating, as a new version of the rewards table NAME (with lineage)."""
    from ttspo.trainer.grpo.rewards import RewardConfig
    from ttspo.trainer.run.config_rules import parse_terms
    from ttspo.trainer.grpo.rollouts import recompute_rewards

    cfg = RewardConfig(weights=parse_terms(weights, "--weights"), normalize=normalize,
                       scale_rewards=scale_rewards, invalid_reward=invalid_reward,
                       mean_cer=mean_cer, mean_ssim=mean_ssim,
                       best_ssim=best_ssim, length_target=length_target,
                       min_valid_len=min_valid_len, max_valid_len=max_valid_len,
                       limits=parse_terms(limits, "--limits") if limits else {},
                       best_cer_threshold=best_cer_threshold,
                       worst_cer_threshold=worst_cer_threshold)
    result = recompute_rewards(get_store(ctx).core, source=source, cfg=cfg, name=name,
                               lineage=lineage_for(ctx), plot=plot)
    emit([{"table": result.name, "version": result.version, "source": result.source,
           **result.summary}], fmt)


@click.group()
def rollouts() -> None:
    """The rollouts table that `ttspo train grpo` fills (query it with `ttspo sql`)."""


@rollouts.command("promote")
@click.argument("run")
@click.option("--as-run", "as_run", required=True, help="Run name in generations.")
@click.option("--steps", default=None, metavar="A:B", help="Training steps A to B (inclusive).")
@click.option("--all-samples", is_flag=True,
              help="Also invalid samples and samples of invalid groups.")
@format_option
@click.pass_context
def promote(ctx: click.Context, *, run: str, as_run: str, steps: str | None, all_samples: bool,
            fmt: str) -> None:
    """Copy RUN's training rollouts into generations as run AS_RUN (one commit, lineage
    to the rollouts version and steps), so `ttspo build best_worst --run AS_RUN` makes
    the next DPO set from online samples (iterative DPO)."""
    from ttspo.builder.core.errors import InputError
    from ttspo.trainer.grpo.rollouts import promote as run_promote

    span = None
    if steps:
        a, sep, b = steps.partition(":")
        if not (sep and a.strip().isdigit() and b.strip().isdigit()):
            raise InputError(f"--steps '{steps}' is not A:B (two step numbers)")
        span = (int(a), int(b))
    summary = run_promote(get_store(ctx).core, run=run, as_run=as_run, steps=span,
                          valid_only=not all_samples, lineage=lineage_for(ctx))
    emit([summary], fmt)


COMMANDS = [rewards, rollouts]
