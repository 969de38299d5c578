"""A dist-srec prepared data directory -> the data files of the paper's code (Sein-Kim/LLM-SRec), with the
same item and user ids and the same leave-last-out split, so both sides train and test on identical data.

    .venv/bin/python benchmarks/reference/write_reference_data.py \\
        --data /work/scratch/data/ml-100k --ref /work/scratch/llmsrec-ref --name ml-100k

What the reference reads (its `data_partition` and `llmrec_model.__init__`), all under
REF/SeqRec/data_NAME/:
- NAME_train.txt, NAME_valid.txt, NAME_test.txt: one interaction per line, "user item" (1-based ids),
  each user's lines in chronological order. Its loader appends lines per user in file order, so
  user_train[u] is the user's train items oldest first, user_valid[u] / user_test[u] hold one item.
- text_name_dict.json.gz: despite the name, a plain pickle (not gzip) of
  {"title": {item: str}, "description": {item: str}, "time": {item: {user: unix milliseconds}}}.
  The reference formats a date as datetime.utcfromtimestamp(ms / 1000), so ms = seconds * 1000 gives
  the same UTC day as dist-srec's `unix_to_date`.

Ids are written unchanged: dist-srec's ids are 1-based and dense (0 = padding), which is what the
reference assumes (user_num = max user id, item_num = max item id, its SeqDataset indexes users
1..len(user_train)). Splits come from interactions.parquet's `split` column, so the split is the very
one dist-srec trains and tests on. A check (on by default) rebuilds every train/valid/test sample the
reference derives from these files (train: history = train[:-1], target = train[-1]; valid: history
= train, target = valid; test: history = train + valid, target = test) and compares it with the sample
in dist-srec's shards; any difference is an error.

Known limits, reported when they occur: a user who interacted with the same item twice keeps one
timestamp in the reference's time dict (keyed item -> user), so both entries show the later date;
items without a description get the reference's own placeholder text "Empty description" (only
titles enter the prompts).
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import tarfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

SPLITS = ("train", "valid", "test")


def load_catalog(data: Path) -> dict:
    manifest = json.loads((data / "manifest.json").read_text())
    inter = pq.read_table(data / "interactions.parquet")
    split = inter["split"].combine_chunks()
    codes = np.asarray(split.indices.to_numpy(zero_copy_only=False), dtype=np.int64)
    names = split.dictionary.to_pylist()
    split_name = np.array(names, dtype=object)[codes]
    items = pq.read_table(data / "items.parquet").to_pydict()
    return {
        "manifest": manifest,
        "user": inter["user_id"].to_numpy().astype(np.int64),
        "item": inter["item_id"].to_numpy().astype(np.int64),
        "ts": inter["timestamp"].to_numpy().astype(np.int64),
        "split": split_name,
        "item_id": items["item_id"],
        "title": items["title"],
        "description": items["description"],
    }


def write_files(cat: dict, out: Path, name: str) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    user, item, ts, split = cat["user"], cat["item"], cat["ts"], cat["split"]
    # interactions.parquet is sorted by (user, time, source row) already; sort again, stably, to be safe
    order = np.lexsort((np.arange(len(user)), ts, user))
    counts = {}
    for sp in SPLITS:
        sel = order[split[order] == sp]
        with open(out / f"{name}_{sp}.txt", "w") as f:
            f.writelines(f"{int(u)} {int(i)}\n" for u, i in zip(user[sel], item[sel]))
        counts[sp] = len(sel)
    time: dict[int, dict[int, int]] = defaultdict(dict)
    repeats = 0
    for u, i, t in zip(user[order].tolist(), item[order].tolist(), ts[order].tolist()):
        if u in time[i]:
            repeats += 1
        time[i][u] = int(t) * 1000  # seconds -> the reference's milliseconds
    titles = {int(i): str(t) for i, t in zip(cat["item_id"], cat["title"])}
    descs = {
        int(i): (str(d) if d else "Empty description") for i, d in zip(cat["item_id"], cat["description"])
    }
    text = {"time": dict(time), "title": titles, "description": descs}
    with open(out / "text_name_dict.json.gz", "wb") as f:  # a pickle, as the reference writes and reads it
        pickle.dump(text, f)
    return {"lines": counts, "repeated_user_item_pairs": repeats, "items_with_time": len(time)}


def reference_partition(out: Path, name: str) -> tuple[dict, dict, dict]:
    """The reference's reading of the three files (its data_partition's rule, re-stated here)."""
    parts: dict[str, dict[int, list[int]]] = {sp: defaultdict(list) for sp in SPLITS}
    for sp in SPLITS:
        with open(out / f"{name}_{sp}.txt") as f:
            for line in f:
                u, i = line.split()
                parts[sp][int(u)].append(int(i))
    return parts["train"], parts["valid"], parts["test"]


def shard_samples(data: Path, manifest: dict, split: str) -> dict[int, dict]:
    out = {}
    for entry in manifest["shards"][split]:
        with tarfile.open(data / entry["file"]) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".json"):
                    s = json.loads(tar.extractfile(m).read())
                    out[int(s["user"])] = s
    return out


def check(data: Path, manifest: dict, out: Path, name: str) -> dict:
    train, valid, test = reference_partition(out, name)
    n_users, n_items = manifest["counts"]["num_users"], manifest["counts"]["num_items"]
    users = sorted(train)
    if users != list(range(1, n_users + 1)):
        raise SystemExit(f"train users are not exactly 1..{n_users}: the reference's SeqDataset needs that")
    max_item = max(max(v) for part in (train, valid, test) for v in part.values())
    if max_item != n_items:
        raise SystemExit(
            f"max item id {max_item} != catalog's {n_items}: the reference would size item_num wrong"
        )
    derived = {
        "train": {u: (train[u][:-1], train[u][-1]) for u in train if len(train[u]) >= 2},
        "valid": {u: (train[u], valid[u][0]) for u in valid},
        "test": {u: (train[u] + valid[u], test[u][0]) for u in test},
    }
    report = {}
    for sp in SPLITS:
        shards = shard_samples(data, manifest, sp)
        mine = derived[sp]
        if set(shards) != set(mine):
            raise SystemExit(f"{sp}: users differ (shards {len(shards)}, reference {len(mine)})")
        bad = [
            u for u in mine if (shards[u]["history"], shards[u]["target"]) != (list(mine[u][0]), mine[u][1])
        ]
        if bad:
            raise SystemExit(f"{sp}: {len(bad)} samples differ from dist-srec's shards, e.g. user {bad[0]}")
        report[sp] = {"samples": len(mine), "identical_to_shards": True}
    report["num_users"], report["num_items"] = n_users, n_items
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, type=Path, help="dist-srec prepared data directory")
    ap.add_argument("--ref", required=True, type=Path, help="the reference's work tree (its root)")
    ap.add_argument(
        "--name", required=True, help="dataset name the reference is run with (--rec_pre_trained_data)"
    )
    ap.add_argument("--no-check", action="store_true", help="skip the comparison with dist-srec's shards")
    args = ap.parse_args(argv)
    cat = load_catalog(args.data)
    out = args.ref / "SeqRec" / f"data_{args.name}"
    info = write_files(cat, out, args.name)
    if info["repeated_user_item_pairs"]:
        print(f"warning: {info['repeated_user_item_pairs']} repeated (user, item) pairs: the reference's time "
              "dict keeps one timestamp per pair", file=sys.stderr)  # fmt: skip
    if not args.no_check:
        info["check"] = check(args.data, cat["manifest"], out, args.name)
    files = cat["manifest"]["files"]
    info["source"] = {
        "data": str(args.data.resolve()),
        "catalog_files_sha256": {k: v["sha256"] for k, v in files.items()},
        "manifest_created": cat["manifest"].get("created"),
    }
    (out / "dist_srec_source.json").write_text(json.dumps(info, indent=2))
    print(json.dumps(info, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
