"""The lines of a NeMo export, column by column (export.py says what they hold).

A manifest line is JSON as ``json.JSONEncoder(ensure_ascii=False).encode`` writes
a dict: ``{"key": value, ...}`` with ", " and ": " separators. A re-threshold
writes ~25k such lines, so instead of a dict and an encoder call per line, each
generation's fixed parts (prompt fields, wav, metrics: before and after its codes
path) are encoded once, column by column, and kept per generations version in the
session and the store (session_cache); each line is then that part, its codes
path and the pair's few values, joined by Arrow, and a manifest is the joined
lines' bytes. The values are encoded exactly as the encoder does (strings by its
own ``encode_basestring``, floats by ``float.__repr__`` with NaN/Infinity,
anything else by the encoder); tests/test_rethreshold.py compares both on
awkward values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ttspo.builder.core.errors import InputError
from ttspo.builder.core.schemas import DERIVED, GEN, LINE_PARTS_SCHEMA, PAIR, PROMPT
from ttspo.builder.sets.line_parts import _STRING, CONTEXT_CODES, encode_value, gen_parts
from ttspo.builder.sets.session_cache import POOL, table_identity
from ttspo.builder.sets.stored_maps import drop_pages, one_array, stored_rows, take

# Generation columns an export reads (not the heavy `codes`).
GEN_COLUMNS = (GEN.generation_id, GEN.prompt_id, GEN.text, GEN.record_type,
               GEN.context_audio_filepath, GEN.context_audio_duration, GEN.context_text,
               GEN.audio_filepath, GEN.codes_path, GEN.duration, GEN.cer, GEN.wer, GEN.ssim,
               GEN.pred_transcript, GEN.gt_transcript)
PARTS_CHUNK = 8192  # generations whose columns are Python objects at once (a first export)
ID_BATCH = 1 << 18  # the table's ids scanned at once, to find the rows of those an export computes

@dataclass
class SetGenerations:
    """The generations a set names, at the version it was built from."""

    ds: Any  # the generations table at that version
    ids: pa.Array  # the set's generations, in table order (Arrow strings, not Python objects)
    parts: pa.Table  # LINE_PARTS_SCHEMA rows holding theirs (the stored entry, mapped, not a copy)
    at: pa.Array | None = None  # the row in parts of each of ids (None: parts are ids, in order)

    def taken(self, name: str) -> pa.Array:
        """Column NAME of parts in the order of ids (a copy only of that column)."""
        column = self.parts.column(name)
        return one_array(column) if self.at is None else take(column, self.at)

    def column(self, name: str) -> list:
        return self.taken(name).to_pylist()

    @property
    def rows(self) -> pa.Array:
        """The row in ds of each of ids."""
        return self.taken(DERIVED.row)


def _version(store, sv) -> tuple[Any, tuple, Any]:
    """(generations at the set's version, its table_identity, prompts at the set's
    prompts version or None)."""
    ds = store.open("generations", sv.record.inputs["generations"])
    prompts = (store.open("prompts", sv.record.prompts_version) if sv.record.prompts_version is not None
               else None)
    return ds, table_identity(ds), prompts


def _rows_of(sv, ds, *, ids: pa.Array) -> np.ndarray:
    """The rows of the generations IDS (Arrow strings) in DS, found by one scan of
    its ids, a batch at a time, against a hash of IDS (no table of every id held:
    ~8 per pair, the largest part of a first export's memory; bench/RESULTS.md);
    an id it lacks is an InputError."""
    rows = np.full(len(ids), -1, np.int64)
    start = 0
    for batch in ds.to_batches(columns=[GEN.generation_id], batch_size=ID_BATCH):
        where = pc.index_in(batch.column(0), value_set=ids, memory_pool=POOL)
        found = np.flatnonzero(where.is_valid().to_numpy(zero_copy_only=False))
        if len(found):
            at = where.take(pa.array(found)).to_numpy()
            first = rows[at] < 0  # the first row holding an id, as a lookup of every id finds:
            rows[at[first][::-1]] = (start + found[first])[::-1]  # a repeated index keeps the last value
        start += batch.num_rows
    if (rows < 0).any():
        missing = pc.filter(ids, pa.array(rows < 0)).to_pylist()
        raise InputError(f"{sv.ref}: generation {missing[0]} is not in generations@{ds.version} "
                         f"({len(missing)} missing)")
    return rows


def _named(pairs: pa.Table) -> pa.Array:
    """The generations PAIRS name, each once (chosen ids first, in pair order)."""
    return pc.unique(pa.chunked_array(pairs.column(PAIR.chosen_id).chunks + pairs.column(PAIR.rejected_id).chunks,
                                      pa.string()), memory_pool=POOL)


def generation_columns(store, sv, pairs: pa.Table) -> dict[str, list]:
    """GEN_COLUMNS (plus each prompt's context codes path) of the generations PAIRS
    name, in table order, read at the version the set was built from."""
    ds, _, prompts = _version(store, sv)
    ids = _named(pairs)
    rows = _rows_of(sv, ds, ids=ids)
    order = np.argsort(rows, kind="stable")
    return _read_columns(ds, prompts, ids.take(pa.array(order)).to_pylist(), rows[order])


def _read_columns(ds, prompts, ids: list[str], rows: np.ndarray) -> dict[str, list]:
    """GEN_COLUMNS of IDS (at ROWS of DS) as lists, plus their prompts' context codes
    paths (PROMPTS: a dataset, or its two columns already read)."""
    table = ds.take(pa.array(rows, pa.int64()), columns=list(GEN_COLUMNS))
    columns = {c: table.column(c).to_pylist() for c in GEN_COLUMNS}
    if columns[GEN.generation_id] != ids:  # rows are matched by offset: check they are these
        raise InputError(f"{ds.uri}: rows moved while the export read them; export again")
    columns[CONTEXT_CODES] = context_codes(prompts, table.column(GEN.prompt_id))
    return columns


def set_generations(store, sv, pairs: pa.Table) -> SetGenerations:
    """The generations PAIRS name, read at the version the set was built from (plus
    each prompt's context codes path at the set's prompts version). Their line parts
    are kept per table version, in the session and in the store (session_cache): a
    table's every id is read only for generations not kept yet."""
    ds, gen_key, prompts = _version(store, sv)

    def compute(todo: pa.Array) -> Iterator[pa.Table]:
        """The line parts of TODO, PARTS_CHUNK at a time in table order (written one
        after another; only a piece's ids and rows are Python objects). In table
        order, as a Lance take of rows spread over the whole table reads pages all
        over it: the set's order made each piece's read grow with the table
        (bench/RESULTS.md, step 4)."""
        rows = _rows_of(sv, ds, ids=todo)
        order = np.argsort(rows, kind="stable")
        table = _prompt_codes(prompts)  # read once, not per chunk
        for i in range(0, len(todo), PARTS_CHUNK):
            at = order[i:i + PARTS_CHUNK]
            ids = pc.take(todo, pa.array(at), memory_pool=POOL).to_pylist()
            yield gen_parts(_read_columns(ds, table, ids, rows[at]), rows[at])

    key = (gen_key, None if prompts is None else table_identity(prompts))
    parts, at = stored_rows(store, "export.line_parts", key, LINE_PARTS_SCHEMA, ids=_named(pairs),
                            compute=compute, order_by=DERIVED.row)  # table order
    ids = take(parts.column(DERIVED.id), at)
    drop_pages()
    return SetGenerations(ds, ids, parts, at)


def _prompt_codes(prompts) -> pa.Table | None:
    if prompts is None or isinstance(prompts, pa.Table):
        return prompts
    return prompts.to_table(columns=[PROMPT.prompt_id, PROMPT.context_audio_codes_path])


def context_codes(prompts, prompt_ids: pa.ChunkedArray) -> list:
    """Each generation's prompt's context_audio_codes_path (None without prompts;
    PROMPTS: the prompts dataset, or its two columns already read)."""
    if prompts is None:
        return [None] * len(prompt_ids)
    table = _prompt_codes(prompts)
    at = pc.index_in(prompt_ids, value_set=table.column(PROMPT.prompt_id))
    return table.column(PROMPT.context_audio_codes_path).take(at).to_pylist()


def check_for_nemo(ref: str, gens: SetGenerations) -> None:
    problems = gens.taken(DERIVED.problem)
    if problems.null_count < len(problems):
        first = pc.index(pc.is_valid(problems), True).as_py()
        raise InputError(f"{ref}: generation {gens.ids[first].as_py()} {problems[first].as_py()}")


# ------------------------------------------------------------------ lines
@dataclass
class CodesFiles:
    """Each generation's codes file, FOLDER/NAME: its NAME at AT in NAMES (None: in
    order). Joined into the lines a chunk at a time, never as a whole array of paths."""

    folder: str
    names: pa.Array  # only [A-Za-z0-9_./-]: nothing in them is escaped
    at: pa.Array | None = None

    def encoded(self) -> pa.Array:
        """The paths JSON-encoded, in order (a copy: the unusual case only)."""
        names = one_array(pa.chunked_array([self.names]) if isinstance(self.names, pa.Array) else self.names)
        return encoded_paths(self.folder, names if self.at is None else take(names, self.at))


def openings(gens: SetGenerations, codes_paths: dict[str, str] | pa.Array | CodesFiles) -> list:
    """Per generation of GENS (in its order), its lines' fixed items pointing at
    CODES_PATHS (generation id -> path, CodesFiles, or the paths already JSON-encoded
    as an array in the order of gens.ids; empty: its own codes_path), joined, with
    ", " after unless empty: as pieces to join (arrays, one value per generation,
    scalars, and (array, positions) pairs: the array's values at POSITIONS are the
    generations')."""
    if isinstance(codes_paths, CodesFiles):
        files = codes_paths
        names = files.names  # as stored (string): each chunk's taken cast to large_string, not all of it
        named = pc.is_valid(names) if files.at is None else take(pc.is_valid(names), files.at)
        if pc.all(named).as_py() is not False:
            head, tail, at = _fixed_parts(gens)
            if _shortest(head, at) and _shortest(tail, at):  # the usual case (below), paths per chunk
                opening = ', "target_audio_codes_path": ' + _STRING(f"{files.folder}/")[:-1]
                return [(head, at), _lit(opening), names if files.at is None else (names, files.at),
                        _lit('", '), (tail, at), _lit(", ")]
        encoded = files.encoded().cast(pa.large_string())
    elif isinstance(codes_paths, pa.Array):
        encoded = codes_paths.cast(pa.large_string())
    else:
        paths = [codes_paths[g] for g in gens.ids.to_pylist()] if codes_paths else gens.column(DERIVED.codes_path)
        encoded = pa.array([None if p is None else _STRING(p) for p in paths], pa.large_string(),
                           memory_pool=POOL)
    head, tail, at = _fixed_parts(gens)
    if not encoded.null_count and _shortest(head, at) and _shortest(tail, at):
        # the usual case: every generation has all three parts, joined with the lines;
        # head and tail stay where they are (the stored entry), taken a chunk at a time
        return [(head, at), _lit(', "target_audio_codes_path": '), encoded, _lit(", "), (tail, at), _lit(", ")]
    out = []
    for head_items, path, tail_items in zip(gens.column(DERIVED.head), encoded.to_pylist(),
                                            gens.column(DERIVED.tail)):
        middle = "" if path is None else f'"target_audio_codes_path": {path}'
        text = ", ".join([p for p in (head_items, middle, tail_items) if p])
        out.append(f"{text}, " if text else "")
    return [pa.array(out, pa.large_string(), memory_pool=POOL)]


def _fixed_parts(gens: SetGenerations) -> tuple[pa.ChunkedArray, pa.ChunkedArray, pa.Array]:
    """(head, tail, the row of each generation in them): the stored entry's, no copy."""
    head, tail = gens.parts.column(DERIVED.head), gens.parts.column(DERIVED.tail)
    return head, tail, pa.array(range(len(head)), pa.int64()) if gens.at is None else gens.at


def _shortest(parts: pa.ChunkedArray, at: pa.Array) -> int:
    """The fewest bytes of PARTS at AT (0 if none)."""
    return pc.min(take(pc.binary_length(parts), at)).as_py() if len(at) else 0


def encoded_paths(folder: str, names: pa.Array) -> pa.Array:
    """FOLDER/NAME for each of NAMES, JSON-encoded as the encoder writes them
    (NAMES hold only [A-Za-z0-9_./-]: nothing in them is escaped)."""
    head = _STRING(f"{folder}/")[:-1]  # the opening quote and the escaped folder
    return pc.binary_join_element_wise(_lit(head), names.cast(pa.large_string()), _lit('"'), _lit(""),
                                       memory_pool=POOL)


def _strings(values: list) -> pa.Array:
    encoded = list(map(_STRING, values)) if None not in values else [encode_value(v) for v in values]
    return pa.array(encoded, pa.large_string(), memory_pool=POOL)


def _numbers(column: pa.ChunkedArray) -> pa.Array:
    values = column.to_pylist()
    if (pa.types.is_floating(column.type) and column.null_count == 0
            and np.isfinite(column.to_numpy()).all()):
        encoded = list(map(float.__repr__, values))
    else:
        encoded = [encode_value(v) for v in values]
    return pa.array(encoded, pa.large_string(), memory_pool=POOL)


# Pairs whose lines are in memory at once (~1.5 KB each); also bounds the mapped
# pages of the stored line parts a chunk touches (~2 per generation) before they
# are handed back (stored_maps.drop_pages).
CHUNK_PAIRS = 4096


def nemo_manifests(pairs: pa.Table, ids: pa.Array, fixed: list) -> dict[str, tuple[memoryview, int]]:
    """split -> (its manifest's bytes, lines), in one piece (manifest_chunks, one chunk)."""
    out = {}
    for split, data, lines in manifest_chunks(pairs, ids, fixed, chunk=max(1, pairs.num_rows)):
        out[split] = (data, lines)
    return out


def manifest_chunks(pairs: pa.Table, ids: pa.Array, fixed: list, *, chunk: int = CHUNK_PAIRS,
                    more: Callable[[np.ndarray], pa.Table] | None = None,
                    release: Callable[[], None] = drop_pages) -> Iterator[tuple[str, memoryview, int]]:
    """(split, bytes, lines) pieces of the two manifests, train's then val's, CHUNK
    pairs at a time: each pair as its chosen line then its rejected line, in the
    order of PAIRS (the shuffle). A split's pieces one after another are its
    manifest (a split without pairs yields one empty piece). FIXED: openings() of
    the generations IDS. Each value encoded once; each pair's two lines joined by Arrow.
    MORE(rows): the other columns of those rows of PAIRS, read a chunk at a time
    (None: PAIRS has them all). RELEASE: called once the pairs are indexed and
    before each chunk is made (what the last one freed handed back)."""
    splits = pairs.column(PAIR.split)
    unknown = set(pc.unique(splits).to_pylist()) - {"train", "val"}
    if unknown:
        raise InputError(f"a pair has split {sorted(map(str, unknown))[0]!r}, not train or val")
    value_set = ids if isinstance(ids, pa.Array) else pa.array(ids, pa.string(), memory_pool=POOL)
    # each pair's generations' positions in IDS, found once (one hash of IDS)
    at = {side: pc.index_in(pairs.column(side), value_set=value_set, memory_pool=POOL).combine_chunks(POOL)
          for side in (PAIR.chosen_id, PAIR.rejected_id)}
    if any(a.null_count for a in at.values()):
        raise InputError("a pair names a generation the export did not read")
    release()
    for split in ("train", "val"):
        rows = np.flatnonzero(pc.equal(splits, split).combine_chunks().to_numpy(zero_copy_only=False))
        if not len(rows):
            yield split, memoryview(b""), 0
        for start in range(0, len(rows), chunk):
            part = rows[start:start + chunk]
            if part[-1] - part[0] + 1 == len(part):  # one run (val is a prefix): no copy
                some = pairs.slice(int(part[0]), len(part))
                some_at = {side: a.slice(int(part[0]), len(part)) for side, a in at.items()}
            else:
                some = pairs.take(pa.array(part, pa.int64()))
                some_at = {side: a.take(pa.array(part, pa.int64())) for side, a in at.items()}
            if more is not None:
                extra = more(part)
                for name in extra.column_names:
                    some = some.append_column(name, extra.column(name))
            release()
            yield split, _text(_two_lines(some, some_at, fixed)), 2 * len(part)


def _two_lines(pairs: pa.Table, at: dict[str, pa.Array], fixed: list) -> pa.Array:
    """Each pair of PAIRS as its chosen line and its rejected line, one string (AT:
    side -> each pair's generation's position in FIXED's pieces)."""
    pid = _strings(pairs.column(PAIR.pair_id).to_pylist())
    value = {n: _numbers(pairs.column(n)) for n in (PAIR.chosen_reward, PAIR.rejected_reward,
                                                     PAIR.cer_delta, PAIR.sim_delta)}

    def piece(p, side: str):
        if isinstance(p, pa.Scalar):
            return p
        if isinstance(p, tuple):  # (array, positions): its values at positions are the generations'
            taken = take(p[0], pc.take(p[1], at[side], memory_pool=POOL))
        else:
            taken = take(p, at[side])
        drop_pages()  # the mapped pages this take touched (a stored entry's): not kept
        return taken.cast(pa.large_string())

    def opening(side: str) -> list:
        return [piece(p, side) for p in fixed]

    two_lines = pc.binary_join_element_wise(
        _lit("{"), *opening(PAIR.chosen_id), _lit('"reward": '), value[PAIR.chosen_reward],
        _lit(', "pair_id": '), pid, _lit(', "generation_id": '), _strings(pairs.column(PAIR.chosen_id).to_pylist()),
        _lit("}\n{"), *opening(PAIR.rejected_id), _lit('"reward": '), value[PAIR.rejected_reward],
        _lit(', "cer_delta": '), value[PAIR.cer_delta], _lit(', "sim_delta": '), value[PAIR.sim_delta],
        _lit(', "pair_id": '), pid, _lit(', "generation_id": '), _strings(pairs.column(PAIR.rejected_id).to_pylist()),
        _lit("}\n"), _lit(""), memory_pool=POOL)
    if two_lines.null_count:
        raise AssertionError("a manifest line came out null")
    return two_lines


def _lit(text: str) -> pa.Scalar:
    return pa.scalar(text, pa.large_string())


def _text(lines: pa.Array) -> memoryview:
    """The bytes of LINES (a large_string array without nulls) one after another."""
    if len(lines) == 0:
        return memoryview(b"")
    offsets = np.frombuffer(lines.buffers()[1], np.int64)[lines.offset:lines.offset + len(lines) + 1]
    return memoryview(lines.buffers()[2])[int(offsets[0]):int(offsets[-1])]
