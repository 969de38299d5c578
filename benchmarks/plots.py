"""Plots of the benchmark results, drawn beside their JSON and markdown (`harness.write_results` calls
`draw` for every result it writes; `python benchmarks/plots.py` redraws all from the committed JSON).

    catalog*          top-K users/s and peak RSS against catalog size
    train_step*       s/step and peak RSS per rank by ZeRO stage (and mmap threshold)
    lm_memory*        one rank's peak RSS and pass time by ZeRO stage and mmap threshold
    lm_levers*        speed-up of each LM lever against the default path, per shape
    quality_*         validation NDCG@10 against steps, per run (the teacher as a line)
    fidelity_*        retrieval CE by step, dist-srec and the paper's code: independent runs and lockstep
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, out: Path) -> Path:
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    _plt().close(fig)
    return out


def catalog(doc: dict[str, Any], out: Path) -> Path | None:
    rows = [r for r in doc["rows"] if r.get("row") == "synthetic top-K"]
    if not rows:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.4))
    n = [r["n_items"] for r in rows]
    ax.loglog(n, [r["per_s"] for r in rows], marker="o", label="top-100 users/s")
    ax.set_xlabel("catalog size (items)")
    ax.set_ylabel("users/s")
    ax2 = ax.twinx()
    ax2.semilogx(n, [r["peak_rss_mb"] for r in rows], marker="s", color="tab:orange", label="peak RSS (MB)")
    ax2.set_ylabel("peak RSS (MB)")
    ax2.set_ylim(0, max(r["peak_rss_mb"] for r in rows) * 1.5)
    ax.set_title("exact top-K over an fp16 store: memory stays flat")
    fig.legend(loc="center right", fontsize=8, bbox_to_anchor=(0.85, 0.55))
    return _save(fig, out)


def _stage_label(r: dict[str, Any]) -> str:
    t = r.get("mmap_threshold_bytes") or r.get("mmap_threshold")
    fixed = t not in (None, "dynamic")
    return f"ZeRO {r['zero_stage']}" + (f"\nmmap {t}" if fixed else "")


def _bars(
    rows: list[dict[str, Any]], time_key: str, mem_key: str, title: str, time_label: str, out: Path
) -> Path:
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 3.2))
    labels = [_stage_label(r) for r in rows]
    a.bar(labels, [r[time_key] for r in rows], color="tab:blue")
    a.set_ylabel(time_label)
    b.bar(labels, [r[mem_key] / 1024 for r in rows], color="tab:orange")
    b.set_ylabel("peak RSS per rank (GB)")
    fig.suptitle(title, fontsize=10)
    return _save(fig, out)


def train_step(doc: dict[str, Any], out: Path) -> Path | None:
    rows = [r for r in doc["rows"] if r.get("step_s") and r.get("peak_rss_mb_per_rank")]
    if not rows:
        return None
    return _bars(rows, "step_s", "peak_rss_mb_per_rank", f"train step under Ray, {rows[0]['workers']} workers",
                 "s / step", out)  # fmt: skip


def lm_memory(doc: dict[str, Any], out: Path) -> Path | None:
    rows = doc["rows"]
    return _bars(
        rows, "fwd_bwd_s", "peak_passes_mb", "one rank's LM passes by ZeRO stage", "s / fwd+bwd", out
    )


def lm_levers(doc: dict[str, Any], out: Path) -> Path | None:
    rows = doc["rows"]
    levers = sorted({k[len("speedup_") :] for r in rows for k in r if k.startswith("speedup_")})
    if not levers:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.4))
    width = 0.8 / len(levers)
    for j, lever in enumerate(levers):
        xs = [i + j * width for i in range(len(rows))]
        ax.bar(xs, [r.get(f"speedup_{lever}", 0.0) for r in rows], width, label=lever)
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_xticks([i + width * (len(levers) - 1) / 2 for i in range(len(rows))])
    ax.set_xticklabels([r["what"] for r in rows], fontsize=7)
    ax.set_ylabel("speed-up vs the default path")
    ax.legend(fontsize=8)
    ax.set_title("LM levers, interleaved A/B (above 1: faster)", fontsize=10)
    return _save(fig, out)


def quality(doc: dict[str, Any], out: Path) -> Path | None:
    runs = doc.get("results", {})
    if not runs:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    for name, res in runs.items():
        hist = res["train"].get("valid_history", [])
        if hist:
            ax.plot([h["step"] for h in hist], [h["ndcg@10"] for h in hist], marker=".", label=name)
    teacher = next((r["eval"]["report"].get("sasrec") for r in runs.values()), None)
    if teacher:
        ax.axhline(teacher["sampled"]["ndcg@10"], ls="--", color="gray", label="SASRec teacher (test)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("valid NDCG@10 (sampled)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, out)


def fidelity(doc: dict[str, Any], out: Path) -> Path | None:
    """Retrieval CE of the independent runs (the reference per step, one line per seed; dist-srec as
    means over its logging intervals, drawn at each interval's last step) and of the lockstep run."""
    curves = doc.get("curves") or {}
    lock = doc.get("lockstep")
    lock = lock[0] if isinstance(lock, list) and lock else lock  # a lockstep-only report holds a list
    ref, ours = curves.get("reference") or [], curves.get("dist-srec") or []
    runs = bool(ref or ours)
    if not (runs or lock):
        return None
    plt = _plt()
    panels = int(runs) + int(bool(lock))
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4), squeeze=False)
    if runs:
        ax = axes[0][0]
        for k, c in enumerate(ref):
            ax.plot(range(1, len(c) + 1), c, color="tab:blue", alpha=0.5, lw=0.8,
                    label="reference, per step" if k == 0 else None)  # fmt: skip
        for k, c in enumerate(ours):
            ax.plot([x for x, _ in c], [y for _, y in c], color="tab:orange", marker="o", ms=3, ls="--",
                    label="dist-srec, mean per logging interval" if k == 0 else None)  # fmt: skip
        ax.set(
            yscale="log", xlabel="step", ylabel="retrieval CE", title="independent runs, one line per seed"
        )
        ax.legend(fontsize=7)
    if lock:
        ax = axes[0][int(runs)]
        ax.plot(lock["curves"]["reference"], color="tab:blue", label="reference")
        ax.plot(lock["curves"]["dist-srec"], color="tab:orange", ls="--", label="dist-srec")
        ax.set(
            yscale="log",
            xlabel="step",
            ylabel="retrieval CE",
            title="lockstep: same heads, batches, negatives",
        )
        ax.legend(fontsize=7)
    return _save(fig, out)


PLOTTERS: dict[str, Callable[[dict[str, Any], Path], Path | None]] = {
    "catalog": catalog, "train_step": train_step, "lm_memory": lm_memory, "lm_levers": lm_levers,
    "quality_": quality, "fidelity_": fidelity,
}  # fmt: skip


def draw(name: str, doc: dict[str, Any], results: Path = RESULTS) -> Path | None:
    """The plot of result `name` as results/<name>.png, if a plotter knows its kind."""
    for prefix, fn in PLOTTERS.items():
        if name.startswith(prefix):
            return fn(doc, results / f"{name}.png")
    return None


def main() -> int:
    for js in sorted(RESULTS.glob("*.json")):
        try:
            out = draw(js.stem, json.loads(js.read_text()))
        except (KeyError, TypeError, ValueError) as e:  # an older result file of another shape
            print(f"skipped {js.name}: {e!r}")
            continue
        if out is not None:
            print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
