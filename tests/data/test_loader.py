"""Round trip catalog -> shards -> reader; rank coverage and balance; cursor resume; shard corruption."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dist_srec.config import LoaderConfig, PrepareConfig
from dist_srec.data.catalog import Catalog
from dist_srec.data.loader import ShardLoader
from dist_srec.data.prepare import prepare
from dist_srec.errors import DataError
from tests.data.synth import write_custom


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("synth")
    inter, items = write_custom(root, users=47, items=25)
    cfg = PrepareConfig(
        dataset="custom",
        out=str(root / "out"),
        interactions=str(inter),
        items=str(items),
        kcore=2,
        samples_per_shard=6,
        progress=False,
    )
    prepare(cfg)
    return cfg.out


def _users(ld: ShardLoader) -> tuple[list[int], int]:
    users, n = [], 0
    for b in ld:
        n += 1
        users += b["user"][b["mask"]].tolist()
    return users, n


def test_round_trip_matches_catalog(data_dir: str) -> None:
    cat = Catalog.load(data_dir)
    t = cat.interactions().to_pydict()
    seqs: dict[int, list[tuple[int, int]]] = {}
    for u, i, ts in zip(t["user_id"], t["item_id"], t["timestamp"]):
        seqs.setdefault(u, []).append((i, ts))
    ld = ShardLoader(data_dir, "test", LoaderConfig(batch_size=8, max_len=30, shuffle=False))
    n = 0
    for b in ld:
        for u, h, hts, tgt, tts in zip(b["user"], b["history"], b["history_ts"], b["target"], b["target_ts"]):
            s = seqs[int(u)]
            assert (int(tgt), int(tts)) == s[-1]
            keep = h > 0
            assert h[keep].tolist() == [i for i, _ in s[:-1]][-30:]
            assert hts[keep].tolist() == [ts for _, ts in s[:-1]][-30:]
            assert keep[-1], "left padding: the most recent item is last"
            n += 1
    assert n == cat.num_users


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
@pytest.mark.parametrize("num_workers", [0, 2])
def test_ranks_disjoint_complete_equal_batches(data_dir: str, world_size: int, num_workers: int) -> None:
    total = Catalog.load(data_dir).num_users
    for remainder in ("pad", "drop"):
        cfg = LoaderConfig(batch_size=4, max_len=8, num_workers=num_workers, seed=5, remainder=remainder)
        all_users, counts = [], set()
        for r in range(world_size):
            ld = ShardLoader(data_dir, "valid", cfg, rank=r, world_size=world_size)
            ld.set_epoch(1)
            users, n = _users(ld)
            assert n == len(ld)
            counts.add(n)
            all_users += users
        assert len(counts) == 1, f"unequal batch counts {counts}"
        assert len(all_users) == len(set(all_users)), "ranks overlap"
        if remainder == "pad":
            assert sorted(all_users) == list(range(1, total + 1))
        else:
            assert len(all_users) == world_size * (total // world_size)


def test_shuffle_is_seeded_and_changes_per_epoch(data_dir: str) -> None:
    cfg = LoaderConfig(batch_size=5, max_len=4, seed=1, shuffle_buffer=10)
    a = ShardLoader(data_dir, "train", cfg)
    e0, _ = _users(a)
    e1, _ = _users(a)  # iterating again moves to the next epoch
    b = ShardLoader(data_dir, "train", cfg)
    assert _users(b)[0] == e0
    assert e0 != e1 and sorted(e0) == sorted(e1)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_cursor_resume_yields_exactly_the_rest(data_dir: str, num_workers: int) -> None:
    cfg = LoaderConfig(batch_size=3, max_len=4, num_workers=num_workers, seed=9, shuffle_buffer=7)
    full, _ = _users(ShardLoader(data_dir, "train", cfg, rank=1, world_size=2))
    ld = ShardLoader(data_dir, "train", cfg, rank=1, world_size=2)
    head = []
    for i, b in enumerate(ld):
        head += b["user"].tolist()
        if i == 4:
            break
    state = json.loads(json.dumps(ld.state_dict()))  # what a checkpoint stores
    resumed = ShardLoader(data_dir, "train", cfg, rank=1, world_size=2)
    resumed.load_state_dict(state)
    tail, _ = _users(resumed)
    assert sorted(head + tail) == sorted(full)
    assert len(head + tail) == len(full)
    if num_workers == 0:
        assert head + tail == full


def test_resume_mid_epoch_with_other_layout_is_an_error(data_dir: str) -> None:
    cfg = LoaderConfig(batch_size=3, max_len=4)
    ld = ShardLoader(data_dir, "train", cfg, rank=0, world_size=2)
    next(iter(ld))
    other = ShardLoader(data_dir, "train", cfg, rank=0, world_size=1)
    with pytest.raises(DataError, match="world_size"):
        other.load_state_dict(ld.state_dict())


def test_too_many_ranks_is_a_clear_error(data_dir: str) -> None:
    with pytest.raises(DataError, match="too few"):
        ShardLoader(data_dir, "valid", LoaderConfig(num_workers=4, remainder="drop"), rank=0, world_size=40)


def _copy(data_dir: str, tmp_path: Path) -> Path:
    import shutil

    dst = tmp_path / "copy"
    shutil.copytree(data_dir, dst)
    return dst


def test_corrupt_shard_hash_mismatch(data_dir: str, tmp_path: Path) -> None:
    d = _copy(data_dir, tmp_path)
    shard = d / "shards" / "test-000001.tar"
    raw = bytearray(shard.read_bytes())
    raw[600] ^= 0xFF
    shard.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"sha256 does not match.*test-000001\.tar"):
        _users(ShardLoader(d, "test", LoaderConfig(shuffle=False)))


def test_truncated_shard_without_hash_check(data_dir: str, tmp_path: Path) -> None:
    d = _copy(data_dir, tmp_path)
    shard = d / "shards" / "test-000000.tar"
    shard.write_bytes(shard.read_bytes()[:1700])
    with pytest.raises(DataError, match=r"test-000000\.tar"):
        _users(ShardLoader(d, "test", LoaderConfig(shuffle=False, verify_hashes=False)))


def test_missing_shard(data_dir: str, tmp_path: Path) -> None:
    d = _copy(data_dir, tmp_path)
    (d / "shards" / "valid-000002.tar").unlink()
    with pytest.raises(DataError, match="shard is missing"):
        _users(ShardLoader(d, "valid", LoaderConfig(shuffle=False)))
