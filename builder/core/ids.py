"""Deterministic identifiers, shared by prompts, ingest and recipes.

Ids are derived from content, not from counters, so re-running a step on the same
inputs yields the same ids (idempotent ingest, reproducible sets, stable diffs).
"""

from __future__ import annotations

import hashlib
import json


def prompt_id(text: str, context_audio_filepath: str | None = None,
              context_text: str | None = None) -> str:
    """Id of a text-context pair: a hash of the text and its context.

    An audio context is identified by its file path, a text context by its text.
    """
    if context_audio_filepath:
        key = ["audio", text, context_audio_filepath]
    else:
        key = ["text", text, context_text or ""]
    digest = hashlib.sha256(json.dumps(key, ensure_ascii=False).encode("utf-8")).hexdigest()
    return "p" + digest[:16]


def generation_id(run: str, manifest_line: int) -> str:
    """A generation is its run plus its line in the manifest it was generated from."""
    return f"{run}:{manifest_line}"


def group_id(run: str, group_index: int) -> str:
    """A group is the N consecutive samples generated for one prompt in one run."""
    return f"{run}:g{group_index}"


def pair_id(chosen_id: str, rejected_id: str) -> str:
    return f"{chosen_id}>{rejected_id}"
