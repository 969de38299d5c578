"""The one-engine pattern (one DeepSpeed engine over the tiny LM and the heads, DeepSpeed owning Adam)
on 2 Ray Train workers, through the same loop:

- stage 0: the losses and final heads match a single process computing the same global batch with
  the same seed; the heads are identical on every rank at every save (the loop checks it); tokens and
  tokens/s are reported (summed over ranks);
- its checkpoint (heads + config + hashes, optimizer state in torch Adam's format) resumes without
  DeepSpeed in one process, and that checkpoint resumes under the one-engine pattern at stage 3,
  matching a single process continuing from the same checkpoint (heads, Adam moments).
(The LM partitioned and unchanged by training, at stage 3: tests/distributed/test_deepspeed.py.)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dist_srec.cluster.ray_train import RayConfig, fit
from dist_srec.parallel.deepspeed_config import DeepSpeedConfig
from dist_srec.train import checkpoint as ckpt_io
from dist_srec.train.metric_logging import METRICS_FILE
from dist_srec.train.srec_train import SRecRunConfig, train_srec
from tests.distributed.test_ray_train import (  # noqa: F401
    NOISE_ONLY,
    _reference,
    _run_cfg,
    _train_state,
    llm_as_workers_run,
    ray_cluster,
)

pytestmark = pytest.mark.distributed


def _continue(
    cfg: SRecRunConfig, ckpt: Path, steps: int, deepspeed: DeepSpeedConfig
) -> tuple[list[float], dict, dict]:
    """One process doing what 2 ranks do from checkpoint `ckpt` (an epoch boundary) under `deepspeed`:
    heads, Adam state."""
    from dist_srec.data.catalog import Catalog
    from dist_srec.data.loader import rank_loader
    from dist_srec.parallel.context import TrainContext
    from dist_srec.train.loop_types import step_generator
    from dist_srec.train.srec_build import build_model
    from dist_srec.train.srec_task import SRecTask

    ck = ckpt_io.load_checkpoint(ckpt)
    epoch, step0 = ck.train_state["epoch"], ck.train_state["global_step"]
    llm = llm_as_workers_run(cfg.llm, deepspeed)
    model, _ = build_model(llm, cfg.teacher, Catalog.load(cfg.data), cfg.model, torch.device("cpu"))
    model.load_trainable_state_dict(ck.model_state)
    task = SRecTask(model, {"catalog": {"num_items": model.teacher_items.shape[0] - 1}})
    opt = torch.optim.Adam(task.trainable(), lr=cfg.loop.lr, betas=cfg.loop.betas)
    opt.load_state_dict(ck.optimizer)
    ranks = []
    for r in range(2):
        loader = rank_loader(cfg.data, "train", cfg.batch_size, model.teacher.cfg.max_len,
                         TrainContext(rank=r, world_size=2), shuffle=True, seed=cfg.loop.seed, remainder="drop")  # fmt: skip
        loader.set_epoch(epoch)
        ranks.append(iter(loader))
    losses = []
    for step in range(step0, step0 + steps):
        loss = (
            sum(task.loss(next(it), step_generator(cfg.loop.seed, r, step))[0] for r, it in enumerate(ranks))
            / 2
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses, {k: v.detach().clone() for k, v in task.state_dict().items()}, opt.state_dict()


def _close_heads(got: dict, want: dict, lr: float, steps: int) -> None:
    for k, v in want.items():
        if k in NOISE_ONLY:  # a true gradient of ~0: Adam turns float noise into steps of up to lr
            assert (got[k] - v).abs().max() <= 2 * lr * steps, k
        else:
            torch.testing.assert_close(got[k], v, rtol=1e-4, atol=1e-6, msg=k)


def _losses(out: Path) -> list[float]:
    return [
        json.loads(x)["train_loss"]
        for x in (out / METRICS_FILE).read_text().splitlines()
        if "train_loss" in x
    ]


@pytest.mark.usefixtures("ray_cluster")
def test_one_engine_matches_one_process_and_resumes_across_patterns(srec_setup, tmp_path: Path) -> None:
    data, teacher = srec_setup
    cfg = _run_cfg(data, teacher, tmp_path / "a", tmp_path / "cache")
    cfg.deepspeed = DeepSpeedConfig(pattern="one-engine", stage=0)
    assert fit(cfg, RayConfig(num_workers=2, name="one0")).error is None
    out = Path(cfg.out)
    ref_losses, ref_heads = _reference(cfg, 5)
    running = [sum(ref_losses[: i + 1]) / (i + 1) for i in range(5)]
    assert _losses(out) == pytest.approx(running, rel=1e-5, abs=1e-6)
    _close_heads(load_file(out / "last" / "model.safetensors"), ref_heads, cfg.loop.lr, 5)
    recs = [json.loads(x) for x in (out / METRICS_FILE).read_text().splitlines() if "train_loss" in x]
    assert all(r["tokens_per_s"] > r["tokens_per_s_rank"] > 0 for r in recs)  # summed over 2 ranks
    assert recs[-1]["tokens"] == _train_state(out)["tokens"] > recs[0]["tokens"] > 0
    # one-engine checkpoint -> one process without DeepSpeed (epoch 2 on 1 rank: 10 steps)
    shutil.copytree(out / "last", tmp_path / "b" / "last")
    single = SRecRunConfig(**{**cfg.__dict__, "deepspeed": None, "out": str(tmp_path / "b")})
    single.loop = type(cfg.loop)(**{**cfg.loop.__dict__, "epochs": 2})
    assert train_srec(single).global_step == 15
    # plain checkpoint -> the one-engine pattern at stage 3 (epoch 3 on 2 ranks: 5 steps)
    stage3 = DeepSpeedConfig(pattern="one-engine", stage=3)
    want_losses, want_heads, want_opt = _continue(cfg, tmp_path / "b" / "last", 5, stage3)
    shutil.copytree(tmp_path / "b" / "last", tmp_path / "c" / "last")
    three = SRecRunConfig(**{**single.__dict__, "out": str(tmp_path / "c")})
    three.deepspeed = stage3
    three.loop = type(cfg.loop)(**{**cfg.loop.__dict__, "epochs": 3})
    assert fit(three, RayConfig(num_workers=2, name="one3")).error is None
    c = ckpt_io.load_checkpoint(tmp_path / "c" / "last")
    assert c.train_state["global_step"] == 20
    running = [sum(want_losses[: i + 1]) / (i + 1) for i in range(5)]
    assert _losses(tmp_path / "c") == pytest.approx(running, rel=1e-5, abs=1e-6)
    _close_heads(c.model_state, want_heads, cfg.loop.lr, 20)
    names = list(want_heads)  # optimizer order = the heads' parameter order
    for i, name in enumerate(names):
        if name not in NOISE_ONLY:
            for k in ("exp_avg", "exp_avg_sq"):
                got, want = c.optimizer["state"][i][k], want_opt["state"][i][k]
                assert (got - want).norm() <= 1e-4 * want.norm(), f"{name} {k}"
            assert float(c.optimizer["state"][i]["step"]) == 20.0
