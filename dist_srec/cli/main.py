"""dist-srec: train and serve LLM-SRec (a frozen LLM distilled from a SASRec teacher) on one machine or a Ray cluster.

Every subcommand's flags are the fields of the typed configs it builds, with their defaults and docs in
`SUBCOMMAND --help`; `--config FILE` reads a YAML run file first, and every training run writes its
resolved run file to OUT/config.yaml, so `--config OUT/config.yaml` replays it.

    dist-srec demo --out runs/demo
    dist-srec prepare --dataset ml-1m --out data/ml-1m
    dist-srec train --config benchmarks/configs/quality_ml-1m.yaml --out runs/srec
    dist-srec report runs/srec
    dist-srec submit --address http://HEAD:8265 --follow true -- dist-srec launch train --config run.yaml
"""

from __future__ import annotations

import sys
from argparse import ArgumentError
from collections.abc import Sequence
from pathlib import Path

from jsonargparse import ArgumentParser, Namespace

from dist_srec import __version__
from dist_srec.cli import batch, launch, llmsrec, submit, teacher
from dist_srec.cli.command import Command, HelpFormatter, parser
from dist_srec.config import PrepareConfig, from_namespace
from dist_srec.data.prepare import prepare, summary
from dist_srec.demo import run_demo
from dist_srec.errors import DistSrecError
from dist_srec.inference.run_report import report


def _prepare_parser() -> ArgumentParser:
    p = parser("Raw interactions -> parquet catalog -> webdataset shards (+ manifest.json).", [
        "dist-srec prepare --dataset ml-1m --out data/ml-1m",
        "dist-srec prepare --dataset custom --interactions inter.csv --items items.csv --out data/mine "
        "--timestamp_unit ms",
    ], run_file=True)  # fmt: skip
    p.add_class_arguments(PrepareConfig, None, fail_untyped=False)
    p.add_argument("--force", type=bool, default=False, help="replace an output prepared with another config")
    return p


def _prepare(p: ArgumentParser, ns: Namespace) -> int:
    cfg = from_namespace(PrepareConfig, p, ns)
    print(summary(prepare(cfg, force=ns.force)))
    print(f"wrote {cfg.out}/{{items,users,interactions}}.parquet, shards/, manifest.json")
    return 0


def _demo_parser() -> ArgumentParser:
    p = parser("The whole pipeline on the embedded default: ML-100K and SmolLM2-135M, then a report.", [
        "dist-srec demo --out runs/demo",
        "dist-srec demo --out runs/smoke --llm tiny --fast true",
    ])  # fmt: skip
    p.add_argument("--out", type=str, default="runs/demo", help="where every stage writes")
    p.add_argument(
        "--llm", type=str, default="smollm2", help="'smollm2', 'tiny' (random, smoke run) or a local HF dir"
    )
    p.add_argument(
        "--fast", type=bool, default=False, help="tiny budgets everywhere (a smoke run, not a result)"
    )
    return p


def _demo(p: ArgumentParser, a: Namespace) -> int:
    return run_demo(a.out, llm=a.llm, fast=a.fast)


def _report_parser() -> ArgumentParser:
    p = parser("A markdown table of runs (validation and test metrics, config differences) and PNG curves.", [
        "dist-srec report runs/demo/teacher runs/demo/llm-srec",
        "dist-srec report runs/a runs/b --out runs/compare",
    ])  # fmt: skip
    p.add_argument("runs", nargs="+", type=str, help="run directories (pretrain-teacher / train OUT)")
    p.add_argument("--out", type=str | None, default=None,
                   help="where report.md, loss.png and valid.png go (default: RUN/report of the first)")  # fmt: skip
    return p


def _report(p: ArgumentParser, a: Namespace) -> int:
    out = a.out or Path(a.runs[0]) / "report"
    text, files = report(a.runs, out)
    print(text)
    print("wrote " + ", ".join(str(f) for f in files))
    return 0


def _launch_parser() -> ArgumentParser:
    # its subcommands (`launch.SUBCOMMANDS`) are added by `build_parser`, after this joins the tree
    return ArgumentParser(
        description="Run training on Ray Train workers (a local CPU cluster or a GPU cluster).",
        exit_on_error=False,
    )


def _launch(p: ArgumentParser, ns: Namespace) -> int:
    raise AssertionError("`launch` dispatches to its subcommands in `parse`")


COMMANDS: list[Command] = [
    Command("prepare", "raw interactions -> parquet catalog -> webdataset shards", _prepare_parser, _prepare),
    Command("demo", "the whole pipeline on ML-100K + SmolLM2", _demo_parser, _demo),
    *teacher.COMMANDS,
    *llmsrec.COMMANDS,
    Command("launch", "run training on Ray Train workers", _launch_parser, _launch),
    *submit.COMMANDS,
    *batch.COMMANDS,
    Command("report", "table and curves of runs", _report_parser, _report),
]


def build_parser() -> tuple[ArgumentParser, dict[str, ArgumentParser]]:
    """The `dist-srec` parser and each (sub)command's own parser, keyed `train`, `launch train`, ..."""
    p = ArgumentParser(prog="dist-srec", description=__doc__.split("\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                       formatter_class=HelpFormatter, exit_on_error=False)  # fmt: skip
    p.add_argument("--version", action="version", version=f"dist-srec {__version__}")
    sub = p.add_subcommands(dest="command", required=True)
    subs: dict[str, ArgumentParser] = {}
    for c in COMMANDS:
        subs[c.name] = c.build()
        sub.add_subcommand(c.name, subs[c.name], help=c.help)
    inner = subs["launch"].add_subcommands(dest="launch_command", required=True)  # jsonargparse: level order
    for c in launch.SUBCOMMANDS:
        subs[f"launch {c.name}"] = c.build()
        inner.add_subcommand(c.name, subs[f"launch {c.name}"], help=c.help)
    return p, subs


def parse(argv: Sequence[str]) -> tuple[Command, ArgumentParser, Namespace]:
    """(the command, its parser, its parsed namespace) of `dist-srec ARGV`; usage errors exit 2."""
    p, subs = build_parser()
    ns = p.parse_args([str(a) for a in argv])
    name, sub_ns = ns.command, ns[ns.command]
    table = {c.name: c for c in COMMANDS}
    if name == "launch":
        table = {f"launch {c.name}": c for c in launch.SUBCOMMANDS}
        name, sub_ns = f"launch {sub_ns.launch_command}", sub_ns[sub_ns.launch_command]
    return table[name], subs[name], sub_ns


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    try:
        cmd, p, ns = parse(argv)
    except ArgumentError as e:  # a flag's name or value is wrong: one line; `--help` says the rest
        where = " ".join(a for a in argv[:2] if not a.startswith("-"))
        print(f"dist-srec {where}: error: {' '.join(str(e).split())} (see --help)", file=sys.stderr)
        return 2
    try:
        return int(cmd.run(p, ns) or 0)
    except DistSrecError as e:
        print(f"dist-srec {cmd.name}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
