"""`ttspo export`: a set version as files a trainer reads.

``export_nemo`` writes ``dpo_train_manifest.json`` and ``dpo_val_manifest.json``
in the record format of NeMo's ``create_preference_pairs.py`` (nemo-formats.md
section 3), so ``MagpieTTSDatasetDPO`` trains on them unchanged: JSON lines, each
pair as its chosen line then its rejected line (line 2k is chosen, 2k+1
rejected), in the set's shuffle order. A record is the prompt's manifest fields
(text, record_type, context audio or context text) plus the generation:
``audio_filepath`` (the generated wav), ``target_audio_codes_path`` (its codes),
``duration``, ``cer_gts``, ``wer_gts``, ``pred_context_similarity``,
``pred_transcript``, ``gt_transcript``, ``reward`` and, on rejected lines,
``cer_delta`` and ``sim_delta``; plus ``pair_id`` and ``generation_id``, which
NeMo ignores. Keys whose value is unknown are left out (NeMo tests for keys).

Generation details come from the ``generations`` version the set was built from
(its build record), not the latest one, so an export is reproducible: the same
set version gives byte-identical manifests.

Two NeMo pitfalls the export guards against:
* ``MagpieTTSDataset`` collates a batch of codes OR of audio, never a mix: the
  export refuses a set where some generations have codes and others have none;
* the dataset drops lines outside its ``min_duration``/``max_duration`` BEFORE
  pairing lines, which would shift every later pair: keep those bounds around
  the range the export reports (the recipe's duration limits).

Every generation's codes are a file NeMo's dataset ``torch.load``s: ``torch.save``
of a ``[codebooks, frames]`` tensor of ``codes_dtype`` (int32 by default, or int64;
torch_file.py): NeMo's own generation writes int16 codes, on which its DPO
training step crashes (``gather(): Expected dtype int32/int64 for index``), so
the export never points at those files. The codes are the table's (as ingested),
else those of the generation's ``codes_path``. Those files are kept in
``STORE/codes`` (content-addressed, written once: codes.py, core/codes_store.py),
and the manifests name them there: an export writes two manifests, not codes.
``copy_codes`` (``--copy-codes``) copies them into ``OUT/codes/<generation
id>.pt`` instead, for a folder to move to another machine. The lines are encoded
column by column (nemo_lines.py) and written CHUNK_PAIRS pairs at a time, so the
manifests never sit in memory whole.

``export_trl`` writes one row per pair (``prompt``, ``chosen``, ``rejected`` =
text and the two wav paths, plus metrics, rewards and split) as Parquet or JSON
lines, for trainers in the TRL mould.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ttspo.builder.sets.build import SetVersion, open_set
from ttspo.builder.core import codes_store
from ttspo.builder.sets.codes import DEFAULT_CODES_DTYPE, check_codes_dtype, safe_name, store_codes  # noqa: F401
from ttspo.builder.sets.codes_copy import copy_codes as _copy_codes
from ttspo.builder.sets.stored_maps import drop_pages, trim_heap
from ttspo.builder.sets.line_parts import ENCODER
from ttspo.builder.sets.nemo_lines import (CHUNK_PAIRS, CodesFiles, check_for_nemo, generation_columns,
                                           encoded_paths, manifest_chunks, openings, set_generations)
from ttspo.builder.core.errors import InputError
from ttspo.builder.core.files import atomic_write, write_text_atomic
from ttspo.builder.core.schemas import DERIVED, GEN, PAIR

TRAIN_MANIFEST = "dpo_train_manifest.json"
VAL_MANIFEST = "dpo_val_manifest.json"


@dataclass(kw_only=True)
class ExportResult:
    files: list[str]
    pairs: dict[str, int]  # split -> pairs written
    codes_written: int  # codes files written into STORE/codes (the first export of a generation)
    min_duration: float | None
    max_duration: float | None
    codes_reused: int = 0  # named codes files already there (STORE/codes, or OUT/codes with --copy-codes)
    codes_copied: int = 0  # --copy-codes: files copied into OUT/codes now
    seconds: dict[str, float] = field(default_factory=dict)  # generations, codes, lines+write

    def summary(self) -> dict[str, Any]:
        return {"files": self.files, **{f"{k}_pairs": v for k, v in self.pairs.items()},
                "codes_written": self.codes_written, "codes_copied": self.codes_copied,
                "codes_reused": self.codes_reused,
                "min_duration": self.min_duration, "max_duration": self.max_duration}


# -------------------------------------------------------------- gathering
def generation_rows(store, sv: SetVersion, pairs: pa.Table) -> dict[str, dict[str, Any]]:
    """generation_id -> its row (plus the prompt's context codes path), for the
    generations PAIRS name, read at the version the set was built from."""
    columns = generation_columns(store, sv, pairs)
    names = list(columns)
    return {row[0]: dict(zip(names, row)) for row in zip(*columns.values())}


# ------------------------------------------------------------------- NeMo
# The set's columns the export reads whole (a few bytes a pair), and those it reads
# a chunk of pairs at a time (bench/RESULTS.md: the whole set was ~0.45 KB a pair).
WHOLE_COLUMNS = (PAIR.position, PAIR.split, PAIR.chosen_id, PAIR.rejected_id)
CHUNK_COLUMNS = (PAIR.pair_id, PAIR.chosen_reward, PAIR.rejected_reward, PAIR.cer_delta, PAIR.sim_delta)


def set_pairs(sv: SetVersion, columns: tuple[str, ...] = WHOLE_COLUMNS) -> tuple[pa.Table, np.ndarray | None]:
    """(COLUMNS of the set's pairs in shuffle order, each pair's offset in
    sv.dataset, None when that order is the table's: a built set's usual case)."""
    table = sv.dataset.to_table(columns=list(columns))
    position = table.column(PAIR.position).to_numpy()
    if bool(np.all(position[1:] >= position[:-1])):
        return table, None
    order = np.argsort(position, kind="stable")  # as rows() sorts (stable)
    return table.take(pa.array(order)), order


def _pair_columns(ds, offsets: np.ndarray) -> pa.Table:
    """CHUNK_COLUMNS of the pairs at OFFSETS of DS, in that order."""
    ascending = bool(np.all(offsets[1:] > offsets[:-1]))
    order = None if ascending else np.argsort(offsets, kind="stable")
    table = ds.take(pa.array(offsets if order is None else offsets[order], pa.int64()), columns=list(CHUNK_COLUMNS))
    if order is None:
        return table
    back = np.empty_like(order)
    back[order] = np.arange(len(order))
    return table.take(pa.array(back))


def export_nemo(store, ref: str, out_dir: str | os.PathLike, *, codes_dtype: str = DEFAULT_CODES_DTYPE,
                copy_codes: bool = False, chunk_pairs: int = CHUNK_PAIRS) -> ExportResult:
    """Write NAME[@VERSION|@TAG] as NeMo DPO manifests in OUT_DIR naming each
    generation's CODES_DTYPE codes file in STORE/codes (written there by the first
    export that needs it); COPY_CODES: copied into OUT_DIR/codes and named there.
    The lines are made and written CHUNK_PAIRS pairs at a time."""
    if chunk_pairs < 1:
        raise InputError(f"chunk_pairs {chunk_pairs}: must be 1 or more")
    check_codes_dtype(codes_dtype)
    clock = [time.perf_counter()]
    sv = open_set(store, ref)
    # a small set (a re-threshold) is read whole: a Lance read per chunk costs ~10 ms;
    # a big set a chunk at a time, handing back the heap's free pages after each step
    big = sv.dataset.count_rows() > TRIM_ABOVE
    pairs, offsets = set_pairs(sv, WHOLE_COLUMNS if big else WHOLE_COLUMNS + CHUNK_COLUMNS)
    release = trim_heap if big else drop_pages
    gens = set_generations(store, sv, pairs)
    check_for_nemo(sv.ref, gens)
    release()
    clock.append(time.perf_counter())
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Say so before the codes are read or written into the store: the manifests could
    # not be written after all that work.
    if not os.access(out, os.W_OK | os.X_OK):
        raise InputError(f"Permission denied: {out}")
    with codes_store.codes_lock(store, exclusive=False):  # gc removes none of them meanwhile
        stored = store_codes(store, sv.ref, gens.ds, gens.rows, gids=gens.ids,
                             codes_paths=gens.parts.column(DERIVED.codes_path), paths_at=gens.at,
                             codes_dtype=codes_dtype)
        paths, copied, kept = {}, 0, 0
        if stored is not None:
            paths, kept = CodesFiles(str(stored.root), stored.rels, stored.at), len(stored.ids) - stored.written
            if copy_codes:
                names, copied, kept = _copy_codes(stored, out)
                paths = encoded_paths(str((out / "codes").absolute()), pa.array(names))
        release()
        clock.append(time.perf_counter())
        fixed = openings(gens, paths)
        release()
        more = (lambda rows: _pair_columns(sv.dataset, rows if offsets is None else offsets[rows])) if big else None
        lines = _write_manifests(out, pairs, gens.ids, fixed, chunk=chunk_pairs, release=release, more=more)
        drop_pages()
    clock.append(time.perf_counter())
    durations = pc.min_max(gens.taken(DERIVED.duration)).as_py()
    seconds = dict(zip(("generations", "codes", "lines"), (b - a for a, b in zip(clock, clock[1:]))))
    return ExportResult(files=[str(out / TRAIN_MANIFEST), str(out / VAL_MANIFEST)],
                        pairs={s: n // 2 for s, n in lines.items()},
                        codes_written=0 if stored is None else stored.written,
                        min_duration=durations["min"], max_duration=durations["max"],
                        codes_reused=kept, codes_copied=copied, seconds=seconds)


# Sets of more pairs are read a chunk at a time and trim the heap after each step and
# manifest chunk (~10 ms each: a re-threshold of a few chunks is spared it;
# bench/RESULTS.md); smaller ones are read whole (at most ~4 MB).
TRIM_ABOVE = 32768


def _write_manifests(out: Path, pairs: pa.Table, ids: pa.Array, fixed: list, *,
                     chunk: int, more, release) -> dict[str, int]:
    """Both manifests, chunk by chunk, each whole or not at all; split -> lines."""
    lines = {"train": 0, "val": 0}
    with atomic_write(out / TRAIN_MANIFEST, "wb") as train, atomic_write(out / VAL_MANIFEST, "wb") as val:
        files = {"train": train, "val": val}
        for split, data, n in manifest_chunks(pairs, ids, fixed, chunk=chunk, more=more, release=release):
            files[split].write(data)
            lines[split] += n
    return lines


def _json_line(record: dict[str, Any]) -> str:
    return ENCODER.encode(record) + "\n"


# -------------------------------------------------------------------- TRL
def trl_table(store, ref: str) -> pa.Table:
    """One row per pair: prompt, chosen, rejected (wav paths), metrics, rewards."""
    sv = open_set(store, ref)
    pairs = sv.rows()
    rows = generation_rows(store, sv, pairs)
    out = []
    for p in pairs.to_pylist():
        c, r = rows[p[PAIR.chosen_id]], rows[p[PAIR.rejected_id]]
        out.append({
            "prompt": c[GEN.text], "chosen": c[GEN.audio_filepath], "rejected": r[GEN.audio_filepath],
            "context_audio_filepath": c[GEN.context_audio_filepath], "context_text": c[GEN.context_text],
            "chosen_reward": p[PAIR.chosen_reward], "rejected_reward": p[PAIR.rejected_reward],
            "chosen_cer": c[GEN.cer], "rejected_cer": r[GEN.cer],
            "chosen_wer": c[GEN.wer], "rejected_wer": r[GEN.wer],
            "chosen_ssim": c[GEN.ssim], "rejected_ssim": r[GEN.ssim],
            "cer_delta": p[PAIR.cer_delta], "sim_delta": p[PAIR.sim_delta],
            "chosen_duration": c[GEN.duration], "rejected_duration": r[GEN.duration],
            "chosen_codes_path": c[GEN.codes_path], "rejected_codes_path": r[GEN.codes_path],
            "split": p[PAIR.split], "position": p[PAIR.position], "pair_id": p[PAIR.pair_id],
            "prompt_id": p[PAIR.prompt_id], "group_id": p[PAIR.group_id],
            "record_type": p[PAIR.record_type], "chosen_id": p[PAIR.chosen_id],
            "rejected_id": p[PAIR.rejected_id],
        })
    return pa.Table.from_pylist(out, schema=TRL_SCHEMA)


TRL_SCHEMA = pa.schema(
    [(n, pa.string()) for n in ("prompt", "chosen", "rejected", "context_audio_filepath", "context_text")]
    + [(n, pa.float64()) for n in ("chosen_reward", "rejected_reward", "chosen_cer", "rejected_cer",
                                   "chosen_wer", "rejected_wer", "chosen_ssim", "rejected_ssim",
                                   "cer_delta", "sim_delta", "chosen_duration", "rejected_duration")]
    + [("chosen_codes_path", pa.string()), ("rejected_codes_path", pa.string()),
       ("split", pa.string()), ("position", pa.int64())]
    + [(n, pa.string()) for n in ("pair_id", "prompt_id", "group_id", "record_type",
                                  "chosen_id", "rejected_id")])


def export_trl(store, ref: str, out_file: str | os.PathLike) -> ExportResult:
    """Write NAME[@VERSION|@TAG] as FILE.parquet or FILE.jsonl (one row per pair)."""
    path = Path(out_file)
    if path.suffix not in (".parquet", ".jsonl"):
        raise InputError(f"{path}: the TRL export writes .parquet or .jsonl")
    table = trl_table(store, ref)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        with atomic_write(path, "wb") as fh:
            pq.write_table(table, fh)
    else:
        write_text_atomic(path, "".join(_json_line(r) for r in table.to_pylist()))
    splits = table.column("split").to_pylist()
    durations = [d for col in ("chosen_duration", "rejected_duration")
                 for d in table.column(col).to_pylist() if d is not None]
    return ExportResult(files=[str(path)],
                        pairs={"train": splits.count("train"), "val": splits.count("val")},
                        codes_written=0, min_duration=min(durations, default=None),
                        max_duration=max(durations, default=None))
