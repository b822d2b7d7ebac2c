"""Scoring a shard of planned rows: audio in, metric columns out.

One :class:`Scorer` per process: it loads each registered backend (builder/core/metrics.py)
the plan asks for once (the loaders cache by spec), dispatches on the backend's kind,
and caches the embeddings of context recordings and the samples of reference
recordings, which many generations share (a group's N samples have one context).
A row whose audio cannot be read, or that a backend raises on, is NULL with the reason
in the group's status column (``error: ...``), not a crash: the rest of the batch is
scored and every rank reaches the collective step.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from ttspo.builder.core import metrics as registry
from ttspo.builder.core.errors import InputError, ModelError, first_line
from ttspo.builder.scoring.metrics import error_rates
from ttspo.builder.core.schemas import GEN
from ttspo.builder.scoring import cosine
from ttspo.builder.scoring.audio import MODEL_SR, read_audio, read_audio_bytes
from ttspo.builder.scoring.options import ScoreOptions
from ttspo.builder.scoring.plan import BLOB_SIZE, FRAGMENT, GROUPS, REFERENCE, ROWID

@dataclass(kw_only=True)
class ShardResult:
    """What one rank produced: new column values, failures, and timings."""

    table: pa.Table | None
    # (generation id, reason) of every metric left NULL because its backend raised or the
    # audio could not be read: written as NULL with the reason in the group's status column
    problems: list[tuple[str, str]] = field(default_factory=list)
    failed: int = 0  # rows with at least one problem
    unscored: int = 0  # rows whose every asked group failed (none scored: the command fails)
    error: str | None = None  # a backend that failed to load: fatal for every rank
    seconds: dict[str, float] = field(default_factory=lambda: {"read": 0.0})
    audio_seconds: float = 0.0
    rows: int = 0


# The option each group's backend is named by in errors (`ttspo score`'s; GRPO names
# its config keys: grpo.asr, ...).
LABELS = {b.name: b.label or f"--metrics {b.name}" for b in registry.REGISTRY.backends.values()}


def load_backend(options: ScoreOptions, group: str, labels: dict[str, str] = LABELS):
    """The model of GROUP (registry backend) for OPTIONS, loaded once per process."""
    b = registry.backend(group)
    label = labels.get(group) or LABELS.get(group) or group
    if b.option is None:
        return _load_fixed(b.loader)
    return registry.import_object(b.loader)(getattr(options, b.option), label)


@functools.lru_cache(maxsize=None)
def _load_fixed(loader: str):
    return registry.import_object(loader)()


def sources(options: ScoreOptions, groups: list[str],
            labels: dict[str, str] = LABELS) -> dict[str, str]:
    """Provenance strings of the groups computed (loads, and caches, their models)."""
    out = {}
    for g in groups:
        name = load_backend(options, g, labels).name
        out[g] = f"{name}+{options.normalizer}-normalizer" if g == "asr" else name
    return out


def squim_spec(options: ScoreOptions) -> str:
    if not options.squim:
        raise ModelError("--metrics squim needs --squim PATH (SQUIM objective weights; "
                         "models are never downloaded)")
    return f"squim:{options.squim}"


class Scorer:
    """Loads the backends the plan needs, once, and scores batches of rows.

    A backend that raises on a row leaves that row's metrics of the group NULL with
    ``error: ...`` in the group's status column; the other rows and groups go on."""

    def __init__(self, options: ScoreOptions, groups: list[str], dataset,
                 labels: dict[str, str] = LABELS) -> None:
        self.options = options
        self.groups = groups
        self.dataset = dataset  # pinned version, to read audio blobs by row id
        self.models = {g: load_backend(options, g, labels) for g in groups}
        self.sources = sources(options, groups, labels)
        self._context: dict[str, np.ndarray | str] = {}
        self._reference: dict[str, tuple[np.ndarray, int] | str] = {}

    def score(self, rows: pa.Table, columns: list[str], result: ShardResult) -> pa.Table:
        out: list[dict[str, Any]] = []
        size = self.options.batch_size
        for start in range(0, rows.num_rows, size):
            batch = rows.slice(start, size).to_pylist()
            out.extend(self._score_batch(batch, result))
        result.rows += len(out)
        names = [ROWID, FRAGMENT] + columns
        return pa.Table.from_pylist([{k: r.get(k) for k in names} for r in out],
                                    schema=_result_schema(columns))

    # ------------------------------------------------------------ batches
    def _score_batch(self, batch: list[dict], result: ShardResult) -> list[dict]:
        t = time.perf_counter()
        audios = self._read_generations(batch)
        result.seconds["read"] += time.perf_counter() - t
        ok = []
        for row, audio in zip(batch, audios):
            if isinstance(audio, str):  # unreadable: every asked group NULL with the reason
                for g in self.groups:
                    if _needs(row, g):
                        self._fail(row, g, audio)
            else:
                ok.append((row, audio))
        self.score_audio(ok, result)
        self.count_failures(batch, result)
        return batch

    def count_failures(self, rows: list[dict], result: ShardResult) -> None:
        for row in rows:
            asked = [registry.backend(g).status for g in self.groups if _needs(row, g)]
            reasons = [row[s] for s in asked if str(row.get(s) or "").startswith(ERROR)]
            if reasons:
                result.failed += 1
                result.unscored += len(reasons) == len(asked)
                result.problems.append((row[GEN.generation_id], reasons[0]))

    def score_audio(self, ok: list[tuple[dict, np.ndarray]], result: ShardResult) -> None:
        """Fill the metric columns of each (row, audio at MODEL_SR) in place: the rows
        need the plan's keys (``_needs_<group>``, the reference path). `ttspo generate
        --score` and GRPO call this on audio they have just decoded."""
        for row, audio in ok:
            result.audio_seconds += len(audio) / MODEL_SR
        for g in self.groups:
            todo = [(row, a) for row, a in ok if _needs(row, g)]
            t = time.perf_counter()
            if todo:
                getattr(self, f"_score_{registry.backend(g).kind}")(g, todo)
            result.seconds[g] = result.seconds.get(g, 0.0) + time.perf_counter() - t

    def _read_generations(self, batch: list[dict]) -> list:
        """Each row's audio at MODEL_SR, or the reason it could not be read."""
        blob_ids = [r[ROWID] for r in batch if r[BLOB_SIZE] > 0]
        blobs = dict(zip(blob_ids, self.dataset.take_blobs(GEN.audio, ids=blob_ids))) \
            if blob_ids else {}
        audios: list = []
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
                audios.append(f"{ERROR} audio: {exc}")
        return audios

    # ------------------------------------------------------------ results
    def _done(self, row: dict, group: str, values: dict[str, Any]) -> None:
        """Computed: the values (None only where the backend said so, its reasons then in
        the status as ``n/a: metric: why``), the source."""
        b = registry.backend(group)
        row.update({m: _number(values.get(m)) for m in registry.metrics_of(group)})
        row.update({k: v for k, v in values.items() if k in b.extra})
        # a backend may say why a value is None (Scores.reasons: "no speech found")
        reasons = getattr(values, "reasons", None) or {}
        why = [f"{m}: {reasons[m]}" for m in registry.metrics_of(group)
               if row[m] is None and m in reasons]
        row[b.source] = self.sources[group]
        row[b.status] = f"{NOT_APPLICABLE} {'; '.join(why)}"[:500] if why else None

    def _fail(self, row: dict, group: str, reason: str) -> None:
        """NULL metrics with the reason: ``error: ...`` (retried) or ``n/a: ...`` (not)."""
        b = registry.backend(group)
        row.update(dict.fromkeys(registry.metrics_of(group)))
        row[b.source] = self.sources.get(group)
        row[b.status] = reason[:500]

    def _each(self, group: str, todo: list, compute) -> None:
        """COMPUTE(row, audio) -> values for each row; a raise fails that row only."""
        for row, audio in todo:
            try:
                values = compute(row, audio)
            except Exception as exc:  # a backend's own failure on one file
                self._fail(row, group, f"{ERROR} {type(exc).__name__}: {first_line(exc, 300)}")
                continue
            if isinstance(values, str):
                self._fail(row, group, values)
            else:
                self._done(row, group, values)

    def _batched(self, group: str, todo: list, call) -> list | None:
        """CALL(audios) over the batch; None when it raised (then each row is retried alone)."""
        try:
            return list(call([a for _, a in todo]))
        except Exception:
            return None

    # ------------------------------------------------------------ kinds
    def _score_asr(self, group: str, todo: list) -> None:
        model = self.models[group]
        texts = self._batched(group, todo, lambda a: model.transcribe_batch(a, MODEL_SR))
        if texts is None:
            texts = [None] * len(todo)
        hyps = dict(zip((id(r) for r, _ in todo), texts))

        def compute(row, audio):
            hyp = hyps[id(row)]
            if hyp is None:
                hyp = model.transcribe_batch([audio], MODEL_SR)[0]
            rates = error_rates(row[GEN.text], hyp, self.options.normalizer)
            return {GEN.cer: rates.cer, GEN.wer: rates.wer, GEN.pred_transcript: rates.hypothesis,
                    GEN.gt_transcript: rates.reference, GEN.invalid: False}
        self._each(group, todo, compute)

    def _score_speaker(self, group: str, todo: list) -> None:
        model = self.models[group]
        embs = self._batched(group, todo, lambda a: model.embed_batch(a, MODEL_SR))
        embs = dict(zip((id(r) for r, _ in todo), embs or [None] * len(todo)))

        def compute(row, audio):
            context = self._context_embedding(row, group)
            if isinstance(context, str):
                return context
            emb = embs[id(row)]
            emb = model.embed_batch([audio], MODEL_SR)[0] if emb is None else emb
            return {m: cosine(emb, context) for m in registry.metrics_of(group)}
        self._each(group, todo, compute)

    def _context_embedding(self, row: dict, group: str) -> np.ndarray | str:
        path = row[GEN.context_audio_filepath]
        if not path:  # a text context has no voice to compare with: SSIM is null
            return f"{NOT_APPLICABLE} text context (no voice to compare with)"
        if path not in self._context:
            try:
                self._context[path] = self.models[group].embed(read_audio(path, MODEL_SR)[0],
                                                               MODEL_SR)
            except InputError as exc:
                self._context[path] = f"{ERROR} context audio: {exc}"
        return self._context[path]

    def _score_reference(self, group: str, todo: list) -> None:
        model = self.models[group]

        def compute(row, audio):
            ref = self._reference_audio(row)
            if isinstance(ref, str):
                return ref
            return {m: model.score(audio, MODEL_SR, *ref) for m in registry.metrics_of(group)}
        self._each(group, todo, compute)

    def _reference_audio(self, row: dict):
        path = row[REFERENCE]
        if not path:
            return f"{NOT_APPLICABLE} no reference recording"
        if path not in self._reference:
            try:
                self._reference[path] = read_audio(path, MODEL_SR)
            except InputError as exc:
                self._reference[path] = f"{ERROR} reference audio: {exc}"
        return self._reference[path]

    def _score_audio(self, group: str, todo: list) -> None:
        """The generic kind: score(audio, sr[, text=]) -> {metric: value} (or one value)."""
        model, b = self.models[group], registry.backend(group)
        names = registry.metrics_of(group)

        def compute(row, audio):
            out = model.score(audio, MODEL_SR, text=row[GEN.text]) if b.needs_text \
                else model.score(audio, MODEL_SR)
            return out if isinstance(out, dict) else {names[0]: out}
        self._each(group, todo, compute)


ERROR = "error:"
NOT_APPLICABLE = "n/a:"


def _number(value) -> float | None:
    """A metric value as a finite float; NaN and inf are NULL (never a rank)."""
    if value is None:
        return None
    value = float(value)
    return value if np.isfinite(value) else None


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
