"""Raw interactions -> a clean, id-mapped, chronologically ordered parquet catalog.

Processing, in order (each step counted in the manifest):
1. items referenced by interactions but absent from / untitled in the items file get the placeholder
   title `Item <key>` (or, with `strict`, an error naming the row);
2. exact duplicate interactions (same user, item, timestamp) are dropped (or, with `strict`, an error);
3. a seeded share of users is kept (`user_fraction`);
4. iterated k-core on users and items, to a fixed point;
5. per user, a stable chronological order: sort by (timestamp, source row), so ties keep file order;
6. ids: users and items 1-based in natural key order (numeric keys numerically), 0 = padding;
7. leave-last-out split (SASRec `data_partition`): a user with n >= 3 interactions puts the last in
   `test`, the second to last in `valid`, the rest in `train`; a user with n < 3 has only `train`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dist_srec.config import PrepareConfig
from dist_srec.data.sources import RawData
from dist_srec.errors import DataError
from dist_srec.io import read_json, sha256_file
from dist_srec.storage import data_name, local_data

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
TIE_BREAK = "timestamp ascending, then source row ascending (stable: equal timestamps keep file order)"
PLACEHOLDER_TITLE = "Item {key}"
CATALOG_FILES = ("items.parquet", "users.parquet", "interactions.parquet")


@dataclass
class CatalogArrays:
    """The processed catalog, all arrays aligned; interactions sorted by (user, time, row).

    user/item/timestamp/split: [I]; split is 0 train, 1 valid, 2 test.
    user_keys: [U+1], item_keys/titles/descriptions: [N+1]; index 0 is padding ("").
    """

    user: np.ndarray
    item: np.ndarray
    timestamp: np.ndarray
    split: np.ndarray
    user_keys: np.ndarray
    item_keys: np.ndarray
    titles: np.ndarray
    descriptions: np.ndarray
    stats: dict


def _natural_unique(keys: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Unique keys in natural order (numerically if all are integers) and [I] int64 codes into them.

    Dictionary-encodes in arrow, so only the unique keys ever become Python strings.
    """
    enc = pc.dictionary_encode(keys)
    uniq = np.array(enc.dictionary.to_pylist(), dtype=object)
    if all(k.isdigit() for k in uniq):
        order = np.argsort(uniq.astype(np.int64), kind="stable")
    else:
        order = np.argsort(uniq.astype(str), kind="stable")
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return uniq[order], rank[enc.indices.to_numpy(zero_copy_only=False)]


def _kcore(u: np.ndarray, i: np.ndarray, k: int) -> tuple[np.ndarray, int]:
    """Boolean keep-mask of the iterated k-core and the number of rounds to the fixed point."""
    keep = np.ones(len(u), dtype=bool)
    rounds = 0
    while True:
        rounds += 1
        du = np.bincount(u[keep], minlength=u.max() + 1)
        di = np.bincount(i[keep], minlength=i.max() + 1)
        new = keep & (du[u] >= k) & (di[i] >= k)
        if new.sum() == keep.sum():
            return new, rounds
        keep = new


def _item_metadata(raw: RawData, strict: bool) -> tuple[dict[str, int], int, int]:
    """Map item key -> row in the items file (the first row of a repeated key); count (or, strict,
    reject) missing titles and repeated keys."""
    index: dict[str, int] = {}
    repeated = 0
    for j, key in enumerate(raw.item_keys):
        if str(key) in index:
            repeated += 1
            if strict:
                raise DataError(f"item id {key!r} is repeated (first at row {index[str(key)] + 1}; strict mode)",
                                path=raw.items_path, row=j + 1, field="item_id")  # fmt: skip
            continue
        index[str(key)] = j
    if repeated:
        log.warning(
            "%s: %d rows repeat an item id; the first row of each id is kept", raw.items_path, repeated
        )
    missing = [j for j, t in enumerate(raw.titles) if not str(t).strip()]
    if strict and missing:
        raise DataError(
            "item has no title (strict mode)", path=raw.items_path, row=missing[0] + 1, field="title"
        )
    return index, len(missing), repeated


def build_catalog(raw: RawData, cfg: PrepareConfig) -> CatalogArrays:
    """Apply the processing steps in the module docstring to `raw`."""
    stats: dict = {"raw_interactions": len(raw.user_key)}
    meta_index, untitled, repeated = _item_metadata(raw, cfg.strict)
    stats["repeated_item_rows"] = repeated
    u_keys, u = _natural_unique(raw.user_key)
    i_keys, i = _natural_unique(raw.item_key)
    ts, row = raw.timestamp, raw.row

    # 2. exact duplicates: sort by (user, item, ts, row) and drop repeats after the first.
    order = np.lexsort((row, ts, i, u))
    dup = np.zeros(len(u), dtype=bool)
    same = (np.diff(u[order]) == 0) & (np.diff(i[order]) == 0) & (np.diff(ts[order]) == 0)
    dup[order[1:][same]] = True
    n_dup = int(dup.sum())
    if n_dup and cfg.strict:
        first = int(row[dup].min())
        raise DataError(
            "duplicate interaction (same user, item, timestamp) in strict mode",
            path=raw.inter_path,
            row=first,
        )
    stats["duplicates_dropped"] = n_dup
    keep = ~dup

    # 3. seeded user sampling, before k-core.
    if cfg.user_fraction < 1.0:
        rng = np.random.default_rng(cfg.seed)
        n_keep = max(1, round(cfg.user_fraction * len(u_keys)))
        chosen = np.zeros(len(u_keys), dtype=bool)
        chosen[rng.choice(len(u_keys), size=n_keep, replace=False)] = True
        keep &= chosen[u]
    stats["users_sampled"] = int(np.unique(u[keep]).size)

    # 4. iterated k-core.
    if cfg.kcore > 1 and keep.any():
        idx = np.flatnonzero(keep)
        core, rounds = _kcore(u[idx], i[idx], cfg.kcore)
        keep[:] = False
        keep[idx[core]] = True
        stats["kcore_rounds"] = rounds
    if not keep.any():
        raise DataError(
            f"no users left after filtering (kcore={cfg.kcore}, user_fraction={cfg.user_fraction}); "
            "lower --kcore or raise --user-fraction",
            path=raw.inter_path,
        )
    u, i, ts, row = u[keep], i[keep], ts[keep], row[keep]

    # 5. chronological order with a stable tie-break.
    order = np.lexsort((row, ts, u))
    u, i, ts = u[order], i[order], ts[order]

    # 6. dense 1-based ids over what survived.
    used_u, u = np.unique(u, return_inverse=True)
    used_i, i = np.unique(i, return_inverse=True)
    u, i = u.astype(np.int64) + 1, i.astype(np.int64) + 1
    item_keys = i_keys[used_i]
    titles, descs, placeholders = [], [], 0
    for key in item_keys:
        j = meta_index.get(str(key))
        title = str(raw.titles[j]).strip() if j is not None else ""
        if not title:
            if cfg.strict:
                raise DataError(
                    f"item '{key}' has no title in the items file (strict mode)",
                    path=raw.items_path,
                    field="title",
                )
            title, placeholders = PLACEHOLDER_TITLE.format(key=key), placeholders + 1
        titles.append(title)
        descs.append(str(raw.descriptions[j]) if j is not None else "")
    stats.update(untitled_in_items_file=untitled, placeholder_titles=placeholders)
    if placeholders and placeholders == len(titles):
        log.warning("every item title is a placeholder ('Item <key>'): the LLM reads no titles; check the "
                    "items file %s (its keys must match the interactions' item ids)", raw.items_path)  # fmt: skip

    # 7. leave-last-out split.
    return CatalogArrays(
        user=u,
        item=i,
        timestamp=ts,
        split=_leave_last_out(u),
        user_keys=np.concatenate([[""], u_keys[used_u]]).astype(object),
        item_keys=np.concatenate([[""], item_keys]).astype(object),
        titles=np.array(["", *titles], dtype=object),
        descriptions=np.array(["", *descs], dtype=object),
        stats=stats,
    )


def _leave_last_out(user_sorted: np.ndarray) -> np.ndarray:
    """[I] split codes for interactions sorted by user then time: 2 last, 1 second to last, 0 rest.

    Users with fewer than 3 interactions keep everything in train, as SASRec's data_partition.
    """
    n = len(user_sorted)
    starts = np.flatnonzero(np.r_[True, user_sorted[1:] != user_sorted[:-1]])
    counts = np.diff(np.r_[starts, n])
    pos_from_end = np.repeat(starts + counts, counts) - np.arange(n) - 1  # 0 for each user's last
    split = np.zeros(n, dtype=np.int8)
    long_user = np.repeat(counts >= 3, counts)
    split[long_user & (pos_from_end == 0)] = 2
    split[long_user & (pos_from_end == 1)] = 1
    return split


def write_catalog(cat: CatalogArrays, out: Path) -> dict[str, dict]:
    """Write items/users/interactions parquet (zstd) into `out`; return {file: {rows, sha256}}."""
    tables = {
        "items.parquet": pa.table(
            {
                "item_id": np.arange(1, len(cat.item_keys), dtype=np.int64),
                "item_key": pa.array(cat.item_keys[1:].tolist(), pa.string()),
                "title": pa.array(cat.titles[1:].tolist(), pa.string()),
                "description": pa.array(cat.descriptions[1:].tolist(), pa.string()),
            }
        ),
        "users.parquet": pa.table(
            {
                "user_id": np.arange(1, len(cat.user_keys), dtype=np.int64),
                "user_key": pa.array(cat.user_keys[1:].tolist(), pa.string()),
            }
        ),
        "interactions.parquet": pa.table(
            {
                "user_id": cat.user,
                "item_id": cat.item,
                "timestamp": cat.timestamp,
                "split": pa.DictionaryArray.from_arrays(pa.array(cat.split), pa.array(list(SPLITS))),
            }
        ),
    }
    files = {}
    for name, table in tables.items():
        pq.write_table(table, out / name, compression="zstd")
        files[name] = {"rows": table.num_rows, "sha256": sha256_file(out / name)}
    return files


class Catalog:
    """A prepared data directory: parquet catalog + manifest (+ shards, read by the loader). `root` is
    a local path or a URI (staged locally by `dist_srec.storage.local_data`; `identity()` names the URI)."""

    def __init__(self, root: str | Path):
        self.root = local_data(root)
        manifest = self.root / "manifest.json"
        if not manifest.is_file():
            raise DataError("not a prepared data directory (run `dist-srec prepare`)", path=manifest)
        self.manifest: dict = read_json(manifest)
        self.manifest_sha256 = sha256_file(manifest)
        self.num_users: int = int(self.manifest["counts"]["num_users"])
        self.num_items: int = int(self.manifest["counts"]["num_items"])

    @classmethod
    def load(cls, root: str | Path) -> Catalog:
        return cls(root)

    @cached_property
    def content_sha256(self) -> str:
        """sha256 over the catalog files' sha256 (items, users, interactions with their splits): what
        the catalog holds, not when or where it was prepared (the manifest also records the time). The
        identity that checkpoints record and compare."""
        files = self.manifest.get("files", {})
        missing = [f for f in CATALOG_FILES if f not in files]
        if missing:
            raise DataError(f"the manifest lacks the hashes of {missing}", path=self.root / "manifest.json")
        parts = {f: files[f]["sha256"] for f in CATALOG_FILES}
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()

    def identity(self) -> dict[str, Any]:
        """The catalog block a checkpoint's config.json records (`catalog_mismatch` compares two)."""
        return {"data": data_name(self.root), "num_items": self.num_items, "num_users": self.num_users,
                "content_sha256": self.content_sha256, "manifest_sha256": self.manifest_sha256}  # fmt: skip

    def _table(self, name: str, columns: list[str] | None = None) -> pa.Table:
        path = self.root / name
        if not path.is_file():
            raise DataError("catalog file is missing", path=path)
        return pq.read_table(path, columns=columns)

    @cached_property
    def items(self) -> pa.Table:
        return self._table("items.parquet")

    @cached_property
    def titles(self) -> list[str]:
        """[N+1] titles indexed by item id; index 0 is ""."""
        return ["", *self.items["title"].to_pylist()]

    @cached_property
    def user_keys(self) -> list[str]:
        """[U+1] original user keys indexed by user id; index 0 is ""."""
        return ["", *self._table("users.parquet", ["user_key"])["user_key"].to_pylist()]

    def interactions(self, columns: list[str] | None = None) -> pa.Table:
        return self._table("interactions.parquet", columns)

    def user_items(self) -> tuple[np.ndarray, np.ndarray]:
        """CSR (indptr [U+2], indices [I]) of all items each user interacted with, in any split.

        Row u is user id u; row 0 is empty. Indices keep chronological order within a row.
        """
        t = self.interactions(["user_id", "item_id"])
        user = t["user_id"].to_numpy()
        indptr = np.zeros(self.num_users + 2, dtype=np.int64)
        np.cumsum(np.bincount(user, minlength=self.num_users + 1), out=indptr[1:])
        return indptr, t["item_id"].to_numpy().astype(np.int64)


def catalog_mismatch(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> str | None:
    """None if the catalog block `recorded` in a checkpoint names the same catalog as `current`
    (`Catalog.identity()`), else a sentence naming both. Blocks written before content ids existed
    carry only the manifest's sha256, which matches only the very same prepared directory."""
    where = lambda b: b.get("data") or b.get("dataset") or "?"  # noqa: E731
    if recorded.get("num_items") is not None and recorded["num_items"] != current["num_items"]:
        return (f"it was trained on a catalog of {recorded['num_items']} items, but this catalog has "
                f"{current['num_items']} (trained on {where(recorded)}, this is {where(current)})")  # fmt: skip
    want = recorded.get("content_sha256")
    key = "content_sha256" if want is not None else "manifest_sha256"
    want = recorded.get(key)
    if want == current[key]:
        return None
    return (f"it was trained on catalog {where(recorded)} ({key} {str(want)[:12]}), this catalog is "
            f"{where(current)} ({key} {current[key][:12]}): the same item ids would mean other items")  # fmt: skip


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
