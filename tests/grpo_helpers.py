"""Shared by the GRPO tests: a small prompts table over the demo corpus's real audio."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa

from ttspo.builder.core.schemas import PROMPT, PROMPTS_SCHEMA
from ttspo.builder.core.store import Store, make_lineage

CORPUS = Path(__file__).resolve().parents[1] / "trainer" / "demo" / "corpus"
TINY = {"d_model": 32, "n_heads": 2, "encoder_layers": 1, "decoder_layers": 1, "d_ffn": 64}


def make_prompts(store: Store, n: int = 4) -> int:
    """N prompts (short texts, audio contexts with codes files) in `prompts`; its version."""
    texts = [t for name in ("challenging_texts.txt", "regular_texts_for_audiocontext.txt")
             for t in (CORPUS / name).read_text().splitlines() if t][:n]
    contexts = [json.loads(line) for line in
                (CORPUS / "audio_contexts.jsonl").read_text().splitlines() if line]
    rows = []
    for i, text in enumerate(texts):
        c = contexts[i % len(contexts)]
        rows.append({PROMPT.prompt_id: f"p{i}", PROMPT.text: text, PROMPT.record_type: "challenging",
                     PROMPT.context_type: "audio",
                     PROMPT.context_audio_filepath: str(CORPUS / c["context_audio_filepath"]),
                     PROMPT.context_audio_duration: c["context_audio_duration"],
                     PROMPT.context_audio_codes_path: str(CORPUS / c["context_audio_codes_path"]),
                     PROMPT.position: i})
    return store.write("prompts", pa.Table.from_pylist(rows, PROMPTS_SCHEMA), PROMPTS_SCHEMA,
                       make_lineage("prompts", {}))
