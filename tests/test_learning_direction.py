"""The trainer learns what the preferences say, and the opposite of the reversed ones.

From a fresh tiny policy's own samples (``generate``), each training group's samples
are scored by one measurable property, their length (``codes_len``: the ``cer`` column
holds it scaled to [0, 1], so the stock ``best_worst`` recipe pairs the shortest
against the longest; reversed, the longest against the shortest). After a short run,
held-out prompts are sampled with the same per-sample seeds by the initial and the
trained policy, and ``ttspo compare held-init RUN --metric codes_len:lower`` (the
prompt's samples averaged, prompts paired, a seeded bootstrap interval) must put the
95% interval of the length change on the preferred side of 0. A chosen/rejected swap
anywhere in the data path, or a sign error in a loss, moves the policy the other way
and fails. GRPO with the ``length`` reward must raise its held-out mean reward (a
function of codes_len that compare has no column for: SQL, samples paired by seed; a
sign error in the advantage lowers it). Slow: fixed seeds; the file about a minute of
CPU on 2 cores, one test alone 25-45 s (docs/vs-nemo.md).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner

from grpo_helpers import CORPUS
from ttspo import Store
from ttspo.builder.cli.main import cli
from ttspo.builder.core.schemas import GEN, GENERATIONS_SCHEMA, PROMPT, PROMPTS_SCHEMA
from ttspo.builder.core.store import make_lineage
from ttspo.trainer.dpo.loop import make_policy
from ttspo.trainer.run import checkpoints as ckpt
from ttspo.trainer.run.config import load_config

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

TRAIN_PROMPTS, HELD_OUT = 32, 10
SAMPLES, HELD_OUT_SAMPLES = 6, 4
MAX_STEPS = 40  # frames: a fresh policy ends a sample (any codebook draws EOS) after ~30
POLICY = {"max_text_len": 128, "max_frames": 112}  # 64 context frames + 40 + BOS, EOS
WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima".split()
T_95 = {40: 2.021}  # Student t, two-sided 95%, 39 degrees of freedom
QUIET = ["train.progress=false", "train.tensorboard=false", "train.val_every=0"]


def prompts(store: Store) -> None:
    rng = np.random.default_rng(0)
    contexts = [json.loads(x) for x in (CORPUS / "audio_contexts.jsonl").read_text().splitlines() if x]
    rows = []
    for i in range(TRAIN_PROMPTS + HELD_OUT):
        c = contexts[i % len(contexts)]
        rows.append({PROMPT.prompt_id: f"p{i:02d}", PROMPT.text: " ".join(rng.choice(WORDS, 4)),
                     PROMPT.record_type: "regular", PROMPT.context_type: "audio",
                     PROMPT.context_audio_filepath: str(CORPUS / c["context_audio_filepath"]),
                     PROMPT.context_audio_duration: c["context_audio_duration"],
                     PROMPT.context_audio_codes_path: str(CORPUS / c["context_audio_codes_path"]),
                     PROMPT.position: i})
    store.core.write("prompts", pa.Table.from_pylist(rows, PROMPTS_SCHEMA), PROMPTS_SCHEMA,
                     make_lineage("prompts", {}))


AUDIO = None  # set by the fixture: where generate writes audio
TRAIN_WHERE = f"position < {TRAIN_PROMPTS}"
HELD_WHERE = f"position >= {TRAIN_PROMPTS}"


def fresh(d):
    """A store with prompts and a fresh policy's checkpoint."""
    store = Store(d / "store")
    prompts(store)
    cfg = load_config(None, [f"policy.model.{k}={v}" for k, v in POLICY.items()])
    init = d / "init.pt"
    make_policy("tiny", None, cfg, 0).save(init)
    return store, init


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A store with prompts, a fresh policy's checkpoint, and its samples of the train prompts."""
    global AUDIO
    d = tmp_path_factory.mktemp("direction")
    AUDIO = d / "audio"
    store, init = fresh(d)
    store.generate(run="base", checkpoint=init, samples=SAMPLES, where=TRAIN_WHERE,
                   max_steps=MAX_STEPS, temperature=1.0, seed=1, audio_dir=AUDIO)
    store.generate(run="held-init", checkpoint=init, samples=HELD_OUT_SAMPLES, where=HELD_WHERE,
                   max_steps=MAX_STEPS, temperature=1.0, seed=2, audio_dir=AUDIO)
    return {"dir": d, "store": store, "init": init}


def preference_set(store: Store, name: str, *, shorter: bool) -> str:
    """A best_worst set over the base samples preferring the shorter (or longer) one."""
    table = store.core.open("generations").to_table()
    lens = np.asarray(table[GEN.codes_len].to_pylist(), dtype=float)
    # The recipe reads the base run only (runs=); a group with an empty sample (EOS
    # first: no codes to train on) is skipped, as the recipe skips a group with an
    # invalid sample (compare leaves invalid rows out too: held-out ones stay valid).
    empty = lens == 0
    metric = lens / MAX_STEPS if shorter else 1.0 - lens / MAX_STEPS
    table = (table.set_column(table.schema.get_field_index(GEN.cer), GEN.cer, pa.array(metric))
             .set_column(table.schema.get_field_index(GEN.ssim), GEN.ssim,
                         pa.array(np.full(len(lens), 0.5)))
             .set_column(table.schema.get_field_index(GEN.invalid), GEN.invalid,
                         pa.array(empty)))
    audio = GENERATIONS_SCHEMA.field(GEN.audio)  # a blob reads back as its position; none
    table = table.set_column(table.schema.get_field_index(GEN.audio), audio,  # is embedded
                             pa.nulls(table.num_rows, audio.type))
    store.core.write("generations", table.cast(GENERATIONS_SCHEMA), GENERATIONS_SCHEMA,
                     make_lineage("test: score by length", {"shorter": shorter}), mode="overwrite")
    store.build("best_worst", name=name, runs=["base"],
                params={"cer_threshold": 2.0, "min_duration": 0.0, "max_duration": 1e9, "seed": 0})
    return name


def compared_lengths(store: Store, run: str) -> tuple[float, float, float]:
    """``ttspo compare held-init RUN --metric codes_len``: the mean paired difference of
    the held-out prompts' lengths (RUN - initial; a prompt's samples averaged first)
    and its seeded 95% bootstrap interval (prompts resampled)."""
    result = CliRunner().invoke(cli, ["--store", str(store.root), "compare", "held-init", run,
                                      "--metric", "codes_len:lower", "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = [r for r in json.loads(result.output) if r["breakdown"] == "all"]
    assert len(rows) == 1 and rows[0]["prompts"] == HELD_OUT, rows
    return rows[0]["diff"], rows[0]["ci_low"], rows[0]["ci_high"]


def trained_lengths(world, set_name: str, run: str, overrides: list[str], steps: int):
    """Train on SET_NAME from the initial policy, sample the held-out prompts, and
    compare their lengths with the initial policy's (:func:`compared_lengths`)."""
    store = world["store"]
    out = world["dir"] / run
    store.train_dpo(set_name, out=out, init=world["init"], echo=lambda *_: None,
                    overrides=[*[f"policy.model.{k}={v}" for k, v in POLICY.items()], *QUIET,
                               f"train.max_steps={steps}", f"train.checkpoint_every={steps}",
                               "data.pairs_per_device=4", *overrides])
    final = out / "checkpoints" / f"step_{steps:06d}" / ckpt.POLICY_FILE
    store.generate(run=run, checkpoint=final, samples=HELD_OUT_SAMPLES, where=HELD_WHERE,
                   max_steps=MAX_STEPS, temperature=1.0, seed=2, audio_dir=AUDIO)
    return compared_lengths(store, run)


def interval(d: np.ndarray) -> tuple[float, float]:
    """95% paired t interval of the mean difference."""
    half = T_95[len(d)] * d.std(ddof=1) / math.sqrt(len(d))
    return d.mean() - half, d.mean() + half


SETTINGS = {  # loss: (overrides, steps); see docs/vs-nemo.md for why these
    "dpo": (["loss.terms=dpo=1", "loss.beta=0.1", "optim.lr=1e-3"], 25),
    # ipo at beta 0.1 on per-token means, with the on-policy last frame: see vs-nemo.md
    "ipo-length-normalize": (["loss.terms=ipo=1", "loss.beta=0.1", "loss.length_normalize=true",
                              "data.eos_target=sampled", "optim.lr=1e-3"], 25),
    "rpo": (["loss.terms=rpo=1", "loss.beta=0.1", "loss.gt_reward_scale=10", "optim.lr=2e-3"], 25),
}


@pytest.mark.parametrize("loss", list(SETTINGS))
def test_preferences_move_held_out_lengths_their_way(world, loss):
    overrides, steps = SETTINGS[loss]
    store = world["store"]
    shorter = preference_set(store, f"short-{loss}", shorter=True)
    d, lo, hi = trained_lengths(world, shorter, f"{loss}-short", overrides, steps)
    assert hi < 0, f"{loss}: preferring shorter moved lengths by {d:+.2f} [{lo:+.2f}, {hi:+.2f}]"
    longer = preference_set(store, f"long-{loss}", shorter=False)
    d, lo, hi = trained_lengths(world, longer, f"{loss}-long", overrides, steps)
    assert lo > 0, f"{loss}: preferring longer moved lengths by {d:+.2f} [{lo:+.2f}, {hi:+.2f}]"


# GRPO: a smaller fresh policy (as tests/test_grpo.py's), learning rate 3e-3, 40 steps
# of 4 prompts x 6 samples, length target 8 frames, NeMo's last-frame target; see
# docs/vs-nemo.md for why these (the default policy at target 16 did not move).
GRPO = {"steps": 40, "lr": 3e-3, "target": 8}
GRPO_POLICY = {**POLICY, "d_model": 32, "n_heads": 2, "encoder_layers": 1, "decoder_layers": 1,
               "d_ffn": 64}


def held_out_length_reward(store: Store, run: str, base: str) -> np.ndarray:
    """The `length` reward (1 - |frames - target| / target, floored at 0; invalid, 0: a
    sample under 4 frames or at the step limit) of RUN's held-out samples, minus BASE's
    with the same seeds: one paired difference per (prompt, sample)."""
    reward = (f"CASE WHEN {{g}}.codes_len >= {MAX_STEPS - 1} OR {{g}}.codes_len < 4 THEN 0.0 "
              f"ELSE greatest(0.0, 1 - abs({{g}}.codes_len - {GRPO['target']}) / {GRPO['target']}) END")
    diff = store.sql(
        f"SELECT {reward.format(g='t')} - {reward.format(g='i')} AS d FROM generations t "
        "JOIN generations i USING (prompt_id, sample_index) "
        "WHERE t.run = $run AND i.run = $base", run=run, base=base)
    return diff["d"].to_numpy().astype(float)


def test_grpo_with_the_length_reward_raises_held_out_reward(world):
    store, steps, d = world["store"], GRPO["steps"], world["dir"]
    model = [f"policy.model.{k}={v}" for k, v in GRPO_POLICY.items()]
    init = d / "grpo-init.pt"
    make_policy("tiny", None, load_config(None, model), 0).save(init)
    held = dict(samples=HELD_OUT_SAMPLES, where=HELD_WHERE, max_steps=MAX_STEPS, temperature=1.0,
                seed=2, audio_dir=AUDIO)
    store.generate(run="grpo-held-init", checkpoint=init, **held)
    result = store.train_grpo(out=d / "grpo", init=init, echo=lambda *_: None,
                              overrides=[*model, *QUIET, f"train.max_steps={steps}",
                                         f"train.checkpoint_every={steps}", f"optim.lr={GRPO['lr']}",
                                         "grpo.prompts_per_step=4", f"grpo.where={TRAIN_WHERE}",
                                         "grpo.rewards=length=1", f"grpo.length_target={GRPO['target']}",
                                         f"grpo.max_decoder_steps={MAX_STEPS}",
                                         "grpo.temperature=1.0", "grpo.topk=0",  # a fresh policy is near
                                         "grpo.store_audio=false"])  # uniform: top-80 would cut EOS
    assert result.steps == steps
    final = d / "grpo" / "checkpoints" / f"step_{steps:06d}" / ckpt.POLICY_FILE
    store.generate(run="grpo-held", checkpoint=final, **held)
    diff = held_out_length_reward(store, "grpo-held", "grpo-held-init")
    lo, hi = interval(diff)
    assert lo > 0, f"held-out length reward moved by {diff.mean():+.3f} [{lo:+.3f}, {hi:+.3f}]"
