"""The built-in policy TinyCodecLM: teacher forcing, sampling, checkpoints, learning.

Every model here is a real TinyCodecLM under 2M parameters, built in the test; the
speech is the committed espeak-ng fixtures through the built-in codec.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from ttspo.builder.core.errors import InputError, ModelError
from ttspo.builder.core.schemas import GEN
from ttspo.trainer.policy.base import (CONTEXT_CODES, SAMPLE_SEED, Sampling, load_policy,
                                  sequence_logps, token_logps)
from ttspo.trainer.policy.tiny import IGNORE, TinyCodecLM, TinyConfig

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "audio"
SMALL = TinyConfig(d_model=64, n_heads=2, encoder_layers=1, decoder_layers=2, d_ffn=128,
                   max_text_len=128, max_frames=256)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def build(config: TinyConfig = SMALL, seed: int = 0) -> TinyCodecLM:
    torch.manual_seed(seed)
    return TinyCodecLM(config).eval()


@pytest.fixture(scope="module")
def model() -> TinyCodecLM:
    return build()


@pytest.fixture(scope="module")
def speech(model) -> dict[str, np.ndarray]:
    """Codec codes [8, T] of two fixture utterances."""
    out = {}
    for name in ("clean", "context"):
        audio, sr = sf.read(str(FIXTURES / f"{name}.wav"), dtype="float32")
        out[name] = model.codec.encode(audio, sr)
    return out


def rows(n: int = 3, seed: int = 0, frames=(7, 3, 5), context=(5, None, 2)) -> list[dict]:
    """N rows: audio contexts of CONTEXT frames (None: a text context), targets of FRAMES."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        ctx = context[i % len(context)]
        out.append({
            GEN.generation_id: f"run:{i}", GEN.text: ["hello there", "hi", "a longer sentence"][i % 3],
            GEN.context_text: None if ctx is not None else "a calm voice",
            GEN.codes: rng.integers(0, 256, (8, frames[i % len(frames)])).astype(np.int16).tolist(),
            CONTEXT_CODES: None if ctx is None else rng.integers(0, 256, (8, ctx)).astype(np.int16)})
    return out


def test_shapes_labels_and_masks(model):
    assert sum(p.numel() for p in model.parameters()) < 2_000_000
    batch = model.collate(rows())
    assert batch.size == 3
    tf = model.forward_teacher(batch)
    assert tf.logits.shape == (3, 8, 8, 259)  # longest target 7 frames + EOS, V = 256 + 3
    assert tf.labels.dtype == torch.int64 and tf.mask.dtype == torch.bool
    for i, n in enumerate((7, 3, 5)):
        codes = torch.tensor(rows()[i][GEN.codes])
        assert torch.equal(tf.labels[i, :, :n], codes)
        assert (tf.labels[i, :, n] == 257).all()  # EOS = codebook size + 1, as in NeMo
        assert (tf.labels[i, :, n + 1:] == IGNORE).all()
        assert tf.mask[i, :, :n + 1].all() and not tf.mask[i, :, n + 1:].any()
    logps = sequence_logps(tf)
    assert logps.shape == (3, 8) and torch.isfinite(logps).all()
    assert (token_logps(tf)[~tf.mask] == 0).all()


def test_a_row_gives_the_same_logits_alone_as_in_a_padded_batch(model):
    """Left-padded context prefixes and right-padded targets are masked out."""
    together = model.forward_teacher(model.collate(rows()))
    for i, row in enumerate(rows()):
        alone = model.forward_teacher(model.collate([row]))
        t = alone.logits.shape[2]
        assert torch.allclose(together.logits[i, :, :t], alone.logits[0], atol=1e-5)


def test_changing_a_later_frame_leaves_earlier_logits_unchanged(model):
    base = rows(1)
    changed = rows(1)
    changed[0][GEN.codes] = [list(c) for c in changed[0][GEN.codes]]
    changed[0][GEN.codes][3][4] = (changed[0][GEN.codes][3][4] + 1) % 256  # frame 4, codebook 3
    a = model.forward_teacher(model.collate(base)).logits
    b = model.forward_teacher(model.collate(changed)).logits
    # Position j predicts frame j from frames < j: frame 4 is first seen at position 5.
    assert torch.equal(a[:, :, :5], b[:, :, :5])
    assert not torch.allclose(a[:, :, 5:], b[:, :, 5:])


SAMPLINGS = [Sampling(temperature=1.0, max_steps=30),
             Sampling(temperature=0.7, top_k=20, max_steps=30),
             Sampling(temperature=1.3, cfg_scale=2.5, max_steps=30),
             Sampling(temperature=0.8, top_k=5, cfg_scale=1.5, max_steps=30)]


@pytest.mark.parametrize("sampling", SAMPLINGS, ids=lambda s: f"t{s.temperature}-k{s.top_k}-cfg{s.cfg_scale}")
def test_kv_cached_and_uncached_sampling_give_the_same_tokens(model, sampling):
    batch = model.collate(rows(4), with_targets=False)
    cached = model.generate(batch, replace(sampling, use_kv_cache=True), torch.Generator().manual_seed(7))
    plain = model.generate(batch, replace(sampling, use_kv_cache=False), torch.Generator().manual_seed(7))
    assert torch.equal(cached[1], plain[1])
    assert torch.equal(cached[0], plain[0])
    assert cached[1].max() > 5  # long enough to exercise many cached steps


def greedy_reference(model: TinyCodecLM, row: dict, steps: int, cfg_scale: float) -> torch.Tensor:
    """Argmax decoding by repeated teacher-forced passes (no sampler, no cache); the
    unconditional branch is the same row with no text and no context."""
    uncond = {GEN.text: "", GEN.context_text: None, CONTEXT_CODES: None}
    codes = np.zeros((8, 0), dtype=np.int64)
    for _ in range(steps):
        logits = [model.forward_teacher(model.collate([{**r, GEN.codes: codes}])).logits[0, :, -1]
                  for r in (row, uncond)]
        guided = logits[1] + cfg_scale * (logits[0] - logits[1])
        guided[:, [256, 258]] = float("-inf")  # BOS and PAD are never sampled
        frame = guided.argmax(-1)
        if (frame == 257).any():
            break
        codes = np.concatenate([codes, frame.numpy()[:, None]], axis=1)
    return torch.from_numpy(codes)


@pytest.mark.parametrize("cfg_scale", [1.0, 2.0])
def test_top_k_1_is_argmax_decoding(model, cfg_scale):
    """In a batch whose context prefixes differ in length (left padding), each row's
    top-1 samples equal the argmax decoding of that row alone by teacher forcing."""
    batch = rows(3)
    expected = [greedy_reference(model, row, 12, cfg_scale) for row in batch]
    for seed, temperature in ((0, 1.0), (5, 1.7)):
        sampling = Sampling(temperature=temperature, top_k=1, cfg_scale=cfg_scale, max_steps=12)
        codes, lengths = model.generate(model.collate(batch, with_targets=False), sampling,
                                        torch.Generator().manual_seed(seed))
        for i in range(3):
            assert torch.equal(codes[i, :, :lengths[i]], expected[i])


def test_guidance_changes_the_samples(model):
    batch = model.collate(rows(2), with_targets=False)
    off = model.generate(batch, Sampling(top_k=1, max_steps=12), torch.Generator())
    on = model.generate(batch, Sampling(top_k=1, cfg_scale=3.0, max_steps=12), torch.Generator())
    assert not torch.equal(off[0], on[0])


def test_cfg_dropout_trains_the_unconditional_branch():
    """With cfg_dropout 1 every training row reads what CFG's unconditional branch reads."""
    model = build(replace(SMALL, cfg_dropout=1.0))
    uncond = [{**r, GEN.text: "", GEN.context_text: None, CONTEXT_CODES: None} for r in rows()]
    expected = model.forward_teacher(model.collate(uncond)).logits  # eval mode: nothing dropped
    assert not torch.allclose(model.forward_teacher(model.collate(rows())).logits, expected)
    got = model.train().forward_teacher(model.collate(rows())).logits
    assert torch.allclose(got, expected, atol=1e-5)


def test_a_rows_samples_do_not_depend_on_its_batch(model):
    seeded = [{**r, SAMPLE_SEED: 100 + i} for i, r in enumerate(rows(3))]
    sampling = Sampling(temperature=1.0, top_k=50, cfg_scale=1.5, max_steps=25)
    gen = lambda rs: model.generate(model.collate(rs, with_targets=False), sampling, torch.Generator())
    codes, lengths = gen(seeded)
    for order in ([1], [2, 0], [2, 1, 0]):
        part_codes, part_lengths = gen([seeded[i] for i in order])
        for j, i in enumerate(order):
            n = int(lengths[i])
            assert int(part_lengths[j]) == n
            assert torch.equal(part_codes[j, :, :n], codes[i, :, :n])
    assert len(set(lengths.tolist())) > 1  # rows of several lengths were padded together


def test_the_same_generator_seed_gives_the_same_codes(model):
    batch = model.collate(rows(3), with_targets=False)
    sampling = Sampling(temperature=1.0, max_steps=20)
    a = model.generate(batch, sampling, torch.Generator().manual_seed(3))
    b = model.generate(batch, sampling, torch.Generator().manual_seed(3))
    c = model.generate(batch, sampling, torch.Generator().manual_seed(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    n = a[0].shape[2]
    padded = torch.arange(n)[None, None, :] >= a[1][:, None, None]
    assert (a[0][padded.expand_as(a[0])] == 258).all()  # PAD after each row's length
    assert (a[0][~padded.expand_as(a[0])] < 256).all()


def test_generated_codes_decode_to_frames_times_1024_samples(model):
    codes, lengths = model.generate(model.collate(rows(3), with_targets=False),
                                    Sampling(max_steps=15), torch.Generator().manual_seed(3))
    assert (lengths >= 2).all()  # (seed 3: every sample has several frames)
    for i in range(3):
        audio, sr = model.codec.decode(codes[i, :, :lengths[i]].numpy())
        assert sr == 22050 and audio.shape == (int(lengths[i]) * 1024,)


def test_save_load_round_trip(model, tmp_path):
    path = tmp_path / "ckpt" / "tiny.pt"
    sha = model.save(path)
    assert sha == hashlib.sha256(path.read_bytes()).hexdigest() == model.identity().sha256
    loaded = TinyCodecLM.load(path)
    assert loaded.identity() == model.identity()
    assert model.identity().architecture == "tiny" and model.identity().config["d_model"] == 64
    batch = model.collate(rows())
    assert torch.equal(loaded.forward_teacher(batch).logits, model.forward_teacher(batch).logits)
    sampling = Sampling(temperature=0.9, cfg_scale=2.0, max_steps=10)
    assert torch.equal(loaded.generate(batch, sampling, torch.Generator().manual_seed(2))[0],
                       model.generate(batch, sampling, torch.Generator().manual_seed(2))[0])
    again = load_policy("tiny", init=str(path), config=SMALL)
    assert again.identity().sha256 == sha
    # without the weights' sha (nothing serialised): the same architecture, config and key
    light = model.identity(with_sha256=False)
    assert light.sha256 == "" and light.config_sha256 == model.identity().config_sha256
    assert (light.architecture, light.config) == (model.identity().architecture, model.identity().config)


def test_load_policy_builds_a_fresh_tiny_policy_from_a_config():
    fresh = load_policy("tiny", config={"d_model": 32, "n_heads": 2, "d_ffn": 64, "decoder_layers": 1})
    assert isinstance(fresh, TinyCodecLM) and fresh.config.d_model == 32
    assert fresh.identity().config == {**asdict(TinyConfig()), "d_model": 32, "n_heads": 2,
                                       "d_ffn": 64, "decoder_layers": 1}
    with pytest.raises(ModelError, match=r"^unknown tiny policy config key 'd_modle' \(known: cfg_dropout, "):
        load_policy("tiny", config={"d_modle": 32})
    with pytest.raises(ModelError, match=r"^policy 'tiny' takes no argument, got 'tiny:big'$"):
        load_policy("tiny:big")


def test_loading_what_is_not_a_tiny_checkpoint_is_one_line(model, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    other = tmp_path / "other.pt"
    torch.save({"layer.weight": torch.zeros(2)}, other)
    bigger = tmp_path / "bigger.pt"
    build(replace(SMALL, d_model=32, d_ffn=64)).save(bigger)
    foreign = tmp_path / "foreign.pt"
    torch.save({"format": "ttspo-policy-v1", "architecture": "nemo-magpietts", "config": {}}, foreign)
    cases = [
        (lambda: TinyCodecLM.load(tmp_path / "missing.pt"), f"{tmp_path / 'missing.pt'}: no such checkpoint file"),
        (lambda: TinyCodecLM.load(other), f"{other}: not a ttspo policy checkpoint (no 'ttspo-policy-v1' header)"),
        (lambda: TinyCodecLM.load(foreign), f"{foreign}: a checkpoint of policy 'nemo-magpietts', not 'tiny'"),
        (lambda: load_policy("tiny", init=str(bigger), config=SMALL),
         f"{bigger}: a tiny policy of another size: d_model=32 (expected 64), d_ffn=64 (expected 128)"),
        (lambda: load_policy("magpie"), "unknown policy 'magpie' (known: nemo, tiny)"),
    ]
    for load, message in cases:
        with pytest.raises(ModelError) as e:
            load()
        assert str(e.value) == message
    with pytest.raises(ModelError) as e:
        TinyCodecLM.load(text)
    assert str(e.value).startswith(f"{text}: not a ttspo policy checkpoint (")
    assert "\n" not in str(e.value)


def test_bad_rows_are_named(model):
    row = rows(1)[0]
    with pytest.raises(InputError, match=r"^run:0: codes: shape \[7, 7\], expected \[8, frames\]$"):
        model.collate([{**row, GEN.codes: row[GEN.codes][:7]}])
    as_object = np.empty(8, dtype=object)  # what Arrow's to_numpy gives for list<list<int16>>
    as_object[:] = [np.asarray(c, dtype=np.int16) for c in row[GEN.codes]]
    assert torch.equal(model.collate([{**row, GEN.codes: as_object}]).codes,
                       model.collate([row]).codes)
    with pytest.raises(InputError, match=r"^run:0: codes: codes outside \[0, 256\): \[-1, 255\]$"):
        model.collate([{**row, GEN.codes: [[-1] + c[1:] for c in row[GEN.codes]]}])
    with pytest.raises(InputError, match=r"^run:0: codes: codes of type float64, not integers$"):
        model.collate([{**row, GEN.codes: np.asarray(row[GEN.codes], dtype=np.float64) + 0.5}])
    with pytest.raises(InputError, match=r"^run:1: no sample_seed while other rows of the batch have one$"):
        model.collate([{**row, SAMPLE_SEED: 1}, {**row, GEN.generation_id: "run:1"}])
    with pytest.raises(ModelError, match=r"^tiny policy config: d_model 64 is not a multiple of n_heads 3$"):
        replace(SMALL, n_heads=3)
    with pytest.raises(InputError, match=r"^run:0: no codes to train on$"):
        model.collate([{**row, GEN.codes: None}])
    with pytest.raises(InputError, match=r"^5 context frames \+ max_steps 252 exceed"):
        model.generate(model.collate([row], with_targets=False), Sampling(max_steps=252),
                       torch.Generator())


@pytest.mark.slow
def test_teacher_forcing_learns_one_utterance(speech):
    """A few dozen Adam steps on one real utterance lower the loss a lot; every
    parameter gets a gradient (text encoder, cross-attention, prefix, heads)."""
    model = build(seed=1).train()
    row = {GEN.text: "Please call Stella and ask her to bring these things",
           GEN.codes: speech["clean"], CONTEXT_CODES: speech["context"][:, :20]}
    batch = model.collate([row])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for step in range(40):
        tf = model.forward_teacher(batch)
        loss = -token_logps(tf).sum() / tf.mask.sum()
        optimizer.zero_grad()
        loss.backward()
        if step == 0:
            silent = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
            assert silent == []
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] > 5.0  # about log(259) at the start
    assert losses[-1] < 0.15 * losses[0], losses
