"""Typed, validated configs: the one source of truth for every stage.

Each config is a `@dataclass(kw_only=True)` validated in `__post_init__`; a bad value raises
`ConfigError` naming the field. CLI flags map 1:1 onto fields.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal, TypeVar

from dist_srec.errors import ConfigError

DatasetName = Literal["ml-100k", "ml-1m", "amazon2023", "custom"]
DATASETS: tuple[str, ...] = ("ml-100k", "ml-1m", "amazon2023", "custom")


def check(cond: bool, name: str, msg: str) -> None:
    """Raise `ConfigError` naming the field unless `cond` holds (every config's `__post_init__` uses it)."""
    if not cond:
        raise ConfigError(f"config field '{name}': {msg}")


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-able dict of a config dataclass."""
    return asdict(cfg)


TIMESTAMP_UNITS = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
"""Divisors from each timestamp unit to seconds."""


@dataclass(kw_only=True)
class PrepareConfig:
    """`dist-srec prepare`: raw interactions -> parquet catalog -> webdataset shards."""

    dataset: str
    """One of ml-100k, ml-1m (embedded, from the asset packages), amazon2023, custom (local files)."""
    out: str
    """Output directory (catalog parquet files, shards/, manifest.json)."""
    interactions: str | None = None
    """amazon2023: review JSONL(.gz); custom: parquet/CSV with user_id, item_id, timestamp."""
    items: str | None = None
    """amazon2023: meta JSONL(.gz); custom: parquet/CSV with item_id, title[, description]."""
    kcore: int = 5
    """Iterated k-core on users and items (0 or 1 disables). The paper's data is 5-core."""
    user_fraction: float = 1.0
    """Seeded share of users kept, sampled before k-core (the paper kept 5% on some datasets)."""
    seed: int = 42
    samples_per_shard: int = 2000
    """Samples per webdataset shard; more shards let more ranks x loader workers stream in parallel."""
    max_history: int = 0
    """Keep at most this many most recent history items per sample (0 = all)."""
    strict: bool = False
    """Error on missing titles, duplicate interactions and duplicate item ids instead of placeholder /
    drop / keep-first (all counted)."""
    timestamp_unit: str = "s"
    """custom: the unit of the `timestamp` column (s, ms, us or ns since the epoch); amazon2023 is ms."""
    progress: bool = True

    def __post_init__(self) -> None:
        check(self.dataset in DATASETS, "dataset", f"'{self.dataset}' is not one of {DATASETS}")
        check(bool(self.out), "out", "an output directory is required")
        if self.dataset in ("amazon2023", "custom"):
            check(self.interactions is not None, "interactions", f"required for dataset '{self.dataset}'")
            check(self.items is not None, "items", f"required for dataset '{self.dataset}'")
        check(self.kcore >= 0, "kcore", f"must be >= 0, got {self.kcore}")
        check(
            0.0 < self.user_fraction <= 1.0, "user_fraction", f"must be in (0, 1], got {self.user_fraction}"
        )
        check(self.samples_per_shard >= 1, "samples_per_shard", f"must be >= 1, got {self.samples_per_shard}")
        check(self.max_history >= 0, "max_history", f"must be >= 0, got {self.max_history}")
        check(self.timestamp_unit in TIMESTAMP_UNITS, "timestamp_unit",
              f"'{self.timestamp_unit}' is not one of {list(TIMESTAMP_UNITS)}")  # fmt: skip


@dataclass(kw_only=True)
class LoaderConfig:
    """Per-rank streaming of webdataset shards (see `dist_srec.data.loader`)."""

    batch_size: int = 128
    max_len: int = 128
    """L: history items per sample in a batch (left-padded)."""
    num_workers: int = 0
    """torch DataLoader workers per rank (0 = read in the training process)."""
    shuffle: bool = True
    seed: int = 0
    shuffle_buffer: int = 1000
    remainder: Literal["drop", "pad"] = "drop"
    """How ranks are evened out: 'drop' leaves out < world_size samples per epoch (different ones each
    epoch under shuffle); 'pad' repeats samples with mask=False so every sample is seen (evaluation)."""
    verify_hashes: bool = True
    """Check each shard's sha256 against the manifest before reading it."""

    def __post_init__(self) -> None:
        check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        check(self.max_len >= 1, "max_len", f"must be >= 1, got {self.max_len}")
        check(self.num_workers >= 0, "num_workers", f"must be >= 0, got {self.num_workers}")
        check(self.shuffle_buffer >= 1, "shuffle_buffer", f"must be >= 1, got {self.shuffle_buffer}")
        check(
            self.remainder in ("drop", "pad"), "remainder", f"must be 'drop' or 'pad', got {self.remainder}"
        )


T = TypeVar("T")


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def run_file_parser(cls: type) -> Any:
    """A jsonargparse parser whose flags are every field of the dataclass `cls` (nested by dots)."""
    from jsonargparse import ArgumentParser  # deferred: only the CLI and run files need it

    p = ArgumentParser(exit_on_error=False)
    p.add_class_arguments(cls, None, fail_untyped=False)
    return p


def from_namespace(cls: type[T], parser: Any, ns: Any) -> T:
    """`cls` built from a parsed namespace: nested config groups instantiated (and validated), then the
    top-level fields."""
    return from_built(cls, parser.instantiate(ns))


def from_built(cls: type[T], built: Any) -> T:
    """`cls` from an instantiated namespace (its nested config groups already built)."""
    return cls(**{f.name: built[f.name] for f in fields(cls)})


def load_run_file(cls: type[T], path: str | Path, **overrides: Any) -> T:
    """A run config from a YAML run file (as `--config PATH` reads it), with `overrides` (nested dicts
    for nested fields) merged over it."""
    import yaml  # deferred: only run files need it

    doc = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(doc, dict):
        raise ConfigError(f"run file {path}: expected a mapping of config fields, got {type(doc).__name__}")
    p = run_file_parser(cls)
    try:
        ns = p.parse_object(_merge(doc, overrides))
    except Exception as e:  # jsonargparse's ArgumentError or a type error: name the file
        raise ConfigError(f"run file {path}: {' '.join(str(e).split())}") from None
    return from_namespace(cls, p, ns)
