"""`ttspo demo`, after the set is built: reference log-probs, then a short DPO run.

The tiny policy starts from a fresh seeded init (saved as a checkpoint, so it can be
the reference), its reference log-probs for the tagged set go to ``ref_logps``,
and a few dozen DPO steps train it on the set's train split: the run holds no
reference model. A re-run finds the cache and the finished run and writes nothing.
"""

from __future__ import annotations

from ttspo.trainer.demo.sets import SET, TAG
from ttspo.builder.core.store import make_lineage

# A small TinyCodecLM: the demo's contexts plus targets run to ~300 frames.
MODEL = {"d_model": 64, "n_heads": 2, "encoder_layers": 1, "decoder_layers": 2, "d_ffn": 128,
         "max_text_len": 512, "max_frames": 512}
OVERRIDES = {"optim.lr": 1e-3, "loss.beta": 0.1, "train.max_steps": 30, "train.val_every": 10,
             "train.checkpoint_every": 30, "data.pairs_per_device": 2, "train.progress": False,
             **{f"policy.model.{k}": v for k, v in MODEL.items()}}


def step_train(demo) -> None:
    """Step 4: precompute the reference log-probs, then train the tiny policy with DPO."""
    import torch

    from ttspo.trainer.run.config import load_config
    from ttspo.trainer.dpo.data import load_pairs
    from ttspo.trainer.dpo.loop import read_metrics, train_dpo
    from ttspo.trainer.policy.base import load_policy
    from ttspo.trainer.dpo.ref import precompute

    store, ref = demo.store, f"{SET}@{TAG}"
    folder = store.root / "demo" / "train"
    init = folder / "init.pt"
    if not init.exists():
        torch.manual_seed(0)
        load_policy("tiny", config=MODEL).save(str(init))
    demo.command("train", "precompute-ref", ref, "--policy", "tiny", "--ref", str(init))
    policy = load_policy("tiny", init=str(init))
    pairs = load_pairs(store, ref, encode=policy.codec.encode)
    summary = precompute(store, pairs, policy, init, lineage=_lineage("train precompute-ref"))
    demo.say(f"{summary['pairs']} pairs of {pairs.ref} under reference {summary['ref_sha256'][:12]}: "
             + (f"wrote ref_logps@{summary['version']}" if summary["version"] is not None
                else "already in ref_logps; nothing written"))
    out = folder / "run"
    args = [w for k, v in OVERRIDES.items() for w in ("-o", f"{k}={v}")]
    demo.command("train", "dpo", ref, "--policy", "tiny", "--init", str(init), *args,
                 "--out", str(out))
    cfg = load_config(None, [f"{k}={v}" for k, v in OVERRIDES.items()])
    train_dpo(store, ref, cfg=cfg, out=out, init=str(init), echo=demo.say,
                       lineage=_lineage("train dpo"))
    logged = [m for m in read_metrics(out) if "loss/total" in m]  # a re-run trains nothing
    for name, m in (("start", logged[0]), ("end", logged[-1])) if logged else ():
        if m:
            demo.say(f"{name} (step {m['step']}): loss {m['loss/total']:.4f}, reward accuracy "
                     f"{m['rewards/accuracies']:.2f}, margin {m['rewards/margins']:.3f}, "
                     f"logp chosen {m['logps/chosen']:.1f}, rejected {m['logps/rejected']:.1f}")
    from ttspo.trainer.demo.sets import _table

    demo.say("The checkpoints table: which data made each model, and how it validated:")
    _table(demo, """
        SELECT run, step, kind, substr(sha256, 1, 12) AS sha256, set_name, set_version,
               generations_version, round(val_loss, 4) AS val_loss,
               round(val_accuracy, 3) AS val_accuracy
        FROM checkpoints ORDER BY step, kind""")
    demo.facts["checkpoint"] = str(out / "checkpoints" / f"step_{cfg.train.max_steps:06d}" / "policy.pt")
    demo.facts["init_checkpoint"] = str(init)


def _lineage(command: str):
    return make_lineage(command, {"set": f"{SET}@{TAG}", "overrides": OVERRIDES}, demo=True)
