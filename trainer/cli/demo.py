"""`ttspo demo`: the workflow on the bundled corpus (thin over ttspo.trainer.demo.run)."""

from __future__ import annotations

import click




@click.command()
@click.option("--store", "store_dir", type=click.Path(file_okay=False),
              default="ttspo-demo-store", show_default=True,
              help="Store folder for the demo (its own, so a real store is never touched). "
                   "Re-running on it is safe: nothing new is written.")
def demo(store_dir: str) -> None:
    """Run ttspo on the bundled demo corpus and say what each step does.

    The corpus: 20 text-context pairs x 6 espeak-ng generations in NeMo's layout,
    with real failures (dropped, repeated, truncated words, another speaker, long
    pauses), codec codes, and metrics from pocketsphinx and Resemblyzer. The demo
    copies it into STORE/demo, then runs prompts, ingest nemo, SQL summaries,
    score (a slice, re-scored), build pareto, tag, export nemo, train
    precompute-ref and 30 train dpo steps, a rebuild at another threshold and
    diff, two train grpo steps with the rollouts by SQL, and last generate (base
    and trained policy, held-out prompts) and compare, printing the equivalent
    ttspo command of each step.
    """
    from ttspo.trainer.demo.run import run_demo

    run_demo(store_dir, echo=click.echo)


COMMANDS = [demo]
