"""No hang at world sizes 1-4 with shard counts that don't divide evenly: every rank gets the same
number of batches (one gloo all_reduce per batch, with a short timeout, proves it), or every rank stops
with the same clear `DataError` when samples can't cover ranks x loader workers."""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dist_srec.config import LoaderConfig, PrepareConfig
from dist_srec.data.loader import ShardLoader
from dist_srec.data.prepare import prepare
from dist_srec.errors import DataError
from tests.data.synth import write_custom
from tests.spawned import finish_worker, free_port


@pytest.fixture(scope="module")
def uneven_data(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("uneven")
    inter, items = write_custom(root, users=23, items=25)
    cfg = PrepareConfig(dataset="custom", out=str(root / "out"), interactions=str(inter), items=str(items),
                        kcore=2, samples_per_shard=5, progress=False)  # fmt: skip
    prepare(cfg)
    return cfg.out


def _worker(rank: int, world: int, port: int, data: str, workers: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=30))
    ok = False
    try:
        try:
            ld = ShardLoader(
                data, "train", LoaderConfig(batch_size=2, max_len=8, num_workers=workers), rank, world
            )
        except DataError as e:
            Path(out, f"r{rank}.json").write_text(json.dumps({"error": str(e)}))
            ok = True
            return
        users, steps = [], 0
        for b in ld:
            t = torch.ones(1)
            dist.all_reduce(t)  # a training step's collective: a rank with an extra batch would hang here
            users += b["user"][b["mask"]].tolist()
            steps += 1
        Path(out, f"r{rank}.json").write_text(json.dumps({"steps": steps, "users": users, "total": ld.total}))
        ok = True
    finally:
        finish_worker(ok)


@pytest.mark.distributed
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_ranks_get_equal_batches_without_hang(uneven_data: str, world: int, tmp_path: Path) -> None:
    n_shards = len(json.loads((Path(uneven_data) / "manifest.json").read_text())["shards"]["train"])
    total = ShardLoader(uneven_data, "train", LoaderConfig()).total
    assert n_shards >= 2 and total % 5 != 0, "shards of unequal size"
    mp.spawn(_worker, args=(world, free_port(), uneven_data, 0, str(tmp_path)), nprocs=world, join=True)
    docs = [json.loads((tmp_path / f"r{r}.json").read_text()) for r in range(world)]
    assert len({d["steps"] for d in docs}) == 1
    users = [u for d in docs for u in d["users"]]
    assert len(users) == len(set(users)) == total - total % world  # disjoint; 'drop' leaves < W out


@pytest.mark.distributed
def test_too_many_ranks_times_workers_is_a_clear_error_on_every_rank(
    uneven_data: str, tmp_path: Path
) -> None:
    total = ShardLoader(uneven_data, "train", LoaderConfig()).total
    workers = total // 4 + 1  # 4 ranks x this many loader workers > samples
    mp.spawn(_worker, args=(4, free_port(), uneven_data, workers, str(tmp_path)), nprocs=4, join=True)
    for r in range(4):
        err = json.loads((tmp_path / f"r{r}.json").read_text())["error"]
        assert "too few for 4 ranks" in err and "loader workers" in err
