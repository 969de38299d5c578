"""Per-rank streaming of webdataset shards with equal batch counts and a resumable cursor.

The plan of an epoch (pure function of seed, epoch, world size and loader workers):
1. the split's shards are shuffled (seeded by `seed + epoch`) into one global sample order of
   length S, using the per-shard counts in the manifest;
2. rank r takes the contiguous range [r*n, (r+1)*n) of that order, with n = S // W ('drop': the
   < W samples left over are skipped this epoch, different ones each epoch under shuffle) or
   n = ceil(S / W) ('pad': positions past S repeat earlier samples with mask=False, so evaluation
   sees every sample exactly once);
3. the rank's range is cut into K contiguous worker ranges (K = max(1, num_workers)); each worker
   streams only the shards its range overlaps, shuffles within a seeded buffer, and yields batches.

Every rank therefore gets the same number of batches, sum_k ceil(n_k / B), and collectives never
hang. Ranks are disjoint, and together cover the epoch's samples.

The cursor is the per-worker count of samples already handed to the consumer. Resume replays the
deterministic worker stream and skips that many, so nothing is skipped or repeated; batches that a
DataLoader prefetched but the consumer never received are not counted.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import math
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from webdataset.tariterators import group_by_keys, tar_file_iterator

from dist_srec.config import LoaderConfig
from dist_srec.data.batch import SAMPLE_KEYS, collate
from dist_srec.errors import DataError
from dist_srec.io import read_json, sha256_file
from dist_srec.storage import exists, join, local_data, read_bytes, remote_source

# Shards this process has checked (path, size, mtime, the manifest's sha256 and count): the pre-flight
# check, the training loader and every validation round's loaders read the same shards, and a file
# rewritten since (a new size or mtime) or a manifest that says otherwise is checked again.
_VERIFIED: set[tuple[str, int, int, str, int]] = set()


def plan_ranges(
    total: int, rank: int, world_size: int, num_workers: int, remainder: str
) -> list[tuple[int, int]]:
    """Per-worker [start, stop) positions of one rank in the epoch's global order (may exceed total in pad mode)."""
    n = total // world_size if remainder == "drop" else math.ceil(total / world_size)
    start = rank * n
    k = max(1, num_workers)
    bounds = [start + (n * j) // k for j in range(k + 1)]
    return list(itertools.pairwise(bounds))


class _WorkerStream(torch.utils.data.IterableDataset):
    """Yields (worker index, sample count, batch) for one rank; see the module docstring."""

    def __init__(self, loader: ShardLoader, epoch: int, skip: list[int]):
        super().__init__()
        self.loader, self.epoch, self.skip = loader, epoch, list(skip)

    def __iter__(self) -> Iterator[tuple[int, int, dict]]:
        info = torch.utils.data.get_worker_info()
        workers = range(self.loader.num_streams) if info is None else [info.id]
        for k in workers:  # with no DataLoader workers, the K streams run one after another
            yield from self._stream(k)

    def _stream(self, k: int) -> Iterator[tuple[int, int, dict]]:
        ld = self.loader
        start, stop = ld.ranges()[k]
        samples = ld.samples_in_range(self.epoch, start, stop)
        if ld.cfg.shuffle:
            rng = np.random.default_rng([ld.cfg.seed, self.epoch, ld.rank, k])
            samples = _buffer_shuffle(samples, ld.cfg.shuffle_buffer, rng)
        buf: list[tuple[dict, bool]] = []
        for i, item in enumerate(samples):
            if i < self.skip[k]:
                continue
            buf.append(item)
            if len(buf) == ld.cfg.batch_size:
                yield k, len(buf), collate([s for s, _ in buf], ld.cfg.max_len, [m for _, m in buf])
                buf = []
        if buf:
            yield k, len(buf), collate([s for s, _ in buf], ld.cfg.max_len, [m for _, m in buf])


def _buffer_shuffle(items: Iterator, size: int, rng: np.random.Generator) -> Iterator:
    buf: list = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        j = int(rng.integers(len(buf)))
        buf[j], item = item, buf[j]
        yield item
    rng.shuffle(buf)
    yield from buf


class ShardLoader:
    """Iterate the batches of one split for one rank.

    Args:
        data_dir: a prepared data directory (manifest.json + shards/), a local path or a URI; from a
            URI the shards stream into memory one at a time (`dist_srec.storage`), and each is checked
            against the manifest's sha256 and count before any of its samples is used.
        split: "train", "valid" or "test".
        cfg: batch size, history length L, workers, shuffle, remainder policy.
        rank, world_size: this process's place among the data-parallel ranks.

    Yields batch dicts as in `dist_srec.data.batch` ([B] user/target/mask, [B, L] history).
    """

    def __init__(
        self, data_dir: str | Path, split: str, cfg: LoaderConfig, rank: int = 0, world_size: int = 1
    ):
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is outside world size {world_size}")
        self.root, self.split, self.cfg = local_data(data_dir), split, cfg
        self.remote = remote_source(self.root)
        self.rank, self.world_size = rank, world_size
        manifest = read_json(self.root / "manifest.json") if (self.root / "manifest.json").is_file() else None
        if manifest is None:
            raise DataError(
                "not a prepared data directory (run `dist-srec prepare`)", path=self.root / "manifest.json"
            )
        if split not in manifest["shards"]:
            raise DataError(
                f"split '{split}' not in manifest; have {sorted(manifest['shards'])}", path=self.root
            )
        self.shards: list[dict] = manifest["shards"][split]
        self.total = sum(int(s["count"]) for s in self.shards)
        self.num_streams = max(1, cfg.num_workers)
        per_rank = self.total // world_size if cfg.remainder == "drop" else math.ceil(self.total / world_size)
        if per_rank < self.num_streams:
            raise DataError(
                f"split '{split}' has {self.total} samples: too few for {world_size} ranks x "
                f"{self.num_streams} loader workers (each needs at least one); use fewer ranks or workers",
                path=self.root,
            )
        self.epoch = 0
        self._consumed = [0] * self.num_streams

    @classmethod
    def for_checks(cls, data_dir: str | Path, split: str) -> ShardLoader:
        """A loader of the whole split on one rank, for `verify()`."""
        return cls(data_dir, split, LoaderConfig(batch_size=1, max_len=1, shuffle=False))

    # ------------------------------------------------------------------ plan
    def ranges(self) -> list[tuple[int, int]]:
        return plan_ranges(self.total, self.rank, self.world_size, self.num_streams, self.cfg.remainder)

    def shard_order(self, epoch: int) -> list[int]:
        order = np.arange(len(self.shards))
        if self.cfg.shuffle:
            np.random.default_rng([self.cfg.seed, epoch]).shuffle(order)
        return order.tolist()

    def __len__(self) -> int:
        """Batches per epoch on this rank (the same on every rank)."""
        return sum(math.ceil((b - a) / self.cfg.batch_size) for a, b in self.ranges())

    @property
    def samples_per_epoch(self) -> int:
        return sum(b - a for a, b in self.ranges())

    def samples_in_range(self, epoch: int, start: int, stop: int) -> Iterator[tuple[dict, bool]]:
        """(sample, real) at global positions [start, stop) of the epoch's order; positions >= total are
        padding: they repeat samples from the start of the order with real=False."""
        real_stop = min(stop, self.total)
        if start < real_stop:
            yield from ((s, True) for s in self._read_positions(epoch, start, real_stop))
        p = max(start, self.total)
        while p < stop:  # padding wraps around the epoch's order
            lo = p % self.total
            hi = min(self.total, lo + stop - p)
            yield from ((s, False) for s in self._read_positions(epoch, lo, hi))
            p += hi - lo

    def _read_positions(self, epoch: int, start: int, stop: int) -> Iterator[dict]:
        offset = 0
        for j in self.shard_order(epoch):
            count = int(self.shards[j]["count"])
            lo, hi = max(start, offset), min(stop, offset + count)
            if lo < hi:
                for i, sample in enumerate(self._read_shard(self.shards[j])):
                    if i >= hi - offset:
                        break
                    if i >= lo - offset:
                        yield sample
            offset += count
            if offset >= stop:
                return

    def verify(self) -> None:
        """Check every shard of the split now (present, sha256, exact sample count), so that a bad shard
        is reported before training starts rather than when an epoch or a validation round reaches it.
        Shards streamed from a URI are checked for presence here (reading them all would be an epoch of
        downloads) and for sha256 and count as each one arrives."""
        for entry in self.shards:
            if self.remote is None:
                self._check_shard(entry)
            elif not exists(join(self.remote, entry["file"])):
                raise DataError("shard is missing", path=join(self.remote, entry["file"]))

    def _fetch_remote(self, entry: dict) -> tuple[str, bytes]:
        """(URI, bytes) of a streamed shard, checked like a local one before it is read."""
        uri = join(self.remote, entry["file"])
        data = read_bytes(uri)
        if self.cfg.verify_hashes:
            if hashlib.sha256(data).hexdigest() != entry["sha256"]:
                raise DataError("shard sha256 does not match the manifest (corrupt or truncated)", path=uri)
            n = count_samples(data, uri)
            if n != int(entry["count"]):
                raise DataError(f"shard holds {n} samples, the manifest says {entry['count']}", path=uri,
                                field="count")  # fmt: skip
        return uri, data

    def _check_shard(self, entry: dict) -> Path:
        path = self.root / entry["file"]
        if not path.is_file():
            raise DataError("shard is missing", path=path)
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, entry["sha256"], int(entry["count"]))
        if self.cfg.verify_hashes and key not in _VERIFIED:
            if sha256_file(path) != entry["sha256"]:
                raise DataError("shard sha256 does not match the manifest (corrupt or truncated)", path=path)
            # The read loop stops at the planned count, so a lowered count would go unnoticed there.
            n = count_samples(path)
            if n != int(entry["count"]):
                raise DataError(f"shard holds {n} samples, the manifest says {entry['count']}", path=path,
                                field="count")  # fmt: skip
            _VERIFIED.add(key)
        return path

    def _read_shard(self, entry: dict) -> Iterator[dict]:
        if self.remote is None:
            path: Path | str = self._check_shard(entry)
            opened: Any = wds.gopen(str(path), "rb")
        else:
            path, data = self._fetch_remote(entry)
            opened = io.BytesIO(data)
        n = 0
        try:
            with opened as stream:
                files = ({**f, "__url__": str(path)} for f in tar_file_iterator(stream))
                for raw in group_by_keys(files):
                    n += 1
                    yield _decode(raw, path, n)
        except (OSError, EOFError, ValueError, tarfile.TarError) as e:
            raise DataError(f"cannot read shard: {e}", path=path, row=n + 1) from e
        if n != int(entry["count"]):
            raise DataError(f"shard has {n} samples, manifest says {entry['count']} (truncated?)", path=path)

    # ------------------------------------------------------------------ iteration
    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its beginning (a new epoch clears the cursor)."""
        if epoch != self.epoch:
            self.epoch, self._consumed = epoch, [0] * self.num_streams

    def __iter__(self) -> Iterator[dict]:
        stream = _WorkerStream(self, self.epoch, self._consumed)
        if self.cfg.num_workers > 0:
            it: Any = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=self.cfg.num_workers)
        else:
            it = stream
        for k, n, batch in it:
            self._consumed[k] += n
            yield batch
        self.epoch, self._consumed = self.epoch + 1, [0] * self.num_streams

    def state_dict(self) -> dict:
        """The cursor: JSON-able; save it with the checkpoint of the last step taken."""
        return {
            "epoch": self.epoch,
            "consumed": list(self._consumed),
            "split": self.split,
            "rank": self.rank,
            "world_size": self.world_size,
            "num_streams": self.num_streams,
            "batch_size": self.cfg.batch_size,
            "seed": self.cfg.seed,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a cursor. Mid-epoch, the layout (ranks, workers, batch size, seed) must match."""
        mid_epoch = any(state["consumed"])
        if mid_epoch:
            for key, mine in (
                ("split", self.split),
                ("rank", self.rank),
                ("world_size", self.world_size),
                ("num_streams", self.num_streams),
                ("batch_size", self.cfg.batch_size),
                ("seed", self.cfg.seed),
            ):
                if state[key] != mine:
                    raise DataError(
                        f"cannot resume mid-epoch with {key}={mine}: the cursor was saved with "
                        f"{key}={state[key]}; resume with the same layout, or from an epoch boundary"
                    )
        self.epoch = int(state["epoch"])
        self._consumed = list(state["consumed"]) if mid_epoch else [0] * self.num_streams


def count_samples(shard: Path | bytes, name: object = None) -> int:
    """The number of samples in a webdataset tar (a file, or its bytes named `name` in errors): runs of
    members sharing a key (the name up to the first dot of its base name), read from the tar headers."""
    path = name if isinstance(shard, bytes) else shard
    try:
        with (
            tarfile.open(fileobj=io.BytesIO(shard)) if isinstance(shard, bytes) else tarfile.open(shard) as tf
        ):
            keys = [re.sub(r"\.[^/]*$", "", m.name) for m in tf if m.isfile()]
    except (OSError, EOFError, tarfile.TarError) as e:
        raise DataError(f"cannot read shard: {e}", path=path) from e
    return sum(1 for i, k in enumerate(keys) if i == 0 or k != keys[i - 1])


def _decode(raw: dict, path: Path, n: int) -> dict:
    if "json" not in raw:
        raise DataError(f"sample '{raw.get('__key__')}' has no .json member", path=path, row=n)
    try:
        sample = json.loads(raw["json"])
    except ValueError as e:
        raise DataError(f"sample '{raw.get('__key__')}' has malformed JSON: {e}", path=path, row=n) from e
    missing = [k for k in SAMPLE_KEYS if k not in sample]
    if missing:
        raise DataError(
            f"sample '{raw.get('__key__')}' lacks fields {missing}", path=path, row=n, field=missing[0]
        )
    return sample


def rank_loader(
    data: str | Path, split: str, batch_size: int, max_len: int, ctx: Any, **kw: Any
) -> ShardLoader:
    """The `ShardLoader` of one rank: `ctx` is anything with `rank` and `world_size` (a `TrainContext`);
    `kw` are further `LoaderConfig` fields (shuffle, seed, remainder, num_workers, ...)."""
    cfg = LoaderConfig(batch_size=batch_size, max_len=max_len, **kw)
    return ShardLoader(data, split, cfg, rank=ctx.rank, world_size=ctx.world_size)
