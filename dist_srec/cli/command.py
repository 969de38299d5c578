"""One `dist-srec` subcommand: its parser (built from the typed configs it fills) and what it runs.

Flags are the configs' field names, dotted by nesting (`--loop.lr`, `--model.loss.distill_weight`),
with each field's docstring and default in `--help` (jsonargparse reads them from the dataclasses, the
one place each default lives). A run file given with `--config FILE` (YAML) sets fields first; flags
after it override them.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from jsonargparse import (
    ActionConfigFile,
    ArgumentParser,
    DefaultHelpFormatter,
    Namespace,
    set_parsing_settings,
)

set_parsing_settings(docstring_parse_attribute_docstrings=True)


class HelpFormatter(DefaultHelpFormatter):
    """jsonargparse's help (types, defaults, field docs) with the description's and examples' line
    breaks kept."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return argparse.RawDescriptionHelpFormatter._fill_text(self, text, width, indent)


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    build: Callable[[], ArgumentParser]
    run: Callable[[ArgumentParser, Namespace], int]


def parser(description: str, examples: list[str], *, run_file: bool = False) -> ArgumentParser:
    """A subcommand parser whose help ends with `examples`; `run_file` adds `--config FILE`."""
    p = ArgumentParser(description=description, epilog="examples:\n  " + "\n  ".join(examples),
                       formatter_class=HelpFormatter, exit_on_error=False)  # fmt: skip
    if run_file:
        p.add_argument("--config", action=ActionConfigFile,
                       help="a YAML run file, e.g. OUT/config.yaml of an earlier run (flags after it win)")  # fmt: skip
    return p
