"""``data.eos_target``: the training target's last frame (issue 20, item 6).

NeMo's target ends every sample with EOS on every codebook, also a sample that ran to
its step limit without drawing EOS (``always``, the default). ``sampled`` gives such a
sample (its rows carry ``eos_drawn`` False) no EOS target: its sequence log-prob is
NeMo's minus exactly its EOS tokens' log-probs, and the rest is untouched. A real tiny
policy; the learning effect is tests/test_learning_direction.py's ipo case.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ttspo.builder.core.errors import ConfigError, InputError
from ttspo.builder.core.schemas import GEN
from ttspo.trainer.dpo.ref import policy_key
from ttspo.trainer.policy.base import CONTEXT_CODES, EOS_DRAWN, sequence_logps, token_logps
from ttspo.trainer.policy.tiny import TinyCodecLM, TinyConfig
from ttspo.trainer.run.config import load_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONFIG = TinyConfig(d_model=32, n_heads=2, encoder_layers=1, decoder_layers=1, d_ffn=64,
                    max_text_len=64, max_frames=32)


def rows(frames=(5, 7), drawn=None) -> list[dict]:
    rng = np.random.default_rng(0)
    out = []
    for i, n in enumerate(frames):
        row = {GEN.generation_id: f"g{i}", GEN.text: "hello", GEN.context_text: None,
               CONTEXT_CODES: None, GEN.codes: rng.integers(0, 256, (8, n))}
        if drawn is not None:
            row[EOS_DRAWN] = drawn[i]
        out.append(row)
    return out


@pytest.fixture(scope="module")
def model() -> TinyCodecLM:
    torch.manual_seed(0)
    return TinyCodecLM(CONFIG).eval()


def test_an_undrawn_eos_is_not_a_target_and_nothing_else_changes(model):
    with torch.no_grad():
        nemo = model.forward_teacher(model.collate(rows()))
        cut = model.forward_teacher(model.collate(rows(drawn=[True, False])))
    # Row 0 drew EOS: 5 codes + EOS per codebook, as NeMo. Row 1 ran to its limit: 7
    # codes and no EOS target (position 7 masked).
    assert cut.mask.sum(-1).tolist() == [[6] * 8, [7] * 8]
    assert nemo.mask.sum(-1).tolist() == [[6] * 8, [8] * 8]
    eos = token_logps(nemo)[1, :, 7]  # the EOS the sampler never drew, per codebook
    assert bool((nemo.labels[1, :, 7] == CONFIG.eos).all()) and bool((eos < 0).all())
    # Only the mask differs, so the sums differ by exactly those terms (same float
    # additions but one: within a few float32 roundings of magnitudes near 60).
    expected = sequence_logps(nemo) - torch.stack([torch.zeros(8), eos])
    assert torch.allclose(sequence_logps(cut), expected, rtol=0, atol=1e-4)
    assert torch.equal(sequence_logps(cut)[0], sequence_logps(nemo)[0])


def test_every_row_says_or_none(model):
    mixed = rows(drawn=[True, False])
    del mixed[0][EOS_DRAWN]
    with pytest.raises(InputError, match=f"g0: no {EOS_DRAWN} while other rows"):
        model.collate(mixed)


def test_the_option_and_the_reference_cache_key(model):
    assert load_config(None, []).data.eos_target == "always"  # NeMo's, the default
    assert load_config(None, ["data.eos_target=sampled"]).data.eos_target == "sampled"
    with pytest.raises(ConfigError, match="data.eos_target"):
        load_config(None, ["data.eos_target=never"])
    # Other targets, other log-probs: a cache made with one is never read for the other;
    # NeMo's keeps the key every cache made before the option has.
    plain = model.identity(with_sha256=False).config_sha256
    assert policy_key(model, "always") == plain != policy_key(model, "sampled")


def test_dpo_pairs_say_which_sample_drew_eos(tmp_path, model):
    """A generation whose codes_len reached its max_steps drew no EOS: with ``sampled``
    its pair row says so, and the DPO step's rejected log-prob loses its EOS terms."""
    from train_helpers import SET, pattern_rows, tiny_overrides

    import pyarrow as pa

    from ttspo.builder.core.schemas import GENERATIONS_SCHEMA
    from ttspo.builder.core.store import Store, make_lineage
    from ttspo.builder.sets.build import build_set
    from ttspo.trainer.dpo.data import load_pairs
    from ttspo.trainer.dpo.loop import make_policy, pair_step

    rows_ = pattern_rows(4, 8, 0)
    for r in rows_:  # every sample 8 frames; the rejected (cer 0.3) ran to its limit of 8
        r[GEN.codes_len], r[GEN.max_steps] = 8, 8 if r[GEN.sample_index] == 1 else 40
    store = Store(tmp_path / "store")
    store.write("generations", pa.Table.from_pylist(rows_, schema=GENERATIONS_SCHEMA),
                GENERATIONS_SCHEMA, make_lineage("test", {}))
    build_set(store, "pareto", SET, {"val_size": 0, "seed": 0})
    nemo = load_pairs(store, SET)
    on_policy = load_pairs(store, SET, eos_target="sampled")
    assert all(EOS_DRAWN not in r for r in nemo.chosen + nemo.rejected)
    assert [r[EOS_DRAWN] for r in on_policy.chosen] == [True] * 4
    assert [r[EOS_DRAWN] for r in on_policy.rejected] == [False] * 4
    streamed = load_pairs(store, SET, eos_target="sampled", stream=True)  # rows read per batch
    chosen, rejected = streamed.rows([0, 1, 2, 3])
    assert [r[EOS_DRAWN] for r in chosen + rejected] == [True] * 4 + [False] * 4
    cfgs = [load_config(None, tiny_overrides(**{"data.eos_target": t})) for t in ("always", "sampled")]
    policy = make_policy("tiny", None, cfgs[0], 0).eval()
    with torch.no_grad():
        _, a = pair_step(policy, policy, None, None, pairs=nemo, idx=[0, 1], cfg=cfgs[0])
        _, b = pair_step(policy, policy, None, None, pairs=on_policy, idx=[0, 1], cfg=cfgs[1])
    assert b["logps/chosen"].item() == a["logps/chosen"].item()
    assert b["logps/rejected"].item() > a["logps/rejected"].item()  # minus 8 EOS log-probs < 0


@pytest.mark.slow
def test_grpo_rollouts_say_which_sample_drew_eos(tmp_path):
    """The same rollout (same seeds) under both targets: the same samples and rewards,
    some of them cut at the step limit, and another gradient (their EOS terms gone)."""
    from click.testing import CliRunner

    from grpo_helpers import TINY, make_prompts
    from ttspo import Store as Api
    from ttspo.builder.cli.main import cli
    from ttspo.builder.core.schemas import RWD
    from ttspo.builder.core.store import Store

    store = Store(tmp_path / "st")
    make_prompts(store, 2)
    grads, tables = {}, {}
    for target in ("always", "sampled"):
        args = ["--store", str(store.root), "train", "grpo", "--out", str(tmp_path / target)]
        for o in [*[f"policy.model.{k}={v}" for k, v in TINY.items()], "train.progress=false",
                  "train.tensorboard=false", "train.val_every=0", "train.max_steps=1",
                  "train.checkpoint_every=0", "grpo.rewards=length=1", "grpo.length_target=8",
                  "grpo.max_decoder_steps=24", "grpo.min_valid_codes_len=1", "grpo.topk=0",
                  "grpo.temperature=1.0", "grpo.store_audio=false", "grpo.n_generations_per_item=8",
                  f"data.eos_target={target}"]:
            args += ["-o", o]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
        grads[target] = json.loads((tmp_path / target / "metrics.jsonl").read_text().splitlines()[0])["grad_norm"]
        tables[target] = Api(store.root).sql(f"SELECT codes_len, {RWD.reward} FROM rollouts WHERE run = '{target}' "
                                   "ORDER BY rollout_id")
    assert tables["always"].equals(tables["sampled"])
    assert (tables["always"]["codes_len"] == 24).any()  # some ran to the limit
    assert grads["always"] != grads["sampled"]
