"""NeMo generation directories: find the files, read the manifest, group, and turn
chunks of manifest lines into record batches (in spawned worker processes).

File ``predicted_audioRank{r}_{i}*`` is manifest line ``i * R + r`` where R, the
number of ranks, is read off the file names (NeMo's distributed sampler deals
lines round-robin). Problems with the manifest or with that mapping are fatal;
problems with one generation's files are reported per file and can be skipped.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass
from itertools import chain, islice
from typing import Any, Iterator

import numpy as np
import pyarrow as pa

from ttspo.builder.ingest import codes as nemo_codes
from ttspo.builder.ingest import files as nf
from ttspo.builder.core.errors import InputError
from ttspo.builder.ingest.rows import RowBuffer, prompt_fields
from ttspo.builder.core.schemas import GEN

NEMO_SOURCE = "nemo-metrics-json"
# Matched over a chunk of a folder listing joined by newlines, one name per line
# (one regex call per chunk, not per name; anchored lines are its fastest form).
NEMO_FILES = re.compile(nf.NEMO_FILE.pattern, re.M)
SCAN_CHUNK = 1 << 15  # names matched per regex call
MAX_DIGITS = 9  # rank and index in a file name: i*R + r then fits an int64
MAX_LISTED = 10  # mapping problems listed (the rest counted): a wrong manifest is one fault


# ----------------------------------------------------------------- layout
@dataclass
class Layout:
    """Every NeMo file under GEN_DIR: dirs[d] is a folder relative to GEN_DIR."""

    gen_dir: str  # absolute
    dirs: list[str]
    files: np.ndarray  # [n, 4] int64: rank, index, kind (0 wav, 1 codes, 2 metrics), dir


def scan(gen_dir: str, label: str) -> Layout:
    """Walk GEN_DIR (not into symlinked folders: no loops) and note every NeMo file.

    A NeMo folder holds 3 files per generation (300k for a 100k run): names are
    matched by one regex call per chunk of a folder's listing, and kept as four
    int64 per file, so memory does not grow with name lengths.
    """
    root = os.path.abspath(gen_dir)
    if not os.path.isdir(root):
        raise InputError(f"{label}: not a directory")
    dirs: list[str] = []
    parts: list[np.ndarray] = []
    stack = [""]
    while stack:
        rel = stack.pop()
        dirs.append(rel)
        try:
            with os.scandir(os.path.join(root, rel)) as entries:
                while names := [e.name for e in islice(entries, SCAN_CHUNK)]:
                    parts.append(_match_names(names, len(dirs) - 1))
                    if len(parts[-1]) < len(names):  # other entries: sub-folders among them?
                        stack.extend(_subfolders(root, rel, names))
        except OSError as exc:
            raise InputError(f"{os.path.join(label, rel)}: unreadable folder ({exc.strerror})") from None
    files = np.concatenate(parts) if parts else np.zeros((0, 4), np.int64)
    if not len(files):
        raise InputError(f"{label}: no NeMo generation files (predicted_audioRank*_*.wav, "
                         "*_codes.pt, *_metrics.json) found")
    return Layout(root, dirs, files)


def _match_names(names: list[str], d: int) -> np.ndarray:
    """[rank, index, kind, d] for each NeMo file name among names."""
    found = NEMO_FILES.findall("\n".join(names))  # [(rank, index, suffix)]
    flat = list(chain.from_iterable(found))
    if any(len(n) > MAX_DIGITS for n in flat[0::3]) or any(len(n) > MAX_DIGITS for n in flat[1::3]):
        rank, index, suffix = next(f for f in found if max(len(f[0]), len(f[1])) > MAX_DIGITS)
        raise InputError(f"predicted_audioRank{rank}_{index}{suffix}: rank or index out of "
                         f"range (at most {MAX_DIGITS} digits)")
    table = np.empty((len(found), 4), dtype=np.int64)
    table[:, 0] = np.fromiter(map(int, flat[0::3]), np.int64, len(found))
    table[:, 1] = np.fromiter(map(int, flat[1::3]), np.int64, len(found))
    table[:, 2] = np.fromiter(map(nf.KINDS.__getitem__, flat[2::3]), np.int64, len(found))
    table[:, 3] = d
    return table


def _subfolders(root: str, rel: str, names: list[str]) -> list[str]:
    out = []
    for name in names:
        path = os.path.join(root, rel, name)
        if not nf.NEMO_FILE.match(name) and os.path.isdir(path) and not os.path.islink(path):
            out.append(os.path.join(rel, name))
    return out


def rel_name(layout: Layout, file: np.ndarray) -> str:
    """The path under GEN_DIR of one row of ``layout.files`` (rank, index, kind, dir)."""
    rank, index, kind, d = file
    return os.path.join(layout.dirs[d], nf.nemo_name(rank, index, kind))


def place(layout: Layout, n_lines: int, manifest_label: str, label: str) -> tuple[np.ndarray, int]:
    """Map every file to its manifest line: -> (dir of [line, kind] or -1, ranks)."""
    rank, index, kind, d = layout.files.T
    ranks = int(rank.max()) + 1
    line = index * ranks + rank
    _check_duplicates(layout, line * 3 + kind)
    found = np.unique(line)
    if len(found) != n_lines or found[-1] >= n_lines:
        _mapping_error(layout, found, ranks, n_lines, manifest_label=manifest_label, label=label)
    where = np.full((n_lines, 3), -1, dtype=np.int32)
    where[line, kind] = d
    return where, ranks


def _check_duplicates(layout: Layout, key: np.ndarray) -> None:
    order = np.argsort(key, kind="stable")
    dup = np.flatnonzero(key[order][1:] == key[order][:-1])
    if not len(dup):
        return
    problems = []
    for k in dup:
        a, b = layout.files[order[k]], layout.files[order[k + 1]]
        first, again = sorted((rel_name(layout, a), rel_name(layout, b)))
        problems.append((again, f"duplicate of {first}"))
    raise InputError("the same NeMo file appears twice under GEN_DIR (two runs in one folder?)",
                     sorted(problems))


def _mapping_error(layout, found, ranks, n_lines, *, manifest_label, label) -> None:
    if len(found) != n_lines:
        message = f"manifest has {n_lines} lines but {label} has {len(found)} generations"
    else:
        message = f"{label} does not match the manifest's {n_lines} lines"
    missing = np.setdiff1d(np.arange(n_lines), found)
    beyond = found[found >= n_lines]
    problems = []
    for ln in missing[:MAX_LISTED].tolist():
        problems.append((f"{manifest_label} line {ln + 1}",
                         f"no generation files (expected predicted_audioRank{ln % ranks}_{ln // ranks}.*)"))
    for ln in beyond[:MAX_LISTED].tolist():
        problems.append((f"predicted_audioRank{ln % ranks}_{ln // ranks}.*",
                         f"maps to manifest line {ln + 1} (i*{ranks} + r + 1), past its end"))
    hidden = len(missing) + len(beyond) - len(problems)
    if hidden > 0:
        problems.append(("...", f"and {hidden} more"))
    raise InputError(message, problems)


# --------------------------------------------------------------- manifest
@dataclass
class Manifest:
    """Runs of identical consecutive records: O(prompts) memory, not O(lines)."""

    lines: int
    sha256: str
    run_starts: np.ndarray  # first line of each run
    run_prompts: list[tuple]  # prompt fields of each run (ingest_rows.PROMPT_FIELDS)


def read_manifest(path: str, label: str, sha: str) -> Manifest:
    """The manifest's runs of identical records; SHA: its digest (core.files.file_digest)."""
    starts: list[int] = []
    prompts: list[tuple] = []
    problems: list[tuple[str, str]] = []
    prev_raw, prev_record, n = None, None, 0
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, 1):
            if raw == prev_raw:  # NeMo repeats each record verbatim: no need to parse again
                n += 1
                continue
            if not raw.strip():
                continue
            try:
                record = parse_manifest_record(raw)
            except nf.BadFile as exc:
                problems.append((f"{label} line {number}", str(exc)))
                prev_raw, prev_record = None, None
                n += 1
                continue
            if record != prev_record:
                starts.append(n)
                prompts.append(prompt_fields(record))
            prev_raw, prev_record = raw, record
            n += 1
    if problems:
        raise InputError(f"cannot ingest: {len(problems)} bad manifest line(s) in {label}", problems)
    if n == 0:
        raise InputError(f"{label}: the manifest is empty")
    return Manifest(n, sha, np.array(starts, dtype=np.int64), prompts)


def parse_manifest_record(raw: bytes) -> dict[str, Any]:
    """A manifest/jsonl record with its prompt fields type-checked (BadFile otherwise)."""
    record = nf.parse_json_object(nf.decode_utf8(raw))
    if GEN.text not in record:
        raise nf.BadFile("no 'text' field")
    if nf.string(record, GEN.text) is None:
        raise nf.BadFile("text is null")
    for key in (GEN.record_type, GEN.context_audio_filepath, GEN.context_text):
        nf.string(record, key)
    nf.number(record, GEN.context_audio_duration)
    return record


def group_starts(manifest: Manifest, group_size: int | None, label: str) -> np.ndarray:
    """First line of each group.

    By default a group is a run of identical consecutive records. A run that is a
    multiple of the usual run length is split (the shuffle put one prompt's two
    groups next to each other). --group-size G imposes groups of exactly G lines.
    """
    n = manifest.lines
    if group_size is not None:
        if group_size < 1 or n % group_size:
            raise InputError(f"{label} has {n} lines, not a multiple of --group-size {group_size}")
        return np.arange(0, n, group_size, dtype=np.int64)
    starts = manifest.run_starts
    lengths = np.diff(np.append(starts, n))
    counts = Counter(lengths.tolist())
    usual = min(counts, key=lambda length: (-counts[length], length))
    pieces = [np.arange(s, s + length, usual) if length % usual == 0 else np.array([s])
              for s, length in zip(starts.tolist(), lengths.tolist())]
    return np.concatenate(pieces).astype(np.int64)


# ------------------------------------------------------------------ tasks
def plan_tasks(layout: Layout, where: np.ndarray, ranks: int, manifest: Manifest,
               *, starts: np.ndarray, todo: np.ndarray, run: str, batch_rows: int,
               embed_audio: bool, spill_dir: str) -> Iterator[dict]:
    """One small picklable task per chunk of manifest lines still to ingest."""
    for a in range(0, len(todo), batch_rows):
        lines = todo[a:a + batch_rows]
        group = np.searchsorted(starts, lines, side="right") - 1
        prompt = np.searchsorted(manifest.run_starts, lines, side="right") - 1
        rows = np.column_stack([lines, lines % ranks, lines // ranks, where[lines],
                                group, lines - starts[group], prompt])
        used_dirs = np.unique(where[lines])
        yield {
            "run": run, "gen_dir": layout.gen_dir, "embed_audio": embed_audio,
            "dirs": {int(d): layout.dirs[d] for d in used_dirs if d >= 0},
            "prompts": {int(p): manifest.run_prompts[p] for p in np.unique(prompt)},
            "rows": rows, "spill": os.path.join(spill_dir, f"{a // batch_rows:08d}.arrows"),
        }


def build_batch(task: dict) -> tuple:
    """Read one chunk's files; write the good rows to the task's spill file.

    Returns spill_batch's summary (file, rows, groups, problems), so record
    batches never travel between processes.

    Each of a generation's three files is checked even when another is bad, so
    every bad file is reported. Runs in worker processes: no lance, no torch.
    The loop is the ingest's hot path (100k iterations): kept flat on purpose.
    """
    buf = RowBuffer(task["run"], NEMO_SOURCE)
    dirs, embed = task["dirs"], task["embed_audio"]
    prefix = {d: os.path.join(task["gen_dir"], rel, "") for d, rel in dirs.items()}
    prefix[-1] = None
    local_prompt: dict[int, int] = {}
    problems: list[tuple[int, str, str]] = []
    read, wav_info, codes_parts, parse_metrics = (
        nf.read_file_bytes, nf.wav_info, nemo_codes.codes_parts, nf.parse_metrics)
    for line, rank, index, dw, dc, dm, group, sample, prompt in task["rows"].tolist():
        base = f"predicted_audioRank{rank}_{index}"
        try:
            wav = prefix[dw] + base + ".wav"
            codes = prefix[dc] + base + "_codes.pt"
            metrics = prefix[dm] + base + "_metrics.json"
            audio = read(wav) if embed else None
            info = wav_info(wav, audio)
            parts = codes_parts(read(codes, nf.MAX_CODES_BYTES))
            m = parse_metrics(read(metrics, nf.MAX_METRICS_BYTES))
        except (nf.BadFile, TypeError):  # TypeError: a missing file has no folder (None)
            bad = _problems(line, base, (dw, dc, dm), dirs, prefix=prefix, embed=embed)
            if not bad:
                raise  # not a file problem: a bug, never a silently dropped row
            problems.extend(bad)
            continue
        if prompt not in local_prompt:
            local_prompt[prompt] = buf.add_prompt(task["prompts"][prompt])
        buf.add((line, group, sample, wav, audio, codes, info.duration,
                 info.sample_rate, m[0], m[1], m[2], m[3], None, m[4], m[5], m[6],
                 m[5] == nf.INVALID_TRANSCRIPT, metrics), local_prompt[prompt], parts)
    return spill_batch(buf.to_batch() if len(buf) else None, task["spill"], problems)


def spill_batch(batch, path: str, problems: list) -> tuple:
    """Park a checked batch in its own Arrow stream file until the commit."""
    if batch is None:
        return None, 0, [], problems
    with pa.OSFile(path, "wb") as sink, pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    groups = np.unique(batch.column(GEN.group_index).to_numpy()).tolist()
    return path, batch.num_rows, groups, problems


def warm_up() -> int:
    """A no-op task: makes the pool start its processes (and import this module) early."""
    return os.getpid()


def _problems(line: int, base: str, where: tuple, dirs: dict, *, prefix: dict,
              embed: bool) -> list[tuple[int, str, str]]:
    """Re-read a failed generation's three files one by one: every bad one, with its reason."""
    some_dir = next(d for d in where if d >= 0)
    out = []
    for kind, d in enumerate(where):
        name = base + nf.SUFFIXES[kind]
        try:
            if d < 0:
                raise nf.BadFile("missing")
            path = prefix[d] + name
            if kind == 0:
                nf.wav_info(path, nf.read_file_bytes(path) if embed else None)
            elif kind == 1:
                nemo_codes.codes_parts(nf.read_file_bytes(path, nf.MAX_CODES_BYTES))
            else:
                nf.parse_metrics(nf.read_file_bytes(path, nf.MAX_METRICS_BYTES))
        except nf.BadFile as exc:
            out.append((line, os.path.join(dirs[some_dir if d < 0 else d], name), str(exc)))
    return out
