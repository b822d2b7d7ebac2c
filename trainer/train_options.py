"""What `ttspo train dpo|grpo` and ``torchrun ... -m ttspo.trainer dpo|grpo`` take and print.

The two entries must accept the same run: the options are defined once here, as
data, and each entry builds its parser from them (click in trainer/cli/train.py,
argparse in trainer/__main__.py, which cannot import the CLI). The same goes for
what ``--prompts``/``--where`` set in the config and for the lines a finished run
prints.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any, Sequence


@dataclass(frozen=True)
class Option:
    """One command-line option, for click and argparse alike."""

    flag: str  # "--policy", "-o"
    dest: str  # the keyword it fills
    help: str
    default: Any = None
    metavar: str | None = None
    required: bool = False
    multiple: bool = False  # may repeat; the values in order
    path: str | None = None  # "file" | "dir": what it names


POLICY = Option("--policy", "spec", "Policy from the registry (tiny; nemo:PATH when installed).",
                default="tiny")
INIT = Option("--init", "init", "Start from this checkpoint (also the reference). Default: a "
              "fresh policy of policy.model's size, seeded by train.seed.", path="file")
CONFIG = Option("--config", "config_file", "YAML config (sections policy, data, loss, optim, train).",
                path="file")
OVERRIDES = Option("-o", "overrides", "Override a config key, e.g. -o optim.lr=1e-4 "
                   "-o loss.sft_weight=0.1.", metavar="KEY=VALUE", multiple=True)
OUT = Option("--out", "out", "Run folder: checkpoints, metrics, config. An existing run there "
             "resumes.", required=True, path="dir")
PROMPTS = Option("--prompts", "prompts_ref", "Prompts table version or tag (sets grpo.prompts).",
                 metavar="prompts[@VERSION|@TAG]")
WHERE = Option("--where", "where", "DuckDB condition on prompts: train on matching prompts "
               "(sets grpo.where).", metavar="SQL")

SET_METAVAR = "SET[@VERSION|@TAG]"  # dpo's one argument
DPO_OPTIONS = (POLICY, INIT, CONFIG, OVERRIDES, OUT)
PRECOMPUTE_OPTIONS = (  # `ttspo train precompute-ref`, plus its --batch-pairs
    POLICY,
    Option("--ref", "ref_path", "The reference checkpoint (the --init of the training runs "
           "that use it).", required=True, path="file"),
    replace(CONFIG, help="The YAML config the training runs take: its policy.model loads the "
            "policy."),
    replace(OVERRIDES, help="Override a config key, as for train dpo (e.g. -o "
            "policy.model.dropout=0.1)."))
GRPO_OPTIONS = (
    POLICY,
    replace(INIT, help="Start from this checkpoint (also the KL reference). Default: a fresh policy."),
    PROMPTS, WHERE,
    replace(CONFIG, help="YAML config (sections policy, optim, train, grpo ...)."),
    replace(OVERRIDES, help="Override a config key, e.g. -o grpo.n_generations_per_item=4."),
    OUT)

DPO_SHOWN = ("loss/total", "rewards/accuracies", "rewards/margins", "rewards/chosen",
             "rewards/rejected", "grad_norm")
GRPO_SHOWN = ("reward/mean", "advantage/std", "groups/valid_fraction", "kl", "entropy",
              "rollouts_per_second")


def grpo_overrides(overrides: Sequence[str], prompts_ref: str | None,
                   where: str | None) -> list[str]:
    """OVERRIDES, then the config keys ``--prompts`` and ``--where`` set (they win).
    The condition goes in as a JSON string: an override's value is parsed as YAML, and
    JSON is YAML that stays a string whatever the SQL holds (quotes, colons, "1")."""
    return [*overrides, *([f"grpo.prompts={prompts_ref}"] if prompts_ref else []),
            *([f"grpo.where={json.dumps(where)}"] if where else [])]


def result_lines(result: Any, shown: Sequence[str]) -> list[str]:
    """What a finished DPO or GRPO run prints: first and last logged step (the SHOWN
    metrics), the last validation, GRPO's rollout commits, the checkpoints written."""
    lines = [f"{name} step {metrics['step']}: " + ", ".join(
                 f"{k} {metrics[k]:.4g}" for k in shown if k in metrics)
             for name, metrics in (("first", result.first), ("last", result.last)) if metrics]
    if result.val:
        lines.append(f"val at step {result.val['step']}: " + ", ".join(
            f"{k} {v:.4g}" for k, v in result.val.items() if k != "step"))
    if hasattr(result, "rollout_commits"):  # a GRPO run
        lines.append(f"rollouts: {result.rollout_commits} commit(s)" + (
            f", {result.skipped_rows} row(s) already stored" if result.skipped_rows else ""))
    lines += [f"checkpoint {row['kind']} step {row['step']}: {row['path']} "
              f"(sha256 {row['sha256'][:12]})" for row in result.checkpoints]
    return lines
