"""A small store for the `ttspo serve` tests: real wav files, one row whose audio is a
Lance blob, one row whose text holds a <script> and an ESC, a set, and a few
pair_dynamics rows. (No tests here.)"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import soundfile as sf

from ttspo.builder.core.schemas import DYN, GEN, GENERATIONS_SCHEMA, PAIR_DYNAMICS_SCHEMA
from ttspo.builder.core.store import Store, make_lineage
from ttspo.builder.sets.build import build_set
from test_build_helpers import BASIC, gen_rows

HOSTILE = "<script>window.__pwned = 1</script>\x1b[31m red <b>bold</b>"
BLOB_ID = "r:0"  # its audio is a blob, its audio_filepath null
HOSTILE_ID = "r:1"


def wav_bytes(i: int, seconds: float = 0.5, rate: int = 22050) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buf = io.BytesIO()
    sf.write(buf, (0.2 * np.sin(2 * np.pi * (220 + 30 * i) * t)).astype(np.float32), rate,
             format="WAV", subtype="PCM_16")
    return buf.getvalue()


def make_serve_store(root: Path, groups=BASIC) -> Store:
    """generations (BASIC's groups) with wavs under ROOT/wav, and the set `prefs`."""
    wavs = root / "wav"
    wavs.mkdir(parents=True, exist_ok=True)
    rows = gen_rows(groups, files=wavs)
    for i, row in enumerate(rows):
        Path(row[GEN.audio_filepath]).write_bytes(wav_bytes(i))
    rows[0][GEN.audio], rows[0][GEN.audio_filepath] = wav_bytes(99), None
    rows[1][GEN.text] = rows[1][GEN.pred_transcript] = HOSTILE
    store = Store(root / "store")
    store.write("generations", pa.Table.from_pylist(rows, schema=GENERATIONS_SCHEMA),
                GENERATIONS_SCHEMA, make_lineage("test-ingest"))
    build_set(store, "pareto", "prefs")
    return store


def add_dynamics(store: Store, pair_id: str, margins=(0.1, -0.2, 0.3)) -> None:
    rows = [{DYN.run: "dpo1", DYN.step: 10 * (i + 1), DYN.epoch: i, DYN.split: "train",
             DYN.set_name: "prefs", DYN.set_version: 1, DYN.pair_id: pair_id, DYN.margin: m,
             DYN.correct: 1.0 if m > 0 else 0.0, DYN.loss: 0.5} for i, m in enumerate(margins)]
    store.write("pair_dynamics", pa.Table.from_pylist(rows, schema=PAIR_DYNAMICS_SCHEMA),
                PAIR_DYNAMICS_SCHEMA, make_lineage("test-dynamics"))


class Server:
    """`ttspo serve` as a real process on a free loopback port (port 0, as printed)."""

    def __init__(self, store: Store, *, token: str | None = None):
        args = [sys.executable, "-m", "ttspo.builder.cli", "--store", str(store.root), "serve",
                "--port", "0"] + (["--token", token] if token else [])
        self.proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        line = self.proc.stderr.readline()  # bounded: the process prints it or exits
        m = re.search(r"(http://127\.0\.0\.1:\d+)", line)
        if not m:
            self.stop()
            raise RuntimeError(f"ttspo serve did not start: {line}{self.proc.stderr.read()}")
        self.url = m.group(1)
        self.token = token
        self._wait_ready()

    def _wait_ready(self) -> None:
        import urllib.request

        deadline = time.monotonic() + 30
        while True:
            try:
                headers = {"X-Ttspo-Token": self.token} if self.token else {}
                urllib.request.urlopen(urllib.request.Request(self.url + "/api/tables",
                                                              headers=headers), timeout=5)
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
