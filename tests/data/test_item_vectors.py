"""Vector store without a model: layout, work split, round trip per dtype, resume, bad input."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

from dist_srec.data.item_vectors import (
    MANIFEST,
    StoreIdentity,
    StoreLayout,
    VectorStore,
    assign_shards,
    open_complete,
    prune_stores,
    shard_ranges,
    write_table,
)
from dist_srec.errors import ConfigError, DataError
from dist_srec.eval.ranking import Exclusion, chunked_target_rank, chunked_topk
from dist_srec.inference.encode import EncodeConfig, encode_store, prepare_store

N, D = 103, 8


def _identity(**kw) -> StoreIdentity:
    base = {"heads_key": "h" * 24, "lm_content_hash": "l" * 64, "teacher_sha256": "t" * 64,
            "model_config_sha256": "c" * 64, "catalog_sha256": "m" * 64, "num_items": N, "dim": D}  # fmt: skip
    return StoreIdentity(**{**base, **kw})


def _table(seed: int = 0) -> torch.Tensor:
    t = torch.randn(N + 1, D, generator=torch.Generator().manual_seed(seed))
    t[0] = 0
    return t


class Encoder:
    """`encode_items` over a fixed table, counting the ids it is asked for; fails after `fail_after` calls."""

    def __init__(self, table: torch.Tensor, fail_after: int | None = None):
        self.table, self.fail_after, self.ids = table, fail_after, []

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        if self.fail_after is not None and len(self.ids) >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.ids.append(ids.tolist())
        return self.table[ids]


def _cfg(dtype: str = "float32", shard_rows: int = 20) -> EncodeConfig:
    return EncodeConfig(layout=StoreLayout(dtype=dtype, shard_rows=shard_rows), batch_items=7, progress=False)


def test_shard_ranges_and_disjoint_assignment() -> None:
    ranges = shard_ranges(N, 20)
    assert ranges[0] == (1, 20) and ranges[-1] == (101, 3) and sum(r for _, r in ranges) == N
    pending = [0, 2, 3, 5, 6]
    split = [assign_shards(pending, r, 3) for r in range(3)]
    assert sorted(s for part in split for s in part) == pending
    assert max(map(len, split)) - min(map(len, split)) <= 1
    with pytest.raises(ConfigError, match="rank 3 is not in a world of size 3"):
        assign_shards(pending, 3, 3)


@pytest.mark.parametrize(("dtype", "tol"), [("float32", 0.0), ("float16", 1e-3), ("bfloat16", 1e-2)])
def test_round_trip_and_topk_equal_the_table(tmp_path: Path, dtype: str, tol: float) -> None:
    table = _table()
    store = encode_store(Encoder(table), tmp_path / "s", _identity(), _cfg(dtype))
    chunks = list(store.iter_chunks(chunk_size=6))
    assert [lo for lo, _ in chunks][:4] == [1, 7, 13, 19] and all(len(v) <= 6 for _, v in chunks)
    assert (
        chunks[0][1].dtype
        == {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    )
    got = torch.cat([v.float() for _, v in chunks])
    torch.testing.assert_close(got, table[1:], rtol=tol, atol=tol)
    users = torch.randn(5, D, generator=torch.Generator().manual_seed(1))
    history = torch.randint(0, N + 1, (5, 9), generator=torch.Generator().manual_seed(2))
    excl = Exclusion.from_history(history)
    want_s, want_i = chunked_topk(users, torch.cat([torch.zeros(1, D), got]), 10, exclude=excl)
    s, i = chunked_topk(users, store.iter_chunks(6), 10, exclude=excl)
    assert torch.equal(i, want_i)
    torch.testing.assert_close(s, want_s)  # the same products, summed in another blocking
    targets = torch.tensor([1, 50, 103, 20, 21])
    ts = (users * store.vectors(targets).float()).sum(-1)
    ranks = chunked_target_rank(users, store.iter_chunks(11), targets, target_scores=ts, exclude=excl)
    assert ranks.tolist() == chunked_target_rank(users, torch.cat([torch.zeros(1, D), got]), targets,
                                                 exclude=excl).tolist()  # fmt: skip


def test_interrupted_encoding_resumes_without_reencoding(tmp_path: Path) -> None:
    table, root = _table(), tmp_path / "s"
    first = Encoder(table, fail_after=7)  # 3 batches per 20-row shard: shards 0 and 1 finish, 2 does not
    with pytest.raises(KeyboardInterrupt):
        encode_store(first, root, _identity(), _cfg())
    written = sorted(p.name for p in root.glob("shard-*.npy"))
    assert written == ["shard-000000.npy", "shard-000001.npy"]
    stamps = {p: os.stat(root / p).st_mtime_ns for p in written}
    with pytest.raises(DataError, match="unfinished"):
        VectorStore(root, _identity())
    second = Encoder(table)
    store = encode_store(second, root, _identity(), _cfg())
    again = [i for call in second.ids for i in call]
    assert again == list(range(41, N + 1)), "only the items of unwritten shards are encoded again"
    assert {p: os.stat(root / p).st_mtime_ns for p in written} == stamps
    torch.testing.assert_close(torch.cat([v for _, v in store.iter_chunks(50)]), table[1:])
    third = Encoder(table)
    encode_store(third, root, _identity(), _cfg())
    assert third.ids == [], "a finished store is not encoded again"


def test_vectors_of_another_checkpoint_or_catalog_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "s"
    encode_store(Encoder(_table()), root, _identity(), _cfg())
    with pytest.raises(
        DataError,
        match=rf"another checkpoint.*file {re.escape(str(root / MANIFEST))}.*field 'identity.heads_key'",
    ):
        VectorStore(root, _identity(heads_key="x" * 24))
    with pytest.raises(DataError, match=r"field 'identity\.catalog_sha256'"):
        prepare_store(root, _identity(catalog_sha256="y" * 64), StoreLayout(shard_rows=20))
    with pytest.raises(DataError, match=r"field 'layout\.dtype'"):
        prepare_store(root, _identity(), StoreLayout(dtype="float16", shard_rows=20))


def test_truncated_shard_names_file_and_sizes(tmp_path: Path) -> None:
    root = tmp_path / "s"
    encode_store(Encoder(_table()), root, _identity(), _cfg())
    shard = root / "shard-000001.npy"
    size = shard.stat().st_size
    with open(shard, "r+b") as f:
        f.truncate(size - 10)
    with pytest.raises(
        DataError,
        match=rf"truncated vector shard: expected {size} bytes, found {size - 10}.*{re.escape(str(shard))}",
    ):
        VectorStore(root, _identity())


def test_bad_layout_values() -> None:
    with pytest.raises(ConfigError, match="dtype"):
        StoreLayout(dtype="int8")
    with pytest.raises(ConfigError, match="shard_rows"):
        StoreLayout(shard_rows=0)


def test_whole_table_round_trip_is_exact_and_checked(tmp_path: Path) -> None:
    """The fp32 table path that validation writes and evaluation reads: exact, identity-checked, and an
    unfinished store is treated as absent (re-encoded), never read."""
    table = _table(3)
    root = tmp_path / "vectors-h-float32"
    assert open_complete(root, _identity()) is None
    layout = StoreLayout(dtype="float32", shard_rows=20)
    write_table(root, _identity(), table, layout)
    store = open_complete(root, _identity())
    assert store is not None and torch.equal(store.table(), table)
    with pytest.raises(DataError, match=r"field 'identity\.teacher_sha256'"):
        open_complete(root, _identity(teacher_sha256="u" * 64))
    with pytest.raises(ValueError, match="table shape"):
        write_table(tmp_path / "bad", _identity(), table[:-1], layout)
    partial = tmp_path / "partial"
    prepare_store(partial, _identity(), layout)  # a manifest, no shards: an interrupted encoding
    assert open_complete(partial, _identity()) is None


def test_prune_keeps_the_newest_stores_of_one_dtype(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    for i in range(5):
        d = cache / f"vectors-k{i}-float32"
        d.mkdir(parents=True)
        os.utime(d, ns=(i * 10**9, i * 10**9))
    (cache / "vectors-k0-float16").mkdir()
    prune_stores(cache, "float32", keep=2)
    assert sorted(p.name for p in cache.iterdir()) == [
        "vectors-k0-float16",
        "vectors-k3-float32",
        "vectors-k4-float32",
    ]
