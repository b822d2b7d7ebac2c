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
from pathlib import Path
from typing import Any

from ttspo.builder.core.errors import TrainingError
from ttspo.trainer.run.config import Config, save_config

RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"
LINEAGE_FILE = "lineage.jsonl"  # one line per start or resume: step and lineage
# Config keys a resumed run may change (they do not change what the run computes).
RESUMABLE = ("train.max_steps", "train.progress", "train.tensorboard", "train.log_every",
             "train.val_every", "train.checkpoint_every", "train.best_metric", "train.best_mode")


def barrier(c: Any) -> None:
    if c.ddp:
        import torch.distributed as dist

        dist.barrier()


# ------------------------------------------------------------------ metrics
class MetricsLog:
    """JSON lines (one per logged step) and TensorBoard, written by rank 0 only."""

    def __init__(self, run_dir: Path, c: Compute, *, start_step: int, tensorboard: bool):
        self.path = Path(run_dir) / METRICS_FILE
        self.writer = None
        self.enabled = c.master
        if not c.master:
            return
        # A killed run may have logged past its last checkpoint: drop those lines,
        # the resumed run logs those steps again (from step 0, its baseline validation
        # too, when it restarts from scratch; a resumed run keeps its step-0 baseline).
        kept = [line for line in self._lines()
                if start_step and json.loads(line)["step"] <= start_step]
        self.path.write_text("".join(kept))
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(Path(run_dir) / "tb"),
                                        purge_step=start_step + 1 if start_step else 0)

    def _lines(self) -> list[str]:
        return self.path.read_text().splitlines(keepends=True) if self.path.exists() else []

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as fh:
            fh.write(json.dumps({"step": step, **metrics}, sort_keys=True) + "\n")
        if self.writer is not None:
            for key, value in metrics.items():
                self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def log_lineage(run_dir: Path, lineage: dict[str, Any], start_step: int, c: Any) -> None:
    """Append this session's lineage (inputs and their versions, the reference used)
    to the run folder's lineage.jsonl: a resumed run may read other versions (a
    reference cache made since), so each start keeps its own line. Rank 0 writes."""
    if c.master:
        with (Path(run_dir) / LINEAGE_FILE).open("a") as fh:
            fh.write(json.dumps({"start_step": start_step, "lineage": lineage}, sort_keys=True,
                                default=str) + "\n")


def read_lineage(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / LINEAGE_FILE
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# ----------------------------------------------------------------- run folder
def open_run_dir(out: Path, identity: dict[str, Any], cfg: Config, c: Compute) -> bool:
    """Make OUT a run folder for IDENTITY, or check that it already is; True if resuming."""
    path = Path(out) / RUN_FILE
    if path.exists():
        saved = json.loads(path.read_text())
        for key in RESUMABLE:  # a folder made when a key was not yet resumable
            section, name = key.split(".")
            if name not in identity.get("config", {}).get(section, {}):
                saved.get("config", {}).get(section, {}).pop(name, None)
        if saved != identity:
            diff = [k for k in sorted(set(saved) | set(identity)) if saved.get(k) != identity.get(k)]
            what = ", ".join(f"{k} {_short(saved.get(k))} (now {_short(identity.get(k))})"
                             for k in diff[:3])
            raise TrainingError(f"{out} holds another run ({what}); choose another --out")
        return True
    if Path(out).exists() and any(Path(out).iterdir()):
        raise TrainingError(f"{out} is not empty and holds no ttspo run; choose another --out")
    barrier(c)  # every rank has looked before rank 0 writes
    if c.master:
        Path(out).mkdir(parents=True, exist_ok=True)
        save_config(cfg, Path(out) / "config.yaml")
        path.write_text(json.dumps(identity, indent=2, sort_keys=True))
    barrier(c)
    return False


def _short(value: Any) -> str:
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


def run_identity(cfg: Config, *, trainer: str, pairs: Pairs, spec: str,
                 init_sha256: str | None) -> dict[str, Any]:
    conf = identity_config(cfg)
    return {"trainer": trainer, "set": pairs.ref, "generations_version": pairs.generations_version,
            "policy": spec, "init_sha256": init_sha256, "config": conf}
