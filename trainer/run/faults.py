"""Fault injection for the tests: SIGKILL this process at a named moment of a save.

``TTSPO_FAULT=<moment>[@<when>]`` (read here only) kills the process that reaches
MOMENT, the way a power cut or the OOM killer would (no cleanup, no flush beyond what
was already written). WHEN narrows it: a step number (``after_row@4``: the first save
or metrics line of step 4) or a checkpoint folder name (``after_rename@best_000004``).
Unset, every point is one dictionary look-up. An unknown moment is refused when a
run starts, so a misspelt fault never lets a test pass without a kill.

The moments, in the order a save passes them (trainer/run/checkpoints.py, runs.py):

    before_tmp        rollouts flushed (GRPO), nothing of the checkpoint written yet
    after_policy      tmp folder holds policy.pt
    after_state       ... and state.pt
    after_meta        ... and meta.json: complete, not yet in place
    after_rows_removed  a folder of the same name (a step redone by a resume) is there:
                      its rows deleted, the folder still in place
    after_set_aside   ... that folder moved aside
    after_rename      the folder in place under its final name, no row yet
    after_link        `best` points at it (best checkpoints only)
    after_row         its `checkpoints` row committed
    mid_metrics_line  half of a metrics.jsonl line written (a full disk, a power cut)
    mid_lineage_line  half of a lineage.jsonl line written
    after_dynamics    DPO: pair_dynamics rows through the step committed, before any
                      save of that step (trainer/dpo/dynamics.py)
"""

from __future__ import annotations

import os
import signal

from ttspo.builder.core.errors import ConfigError

ENV = "TTSPO_FAULT"
MOMENTS = ("before_tmp", "after_policy", "after_state", "after_meta", "after_rows_removed",
           "after_set_aside", "after_rename", "after_link", "after_row", "mid_metrics_line",
           "mid_lineage_line", "after_dynamics")


def _armed() -> tuple[str, str | None] | None:
    value = os.environ.get(ENV)
    if not value:
        return None
    moment, _, when = value.partition("@")
    return moment, when or None


def check() -> None:
    """Refuse an unknown moment (called when a run starts)."""
    armed = _armed()
    if armed and armed[0] not in MOMENTS:
        raise ConfigError(f"{ENV}={os.environ[ENV]}: '{armed[0]}' is not a fault moment "
                          f"(one of {', '.join(MOMENTS)})")


def armed(moment: str, *, step: int | None = None, folder: str | None = None) -> bool:
    """True when TTSPO_FAULT names MOMENT (and this STEP or FOLDER, when it names one)."""
    fault = _armed()
    if fault is None or fault[0] != moment:
        return False
    when = fault[1]
    if step is None and folder:  # step_000004 is step 4
        step = int(folder.rsplit("_", 1)[1]) if folder.rsplit("_", 1)[-1].isdigit() else None
    return when is None or when == str(step) or when == folder


def kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def point(moment: str, *, step: int | None = None, folder: str | None = None) -> None:
    """SIGKILL this process if TTSPO_FAULT names this moment."""
    if armed(moment, step=step, folder=folder):
        kill()


def write_line(fh, text: str, moment: str, *, step: int | None = None) -> None:
    """Write TEXT (a JSON line) to FH; armed, write half of it, flush and die."""
    if armed(moment, step=step):
        fh.write(text[: len(text) // 2])
        fh.flush()
        kill()
    fh.write(text)
