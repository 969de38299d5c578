"""`dist-srec report RUN [RUN ...]`: what runs did, side by side, from the files they left.

Per run it reads OUT/metrics.jsonl (the loop's metric log), OUT/last/train_state.json (its validation
history), OUT/last/config.json (what it trained, on what) and, when present, its test results
(OUT/results.json of `pretrain-teacher`, OUT/eval-test.json of `dist-srec evaluate`). It prints a
markdown table of the runs' validation and test metrics and the config fields in which they differ,
and draws PNGs with matplotlib: the training-loss terms against steps and validation NDCG@10 against
steps, every run overlaid.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dist_srec.errors import DataError
from dist_srec.io import read_json
from dist_srec.train.metric_logging import METRICS_FILE
from dist_srec.train.run_log import NOT_LOSS_TERMS


@dataclass
class RunRecord:
    """What `report` knows of one run directory."""

    path: Path
    name: str
    kind: str
    metrics: list[dict[str, Any]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    test: dict[str, float] = field(default_factory=dict)


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def _test_metrics(run: Path) -> dict[str, float]:
    """Test metrics of the run's model: the teacher's results.json or LLM-SRec's eval-test.json."""
    teacher, srec = run / "results.json", run / "eval-test.json"
    out: dict[str, float] = {}
    if teacher.is_file():
        for r in read_json(teacher):
            p = r["protocol"]
            tag = (
                p["protocol"]
                + ("_excl" if p.get("exclude_history") else "")
                + str(p.get("exclude_last") or "")
            )
            out[f"test_{tag}_ndcg@10"] = r["metrics"]["ndcg@10"]
    elif srec.is_file():
        report = read_json(srec).get("report", {}).get("llm-srec", {})
        for tag in ("sampled", "full"):
            if tag in report:
                out[f"test_{tag}_ndcg@10"] = report[tag]["ndcg@10"]
    return out


def load_run(run: str | Path) -> RunRecord:
    """Everything `report` reads of one run directory; `DataError` if it holds no run."""
    run = Path(run)
    state_file, config_file = run / "last" / "train_state.json", run / "last" / "config.json"
    if not state_file.is_file():
        raise DataError("not a training run (no last/train_state.json)", path=run)
    state = read_json(state_file)["train_state"]
    config = read_json(config_file) if config_file.is_file() else {}
    kind = {"dist-srec/sasrec-teacher": "teacher", "dist-srec/llm-srec": "llm-srec"}.get(
        config.get("format"), "?"
    )
    rows = []
    if (run / METRICS_FILE).is_file():
        rows = [json.loads(line) for line in (run / METRICS_FILE).read_text().splitlines() if line.strip()]
    conf = {k: v for k, v in config.items() if k not in ("format", "version", "validation")}
    return RunRecord(path=run, name=run.name, kind=kind, metrics=rows, history=state.get("history", []),
                     config=_flat(conf), test=_test_metrics(run))  # fmt: skip


def _best(rec: RunRecord, metric: str = "ndcg@10") -> tuple[int | None, float | None]:
    rounds = [h for h in rec.history if metric in h]
    if not rounds:
        return None, None
    top = max(rounds, key=lambda h: h[metric])
    return int(top["step"]), float(top[metric])


def markdown(runs: Sequence[RunRecord]) -> str:
    """The runs' table and the config fields, among those all the runs have, in which they differ."""
    tests = sorted({k for r in runs for k in r.test})
    cols = ["run", "kind", "steps", "best step", "best valid NDCG@10", *tests]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in runs:
        step, value = _best(r)
        steps = r.history[-1]["step"] if r.history else 0
        vals = [r.name, r.kind, str(steps), "-" if step is None else str(step),
                "-" if value is None else f"{value:.4f}", *(f"{r.test[t]:.4f}" if t in r.test else "-" for t in tests)]  # fmt: skip
        lines.append("| " + " | ".join(vals) + " |")
    # Fields every run has (a teacher and an LLM-SRec run share only the loop's and the batch's):
    keys = sorted(set.intersection(*(set(r.config) for r in runs))) if runs else []
    differ = [k for k in keys if len({json.dumps(r.config.get(k), default=str) for r in runs}) > 1]
    shown = differ if len(runs) > 1 else []
    if shown:
        lines += ["", "| config field | " + " | ".join(r.name for r in runs) + " |",
                  "|" + "---|" * (len(runs) + 1)]  # fmt: skip
        for k in shown:
            lines.append(f"| `{k}` | " + " | ".join(f"`{r.config.get(k, '-')}`" for r in runs) + " |")
    elif len(runs) > 1:
        lines += ["", "The runs' configs are the same."]
    return "\n".join(lines)


def plot(runs: Sequence[RunRecord], out_dir: str | Path) -> list[Path]:
    """`loss.png` (every train_* term against steps) and `valid.png` (validation NDCG@10 against steps)."""
    import matplotlib  # deferred: only `report` draws

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    terms = sorted(
        {k for r in runs for row in r.metrics for k in row if k.startswith("train_")} - NOT_LOSS_TERMS
    )
    written = []
    if terms:
        fig, axes = plt.subplots(len(terms), 1, figsize=(7, 2.4 * len(terms)), sharex=True, squeeze=False)
        for ax, term in zip(axes[:, 0], terms):
            for i, r in enumerate(runs):  # one colour per run in every panel
                pts = [(row["step"], row[term]) for row in r.metrics if term in row]
                if pts:
                    ax.plot(*zip(*pts), marker="." if len(pts) < 30 else None, color=f"C{i}", label=r.name)
            ax.set_ylabel(term.removeprefix("train_"))
            ax.grid(alpha=0.3)
        axes[0, 0].set_title("training loss terms (epoch means so far)")
        handles = [plt.Line2D([], [], color=f"C{i}", label=r.name) for i, r in enumerate(runs)]
        fig.legend(handles=handles, loc="upper right", fontsize=8)
        axes[-1, 0].set_xlabel("optimizer step")
        fig.tight_layout()
        fig.savefig(out / "loss.png", dpi=110)
        plt.close(fig)
        written.append(out / "loss.png")
    fig, ax = plt.subplots(figsize=(7, 3.2))
    drawn = False
    for i, r in enumerate(runs):
        pts = [(h["step"], h["ndcg@10"]) for h in r.history if "ndcg@10" in h]
        if pts:
            ax.plot(*zip(*pts), marker="o", color=f"C{i}", label=r.name)
            drawn = True
    if drawn:
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("valid NDCG@10 (sampled)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "valid.png", dpi=110)
        written.append(out / "valid.png")
    plt.close(fig)
    return written


def report(runs: Sequence[str | Path], out_dir: str | Path) -> tuple[str, list[Path]]:
    """Load the runs, write `out_dir/report.md` and the PNGs; returns (markdown, the files written)."""
    recs = [load_run(r) for r in runs]
    text = markdown(recs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(text + "\n")
    return text, [out / "report.md", *plot(recs, out)]
