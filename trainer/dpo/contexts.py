"""A prompt's context codes, the one rule DPO, generate and GRPO share.

:func:`resolve_context`: the prompt's ``context_audio_codes_path`` file
(builder/ingest/codes.py's reader, no torch unpickling), else none for a text
context, else the policy's codec encodes the context audio, once per context FILE
CONTENT (:class:`ContextEncodes`: 20k prompts over 5 speakers' files, 5 encodes).
:func:`prompt_contexts` resolves a streamed set's prompts, :func:`context_codes` the
in-memory loader's, :func:`prompt_context` a ``prompts`` row (generate, GRPO).
"""

from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from ttspo.builder.core.errors import InputError
from ttspo.builder.core.files import file_sha256
from ttspo.builder.core.lance_rows import RowsOfIds, rows_matching, take_rows
from ttspo.builder.core.schemas import GEN, PROMPT
from ttspo.builder.core.store import Store
from ttspo.builder.ingest.codes import read_codes
from ttspo.builder.ingest.files import BadFile
from ttspo.builder.scoring.audio import read_audio

CONTEXT_TAKE = 8192  # rows a streamed load takes at once to resolve the prompts' contexts


def prompt_contexts(store: Store, sv: Any, ds: Any, *, prompts: pa.Array,
                    first_pair: np.ndarray, chosen_rowid: np.ndarray, encode: Callable | None
                    ) -> list[np.ndarray | None]:
    """Each prompt's context codes (PROMPTS: the set's prompt ids, FIRST_PAIR: each
    one's first pair): read from that pair's chosen generation and the prompts table
    at the set's prompts version, by :func:`resolve_context`'s rule; a text context
    without a codes file is None with no Python work per prompt."""
    reps = chosen_rowid[first_pair]  # each prompt's row: its first pair's chosen generation
    work = rows_matching(ds, f"{GEN.context_text} IS NULL", reps)  # an audio context
    files = np.full(len(prompts), -1, np.int64)  # the prompt's row, where it names a codes file
    if sv.record.prompts_version is not None:
        table = store.open("prompts", sv.record.prompts_version)
        at = RowsOfIds([prompts]).read(table, PROMPT.prompt_id)  # -1: not in the table, no file
        files = np.where(rows_matching(table, f"{PROMPT.context_audio_codes_path} IS NOT NULL",
                                       at), at, -1)
        work |= files >= 0
    contexts: list[np.ndarray | None] = [None] * len(prompts)
    once = ContextEncodes(encode)
    work = np.flatnonzero(work)  # in prompt order: the first bad context is the one named
    for start in range(0, len(work), CONTEXT_TAKE):  # Lance's takes, in bounded pieces
        part = work[start:start + CONTEXT_TAKE]
        rep = take_rows(ds, reps[part].tolist(),
                        [GEN.generation_id, GEN.context_audio_filepath, GEN.context_text])
        path = [None] * len(part)
        named = np.flatnonzero(files[part] >= 0)
        if len(named):
            taken = take_rows(table, files[part[named]].tolist(), [PROMPT.context_audio_codes_path])
            for j, p in zip(named.tolist(), taken.column(0).to_pylist()):
                path[j] = p
        for j, k in enumerate(part.tolist()):
            contexts[k] = resolve_context(
                codes_path=path[j], audio_path=rep.column(GEN.context_audio_filepath)[j].as_py(),
                text=rep.column(GEN.context_text)[j].is_valid, encode=once,
                what=f"generation {rep.column(GEN.generation_id)[j].as_py()}")
    return contexts


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
