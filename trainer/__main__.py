"""``torchrun --nproc-per-node N -m ttspo.trainer dpo SET --out DIR ...``: the same run as
``ttspo train dpo``, one process per rank (options as the CLI's; the CLI is not imported:
nothing imports it). Errors are one line on stderr and exit code 1, from every rank."""

from __future__ import annotations

import argparse
import sys

from ttspo.builder.core.errors import TtspoError
from ttspo.builder.core.store import Store, default_store_path, make_lineage


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ttspo.trainer")
    sub = p.add_subparsers(dest="trainer", required=True)
    dpo = sub.add_parser("dpo", help="offline DPO/IPO/RPO on a preference set")
    dpo.add_argument("set_ref", metavar="SET[@VERSION|@TAG]")
    dpo.add_argument("--store", default=str(default_store_path()))
    dpo.add_argument("--policy", dest="spec", default="tiny")
    dpo.add_argument("--init")
    dpo.add_argument("--config", dest="config_file")
    dpo.add_argument("-o", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    dpo.add_argument("--out", required=True)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from ttspo.trainer.config import load_config
    from ttspo.trainer.loop import train_dpo

    try:
        cfg = load_config(args.config_file, args.overrides)
        lineage = make_lineage("train dpo", {k: v for k, v in vars(args).items()}, torchrun=True)
        result = train_dpo(Store(args.store), args.set_ref, cfg=cfg, out=args.out, spec=args.spec,
                           init=args.init, lineage=lineage, echo=print)
    except TtspoError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    if result.last:
        print(f"last step {result.last['step']}: loss/total {result.last['loss/total']:.4g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
