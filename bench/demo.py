"""Benchmark: `ttspo demo` end to end, against its one-minute budget.

    .venv/bin/python bench/demo.py

Runs ``ttspo demo`` as a user would (a fresh process, so imports count) into a
fresh store, then again on the same store (the idempotent re-run: nothing new
is written). Baseline, in the same run: a fresh ``python -c "import
ttspo.builder.cli.main"``, the start-up every command pays. Prints wall times, the ratio
of the first run to the 60 s budget (target < 1) and to the start-up, and the
machine's load average, on which the figures depend.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BUDGET = 60.0


def timed(*cmd: str) -> float:
    start = time.monotonic()
    subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return time.monotonic() - start


def main() -> None:
    python = sys.executable
    ttspo = str(Path(python).with_name("ttspo"))
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    startup = timed(python, "-c", "import ttspo.builder.cli.main")
    with tempfile.TemporaryDirectory() as tmp:
        store = str(Path(tmp) / "store")
        first = timed(ttspo, "demo", "--store", store)
        again = timed(ttspo, "demo", "--store", store)
    print(f"start-up (import ttspo.builder.cli.main): {startup:.2f} s")
    print(f"ttspo demo, fresh store:        {first:.2f} s  ({first / BUDGET:.2f} of the "
          f"{BUDGET:.0f} s budget; {first / startup:.1f}x start-up)")
    print(f"ttspo demo, same store again:   {again:.2f} s")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
