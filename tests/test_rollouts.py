"""The rollouts table (batched commits, resume without duplicates) and `ttspo rewards`."""

from __future__ import annotations

import json

import polars as pl
import pyarrow as pa
import pytest
from click.testing import CliRunner

from ttspo.builder.cli.main import cli
from ttspo.builder.core.schemas import GEN, GENERATIONS_SCHEMA, ROLL, ROLLOUTS_SCHEMA, RWD
from ttspo.builder.core.store import Store, make_lineage
from ttspo.trainer.grpo.rewards import RETIRED, REWARDS, RewardConfig, compute_rewards
from ttspo.trainer.grpo.rollouts import RolloutWriter, committed_steps

CFG = RewardConfig(weights={"cer": 0.5, "ssim": 0.5})


def step_rows(run: str, step: int, cers: list[list[float]], cfg: RewardConfig = CFG) -> pa.Table:
    """One step's rollouts, rewarded the way training rewards them."""
    rows = []
    for g, group in enumerate(cers):
        for s, cer in enumerate(group):
            rows.append({ROLL.rollout_id: f"{run}:{step}:train:{g}:{s}", GEN.run: run,
                         ROLL.step: step, ROLL.split: "train", GEN.prompt_id: f"p{g}",
                         GEN.group_id: f"{run}:{step}:train:{g}", GEN.group_index: g,
                         GEN.sample_index: s, GEN.text: "hello", GEN.cer: cer,
                         GEN.ssim: 0.9 - cer / 2, GEN.codes_len: 10 + s, GEN.invalid: False,
                         GEN.duration: 2.0,
                         GEN.codes: [[1] * (10 + s)] * 2})
    frame = compute_rewards(pl.DataFrame(rows, infer_schema_length=None), cfg)
    table = frame.to_arrow()
    missing = [f for f in ROLLOUTS_SCHEMA if f.name not in table.column_names]
    for f in missing:
        table = table.append_column(f, pa.nulls(table.num_rows, f.type))
    return table.select(ROLLOUTS_SCHEMA.names).cast(ROLLOUTS_SCHEMA)


def test_writer_commits_every_n_steps_and_skips_committed_steps_on_resume(tmp_path):
    store = Store(tmp_path / "st")
    lineage = make_lineage("train grpo", {"run": "r"}, {"prompts": 1})
    writer = RolloutWriter(store, "r", lineage, every=2)
    for step in range(3):
        writer.add(step, step_rows("r", step, [[0.0, 0.5]]))
    assert store.version("rollouts") == 1  # steps 0-1 in one commit; step 2 buffered
    assert store.lineage("rollouts", 1)["steps"] == [0, 1]
    assert committed_steps(store, "r") == {(0, "train"), (1, "train")}
    # Killed here: step 2 is lost. Resume from a checkpoint at step 0: 1 is skipped.
    resumed = RolloutWriter(store, "r", lineage, every=2)
    for step in (1, 2, 3):
        resumed.add(step, step_rows("r", step, [[0.0, 0.5]]))
    resumed.flush()
    ids = store.open("rollouts").to_table(columns=[ROLL.rollout_id])[ROLL.rollout_id].to_pylist()
    assert sorted(ids) == sorted(f"r:{s}:train:0:{i}" for s in range(4) for i in range(2))
    assert store.lineage("rollouts", 2)["steps"] == [2, 3]


def test_writer_compacts_when_fragments_pile_up(tmp_path):
    store = Store(tmp_path / "st")
    writer = RolloutWriter(store, "r", make_lineage("train grpo", {}), every=1, compact_over=3)
    for step in range(4):
        writer.add(step, step_rows("r", step, [[0.0, 0.5]]))
    ds = store.open("rollouts")
    assert len(ds.get_fragments()) == 1 and ds.count_rows() == 8


def invoke(store: Store, *args: str):
    return CliRunner().invoke(cli, ["--store", str(store.root), "rewards", *args])


def test_rewards_over_rollouts_equal_the_training_rewards(tmp_path):
    store = Store(tmp_path / "st")
    writer = RolloutWriter(store, "r", make_lineage("train grpo", {}), every=2)
    writer.add(0, step_rows("r", 0, [[0.0, 0.1, 1.0], [0.3, 0.3, 0.3]]))
    writer.add(1, step_rows("r", 1, [[0.05, 0.5, 0.9], [0.0, 0.2, 0.4]]))
    result = invoke(store, "--weights", "cer=0.5,ssim=0.5", "--as", "rw", "--format", "json")
    # by hand: totals 1, .708333, .166667, 3 x .569444, .854167, .430556, .215278, 1, .638889, .5
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == [{
        "table": "rw", "version": 1, "source": "rollouts@1", "rows": 12, "groups": 4,
        "mean_reward": pytest.approx(65 / 108, abs=1e-6), "valid_fraction": 1.0,
        "groups_valid_fraction": 1.0}]
    stored = store.open("rollouts").to_table().sort_by(ROLL.rollout_id)
    again = store.open("rw").to_table().sort_by(RWD.row_id)
    assert again[RWD.row_id].to_pylist() == stored[ROLL.rollout_id].to_pylist()
    for column in (RWD.reward_cer, RWD.reward_ssim, RWD.reward, RWD.advantage, RWD.valid,
                   RWD.group_valid):
        assert again[column].to_pylist() == stored[column].to_pylist(), column
    lineage = store.lineage("rw", 1)
    assert lineage["command"] == "rewards" and lineage["inputs"] == {"rollouts": 1}
    assert lineage["rewards"]["weights"] == {"cer": 0.5, "ssim": 0.5}


def test_rewards_with_other_weights_is_a_new_version_and_a_plot(tmp_path):
    store = Store(tmp_path / "st")
    writer = RolloutWriter(store, "r", make_lineage("train grpo", {}), every=1)
    writer.add(0, step_rows("r", 0, [[0.0, 0.1, 1.0]]))
    assert invoke(store, "--as", "rw").exit_code == 0
    plot = tmp_path / "shift.png"
    result = invoke(store, "--weights", "cer=1", "--normalize", "group", "--as", "rw",
                    "--plot", str(plot), "--format", "csv")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[1].startswith("rw,2,rollouts@1,3,1,")
    assert plot.read_bytes()[:4] == b"\x89PNG"
    totals = store.open("rw").to_table()[RWD.reward].to_pylist()
    z = 0.5 / 0.5001  # cer parts 1, .5, 0 z-scored within the group
    assert totals == pytest.approx([z, 0.0, -z])


def test_rewards_over_generations_derive_lengths_from_codes(tmp_path):
    store = Store(tmp_path / "st")
    rows = [{GEN.generation_id: f"b:{i}", GEN.run: "b", GEN.prompt_id: "p", GEN.group_id: "b:g0",
             GEN.group_index: 0, GEN.sample_index: i, GEN.text: "t", GEN.invalid: False,
             GEN.cer: 0.0, GEN.codes: [[1] * n]} for i, n in enumerate([20, 15])]
    store.write("generations", pa.Table.from_pylist(rows, GENERATIONS_SCHEMA),
                schema=GENERATIONS_SCHEMA, lineage=make_lineage("ingest", {}))
    result = invoke(store, "--table", "generations", "--weights", "length=1",
                    "--length-target", "20", "--no-scale-rewards", "--as", "len",
                    "--format", "json")
    assert result.exit_code == 0, result.output
    out = store.open("len").to_table()
    assert out[RWD.reward_length].to_pylist() == [1.0, 0.75]
    assert out[RWD.advantage].to_pylist() == [0.125, -0.125]
    assert out[ROLL.step].to_pylist() == [None, None]


def raises(df):
    raise KeyError("the metric this reward wanted")


@pytest.mark.parametrize("args, message", [
    (["--as", "prompts"], "Error: 'prompts' is a core table name; choose another name for the rewards"),
    (["--as", "x", "--weights", "wer=1"], "Error: unknown reward 'wer' (choose "
                                          f"{', '.join(REWARDS)}, or a Python callable as "
                                          "pkg.module:function)"),
    (["--as", "x", "--weights", "utmos=1"], f"Error: {RETIRED['utmos']}"),
    (["--as", "x", "--table", "prompts"], "Error: --table prompts: rewards are recomputed over "
                                          "rollouts or generations"),
    (["--as", "x", "--table", "rollouts@9"], "Error: table 'rollouts' has no version or tag '9'"),
    # a reward weighted twice; a user reward that raises (and one whose module does not load)
    (["--as", "x", "--weights", "cer=1,cer=2"], "Error: --weights: 'cer' is weighted twice in "
                                                "'cer=1,cer=2': give each term once"),
    (["--as", "x", "--weights", "ssim=1,test_rollouts:raises=1"],
     "Error: reward 'test_rollouts:raises' raised KeyError: 'the metric this reward wanted'"),
    (["--as", "x", "--weights", "test_rollouts:missing=1"],
     "Error: reward 'test_rollouts:missing': cannot import it (module 'test_rollouts' has no "
     "attribute 'missing')"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, args, message):
    store = Store(tmp_path / "st")
    RolloutWriter(store, "r", make_lineage("train grpo", {}), every=1).add(
        0, step_rows("r", 0, [[0.0, 0.5]]))
    result = invoke(store, *args)
    assert result.exit_code == 1
    assert result.output == message + "\n"
    assert store.tables() == ["rollouts"]


def test_promoted_rollouts_build_the_next_dpo_set_with_lineage_to_the_steps(tmp_path):
    store = Store(tmp_path / "st")
    writer = RolloutWriter(store, "r", make_lineage("train grpo", {}), every=3)
    for step in range(3):
        writer.add(step, step_rows("r", step, [[0.0, 0.1, 0.6], [1.0, 0.2, 0.3]]))
    runner = CliRunner()
    out = runner.invoke(cli, ["--store", str(store.root), "rollouts", "promote", "r", "--as-run",
                              "it1", "--steps", "1:2", "--format", "csv"])
    assert out.exit_code == 0, out.output
    assert out.output == "run,rows,groups,generations,rollouts\nit1,12,4,1,1\n"
    gens = store.open("generations").to_table().sort_by(GEN.generation_id).to_pylist()
    assert gens[0][GEN.generation_id] == "it1:1:0:0" and gens[0][GEN.group_id] == "it1:1:0"
    assert gens[0][GEN.source_file] == "rollouts@1:r:1:train:0:0"
    lineage = store.lineage("generations", 1)
    assert lineage["inputs"] == {"rollouts": 1} and lineage["steps"] == [1, 2]
    built = runner.invoke(cli, ["--store", str(store.root), "build", "best_worst", "--name", "it",
                                "--run", "it1", "--param", "cer_threshold=0.5"])
    assert built.exit_code == 0, built.output
    pairs = store.open("it").to_table().sort_by("pair_id").to_pylist()
    assert [(p["chosen_id"], p["rejected_id"]) for p in pairs] == [
        ("it1:1:0:0", "it1:1:0:2"), ("it1:1:1:1", "it1:1:1:0"),
        ("it1:2:0:0", "it1:2:0:2"), ("it1:2:1:1", "it1:2:1:0")]
    again = runner.invoke(cli, ["--store", str(store.root), "rollouts", "promote", "r",
                                "--as-run", "it1"])
    assert again.exit_code == 1
    assert again.output == "Error: generations already has a run 'it1'; choose another --as-run\n"


def test_rollout_table_is_the_rows_and_their_rewards_column_by_column():
    """rollout_table builds columns, not rows: the same contents as a row-by-row table
    of each row and its compute_rewards values; parts the weights do not use are null."""
    import numpy as np

    from ttspo.builder.core.schemas import REWARD_PARTS
    from ttspo.builder.scoring.audio import read_audio_bytes
    from ttspo.trainer.grpo.rollout import rollout_table

    rows = []
    for g in range(2):
        for s in range(3):
            row = {ROLL.rollout_id: f"r:4:train:{g}:{s}", GEN.run: "r", ROLL.step: 4,
                   ROLL.split: "train", GEN.prompt_id: f"p{g}", GEN.group_id: f"r:4:train:{g}",
                   GEN.group_index: g, GEN.sample_index: s, GEN.text: "hi", GEN.codes_len: 3 + s,
                   GEN.codes: [[s] * (3 + s)] * 2, GEN.duration: 0.5, GEN.sample_rate: 8000,
                   GEN.invalid: False, GEN.cer: 0.1 * (g + s), ROLL.checkpoint: "c",
                   "context_codes": np.zeros((2, 3)), "_needs_asr": True}  # extra keys: ignored
            if s:  # one sample of each group has no SSIM key at all, one a null
                row[GEN.ssim] = None if s == 1 else 0.5 + 0.1 * g
            rows.append(row)
    cfg = RewardConfig(weights={"cer": 0.6, "ssim": 0.4}, min_valid_len=4)
    audios = [np.full(80, 0.01 * i, dtype=np.float32) for i in range(len(rows))]
    table = rollout_table(rows, cfg, audios, 8000)
    assert table.schema == ROLLOUTS_SCHEMA
    frame = pl.DataFrame([{k: r.get(k) for k in (GEN.group_id, GEN.codes_len, GEN.invalid,
                                                  GEN.cer, GEN.ssim)} for r in rows],
                         schema_overrides={GEN.cer: pl.Float64, GEN.ssim: pl.Float64})
    rewarded = compute_rewards(frame, cfg).to_dicts()
    parts = [RWD.reward_cer, RWD.reward_ssim, RWD.reward, RWD.advantage, RWD.valid,
             RWD.group_valid]
    expected = pa.Table.from_pylist(
        [{**r, **{p: w[p] for p in parts}} for r, w in zip(rows, rewarded)],
        schema=ROLLOUTS_SCHEMA)
    assert table.drop_columns([GEN.audio]).equals(expected.drop_columns([GEN.audio]))
    assert table[RWD.valid].to_pylist() == [False, True, True] * 2  # min_valid_len 4
    unused = [p for p in REWARD_PARTS if p not in (RWD.reward_cer, RWD.reward_ssim)]
    assert all(table[p].null_count == table.num_rows for p in unused)
    for wav, audio in zip(table[GEN.audio].to_pylist(), audios):
        assert np.allclose(read_audio_bytes(wav)[0], audio, atol=1 / 2 ** 14)
