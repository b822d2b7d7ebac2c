"""NeMo MagpieTTS in ttspo: codec and policy adapters, and NeMo's own trainer on a ttspo export.

All on tiny NeMo models built from configs (tests/nemo_models.py), saved and restored
as .nemo, offline. One module with module-scoped fixtures: importing NeMo takes
10-20 s (minutes on a loaded machine), so every NeMo test shares one process.
Skipped unless the `nemo` extra is installed.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pytest
import soundfile as sf
import torch

import nemo_models
from ttspo.builder.core.schemas import GEN, GENERATIONS_SCHEMA, PROMPT, PROMPTS_SCHEMA
from ttspo.builder.core.store import Store, make_lineage
from ttspo.builder.sets.build import build_set
from ttspo.builder.sets.export import export_nemo
from ttspo.trainer.policy.nemo.codec import NemoCodec
from ttspo.trainer.policy.nemo.load import load_nemo
from ttspo.trainer.policy.base import CONTEXT_CODES, Sampling, sequence_logps
from test_build_helpers import BASIC, gen_rows

SR = nemo_models.CODEC_SR
TEXT_CONTEXT_GROUP = 1  # prompt p1 has a text context, the others a context recording


# On a loaded machine OpenMP threads spin: an untrained RNNT's transcribe took 331 s
# with the default threads and 5 s with one.
pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.slow]  # NeMo


@pytest.fixture(scope="module", autouse=True)
def nemo_installed():
    """Skips the module unless the `nemo` extra is installed. NeMo is imported here, at
    set-up, not at collection: `pytest -m "not slow"` collects this module without it."""
    pytest.importorskip("nemo.collections.tts.models")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("nemo-models")
    codec = nemo_models.save_codec(d / "codec.nemo")
    return {"codec": codec, "magpie": nemo_models.save_magpie(codec, d / "magpie.nemo"), "dir": d}


@pytest.fixture(scope="module")
def codec(models):
    return NemoCodec.load(models["codec"])


@pytest.fixture(scope="module")
def world(models, codec, tmp_path_factory):
    """A store (prompts with context codes files, generations with codes), a set, its export."""
    d = tmp_path_factory.mktemp("nemo-world")
    rng = np.random.default_rng(0)
    rows = gen_rows(BASIC[:3], files=d)
    prompts = []
    for g in range(3):
        prompt = {PROMPT.prompt_id: f"p{g}", PROMPT.text: f"text number {g}", PROMPT.context_type: "audio"}
        if g == TEXT_CONTEXT_GROUP:
            prompt.update({PROMPT.context_type: "text", PROMPT.context_text: "Speak calmly."})
        else:  # a short recording (NeMo tiles it to 5 s) and its codes, int16 as NeMo saves them
            wav = d / f"ctx{g}.wav"
            sf.write(wav, rng.uniform(-0.3, 0.3, int(SR * (1.0 + g / 4))).astype("float32"), SR)
            codes_path = d / f"ctx{g}_codes.pt"
            torch.save(torch.from_numpy(codec.encode(*sf.read(wav, dtype="float32"))).to(torch.int16),
                       codes_path)
            prompt.update({PROMPT.context_audio_filepath: str(wav), PROMPT.context_audio_duration:
                           sf.info(wav).duration, PROMPT.context_audio_codes_path: str(codes_path)})
        prompts.append(prompt)
    for r in rows:
        g = int(r[GEN.prompt_id][1:])
        r[GEN.context_audio_filepath] = prompts[g].get(PROMPT.context_audio_filepath)
        r[GEN.context_audio_duration] = prompts[g].get(PROMPT.context_audio_duration)
        r[GEN.context_text] = prompts[g].get(PROMPT.context_text)
        frames = int(rng.integers(5, 12))
        r[GEN.codes] = rng.integers(0, nemo_models.CODEBOOK_SIZE, (8, frames)).tolist()
        r[GEN.duration] = frames * 1024 / SR
        torch.save(torch.tensor(r[GEN.codes], dtype=torch.int16), r[GEN.codes_path])  # NeMo's int16
        sf.write(r[GEN.audio_filepath], np.zeros(frames * 1024, dtype="float32"), SR)
    store = Store(d / "store")
    store.write("prompts", pa.Table.from_pylist(prompts, schema=PROMPTS_SCHEMA), PROMPTS_SCHEMA,
                make_lineage("test", {}))
    store.write("generations", pa.Table.from_pylist(rows, schema=GENERATIONS_SCHEMA), GENERATIONS_SCHEMA,
                make_lineage("test", {}))
    build_set(store, "pareto", "prefs", {"val_size": 0, "seed": 1, "min_duration": 0.1})
    export = export_nemo(store, "prefs", d / "export")
    return {"dir": d, "store": store, "rows": {r[GEN.generation_id]: r for r in rows},
            "prompts": prompts, "export": export}


@pytest.fixture(scope="module")
def policy(models):
    return load_nemo(str(models["magpie"]))


@pytest.fixture(scope="module")
def nemo_po(models, policy, tmp_path_factory):
    """NeMo's MagpieTTSModelOfflinePO with the policy's weights (and the same reference)."""
    from nemo.collections.tts.models.magpietts_preference_optimization import MagpieTTSModelOfflinePO

    ref = tmp_path_factory.mktemp("nemo-ref") / "reference.ckpt"
    torch.save({"state_dict": policy.model.state_dict()}, ref)
    po = nemo_models.build_magpie(models["codec"], cls=MagpieTTSModelOfflinePO,
                                  reference_model_ckpt_path=str(ref), dpo_beta=0.01)
    po.load_state_dict(policy.model.state_dict(), strict=False)  # the reference keeps its own
    for name, value in policy.model.state_dict().items():
        assert torch.equal(po.state_dict()[name], value), name
    return po


def nemo_dpo_batch(po, manifest, **duration):
    """A batch of every pair of MANIFEST as NeMo's MagpieTTSDatasetDPO makes it."""
    from omegaconf import OmegaConf
    from nemo.collections.tts.data.text_to_speech_dataset_lhotse import setup_tokenizers

    cfg = OmegaConf.create({"datasets": {
        "_target_": "nemo.collections.tts.data.text_to_speech_dataset.MagpieTTSDatasetDPO",
        "dataset_meta": {"prefs": {"manifest_path": str(manifest), "audio_dir": "/"}}, **duration}})
    dataset = po.get_dataset(cfg, dataset_type="train")
    dataset.text_tokenizer = setup_tokenizers(all_tokenizers_config=po.cfg.text_tokenizers, mode="train")
    return dataset.collate_fn([dataset[i] for i in range(len(dataset))]), dataset


def nemo_logps(po, model, batch) -> torch.Tensor:
    """NeMo's DPO sequence log-probs (process_batch_dpo's sum over codebooks of _get_batch_logps)."""
    out = model.process_batch(batch)
    v = model.num_all_tokens_per_codebook
    return sum(po._get_batch_logps(out["logits"][:, :, c * v:(c + 1) * v], out["audio_codes_target"][:, c],
                                      out["loss_mask"][:, c]) for c in range(model.num_audio_codebooks))


def store_rows(world, ids):
    """Rows as ttspo's data layer hands them to a policy: generation + context codes."""
    out = []
    for gid in ids:
        row = dict(world["rows"][gid])
        prompt = world["prompts"][int(row[GEN.prompt_id][1:])]
        path = prompt.get(PROMPT.context_audio_codes_path)
        row[CONTEXT_CODES] = None if path is None else torch.load(path).numpy()
        out.append(row)
    return out


def manifest_pairs(world):
    lines = [json.loads(x) for x in (world["dir"] / "export" / "dpo_train_manifest.json").open()]
    return [(lines[2 * k]["generation_id"], lines[2 * k + 1]["generation_id"])
            for k in range(len(lines) // 2)]


# ------------------------------------------------------------------ codec
def test_codec_adapter_round_trips_shapes_and_rates(codec):
    audio = np.random.default_rng(1).uniform(-0.5, 0.5, 16000).astype("float32")  # 1 s at 16 kHz
    codes = codec.encode(audio, 16000)
    frames = math.ceil(SR / 1024)  # resampled to 22050 Hz, one frame per 1024 samples
    assert codes.dtype == np.int64 and codes.shape == (8, frames)
    assert codes.min() >= 0 and codes.max() < codec.codebook_size == 256
    wav, sr = codec.decode(codes)
    assert sr == SR and wav.dtype == np.float32 and wav.shape == (frames * 1024,)
    assert codec.frame_rate == pytest.approx(SR / 1024)
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 256\), got \[0, 256\]"):
        codec.decode(np.full((8, 3), 256) * np.array([[0], [1], [1], [1], [1], [1], [1], [1]]))


# ------------------------------------------------------------------ export
def test_export_codes_are_int32_and_the_duration_range_is_reported(world):
    export = world["export"]
    lines = [json.loads(x) for x in (world["dir"] / "export" / "dpo_train_manifest.json").open()]
    assert export.codes_written == len({x["generation_id"] for x in lines}) > 0
    for line in lines:
        codes = torch.load(line["target_audio_codes_path"])
        assert codes.dtype == torch.int32
        assert codes.tolist() == world["rows"][line["generation_id"]][GEN.codes]
    durations = [x["duration"] for x in lines]
    assert (export.min_duration, export.max_duration) == (min(durations), max(durations))


def test_nemo_offline_po_trains_on_the_export(world, nemo_po):
    """NeMo's own dataset and DPO training step on the export: loss log 2 (policy == reference,
    no dropout), gradients flow. The same manifest with NeMo's int16 codes files crashes."""
    export = world["export"]
    manifest = world["dir"] / "export" / "dpo_train_manifest.json"
    batch, dataset = nemo_dpo_batch(nemo_po, manifest, min_duration=export.min_duration,
                                    max_duration=export.max_duration)
    assert len(dataset) == export.pairs["train"] == batch["chosen"]["text"].shape[0]
    assert batch["chosen"]["audio_codes"].dtype == torch.int32
    nemo_po.train()
    nemo_po.zero_grad()
    loss = nemo_po.training_step(batch, 0)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-5)
    loss.backward()
    assert nemo_po.final_proj.weight.grad.abs().sum() > 0
    # What NeMo's own files give (int16): its gather refuses them.
    int16 = world["dir"] / "int16_manifest.json"
    int16.write_text("".join(
        json.dumps({**json.loads(x), "target_audio_codes_path": world["rows"][json.loads(x)["generation_id"]][
            GEN.codes_path]}) + "\n" for x in manifest.open()))
    batch16, _ = nemo_dpo_batch(nemo_po, int16)
    with pytest.raises(RuntimeError, match="gather"):
        nemo_po.training_step(batch16, 0)
    nemo_po.eval()


# ------------------------------------------------------------------ policy
def test_policy_collate_builds_nemos_batch(world, nemo_po, policy):
    batch, _ = nemo_dpo_batch(nemo_po, world["dir"] / "export" / "dpo_train_manifest.json")
    chosen_ids = [c for c, _ in manifest_pairs(world)]
    ours = policy.collate(store_rows(world, chosen_ids))
    theirs = batch["chosen"]
    for key in ("text", "text_lens", "context_audio_codes", "context_audio_codes_lens",
                "context_text_tokens", "context_text_tokens_lens", "has_text_context",
                "audio_codes", "audio_codes_lens"):
        assert torch.equal(ours[key].long(), theirs[key].long()), key
    assert ours["audio_codes"].dtype == torch.int64
    torch.testing.assert_close(ours["align_prior_matrix"], theirs["align_prior_matrix"])
    assert theirs["has_text_context"].tolist() == [
        world["rows"][g][GEN.prompt_id] == f"p{TEXT_CONTEXT_GROUP}" for g in chosen_ids]


def test_policy_logps_equal_nemos_dpo_logps(world, nemo_po, policy):
    """Chosen and rejected in one forward through the adapter = NeMo's per-side log-probs."""
    batch, _ = nemo_dpo_batch(nemo_po, world["dir"] / "export" / "dpo_train_manifest.json")
    pairs = manifest_pairs(world)
    ids = [c for c, _ in pairs] + [r for _, r in pairs]
    policy.eval()
    with torch.no_grad():
        ours = sequence_logps(policy.forward_teacher(policy.collate(store_rows(world, ids)))).sum(-1)
        ref = nemo_po._reference_model  # eval mode, the policy's weights
        theirs = torch.cat([nemo_logps(nemo_po, ref, batch["chosen"]),
                            nemo_logps(nemo_po, ref, batch["rejected"])])
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-4)
    assert ours.abs().min() > 1.0  # real sums over real frames, not zeros


def test_policy_generates_codes_that_decode(world, policy, codec):
    rows = store_rows(world, ["r:0", "r:4"])  # an audio context and a text context
    batch = policy.collate(rows, with_targets=False)
    sampling = Sampling(temperature=0.8, top_k=40, max_steps=8)
    teacher = lambda: sequence_logps(policy.forward_teacher(policy.collate(rows)))
    with torch.no_grad():
        before = teacher()
    codes, lengths = policy.generate(batch, sampling, torch.Generator().manual_seed(3))
    with torch.no_grad():  # sampling leaves no KV cache behind for the next forward (GRPO's)
        torch.testing.assert_close(teacher(), before)
    again, _ = policy.generate(batch, sampling, torch.Generator().manual_seed(3))
    assert torch.equal(codes, again)  # seeded by the generator, not the global RNG
    assert codes.shape == (2, 8, int(lengths.max())) and all(4 <= n <= 8 for n in lengths.tolist())
    assert codes.dtype == torch.int64 and 0 <= codes.min() and codes.max() < 256
    for i, n in enumerate(lengths.tolist()):
        assert not codes[i, :, n:].any()  # nothing after a sample's end
    for i in range(2):
        wav, sr = codec.decode(codes[i, :, : lengths[i]].numpy())
        assert sr == SR and wav.shape == (int(lengths[i]) * 1024,) and np.isfinite(wav).all()
    # Rows with their own seed (what `generate` and GRPO pass): a row's codes do not
    # depend on the batch it is in.
    seeded = [dict(r, sample_seed=s) for r, s in zip(rows, (11, 12))]
    both, both_lens = policy.generate(policy.collate(seeded, with_targets=False), sampling,
                                      torch.Generator().manual_seed(0))
    alone, alone_lens = policy.generate(policy.collate(seeded[1:], with_targets=False), sampling,
                                        torch.Generator().manual_seed(99))
    n = int(alone_lens[0])
    assert int(both_lens[1]) == n and torch.equal(both[1, :, :n], alone[0, :, :n])


def test_policy_checkpoint_round_trip(world, policy, models, tmp_path):
    path = tmp_path / "policy.pt"
    sha = policy.save(path)
    assert sha == policy.identity().sha256
    other = load_nemo(str(models["magpie"]), init=str(path))
    assert other.identity() == policy.identity()
    assert policy.identity().architecture == "nemo-magpietts"
    assert policy.identity().config["codecmodel_path"] == str(models["codec"])


# ------------------------------------------------------------- ttspo's loop
def test_two_dpo_steps_through_ttspos_loop(world, models, tmp_path):
    from ttspo.trainer.run.config import load_config
    from ttspo.trainer.dpo.loop import read_metrics, train_dpo
    from ttspo.trainer.policy.base import load_policy

    cfg = load_config(None, [f"{k}={v}" for k, v in {
        "train.max_steps": 2, "train.val_every": 0, "train.checkpoint_every": 0, "optim.lr": 1e-3,
        "loss.beta": 0.5, "data.pairs_per_device": 2, "train.progress": False,
        "train.tensorboard": False}.items()])
    spec = f"nemo:{models['magpie']}"
    result = train_dpo(world["store"], "prefs", cfg=cfg, out=tmp_path / "run", spec=spec,
                       echo=lambda *_: None)
    steps = [m for m in read_metrics(tmp_path / "run") if "loss/dpo" in m]
    assert [m["step"] for m in steps] == [1, 2] and result.reference == "live"
    assert steps[0]["loss/dpo"] == pytest.approx(math.log(2), abs=1e-5)  # policy == reference
    assert steps[1]["loss/dpo"] != pytest.approx(math.log(2), abs=1e-4)  # one update later
    final = result.checkpoints[-1]
    trained = load_policy(spec, init=final["path"])
    assert trained.identity().sha256 == final["sha256"] != load_policy(spec).identity().sha256


# ------------------------------------------------------------------- ingest
def test_ingest_jsonl_encodes_audio_without_codes(models, codec, tmp_path):
    from click.testing import CliRunner

    from ttspo.builder.cli.main import cli

    rng = np.random.default_rng(5)
    lines = []
    for i, seconds in enumerate((0.5, 0.8)):
        sf.write(tmp_path / f"a{i}.wav", rng.uniform(-0.3, 0.3, int(SR * seconds)).astype("float32"), SR)
        lines.append({"text": "hello there", "group": 0, "audio_filepath": f"a{i}.wav",
                      "context_text": "calm"})
    (tmp_path / "other.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    store = tmp_path / "store"
    args = ["--store", str(store), "ingest", "jsonl", str(tmp_path / "other.jsonl")]
    result = CliRunner().invoke(cli, args + ["--codec", f"nemo:{models['codec']}"])
    assert (result.exit_code, result.stdout) == (
        0, "ingested 2 generations (1 groups) from run other into generations@1\n")
    rows = Store(store).open("generations").to_table().sort_by(GEN.generation_id).to_pylist()
    for i, row in enumerate(rows):
        expected = codec.encode(*sf.read(tmp_path / f"a{i}.wav", dtype="float32"))
        assert row[GEN.codes] == expected.tolist() and row[GEN.codes_path] is None
    lineage = Store(store).versions("generations")[-1]
    assert str(models["codec"]) in json.dumps(lineage, default=str)
    bad = CliRunner().invoke(cli, args + ["--run", "x", "--codec", "nemo:/no/codec.nemo"])
    assert (bad.exit_code, bad.output) == (
        1, "Error: codec /no/codec.nemo: file not found (give a local .nemo; nothing is downloaded)\n")


def test_dropout_is_what_the_user_asks_and_warned(models, policy):
    import copy

    dropouts = lambda p: {m.p for m in p.modules() if isinstance(m, torch.nn.Dropout)}
    assert dropouts(policy) == {0.0} and policy.model.cfg_unconditional_prob == 0.0  # default
    with pytest.warns(UserWarning, match=r"NeMo policy dropout is on \(dropout 0.1, context dropout 0.2\)"):
        noisy = load_nemo(str(models["magpie"]), config={"dropout": 0.1, "cfg_dropout": 0.2})
    assert dropouts(noisy) == {0.1} and noisy.model.cfg_unconditional_prob == 0.2
    reference = copy.deepcopy(noisy)  # what the loop makes its live reference from
    assert dropouts(reference) == {0.1} and reference.identity() == noisy.identity()


# ------------------------------------------- generate and GRPO (their branches)
def test_generate_rows_with_the_nemo_policy_decode(world, models, codec):
    gen = pytest.importorskip("ttspo.trainer.generate.run")  # lands with `ttspo generate`
    from ttspo.trainer.generate.rows import GenerateOptions

    options = GenerateOptions(run="nemo-gen", checkpoint=str(models["magpie"]),
                              policy=f"nemo:{models['magpie']}", samples=2, batch_size=3,
                              sampling=Sampling(temperature=0.8, top_k=40, max_steps=8),
                              audio_dir=str(world["dir"] / "gen-audio"))
    result = gen.generate(world["store"], options, lineage=make_lineage("generate", {}))
    assert (result.rows, result.prompts) == (6, 3)
    table = world["store"].open("generations").to_table(
        columns=[GEN.generation_id, GEN.codes, GEN.audio_filepath, GEN.sample_rate],
        filter="run = 'nemo-gen'")
    assert table.num_rows == 6
    for row in table.to_pylist():
        codes = np.asarray(row[GEN.codes])
        assert codes.shape[0] == 8 and 4 <= codes.shape[1] <= 8
        wav, sr = codec.decode(codes)
        on_disk, disk_sr = sf.read(row[GEN.audio_filepath], dtype="float32")
        assert sr == disk_sr == row[GEN.sample_rate] == SR and len(on_disk) == len(wav)


def test_one_grpo_step_with_the_nemo_policy(world, models, tmp_path):
    grpo = pytest.importorskip("ttspo.trainer.grpo.loop")  # lands with `ttspo train grpo`
    from ttspo.trainer.run.config import load_config

    cfg = load_config(None, [
        "grpo.prompts_per_step=1", "grpo.n_generations_per_item=2", "grpo.max_decoder_steps=8",
        "grpo.min_valid_codes_len=2", "grpo.where=context_type = 'audio'", "train.max_steps=1",
        "optim.lr=1e-3", "train.val_every=0", "train.progress=false", "train.tensorboard=false"])
    grpo.train_grpo(world["store"], cfg=cfg, out=tmp_path / "grpo", spec=f"nemo:{models['magpie']}",
                    echo=lambda *_: None)
    rows = world["store"].open("rollouts").to_table(columns=[GEN.codes, GEN.codes_len, GEN.cer]).to_pylist()
    assert len(rows) == 2
    for r in rows:
        assert np.asarray(r[GEN.codes]).shape == (8, r[GEN.codes_len]) and r[GEN.cer] is not None
    metrics = [json.loads(x) for x in (tmp_path / "grpo" / "metrics.jsonl").open()]
    assert metrics[0]["step"] == 1 and math.isfinite(metrics[0]["reward/mean"])


def test_policy_from_a_lightning_checkpoint_and_its_config(policy, models, tmp_path):
    from omegaconf import OmegaConf

    from ttspo.builder.core.errors import ModelError
    from ttspo.trainer.policy.base import load_policy

    ckpt, yaml = tmp_path / "last.ckpt", tmp_path / "magpie.yaml"
    torch.save({"state_dict": policy.model.state_dict(), "epoch": 3}, ckpt)
    OmegaConf.save({"model": OmegaConf.to_container(policy.model.cfg)}, yaml)
    restored = load_policy(f"nemo:{ckpt},config={yaml},codec={models['codec']}")
    assert restored.identity().sha256 == policy.identity().sha256
    with pytest.raises(ModelError, match=r"a Lightning checkpoint needs its config "
                                         r"\(nemo:CKPT,config=CONFIG.yaml\)"):
        load_policy(f"nemo:{ckpt}")
    with pytest.raises(ModelError, match=r"its codec /gone/codec.nemo is not a local file"):
        load_policy(f"nemo:{models['magpie']},codec=/gone/codec.nemo")
    with pytest.raises(ModelError, match=r"^policy nemo:/no/magpie.nemo: file not found$"):
        load_policy("nemo:/no/magpie.nemo")


def test_an_undrawn_eos_is_not_a_target_for_the_nemo_policy(world, policy):
    """data.eos_target=sampled: a row that drew no EOS loses exactly its EOS terms (one
    per codebook, right after its codes in NeMo's target); the other row is untouched."""
    from ttspo.trainer.policy.base import EOS_DRAWN, token_logps

    rows = store_rows(world, ["r:0", "r:4"])
    policy.eval()
    with torch.no_grad():
        nemo = policy.forward_teacher(policy.collate(rows))
        cut = policy.forward_teacher(policy.collate([{**r, EOS_DRAWN: d}
                                                     for r, d in zip(rows, (True, False))]))
    n = int(policy.collate(rows)["audio_codes_lens"][1])
    assert bool((nemo.labels[1, :, n] == policy.model.audio_eos_id).all())
    assert torch.equal(nemo.mask.sum(-1)[1] - cut.mask.sum(-1)[1], torch.ones_like(nemo.mask[1, :, 0], dtype=torch.long))
    assert torch.equal(nemo.mask[0], cut.mask[0]) and not bool(cut.mask[1, :, n].any())
    eos = token_logps(nemo)[1, :, n]
    torch.testing.assert_close(sequence_logps(cut)[1], sequence_logps(nemo)[1] - eos, rtol=0, atol=1e-4)
