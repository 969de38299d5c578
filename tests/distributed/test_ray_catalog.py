"""Catalog encoding and batch recommendation on 2 Ray actors equal the single-process run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from dist_srec.cluster.ray_catalog import RayCatalogConfig
from dist_srec.data.item_vectors import StoreLayout, VectorStore
from dist_srec.inference.batch_jobs import BatchRecConfig, recommend_batch
from dist_srec.inference.worker import ScanConfig
from tests.train.helpers import train_tiny

pytestmark = pytest.mark.distributed


def test_two_ray_workers_match_one_process(srec_setup: tuple[Path, Path], tmp_path: Path) -> None:
    data, teacher = srec_setup
    ckpt = train_tiny(data, teacher, tmp_path / "run")

    def cfg(name: str) -> BatchRecConfig:
        return BatchRecConfig(
            ckpt=str(ckpt), out=str(tmp_path / name / "recs"), store=str(tmp_path / name / "store"), users="all",
            k=5, users_per_shard=9, layout=StoreLayout(dtype="float32", shard_rows=10),
            scan=ScanConfig(batch_users=8, chunk_items=7), progress=False,
        )  # fmt: skip

    local = recommend_batch(cfg("local"))
    ray_cfg = RayCatalogConfig(num_workers=2, local_cpus=2)
    dist = recommend_batch(cfg("ray"), ray_cfg)
    assert dist["parts"] == local["parts"] and dist["rows"] == local["rows"] and len(dist["parts"]) == 5
    a, b = VectorStore(tmp_path / "local" / "store"), VectorStore(tmp_path / "ray" / "store")
    assert len(a.manifest["shards"]) == 5, "several shards, so both actors encoded some"
    torch.testing.assert_close(
        torch.cat([v for _, v in b.iter_chunks()]), torch.cat([v for _, v in a.iter_chunks()])
    )
    ta, tb = pq.read_table(tmp_path / "local" / "recs"), pq.read_table(tmp_path / "ray" / "recs")
    order = [("user_id", "ascending"), ("rank", "ascending")]
    ta, tb = ta.sort_by(order), tb.sort_by(order)
    assert ta["item_id"].equals(tb["item_id"]) and ta["user_id"].equals(tb["user_id"])
    np.testing.assert_allclose(ta["score"].to_numpy(), tb["score"].to_numpy(), rtol=1e-5, atol=1e-5)
    assert json.loads((tmp_path / "ray" / "recs" / "_manifest.json").read_text())["total_rows"] == 40 * 5
