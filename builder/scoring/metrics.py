"""Text metrics (CER, WER) with NeMo's normalisation, and the clamped reward forms.

CER and WER are computed with jiwer after normalising both texts. The default
normaliser reproduces the one NeMo's MagpieTTS generation uses when it writes
``cer_gt``/``wer_gt`` (``process_text_for_cer``), so numbers computed here match
the ones NeMo wrote for the same transcripts:

- ``nemo``: lowercase; drop ``,``; ``-`` becomes a space; drop ``'``, ``;``, ``.``;
  collapse whitespace; then drop every remaining ``string.punctuation``
  character. NeMo's source also calls ``.replace("h t t p", "http")`` and
  ``.replace("w w w", "www")`` but discards the results, so those fixes never
  apply to NeMo's numbers; parity means they do not apply here either. Removing
  punctuation after collapsing spaces can leave a double or edge space
  ("a & b" -> "a  b"); NeMo counts those characters and so do we.
- ``basic``: what NeMo's later evaluation text processor does: lowercase, ``-``
  becomes a space, keep only letters, digits (any script) and spaces (so curly
  quotes and other Unicode punctuation go too), collapse whitespace, join the
  ASR artefacts "h t t p" -> "http" and "w w w" -> "www", strip.
- ``none``: the texts as they are (whitespace still separates words for WER).

CER = character edit distance / reference characters (spaces count), WER = word
edit distance / reference words, as in NeMo's ``word_error_rate``. Where NeMo
returns ``inf`` (empty reference) we return defined values instead:

- empty reference and empty hypothesis: 0.0 (nothing to say, nothing said);
- empty reference, non-empty hypothesis: 1.0 (everything said is wrong);
- empty hypothesis, non-empty reference: 1.0 (falls out of the definition).

CER and WER are otherwise unbounded above (insertions). The GRPO reward uses
clamped values (CER and SSIM to [0, 1], SSIM further to at most the best
achievable similarity, 0.9 by default): see :func:`clamped_cer` and
:func:`clamped_ssim`, and the reward shapes below them.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

import jiwer

NORMALIZERS = ("nemo", "basic", "none")
DEFAULT_NORMALIZER = "nemo"

# Mirrors the GRPO defaults of NeMo (nemo-formats.md section 5).
BEST_SSIM_ACHIEVABLE = 0.9
MEAN_CER_DATASET = 0.1
MEAN_SSIM_DATASET = 0.6
PESQ_MAX = 4.5

_PUNCTUATION = str.maketrans("", "", string.punctuation)
_SPACES = re.compile(r"\s+")
# Characters are compared one by one, spaces included: no stripping, unlike
# jiwer's default CER transform, because NeMo does not strip either.
_CHARS = jiwer.ReduceToListOfListOfChars()
_WORDS = jiwer.ReduceToListOfListOfWords()


def _nemo(text: str) -> str:
    text = text.lower().replace(",", "").replace("-", " ")
    text = text.replace("'", "").replace(";", "").replace(".", "")
    text = " ".join(text.split())
    return text.translate(_PUNCTUATION)


def _basic(text: str) -> str:
    text = text.lower().replace("-", " ")
    text = "".join(c for c in text if c.isalnum() or c.isspace())
    text = " ".join(text.split())
    text = text.replace("h t t p", "http").replace("w w w", "www")
    return text.strip()


_NORMALIZE = {"nemo": _nemo, "basic": _basic, "none": lambda t: t}


def check_normalizer(normalizer: str) -> None:
    if normalizer not in _NORMALIZE:
        raise ValueError(f"unknown normalizer '{normalizer}' (choose {', '.join(NORMALIZERS)})")


def normalize_text(text: str | None, normalizer: str = DEFAULT_NORMALIZER) -> str:
    """``text`` normalised for CER/WER by NORMALIZER (nemo, basic or none)."""
    check_normalizer(normalizer)
    return _NORMALIZE[normalizer](text or "")


@dataclass(frozen=True)
class ErrorRates:
    """CER and WER of one hypothesis, with the normalised texts they compare."""

    cer: float
    wer: float
    reference: str  # normalised
    hypothesis: str  # normalised


def _rate(errors: int, reference_len: int, hypothesis_len: int) -> float:
    if reference_len == 0:
        return 0.0 if hypothesis_len == 0 else 1.0
    return errors / reference_len


def _char_rate(ref: str, hyp: str) -> float:
    if not ref or not hyp:
        return _rate(len(hyp) if not ref else len(ref), len(ref), len(hyp))
    out = jiwer.process_characters(ref, hyp, reference_transform=_CHARS,
                                   hypothesis_transform=_CHARS)
    return _rate(out.substitutions + out.deletions + out.insertions, len(ref), len(hyp))


def _word_rate(ref: str, hyp: str) -> float:
    ref_words, hyp_words = ref.split(), hyp.split()
    if not ref_words or not hyp_words:
        n = len(ref_words) if ref_words else len(hyp_words)
        return _rate(n, len(ref_words), len(hyp_words))
    out = jiwer.process_words(" ".join(ref_words), " ".join(hyp_words),
                              reference_transform=_WORDS, hypothesis_transform=_WORDS)
    return _rate(out.substitutions + out.deletions + out.insertions,
                 len(ref_words), len(hyp_words))


def error_rates(reference: str | None, hypothesis: str | None,
                normalizer: str = DEFAULT_NORMALIZER) -> ErrorRates:
    """CER and WER of HYPOTHESIS against REFERENCE after normalisation."""
    ref = normalize_text(reference, normalizer)
    hyp = normalize_text(hypothesis, normalizer)
    return ErrorRates(_char_rate(ref, hyp), _word_rate(ref, hyp), ref, hyp)


def cer(reference: str | None, hypothesis: str | None,
        normalizer: str = DEFAULT_NORMALIZER) -> float:
    """Character error rate (NeMo's definition; defined for empty texts)."""
    return error_rates(reference, hypothesis, normalizer).cer


def wer(reference: str | None, hypothesis: str | None,
        normalizer: str = DEFAULT_NORMALIZER) -> float:
    """Word error rate (NeMo's definition; defined for empty texts)."""
    return error_rates(reference, hypothesis, normalizer).wer


# ------------------------------------------------------------ for rewards
def clamped_cer(value: float) -> float:
    """CER clamped to [0, 1], as the GRPO reward reads it."""
    return min(max(float(value), 0.0), 1.0)


def clamped_ssim(value: float, best: float = BEST_SSIM_ACHIEVABLE) -> float:
    """SSIM clamped to [0, best]: similarity above what is achievable earns nothing."""
    return min(max(float(value), 0.0), best)


def cer_reward(value: float, mean_cer: float = MEAN_CER_DATASET) -> float:
    """NeMo's GRPO CER reward: 0.5 at the dataset mean, 1 at 0, 0 at CER 1."""
    c = clamped_cer(value)
    if c <= mean_cer:
        return 0.5 + 0.5 * (mean_cer - c) / mean_cer
    return 0.5 - 0.5 * (c - mean_cer) / (1.0 - mean_cer)


def ssim_reward(value: float, mean_ssim: float = MEAN_SSIM_DATASET,
                best: float = BEST_SSIM_ACHIEVABLE) -> float:
    """NeMo's GRPO SSIM reward: 0.5 at the dataset mean, 1 at the best achievable."""
    s = clamped_ssim(value, best)
    if s >= mean_ssim:
        return 0.5 + 0.5 * (s - mean_ssim) / (best - mean_ssim)
    return 0.5 - 0.5 * (mean_ssim - s) / mean_ssim


def pesq_reward(value: float) -> float:
    """PESQ (or SQUIM's PESQ estimate) scaled to [0, 1] by its maximum, 4.5."""
    return min(max(float(value) / PESQ_MAX, 0.0), 1.0)
