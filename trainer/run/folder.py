"""A run folder: what run it holds (resume or refuse), its metrics log and lineage.

``run.json`` records the run's identity (trainer, set version, generations version,
policy, init sha256, config minus the keys in :data:`RESUMABLE`): the same command
again resumes, another run in the same folder is refused. ``metrics.jsonl`` holds one
JSON object per logged step (and TensorBoard events under ``tb/``), written by rank 0.
``lineage.jsonl`` holds one line per start or resume: the step it started at and its
lineage (input tables and versions, the reference used).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ttspo.builder.core.dist import Compute, barrier
from ttspo.builder.core.errors import TrainingError, first_line
from ttspo.builder.core.files import write_text_atomic
from ttspo.trainer.run import faults
from ttspo.trainer.run.config import Config, save_config
from ttspo.trainer.run.old_keys import map_old_sections, uses_old_keys
from ttspo.trainer.run.runlock import is_lock_file

RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"
LINEAGE_FILE = "lineage.jsonl"  # one line per start or resume: step and lineage
# Config keys a resumed run may change (they do not change what the run computes).
RESUMABLE = ("train.max_steps", "train.progress", "train.tensorboard", "train.log_every",
             "train.val_every", "train.checkpoint_every", "train.best_metric", "train.best_mode",
             # the loader and its read-ahead: same batches, same losses either way
             "data.loader", "data.workers", "data.prefetch_batches",
             "data.read_batches",
             # what the run records of each pair (pair_dynamics), not what it computes
             "train.pair_dynamics")
# Config keys added after run folders were made, each with the value that computes what
# those folders' runs computed: a folder whose run.json lacks the key holds that value.
ADDED = {"loss.length_normalize": False, "data.eos_target": "always"}


# ------------------------------------------------------------------ metrics
class MetricsLog:
    """JSON lines (one per logged step) and TensorBoard, written by rank 0 only."""

    def __init__(self, run_dir: Path, c: Compute, *, start_step: int, tensorboard: bool):
        self.path = Path(run_dir) / METRICS_FILE
        self.writer = None
        self.enabled = c.master
        if not c.master:
            return
        # A killed run may have logged past its last checkpoint (and cut its last line
        # short): drop those lines, the resumed run logs those steps again (from step
        # 0, its baseline validation too, when it restarts from scratch; a resumed run
        # keeps its step-0 baseline). Written aside and renamed: a kill here keeps the
        # old file whole.
        kept = [line for line, record in jsonl_records(self.path)
                if start_step and _step_of(self.path, record) <= start_step]
        write_text_atomic(self.path, "".join(kept))
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # TensorBoard drops the events at and past purge_step of earlier sessions:
            # the steps this session logs again are never shown twice.
            after_earlier_events(Path(run_dir) / "tb")
            self.writer = SummaryWriter(str(Path(run_dir) / "tb"),
                                        purge_step=start_step + 1 if start_step else 0)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as fh:
            faults.write_line(fh, json.dumps({"step": step, **metrics}, sort_keys=True) + "\n",
                              "mid_metrics_line", step=step)
        if self.writer is not None:
            for key, value in metrics.items():
                self.writer.add_scalar(key, value, step)
            # On disk before the step's checkpoint: a kill after it must not lose the
            # events of steps a resume will not log again.
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def after_earlier_events(tb: Path, *, at_most: float = 5.0) -> None:
    """Wait (up to AT_MOST seconds) until the clock is past the second in the newest
    event file's name. TensorBoard reads a folder's files in name order, and a name
    starts with its creation second: a session resumed within that second (or on a host
    whose clock is behind) would be read first, and the purge the killed session's file
    begins with would hide the resumed steps."""
    stamps = [int(part) for p in tb.glob("events.out.tfevents.*")
              if (part := p.name.split(".")[3]).isdigit()]
    wait = max(stamps, default=0) + 1 - time.time()
    if 0 < wait <= at_most:
        time.sleep(wait)


def log_lineage(run_dir: Path, lineage: dict[str, Any], start_step: int, c: Any) -> None:
    """Append this session's lineage (inputs and their versions, the reference used)
    to the run folder's lineage.jsonl: a resumed run may read other versions (a
    reference cache made since), so each start keeps its own line. Rank 0 writes."""
    if c.master:
        path = Path(run_dir) / LINEAGE_FILE
        lines = jsonl_records(path)
        if path.exists() and "".join(line for line, _ in lines) != path.read_text(errors="replace"):
            write_text_atomic(path, "".join(line for line, _ in lines))  # a kill cut its last line
        with path.open("a") as fh:
            faults.write_line(fh, json.dumps({"start_step": start_step, "lineage": lineage},
                                             sort_keys=True, default=str) + "\n",
                              "mid_lineage_line", step=start_step)


def read_lineage(run_dir: Path) -> list[dict[str, Any]]:
    return [record for _, record in jsonl_records(Path(run_dir) / LINEAGE_FILE)]


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The logged steps (a last line cut short, by a kill or a write in progress, left out)."""
    return [record for _, record in jsonl_records(Path(run_dir) / METRICS_FILE)]


def jsonl_records(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(line, record) of each complete line of the JSON-lines file PATH ([] if none).

    Only the last line may be cut short (a kill or a full disk mid-write: it is left
    out); any other line that is not a JSON object is damage, refused by file and
    line number rather than guessed around. A last line that parses and only lacks
    its newline is kept (with it)."""
    if not path.exists():
        return []
    raw = path.read_bytes().split(b"\n")
    final = len(raw) if raw[-1].strip() else len(raw) - 1  # the last line's number
    out = []
    for number, chunk in enumerate(raw, 1):
        last = number == final
        if not chunk.strip():
            continue
        try:
            record = json.loads(chunk.decode("utf-8"))
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            if last:
                continue  # cut short by a kill: its step is logged again
            raise TrainingError(f"{path} line {number}: not a JSON object "
                                f"({first_line(exc, 80)}); the file is damaged") from None
        out.append((json.dumps(record, sort_keys=True, default=str) + "\n"
                    if number == len(raw) else chunk.decode("utf-8") + "\n", record))
    return out


def _step_of(path: Path, record: dict[str, Any]) -> int:
    step = record.get("step")
    if not isinstance(step, int) or isinstance(step, bool):
        raise TrainingError(f"{path}: a line with step {step!r}, not a whole number; the "
                            "file is damaged")
    return step



# ----------------------------------------------------------------- run folder
def read_run_file(path: Path) -> dict[str, Any]:
    """A run folder's run.json, or one line naming it (run folders are untrusted input)."""
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise TrainingError(f"{path}: not a readable run.json ({first_line(exc, 80)}); the "
                            "run folder is damaged") from None
    if not isinstance(saved, dict):
        raise TrainingError(f"{path}: not a JSON object; the run folder is damaged")
    return saved


def open_run_dir(out: Path, identity: dict[str, Any], cfg: Config, c: Compute) -> bool:
    """Make OUT a run folder for IDENTITY, or check that it already is; True if resuming."""
    path = Path(out) / RUN_FILE
    if path.exists():
        saved = read_run_file(path)
        # a folder made before loss.terms and grpo.rewards: its keys as they are now
        saved["config"] = map_old_sections(saved.get("config", {}))
        for key in RESUMABLE:  # a folder made when a key was not yet resumable
            section, name = key.split(".")
            if name not in identity.get("config", {}).get(section, {}):
                saved.get("config", {}).get(section, {}).pop(name, None)
        for key, value in ADDED.items():  # a folder made before the key existed
            section, name = key.split(".")
            if section in saved.get("config", {}):
                saved["config"][section].setdefault(name, value)
        if saved != identity:
            what = _differences(saved, identity)
            raise TrainingError(f"{out} holds another run ({what}); choose another --out")
        return True
    if Path(out).exists() and any(not is_lock_file(p.name) for p in Path(out).iterdir()):
        raise TrainingError(f"{out} is not empty and holds no ttspo run; choose another --out")
    barrier()  # every rank has looked before rank 0 writes
    if c.master:
        Path(out).mkdir(parents=True, exist_ok=True)
        save_config(cfg, Path(out) / "config.yaml")
        path.write_text(json.dumps(identity, indent=2, sort_keys=True))
    barrier()
    return False


def made_with_old_keys(out: str | Path) -> bool:
    """Whether OUT holds a run made with a key of old_keys.OLD_KEYS: a command resuming
    it may still spell them the old way."""
    try:
        saved = json.loads((Path(out) / RUN_FILE).read_text())
    except (OSError, ValueError):
        return False  # no run there (or a damaged one: open_run_dir says so)
    return isinstance(saved, dict) and uses_old_keys(saved.get("config", {}))


SHOWN_DIFFERENCES = 5


def _differences(saved: dict[str, Any], now: dict[str, Any]) -> str:
    """``config.optim.lr 0.001 (now 0.0001), ...``: each differing dotted key with its
    recorded and its new value (a key only one side has: "absent"), the first few."""
    diff = _differing_keys(saved, now)
    what = ", ".join(f"{k} {_short(a)} (now {_short(b)})" for k, a, b in diff[:SHOWN_DIFFERENCES])
    more = len(diff) - SHOWN_DIFFERENCES
    return what + (f" and {more} more key(s)" if more > 0 else "")


_ABSENT = object()


def _differing_keys(saved: Any, now: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, recorded value, new value) wherever SAVED and NOW differ; dicts
    (the config's sections) are compared key by key, anything else as a whole."""
    if isinstance(saved, dict) and isinstance(now, dict):
        return [d for k in sorted(set(saved) | set(now), key=str)
                for d in _differing_keys(saved.get(k, _ABSENT), now.get(k, _ABSENT), f"{prefix}{k}.")]
    return [] if saved == now else [(prefix.rstrip("."), saved, now)]


def _short(value: Any) -> str:
    if value is _ABSENT:
        return "absent"
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def identity_config(cfg: Config) -> dict[str, Any]:
    """The config minus what a resumed run may change. max_steps stays in it under a
    cosine schedule: the schedule's length is part of what the run computes."""
    conf = cfg.to_dict()
    for key in RESUMABLE:
        if key == "train.max_steps" and cfg.optim.schedule != "constant":
            continue
        section, name = key.split(".")
        conf[section].pop(name)
    return conf


def run_identity(cfg: Config, *, trainer: str, pairs: Any, spec: str,  # dpo's Pairs
                 init_sha256: str | None) -> dict[str, Any]:
    conf = identity_config(cfg)
    return {"trainer": trainer, "set": pairs.ref, "generations_version": pairs.generations_version,
            "policy": spec, "init_sha256": init_sha256, "config": conf}
