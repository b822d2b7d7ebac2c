"""`ttspo demo`, last step: close the loop on prompts the policy did not train on.

The base (the fresh init the DPO run started from) and the trained checkpoint each
sample three held-out prompts (no pair in the tagged set's train split), scored on
the way; then ``compare`` says what changed, with intervals. The demo states only
what the interval shows: at this size (a tiny policy, 30 steps, a few prompts) the
honest answer is usually "no difference shown". A re-run finds both runs complete
and writes nothing.
"""

from __future__ import annotations

from ttspo.builder.core.store import make_lineage
from ttspo.trainer.demo.sets import SET, TAG

RUNS = ("demo-base", "demo-dpo")
HELD_OUT_PROMPTS = 3  # the first three by position: keeps the step short


def held_out(limit: int) -> str:
    """The --where of the first LIMIT prompts (by position) the set did not train on."""
    return (f"prompt_id IN (SELECT prompt_id FROM prompts WHERE prompt_id NOT IN "
            f"(SELECT prompt_id FROM \"{SET}@{TAG}\" WHERE split = 'train') "
            f"ORDER BY position LIMIT {limit})")


SAMPLES = 2
MAX_STEPS = 24  # about 1.1 s of audio: enough for the ASR to hear something
TOP_K = 80
NAMES = {"cer": "CER", "wer": "WER", "ssim": "speaker similarity", "pesq": "PESQ",
         "mos": "naturalness (Distill-MOS)", "lead_silence": "leading silence",
         "trail_silence": "trailing silence", "max_pause": "longest pause",
         "speech_ratio": "speech ratio", "speech_seconds": "speech seconds"}
# What the loop's generate --score computes: the recipe's CER/SSIM, naturalness and
# silence (the VAD: so a policy that learned to pad with silence shows it)
LOOP_METRICS = ("cer", "wer", "ssim", "mos", "trail_silence")


def step_loop(demo, *, prompts: int = HELD_OUT_PROMPTS, samples: int = SAMPLES,
              max_steps: int = MAX_STEPS) -> None:
    """Step: sample the base and the trained policy on held-out prompts, score both, compare."""
    from ttspo import Store
    from ttspo.builder.core.render import render_table

    store = Store(demo.store.root)
    audio_dir = demo.store.root / "demo" / "generated"
    for run, key in zip(RUNS, ("init_checkpoint", "checkpoint")):
        checkpoint = demo.facts[key]
        args = {"run": run, "checkpoint": checkpoint, "samples": samples,
                "where": held_out(prompts), "max_steps": max_steps, "top_k": TOP_K, "seed": 0}
        demo.command("generate", "--run", run, "--checkpoint", checkpoint, "--samples",
                     str(samples), "--where", args["where"], "--max-steps", str(max_steps),
                     "--top-k", str(TOP_K), "--audio-dir", str(audio_dir), "--score",
                     "--metrics", ",".join(LOOP_METRICS))
        result = store.generate(**args, audio_dir=audio_dir, score=True, metrics=LOOP_METRICS,
                                lineage=make_lineage("generate", args, demo=True))
        split = ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items())
        demo.say(f"{run}: {result.prompts} held-out prompts lacked samples, "
                 f"{result.rows} generations written"
                 + (f" (generations@{result.version}; {split})" if result.version else
                    " (all there already; nothing written)"))
    demo.command("compare", *RUNS)
    table = store.compare(list(RUNS), seed=0)
    shown = [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()
              if k not in ("run_a", "run_b")} for row in table.to_dicts()]
    demo.echo(render_table(shown, list(shown[0])).rstrip("\n"))
    demo.say()
    for row in table.filter(table["breakdown"] == "all").to_dicts():
        demo.say(verdict(row))
    demo.say("Each run on its own, as a paper's table reports it (mean over the prompts, "
             "95% bootstrap interval):")
    demo.command("compare", *RUNS, "--summary")
    summary = store.compare(list(RUNS), seed=0, summary=True)
    demo.echo(render_table([{k: (round(v, 3) if isinstance(v, float) else v)
                             for k, v in row.items()} for row in summary.to_dicts()],
                           list(summary.columns)).rstrip("\n"))


ALPHA = 0.05  # the test level a claimed difference must also pass


def verdict(row: dict) -> str:
    """One sentence that claims only what the interval and the test show."""
    name, n = NAMES.get(row["metric"], row["metric"]), row["prompts"]
    interval = (f"{row['diff']:+.3f}, 95% CI [{row['ci_low']:+.3f}, {row['ci_high']:+.3f}], "
                f"p = {row['p_value']:.3f}, {n} prompts")
    if row["ci_low"] <= 0 <= row["ci_high"]:
        return f"{name}: no difference shown ({interval}): the interval includes 0."
    # Both must agree: over a handful of prompts a bootstrap interval is as narrow
    # as the few differences it resamples (2 prompts of one sign exclude 0), while
    # the paired permutation test cannot go below 1/2 there.
    if row["p_value"] >= ALPHA:
        return (f"{name}: no difference shown ({interval}): p >= {ALPHA}; over {n} prompts the "
                "interval alone is not evidence.")
    higher = row["diff"] > 0
    if row["better"] == "neither":  # a range, not a direction (speaking rate)
        return (f"{name}: {row['run_b']} is {'higher' if higher else 'lower'} than "
                f"{row['run_a']} ({interval}).")
    better = higher == (row["better"] == "higher")
    return (f"{name}: {row['run_b']} is {'higher' if higher else 'lower'} than {row['run_a']} "
            f"({interval}): {'better' if better else 'worse'} on these prompts.")
