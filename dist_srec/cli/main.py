"""dist-srec: train and serve LLM-SRec (a frozen LLM distilled from a SASRec teacher) on one machine or a Ray cluster.

dist-srec prepare --dataset ml-1m --out data/ml-1m
dist-srec demo --out runs/demo
dist-srec launch train --data D --teacher T --out runs/srec --workers 2 --zero-stage 3
dist-srec recommend-batch --ckpt runs/srec/best --users all --k 100 --out runs/recs [--ray-workers 2]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from dist_srec import __version__
from dist_srec.cli.batch import add_serve_commands
from dist_srec.cli.launch import add_launch_commands
from dist_srec.cli.llmsrec import add_srec_commands
from dist_srec.cli.teacher import add_teacher_commands
from dist_srec.config import TIMESTAMP_UNITS, PrepareConfig
from dist_srec.data.prepare import prepare, summary
from dist_srec.demo import run_demo
from dist_srec.errors import DistSrecError
from dist_srec.inference.run_report import report


def _add_data_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare", help="raw interactions -> parquet catalog -> webdataset shards")
    p.add_argument("--dataset", required=True, choices=["ml-100k", "ml-1m", "amazon2023", "custom"])
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument(
        "--interactions",
        help="amazon2023: review JSONL(.gz); custom: parquet/CSV (user_id,item_id,timestamp)",
    )
    p.add_argument(
        "--items", help="amazon2023: meta JSONL(.gz); custom: parquet/CSV (item_id,title[,description])"
    )
    p.add_argument("--kcore", type=int, default=5, help="iterated k-core (0/1 = off; default 5)")
    p.add_argument(
        "--user-fraction", type=float, default=1.0, help="seeded share of users kept (default 1.0)"
    )
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--samples-per-shard", type=int, default=2000)
    p.add_argument(
        "--max-history", type=int, default=0, help="keep at most this many history items (0 = all)"
    )
    p.add_argument("--strict", action="store_true",
                   help="error on missing titles / duplicate interactions / duplicate item ids")  # fmt: skip
    p.add_argument("--timestamp-unit", choices=list(TIMESTAMP_UNITS), default="s",
                   help="custom: unit of the timestamp column (default s; amazon2023 is always ms)")  # fmt: skip
    p.add_argument("--force", action="store_true", help="replace an output prepared with another config")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_prepare)


def _cmd_prepare(args: argparse.Namespace) -> int:

    cfg = PrepareConfig(
        dataset=args.dataset,
        out=args.out,
        interactions=args.interactions,
        items=args.items,
        kcore=args.kcore,
        user_fraction=args.user_fraction,
        seed=args.seed,
        samples_per_shard=args.samples_per_shard,
        max_history=args.max_history,
        strict=args.strict,
        timestamp_unit=args.timestamp_unit,
        progress=not args.no_progress,
    )
    manifest = prepare(cfg, force=args.force)
    print(summary(manifest))
    print(f"wrote {args.out}/{{items,users,interactions}}.parquet, shards/, manifest.json")
    return 0


def _add_demo_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the main job, end to end on the embedded default (ML-100K)")
    p.add_argument("--out", default="runs/demo")
    p.add_argument(
        "--llm", default="smollm2", help="'smollm2' (default), 'tiny' (random, smoke run) or a local HF dir"
    )
    p.add_argument("--fast", action="store_true", help="tiny budgets everywhere (a smoke run, not a result)")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:

    return run_demo(args.out, llm=args.llm, fast=args.fast)


def _add_teacher_commands(sub: argparse._SubParsersAction) -> None:
    """`pretrain-teacher` and `evaluate-teacher` (flags in `dist_srec.cli.teacher`)."""

    add_teacher_commands(sub)


def _add_srec_commands(sub: argparse._SubParsersAction) -> None:
    """`train`, `evaluate` and `recommend` (flags in `dist_srec.cli.llmsrec`)."""

    add_srec_commands(sub)


def _add_launch_commands(sub: argparse._SubParsersAction) -> None:
    """`launch train` and `launch pretrain-teacher` on Ray Train (flags in `dist_srec.cli.launch`)."""

    add_launch_commands(sub)


def _add_serve_commands(sub: argparse._SubParsersAction) -> None:
    """`encode-catalog` and `recommend-batch` (flags in `dist_srec.cli.batch`)."""

    add_serve_commands(sub)


def _add_report_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report", help="markdown table and PNG curves of one or more runs",
        epilog="example: dist-srec report runs/demo/teacher runs/demo/llm-srec --out runs/demo/report",
    )  # fmt: skip
    p.add_argument("runs", nargs="+", help="run directories (pretrain-teacher / train OUT)")
    p.add_argument(
        "--out", help="where report.md, loss.png and valid.png go (default: RUN/report of the first)"
    )
    p.set_defaults(func=_cmd_report)


def _cmd_report(args: argparse.Namespace) -> int:
    out = args.out or Path(args.runs[0]) / "report"
    text, files = report(args.runs, out)
    print(text)
    print("wrote " + ", ".join(str(f) for f in files))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dist-srec", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"dist-srec {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_data_commands(sub)
    _add_demo_command(sub)
    _add_teacher_commands(sub)
    _add_srec_commands(sub)
    _add_launch_commands(sub)
    _add_serve_commands(sub)
    _add_report_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except DistSrecError as e:
        print(f"dist-srec {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
