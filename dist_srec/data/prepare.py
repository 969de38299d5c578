"""`dist-srec prepare`: source files -> parquet catalog -> webdataset shards -> manifest.json.

The output directory is written atomically: everything goes to a temporary sibling that replaces
`out` only when complete. An existing output built from the same config and the same input files is
reused as is; a different one is replaced only with `force`; a non-empty directory that is not a
dist-srec output is never touched.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from dist_srec.assets import movielens_files
from dist_srec.config import PrepareConfig
from dist_srec.data.catalog import SPLITS, TIE_BREAK, build_catalog, now_iso, write_catalog
from dist_srec.data.shards import FORMAT, write_shards
from dist_srec.data.sources import load_raw
from dist_srec.errors import DataError
from dist_srec.io import (
    atomic_path,
    clean_stale_temporaries,
    exclusive_output,
    read_json,
    recover_atomic,
    sha256_file,
    write_json_atomic,
)

SPLIT_RULE = (
    "leave-last-out as SASRec data_partition: n>=3 -> last=test, second to last=valid, rest=train; "
    "n<3 -> all train. Sample for a split: target = its last item, history = all earlier items."
)


# Fields added after data dirs were first written: at these values they stay out of the key, so an
# existing data dir prepared with the same settings is still reused.
_NEW_FIELD_DEFAULTS = {"timestamp_unit": "s"}


def _config_key(cfg: PrepareConfig) -> dict:
    d = dataclasses.asdict(cfg)
    d.pop("progress")
    d.pop("out")
    for name, default in _NEW_FIELD_DEFAULTS.items():
        if d.get(name) == default:
            d.pop(name)
    return d


def _source_files(cfg: PrepareConfig) -> list[Path]:
    if cfg.dataset in ("ml-100k", "ml-1m"):
        return list(movielens_files(cfg.dataset))
    return [Path(cfg.interactions), Path(cfg.items)]


def prepare(cfg: PrepareConfig, force: bool = False) -> dict:
    """Build (or reuse) the prepared data directory `cfg.out`; return its manifest. A second `prepare`
    into the same directory while this one runs is refused (`OutputBusyError` naming this one)."""
    with exclusive_output(cfg.out, f"prepare {cfg.dataset}"):
        recover_atomic(cfg.out)  # a kill between the two renames of a replacement left only the old copy
        clean_stale_temporaries(cfg.out)
        return _prepare(cfg, force)


def _prepare(cfg: PrepareConfig, force: bool) -> dict:
    out = Path(cfg.out)
    sources = {str(p): sha256_file(p) for p in _source_files(cfg) if _exists(p)}
    existing = out / "manifest.json"
    if existing.is_file():
        old = read_json(existing)
        if old.get("config_key") == _config_key(cfg) and old.get("source", {}).get("sha256") == sources:
            old["reused"] = True
            return old
        if not force:
            raise DataError(
                "output directory holds data prepared with another config or input; pass --force to replace it",
                path=existing,
            )
    elif out.exists() and any(out.iterdir()):
        raise DataError("output directory is not empty and is not a dist-srec data directory", path=out)

    t0 = time.perf_counter()
    raw = load_raw(cfg)
    cat = build_catalog(raw, cfg)
    with atomic_path(out) as tmp:
        tmp.mkdir()
        files = write_catalog(cat, tmp)
        shards, sample_counts = write_shards(cat, tmp, cfg.samples_per_shard, cfg.max_history, cfg.progress)
        manifest = {
            "format": FORMAT,
            "created": now_iso(),
            "source": {"dataset": cfg.dataset, "sha256": sources},
            "config": dataclasses.asdict(cfg),
            "config_key": _config_key(cfg),
            "counts": {
                "num_users": len(cat.user_keys) - 1,
                "num_items": len(cat.item_keys) - 1,
                "num_interactions": len(cat.user),
                **{f"{s}_interactions": int((cat.split == i).sum()) for i, s in enumerate(SPLITS)},
            },
            "stats": cat.stats,
            "tie_break": TIE_BREAK,
            "split_rule": SPLIT_RULE,
            "files": files,
            "shards": shards,
            "samples": {s: {"total": sum(e["count"] for e in shards[s]), **sample_counts[s]} for s in SPLITS},
            "seconds": round(time.perf_counter() - t0, 3),
        }
        write_json_atomic(tmp / "manifest.json", manifest)
    return manifest


def _exists(p: Path) -> bool:
    if not p.is_file():
        raise DataError("input file not found", path=p)
    return True


def summary(manifest: dict) -> str:
    """A few human lines about a prepared data directory."""
    c, s = manifest["counts"], manifest["samples"]
    lines = [
        f"dataset {manifest['source']['dataset']}{' (reused)' if manifest.get('reused') else ''}: "
        f"{c['num_users']} users, {c['num_items']} items, {c['num_interactions']} interactions "
        f"(after {manifest['config']['kcore']}-core)",
        "samples: "
        + ", ".join(f"{k} {v['total']} in {len(manifest['shards'][k])} shards" for k, v in s.items()),
    ]
    st = manifest["stats"]
    lines.append(
        f"dropped duplicates {st['duplicates_dropped']}, placeholder titles {st['placeholder_titles']}, "
        f"took {manifest['seconds']} s"
    )
    return "\n".join(lines)
