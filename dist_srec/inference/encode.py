"""Encoding the item catalog through the frozen LLM + item head into a sharded vector store, resumably.

    prepare_store(root, identity, layout)  -> manifest (new, or the existing one checked), pending shards
    encode_shards(encode_items, root, manifest, shards)        one worker's share: each shard encoded
                                                               in batches of `batch_items`, written atomically
    finalize(root, manifest)                                   sizes + sha256, `complete: true`

A shard file that exists was written whole (atomic rename), so an interrupted encoding resumes by
encoding only the shards whose file is missing (or fails its size check); nothing already written is
encoded again. Workers take disjoint shards (`assign_shards(pending, rank, world)`); only the caller
that created the store (the driver) writes the manifest. `encode_store` is the single-process path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from dist_srec.data.catalog import Catalog, catalog_mismatch
from dist_srec.data.item_vectors import (
    MANIFEST,
    StoreIdentity,
    StoreLayout,
    VectorStore,
    check_identity,
    check_shard,
    finalize,
    new_manifest,
    store_dir,
    vectors_identity,
    write_shard,
)
from dist_srec.errors import CheckpointError, ConfigError, DataError
from dist_srec.eval.tables import encode_id_range
from dist_srec.io import read_json, write_json_atomic
from dist_srec.storage import run_dir_of
from dist_srec.train.checkpoint import load_checkpoint
from dist_srec.train.srec_task import require_srec_format

EncodeItems = Callable[[Tensor], Tensor]  # item ids [n] -> vectors [n, d]


@dataclass(kw_only=True)
class EncodeConfig:
    """How to encode a catalog into a store."""

    layout: StoreLayout = field(default_factory=StoreLayout)
    batch_items: int = 256
    """Items per `encode_items` call."""
    progress: bool = True

    def __post_init__(self) -> None:
        if self.batch_items < 1:
            raise ConfigError(f"config field 'batch_items': must be >= 1, got {self.batch_items}")


def checkpoint_identity(ckpt: str | Path, data: str | Path | None = None) -> StoreIdentity:
    """The identity of the vectors an LLM-SRec checkpoint makes for its catalog (or `data`'s), read from
    the checkpoint's files without loading the LM (the worker that loads it checks the same key)."""
    ck = load_checkpoint(ckpt, with_train_state=False)
    require_srec_format(ck.config, ckpt)
    cat = Catalog.load(data or ck.config["catalog"]["data"])
    why = catalog_mismatch(ck.config["catalog"], cat.identity())
    if why is not None:  # before any store is created for it
        raise CheckpointError(f"checkpoint {ckpt} does not fit this catalog: {why}")
    return vectors_identity(
        ck.config, ck.model_state, catalog_sha256=cat.content_sha256, num_items=cat.num_items
    )


def default_store_dir(ckpt: str | Path, identity: StoreIdentity, dtype: str) -> Path:
    """`<run dir>/cache/vectors-<heads key>-<dtype>`: where training and evaluation keep theirs too."""
    return store_dir(run_dir_of(ckpt), identity, dtype)


def prepare_store(
    root: str | Path, identity: StoreIdentity, layout: StoreLayout
) -> tuple[dict[str, Any], list[int]]:
    """Create the store's manifest, or check the existing one (identity and layout); returns it and the
    indices of the shards still to encode (missing or not whole)."""
    root = Path(root)
    path = root / MANIFEST
    if path.is_file():
        manifest = read_json(path)
        check_identity(manifest, identity, path)
        for name, want in asdict(layout).items():
            got = manifest["layout"].get(name)
            if got != want:
                raise DataError(f"the store was written with {name}={got!r}, this run asks for {want!r} "
                                "(use another directory)", path=path, field=f"layout.{name}")  # fmt: skip
    else:
        manifest = new_manifest(identity, layout)
        write_json_atomic(path, manifest)
    if manifest["complete"]:
        return manifest, []
    return manifest, [
        s for s, e in enumerate(manifest["shards"]) if not _whole(root, e, identity.dim, layout.dtype)
    ]


def _whole(root: Path, entry: dict[str, Any], dim: int, dtype: str) -> bool:
    try:
        check_shard(root / entry["file"], entry["rows"], dim, dtype)
    except DataError:
        return False
    return True


@torch.no_grad()
def encode_shards(
    encode_items: EncodeItems,
    root: str | Path,
    manifest: dict[str, Any],
    shards: Sequence[int],
    batch_items: int = 256,
    progress: bool = True,
    desc: str = "encode catalog",
) -> int:
    """Encode and write the given shards of the store (each atomically); returns the items encoded."""
    entries = [manifest["shards"][s] for s in shards]
    dtype = manifest["layout"]["dtype"]
    bar = tqdm(total=sum(e["rows"] for e in entries), desc=desc, unit="item", disable=not progress)
    for e in entries:
        vecs = encode_id_range(
            encode_items, e["first_id"], e["first_id"] + e["rows"], batch_items, bar.update
        )
        write_shard(Path(root) / e["file"], vecs, dtype)
    bar.close()
    return sum(e["rows"] for e in entries)


def encode_store(
    encode_items: EncodeItems, root: str | Path, identity: StoreIdentity, cfg: EncodeConfig
) -> VectorStore:
    """Encode (or finish encoding) a whole store in this process and open it."""
    manifest, pending = prepare_store(root, identity, cfg.layout)
    if not manifest["complete"]:
        encode_shards(encode_items, root, manifest, pending, cfg.batch_items, cfg.progress)
        finalize(Path(root), manifest)
    return VectorStore(root, identity)
