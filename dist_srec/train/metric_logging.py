"""Where a run's metrics go: a small logger interface with swappable backends (torchtune's
`metric_logging` is the model), written by rank 0.

    jsonl        OUT/metrics.jsonl, one JSON object a line: {"step", "epoch", <metrics>, "time", "checkpoint"}
    tensorboard  OUT/tensorboard/ event files (the `tensorboard` package's writer): `tensorboard --logdir OUT`
    mlflow       the active MLflow tracking URI (`MLFLOW_TRACKING_URI`), when mlflow is installed

`jsonl` and `tensorboard` are on by default (`LoopConfig.metric_loggers`); a backend whose package is
missing is skipped with one warning, never an error, so a run never stops for want of a dashboard.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
BACKENDS = ("jsonl", "tensorboard", "mlflow")


class MetricLogger(Protocol):
    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        """Record `metrics` (plain numbers, plus a few JSON-able fields) at optimizer step `step`."""

    def close(self) -> None: ...


def _numbers(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {
        k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


class JsonlLogger:
    """Appends one line per call to OUT/metrics.jsonl (a resumed run appends to the same file)."""

    def __init__(self, out_dir: str | Path):
        self.path = Path(out_dir) / METRICS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        row = {"step": step, **metrics, "time": time.time()}
        with self.path.open("a") as f:
            f.write(json.dumps(row, default=float) + "\n")

    def close(self) -> None:
        pass


class TensorBoardLogger:
    """Scalars into OUT/tensorboard/ through `torch.utils.tensorboard.SummaryWriter`."""

    def __init__(self, out_dir: str | Path):
        # deferred: the writer loads tensorboard's protobufs; only runs that log to it need them
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(Path(out_dir) / TENSORBOARD_DIR))

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        for k, v in _numbers(metrics).items():
            if math.isfinite(v):
                self.writer.add_scalar(k, v, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class MlflowLogger:
    """`mlflow.log_metrics` into the active run (one is started if none is)."""

    def __init__(self, out_dir: str | Path):
        import mlflow  # deferred: optional package

        self.mlflow = mlflow
        self.owns_run = mlflow.active_run() is None
        if self.owns_run:
            mlflow.start_run(run_name=Path(out_dir).name)

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        nums = {k.replace("@", "_at_"): v for k, v in _numbers(metrics).items() if math.isfinite(v)}
        self.mlflow.log_metrics(nums, step=step)

    def close(self) -> None:
        if self.owns_run:
            self.mlflow.end_run()


_CLASSES = {"jsonl": JsonlLogger, "tensorboard": TensorBoardLogger, "mlflow": MlflowLogger}
_PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow"}


class MultiLogger:
    """Every configured backend that can run here (see the module docstring)."""

    def __init__(self, out_dir: str | Path, backends: Sequence[str]):
        self.loggers: list[MetricLogger] = []
        for name in backends:
            pkg = _PACKAGES.get(name)
            if pkg is not None and importlib.util.find_spec(pkg) is None:
                log.warning("metric logger '%s' skipped: the %s package is not installed", name, pkg)
                continue
            self.loggers.append(_CLASSES[name](out_dir))

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        for lg in self.loggers:
            lg.log(metrics, step)

    def close(self) -> None:
        for lg in self.loggers:
            lg.close()
