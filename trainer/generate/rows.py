"""One rank's share of `ttspo generate`: sample, decode, score, and write fragments.

Split from generate.py (the plan and the collective steps) so each file reads in
one sitting; the options and ids live here, the lower of the two modules (seeds and
decoding: trainer/policy/samples.py, shared with GRPO's rollouts).
Times go to the caller's ``seconds`` dict under sampling, decoding, scoring and
writing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ttspo.builder.core.errors import InputError
from ttspo.builder.core.files import atomic_write
from ttspo.builder.core.schemas import GEN, GENERATIONS_SCHEMA, PROMPT
from ttspo.builder.core.store import STORAGE_VERSION, Lineage, Store, commit_properties
from ttspo.builder.scoring.options import ScoreOptions
from ttspo.trainer.policy.base import CONTEXT_CODES, SAMPLE_SEED, Sampling
from ttspo.trainer.policy.samples import decode, sample_seed

GENERATIONS = "generations"
PROMPTS = "prompts"
STAGES = ("sampling", "decoding", "scoring", "writing")


@dataclass(frozen=True, kw_only=True)
class GenerateOptions:
    """What one `ttspo generate` call makes."""

    run: str
    checkpoint: str
    policy: str = "tiny"
    samples: int = 4  # per prompt
    prompts: str = PROMPTS  # prompts, prompts@VERSION or prompts@TAG
    where: str | None = None  # DuckDB condition on the prompts
    sampling: Sampling = Sampling()
    audio_dir: str | None = None
    embed_audio: bool = False
    score: ScoreOptions | None = None  # None: no scoring on the way
    batch_size: int = 8
    threads: int | None = 1  # torch threads per rank (None: the cores / ranks)

    def check(self) -> None:
        if not self.run:
            raise InputError("--run must name the run")
        if self.samples < 1:
            raise InputError(f"--samples must be at least 1, not {self.samples}")
        if not self.audio_dir and not self.embed_audio:
            raise InputError("say where the audio goes: --audio-dir DIR and/or --embed-audio")


def settings_columns(options: GenerateOptions, checkpoint: dict[str, Any]) -> dict[str, Any]:
    """Every row's GENERATE_COLUMNS values."""
    s = options.sampling
    return {**checkpoint, GEN.temperature: float(s.temperature), GEN.top_k: int(s.top_k),
            GEN.cfg_scale: float(s.cfg_scale), GEN.max_steps: int(s.max_steps),
            GEN.seed: int(s.seed)}


def generation_id(run: str, prompt_id: str, sample: int) -> str:
    return f"{run}:{prompt_id}:{sample}"




def make_rows(prompts: list[dict[str, Any]], missing: list[list[int]], checkpoint: dict[str, Any],
              mine: list[int], *, options: GenerateOptions, seconds: dict[str, float]) -> pa.Table:
    """The rows of prompts MINE (indices into PROMPTS; MISSING their samples to make),
    as a GENERATIONS_SCHEMA table."""
    import torch

    from ttspo.trainer.dpo.contexts import prompt_context
    from ttspo.trainer.policy.base import load_policy

    from ttspo.trainer.run.verify import check_sha256

    # The rows record the sha256 the plan checked: every rank loads that very file.
    check_sha256(options.checkpoint, checkpoint[GEN.checkpoint_sha256])
    policy = load_policy(options.policy, init=options.checkpoint)
    policy.eval()
    settings = settings_columns(options, checkpoint)
    jobs = [(prompts[i], k) for i in mine for k in missing[i]]
    contexts = {p[PROMPT.prompt_id]: prompt_context(p, policy.codec.encode)
                for p in (prompts[i] for i in mine)}
    scorer = make_scorer(options.score)
    rows = []
    for start in range(0, len(jobs), options.batch_size):
        chunk = jobs[start:start + options.batch_size]
        t = time.perf_counter()
        batch = policy.collate([policy_row(p, k, contexts, options) for p, k in chunk],
                               with_targets=False)
        codes, lengths = policy.generate(batch, options.sampling,
                                         torch.Generator().manual_seed(options.sampling.seed))
        seconds["sampling"] += time.perf_counter() - t
        for (prompt, k), c, n in zip(chunk, codes, lengths):
            row = base_row(prompt, k, options, settings)
            frames = c[:, :int(n)].cpu().numpy()
            t = time.perf_counter()
            audio, sr = decode(policy.codec, frames)
            seconds["decoding"] += time.perf_counter() - t
            t = time.perf_counter()
            row.update(audio_columns(row, audio, sr, frames, options=options))
            seconds["writing"] += time.perf_counter() - t
            rows.append((row, audio, sr))
    if scorer is not None:
        t = time.perf_counter()
        score(scorer, rows, batch_size=options.score.batch_size)  # failures: NULL + status
        seconds["scoring"] += time.perf_counter() - t
    return pa.Table.from_pylist([r for r, _, _ in rows], schema=GENERATIONS_SCHEMA)


def policy_row(prompt: dict[str, Any], k: int, contexts: dict, options: GenerateOptions) -> dict:
    pid = prompt[PROMPT.prompt_id]
    return {GEN.generation_id: generation_id(options.run, pid, k), GEN.text: prompt[PROMPT.text],
            GEN.context_text: prompt[PROMPT.context_text], CONTEXT_CODES: contexts[pid],
            SAMPLE_SEED: sample_seed(options.sampling.seed, pid, k)}


def base_row(prompt: dict[str, Any], k: int, options: GenerateOptions,
             settings: dict[str, Any]) -> dict[str, Any]:
    pid, group = prompt[PROMPT.prompt_id], int(prompt["_group"])
    text_context = prompt[PROMPT.context_type] == "text"
    return {
        GEN.generation_id: generation_id(options.run, pid, k), GEN.run: options.run,
        GEN.prompt_id: pid, GEN.group_id: f"{options.run}:{pid}", GEN.group_index: group,
        GEN.sample_index: k, GEN.text: prompt[PROMPT.text], GEN.record_type: prompt[PROMPT.record_type],
        GEN.context_audio_filepath: None if text_context else prompt[PROMPT.context_audio_filepath],
        GEN.context_audio_duration: None if text_context else prompt[PROMPT.context_audio_duration],
        GEN.context_text: prompt[PROMPT.context_text] if text_context else None,
        GEN.invalid: False, **settings,
        "_reference": prompt[PROMPT.reference_audio_filepath],
    }


def audio_columns(row: dict[str, Any], audio: np.ndarray, sr: int, frames: np.ndarray,
                  *, options: GenerateOptions) -> dict[str, Any]:
    from ttspo.builder.scoring.audio import wav_bytes

    wav = wav_bytes(audio, sr)
    out = {GEN.codes: frames.astype(np.int16).tolist(), GEN.codes_len: int(frames.shape[1]),
           GEN.duration: len(audio) / sr, GEN.sample_rate: sr,
           GEN.audio: wav if options.embed_audio else None, GEN.audio_filepath: None}
    if options.audio_dir:
        path = Path(options.audio_dir).absolute() / options.run / \
            f"{row[GEN.prompt_id]}_{row[GEN.sample_index]}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, "wb") as fh:  # a killed run leaves whole files or none
            fh.write(wav)
        out[GEN.audio_filepath] = str(path)
    return out


# ------------------------------------------------------------------ scoring
def make_scorer(score: ScoreOptions | None, labels: dict[str, str] | None = None):
    """The one in-process scorer of decoded audio (`generate --score` and GRPO's
    rollouts): `ttspo score`'s Scorer, its backends loaded once, and the context
    embeddings and reference recordings it reads cached by path for its lifetime
    (a run), so a prompt's recordings are read once however many steps sample it."""
    if score is None:
        return None
    from ttspo.builder.scoring.scorer import LABELS, Scorer

    return Scorer(score, score.groups(), None, labels or LABELS)


def score(scorer: Any, rows: list, *, batch_size: int, reference: str = "_reference") -> int:
    """Metrics for the decoded audio, in place, with the scoring backends (in-process).

    ROWS are (row, audio, sample rate); each row's reference recording (for PESQ) is
    under its key REFERENCE. A backend that raises on a row (or a recording that cannot
    be read) leaves that row's metrics NULL with the reason in the status column, as
    `ttspo score` does. Returns how many rows have such a failure.
    """
    from ttspo.builder.scoring.audio import MODEL_SR, resample
    from ttspo.builder.scoring.plan import REFERENCE
    from ttspo.builder.scoring.scorer import ShardResult

    result = ShardResult(table=None)
    ok = []
    for row, audio, sr in rows:
        row.update({f"_needs_{g}": True for g in scorer.groups})
        row[REFERENCE] = row.get(reference)
        ok.append((row, resample(audio, sr, MODEL_SR)))
    for start in range(0, len(ok), batch_size):
        scorer.score_audio(ok[start:start + batch_size], result)
    scorer.count_failures([row for row, _ in ok], result)
    return result.failed


# ------------------------------------------------------------------ writing
def write_fragments(store: Store, table: pa.Table) -> list:
    """This rank's rows as Lance data files of the generations table (not yet committed)."""
    import lance

    store.root.mkdir(parents=True, exist_ok=True)

    def write(mode: str) -> list:
        return lance.fragment.write_fragments(
            table, str(store.path(GENERATIONS)), schema=GENERATIONS_SCHEMA, mode=mode,
            data_storage_version=STORAGE_VERSION, enable_stable_row_ids=True)

    if store.exists(GENERATIONS):
        return write("append")
    try:  # "create" says the same as "append" to a missing table, minus Lance's warning
        return write("create")
    except OSError:  # someone created the table meanwhile
        return write("append")


def commit(store: Store, fragments: list, lineage: Lineage) -> int:
    """Every rank's fragments as ONE new version (the table is created if missing)."""
    import lance

    with store.lock(f"create {GENERATIONS}"):
        if store.exists(GENERATIONS):
            latest = store.open(GENERATIONS).version
            return store.commit(GENERATIONS, lance.LanceOperation.Append(fragments), latest, lineage)
        tx = lance.Transaction(read_version=0,
                               operation=lance.LanceOperation.Overwrite(GENERATIONS_SCHEMA, fragments),
                               transaction_properties=commit_properties(lineage))
        return lance.LanceDataset.commit(str(store.path(GENERATIONS)), tx,
                                         enable_stable_row_ids=True).version
