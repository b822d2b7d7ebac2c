"""The demo's GRPO step: a few online steps with the tiny policy, then the rollouts by SQL."""

from __future__ import annotations

from ttspo.builder.core.store import make_lineage

RUN_DIR = "grpo-run"  # under the demo folder; also the run's name in `rollouts`
OVERRIDES = ["policy.model.d_model=64", "policy.model.n_heads=2", "policy.model.encoder_layers=1",
             "policy.model.decoder_layers=2", "policy.model.d_ffn=128",
             "grpo.where=context_type = 'audio'", "grpo.prompts_per_step=2",
             "grpo.n_generations_per_item=3", "grpo.max_decoder_steps=24",
             "grpo.rewards=cer=0.5,ssim=0.5", "grpo.rollouts_every=2",
             "optim.lr=1e-3", "train.max_steps=2", "train.val_every=0",
             "train.checkpoint_every=0", "train.progress=false", "train.tensorboard=false"]
SUMMARY = f"""SELECT step, count(*) AS samples, round(avg(codes_len), 1) AS frames,
       round(avg(cer), 3) AS mean_cer, round(avg(ssim), 3) AS mean_ssim,
       round(avg(reward), 3) AS mean_reward, round(avg(valid::INT), 2) AS valid
FROM rollouts WHERE run = '{RUN_DIR}' GROUP BY step ORDER BY step"""


def step_grpo(demo) -> None:
    """A few online GRPO steps (sample, decode, score with real ASR/SV, reward, update)."""
    from ttspo.trainer.demo.sets import _table
    from ttspo.trainer.run.config import load_config
    from ttspo.trainer.grpo.loop import train_grpo

    out = demo.corpus / RUN_DIR
    args = ["train", "grpo", "--out", str(out)]
    for o in OVERRIDES:
        args += ["-o", o]
    demo.command(*args)
    before = demo.store.version("rollouts")
    result = train_grpo(demo.store, cfg=load_config(None, OVERRIDES), out=out,
                        lineage=make_lineage("train grpo", {"overrides": OVERRIDES}, demo=True),
                        echo=demo.say)
    if demo.store.version("rollouts") == before:
        demo.say(f"{RUN_DIR} was trained by an earlier demo run; nothing written")
    else:
        demo.say(f"{result.steps} steps; rollouts@{demo.store.version('rollouts')}: every sample "
                 "with its codes, audio, metrics, reward parts, advantage and validity")
    demo.command("sql", " ".join(SUMMARY.split()))
    _table(demo, SUMMARY)
