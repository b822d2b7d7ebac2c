"""Lineage of training runs, read back from what they wrote (checkpoint rows, meta.json,
the run folder, rollouts), and conditioning dropout drawn once per DPO pair."""

from __future__ import annotations

import sys
from pathlib import Path

import pyarrow as pa
import pytest
import torch

import ttspo
from ttspo.builder.core.errors import TrainingError
from ttspo.builder.core.store import Store, make_lineage
from ttspo.trainer.run import checkpoints as ckpt
from ttspo.trainer.dpo.data import Pairs, load_pairs
from ttspo.trainer.policy.base import load_policy
from ttspo.trainer.dpo.forward import concatenated_forward
from ttspo.trainer.dpo.ref import compute
from ttspo.trainer.run.folder import read_lineage, read_metrics
from train_helpers import SET, TINY, pattern_store, tiny_overrides

sys.path.insert(0, str(Path(__file__).parent))
from grpo_helpers import TINY as GRPO_TINY, make_prompts  # noqa: E402

QUICK = {"train.max_steps": 2, "train.val_every": 0, "data.pairs_per_device": 4}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture()
def store(tmp_path):
    return pattern_store(tmp_path / "store", groups=24, val_size=8)


def quiet(*_):
    pass


def written_lineage(store, out: Path) -> tuple[dict, dict, list[dict]]:
    """The lineage of the run's last checkpoint row, of its meta.json, and its run folder's."""
    row = store.versions("checkpoints")[-1]["lineage"]
    meta = ckpt.read_meta(ckpt.latest_checkpoint(out))["lineage"]
    return row, meta, read_lineage(out)


# ---------------------------------------------------------------------- DPO
def test_dpo_lineage_names_the_ref_logps_version_it_used_or_a_live_reference(store, tmp_path):
    init = tmp_path / "init.pt"
    torch.manual_seed(4)
    load_policy("tiny", config=TINY).save(str(init))
    api = ttspo.Store(store.root)
    live = api.train_dpo(SET, out=tmp_path / "live", init=init, overrides=tiny_overrides(**QUICK),
                         echo=quiet)
    row, meta, folder = written_lineage(store, tmp_path / "live")
    assert live.reference == "live" and row["command"] == "train dpo"
    for lineage in (row, meta, folder[0]["lineage"]):
        assert lineage["inputs"] == {SET: 1, "generations": 1}  # no ref_logps read
        assert lineage["reference"] == "live"
    version = api.precompute_ref(SET, ref=init, overrides=tiny_overrides(**QUICK))["version"]
    cached = api.train_dpo(SET, out=tmp_path / "cached", init=init,
                           overrides=tiny_overrides(**QUICK), echo=quiet)
    row, meta, folder = written_lineage(store, tmp_path / "cached")
    assert cached.reference == "cached"
    for lineage in (row, meta, folder[0]["lineage"]):
        assert lineage["inputs"] == {SET: 1, "generations": 1, "ref_logps": version}
        assert lineage["reference"] == "cached"
        assert lineage["args"]["init"] == str(init)  # the API's own record, not an empty one
    assert [line["start_step"] for line in folder] == [0]
    # A resumed run adds its own line (it may read other versions than the first start)
    more = tiny_overrides(**{**QUICK, "train.max_steps": 3})
    api.train_dpo(SET, out=tmp_path / "cached", init=init, overrides=more, echo=quiet)
    assert [line["start_step"] for line in read_lineage(tmp_path / "cached")] == [0, 2]


# --------------------------------------------------------------------- GRPO
GRPO = [f"policy.model.{k}={v}" for k, v in GRPO_TINY.items()] + [
    "train.progress=false", "train.tensorboard=false", "train.val_every=0",
    "grpo.rewards=length=1", "grpo.length_target=3", "grpo.max_decoder_steps=8",
    "grpo.min_valid_codes_len=1", "grpo.store_audio=false", "grpo.prompts_per_step=1",
    "grpo.n_generations_per_item=2", "train.max_steps=1",
    "grpo.where=prompt_id IN (SELECT prompt_id FROM picked)"]
PICKED = pa.schema([pa.field("prompt_id", pa.string())])


def test_grpo_from_the_api_records_its_command_and_every_table_its_prompts_read(tmp_path):
    core = Store(tmp_path / "st")
    make_prompts(core, 3)
    pick = lambda ids: core.write("picked", pa.table({"prompt_id": ids}, schema=PICKED), PICKED,
                                  make_lineage("test", {}))
    pick(["p0", "p2"])
    out = tmp_path / "run"
    ttspo.Store(core.root).train_grpo(out=out, overrides=GRPO, echo=quiet)
    row, meta, folder = written_lineage(core, out)
    rollouts = core.versions("rollouts")[-1]["lineage"]
    for lineage in (row, meta, rollouts, folder[0]["lineage"]):
        assert lineage["command"] == "train grpo"
        assert lineage["inputs"] == {"prompts": 1, "picked": 1}
        assert lineage["where"] == "prompt_id IN (SELECT prompt_id FROM picked)"
        assert lineage["prompts"] == "prompts@1" and lineage["run"] == "run"
    assert row["args"]["overrides"] == GRPO
    # The selection read `picked`: a resume over another version of it is another run.
    pick(["p1"])
    with pytest.raises(TrainingError, match=f"{out} holds another run \\(where_inputs\\."):
        ttspo.Store(core.root).train_grpo(out=out, overrides=GRPO, echo=quiet)


def test_grpo_without_a_lineage_records_a_command(tmp_path):
    from ttspo.trainer.run.config import load_config
    from ttspo.trainer.grpo.loop import train_grpo

    core = Store(tmp_path / "st")
    make_prompts(core, 2)
    overrides = [o for o in GRPO if not o.startswith("grpo.where")]
    train_grpo(core, cfg=load_config(None, overrides), out=tmp_path / "run", echo=quiet)
    row, meta, _ = written_lineage(core, tmp_path / "run")
    assert row["command"] == meta["command"] == "train grpo"
    assert row["inputs"] == meta["inputs"] == {"prompts": 1}


# ------------------------------------------------------ cfg dropout per pair
def twin_pairs(store, n: int) -> Pairs:
    """N pairs whose rejected row is a copy of its chosen row: equal log-probs exactly
    when both rows get the same conditioning."""
    pairs = load_pairs(store, SET)
    rows = pairs.chosen[:n]
    return Pairs(set_name=pairs.set_name, set_version=pairs.set_version,
                 generations_version=pairs.generations_version, prompts_version=None,
                 pair_ids=pairs.pair_ids[:n], split=pairs.split[:n], chosen=rows,
                 rejected=[dict(r) for r in rows], chosen_reward=pairs.chosen_reward[:n],
                 rejected_reward=pairs.rejected_reward[:n])


def test_cfg_dropout_draws_once_per_pair_and_the_reference_never_drops(store):
    torch.manual_seed(0)
    policy = load_policy("tiny", config={**TINY, "cfg_dropout": 0.5})
    pairs = twin_pairs(store, 24)
    idx = range(len(pairs))
    kept_c, kept_r = compute(policy, pairs)  # the reference's pass: eval mode
    assert policy.training  # compute put it back
    assert torch.equal(torch.from_numpy(kept_c), torch.from_numpy(kept_r))
    with torch.no_grad():
        chosen, rejected = concatenated_forward(policy, policy, pairs, idx)[:2]  # training: dropout on
    assert torch.equal(chosen, rejected)  # both rows of every pair: one draw
    dropped = (chosen != torch.from_numpy(kept_c)).any(dim=1)
    assert 0 < int(dropped.sum()) < len(pairs)  # some pairs lost their conditioning, some not
    again_c, _ = compute(policy, pairs)
    assert (again_c == kept_c).all()  # the reference is deterministic under cfg_dropout


def test_cached_and_live_reference_agree_under_cfg_dropout(store, tmp_path):
    """The live reference runs in eval mode and draws nothing, so a cached and a live
    run draw the same dropout and log the same losses."""
    init = tmp_path / "init.pt"
    torch.manual_seed(5)
    load_policy("tiny", config=TINY).save(str(init))
    overrides = tiny_overrides(**{**QUICK, "train.max_steps": 3,
                                  "policy.model.cfg_dropout": 0.5})
    api = ttspo.Store(store.root)
    live = api.train_dpo(SET, out=tmp_path / "live", init=init, overrides=overrides, echo=quiet)
    api.precompute_ref(SET, ref=init, overrides=overrides)
    cached = api.train_dpo(SET, out=tmp_path / "cached", init=init, overrides=overrides,
                           echo=quiet)
    assert (live.reference, cached.reference) == ("live", "cached")
    losses = lambda run: [(m["step"], m["loss/total"], m["rewards/margins"])
                          for m in read_metrics(tmp_path / run)]
    assert len(losses("live")) == 3
    for a, b in zip(losses("live"), losses("cached"), strict=True):
        assert a[0] == b[0] and a[1:] == pytest.approx(b[1:], rel=1e-5, abs=1e-4)


def test_grpo_where_reading_the_latest_prompts_beside_pinned_ones_records_both(tmp_path):
    """grpo.prompts=prompts@1 with a where over the latest prompts (version 2): both
    versions are inputs, and a resume after prompts changes again is refused."""
    core = Store(tmp_path / "st")
    make_prompts(core, 3)
    make_prompts(core, 4)  # prompts@2
    where = ("grpo.where=prompt_id IN (SELECT prompt_id FROM prompts "
             "WHERE prompt_id IN ('p0', 'p2'))")
    overrides = [o for o in GRPO if not o.startswith("grpo.where=")] + [where, "grpo.prompts=prompts@1"]
    out = tmp_path / "run"
    ttspo.Store(core.root).train_grpo(out=out, overrides=overrides, echo=quiet)
    row, meta, folder = written_lineage(core, out)
    for lineage in (row, meta, folder[0]["lineage"]):
        assert lineage["inputs"] == {"prompts": 1, "prompts@2": 2}
    make_prompts(core, 5)  # prompts@3: the where now reads another version
    with pytest.raises(TrainingError, match=f"{out} holds another run \\(where_inputs\\."):
        ttspo.Store(core.root).train_grpo(out=out, overrides=overrides, echo=quiet)
