"""Batch recommendation on a tiny trained checkpoint: output contract, agreement with `recommend`,
resume per user part, and bad input (unknown user, K > catalog, a store of another checkpoint)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file, save_file

from dist_srec.cli.main import main
from dist_srec.data.catalog import Catalog
from dist_srec.data.item_vectors import StoreLayout
from dist_srec.errors import DataError
from dist_srec.inference.batch_jobs import BatchRecConfig, CatalogJobConfig, encode_catalog, recommend_batch
from dist_srec.inference.recommend import recommend, user_history
from dist_srec.inference.worker import CatalogWorker, ScanConfig

LAYOUT = StoreLayout(dtype="float32", shard_rows=16)
SCAN = ScanConfig(batch_users=4, topk_users=3, chunk_items=10)


def _users(path: Path, keys: list[str]) -> Path:
    path.write_text("# users to score\n" + "\n".join(keys[:2]) + "\n\n" + "\n".join(keys[2:]) + "\n")
    return path


def _cfg(ckpt: Path, out: Path, users: str, **kw) -> BatchRecConfig:
    base = {"store": str(out.parent / "store"), "layout": LAYOUT, "scan": SCAN, "progress": False}
    return BatchRecConfig(ckpt=str(ckpt), out=str(out), users=users, **{**base, **kw})


def _catalog(ckpt: Path) -> Catalog:
    return Catalog.load(json.loads((ckpt / "config.json").read_text())["catalog"]["data"])


def test_parts_hold_the_top_k_of_recommend(tiny_ckpt: Path, tmp_path: Path) -> None:
    cat = _catalog(tiny_ckpt)
    keys = [cat.user_keys[u] for u in (3, 1, 17, 8, 40, 22, 5)]
    m = recommend_batch(_cfg(tiny_ckpt, tmp_path / "out", str(_users(tmp_path / "u.txt", keys)), k=5,
                             users_per_shard=3))  # fmt: skip
    out = tmp_path / "out"
    assert m["parts"] == ["part-000000.parquet", "part-000001.parquet", "part-000002.parquet"]
    assert (out / "_SUCCESS").is_file() and m["total_rows"] == 7 * 5
    table = pq.read_table(out).sort_by([("user_id", "ascending"), ("rank", "ascending")])
    assert table.schema.names == ["user_id", "rank", "item_id", "score"]
    assert [str(t) for t in table.schema.types] == ["string", "int32", "string", "float"]
    item_key = {k: i + 1 for i, k in enumerate(cat.items["item_key"].to_pylist())}
    for key in keys:
        rows = table.filter(pq.filters_to_expression([("user_id", "=", key)])).to_pylist()
        assert [r["rank"] for r in rows] == [1, 2, 3, 4, 5]
        want = recommend(tiny_ckpt, user=key, k=5)
        assert [item_key[r["item_id"]] for r in rows] == [w.item_id for w in want]
        torch.testing.assert_close([r["score"] for r in rows], [w.score for w in want], rtol=1e-4, atol=1e-4)
        assert not set(user_history(cat, key)[0]) & {item_key[r["item_id"]] for r in rows}


def test_resume_runs_only_the_missing_parts(
    tiny_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _cfg(tiny_ckpt, tmp_path / "out", "all", k=4, users_per_shard=15)
    first = recommend_batch(cfg)
    assert len(first["parts"]) == 3 and first["num_users"] == 40
    out = tmp_path / "out"
    before = pq.read_table(out / "part-000001.parquet")
    (out / "part-000001.parquet").unlink()
    (out / "_SUCCESS").unlink()  # as if the run had died while computing part 1
    calls: list[str] = []
    real = CatalogWorker.recommend_part
    monkeypatch.setattr(CatalogWorker, "recommend_part", lambda self, path, *a: calls.append(Path(path).name)
                        or real(self, path, *a))  # fmt: skip
    again = recommend_batch(cfg)
    assert calls == ["part-000001.parquet"] and again["rows"] == first["rows"]
    assert pq.read_table(out / "part-000001.parquet").equals(before)
    with pytest.raises(DataError, match=r"holds a batch run with k=4, this run has 5.*field 'k'"):
        recommend_batch(_cfg(tiny_ckpt, out, "all", k=5, users_per_shard=15))


def test_unknown_user_and_k_larger_than_the_catalog(tiny_ckpt: Path, tmp_path: Path) -> None:
    users = tmp_path / "u.txt"
    users.write_text("user3\n# a comment\n\nusr7\n")
    with pytest.raises(
        DataError, match=rf"line 4: unknown user 'usr7'; close matches: \['user7'.*{re.escape(str(users))}"
    ):
        recommend_batch(_cfg(tiny_ckpt, tmp_path / "out", str(users), k=5))
    n = _catalog(tiny_ckpt).num_items
    with pytest.raises(DataError, match=rf"k={n + 1} is larger than the catalog \({n} items\)"):
        recommend_batch(_cfg(tiny_ckpt, tmp_path / "out", "all", k=n + 1))


def test_store_of_another_checkpoint_is_refused(tiny_ckpt: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    encode_catalog(
        CatalogJobConfig(ckpt=str(tiny_ckpt), store=str(store), layout=LAYOUT, scan=SCAN, progress=False)
    )
    other = tmp_path / "other"
    shutil.copytree(tiny_ckpt, other)
    heads = load_file(other / "model.safetensors")
    name = sorted(heads)[0]
    heads[name] = heads[name] + 0.5  # the same architecture, other weights
    save_file(heads, other / "model.safetensors")
    pattern = (
        rf"another checkpoint.*file {re.escape(str(store / 'manifest.json'))}, field 'identity\.heads_key'"
    )
    with pytest.raises(DataError, match=pattern):
        recommend_batch(_cfg(other, tmp_path / "out", "all", k=3))


def test_cli_encode_catalog_and_recommend_batch(
    tiny_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    store, out = tmp_path / "store", tmp_path / "recs"
    common = [
        "--ckpt",
        str(tiny_ckpt),
        "--layout.dtype",
        "bfloat16",
        "--layout.shard_rows",
        "25",
        "--progress",
        "false",
    ]
    assert main(["encode-catalog", *common, "--store", str(store)]) == 0
    n = _catalog(tiny_ckpt).num_items
    assert f"{n} items x 128 (bfloat16), {-(-n // 25)} shards" in capsys.readouterr().out
    args = ["recommend-batch", *common, "--users", "all", "--k", "3", "--out", str(out), "--store", str(store),
            "--users_per_shard", "25"]  # fmt: skip
    assert main(args) == 0
    assert "40 users, top 3, 120 rows in 2 parts" in capsys.readouterr().out
    assert (out / "_SUCCESS").is_file() and pq.read_table(out).num_rows == 120
    bad = tmp_path / "bad.txt"
    bad.write_text("nobody-at-all\n")
    args[args.index("all")], args[args.index(str(out))] = str(bad), str(tmp_path / "recs2")
    assert main(args) == 2
    assert "line 1: unknown user 'nobody-at-all'" in capsys.readouterr().err


def test_batch_jobs_run_on_the_gpu_when_there_is_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """`encode-catalog` / `recommend-batch` default to `auto`, as `train` does: never silently on CPU."""
    import torch

    from dist_srec.inference.worker import ScanConfig
    from dist_srec.parallel.context import resolve_device

    assert ScanConfig().device == "auto"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert resolve_device("auto") == torch.device("cuda", 1) and resolve_device("cpu") == torch.device("cpu")
