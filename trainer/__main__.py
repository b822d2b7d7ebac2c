"""``torchrun --nproc-per-node N -m ttspo.trainer dpo SET --out DIR ...`` (or ``grpo --out
DIR ...``): the same run as ``ttspo train dpo`` (``train grpo``), one process per rank.
The options are the CLI's (one definition: trainer/train_options.py; the CLI is not
imported: nothing imports it), plus ``--store``. Rank 0 prints what the CLI prints;
errors are one line on stderr and exit code 1, from every rank."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from ttspo.builder.core.errors import TtspoError
from ttspo.builder.core.store import Store, default_store_path, make_lineage
from ttspo.trainer.train_options import (DPO_OPTIONS, DPO_SHOWN, GRPO_OPTIONS, GRPO_SHOWN,
                                         SET_METAVAR, Option, grpo_overrides, result_lines)


def add_options(parser: argparse.ArgumentParser, specs: tuple[Option, ...]) -> None:
    parser.add_argument("--store", default=str(default_store_path()))
    for o in specs:
        parser.add_argument(o.flag, dest=o.dest, metavar=o.metavar, required=o.required,
                            help=o.help, action="append" if o.multiple else "store",
                            default=[] if o.multiple else o.default)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ttspo.trainer")
    sub = p.add_subparsers(dest="trainer", required=True)
    dpo = sub.add_parser("dpo", help="offline DPO/IPO/RPO on a preference set")
    dpo.add_argument("set_ref", metavar=SET_METAVAR)
    add_options(dpo, DPO_OPTIONS)
    add_options(sub.add_parser("grpo", help="online GRPO on the store's prompts"), GRPO_OPTIONS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from ttspo.trainer.run.config import load_config

    try:
        lineage = make_lineage(f"train {args.trainer}", dict(vars(args)), torchrun=True)
        if args.trainer == "grpo":
            from ttspo.trainer.grpo.loop import train_grpo

            cfg = load_config(args.config_file, grpo_overrides(args.overrides, args.prompts_ref,
                                                                args.where))
            result: Any = train_grpo(Store(args.store), cfg=cfg, out=args.out, spec=args.spec,
                                     init=args.init, lineage=lineage, echo=print)
        else:
            from ttspo.trainer.dpo.loop import train_dpo

            cfg = load_config(args.config_file, args.overrides)
            result = train_dpo(Store(args.store), args.set_ref, cfg=cfg, out=args.out,
                               spec=args.spec, init=args.init, lineage=lineage, echo=print)
    except TtspoError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    if os.environ.get("RANK", "0") == "0":  # every rank holds a result; one prints it
        for line in result_lines(result, GRPO_SHOWN if args.trainer == "grpo" else DPO_SHOWN):
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
