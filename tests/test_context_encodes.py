"""Context audio is encoded once per file CONTENT, not once per prompt (real wav files)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import soundfile as sf

from ttspo.builder.core.errors import InputError
from ttspo.builder.core.schemas import GEN, PROMPT
from ttspo.trainer.dpo.contexts import context_codes


def _gens(paths: list) -> dict:
    return {f"g{i}": {GEN.prompt_id: f"p{i}", PROMPT.context_audio_codes_path: None,
                      GEN.context_audio_filepath: str(p), GEN.context_text: None}
            for i, p in enumerate(paths)}


def test_200_prompts_over_5_context_files_cost_5_encodes(tmp_path):
    files = []
    for k in range(5):
        files.append(tmp_path / f"spk{k}.wav")
        sf.write(files[-1], np.full(800, 0.1 * (k + 1), np.float32), 16000)
    shutil.copy(files[0], tmp_path / "copy_of_spk0.wav")  # another path, same content
    calls = []

    def encode(audio, sr):
        calls.append(float(audio[0]))
        return np.full((2, 3), round(float(audio[0]) * 10), np.int64)

    paths = [files[i % 5] for i in range(200)] + [tmp_path / "copy_of_spk0.wav"]
    out = context_codes(_gens(paths), encode)
    assert len(calls) == 5
    assert [int(out[f"p{i}"][0, 0]) for i in range(6)] == [1, 2, 3, 4, 5, 1]
    assert out["p200"] is out["p0"]  # the copy's content was encoded already: one array


def test_an_unreadable_context_file_is_one_line_naming_the_generation(tmp_path):
    with pytest.raises(InputError, match=r"generation g0: context .*missing.wav"):
        context_codes(_gens([tmp_path / "missing.wav"]), lambda a, sr: np.zeros((2, 3)))
