"""The package layout: imports follow the data flow, no folder is one that tools skip, ruff sees every file.

python -m tests.test_layout     prints the package import graph
"""

from __future__ import annotations

import ast
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LEAVES = ("__init__", "errors", "io", "storage", "config", "assets")
"""Modules every package may import (`__init__` is the package itself: its version): they import nothing
of the project but each other."""
LAYERS = ("data", "kernels", "models", "parallel", "eval", "train", "inference", "cluster", "demo", "cli")
"""The data flow, in order: a package imports only leaves and the packages before it."""
SKIPPED_BY_TOOLS = {"dist", "build", "venv", "env", "node_modules", "_build", "site-packages"}
"""Folder names that pytest's `norecursedirs`, ruff's `exclude` or common `.gitignore` files skip."""


def _module_files() -> dict[str, Path]:
    """{dotted module: file} of the installed layout (`kernels/` is `dist_srec.kernels`)."""
    out = {}
    for base, prefix in ((ROOT / "dist_srec", ("dist_srec",)), (ROOT / "kernels", ("dist_srec", "kernels"))):
        for p in base.rglob("*.py"):
            parts = (*prefix, *p.relative_to(base).with_suffix("").parts)
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def _unit(module: str) -> str:
    """The layer unit of a module: `dist_srec.<package or leaf module>`'s second part."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def package_graph() -> dict[str, set[str]]:
    """{unit: units it imports}, from every import statement (deferred ones included)."""
    files = _module_files()
    graph: dict[str, set[str]] = defaultdict(set)
    for mod, path in files.items():
        pkg = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(pkg[: len(pkg) - node.level + 1]) if node.level else ""
                full = ".".join(x for x in (base, node.module or "") if x)
                targets = [full, *(f"{full}.{a.name}" for a in node.names)]
            else:
                continue
            for t in targets:
                if t in files and _unit(t) != _unit(mod):
                    graph[_unit(mod)].add(_unit(t))
    return graph


def test_package_imports_follow_the_data_flow() -> None:
    graph = package_graph()
    rank = {name: i for i, name in enumerate(LAYERS)}
    units = {_unit(m) for m in _module_files()} - {"__init__", "__main__"}
    assert units <= set(LAYERS) | set(LEAVES), (
        f"not placed in a layer: {sorted(units - set(LAYERS) - set(LEAVES))}"
    )
    bad = []
    for src, dsts in graph.items():
        for dst in dsts:
            if src in LEAVES:
                ok = dst in LEAVES
            else:
                ok = dst in LEAVES or rank[dst] < rank.get(src, len(LAYERS))
            if not ok:
                bad.append(f"{src} -> {dst}")
    assert not bad, f"imports against the data flow {LAYERS}: {sorted(bad)}"


def test_no_folder_has_a_name_that_tools_skip() -> None:
    bad = [
        str(p.relative_to(ROOT))
        for top in ("dist_srec", "kernels", "tests", "benchmarks", "launch")
        for p in (ROOT / top).rglob("*")
        if p.is_dir() and p.name in SKIPPED_BY_TOOLS
    ]
    assert not bad, f"pytest / ruff / .gitignore defaults skip these folders: {bad}"


def test_ruff_checks_every_tracked_python_file() -> None:
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("needs a git checkout to list the tracked files")
    ruff = shutil.which("ruff") or str(ROOT / ".venv" / "bin" / "ruff")
    if not Path(ruff).exists():
        pytest.skip("needs ruff (installed by `make setup`)")
    tracked = subprocess.run(
        ["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    shown = subprocess.run([ruff, "check", "--show-files", "."], cwd=ROOT, capture_output=True, text=True)
    seen = {Path(line).resolve() for line in shown.stdout.split() if line.endswith(".py")}
    missing = [f for f in tracked.stdout.split() if (ROOT / f).resolve() not in seen]
    assert not missing, f"ruff does not check these tracked files: {missing}"


if __name__ == "__main__":
    for unit in (*LEAVES, *LAYERS):
        print(f"{unit:10s} -> {', '.join(sorted(package_graph().get(unit, ()))) or '(nothing)'}")
