"""Preference pairs from the store, in the order and shard a training step needs.

:func:`load_pairs` reads a set ``NAME[@VERSION|@TAG]`` (the latest if omitted) and
joins each pair's chosen and rejected generations AT THE GENERATIONS VERSION THE
SET WAS BUILT FROM (its build record names it), so later scoring or ingest never
changes what a set version trains on. Text and context come through the same
join the exports use; codes are read from Lance by row id (the SQL views leave
them out): all of them as the set loads (``stream=False``, the in-memory loader),
or a batch at a time when a step needs them (``stream=True``: the pairs hold each
generation's row id, 8 bytes, and :meth:`Pairs.rows` reads the codes of the pairs
asked for; trainer/dpo/stream.py prefetches them in worker processes). Context
codes are resolved once per prompt by :func:`resolve_context`, the rule `generate`
and GRPO share: the prompt's ``context_audio_codes_path`` file
(builder/ingest/codes.py's reader, no torch unpickling), else none for a text
context, else the policy's codec encodes the context audio, once per context FILE
CONTENT (:class:`ContextEncodes`: 20k prompts over 5 speakers' files, 5 encodes).

:class:`PairOrder` deals pairs to ranks: each epoch is a permutation seeded by
(seed, epoch); an optimizer step takes ``world * pairs_per_device * grad_accum``
consecutive pairs of it (the tail that does not fill a step is left for that
epoch), rank r micro-step a taking its own slice. So every pair is seen at most
once per epoch across ranks, and the data position is a pure function of the
step: a resumed run continues exactly where it stopped.

:func:`collate_pairs` puts the B chosen rows first and the B rejected rows after
in ONE batch (trainer/dpo/forward.py runs it and splits the log-probs). Rows k
and k + B share a dropout group (``trainer.policy.DROPOUT_GROUP``), so
conditioning dropout treats a pair as one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ttspo.builder.core.errors import InputError
from ttspo.builder.core.files import file_sha256
from ttspo.builder.core.lance_rows import ROW_ID, row_ids, take_rows
from ttspo.builder.core.schemas import GEN, PAIR, PROMPT
from ttspo.builder.core.store import Store
from ttspo.builder.ingest.codes import read_codes
from ttspo.builder.ingest.files import BadFile
from ttspo.builder.scoring.audio import read_audio
from ttspo.builder.sets.build import open_set
from ttspo.builder.sets.export import generation_rows
from ttspo.trainer.policy.base import CONTEXT_CODES, DROPOUT_GROUP, EOS_DRAWN

PAIR_COLUMNS = (PAIR.pair_id, PAIR.prompt_id, PAIR.chosen_id, PAIR.rejected_id,
                PAIR.chosen_reward, PAIR.rejected_reward, PAIR.split)
ROW_KEYS = (GEN.generation_id, GEN.text, GEN.context_text)  # what a policy's collate reads


@dataclass(kw_only=True)
class Pairs:
    """A set version's pairs, with everything a policy needs to collate them."""

    set_name: str
    set_version: int
    generations_version: int
    prompts_version: int | None
    pair_ids: list[str]
    split: list[str]
    chosen: list[dict[str, Any]]  # policy rows: text, context_text, context_codes (+ codes)
    rejected: list[dict[str, Any]]
    chosen_reward: np.ndarray
    rejected_reward: np.ndarray
    # Streaming: each side's generations row id, and where to read codes by them
    # (None: the rows above hold their codes, the in-memory loader).
    codes: "CodesReader | None" = None
    chosen_rowid: np.ndarray | None = None
    rejected_rowid: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.pair_ids)

    @property
    def ref(self) -> str:
        return f"{self.set_name}@{self.set_version}"

    def select(self, split: str) -> "Pairs":
        """The pairs of one split ("train" | "val"), in shuffle-position order."""
        keep = [i for i, s in enumerate(self.split) if s == split]
        pick = lambda xs: [xs[i] for i in keep]
        ids = lambda a: None if a is None else a[keep]
        return Pairs(set_name=self.set_name, set_version=self.set_version,
                     generations_version=self.generations_version,
                     prompts_version=self.prompts_version, pair_ids=pick(self.pair_ids),
                     split=pick(self.split), chosen=pick(self.chosen), rejected=pick(self.rejected),
                     chosen_reward=self.chosen_reward[keep],
                     rejected_reward=self.rejected_reward[keep], codes=self.codes,
                     chosen_rowid=ids(self.chosen_rowid), rejected_rowid=ids(self.rejected_rowid))

    def rows(self, index: Sequence[int], codes: "PairCodes | None" = None
             ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The chosen and rejected policy rows of the pairs INDEX, with their codes:
        held (in memory), given (CODES, read ahead by a worker), or read now by row id."""
        if self.codes is None:
            return [self.chosen[i] for i in index], [self.rejected[i] for i in index]
        if codes is None:
            codes = self.read_codes(index)
        with_codes = lambda rows, cs: [{**rows[i], GEN.codes: c} for i, c in zip(index, cs)]
        return with_codes(self.chosen, codes[0]), with_codes(self.rejected, codes[1])

    def read_codes(self, index: Sequence[int]) -> "PairCodes":
        """The codes of the pairs INDEX (streaming): one take of 2B rows by row id."""
        index = np.asarray(index, dtype=np.int64)
        return self.codes.pair_codes(self.chosen_rowid[index], self.rejected_rowid[index])

    def lineage_inputs(self) -> dict[str, int]:
        inputs = {self.set_name: self.set_version, "generations": self.generations_version}
        if self.prompts_version is not None:
            inputs["prompts"] = self.prompts_version
        return inputs


def load_pairs(store: Store, ref: str, *, encode: Callable[[np.ndarray, int], Any] | None = None,
               stream: bool = False, eos_target: str = "always") -> Pairs:
    """The pairs of set REF. ENCODE(audio, sr) -> codes [C, T] makes context codes
    for prompts without a codes file (the policy's ``codec.encode``). STREAM: hold
    row ids, not codes (a generation without codes is then found when its batch is read).
    EOS_TARGET (``data.eos_target``) "sampled": each row says whether its sample drew EOS
    (``eos_drawn``: codes_len below the max_steps it was generated with)."""
    sv = open_set(store, ref)
    pairs = sv.rows(list(PAIR_COLUMNS))
    gens = generation_rows(store, sv, pairs)
    gen_version = sv.record.inputs["generations"]
    contexts = context_codes(gens, encode)
    rows = {g: {**{k: r[k] for k in ROW_KEYS}, CONTEXT_CODES: contexts[r[GEN.prompt_id]]}
            for g, r in gens.items()}
    p = pairs.to_pydict()
    out = Pairs(set_name=sv.name, set_version=sv.version, generations_version=gen_version,
                prompts_version=sv.record.prompts_version, pair_ids=p[PAIR.pair_id],
                split=p[PAIR.split], chosen=[rows[g] for g in p[PAIR.chosen_id]],
                rejected=[rows[g] for g in p[PAIR.rejected_id]],
                chosen_reward=np.asarray(p[PAIR.chosen_reward], dtype=np.float64),
                rejected_reward=np.asarray(p[PAIR.rejected_reward], dtype=np.float64))
    ids = generation_row_ids(store, gen_version, sorted(gens))
    if eos_target == "sampled":
        for g, drawn in eos_drawn(store, gen_version, ids).items():
            rows[g][EOS_DRAWN] = drawn
    if stream:
        out.codes = CodesReader(store, gen_version, sv.ref)
        out.chosen_rowid = np.array([ids[g] for g in p[PAIR.chosen_id]], dtype=np.int64)
        out.rejected_rowid = np.array([ids[g] for g in p[PAIR.rejected_id]], dtype=np.int64)
        return out
    codes = CodesReader(store, gen_version, sv.ref).by_id(ids)
    for row in rows.values():  # chosen/rejected share these dicts: one array per generation
        row[GEN.codes] = codes[row[GEN.generation_id]]
    return out


def eos_drawn(store: Store, version: int, ids: dict[str, int]) -> dict[str, bool]:
    """generation_id -> whether its sample drew EOS: False when it ran to its max_steps
    (the sampler's length without EOS). Unknown (ingested without max_steps or
    codes_len): True, the target NeMo gives every sample."""
    taken = take_rows(store.open("generations", version), list(ids.values()),
                      [GEN.generation_id, GEN.codes_len, GEN.max_steps]).to_pydict()
    return {g: n is None or m is None or n < m for g, n, m in
            zip(taken[GEN.generation_id], taken[GEN.codes_len], taken[GEN.max_steps])}


def generation_row_ids(store: Store, version: int, ids: Sequence[str]) -> dict[str, int]:
    """generation_id -> its Lance row id at generations@VERSION, for the IDS asked."""
    index = row_ids(store.open("generations", version), GEN.generation_id)
    index = index.filter(pc.is_in(index.column(GEN.generation_id),
                                  value_set=pa.array(list(ids), pa.string())))
    return dict(zip(index.column(GEN.generation_id).to_pylist(),
                    index.column(ROW_ID).to_pylist()))


PairCodes = tuple[list[np.ndarray], list[np.ndarray]]  # chosen's and rejected's codes [C, T]


class CodesReader:
    """Codes of generations@VERSION by Lance row id. Picklable (a store path and a
    version): a spawned worker opens its own dataset (Lance is not fork-safe)."""

    def __init__(self, store: Store, version: int, ref: str):
        self.store, self.version, self.ref = store, version, ref
        self._ds = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_ds": None}

    def take(self, rowids: Sequence[int]) -> list[np.ndarray]:
        """Int codes [C, T] of the rows ROWIDS, in that order."""
        if self._ds is None:
            self._ds = self.store.open("generations", self.version)
        taken = take_rows(self._ds, rowids, [GEN.generation_id, GEN.codes])
        return [self._check(gid, frames) for gid, frames in
                zip(taken.column(GEN.generation_id).to_pylist(), taken.column(GEN.codes).to_pylist())]

    def _check(self, gid: str, frames: list | None) -> np.ndarray:
        if not frames or not frames[0]:
            raise InputError(f"{self.ref}: generation {gid} has no codes in generations@"
                             f"{self.version} (ingest it with its *_codes.pt file, or generate "
                             "it with ttspo)")
        return np.asarray(frames, dtype=np.int64)

    def by_id(self, ids: dict[str, int]) -> dict[str, np.ndarray]:
        """generation_id -> codes, for IDS (generation_id -> row id)."""
        return dict(zip(ids, self.take(list(ids.values()))))

    def pair_codes(self, chosen: np.ndarray, rejected: np.ndarray) -> PairCodes:
        codes = self.take(np.concatenate([chosen, rejected]).tolist())
        return codes[:len(chosen)], codes[len(chosen):]


def context_codes(gens: dict[str, dict[str, Any]], encode: Callable | None
                  ) -> dict[str, np.ndarray | None]:
    """prompt_id -> its context codes (once per prompt, one encode per context file
    content), None for a text context."""
    out: dict[str, np.ndarray | None] = {}
    once = ContextEncodes(encode)
    for gid, r in gens.items():
        if r[GEN.prompt_id] not in out:
            out[r[GEN.prompt_id]] = resolve_context(
                codes_path=r.get(PROMPT.context_audio_codes_path),
                audio_path=r[GEN.context_audio_filepath], text=r[GEN.context_text] is not None,
                encode=once, what=f"generation {gid}")
    return out


class ContextEncodes:
    """ENCODE, once per context audio file CONTENT: many prompts share a speaker's few
    context files (87 ms an encode with the built-in codec), so the codes are keyed by
    the file's sha256 (itself kept per (path, size, mtime): a file is hashed once)."""

    def __init__(self, encode: Callable | None):
        self.encode, self.encodes = encode, 0
        self._sha: dict[tuple[str, int, int], str] = {}
        self._codes: dict[str, np.ndarray] = {}

    def __bool__(self) -> bool:
        return self.encode is not None

    def of_file(self, path: str, read: Callable[[], tuple[np.ndarray, int]]) -> np.ndarray:
        st = os.stat(path)
        key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
        if key not in self._sha:
            self._sha[key] = file_sha256(path)
        sha = self._sha[key]
        if sha not in self._codes:
            self.encodes += 1
            self._codes[sha] = np.asarray(self.encode(*read()), dtype=np.int64)
        return self._codes[sha]


def prompt_context(prompt: dict[str, Any], encode: Callable | None) -> np.ndarray | None:
    """The context codes of a ``prompts`` row (generate, GRPO): see :func:`resolve_context`."""
    return resolve_context(codes_path=prompt.get(PROMPT.context_audio_codes_path),
                           audio_path=prompt.get(PROMPT.context_audio_filepath),
                           text=prompt[PROMPT.context_type] == "text", encode=encode,
                           what=f"prompt {prompt[PROMPT.prompt_id]}")


def resolve_context(*, codes_path: str | None, audio_path: str | None, text: bool,
                    encode: Callable | None, what: str) -> np.ndarray | None:
    """A prompt's context codes [C, T] (int64), the one rule DPO, generate and GRPO use:
    its codes file (builder/ingest/codes.py's reader), else None for a text context,
    else ENCODE(audio, sr) of its context audio (the policy's ``codec.encode``).
    A file that cannot be read is an InputError naming WHAT, the file and why."""
    if codes_path:
        try:
            return np.asarray(read_codes(codes_path), dtype=np.int64)
        except (OSError, InputError, BadFile) as exc:
            raise InputError(f"{what}: context codes {codes_path}: {exc}") from None
    if text:
        return None
    if not audio_path:
        raise InputError(f"{what}: its prompt has neither context text, context codes nor "
                         "context audio")
    if not encode:
        raise InputError(f"{what}: context audio {audio_path} needs a codec to encode it")

    def read() -> tuple[np.ndarray, int]:
        try:
            return read_audio(audio_path)
        except InputError as exc:
            raise InputError(f"{what}: context {exc}") from None

    if isinstance(encode, ContextEncodes):
        try:
            return encode.of_file(audio_path, read)
        except OSError as exc:
            raise InputError(f"{what}: context {audio_path}: cannot read audio ({exc.strerror})"
                             ) from None
    return np.asarray(encode(*read()), dtype=np.int64)


# ------------------------------------------------------------------- order
@dataclass(frozen=True, kw_only=True)
class PairOrder:
    """Which pairs each rank takes at each optimizer step (see the module docstring)."""

    num_pairs: int
    pairs_per_device: int
    world_size: int = 1
    grad_accum: int = 1
    seed: int = 0

    @property
    def pairs_per_step(self) -> int:
        return self.pairs_per_device * self.world_size * self.grad_accum

    @property
    def steps_per_epoch(self) -> int:
        return self.num_pairs // self.pairs_per_step

    def check(self, ref: str) -> None:
        if self.steps_per_epoch < 1:
            raise InputError(f"{ref}: {self.num_pairs} training pairs, fewer than one step's "
                             f"{self.pairs_per_step} (pairs_per_device x processes x grad_accum)")

    def permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_pairs)

    def position(self, step: int) -> dict[str, int]:
        """Where optimizer step STEP (0-based) starts: epoch and offset in its permutation."""
        epoch, k = divmod(step, self.steps_per_epoch)
        return {"epoch": epoch, "offset": k * self.pairs_per_step, "step": step}

    def micro_batches(self, step: int, rank: int) -> list[np.ndarray]:
        """Pair indices of RANK's grad_accum micro-batches for optimizer step STEP."""
        pos = self.position(step)
        perm = self.permutation(pos["epoch"])
        b, w = self.pairs_per_device, self.world_size
        starts = [pos["offset"] + (a * w + rank) * b for a in range(self.grad_accum)]
        return [perm[s:s + b] for s in starts]


def shard(num: int, rank: int, world_size: int) -> np.ndarray:
    """Indices RANK evaluates (validation, precompute): every index once across ranks."""
    return np.arange(rank, num, world_size)


def collate_pairs(policy: Any, pairs: Pairs, index: Sequence[int],
                  codes: PairCodes | None = None) -> Any:
    """ONE batch: the chosen rows of INDEX, then their rejected rows (codes: see
    :meth:`Pairs.rows`). Rows k and k + B are one pair: they share a dropout group, so
    conditioning dropout drops both or neither (a pair never compares a conditioned
    chosen with an unconditioned rejected)."""
    chosen, rejected = pairs.rows(index, codes)
    rows = [{**r, DROPOUT_GROUP: k} for k, r in enumerate(chosen)] + \
        [{**r, DROPOUT_GROUP: k} for k, r in enumerate(rejected)]
    return policy.collate(rows, with_targets=True)
