"""Fast tests of package modules that other fast tests only reach through a higher
layer (the CLI, the loops): each imports its module and exercises its own behaviour
(issue 19: every package module has a fast test; tests/test_fast_tier.py checks it).
No NeMo, no model weights, no subprocess: each test about a second or less."""

from __future__ import annotations

import io
import json
import os
from types import SimpleNamespace

import click
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ttspo.builder.cli import common
from ttspo.builder.core import locks, render
from ttspo.builder.core.errors import ConfigError, InputError, ModelError, TrainingError
from ttspo.builder.prompts import inputs
from ttspo.builder.scoring import asr, backends, quality, speaker
from ttspo.builder.sets import codes
from ttspo.trainer.policy import tiny_blocks
from ttspo.trainer.policy.nemo import codec as nemo_codec
from ttspo.trainer.policy.nemo import load as nemo_load
from ttspo.trainer.policy.nemo import policy as nemo_policy
from ttspo.trainer.run import faults, runlock, verify
from ttspo.trainer.run.checkpointer import Checkpointer


# ------------------------------------------------------------------ builder.core
def test_render_formats_the_same_rows_as_json_csv_and_a_table():
    rows = [{"a": 1, "b": float("nan")}, {"a": 2, "b": "x,y"}]
    assert json.loads(render.render(rows, "json")) == [{"a": 1, "b": None}, {"a": 2, "b": "x,y"}]
    assert render.render(rows, "csv").splitlines()[0] == "a,b"
    assert '"x,y"' in render.render(rows, "csv")
    table = render.render(rows, "table")
    assert "a" in table.splitlines()[0] and "x,y" in table
    assert render.visible("a\tb\x1b") == "a\\tb\\x1b"
    assert render.strict_json({"x": float("inf")}) == '{"x": null}'


def test_a_temp_dir_lives_while_its_command_does_and_is_removed_after(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    with locks.temp_dir("ingest") as path:
        assert os.path.isdir(path) and os.path.basename(path).startswith("ttspo-ingest-")
        assert locks.clean_temp_dirs() == 0  # its owner lives: kept
    assert not os.path.exists(path)
    fd = locks.open_lock_file("fast-tier-test")
    assert fd >= 0
    os.close(fd)


# ------------------------------------------------------------------ builder.cli
def test_finite_float_refuses_nan_and_out_of_range_values_in_one_line():
    @click.command()
    @click.option("--t", type=common.FiniteFloat(min=0.0, max=2.0))
    @common.format_option
    def cmd(t, fmt):
        common.emit([{"t": t}], fmt)

    ok = CliRunner().invoke(cmd, ["--t", "1.5", "--format", "json"])
    assert ok.exit_code == 0 and json.loads(ok.output) == [{"t": 1.5}]
    for bad in ("nan", "3"):
        result = CliRunner().invoke(cmd, ["--t", bad])
        assert result.exit_code == 1
        assert result.output == f"Error: --t {bad}: must be a finite number in 0.0<=x<=2.0\n"
    assert common.is_rank0()


# ------------------------------------------------------------------ builder.prompts
def test_prompt_inputs_read_text_lines_and_refuse_an_empty_file(tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("  one \n\ntwo\n", encoding="utf-8")
    assert inputs.read_text_lines(texts) == ["one", "two"]
    (tmp_path / "blank.txt").write_text("\n \n", encoding="utf-8")
    with pytest.raises(InputError, match="no texts"):
        inputs.read_text_lines(tmp_path / "blank.txt")


# ------------------------------------------------------------------ builder.scoring
def test_backend_specs_split_and_name_what_is_missing(tmp_path):
    assert backends.split_spec("NeMo:/x.nemo") == ("nemo", "/x.nemo")
    assert backends.split_spec("pocketsphinx") == ("pocketsphinx", None)
    with pytest.raises(ModelError, match="--asr nemo"):
        backends.require_file("--asr", "nemo", None, "model")
    with pytest.raises(ModelError, match="needs the 'no_such_module_x' package"):
        backends.require_module("--asr", "x", "no_such_module_x", "x extra")
    assert "unknown backend (choose a, b)" in str(backends.unknown("--sv", "zz", ("a", "b")))


def test_asr_speaker_and_quality_specs_are_checked_before_loading(tmp_path):
    assert asr.check_asr("pocketsphinx") is None
    with pytest.raises(ModelError, match="takes no argument"):
        asr.check_asr("pocketsphinx:x")
    with pytest.raises(ModelError, match="unknown backend"):
        asr.check_asr("nonesuch")
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"0")
    assert speaker.check_speaker(f"resemblyzer:{weights}") == weights
    with pytest.raises(ModelError, match="unknown backend"):
        speaker.check_speaker("nonesuch")
    with pytest.raises(ModelError):
        quality.check_quality("nonesuch")
    assert speaker.cosine(np.array([1.0, 0.0]), np.array([2.0, 0.0])) == pytest.approx(1.0)


def test_pesq_is_none_for_too_short_or_silent_audio():
    metric = quality.make_quality("pesq")
    tone = np.sin(np.arange(1600) / 5).astype(np.float32)
    assert metric.score(tone, 16000, tone, 16000) is None  # 0.1 s: too short
    assert metric.score(np.zeros(64000, np.float32), 16000, tone, 16000) is None


# ------------------------------------------------------------------ builder.sets
def test_codes_file_names_are_safe_and_unique_and_the_dtype_is_checked():
    a, b = codes.safe_name("run/a b"), codes.safe_name("run_a_b")
    assert a.startswith("run_a_b-") and a != b and "/" not in a
    codes.check_codes_dtype("int32")
    with pytest.raises(InputError, match="--codes-dtype int8"):
        codes.check_codes_dtype("int8")


# ------------------------------------------------------------------ trainer.run
def test_fault_moments_are_armed_by_the_environment(monkeypatch):
    monkeypatch.delenv(faults.ENV, raising=False)
    assert not faults.armed("after_rename")
    monkeypatch.setenv(faults.ENV, "after_rename@4")
    faults.check()
    assert faults.armed("after_rename", folder="step_000004")
    assert not faults.armed("after_rename", step=3) and not faults.armed("after_row", step=4)
    out = io.StringIO()
    faults.write_line(out, "{}\n", "mid_metrics_line", step=4)  # not armed: written whole
    assert out.getvalue() == "{}\n"
    monkeypatch.setenv(faults.ENV, "nonesuch")
    with pytest.raises(ConfigError, match="'nonesuch' is not a fault moment"):
        faults.check()


def test_a_non_finite_loss_stops_the_run_naming_the_last_good_checkpoint(tmp_path):
    saver = Checkpointer(store=None, out=tmp_path / "run", trainer="dpo", policy=None,
                         optimizer=None, scheduler=None, meta={}, lineage=None, master=True,
                         data_state=lambda step: {}, best_metric="val/loss", best_mode="min")
    assert saver.run == "run"
    saver.check_loss(0, torch.tensor([1.0, 2.0]))  # finite: the run goes on
    with pytest.raises(TrainingError, match=r"^step 1: the loss is inf; .* checkpoint: none "):
        saver.check_loss(0, torch.tensor(float("inf")))
    saver.last_good = tmp_path / "run" / "checkpoints" / "step_000004"
    with pytest.raises(TrainingError, match=r"^step 6: the loss is nan; .*/step_000004$"):
        saver.check_loss(5, torch.tensor(float("nan")))


def test_a_run_lock_is_held_once_and_released(tmp_path):
    out = tmp_path / "run"
    lock = runlock.RunLock(out)
    lock.acquire()
    assert any(runlock.is_lock_file(p.name) for p in out.iterdir())
    assert str(os.getpid()) in runlock.holder_text(lock.record)
    lock.release()  # and the folder it made, left empty
    assert not out.exists()
    assert "not written yet" in runlock.holder_text(None)


def test_verify_refuses_a_changed_file_and_names_a_pickled_global(tmp_path):
    path = tmp_path / "policy.pt"
    path.write_bytes(b"weights")
    verify.check_sha256(path, verify.bytes_sha256(b"weights"))
    with pytest.raises(InputError, match="changed since it was checked"):
        verify.check_sha256(path, verify.bytes_sha256(b"other"))
    assert verify.step_folders(tmp_path) == []
    reason = verify.refused_reason(RuntimeError("Unsupported global: GLOBAL os.system was not"))
    assert reason == "it holds os.system, which ttspo never unpickles"


# ------------------------------------------------------------------ trainer.policy
def test_a_kv_cache_returns_what_was_appended_and_refuses_more_than_it_holds():
    like = torch.zeros(1)
    cache = tiny_blocks.KVCache.empty(2, 1, 3, 4, like=like)
    k = torch.randn(2, 1, 2, 4)
    keys, values = cache.append(k, -k)
    assert torch.equal(keys, k) and torch.equal(values, -k) and cache.length == 2
    with pytest.raises(RuntimeError, match="KV cache full"):
        cache.append(k, k)


def test_an_encoder_layer_keeps_shapes_and_ignores_masked_positions():
    torch.manual_seed(0)
    layer = tiny_blocks.EncoderLayer(d_model=8, n_heads=2, d_ffn=16, dropout=0.0).eval()
    x = torch.randn(1, 3, 8)
    mask = torch.tensor([[True, True, False]])
    y = layer(x, mask)
    assert y.shape == x.shape
    x2 = x.clone()
    x2[0, 2] = 100.0  # a padded position: the others must not see it
    assert torch.allclose(layer(x2, mask)[0, :2], y[0, :2], atol=1e-5)


class FakeCodecModel(torch.nn.Module):
    """What NemoCodec reads of an AudioCodecModel: 2 codebooks of 4, 10 samples a frame."""

    num_codebooks, codebook_size, sample_rate, output_sample_rate = 2, 4, 100, 100
    samples_per_frame = 10

    def encode(self, audio, audio_len, sample_rate):
        frames = int(audio_len[0]) // self.samples_per_frame
        return torch.zeros(1, 2, frames + 1, dtype=torch.int32), torch.tensor([frames])

    def decode(self, tokens, tokens_len):
        n = int(tokens_len[0]) * self.samples_per_frame
        return torch.ones(1, n + 5), torch.tensor([n])


def test_the_nemo_codec_adapter_trims_to_lengths_and_checks_codes(tmp_path):
    c = nemo_codec.NemoCodec(FakeCodecModel())
    assert (c.num_codebooks, c.codebook_size, c.sample_rate, c.frame_rate) == (2, 4, 100, 10.0)
    assert c.fingerprint == ""
    got = c.encode(np.zeros(35, np.float32), 100)
    assert got.shape == (2, 3) and got.dtype == np.int64
    audio, sr = c.decode(np.zeros((2, 4), np.int64))
    assert audio.shape == (40,) and sr == 100
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 4\)"):
        c.decode(np.full((2, 1), 4))
    with pytest.raises(ValueError, match="mono"):
        c.encode(np.zeros((2, 3), np.float32), 100)
    with pytest.raises(ModelError, match="file not found"):
        nemo_codec.restore_codec(tmp_path / "missing.nemo")


def test_the_nemo_policy_spec_and_dropout_are_parsed_without_nemo():
    assert nemo_load.parse_arg("m.ckpt,config=m.yaml,codec=c.nemo") == (
        "m.ckpt", {"config": "m.yaml", "codec": "c.nemo"})
    with pytest.raises(ModelError, match="unknown option 'x=1'"):
        nemo_load.parse_arg("m.nemo,x=1")
    with pytest.raises(ModelError, match="give the model as nemo:PATH.nemo"):
        nemo_load.parse_arg(",codec=c")
    model = torch.nn.Sequential(torch.nn.Dropout(0.3))
    model.cfg_unconditional_prob = model.decoder_input_dropout_prob = 0.5
    nemo_load.set_dropout(model, 0.0, 0.0)
    assert model[0].p == 0.0 and model.cfg_unconditional_prob == 0.0
    batch = nemo_policy.MagpieBatch(text=torch.zeros(3, 2), name="x")
    assert batch.to("cpu").size == 3 and batch.to("cpu")["name"] == "x"


def test_a_namespace_is_not_a_codec_model():
    with pytest.raises(AttributeError):
        nemo_codec.NemoCodec(SimpleNamespace()).num_codebooks


# ------------------------------------------------------------------ the command families
def test_every_command_family_runs_through_the_root_group(tmp_path):
    """Each family's commands are the root group's, and one real command of each runs
    on a small store (a result, or the one-line error its input deserves)."""
    import ttspo
    from ttspo.builder.cli import compare, ingest, prompts, sets, store
    from ttspo.builder.cli.main import cli
    from ttspo.trainer.cli import demo, generate, rewards, train
    from test_build_helpers import BASIC, make_store

    families = [store, prompts, ingest, sets, compare, generate, rewards, train, demo]
    assert {m.__name__ for m in families} <= set(ttspo.COMMAND_FAMILIES)
    for module in families:
        for command in module.COMMANDS:
            assert cli.commands[command.name] is command, module.__name__
    st = tmp_path / "st"
    make_store(st, BASIC)

    def run(*args):
        result = CliRunner().invoke(cli, ["--store", str(st), *args])
        return result.exit_code, result.output

    code, out = run("sql", "SELECT count(*) AS n FROM generations", "--format", "json")  # store
    assert code == 0 and json.loads(out) == [{"n": 20}]
    assert run("build", "pareto", "--name", "s1")[0] == 0  # sets
    assert run("diff", "s1", "s1")[1].startswith("s1@1 -> s1@1 (set)\nchanges: none\n")
    assert run("prompts", "--challenging-texts", str(tmp_path / "no.txt")) == (  # prompts
        1, f"Error: {tmp_path / 'no.txt'}: no such file\n")
    assert run("ingest", "jsonl", str(tmp_path / "no.jsonl"), "--run", "x") == (  # ingest
        1, f"Error: {tmp_path / 'no.jsonl'}: cannot read (No such file or directory)\n")
    assert run("train", "dpo", "nosuch", "--out", str(tmp_path / "run")) == (  # train
        1, f"Error: no table 'nosuch' in store {st}\n")
    assert run("compare", "r", "zz") == (1, "Error: no run 'zz' in generations (runs: r)\n")  # compare
    assert run("rewards", "--as", "x") == (1, f"Error: no table 'rollouts' in store {st}\n")
    (tmp_path / "a-file").write_text("x")
    code, out = run("demo", "--store", str(tmp_path / "a-file"))  # demo: refused
    assert code == 2 and out.endswith(f"Directory '{tmp_path / 'a-file'}' is a file.\n")


# ------------------------------------------------------------------ ingest, sets, scoring
def test_a_manifest_record_is_type_checked_and_gives_its_prompt_fields():
    from ttspo.builder.ingest import nemo as ingest_nemo
    from ttspo.builder.ingest import rows
    from ttspo.builder.ingest.files import BadFile

    record = ingest_nemo.parse_manifest_record(
        b'{"text": "hi", "context_text": "calm", "context_audio_filepath": "dummy.wav"}')
    text, record_type, audio, duration, context_text, pid = rows.prompt_fields(record)
    assert (text, audio, duration, context_text) == ("hi", None, None, "calm")  # dummy dropped
    assert pid == rows.prompt_fields({"text": "hi", "context_text": "calm"})[-1]
    with pytest.raises(BadFile, match="no 'text' field"):
        ingest_nemo.parse_manifest_record(b'{"context_text": "calm"}')
    buf = rows.RowBuffer("r", "test")
    assert len(buf) == 0 and buf.add_prompt(rows.prompt_fields(record)) == 0


def test_a_jsonl_plan_counts_records_and_what_is_left_to_read(tmp_path):
    from ttspo.builder.ingest import jsonl

    path = tmp_path / "g.jsonl"
    path.write_text('{"text": "a"}\n\n{"text": "b"}\n{"text": "c"}\n')
    p = jsonl.plan(str(path), "r", present_lines={0})
    assert (p.records, p.todo) == (3, 2)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(InputError, match="no records"):
        jsonl.plan(str(tmp_path / "empty.jsonl"), "r", set())


def test_a_recipes_cached_region_is_found_between_its_markers():
    from ttspo.builder.sets import recipe_cache

    sql = "WITH\n-- ttspo cache: ranked\nranked AS (SELECT 1)\n-- ttspo cache end\nSELECT 1"
    name, start, end = recipe_cache.cache_region(sql)
    assert name == "ranked" and sql[start:end].splitlines()[1] == "ranked AS (SELECT 1)"
    assert recipe_cache.cache_region("SELECT 1") is None
    assert recipe_cache.cache_region("-- ttspo cache end\n-- ttspo cache: x\n") is None


def test_each_fragment_has_one_writer_and_squim_needs_its_weights():
    from ttspo.builder.scoring import scorer, write
    from ttspo.builder.scoring.run import ScoreOptions

    fragments = [7, 3, 5, 1, 9]
    owned = [write.owned_fragments(fragments, rank, 2) for rank in range(2)]
    assert sorted(owned[0] + owned[1]) == sorted(fragments) and not set(owned[0]) & set(owned[1])
    with pytest.raises(ModelError, match="--metrics squim needs --squim PATH"):
        scorer.squim_spec(ScoreOptions())
    assert scorer.squim_spec(ScoreOptions(squim="w.pt")) == "squim:w.pt"


# ------------------------------------------------------------------ trainer
def test_a_resume_clears_what_a_killed_save_left(tmp_path):
    from ttspo.trainer.run import repair

    folder = tmp_path / "checkpoints"
    (folder / "step_000002.tmp").mkdir(parents=True)
    (folder / "step_000004").mkdir()  # no meta.json: half-made
    (folder / "x.link").write_text("")
    notes = repair.clean_folder(folder)
    assert notes == [f"removed {n} (left by a killed save)"
                     for n in ("step_000002.tmp", "step_000004", "x.link")]
    assert list(folder.iterdir()) == [] and repair.clean_folder(tmp_path / "none") == []


def test_tiny_text_tokens_and_sampling_picks():
    from ttspo.trainer.policy import tiny_batch, tiny_sampling
    from ttspo.trainer.policy.base import Sampling

    tokens = tiny_batch.text_tokens({"text": "ab", "context_text": "c"}, 0, max_len=16)
    assert tokens == [tiny_batch.TEXT_BOS, ord("c"), tiny_batch.TEXT_SEP, ord("a"), ord("b"),
                      tiny_batch.TEXT_EOS]
    with pytest.raises(InputError, match="more than the policy's max_text_len 4"):
        tiny_batch.text_tokens({"text": "abcdef"}, 0, max_len=4)
    logits = torch.tensor([[[0.0, 5.0, 1.0]]])
    allowed = torch.tensor([[[True, False, True]]])
    greedy = tiny_sampling.pick(logits, Sampling(temperature=0.0), torch.zeros(1, 1), allowed)
    assert greedy.tolist() == [[2]]  # the best allowed token
    top1 = tiny_sampling.pick(logits, Sampling(temperature=1.0, top_k=1), torch.full((1, 1), 0.9),
                              torch.ones(1, 1, 3, dtype=torch.bool))
    assert top1.tolist() == [[1]]


def test_the_demos_grpo_overrides_are_a_valid_config():
    from ttspo.trainer.demo import grpo
    from ttspo.trainer.run.config import load_config

    cfg = load_config(None, grpo.OVERRIDES)  # range rules and key names checked
    assert (cfg.grpo.prompts_per_step, cfg.grpo.n_generations_per_item) == (2, 3)
    assert cfg.policy.model["d_model"] == 64 and cfg.train.max_steps == 2
    assert "FROM rollouts" in grpo.SUMMARY
