"""Scoring a shard of planned rows: audio in, metric columns out.

One :class:`Scorer` per process: it loads each backend once (the loaders cache
by spec) and caches the embeddings of context recordings and the samples of
reference recordings, which many generations share (a group's N samples have
one context). A row whose audio cannot be read becomes a problem, not a crash,
so every rank reaches the collective step and the command fails as a whole,
with the list of bad files and nothing written.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from ttspo.builder.core.errors import InputError, ModelError
from ttspo.builder.scoring.metrics import error_rates
from ttspo.builder.core.schemas import GEN
from ttspo.builder.scoring import cosine, load_asr, load_quality, load_speaker
from ttspo.builder.scoring.audio import MODEL_SR, read_audio, read_audio_bytes
from ttspo.builder.scoring.options import ScoreOptions
from ttspo.builder.scoring.plan import BLOB_SIZE, FRAGMENT, REFERENCE, ROWID, GROUPS

TIMED = ("read", "asr", "ssim", "pesq", "squim")


@dataclass(kw_only=True)
class ShardResult:
    """What one rank produced: new column values, problems, and timings."""

    table: pa.Table | None
    problems: list[tuple[str, str]] = field(default_factory=list)
    error: str | None = None  # a backend that failed to load: fatal for every rank
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(TIMED, 0.0))
    audio_seconds: float = 0.0
    rows: int = 0


# The option each group's backend is named by in errors (`ttspo score`'s; GRPO names
# its config keys: grpo.asr, ...).
LABELS = {"asr": "--asr", "ssim": "--sv", "pesq": "--metrics pesq", "squim": "--squim"}


def sources(options: ScoreOptions, groups: list[str],
            labels: dict[str, str] = LABELS) -> dict[str, str]:
    """Provenance strings of the groups computed (loads, and caches, their models)."""
    out = {}
    for g in groups:
        if g == "asr":
            out[g] = f"{load_asr(options.asr, labels['asr']).name}+{options.normalizer}-normalizer"
        elif g == "ssim":
            out[g] = load_speaker(options.sv, labels["ssim"]).name
        elif g == "pesq":
            out[g] = load_quality("pesq", labels["pesq"]).name
        else:
            out[g] = load_quality(squim_spec(options), labels["squim"]).name
    return out


def squim_spec(options: ScoreOptions) -> str:
    if not options.squim:
        raise ModelError("--metrics squim needs --squim PATH (SQUIM objective weights; "
                         "models are never downloaded)")
    return f"squim:{options.squim}"


class Scorer:
    """Loads the backends the plan needs, once, and scores batches of rows."""

    def __init__(self, options: ScoreOptions, groups: list[str], dataset,
                 labels: dict[str, str] = LABELS) -> None:
        self.options = options
        self.groups = groups
        self.dataset = dataset  # pinned version, to read audio blobs by row id
        self.sources = sources(options, groups, labels)  # loads (and caches) the models
        self.asr = load_asr(options.asr, labels["asr"]) if "asr" in groups else None
        self.sv = load_speaker(options.sv, labels["ssim"]) if "ssim" in groups else None
        self.pesq = load_quality("pesq", labels["pesq"]) if "pesq" in groups else None
        self.squim = load_quality(squim_spec(options), labels["squim"]) \
            if "squim" in groups else None
        self._context: dict[str, np.ndarray] = {}
        self._reference: dict[str, tuple[np.ndarray, int]] = {}

    def score(self, rows: pa.Table, columns: list[str], result: ShardResult) -> pa.Table:
        out: list[dict[str, Any]] = []
        size = self.options.batch_size
        for start in range(0, rows.num_rows, size):
            batch = rows.slice(start, size).to_pylist()
            out.extend(self._score_batch(batch, result))
        result.rows += len(out)
        names = [ROWID, FRAGMENT] + columns
        return pa.Table.from_pylist([{k: r[k] for k in names} for r in out],
                                    schema=_result_schema(columns))

    # ------------------------------------------------------------ batches
    def _score_batch(self, batch: list[dict], result: ShardResult) -> list[dict]:
        t = time.perf_counter()
        audios = self._read_generations(batch, result)
        result.seconds["read"] += time.perf_counter() - t
        ok = [(row, a) for row, a in zip(batch, audios) if a is not None]
        self.score_audio(ok, result)
        return [row for row, _ in ok]

    def score_audio(self, ok: list[tuple[dict, np.ndarray]], result: ShardResult) -> None:
        """Fill the metric columns of each (row, audio at MODEL_SR) in place: the rows
        need the plan's keys (``_needs_<group>``, the reference path). `ttspo generate
        --score` calls this on audio it has just decoded."""
        for row, audio in ok:
            result.audio_seconds += len(audio) / MODEL_SR
        if self.asr is not None:
            self._timed(result, "asr", self._score_asr, ok)
        if self.sv is not None:
            self._timed(result, "ssim", self._score_ssim, ok, result)
        if self.pesq is not None:
            self._timed(result, "pesq", self._score_pesq, ok, result)
        if self.squim is not None:
            self._timed(result, "squim", self._score_squim, ok)

    @staticmethod
    def _timed(result: ShardResult, key: str, fn, *args) -> None:
        t = time.perf_counter()
        fn(*args)
        result.seconds[key] += time.perf_counter() - t

    def _read_generations(self, batch: list[dict], result: ShardResult) -> list:
        blob_ids = [r[ROWID] for r in batch if r[BLOB_SIZE] > 0]
        blobs = dict(zip(blob_ids, self.dataset.take_blobs(GEN.audio, ids=blob_ids))) \
            if blob_ids else {}
        audios = []
        for row in batch:
            where = row[GEN.generation_id]
            try:
                if row[ROWID] in blobs and blobs[row[ROWID]] is not None:
                    data = blobs[row[ROWID]].readall()
                    audios.append(read_audio_bytes(data, MODEL_SR, where=f"{where}: audio blob")[0])
                elif row[GEN.audio_filepath]:
                    audios.append(read_audio(row[GEN.audio_filepath], MODEL_SR)[0])
                else:
                    raise InputError(f"{where}: no audio (neither a blob nor audio_filepath)")
            except InputError as exc:
                result.problems.append((where, str(exc)))
                audios.append(None)
        return audios

    # ------------------------------------------------------------ metrics
    def _score_asr(self, ok: list) -> None:
        todo = [(row, a) for row, a in ok if _needs(row, "asr")]  # ASR costs most: only where needed
        if not todo:
            return
        texts = self.asr.transcribe_batch([a for _, a in todo], MODEL_SR)
        for (row, _), hyp in zip(todo, texts):
            rates = error_rates(row[GEN.text], hyp, self.options.normalizer)
            row.update({GEN.cer: rates.cer, GEN.wer: rates.wer,
                        GEN.pred_transcript: rates.hypothesis,
                        GEN.gt_transcript: rates.reference, GEN.invalid: False,
                        GEN.cer_source: self.sources["asr"]})

    def _score_ssim(self, ok: list, result: ShardResult) -> None:
        todo = [(row, a) for row, a in ok if _needs(row, "ssim")]
        embeddings = self.sv.embed_batch([a for _, a in todo], MODEL_SR) if todo else []
        for (row, _), emb in zip(todo, embeddings):
            context = self._context_embedding(row, result)
            row[GEN.ssim] = None if context is None else cosine(emb, context)
            row[GEN.ssim_source] = self.sources["ssim"]

    def _context_embedding(self, row: dict, result: ShardResult) -> np.ndarray | None:
        path = row[GEN.context_audio_filepath]
        if not path:  # a text context has no voice to compare with: SSIM is null
            return None
        if path not in self._context:
            try:
                self._context[path] = self.sv.embed(read_audio(path, MODEL_SR)[0], MODEL_SR)
            except InputError as exc:
                result.problems.append((row[GEN.generation_id], f"context audio: {exc}"))
                return None
        return self._context[path]

    def _score_pesq(self, ok: list, result: ShardResult) -> None:
        for row, audio in ok:
            if not _needs(row, "pesq"):
                continue
            ref = self._reference_audio(row, result)
            row[GEN.pesq] = None if ref is None else self.pesq.score(audio, MODEL_SR, *ref)
            row[GEN.pesq_source] = self.sources["pesq"]

    def _reference_audio(self, row: dict, result: ShardResult):
        path = row[REFERENCE]
        if not path:
            return None
        if path not in self._reference:
            try:
                self._reference[path] = read_audio(path, MODEL_SR)
            except InputError as exc:
                result.problems.append((row[GEN.generation_id], f"reference audio: {exc}"))
                return None
        return self._reference[path]

    def _score_squim(self, ok: list) -> None:
        for row, audio in ok:
            if _needs(row, "squim"):
                row[GEN.squim] = self.squim.score(audio, MODEL_SR)
                row[GEN.squim_source] = self.sources["squim"]


def _needs(row: dict, group: str) -> bool:
    return bool(row.get(f"_needs_{group}"))


def _result_schema(columns: list[str]) -> pa.Schema:
    from ttspo.builder.scoring.plan import write_schema

    schema = write_schema(columns)
    return schema.insert(1, pa.field(FRAGMENT, pa.uint64()))


def score_shard(rows: pa.Table, options: ScoreOptions, groups: list[str],
                columns: list[str], *, dataset) -> ShardResult:
    """Score ROWS; never raises for bad audio or a model that fails to load."""
    result = ShardResult(table=None)
    try:
        scorer = Scorer(options, groups, dataset)
    except ModelError as exc:
        result.error = str(exc)
        return result
    result.table = scorer.score(rows, columns, result)
    return result


__all__ = ["ShardResult", "Scorer", "score_shard", "sources", "squim_spec", "GROUPS"]
