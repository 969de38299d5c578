"""One worker of catalog encoding and batch recommendation: the model loaded once, then shards and
user parts on demand. The local path runs one in-process; under Ray each actor is one of these
(`dist_srec.cluster.ray_catalog`).

A user part is written as parquet (`user_id`, `rank`, `item_id`, `score`; original keys as strings):

    U = encode_users(histories)                          [P, d]   in batches of `batch_users`
    for each block of `topk_users` users:
        scores, ids = chunked_topk(U_block, store chunks, k, exclude=the users' whole histories)

A user's history is every interaction in the data, oldest first (as `dist-srec recommend --user`); the
prompt shows its last `max_history_items`, and all of it is excluded from the ranking. A user with
fewer than k admissible items gets fewer rows.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import Tensor

from dist_srec.data.item_vectors import StoreIdentity, VectorStore, heads_key
from dist_srec.errors import CheckpointError, ConfigError
from dist_srec.eval.ranking import Exclusion, chunked_topk
from dist_srec.inference.encode import encode_shards
from dist_srec.inference.load import load_srec
from dist_srec.io import atomic_path
from dist_srec.parallel.context import resolve_device


@dataclass(kw_only=True)
class ScanConfig:
    """How users are encoded and ranked against the store."""

    batch_users: int = 16
    """Users per LLM forward."""
    topk_users: int = 256
    """Users per scan of the catalog (scores are [topk_users, chunk_items] fp32 at a time)."""
    chunk_items: int = 65536
    """Items per chunk read from the store."""
    batch_items: int = 256
    """Items per LLM forward when encoding the catalog."""
    device: str = "auto"
    """Where the model and the scan run: `auto` is the GPU when there is one (as `train` does), else the CPU."""

    def __post_init__(self) -> None:
        for name in ("batch_users", "topk_users", "chunk_items", "batch_items"):
            if getattr(self, name) < 1:
                raise ConfigError(f"config field '{name}': must be >= 1, got {getattr(self, name)}")


class History:
    """Every user's interactions (item ids, unix times), oldest first, as CSR rows indexed by user id."""

    def __init__(self, catalog: Any):
        t = catalog.interactions(["user_id", "item_id", "timestamp"])  # sorted by (user, time, row)
        user = t["user_id"].to_numpy()
        self.indptr = np.zeros(catalog.num_users + 2, dtype=np.int64)
        np.cumsum(np.bincount(user, minlength=catalog.num_users + 1), out=self.indptr[1:])
        self.items = t["item_id"].to_numpy().astype(np.int64)
        self.times = t["timestamp"].to_numpy().astype(np.int64)

    def batch(self, users: np.ndarray, last: int) -> dict[str, Tensor]:
        """Left-padded `history` / `history_ts` [B, L] of the users' last `last` interactions."""
        lo, hi = self.indptr[users], self.indptr[users + 1]
        lo = np.maximum(lo, hi - last)
        width = int((hi - lo).max()) if len(users) else 0
        hist = np.zeros((len(users), width), np.int64)
        ts = np.zeros((len(users), width), np.int64)
        for r, (a, b) in enumerate(zip(lo, hi)):
            hist[r, width - (b - a) :], ts[r, width - (b - a) :] = self.items[a:b], self.times[a:b]
        return {"history": torch.from_numpy(hist), "history_ts": torch.from_numpy(ts)}

    def exclusion(self, users: np.ndarray, device: torch.device | str) -> Exclusion:
        """Every item each user interacted with (row r = users[r])."""
        lo, hi = self.indptr[users], self.indptr[users + 1]
        rows = torch.repeat_interleave(torch.arange(len(users)), torch.from_numpy(hi - lo))
        ids = torch.from_numpy(
            np.concatenate([self.items[a:b] for a, b in zip(lo, hi)] or [np.zeros(0, np.int64)])
        )
        ex = Exclusion.from_pairs(rows, ids)
        return Exclusion(rows=ex.rows.to(device), ids=ex.ids.to(device))


class CatalogWorker:
    """The model of `ckpt` (on `scan.device`), its catalog and user histories; methods are the units
    of work a driver hands out: `encode(shards)` and `recommend_part(part)`."""

    def __init__(self, ckpt: str, data: str | None, identity: StoreIdentity, scan: ScanConfig):
        scan = dataclasses.replace(scan, device=str(resolve_device(scan.device)))
        self.model, self.conf, self.cat = load_srec(ckpt, scan.device, data)
        key = heads_key(self.model.trainable_state_dict(), self.conf["llm"]["content_hash"])
        if key != identity.heads_key:
            raise CheckpointError(f"{ckpt}: heads key {key} differs from the driver's {identity.heads_key}")
        self.identity, self.scan = identity, scan
        self._history: History | None = None
        self._store: VectorStore | None = None
        self._item_keys: pa.Array | None = None
        self._user_keys: np.ndarray | None = None

    def encode(self, root: str, manifest: dict[str, Any], shards: list[int], progress: bool = False) -> int:
        """Encode and write the given store shards; returns the items encoded."""
        return encode_shards(self.model.encode_items, root, manifest, shards, self.scan.batch_items, progress)

    @torch.no_grad()
    def user_vectors(self, users: np.ndarray) -> Tensor:
        """[P, d] fp32 user vectors of user ids [P]."""
        self._history = self._history or History(self.cat)
        last = self.model.cfg.prompts.max_history_items
        out = [self.model.encode_users(self._history.batch(users[i : i + self.scan.batch_users], last)).float()
               for i in range(0, len(users), self.scan.batch_users)]  # fmt: skip
        return torch.cat(out) if out else torch.zeros(0, self.model.cfg.out_dim)

    @torch.no_grad()
    def topk(self, user_vecs: Tensor, users: np.ndarray, k: int, store_root: str) -> tuple[Tensor, Tensor]:
        """scores [P, k], item ids [P, k] (-1 where fewer than k items are admissible), history excluded."""
        if self._store is None or self._store.root != Path(store_root):
            self._store = VectorStore(store_root, self.identity)
        self._history = self._history or History(self.cat)
        dev, step = self.scan.device, self.scan.topk_users
        parts = []
        for i in range(0, len(users), step):
            u = user_vecs[i : i + step].to(dev)
            chunks = self._store.iter_chunks(self.scan.chunk_items, dev)
            parts.append(
                chunked_topk(u, chunks, k, exclude=self._history.exclusion(users[i : i + step], dev))
            )
        return torch.cat([p[0] for p in parts]).cpu(), torch.cat([p[1] for p in parts]).cpu()

    def recommend_part(self, path: str, users: np.ndarray, k: int, store_root: str) -> int:
        """Rank the users of one part and write its parquet file atomically; returns its row count."""
        users = np.asarray(users, dtype=np.int64)
        scores, ids = self.topk(self.user_vectors(users), users, k, store_root)
        table = self.part_table(users, scores, ids)
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp, compression="zstd")
        return table.num_rows

    def part_table(self, users: np.ndarray, scores: Tensor, ids: Tensor) -> pa.Table:
        """Rows (user key, 1-based rank, item key, score) for every admissible (user, rank)."""
        if self._item_keys is None or self._user_keys is None:
            self._item_keys = self.cat.items["item_key"].combine_chunks()
            self._user_keys = np.asarray(self.cat.user_keys, dtype=object)
        k = ids.shape[1]
        keep = (ids >= 1).numpy().reshape(-1)
        row_user = np.repeat(users, k)[keep]
        return pa.table({
            "user_id": pa.array(self._user_keys[row_user].tolist(), pa.string()),
            "rank": pa.array(np.tile(np.arange(1, k + 1, dtype=np.int32), len(users))[keep]),
            "item_id": self._item_keys.take(pa.array(ids.numpy().reshape(-1)[keep] - 1)),
            "score": pa.array(scores.numpy().reshape(-1)[keep].astype(np.float32)),
        })  # fmt: skip
