"""A sharded on-disk store of item vectors [N, d], read chunk by chunk through mmap.

Layout of a store directory:

    manifest.json          identity, layout, one entry per shard; `complete` once every shard is written
    shard-000000.npy       rows for item ids 1 .. R           ([R, d], the store's dtype)
    shard-000001.npy       rows for item ids R+1 .. 2R        (the last shard may be shorter)

Shard s holds item ids `1 + s*R .. min((s+1)*R, N)` (R = `shard_rows`); id 0 (padding) is never stored.
bf16 has no numpy dtype: bf16 shards are stored as uint16 bit patterns and viewed back as bf16.

The identity ties a store to what made the vectors: the `heads_key` (sha256 of the trained heads'
tensors and the LM hash), the LM content hash, the teacher's sha256 (its item embeddings enter every item
prompt), the sha256 of the model config (prompt templates, title budget, head shapes), the catalog's
content sha256, the item count and the vector dim (`vectors_identity`). It does not name a checkpoint file:
training's validation rounds write the store of the heads they evaluate before any checkpoint of them
exists, and evaluating or serving that checkpoint later finds the same store. This is the one on-disk
format of item vectors: validation, `dist-srec evaluate`/`recommend` (fp32, `store_dir`) and the batch
jobs (any dtype) all use it. A reader passes the identity it expects and any difference is an error naming the field
and the manifest file. Every shard and the manifest are written atomically (`dist_srec.io`), so a file
that exists is whole; a shorter file (copied or synced partially) is reported with its expected and
actual sizes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.lib.format as npy
import torch
from torch import Tensor

from dist_srec.errors import ConfigError, DataError
from dist_srec.io import atomic_path, read_json, sha256_file, write_json_atomic

STORE_FORMAT = "dist-srec/item-vectors"
MANIFEST = "manifest.json"
DTYPES: dict[str, tuple[torch.dtype, np.dtype]] = {
    "float32": (torch.float32, np.dtype(np.float32)),
    "float16": (torch.float16, np.dtype(np.float16)),
    "bfloat16": (torch.bfloat16, np.dtype(np.uint16)),  # bit patterns; viewed back as bf16
}


@dataclass(frozen=True, kw_only=True)
class StoreIdentity:
    """What made the vectors: a store is only valid for the same checkpoint, LM and catalog."""

    heads_key: str
    lm_content_hash: str
    teacher_sha256: str
    model_config_sha256: str
    catalog_sha256: str
    num_items: int
    dim: int

    def __post_init__(self) -> None:
        if self.num_items < 1 or self.dim < 1:
            raise ConfigError(
                f"store identity: num_items and dim must be >= 1, got {self.num_items}, {self.dim}"
            )


@dataclass(frozen=True, kw_only=True)
class StoreLayout:
    """How the vectors are laid out on disk."""

    dtype: str = "float16"
    """float16, bfloat16 or float32."""
    shard_rows: int = 65536
    """Items per shard file (the unit of resumption and of work split)."""

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ConfigError(f"config field 'dtype': must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.shard_rows < 1:
            raise ConfigError(f"config field 'shard_rows': must be >= 1, got {self.shard_rows}")


TABLE_LAYOUT = StoreLayout(dtype="float32")
"""The stores read whole as an fp32 table: validation writes them, evaluation and `recommend` read them."""


def shard_ranges(num_items: int, shard_rows: int) -> list[tuple[int, int]]:
    """(first_id, rows) of every shard: ids 1..N cut into runs of `shard_rows`."""
    return [(lo, min(shard_rows, num_items + 1 - lo)) for lo in range(1, num_items + 1, shard_rows)]


def shard_file(index: int) -> str:
    return f"shard-{index:06d}.npy"


def assign_shards(shards: list[int] | range, rank: int, world_size: int) -> list[int]:
    """The shards of `shards` that worker `rank` of `world_size` handles: every world_size-th one, so
    the workers' sets are disjoint, cover `shards`, and differ in size by at most one."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"rank {rank} is not in a world of size {world_size}")
    return list(shards)[rank::world_size]


def _header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset) of an .npy file; DataError if the header is unreadable."""
    try:
        with open(path, "rb") as f:
            version = npy.read_magic(f)
            read = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
            shape, _, dtype = read(f)
            return tuple(shape), np.dtype(dtype), f.tell()
    except (OSError, ValueError) as e:
        raise DataError(f"unreadable vector shard ({e})", path=path) from None


def shard_expected_bytes(offset: int, rows: int, dim: int, np_dtype: np.dtype) -> int:
    return offset + rows * dim * np_dtype.itemsize


def check_shard(path: Path, rows: int, dim: int, dtype: str) -> int:
    """Raise DataError unless `path` is a whole [rows, dim] shard of `dtype`; returns its data offset."""
    if not path.is_file():
        raise DataError("vector shard is missing", path=path)
    shape, np_dtype, offset = _header(path)
    want = DTYPES[dtype][1]
    if shape != (rows, dim) or np_dtype != want:
        raise DataError(
            f"vector shard holds {np_dtype}{list(shape)}, expected {want}[{rows}, {dim}]", path=path
        )
    expected, actual = shard_expected_bytes(offset, rows, dim, np_dtype), os.path.getsize(path)
    if actual != expected:
        raise DataError(f"truncated vector shard: expected {expected} bytes, found {actual}", path=path)
    return offset


def write_shard(path: Path, vecs: Tensor, dtype: str) -> None:
    """Write [rows, d] vectors as one .npy shard in `dtype`, atomically."""
    t = vecs.detach().to("cpu", DTYPES[dtype][0]).contiguous()
    arr = t.view(torch.uint16).numpy() if dtype == "bfloat16" else t.numpy()
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, arr)


def new_manifest(identity: StoreIdentity, layout: StoreLayout) -> dict[str, Any]:
    """The manifest of an unfinished store (shard entries without size and sha256 yet)."""
    shards = [
        {"file": shard_file(s), "first_id": lo, "rows": rows}
        for s, (lo, rows) in enumerate(shard_ranges(identity.num_items, layout.shard_rows))
    ]
    return {"format": STORE_FORMAT, "identity": asdict(identity), "layout": asdict(layout), "shards": shards,
            "complete": False}  # fmt: skip


def check_identity(manifest: Mapping[str, Any], expected: StoreIdentity, path: Path) -> None:
    """DataError naming the first identity field of `manifest` that differs from `expected`."""
    if manifest.get("format") != STORE_FORMAT:
        raise DataError(f"not an item-vector store (format {manifest.get('format')!r})", path=path)
    got = manifest.get("identity", {})
    for name, want in asdict(expected).items():
        if got.get(name) != want:
            raise DataError(
                f"the vectors were made by another checkpoint or catalog: {got.get(name)!r} != expected "
                f"{want!r}", path=path, field=f"identity.{name}",
            )  # fmt: skip


def finalize(root: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Check every shard, record its size and sha256, mark the manifest complete and write it."""
    dim, dtype = manifest["identity"]["dim"], manifest["layout"]["dtype"]
    for entry in manifest["shards"]:
        path = root / entry["file"]
        check_shard(path, entry["rows"], dim, dtype)
        entry["bytes"], entry["sha256"] = os.path.getsize(path), sha256_file(path)
    manifest = {**manifest, "complete": True}
    write_json_atomic(root / MANIFEST, manifest)
    return manifest


class VectorStore:
    """A finished store, opened for reading. Chunks are mmapped per chunk and copied, so a scan's
    memory is O(chunk_size * d), whatever N."""

    def __init__(self, root: str | Path, expected: StoreIdentity | None = None, verify_sha: bool = False):
        self.root = Path(root)
        path = self.root / MANIFEST
        if not path.is_file():
            raise DataError("not an item-vector store (no manifest)", path=path)
        self.manifest: dict[str, Any] = read_json(path)
        if expected is not None:
            check_identity(self.manifest, expected, path)
        if not self.manifest.get("complete"):
            raise DataError("the store is unfinished (encoding was interrupted; run it again)", path=path)
        ident = self.manifest["identity"]
        self.num_items, self.dim = int(ident["num_items"]), int(ident["dim"])
        self.dtype: str = self.manifest["layout"]["dtype"]
        self.shard_rows: int = int(self.manifest["layout"]["shard_rows"])
        self._offsets = [self._check(e, verify_sha) for e in self.manifest["shards"]]

    def _check(self, entry: Mapping[str, Any], verify_sha: bool) -> int:
        path = self.root / entry["file"]
        actual = os.path.getsize(path) if path.is_file() else None
        if actual is not None and actual != entry["bytes"]:
            raise DataError(
                f"truncated vector shard: expected {entry['bytes']} bytes, found {actual}", path=path
            )
        offset = check_shard(path, entry["rows"], self.dim, self.dtype)
        if verify_sha and sha256_file(path) != entry["sha256"]:
            raise DataError("vector shard does not match its sha256 in the manifest", path=path)
        return offset

    def _read(self, shard: int, lo: int, hi: int) -> Tensor:
        """Rows lo..hi-1 of a shard as a [hi-lo, d] tensor of the store's dtype (a copy)."""
        np_dtype = DTYPES[self.dtype][1]
        offset = self._offsets[shard] + lo * self.dim * np_dtype.itemsize
        mm = np.memmap(self.root / self.manifest["shards"][shard]["file"], dtype=np_dtype, mode="r",
                       offset=offset, shape=(hi - lo, self.dim))  # fmt: skip
        t = torch.from_numpy(np.array(mm))
        del mm  # unmap now: the scan's resident set stays one chunk
        return t.view(torch.bfloat16) if self.dtype == "bfloat16" else t

    def iter_chunks(
        self, chunk_size: int = 65536, device: torch.device | str | None = None
    ) -> Iterator[tuple[int, Tensor]]:
        """`(first_id, vecs [C, d])` chunks over ids 1..N in order (C <= chunk_size; chunks do not
        straddle shards), ready for `chunked_topk` / `chunked_target_rank`."""
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        for s, entry in enumerate(self.manifest["shards"]):
            for lo in range(0, entry["rows"], chunk_size):
                vecs = self._read(s, lo, min(lo + chunk_size, entry["rows"]))
                yield entry["first_id"] + lo, vecs if device is None else vecs.to(device)

    def vectors(self, ids: Tensor) -> Tensor:
        """[B, d] vectors of item ids [B] (1..N), e.g. the targets' for `chunked_target_rank`."""
        flat = ids.reshape(-1).tolist()
        if any(not 1 <= i <= self.num_items for i in flat):
            raise ValueError(f"item ids must be in 1..{self.num_items}")
        rows = [self._read((i - 1) // self.shard_rows, (i - 1) % self.shard_rows, (i - 1) % self.shard_rows + 1)
                for i in flat]  # fmt: skip
        return torch.cat(rows) if rows else torch.zeros(0, self.dim)

    def table(self) -> Tensor:
        """The whole store as an [N+1, d] fp32 table, row 0 (padding) zeros: for catalogs that fit."""
        out = torch.zeros(self.num_items + 1, self.dim)
        for first, vecs in self.iter_chunks():
            out[first : first + len(vecs)] = vecs.float()
        return out


def heads_key(heads: Mapping[str, Tensor], lm_hash: str) -> str:
    """sha256 over the trained heads' tensors (name, fp32 bytes, in name order) and the LM hash."""
    h = hashlib.sha256(lm_hash.encode())
    for name, t in sorted(heads.items()):
        h.update(name.encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:24]


def vectors_identity(
    config: Mapping[str, Any], heads: Mapping[str, Tensor], *, catalog_sha256: str, num_items: int
) -> StoreIdentity:
    """The identity of the item vectors that an LLM-SRec checkpoint's config.json (`config`) and heads
    make for a catalog (its `Catalog.content_sha256` and item count)."""
    lm_hash = config["llm"]["content_hash"]
    model = json.dumps(config["model"], sort_keys=True, default=str)
    return StoreIdentity(
        heads_key=heads_key(heads, lm_hash), lm_content_hash=lm_hash, teacher_sha256=config["teacher"]["sha256"],
        model_config_sha256=hashlib.sha256(model.encode()).hexdigest(), catalog_sha256=catalog_sha256,
        num_items=num_items, dim=int(config["model"]["out_dim"]),
    )  # fmt: skip


def store_dir(run_dir: str | Path, identity: StoreIdentity, dtype: str) -> Path:
    """`<run dir>/cache/vectors-<heads key>-<dtype>`: where a run's stores live by default."""
    return Path(run_dir) / "cache" / f"vectors-{identity.heads_key}-{dtype}"


def write_table(root: str | Path, identity: StoreIdentity, table: Tensor, layout: StoreLayout) -> VectorStore:
    """Write an [N+1, d] table (row 0 ignored) as a complete store at `root`, atomically, and open it."""
    if tuple(table.shape) != (identity.num_items + 1, identity.dim):
        raise ValueError(f"table shape {tuple(table.shape)} != ({identity.num_items + 1}, {identity.dim})")
    with atomic_path(root) as tmp:
        tmp.mkdir(parents=True)
        manifest = new_manifest(identity, layout)
        for entry in manifest["shards"]:
            lo = entry["first_id"]
            write_shard(tmp / entry["file"], table[lo : lo + entry["rows"]], layout.dtype)
        finalize(tmp, manifest)
    return VectorStore(root, identity)


def open_complete(root: str | Path, identity: StoreIdentity) -> VectorStore | None:
    """The store at `root` if it is complete and has this identity; None if there is none or it is
    unfinished. A store of another identity is an error (`DataError` naming the field)."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        return None
    manifest = read_json(path)
    check_identity(manifest, identity, path)
    return VectorStore(root, identity) if manifest.get("complete") else None


def prune_stores(cache_dir: str | Path, dtype: str, keep: int) -> None:
    """Delete all but the `keep` newest `vectors-*-<dtype>` stores of a run's cache folder."""
    stores = sorted(Path(cache_dir).glob(f"vectors-*-{dtype}"), key=lambda p: p.stat().st_mtime_ns)
    for old in stores[: max(0, len(stores) - keep)]:
        shutil.rmtree(old, ignore_errors=True)
