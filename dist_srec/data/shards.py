"""Catalog -> webdataset shards (one JSON sample per user and split) + the data manifest.

Shards are `shards/{split}-{index:06d}.tar`, samples in user-id order, `samples_per_shard` each. Each
sample is `{key}.json` holding the fields of `dist_srec.data.batch` (titles are never stored per
sample; they are looked up in items.parquet). Tar members carry a fixed mtime, so the same input and
config give byte-identical shards and hashes.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import webdataset as wds
from tqdm import tqdm

from dist_srec.data.catalog import SPLITS, CatalogArrays
from dist_srec.io import sha256_file

FORMAT = "dist-srec-shards/1"


@dataclasses.dataclass
class SplitSamples:
    written: int = 0
    skipped_empty_history: int = 0


def iter_samples(cat: CatalogArrays, split: str, max_history: int, counts: SplitSamples) -> Iterator[dict]:
    """Yield the samples of one split in user order (see `dist_srec.data.batch` for the rule).

    A train sample whose history would be empty (a user with exactly 3 interactions, or 1 when
    k-core is off) is skipped and counted: a next-item target needs at least one item before it.
    """
    code = SPLITS.index(split)
    n = len(cat.user)
    starts = np.flatnonzero(np.r_[True, cat.user[1:] != cat.user[:-1]])
    ends = np.r_[starts[1:], n]
    for s, e in zip(starts.tolist(), ends.tolist()):
        sp = cat.split[s:e]
        # target = the last interaction of this split; history = everything before it.
        idx = np.flatnonzero(sp == code)
        if idx.size == 0:
            continue
        t = s + int(idx[-1])
        if t == s:
            counts.skipped_empty_history += 1
            continue
        h0 = s if max_history == 0 else max(s, t - max_history)
        counts.written += 1
        yield {
            "user": int(cat.user[s]),
            "history": cat.item[h0:t].tolist(),
            "history_ts": cat.timestamp[h0:t].tolist(),
            "target": int(cat.item[t]),
            "target_ts": int(cat.timestamp[t]),
        }


def write_shards(
    cat: CatalogArrays, out: Path, samples_per_shard: int, max_history: int, progress: bool = True
) -> tuple[dict[str, list[dict]], dict[str, dict]]:
    """Write all splits' shards under `out/shards`; return (shard lists, per-split sample counts).

    Each shard entry is {"file": relative path, "count": samples, "sha256": hex}.
    """
    (out / "shards").mkdir(parents=True, exist_ok=True)
    shards: dict[str, list[dict]] = {}
    counts: dict[str, dict] = {}
    n_users = int(cat.user.max())
    for split in SPLITS:
        c = SplitSamples()
        shards[split] = []
        tar, count, path = None, 0, None
        bar = tqdm(
            total=n_users, desc=f"shards {split}", unit=" users", disable=not progress, mininterval=1.0
        )
        for sample in iter_samples(cat, split, max_history, c):
            if tar is None:
                path = out / "shards" / f"{split}-{len(shards[split]):06d}.tar"
                tar, count = wds.TarWriter(str(path), mtime=0.0, encoder=False), 0
            payload = json.dumps(sample, separators=(",", ":")).encode()
            tar.write({"__key__": f"{sample['user']:010d}", "json": payload})
            count += 1
            bar.update(1)
            if count == samples_per_shard:
                tar.close()
                shards[split].append(_entry(out, path, count))
                tar = None
        if tar is not None:
            tar.close()
            shards[split].append(_entry(out, path, count))
        bar.close()
        counts[split] = dataclasses.asdict(c)
    return shards, counts


def _entry(out: Path, path: Path, count: int) -> dict:
    return {"file": str(path.relative_to(out)), "count": count, "sha256": sha256_file(path)}
