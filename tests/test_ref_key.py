"""The reference cache's key includes the policy's config: rows computed under one
config are never used under another, rows from before the key had it never match,
and `train precompute-ref` takes the Config `train dpo` takes (--config, -o)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
import torch
from click.testing import CliRunner

import ttspo
from ttspo.builder.cli.main import cli
from ttspo.builder.core.errors import TrainingError
from ttspo.builder.core.files import file_sha256
from ttspo.builder.core.schemas import REF, REF_LOGPS_SCHEMA
from ttspo.builder.core.store import make_lineage
from ttspo.trainer.run.config import load_config
from ttspo.trainer.dpo.data import load_pairs
from ttspo.trainer.dpo.loop import train_dpo
from ttspo.trainer.policy.base import load_policy
from ttspo.trainer.dpo.ref import lookup
from train_helpers import SET, TINY, pattern_store, tiny_overrides

QUICK = {"train.max_steps": 1, "train.val_every": 0, "data.pairs_per_device": 4}
A = tiny_overrides(**QUICK)  # the init's own config
B = tiny_overrides(**QUICK, **{"policy.model.cfg_dropout": 0.3})  # same weights file, another config


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture()
def store(tmp_path):
    return pattern_store(tmp_path / "store", groups=24, val_size=8)


def make_init(path, seed: int):
    torch.manual_seed(seed)
    load_policy("tiny", config=TINY).save(str(path))
    return path


def config_sha(overrides, init) -> str:
    model = load_config(None, overrides).policy.model
    return load_policy("tiny", init=str(init), config=model).identity().config_sha256


def quiet(*_):
    pass


def test_a_cache_made_under_one_config_is_not_used_under_another(store, tmp_path):
    init = make_init(tmp_path / "init.pt", 1)
    api = ttspo.Store(store.root)
    summary = api.precompute_ref(SET, ref=init, overrides=A)
    assert summary["version"] is not None and summary["policy_sha256"] == config_sha(A, init)
    assert config_sha(A, init) != config_sha(B, init)  # same file, other config, other key
    rows = store.open("ref_logps").to_table(columns=[REF.policy_sha256]).column(0).to_pylist()
    assert set(rows) == {config_sha(A, init)} and len(rows) == 24
    strict = load_config(None, B + ["train.require_ref_cache=true"])
    with pytest.raises(TrainingError) as err:
        train_dpo(store, SET, cfg=strict, out=tmp_path / "strict", init=str(init), echo=quiet)
    assert str(err.value) == (
        f"no ref_logps for {SET}@1, reference sha256 {file_sha256(init)} and policy config "
        f"sha256 {config_sha(B, init)[:12]}; run 'ttspo train precompute-ref {SET}@1 --ref "
        f"{init}' with this run's --config/-o first")
    other = train_dpo(store, SET, cfg=load_config(None, B), out=tmp_path / "b", init=str(init),
                      echo=quiet)
    same = train_dpo(store, SET, cfg=load_config(None, A), out=tmp_path / "a", init=str(init),
                     echo=quiet)
    assert (other.reference, same.reference) == ("live", "cached")


def old_table(store, pairs, sha: str) -> None:
    """ref_logps as written before the key held the policy config: every pair of the
    key, with log-probs no policy gives (zeros)."""
    old = pa.schema([f for f in REF_LOGPS_SCHEMA if f.name != REF.policy_sha256])
    n = len(pairs)
    zeros = [np.zeros(8, dtype=np.float32)] * n
    table = pa.table({REF.set_name: [pairs.set_name] * n, REF.set_version: [pairs.set_version] * n,
                      REF.ref_sha256: [sha] * n, REF.ref_architecture: ["tiny"] * n,
                      REF.pair_id: pairs.pair_ids, REF.split: pairs.split,
                      REF.chosen_logps: zeros, REF.rejected_logps: zeros}, schema=old)
    store.write("ref_logps", table, old, make_lineage("train precompute-ref", {}))


def test_rows_from_before_the_policy_key_never_match_and_the_table_gains_the_column(store, tmp_path):
    init = make_init(tmp_path / "init.pt", 2)
    sha, policy_sha = file_sha256(init), config_sha(A, init)
    pairs = load_pairs(store, SET)
    old_table(store, pairs, sha)
    assert lookup(store, pairs, sha, policy_sha) is None  # the old table has no such column
    strict = load_config(None, A + ["train.require_ref_cache=true"])
    with pytest.raises(TrainingError, match="no ref_logps for"):
        train_dpo(store, SET, cfg=strict, out=tmp_path / "strict", init=str(init), echo=quiet)
    summary = ttspo.Store(store.root).precompute_ref(SET, ref=init, overrides=A)
    assert summary["version"] == 3  # 1: the old rows, 2: the column, 3: the new rows
    versions = store.versions("ref_logps")
    assert [v["command"] for v in versions] == ["train precompute-ref"] * 3
    assert versions[1]["lineage"]["schema_change"] == (
        "add column policy_sha256 (older rows: null, never used)")
    table = store.open("ref_logps").to_table().to_pylist()
    assert [r[REF.policy_sha256] for r in table] == [None] * 24 + [policy_sha] * 24
    cache = lookup(store, pairs, sha, policy_sha)
    assert cache is not None and cache.version == 3
    assert (cache.chosen < -1).all()  # the policy's log-probs, not the old rows' zeros
    result = train_dpo(store, SET, cfg=strict, out=tmp_path / "run", init=str(init), echo=quiet)
    assert result.reference == "cached"


def test_cli_precompute_ref_takes_the_config_and_overrides_of_train_dpo(store, tmp_path):
    init = make_init(tmp_path / "init.pt", 3)
    config = tmp_path / "dpo.yaml"
    config.write_text(json.dumps({"policy": {"model": TINY}, "data": {"pairs_per_device": 4},
                                  "train": {"max_steps": 1, "val_every": 0, "progress": False,
                                            "tensorboard": False}}))
    extra = ["-o", "policy.model.cfg_dropout=0.3"]
    key = config_sha(B, init)
    run = lambda *args: CliRunner().invoke(cli, ["--store", str(store.root), "train", *args])
    first = run("precompute-ref", SET, "--ref", str(init), "--config", str(config), *extra)
    assert (first.exit_code, first.output) == (0, (
        f"{SET}@1: 24 pairs under reference {file_sha256(init)[:12]} (policy config {key[:12]}): "
        "wrote ref_logps@1\n"))
    lineage = store.versions("ref_logps")[-1]["lineage"]
    assert lineage["command"] == "train precompute-ref"
    assert lineage["args"]["overrides"] == ["policy.model.cfg_dropout=0.3"]
    assert lineage["policy_sha256"] == key and lineage["policy_config"]["cfg_dropout"] == 0.3
    dpo = lambda out, *more: run("dpo", SET, "--init", str(init), "--config", str(config),
                                 *more, "--out", str(tmp_path / out))
    used = dpo("same", *extra)
    assert used.exit_code == 0, used.output
    assert "reference cached" in used.output.splitlines()[0]
    other = dpo("other")  # without the override: another policy config, a live reference
    assert other.exit_code == 0 and "reference live" in other.output.splitlines()[0]
    bad = run("precompute-ref", SET, "--ref", str(init), "-o", "policy.model.d_model=64")
    assert (bad.exit_code, bad.output) == (1, (
        f"Error: {init}: a tiny policy of another size: d_model=32 (expected 64), "
        "n_heads=2 (expected 4), encoder_layers=1 (expected 2), decoder_layers=1 (expected 3), "
        "d_ffn=64 (expected 512), max_text_len=64 (expected 512), max_frames=32 (expected 1024)\n"))


def test_cached_log_probs_are_read_from_the_flat_values_as_numpy_reads_the_lists():
    from ttspo.trainer.dpo.ref import per_codebook

    kind = pa.list_(pa.float32())
    rows = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32).tolist()
    column = pa.chunked_array([pa.array(rows[:2], kind), pa.array(rows[2:], kind).slice(1)])
    expected = np.asarray(column.to_pylist(), dtype=np.float32)
    got = per_codebook(column)
    assert got.dtype == np.float32 and got.shape == (4, 8) and np.array_equal(got, expected)
    with pytest.raises(ValueError):  # rows of unequal length: numpy's error, as before
        per_codebook(pa.chunked_array([pa.array([[1.0, 2.0], [3.0]], kind)]))


def test_the_cache_finds_each_pairs_own_row_in_any_order_and_only_covering_every_pair(
        store, tmp_path):
    """The cache's sorted pair ids (no dict) give each pair of a micro-batch its own
    row, for a split's ids as for a list, and a set with a pair it lacks gets no cache."""
    import dataclasses

    from ttspo.trainer.dpo.data import PairIds
    from ttspo.trainer.dpo.ref import precompute

    init = make_init(tmp_path / "init.pt", 3)
    policy = load_policy("tiny", init=str(init))
    precompute(store, load_pairs(store, SET), policy, init, lineage={"command": "test"})
    key = (file_sha256(init), policy.identity().config_sha256)
    pairs = load_pairs(store, SET, stream=True)
    cache = lookup(store, pairs, *key)
    table = store.open("ref_logps").to_table()
    want = {p: (c, r) for p, c, r in zip(*(table.column(k).to_pylist() for k in (
        REF.pair_id, REF.chosen_logps, REF.rejected_logps)))}
    train = pairs.select("train")
    idx = np.random.default_rng(0).permutation(len(train))[:7]
    for ids in (train.pair_ids, list(train.pair_ids)):
        chosen, rejected = cache.lookup(ids, idx)
        assert chosen.tolist() == [want[train.pair_ids[i]][0] for i in idx]
        assert rejected.tolist() == [want[train.pair_ids[i]][1] for i in idx]
    with pytest.raises(KeyError):
        cache.lookup(["nope", *train.pair_ids], [1, 0])
    lacking = PairIds(pa.array([*list(pairs.pair_ids)[1:], "nope"]))
    assert lookup(store, dataclasses.replace(pairs, pair_ids=lacking), *key) is None
