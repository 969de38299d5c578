"""The same teacher loop under DDP (2 gloo ranks): identical weights on every rank, reduced validation."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from dist_srec.eval.metrics import empty_sums, metric_sums
from dist_srec.eval.protocols import all_reduce_sums
from dist_srec.parallel.context import TrainContext
from dist_srec.train.teacher import train_teacher
from tests.spawned import finish_worker, free_port
from tests.train.test_teacher import ListLoader, _cfg, _model, _next_item_accuracy, cyclic_samples


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    ok = False
    try:
        ctx = TrainContext.from_env()
        assert (ctx.rank, ctx.world_size) == (rank, world)
        loader = ListLoader(cyclic_samples()[rank::world])  # each rank its own half
        model = _model()
        state = train_teacher(
            model, loader, _next_item_accuracy, cfg=_cfg(epochs=2, eval_every_epochs=1), ctx=ctx, out_dir=out
        )
        save_file(model.state_dict(), str(Path(out) / f"weights-{rank}.safetensors"))
        # metric sums reduce over ranks: rank r contributes ranks [r]
        sums = all_reduce_sums(metric_sums(torch.tensor([rank])) if rank else empty_sums())
        assert sums["count"] == 1.0 and sums["hr@10"] == 1.0
        assert state.epoch == 2 and ctx.agree(rank == 1)
        ok = True
    finally:
        finish_worker(ok)


@pytest.mark.distributed
def test_ddp_two_ranks_keep_identical_weights(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    w0 = load_file(tmp_path / "weights-0.safetensors")
    w1 = load_file(tmp_path / "weights-1.safetensors")
    for k in w0:
        torch.testing.assert_close(w0[k], w1[k], msg=k)
    assert (tmp_path / "best" / "model.safetensors").is_file()  # written by rank 0 only
    init = _model().state_dict()
    assert not torch.equal(init["item_emb.weight"], w0["item_emb.weight"])
