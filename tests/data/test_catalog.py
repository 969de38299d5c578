"""k-core, ordering, id and split rules on a hand-computed example, and SASRec data_partition parity."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from dist_srec.config import LoaderConfig, PrepareConfig
from dist_srec.data.catalog import Catalog
from dist_srec.data.loader import ShardLoader
from dist_srec.data.prepare import prepare


def _write(root: Path, rows: list[tuple], items: list[str]) -> PrepareConfig:
    root.mkdir(parents=True, exist_ok=True)
    with (root / "inter.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user_id", "item_id", "timestamp"])
        w.writerows(rows)
    with (root / "items.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["item_id", "title"])
        w.writerows([(i, f"T-{i}") for i in items])
    return PrepareConfig(
        dataset="custom",
        out=str(root / "out"),
        interactions=str(root / "inter.csv"),
        items=str(root / "items.csv"),
        kcore=2,
        samples_per_shard=2,
        progress=False,
    )


def _samples(out: str, split: str) -> list[dict]:
    ld = ShardLoader(out, split, LoaderConfig(batch_size=100, max_len=5, shuffle=False))
    b = next(iter(ld))
    return [
        {"user": int(u), "history": [int(x) for x in h if x], "target": int(t)}
        for u, h, t in zip(b["user"], b["history"], b["target"])
    ]


# Hand-computed: k=2. Round 1 drops i5 (deg 1), i6 (deg 1) and u3 (1 interaction). Round 2 drops u5,
# left with only i1. Round 3 changes nothing. u2's rows are out of time order in the file; u4's two
# rows share a timestamp and keep file order (i4 before i3).
ROWS = [
    ("u1", "i1", 1),
    ("u1", "i2", 2),
    ("u1", "i3", 3),
    ("u2", "i1", 5),
    ("u2", "i2", 4),
    ("u2", "i4", 6),
    ("u3", "i5", 1),
    ("u4", "i4", 2),
    ("u4", "i3", 2),
    ("u5", "i6", 1),
    ("u5", "i1", 2),
]


def test_hand_computed_kcore_order_split(tmp_path: Path) -> None:
    m = prepare(_write(tmp_path, ROWS, ["i1", "i2", "i3", "i4", "i5", "i6"]))
    assert m["counts"] == {
        "num_users": 3,
        "num_items": 4,
        "num_interactions": 8,
        "train_interactions": 4,
        "valid_interactions": 2,
        "test_interactions": 2,
    }
    assert m["stats"]["kcore_rounds"] == 3
    cat = Catalog.load(m["config"]["out"])
    assert cat.user_keys == ["", "u1", "u2", "u4"]
    assert cat.titles == ["", "T-i1", "T-i2", "T-i3", "T-i4"]
    t = cat.interactions().to_pydict()
    got = [(u, i, ts, str(s)) for u, i, ts, s in zip(t["user_id"], t["item_id"], t["timestamp"], t["split"])]
    assert got == [
        (1, 1, 1, "train"),
        (1, 2, 2, "valid"),
        (1, 3, 3, "test"),
        (2, 2, 4, "train"),
        (2, 1, 5, "valid"),
        (2, 4, 6, "test"),
        (3, 4, 2, "train"),
        (3, 3, 2, "train"),
    ]
    out = m["config"]["out"]
    # train samples of u1/u2 would have an empty history: skipped and counted
    assert _samples(out, "train") == [{"user": 3, "history": [4], "target": 3}]
    assert m["samples"]["train"]["skipped_empty_history"] == 2
    assert _samples(out, "valid") == [
        {"user": 1, "history": [1], "target": 2},
        {"user": 2, "history": [2], "target": 1},
    ]
    assert _samples(out, "test") == [
        {"user": 1, "history": [1, 2], "target": 3},
        {"user": 2, "history": [2, 1], "target": 4},
    ]
    indptr, idx = cat.user_items()
    assert indptr.tolist() == [0, 0, 3, 6, 8] and idx.tolist() == [1, 2, 3, 2, 1, 4, 4, 3]


def _data_partition(lines: list[tuple[int, int]]) -> tuple[dict, dict, dict]:
    """SASRec.pytorch `data_partition` semantics, re-stated: lines of (user, item) in time order."""
    seqs: dict[int, list[int]] = defaultdict(list)
    for u, i in lines:
        seqs[u].append(i)
    train, valid, test = {}, {}, {}
    for u, s in seqs.items():
        if len(s) < 3:
            train[u], valid[u], test[u] = s, [], []
        else:
            train[u], valid[u], test[u] = s[:-2], [s[-2]], [s[-1]]
    return train, valid, test


def test_split_matches_sasrec_data_partition(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    rows = []
    for u in range(30):
        n = int(rng.integers(1, 9))
        times = rng.choice(1000, size=n, replace=False)
        rows += [(f"{u}", f"{int(rng.integers(12))}", int(t)) for t in times]
    order = rng.permutation(len(rows))
    rows = [rows[k] for k in order]
    cfg = _write(tmp_path, rows, [str(i) for i in range(12)])
    cfg.kcore = 0
    m = prepare(cfg)
    # The reference reads a file already sorted by time per user.
    lines = [(int(u), int(i)) for u, i, _ in sorted(rows, key=lambda r: (int(r[0]), r[2]))]
    train, valid, test = _data_partition(lines)
    cat = Catalog.load(m["config"]["out"])
    t = cat.interactions().to_pydict()
    item_keys = pq.read_table(Path(cfg.out) / "items.parquet")["item_key"].to_pylist()
    ours: dict = {s: defaultdict(list) for s in ("train", "valid", "test")}
    for u, i, s in zip(t["user_id"], t["item_id"], t["split"]):
        ours[str(s)][int(cat.user_keys[u])].append(int(item_keys[i - 1]))
    for u in train:
        assert ours["train"][u] == train[u]
        assert ours["valid"].get(u, []) == valid[u]
        assert ours["test"].get(u, []) == test[u]
