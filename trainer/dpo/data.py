"""Preference pairs from the store, in the order and shard a training step needs.

:func:`load_pairs` reads a set ``NAME[@VERSION|@TAG]`` (the latest if omitted) and
joins each pair's chosen and rejected generations AT THE GENERATIONS VERSION THE
SET WAS BUILT FROM (its build record names it), so later scoring or ingest never
changes what a set version trains on. Text and context come through the same
join the exports use; codes are read from Lance by row id (the SQL views leave
them out). Context codes are resolved once per prompt by :func:`resolve_context`,
the rule `generate` and GRPO share: the prompt's ``context_audio_codes_path`` file
(builder/ingest/codes.py's reader, no torch unpickling), else none for a text
context, else the policy's codec encodes the context audio.

:class:`PairOrder` deals pairs to ranks: each epoch is a permutation seeded by
(seed, epoch); an optimizer step takes ``world * pairs_per_device * grad_accum``
consecutive pairs of it (the tail that does not fill a step is left for that
epoch), rank r micro-step a taking its own slice. So every pair is seen at most
once per epoch across ranks, and the data position is a pure function of the
step: a resumed run continues exactly where it stopped.

:func:`collate_pairs` puts the B chosen rows first and the B rejected rows after
in ONE batch: the policy runs one forward over 2B rows and the loop splits
its log-probs with ``chunk(2)``. Rows k and k + B share a dropout group
(``trainer.policy.DROPOUT_GROUP``), so conditioning dropout treats a pair as one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ttspo.builder.core.errors import InputError
from ttspo.builder.core.schemas import GEN, PAIR, PROMPT
from ttspo.builder.core.store import Store
from ttspo.builder.ingest.codes import read_codes
from ttspo.builder.ingest.files import BadFile
from ttspo.builder.scoring.audio import read_audio
from ttspo.builder.sets.build import open_set
from ttspo.builder.sets.export import generation_rows
from ttspo.trainer.policy.base import CONTEXT_CODES, DROPOUT_GROUP

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
    chosen: list[dict[str, Any]]  # policy rows: text, context_text, codes, context_codes
    rejected: list[dict[str, Any]]
    chosen_reward: np.ndarray
    rejected_reward: np.ndarray

    def __len__(self) -> int:
        return len(self.pair_ids)

    @property
    def ref(self) -> str:
        return f"{self.set_name}@{self.set_version}"

    def select(self, split: str) -> "Pairs":
        """The pairs of one split ("train" | "val"), in shuffle-position order."""
        keep = [i for i, s in enumerate(self.split) if s == split]
        pick = lambda xs: [xs[i] for i in keep]
        return Pairs(set_name=self.set_name, set_version=self.set_version,
                     generations_version=self.generations_version,
                     prompts_version=self.prompts_version, pair_ids=pick(self.pair_ids),
                     split=pick(self.split), chosen=pick(self.chosen), rejected=pick(self.rejected),
                     chosen_reward=self.chosen_reward[keep],
                     rejected_reward=self.rejected_reward[keep])

    def lineage_inputs(self) -> dict[str, int]:
        inputs = {self.set_name: self.set_version, "generations": self.generations_version}
        if self.prompts_version is not None:
            inputs["prompts"] = self.prompts_version
        return inputs


def load_pairs(store: Store, ref: str, *, encode: Callable[[np.ndarray, int], Any] | None = None
               ) -> Pairs:
    """The pairs of set REF. ENCODE(audio, sr) -> codes [C, T] makes context codes
    for prompts without a codes file (the policy's ``codec.encode``)."""
    sv = open_set(store, ref)
    pairs = sv.rows(list(PAIR_COLUMNS))
    gens = generation_rows(store, sv, pairs)
    gen_version = sv.record.inputs["generations"]
    codes = read_codes_by_id(store, gen_version, sorted(gens), ref=sv.ref)
    contexts = context_codes(gens, encode)
    rows = {g: {**{k: r[k] for k in ROW_KEYS}, GEN.codes: codes[g],
                CONTEXT_CODES: contexts[r[GEN.prompt_id]]} for g, r in gens.items()}
    p = pairs.to_pydict()
    return Pairs(set_name=sv.name, set_version=sv.version, generations_version=gen_version,
                 prompts_version=sv.record.prompts_version, pair_ids=p[PAIR.pair_id],
                 split=p[PAIR.split], chosen=[rows[g] for g in p[PAIR.chosen_id]],
                 rejected=[rows[g] for g in p[PAIR.rejected_id]],
                 chosen_reward=np.asarray(p[PAIR.chosen_reward], dtype=np.float64),
                 rejected_reward=np.asarray(p[PAIR.rejected_reward], dtype=np.float64))


def read_codes_by_id(store: Store, version: int, ids: Sequence[str], *, ref: str
                     ) -> dict[str, np.ndarray]:
    """generation_id -> int codes [C, T], read by Lance row id at generations@VERSION."""
    ds = store.open("generations", version)
    wanted = pa.array(list(ids), pa.string())
    index = ds.to_table(columns=[GEN.generation_id], with_row_id=True)
    index = index.filter(pc.is_in(index.column(GEN.generation_id), value_set=wanted))
    taken = ds._take_rows(index.column("_rowid").to_pylist(), columns=[GEN.codes])
    out = {}
    for gid, frames in zip(index.column(GEN.generation_id).to_pylist(),
                           taken.column(GEN.codes).to_pylist()):
        if not frames or not frames[0]:
            raise InputError(f"{ref}: generation {gid} has no codes in generations@{version} "
                             "(ingest it with its *_codes.pt file, or generate it with ttspo)")
        out[gid] = np.asarray(frames, dtype=np.int64)
    return out


def context_codes(gens: dict[str, dict[str, Any]], encode: Callable | None
                  ) -> dict[str, np.ndarray | None]:
    """prompt_id -> its context codes (once per prompt), None for a text context."""
    out: dict[str, np.ndarray | None] = {}
    for gid, r in gens.items():
        if r[GEN.prompt_id] not in out:
            out[r[GEN.prompt_id]] = resolve_context(
                codes_path=r.get(PROMPT.context_audio_codes_path),
                audio_path=r[GEN.context_audio_filepath], text=r[GEN.context_text] is not None,
                encode=encode, what=f"generation {gid}")
    return out


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
    if encode is None:
        raise InputError(f"{what}: context audio {audio_path} needs a codec to encode it")
    try:
        audio, sr = read_audio(audio_path)
    except InputError as exc:
        raise InputError(f"{what}: context {exc}") from None
    return np.asarray(encode(audio, sr), dtype=np.int64)


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


def collate_pairs(policy: Any, pairs: Pairs, index: Sequence[int]) -> Any:
    """ONE batch: the chosen rows of INDEX, then their rejected rows. Rows k and k + B
    are one pair: they share a dropout group, so conditioning dropout drops both or
    neither (a pair never compares a conditioned chosen with an unconditioned rejected)."""
    rows = [{**pairs.chosen[i], DROPOUT_GROUP: k} for k, i in enumerate(index)] + \
        [{**pairs.rejected[i], DROPOUT_GROUP: k} for k, i in enumerate(index)]
    return policy.collate(rows, with_targets=True)
