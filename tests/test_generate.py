"""`ttspo generate`: a real tiny policy sampling into a real store, with real processes
for torchrun and SIGKILL."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import soundfile as sf
from click.testing import CliRunner

from ttspo.builder.cli.main import cli
from ttspo.builder.core.schemas import (CHECKPOINTS_SCHEMA, CKPT, GEN, PROMPT, PROMPTS_SCHEMA)
from ttspo.builder.core.store import Store, make_lineage
from ttspo.trainer.generate.run import GenerateOptions, generate
from ttspo.trainer.policy.samples import sample_seed
from ttspo.trainer.policy.base import Sampling

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CONTEXT_WAV = REPO / "tests" / "fixtures" / "audio" / "context.wav"
SAMPLING = Sampling(temperature=1.0, top_k=50, max_steps=6, seed=3)
ENV = dict(os.environ, OMP_NUM_THREADS="1", LANCE_LOG="error")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    import torch

    from ttspo.trainer.policy.tiny import TinyCodecLM, TinyConfig

    torch.manual_seed(0)
    model = TinyCodecLM(TinyConfig(d_model=32, n_heads=2, encoder_layers=1, decoder_layers=1,
                                   d_ffn=64, max_frames=256))
    path = tmp_path_factory.mktemp("ckpt") / "policy.pt"
    model.save(path)
    return path


def make_prompts(root: Path, n: int = 4) -> Store:
    """N prompts; prompt p3 (and every 4th) has an audio context, the others text."""
    rows = []
    for i in range(n):
        audio = i % 4 == 3
        rows.append({
            PROMPT.prompt_id: f"p{i}", PROMPT.text: f"say number {i}",
            PROMPT.record_type: "challenging" if i % 2 == 0 else "regular",
            PROMPT.context_type: "audio" if audio else "text",
            PROMPT.context_text: None if audio else "a calm voice",
            PROMPT.context_audio_filepath: str(CONTEXT_WAV) if audio else None,
            PROMPT.context_audio_duration: 2.0 if audio else None, PROMPT.position: i})
    store = Store(root)
    store.write("prompts", pa.Table.from_pylist(rows, schema=PROMPTS_SCHEMA), PROMPTS_SCHEMA,
                make_lineage("test", {}))
    return store


def options(checkpoint, tmp_path, **kw) -> GenerateOptions:
    base = dict(run="r", checkpoint=str(checkpoint), samples=2, sampling=SAMPLING,
                audio_dir=str(tmp_path / "audio"), batch_size=3)
    return GenerateOptions(**{**base, **kw})


def rows(store: Store, run: str = "r") -> list[dict]:
    ds = store.open("generations")
    columns = [f.name for f in ds.schema if f.name != GEN.audio]  # the blob: read_blobs
    table = ds.to_table(columns=columns, filter=f"run = '{run}'")
    return sorted(table.to_pylist(), key=lambda r: r[GEN.generation_id])


def read_blobs(store: Store, run: str = "r") -> dict[str, bytes]:
    ds = store.open("generations")
    table = ds.to_table(columns=[GEN.generation_id], filter=f"run = '{run}'", with_row_id=True)
    blobs = ds.take_blobs(GEN.audio, ids=table["_rowid"].to_pylist())
    return {gid: b.readall() for gid, b in zip(table[GEN.generation_id].to_pylist(), blobs)}


def lineage() -> dict:
    return make_lineage("generate", {})


def test_rows_hold_codes_audio_of_the_right_length_and_the_settings(tmp_path, checkpoint):
    store = make_prompts(tmp_path / "st")
    result = generate(store, options(checkpoint, tmp_path, embed_audio=True), lineage=lineage())
    assert (result.version, result.rows, result.prompts, result.existing) == (1, 8, 4, 0)
    got = rows(store)
    assert [r[GEN.generation_id] for r in got] == [f"r:p{i}:{k}" for i in range(4) for k in (0, 1)]
    sha = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    blobs = read_blobs(store)
    for r in got:
        frames = len(r[GEN.codes][0])
        assert len(r[GEN.codes]) == 8 and 0 <= frames <= SAMPLING.max_steps
        assert r[GEN.codes_len] == frames
        audio, sr = sf.read(r[GEN.audio_filepath])
        assert (sr, len(audio)) == (22050, frames * 1024)  # the codec's hop per frame
        assert r[GEN.duration] == pytest.approx(frames * 1024 / 22050)
        assert blobs[r[GEN.generation_id]] == Path(r[GEN.audio_filepath]).read_bytes()
        assert (r[GEN.checkpoint_sha256], r[GEN.policy], r[GEN.temperature], r[GEN.top_k],
                r[GEN.cfg_scale], r[GEN.max_steps], r[GEN.seed]) == (sha, "tiny", 1.0, 50, 1.0, 6, 3)
        # a group per prompt (positions repeat across prompt draws; ids do not)
        assert r[GEN.group_id] == f"r:{r[GEN.prompt_id]}"
    audio_ctx = [r for r in got if r[GEN.prompt_id] == "p3"]
    assert all(r[GEN.context_audio_filepath] == str(CONTEXT_WAV) and r[GEN.context_text] is None
               for r in audio_ctx)
    lineage_record = store.lineage("generations", 1)
    assert lineage_record["inputs"] == {"prompts": 1}
    assert lineage_record["checkpoint"]["checkpoint_sha256"] == sha


@pytest.mark.slow
def test_same_seed_same_codes_other_seed_other_codes(tmp_path, checkpoint):
    store = make_prompts(tmp_path / "st")
    generate(store, options(checkpoint, tmp_path, run="a", batch_size=1), lineage=lineage())
    generate(store, options(checkpoint, tmp_path, run="b", batch_size=8), lineage=lineage())
    other = Sampling(**{**SAMPLING.as_dict(), "seed": 4})
    generate(store, options(checkpoint, tmp_path, run="c", sampling=other), lineage=lineage())
    codes = {run: [r[GEN.codes] for r in rows(store, run)] for run in "abc"}
    assert codes["a"] == codes["b"]  # batching does not change a sample
    assert codes["a"] != codes["c"]
    assert sample_seed(3, "p1", 0) != sample_seed(3, "p1", 1) != sample_seed(4, "p1", 1)


@pytest.mark.slow
def test_a_rerun_adds_only_missing_samples_and_other_settings_are_refused(tmp_path, checkpoint):
    store = make_prompts(tmp_path / "st")
    generate(store, options(checkpoint, tmp_path, samples=1, where="record_type = 'regular'"),
             lineage=lineage())
    first = rows(store)
    assert [r[GEN.generation_id] for r in first] == ["r:p1:0", "r:p3:0"]
    again = generate(store, options(checkpoint, tmp_path, samples=1,
                                    where="record_type = 'regular'"), lineage=lineage())
    assert (again.version, again.rows, again.existing) == (None, 0, 2)
    more = generate(store, options(checkpoint, tmp_path, samples=2), lineage=lineage())
    assert (more.version, more.rows, more.existing) == (2, 6, 2)
    after = rows(store)
    assert len(after) == len({r[GEN.generation_id] for r in after}) == 8
    assert [r for r in after if r[GEN.generation_id] in ("r:p1:0", "r:p3:0")] == first


def test_the_checkpoints_row_of_the_weights_is_recorded(tmp_path, checkpoint):
    store = make_prompts(tmp_path / "st", n=1)
    sha = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    row = {CKPT.run: "dpo1", CKPT.step: 40, CKPT.kind: "step", CKPT.path: str(checkpoint),
           CKPT.sha256: sha, CKPT.architecture: "tiny", CKPT.trainer: "dpo", CKPT.created: "now"}
    store.write("checkpoints", pa.Table.from_pylist([row], schema=CHECKPOINTS_SCHEMA),
                CHECKPOINTS_SCHEMA, make_lineage("test", {}))
    generate(store, options(checkpoint, tmp_path, samples=1), lineage=lineage())
    got = rows(store)[0]
    assert (got[GEN.checkpoint_run], got[GEN.checkpoint_step]) == ("dpo1", 40)
    assert store.lineage("generations", 1)["inputs"] == {"prompts": 1, "checkpoints": 1}


def cli_args(store: Path, checkpoint: Path, *extra: str) -> list[str]:
    return ["--store", str(store), "generate", "--run", "r", "--checkpoint", str(checkpoint),
            "--samples", "2", "--top-k", "50", "--max-steps", "6", "--seed", "3",
            "--audio-dir", str(store.parent / "audio"), *extra]


@pytest.mark.parametrize("extra, message", [
    (["--where", "record_type = 'none'"], "Error: no prompt in prompts matches --where "
                                          "record_type = 'none'\n"),
    (["--where", "nonsense_column = 1"], None),
    (["--prompts", "prompts@7"], "Error: table 'prompts' has no version or tag '7'\n"),
])
def test_cli_bad_prompt_selection_is_one_line(tmp_path, checkpoint, extra, message):
    make_prompts(tmp_path / "st")
    result = CliRunner().invoke(cli, cli_args(tmp_path / "st", checkpoint, *extra))
    assert result.exit_code == 1
    assert len(result.output.splitlines()) == 1 and result.output.startswith("Error: ")
    if message:
        assert result.output == message


@pytest.mark.parametrize("option, value, allowed", [
    ("--cfg-scale", "nan", " in 0<=x<=100"), ("--cfg-scale", "inf", " in 0<=x<=100"),
    ("--cfg-scale", "-inf", " in 0<=x<=100"), ("--cfg-scale", "1e39", " in 0<=x<=100"),
    ("--cfg-scale", "-0.5", " in 0<=x<=100"), ("--cfg-scale", "100.5", " in 0<=x<=100"),
    ("--temperature", "nan", " in x>=0"), ("--temperature", "inf", " in x>=0"),
    ("--temperature", "-1", " in x>=0"),
])
def test_cli_a_non_finite_or_out_of_range_sampling_value_is_one_line(tmp_path, checkpoint,
                                                                      option, value, allowed):
    make_prompts(tmp_path / "st", n=1)
    result = CliRunner().invoke(cli, cli_args(tmp_path / "st", checkpoint, f"{option}={value}"))
    assert (result.exit_code, result.output) == (
        1, f"Error: {option} {value}: must be a finite number{allowed}\n")
    assert not (tmp_path / "st" / "generations.lance").exists()


def test_cli_a_file_that_is_not_a_checkpoint_and_a_changed_run(tmp_path, checkpoint):
    make_prompts(tmp_path / "st", n=1)
    bogus = tmp_path / "notes.pt"
    bogus.write_text("not weights")
    result = CliRunner().invoke(cli, cli_args(tmp_path / "st", bogus))
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: {bogus}: not a ttspo policy checkpoint (")
    assert len(result.output.splitlines()) == 1
    assert not (tmp_path / "st" / "generations.lance").exists()
    ok = CliRunner().invoke(cli, cli_args(tmp_path / "st", checkpoint, "--format", "csv"))
    assert ok.exit_code == 0, ok.output
    assert ok.output.splitlines()[0] == ("run,version,rows,prompts,already_there,ranks,score_failed,"
                                         "sampling_s,decoding_s,scoring_s,writing_s")
    assert ok.output.splitlines()[1].startswith("r,1,2,1,0,1,")
    changed = CliRunner().invoke(cli, cli_args(tmp_path / "st", checkpoint, "--temperature", "0.5"))
    assert (changed.exit_code, changed.output) == (
        1, "Error: run 'r' exists with temperature 1.0, not 0.5: choose another --run\n")


def read_codes(store_path: Path) -> dict[str, list]:
    return {r[GEN.generation_id]: (r[GEN.codes], r[GEN.duration], r[GEN.group_id])
            for r in rows(Store(store_path))}


@pytest.mark.slow  # torchrun
def test_torchrun_two_ranks_write_the_rows_of_one_process_in_one_commit(tmp_path, checkpoint):
    make_prompts(tmp_path / "one", n=5)
    make_prompts(tmp_path / "two", n=5)
    single = CliRunner().invoke(cli, cli_args(tmp_path / "one", checkpoint))
    assert single.exit_code == 0, single.output
    proc = subprocess.run(
        [str(BIN / "torchrun"), "--standalone", "--nproc-per-node", "2", "-m", "ttspo.builder.cli",
         "--", *cli_args(tmp_path / "two", checkpoint), "--format", "csv"],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines()[1].startswith("r,1,10,5,0,2,")  # printed once, by rank 0
    assert Store(tmp_path / "two").version("generations") == 1  # ONE commit
    assert read_codes(tmp_path / "two") == read_codes(tmp_path / "one")


@pytest.mark.slow  # a real process, SIGKILLed
def test_sigkill_mid_generate_then_rerun_loses_and_doubles_nothing(tmp_path, checkpoint):
    store = make_prompts(tmp_path / "st", n=8)
    generate(store, options(checkpoint, tmp_path, samples=1), lineage=lineage())
    cmd = [sys.executable, "-m", "ttspo.builder.cli",
           *cli_args(tmp_path / "st", checkpoint, "--samples", "3", "--batch-size", "1")]
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    folder = tmp_path / "audio" / "r"
    while time.time() < deadline and proc.poll() is None:
        if folder.is_dir() and len([p for p in folder.iterdir() if p.name.endswith("_1.wav")]) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "generate ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert store.version("generations") == 1  # the samples=1 run: nothing new
    result = generate(store, options(checkpoint, tmp_path, samples=3), lineage=lineage())
    assert (result.rows, result.existing, result.version) == (16, 8, 2)
    ids = [r[GEN.generation_id] for r in rows(store)]
    assert len(ids) == len(set(ids)) == 24


@pytest.mark.slow
@pytest.mark.parametrize("frames", [0, 1, 2, 5])
def test_generated_codes_decode_to_frames_times_hop_samples(frames):
    from ttspo.trainer.policy.codec import Codec
    from ttspo.trainer.policy.samples import decode

    codes = np.random.default_rng(frames).integers(0, 256, (8, frames))
    audio, sr = decode(Codec.load(), codes)
    assert (sr, audio.shape) == (22050, (frames * 1024,))
    assert frames == 0 or np.abs(audio).max() > 0


@pytest.mark.slow
def test_score_on_the_way_fills_the_metrics(tmp_path, checkpoint):
    from ttspo.builder.scoring.plan import ScoreOptions

    store = make_prompts(tmp_path / "st")
    result = generate(store, options(checkpoint, tmp_path, samples=1, score=ScoreOptions()),
                      lineage=lineage())
    assert result.seconds["scoring"] > 0
    got = rows(store)
    assert all(r[GEN.cer] is not None and r[GEN.wer] is not None for r in got)
    assert all(r[GEN.cer_source].startswith("pocketsphinx") for r in got)
    assert [r[GEN.ssim] is not None for r in got] == [False, False, False, True]  # p3: audio
    assert store.version("generations") == 1  # scored rows written in the one commit


def test_where_may_read_another_table_and_its_version_is_in_the_lineage(tmp_path, checkpoint):
    store = make_prompts(tmp_path / "st")
    schema = pa.schema([pa.field("prompt_id", pa.string())])
    store.write("trained", pa.table({"prompt_id": ["p0", "p2"]}, schema=schema), schema,
                make_lineage("test", {}))
    generate(store, options(checkpoint, tmp_path, samples=1,
                            where="prompt_id NOT IN (SELECT prompt_id FROM trained)"),
             lineage=lineage())
    assert [r[GEN.prompt_id] for r in rows(store)] == ["p1", "p3"]
    assert store.lineage("generations", 1)["inputs"] == {"prompts": 1, "trained": 1}


def test_two_generates_of_one_run_at_once_write_each_sample_once(tmp_path, checkpoint):
    from concurrent.futures import ThreadPoolExecutor

    store = make_prompts(tmp_path / "st")
    with ThreadPoolExecutor(2) as pool:  # the run's lock is a file lock: threads contend too
        results = list(pool.map(lambda _: generate(store, options(checkpoint, tmp_path, samples=1),
                                                   lineage=lineage()), range(2)))
    assert sorted(r.rows for r in results) == [0, 4]
    assert len(rows(store)) == 4
