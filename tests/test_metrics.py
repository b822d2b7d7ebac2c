"""CER/WER: parity with NeMo's definition, defined values for empty texts, reward clamps."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ttspo.builder.scoring.metrics import (NORMALIZERS, cer, cer_reward, clamped_cer, clamped_ssim,
                             error_rates, normalize_text, pesq_reward, ssim_reward, wer)


def levenshtein(a, b) -> int:
    """Plain dynamic-programming edit distance: NeMo's editdistance.eval."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, y in enumerate(b, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y))
        prev = cur
    return prev[-1]


def nemo_rates(ref: str, hyp: str) -> tuple[float, float]:
    """NeMo's word_error_rate([hyp], [ref]) with and without use_cer (finite cases)."""
    return (levenshtein(list(hyp), list(ref)) / len(ref),
            levenshtein(hyp.split(), ref.split()) / len(ref.split()))


# (raw text, NeMo's process_text_for_cer result), worked out by hand from its steps.
NEMO_NORMALISED = [
    ("Hello, World!", "hello world"),
    ("It's a well-known fact.", "its a well known fact"),
    ("state-of-the-art; really", "state of the art really"),
    ("Don't STOP   me\tnow", "dont stop me now"),
    ("Don’t", "don’t"),  # the curly apostrophe is not in string.punctuation
    ("a & b", "a  b"),  # punctuation goes after spaces collapse: the double space stays
    ("(quoted) \"words\"", "quoted words"),
    ("visit h t t p colon", "visit h t t p colon"),  # NeMo's http fix discards its result
    ("w w w dot site", "w w w dot site"),
    ("", ""),
]


@pytest.mark.parametrize("raw,expected", NEMO_NORMALISED)
def test_nemo_normalizer_matches_nemo_steps(raw, expected):
    assert normalize_text(raw, "nemo") == expected


@pytest.mark.parametrize("raw,expected", [
    ("Don’t", "dont"),
    ("visit h t t p colon", "visit http colon"),
    ("w w w dot site", "www dot site"),
    ("a & b", "a b"),
    ("Café-au-lait!", "café au lait"),
])
def test_basic_normalizer(raw, expected):
    assert normalize_text(raw, "basic") == expected


def test_none_normalizer_keeps_text():
    assert normalize_text("Hello, World!", "none") == "Hello, World!"


# Hand-written (reference, hypothesis, CER, WER) under the nemo normaliser.
PAIRS = [
    ("Hello, world!", "hello world", 0.0, 0.0),
    ("It's well-known.", "its well known", 0.0, 0.0),
    ("It's well-known.", "it is well known", 2 / 14, 2 / 3),  # "its" -> "it is"
    ("The cat sat.", "the cat sat down", 5 / 11, 1 / 3),
    ("The cat sat.", "the bat sat", 1 / 11, 1 / 3),
    ("Don’t go", "dont go", 1 / 8, 1 / 2),  # curly apostrophe kept by NeMo
    ("visit http now", "visit h t t p now", 3 / 14, 4 / 3),  # no http fix in NeMo
    ("a & b", "a b", 1 / 4, 0.0),  # NeMo's double space counts as a character
]


@pytest.mark.parametrize("ref,hyp,want_cer,want_wer", PAIRS)
def test_cer_wer_parity_with_nemo_on_hand_written_pairs(ref, hyp, want_cer, want_wer):
    assert cer(ref, hyp) == pytest.approx(want_cer)
    assert wer(ref, hyp) == pytest.approx(want_wer)
    n_ref, n_hyp = normalize_text(ref), normalize_text(hyp)
    assert (cer(ref, hyp), wer(ref, hyp)) == pytest.approx(nemo_rates(n_ref, n_hyp))


def test_basic_normalizer_joins_spelled_http():
    assert cer("visit http now", "visit h t t p now", normalizer="basic") == 0.0
    assert cer("Don’t go", "dont go", normalizer="basic") == 0.0


text = st.text(alphabet="abc ,.-'!xyz", max_size=20)


@settings(max_examples=150, deadline=None)
@given(ref=text, hyp=text)
def test_cer_wer_equal_nemo_formula_on_random_texts(ref, hyp):
    r = error_rates(ref, hyp)
    if not r.reference.split():
        return  # NeMo's inf cases: covered by the empty-text tests
    want_cer, want_wer = nemo_rates(r.reference, r.hypothesis)
    assert r.cer == pytest.approx(want_cer)
    assert r.wer == pytest.approx(want_wer)


@pytest.mark.parametrize("ref,hyp,want", [
    ("", "", 0.0),
    ("", "something said", 1.0),  # NeMo: inf
    ("!!!", "", 0.0),  # normalises to empty
    ("words here", "", 1.0),
    (None, None, 0.0),
])
def test_empty_texts_give_defined_values(ref, hyp, want):
    assert cer(ref, hyp) == want
    assert wer(ref, hyp) == want
    assert math.isfinite(cer(ref, hyp))


def test_error_rates_keep_the_normalised_texts():
    r = error_rates("Hello, World!", "HELLO there")
    assert (r.reference, r.hypothesis) == ("hello world", "hello there")


def test_unknown_normalizer_is_an_error():
    with pytest.raises(ValueError, match="unknown normalizer 'fancy'"):
        cer("a", "b", normalizer="fancy")


def test_normalizer_choices_of_cli_match_metrics():
    from ttspo.builder.cli.score import NORMALIZER_CHOICES

    assert NORMALIZER_CHOICES == NORMALIZERS


def test_clamped_variants():
    assert clamped_cer(1.7) == 1.0 and clamped_cer(-0.1) == 0.0 and clamped_cer(0.3) == 0.3
    assert clamped_ssim(0.95) == 0.9 and clamped_ssim(-0.2) == 0.0 and clamped_ssim(0.5) == 0.5
    assert clamped_ssim(0.95, best=1.0) == 0.95


def test_rewards_follow_nemo_grpo_shapes():
    assert cer_reward(0.0) == 1.0 and cer_reward(0.1) == 0.5 and cer_reward(1.0) == 0.0
    assert cer_reward(3.0) == 0.0  # clamped before shaping
    assert cer_reward(0.55) == pytest.approx(0.25)
    assert ssim_reward(0.9) == 1.0 and ssim_reward(0.6) == 0.5 and ssim_reward(0.0) == 0.0
    assert ssim_reward(0.99) == 1.0
    assert ssim_reward(0.3) == pytest.approx(0.25)
    assert pesq_reward(4.5) == 1.0 and pesq_reward(2.25) == 0.5 and pesq_reward(-1) == 0.0
