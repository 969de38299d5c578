"""The bad-input corpus: each test feeds one kind of bad input (a small generated CSV, shard, manifest
or checkpoint) through the CLI as a user would, and checks three things: the exit code, that the
one-line message names the file, row or field, and that no output was written or changed."""

from __future__ import annotations

import contextlib
import hashlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dist_srec.cli.main import main


def run_cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    """(exit code, stderr) of `dist-srec ARGV`."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def tree_digest(root: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under `root` (empty if it does not exist)."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def one_error_line(err: str) -> str:
    """The error line; the CLI must print exactly one (no traceback)."""
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if ": error: " in line]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


@contextlib.contextmanager
def lock_held_elsewhere(out: Path, what: str) -> Iterator[int]:
    """Another process holds `out`'s output lock for the block; yields its pid."""
    code = (f"import time\nfrom dist_srec.io import exclusive_output\nwith exclusive_output({str(out)!r}, {what!r}):\n"
            "    print('held', flush=True)\n    time.sleep(60)")  # fmt: skip
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()
