"""Make the bundled demo corpus (run by hand; its output is committed).

    apt-get install espeak-ng sox        # the synthesiser and the audio tool
    .venv/bin/python trainer/demo/corpus/make_corpus.py

What it writes, beside this script (NeMo's step-1 inputs and step-2 outputs):

- ``challenging_texts.txt``, ``regular_texts_for_audiocontext.txt``,
  ``regular_texts_for_textcontext.txt``, ``text_contexts.txt``,
  ``audio_contexts.jsonl`` (paths relative to this folder; ``ttspo demo``
  rewrites them to absolute paths at run time) and ``contexts/*.wav`` (one
  recording per speaker, with its ``*_codes.pt``);
- ``manifest.json``: the text-context manifest, made by :mod:`ttspo.builder.prompts.draw`
  with ``corpus.json``'s seed and counts (20 pairs x 6 samples = 120 lines);
- ``generations/audios/predicted_audioRank{r}_{i}.wav`` / ``_codes.pt`` /
  ``_metrics.json``: NeMo's generation layout with 2 ranks (file (r, i) is
  manifest line ``i*2 + r``);
- ``reference_audios.jsonl`` and ``references/*.wav``: a clean recording of
  each audio-context pair's text in its context voice (a PESQ reference);
- ``variants.jsonl``: what each generation really is (the ground truth a
  listener would give): line, failure kind, voice, speed, pitch;
- ``corpus.json``: the settings above, the codec fingerprint and model names;
- ``trainer/policy/assets/codec.npz``: the built-in codec, fitted on this audio.

Speakers are espeak-ng voices. Each group of 6 samples renders the pair's text in
its voice with the failures real codec-LM TTS makes, in a seeded random order:
``clean`` (its own speed and pitch), ``dropped`` (a word left out),
``repeated`` (a word said twice), ``truncated`` (sox trims the end),
``other_speaker`` (another voice), ``pause`` (a long pause with a mumble
mid-sentence). One group (``TIE_GROUP``) has two bit-identical clean samples, so
its (CER, SSIM) tie exactly. Audio is 16 kHz mono PCM16 (NeMo writes its model's
rate, 22050 Hz; 16 kHz is what the scoring models read and keeps the corpus
small); the codec resamples to 22050 Hz when encoding.

Metrics are computed the way NeMo's generation step does, with the offline
defaults: pocketsphinx transcribes, CER/WER use NeMo's normaliser
(:mod:`ttspo.builder.scoring.metrics`), ``pred_transcript`` and ``gt_transcript`` are the
normalised texts, and ``spk_similarity`` is the Resemblyzer cosine between the
generation and the record's ``audio_filepath``. For audio-context records that
is the context; for text-context records it is, as in NeMo, the dummy
``audio_filepath`` (the first audio context), so their SSIM measures closeness
to that voice, not fidelity to the text context. One group (``INVALID_GROUP``)
is written as NeMo writes a batch whose ASR failed: ``pred_transcript``
"<INVALID>", ``cer_gt`` = ``wer_gt`` = 1.0, ``spk_similarity`` 0.0.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))

from ttspo.builder.scoring import metrics
from ttspo.builder.prompts import draw as prompts  # noqa: E402
from ttspo.builder.scoring import cosine, load_asr, load_speaker  # noqa: E402
from ttspo.trainer.policy import codec as codec_mod  # noqa: E402

SEED = 0
NSAMPLES_PERPAIR = 6
RANKS = 2
SAMPLE_RATE = 16000
COUNTS = prompts.PairCounts(audio_per_challenging=3, text_per_challenging=1,
                            audio_per_regular=1, text_per_regular=1)
INVALID_GROUP = 5
TIE_GROUP = 2
KINDS = ("clean", "dropped", "repeated", "truncated", "other_speaker", "pause")

CHALLENGING = [
    "She sells sea shells by the sea shore.",
    "The meeting moved to 4:30 PM on May 21st.",
    "Red lorry, yellow lorry, red lorry, yellow lorry.",
]
REGULAR_AUDIO = [
    "The weather will be warm all week.",
    "He opened the window to let the air in.",
    "Our train leaves in ten minutes.",
    "She read the letter twice.",
    "The children played until dark.",
]
REGULAR_TEXT = [
    "Thank you for calling, how can I help?",
    "The museum is closed on Monday.",
    "Turn left at the bridge.",
]
# Speakers: espeak-ng voices, each with its context sentence and base pitch.
SPEAKERS = {
    "edward": ("en-us+edward", 45, "I have read aloud for many years and I still enjoy it."),
    "f5": ("en-us+f5", 55, "Good morning, and welcome to the evening news."),
    "klatt4": ("en-us+klatt4", 50, "Please leave a message after the tone."),
    "f2": ("en-us+f2", 60, "We walked along the beach and watched the boats."),
}
OUTSIDER = "en-us+m3"  # a voice no context has: the "another speaker" failure
TEXT_CONTEXTS = {  # NeMo-style speaker/style descriptions -> the voice they ask for
    "Speaker and Emotion: | Language:en Dataset:espeak-ng Speaker:edward Emotion:neutral |": "edward",
    "Speaker and Emotion: | Language:en Dataset:espeak-ng Speaker:f5 Emotion:calm |": "f5",
    "Speaker and Emotion: | Language:en Dataset:espeak-ng Speaker:f2 Emotion:happy |": "f2",
}
BASE_SPEED = 175


# ------------------------------------------------------------------- audio
def run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


def espeak(text: str, voice: str, speed: int, pitch: int, *, out: Path,
           amplitude: int = 100) -> Path:
    run("espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-a", str(amplitude),
        "-w", str(out), text)
    return out


def to_corpus_wav(inputs: list[Path], out: Path, *effects: str) -> None:
    """Concatenate INPUTS into a 16 kHz mono PCM16 wav, peak-normalised to -2 dBFS.

    espeak-ng ends every utterance with ~0.25 s of silence, which a codec-LM's
    end-of-speech token does not make: trailing silence is cut to 50 ms. No
    dither (-D): sox's default dither is random, and the corpus must be
    reproducible (two identical renderings must give identical files).
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    run("sox", "-D", *map(str, inputs), "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(out),
        *effects, "reverse", "silence", "1", "0.01", "-45d", "reverse", "pad", "0", "0.05",
        "gain", "-n", "-2")


def silence(seconds: float, out: Path) -> Path:
    run("sox", "-D", "-n", "-r", "22050", "-c", "1", "-b", "16", str(out), "trim", "0", f"{seconds}")
    return out


def duration(path: Path) -> float:
    info = sf.info(str(path))
    return info.frames / info.samplerate


# ---------------------------------------------------------------- inputs
def write_inputs() -> None:
    (HERE / "challenging_texts.txt").write_text("\n".join(CHALLENGING) + "\n")
    (HERE / "regular_texts_for_audiocontext.txt").write_text("\n".join(REGULAR_AUDIO) + "\n")
    (HERE / "regular_texts_for_textcontext.txt").write_text("\n".join(REGULAR_TEXT) + "\n")
    (HERE / "text_contexts.txt").write_text("\n".join(TEXT_CONTEXTS) + "\n")


def render_contexts(tmp: Path) -> None:
    lines = []
    for name, (voice, pitch, sentence) in SPEAKERS.items():
        wav = HERE / "contexts" / f"{name}.wav"
        to_corpus_wav([espeak(sentence, voice, BASE_SPEED, pitch, out=tmp / f"ctx_{name}.wav")],
                      wav)
        lines.append({"context_audio_filepath": f"contexts/{name}.wav",
                      "context_audio_duration": round(duration(wav), 4),
                      "context_audio_codes_path": f"contexts/{name}_codes.pt"})
    (HERE / "audio_contexts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


def make_manifest() -> list[dict]:
    inputs = prompts.load_inputs(
        challenging_texts=HERE / "challenging_texts.txt",
        regular_texts_for_audiocontext=HERE / "regular_texts_for_audiocontext.txt",
        regular_texts_for_textcontext=HERE / "regular_texts_for_textcontext.txt",
        audio_contexts=HERE / "audio_contexts.jsonl",
        text_contexts=HERE / "text_contexts.txt")
    records = prompts.make_pairs(inputs, COUNTS, seed=SEED)
    prompts.write_manifest(HERE / "manifest.json", records, NSAMPLES_PERPAIR)
    return records


def speaker_of(record: dict) -> str:
    if record.get("context_audio_filepath"):
        return Path(record["context_audio_filepath"]).stem
    return TEXT_CONTEXTS[record["context_text"]]


# ----------------------------------------------------------- generations
def plan_group(group: int, record: dict) -> list[dict]:
    """The 6 samples of one group: kinds in a seeded order, each its own speed/pitch."""
    rng = random.Random(f"{SEED}:{group}")
    kinds = list(KINDS)
    rng.shuffle(kinds)
    name = speaker_of(record)
    voice, pitch, _ = SPEAKERS[name]
    others = [n for n in SPEAKERS if n != name]
    plans = []
    for kind in kinds:
        plan = {"kind": kind, "voice": voice, "speed": BASE_SPEED + rng.randint(-15, 15),
                "pitch": pitch + rng.randint(-6, 6)}
        if kind == "other_speaker":
            plan["voice"] = rng.choice([OUTSIDER, SPEAKERS[rng.choice(others)][0]])
        plan["text"] = sample_text(kind, record["text"], rng)
        if kind == "truncated":
            plan["keep"] = round(rng.uniform(0.45, 0.7), 2)
        plans.append(plan)
    if group == TIE_GROUP:  # a second, bit-identical clean sample: an exact (CER, SSIM) tie
        clean = next(p for p in plans if p["kind"] == "clean")
        slot = next(i for i, p in enumerate(plans) if p["kind"] == "pause")
        plans[slot] = dict(clean)
    return plans


def sample_text(kind: str, text: str, rng: random.Random) -> str:
    words = text.split()
    if kind == "dropped":
        i = rng.randrange(1, len(words))
        return " ".join(words[:i] + words[i + 1:])
    if kind == "repeated":
        i = rng.randrange(len(words))
        return " ".join(words[: i + 1] + [words[i].strip(",.?")] + words[i + 1:])
    return text


def render_sample(plan: dict, out: Path, tmp: Path) -> None:
    raw = espeak(plan["text"], plan["voice"], plan["speed"], plan["pitch"], out=tmp / "raw.wav")
    if plan["kind"] == "truncated":
        to_corpus_wav([raw], out, "trim", "0", f"{duration(raw) * plan['keep']:.3f}")
    elif plan["kind"] == "pause":
        words = plan["text"].split()
        half = len(words) // 2
        a = espeak(" ".join(words[:half]), plan["voice"], plan["speed"], plan["pitch"],
                   out=tmp / "a.wav")
        b = espeak(" ".join(words[half:]), plan["voice"], plan["speed"], plan["pitch"],
                   out=tmp / "b.wav")
        mumble = espeak("hmm", plan["voice"], plan["speed"], plan["pitch"], out=tmp / "m.wav",
                        amplitude=35)
        gap = silence(0.4, tmp / "gap.wav")
        to_corpus_wav([a, gap, mumble, gap, b], out)
    else:
        to_corpus_wav([raw], out)


def audio_path(line: int, suffix: str = ".wav") -> Path:
    r, i = line % RANKS, line // RANKS
    return HERE / "generations" / "audios" / f"predicted_audioRank{r}_{i}{suffix}"


def render_generations(records: list[dict], tmp: Path) -> list[dict]:
    variants = []
    for group, record in enumerate(records):
        for sample, plan in enumerate(plan_group(group, record)):
            line = group * NSAMPLES_PERPAIR + sample
            render_sample(plan, audio_path(line), tmp)
            variants.append({"line": line, "group": group, "sample": sample, **plan})
    (HERE / "variants.jsonl").write_text("".join(json.dumps(v) + "\n" for v in variants))
    return variants


def render_references(records: list[dict], tmp: Path) -> None:
    """A clean rendering of each audio-context pair's text in its voice (PESQ reference)."""
    lines, done = [], set()
    for record in records:
        ctx = record.get("context_audio_filepath")
        if not ctx or (record["text"], ctx) in done:
            continue
        done.add((record["text"], ctx))
        name = speaker_of(record)
        voice, pitch, _ = SPEAKERS[name]
        rel = f"references/ref{len(lines):02d}_{name}.wav"
        to_corpus_wav([espeak(record["text"], voice, BASE_SPEED, pitch, out=tmp / "ref.wav")],
                      HERE / rel)
        lines.append({"text": record["text"], "context_audio_filepath": ctx,
                      "reference_audio_filepath": rel})
    (HERE / "reference_audios.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


# ------------------------------------------------------------- codes, metrics
def read(path: Path) -> tuple[np.ndarray, int]:
    audio, sr = sf.read(str(path), dtype="float32")
    return audio, sr


def fit_and_encode(lines: int) -> codec_mod.Codec:
    import torch

    wavs = [audio_path(n) for n in range(lines)] + sorted((HERE / "contexts").glob("*.wav"))
    codec = codec_mod.fit([read(w) for w in wavs], seed=SEED)
    codec.save(codec_mod.ASSET_PATH)
    codec = codec_mod.Codec.load()  # encode with the weights as shipped (float16)
    for wav in wavs:
        codes = torch.from_numpy(codec.encode(*read(wav)))
        torch.save(codes, wav.with_name(wav.stem + "_codes.pt"))
    return codec


def write_metrics(records: list[dict]) -> tuple[str, str]:
    import torch

    # One thread: multi-threaded reductions change the speaker embeddings in the
    # 7th digit from run to run; the committed metrics must come back identical.
    torch.set_num_threads(1)
    asr, sv = load_asr("pocketsphinx"), load_speaker("resemblyzer")
    embeddings: dict[str, np.ndarray] = {}

    def embed(rel: str) -> np.ndarray:
        if rel not in embeddings:
            embeddings[rel] = sv.embed(*read(HERE / rel))
        return embeddings[rel]

    for group, record in enumerate(records):
        for sample in range(NSAMPLES_PERPAIR):
            line = group * NSAMPLES_PERPAIR + sample
            audio, sr = read(audio_path(line))
            gt = metrics.normalize_text(record["text"])
            if group == INVALID_GROUP:
                item = {"cer_gt": 1.0, "wer_gt": 1.0, "duration": len(audio) / sr,
                        "spk_similarity": 0.0, "pred_transcript": "<INVALID>", "gt_transcript": gt}
            else:
                rates = metrics.error_rates(record["text"], asr.transcribe(audio, sr))
                ssim = cosine(sv.embed(audio, sr), embed(record["audio_filepath"]))
                item = {"cer_gt": rates.cer, "wer_gt": rates.wer, "duration": len(audio) / sr,
                        "spk_similarity": ssim, "pred_transcript": rates.hypothesis,
                        "gt_transcript": rates.reference}
            audio_path(line, "_metrics.json").write_text(json.dumps(item))
    return asr.name, sv.name


def write_config(codec: codec_mod.Codec, asr: str, sv: str) -> None:
    config = {
        "seed": SEED, "nsamples_perpair": NSAMPLES_PERPAIR, "ranks": RANKS,
        "counts": vars(COUNTS), "sample_rate": SAMPLE_RATE,
        "invalid_group": INVALID_GROUP, "tie_group": TIE_GROUP,
        "codec": {"fingerprint": codec.fingerprint, "num_codebooks": codec.num_codebooks,
                  "codebook_size": codec.codebook_size, "frame_rate": codec.frame_rate},
        "asr": asr, "speaker_model": sv,
        "synthesiser": subprocess.run(["espeak-ng", "--version"], capture_output=True,
                                      text=True).stdout.strip(),
    }
    (HERE / "corpus.json").write_text(json.dumps(config, indent=2) + "\n")


_START = time.monotonic()


def step(what: str) -> None:
    print(f"[{time.monotonic() - _START:6.1f} s] {what}", flush=True)


def main() -> None:
    for sub in ("generations", "contexts", "references"):
        shutil.rmtree(HERE / sub, ignore_errors=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_inputs()
        render_contexts(tmp)
        records = make_manifest()
        step("rendering generations")
        render_generations(records, tmp)
        render_references(records, tmp)
    lines = len(records) * NSAMPLES_PERPAIR
    step("fitting the codec, encoding")
    codec = fit_and_encode(lines)
    step("scoring (pocketsphinx, resemblyzer)")
    asr, sv = write_metrics(records)
    write_config(codec, asr, sv)
    step("done")
    print(f"{len(records)} pairs, {lines} generations, codec {codec.fingerprint}")


if __name__ == "__main__":
    main()
