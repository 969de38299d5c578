"""Shared benchmark harness: machine description, timing helpers, and result files.

Every benchmark writes `benchmarks/results/<name>.json` (machine-readable: settings, machine,
versions, rows) and `<name>.md` (a dated human table), atomically.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    """CPU model, cores, threads, accelerator and library versions."""
    import torch

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "loadavg_1_5_15": [round(x, 2) for x in os.getloadavg()],  # other work sharing the cores
    }
    for mod in ("transformers", "deepspeed", "ray", "webdataset", "pyarrow", "triton"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:
            info[mod] = None
    try:
        info["git_commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=RESULTS.parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        info["git_commit"] = None
    return info


def peak_rss_mb(children: bool = False) -> float:
    """Peak resident set size of this process (or the max over its waited-for children), MiB."""
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    return resource.getrusage(who).ru_maxrss / 1024.0


def time_it(fn: Callable[[], Any], repeats: int = 5, warmup: int = 1) -> dict[str, float]:
    """Median and quantiles (seconds) of `repeats` timed calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    ts.sort()
    q = statistics.quantiles(ts, n=5) if len(ts) >= 2 else [ts[0]] * 4
    return {
        "median_s": statistics.median(ts),
        "p20_s": q[0],
        "p80_s": q[-1],
        "min_s": ts[0],
        "repeats": repeats,
    }


def run_child(args: Sequence[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run `python <args>` in a fresh process; it must print one JSON object as its last line."""
    out = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env={**os.environ, **(env or {})}
    )
    if out.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:,.3f}" if abs(v) < 100 else f"{v:,.0f}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_results(name: str, payload: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """Write results/<name>.json and results/<name>.md atomically; return both paths."""
    from dist_srec.io import atomic_path, write_json_atomic

    RESULTS.mkdir(parents=True, exist_ok=True)
    js, md = RESULTS / f"{name}.json", RESULTS / f"{name}.md"
    write_json_atomic(js, payload)
    with atomic_path(md) as tmp:
        tmp.write_text(markdown.rstrip() + "\n")
    from benchmarks.plots import draw  # its plot beside it, where one is defined for this kind

    draw(name, payload)
    return js, md


class RssSampler:
    """Samples, every `period_s` in a background thread, the RSS of every process whose command line
    contains `match` and the machine's used memory; keeps each process's peak. Survives the processes
    being killed (e.g. by Ray's OOM monitor), so a failed run still says who held the memory.

        with RssSampler("ray::") as s:
            ...
        s.summary() -> {"peak_used_mb": .., "peaks_mb": {"pid title": mb, ...},
                        "timeline": [[t_s, used_mb, largest_mb], ...]}
    """

    def __init__(self, match: str, period_s: float = 1.0) -> None:
        import threading

        self.match, self.period_s = match, period_s
        self.peaks: dict[int, tuple[float, str]] = {}
        self.timeline: list[list[float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        t0 = time.monotonic()
        while not self._stop.is_set():
            top = 0.0
            for proc in psutil.process_iter(["pid", "cmdline", "memory_info"]):
                cmd = " ".join(proc.info["cmdline"] or [])
                mem = proc.info["memory_info"]
                if self.match in cmd and mem is not None:
                    mb, pid = mem.rss / 2**20, proc.info["pid"]
                    if mb > self.peaks.get(pid, (0.0, ""))[0]:  # Ray retitles a worker per task: key by pid
                        self.peaks[pid] = (mb, cmd.split()[0][:40])
                    top = max(top, mb)
            vm = psutil.virtual_memory()
            used = (vm.total - vm.available) / 2**20
            self.timeline.append([round(time.monotonic() - t0, 1), round(used), round(top)])
            self._stop.wait(self.period_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, Any]:
        big = sorted(self.peaks.items(), key=lambda kv: -kv[1][0])[:6]
        return {
            "peak_used_mb": max((u for _, u, _ in self.timeline), default=0),
            "peaks_mb": {f"{pid} {name}": round(mb) for pid, (mb, name) in big},
            "timeline": self.timeline[:: max(1, len(self.timeline) // 200)],
        }
