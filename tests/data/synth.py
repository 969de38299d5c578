"""Small synthetic inputs in the `custom` and Amazon-2023 formats, written by the tests themselves."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import numpy as np


def write_custom(
    root: Path, users: int = 40, items: int = 25, per_user: tuple[int, int] = (5, 12), seed: int = 0
) -> tuple[Path, Path]:
    """A random custom dataset: interactions.csv (user_id,item_id,timestamp) + items.csv (item_id,title)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    inter, meta = root / "interactions.csv", root / "items.csv"
    with inter.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user_id", "item_id", "timestamp"])
        for u in range(users):
            n = int(rng.integers(*per_user))
            for it, t in zip(
                rng.choice(items, size=n, replace=False), np.sort(rng.choice(10**6, size=n, replace=False))
            ):
                w.writerow([f"user{u}", f"item{it}", int(t) + 1_600_000_000])
    with meta.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["item_id", "title", "description"])
        for it in range(items):
            w.writerow([f"item{it}", f"Title {it}", f"about {it}"])
    return inter, meta


def write_amazon(root: Path, rows: list[tuple[str, str, int]], titles: dict[str, str]) -> tuple[Path, Path]:
    """Amazon Reviews 2023 files: reviews JSONL.gz (timestamp in ms) + meta JSONL.gz."""
    root.mkdir(parents=True, exist_ok=True)
    reviews, meta = root / "reviews.jsonl.gz", root / "meta.jsonl.gz"
    with gzip.open(reviews, "wt") as f:
        for u, asin, ts_ms in rows:
            f.write(
                json.dumps(
                    {
                        "rating": 5.0,
                        "title": "ok",
                        "text": "",
                        "asin": asin + "x",
                        "parent_asin": asin,
                        "user_id": u,
                        "timestamp": ts_ms,
                        "verified_purchase": True,
                    }
                )
                + "\n"
            )
    with gzip.open(meta, "wt") as f:
        for asin, title in titles.items():
            f.write(
                json.dumps(
                    {
                        "parent_asin": asin,
                        "title": title,
                        "description": [f"{title} is", "great"],
                        "main_category": "Movies & TV",
                    }
                )
                + "\n"
            )
    return reviews, meta
