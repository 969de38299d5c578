"""LLM-SRec on 2 Ray Train workers (CPU, gloo) with the tiny LM under DeepSpeed ZeRO-3.

- the losses and final heads match a single process computing the same global batch (both ranks'
  batches and negatives) with the same seed, and the distributed validation metrics match a
  single-process evaluation of the same checkpoint;
- the heads are bitwise identical on every rank at every step (the loop checks it at each save);
- resume: a 2-worker checkpoint at an epoch boundary continues on 1 worker; mid-epoch is a clear error;
- a worker killed mid-run is restarted from the last Ray checkpoint (FailureConfig), ending where an
  uninterrupted run ends, with the same data cursor and sample count.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dist_srec.cluster.ray_train import RayConfig, fit
from dist_srec.errors import CheckpointError
from dist_srec.inference.evaluate import evaluate_srec
from dist_srec.models.lm_config import LLMConfig
from dist_srec.parallel.deepspeed_config import DeepSpeedConfig
from dist_srec.train.metric_logging import METRICS_FILE
from dist_srec.train.srec_train import SRecRunConfig, train_srec
from tests.train.helpers import tiny_srec_config

pytestmark = pytest.mark.distributed

# Biases shared by every candidate item: the retrieval CE's gradient through them is
# u . sum_c (p_c - y_c) = 0 exactly, so what they receive is float noise, which Adam normalises to lr.
NOISE_ONLY = {"item_head.1.bias", "item_head.3.bias"}
RAY_INIT = {"num_cpus": 2, "object_store_memory": int(1e9), "include_dashboard": False}


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(**RAY_INIT)
    yield
    ray.shutdown()


def _run_cfg(data: Path, teacher: Path, out: Path, cache: Path) -> SRecRunConfig:
    """5 steps (one epoch: 40 samples, 2 ranks x 4), a save every step, validation at the end only;
    small length buckets so that ranks run different numbers of LM forwards per pass; validation
    batches of 2 users, 10 of 40 selected, so that some batches hold no selected user on one rank
    and some on the other (ZeRO-3 needs the LM forwards in lockstep all the same)."""
    cfg = tiny_srec_config(
        data, teacher, out, epochs=1, eval_every_steps=0, save_every_steps=1, log_every_steps=1
    )
    cfg.llm.cache_dir = str(cache)
    cfg.model.max_tokens_per_forward = 96
    cfg.eval_batch_size = 2
    cfg.deepspeed = DeepSpeedConfig(stage=3)
    return cfg


def llm_as_workers_run(llm: LLMConfig, deepspeed: DeepSpeedConfig | None) -> LLMConfig:
    """The LM config a one-process reference must use to round as the workers do: ZeRO-3 partitions the
    weights, so `compile_scope auto` leaves the workers' layers eager (`dist_srec.models.fused_layer`);
    elsewhere they run fused, as the reference then does. Compiled and eager layers differ by rounding,
    which 5 Adam steps grow past the heads' tolerance."""
    if deepspeed is not None and deepspeed.stage == 3:
        return dataclasses.replace(llm, compile_layers=False)
    return llm


def _reference(cfg: SRecRunConfig, steps: int) -> tuple[list[float], dict[str, torch.Tensor]]:
    """One process doing what 2 ranks do: rank r's batch and negatives (seed, r, step), averaged."""
    from dist_srec.data.catalog import Catalog
    from dist_srec.data.loader import rank_loader
    from dist_srec.parallel.context import TrainContext
    from dist_srec.train.loop_types import step_generator
    from dist_srec.train.srec_build import build_model
    from dist_srec.train.srec_task import SRecTask

    cat = Catalog.load(cfg.data)
    model, _ = build_model(
        llm_as_workers_run(cfg.llm, cfg.deepspeed), cfg.teacher, cat, cfg.model, torch.device("cpu")
    )
    task = SRecTask(model, {"catalog": {"num_items": cat.num_items}})
    task.setup(TrainContext())
    opt = torch.optim.Adam(task.trainable(), lr=cfg.loop.lr, betas=cfg.loop.betas)
    ranks = [
        iter(rank_loader(cfg.data, "train", cfg.batch_size, model.teacher.cfg.max_len, TrainContext(rank=r, world_size=2),
                     shuffle=True, seed=cfg.loop.seed, remainder="drop"))
        for r in range(2)
    ]  # fmt: skip
    losses = []
    for step in range(steps):
        parts = [task.loss(next(it), step_generator(cfg.loop.seed, r, step))[0] for r, it in enumerate(ranks)]
        loss = sum(parts) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses, {k: v.detach().clone() for k, v in task.state_dict().items()}


def _train_state(out: Path) -> dict:
    return json.loads((out / "last" / "train_state.json").read_text())["train_state"]


@pytest.fixture(scope="module")
def two_worker_run(ray_cluster, srec_setup, tmp_path_factory) -> tuple[SRecRunConfig, object]:
    data, teacher = srec_setup
    root = tmp_path_factory.mktemp("ray2")
    cfg = _run_cfg(data, teacher, root / "run", root / "cache")
    result = fit(cfg, RayConfig(num_workers=2, name="two", num_to_keep=10))
    assert result.error is None
    return cfg, result


def test_two_workers_match_one_process(two_worker_run, tmp_path: Path) -> None:
    cfg, result = two_worker_run
    out = Path(cfg.out)
    records = [json.loads(x) for x in (out / METRICS_FILE).read_text().splitlines()]
    running = [r["train_loss"] for r in records if "train_loss" in r]  # running mean over the epoch
    assert len(running) == 5 and _train_state(out)["global_step"] == 5
    ref_losses, ref_heads = _reference(cfg, 5)
    ref_running = [sum(ref_losses[: i + 1]) / (i + 1) for i in range(5)]
    assert running == pytest.approx(ref_running, rel=1e-5, abs=1e-6)
    heads = load_file(out / "last" / "model.safetensors")
    for k, v in ref_heads.items():
        if k in NOISE_ONLY:  # a true gradient of ~0: Adam turns float noise into steps of up to lr
            assert (heads[k] - v).abs().max() <= 2 * cfg.loop.lr * 5, k
        else:
            torch.testing.assert_close(heads[k], v, rtol=1e-4, atol=1e-6, msg=k)
    # distributed validation (catalog sharded over ranks, users split) = a single-process evaluation
    valid = json.loads((out / "best" / "config.json").read_text())["validation"]
    doc = evaluate_srec(out / "best", split="valid", num_users=cfg.eval_users, num_negatives=cfg.eval_negatives,
                        seed=cfg.loop.seed, cache_dir=tmp_path / "cache", progress=False)  # fmt: skip
    single = doc["report"]["llm-srec"]["sampled"]
    assert {k: valid[k] for k in single if k in valid} == pytest.approx(
        {k: single[k] for k in single if k in valid}
    )
    # Ray's checkpoint holds last/ and best/; rank 0's metrics are the ranks' means
    with result.checkpoint.as_directory() as d:
        assert (Path(d) / "last" / "train_state.json").is_file() and (Path(d) / "best").is_dir()
    assert result.metrics["step"] == 5


def test_resume_two_workers_into_one(two_worker_run, tmp_path: Path) -> None:
    cfg, _ = two_worker_run
    storage = Path(cfg.out) / "ray" / "two"
    mid = [p for p in storage.glob("checkpoint_*") if p.is_dir() and _train_state(p)["global_step"] == 3]
    assert mid, "the step-3 checkpoint is kept (num_to_keep=10)"
    single = SRecRunConfig(**{**cfg.__dict__, "deepspeed": None})  # one process, no process group
    shutil.copytree(mid[0], tmp_path / "mid")
    with pytest.raises(CheckpointError, match="saved mid-epoch by 2 ranks; resume it with 2 ranks"):
        train_srec(SRecRunConfig(**{**single.__dict__, "out": str(tmp_path / "mid")}))
    shutil.copytree(Path(cfg.out) / "last", tmp_path / "end" / "last")  # an epoch boundary
    single.out, single.loop.epochs = str(tmp_path / "end"), 2
    st = train_srec(single)
    assert (st.epoch, st.global_step) == (2, 5 + 10)  # epoch 2 on 1 rank: 40 samples / 4


def test_worker_killed_mid_run_recovers(two_worker_run, srec_setup, tmp_path: Path) -> None:
    from tests.distributed.faults import KillOnce

    cfg0, _ = two_worker_run
    data, teacher = srec_setup
    cfg = _run_cfg(data, teacher, tmp_path / "run", Path(cfg0.llm.cache_dir))
    marker = tmp_path / "killed.txt"
    result = fit(cfg, RayConfig(num_workers=2, name="killed", max_failures=1), on_report=KillOnce(marker))
    assert result.error is None and marker.is_file(), "the worker was killed and the run recovered"
    recs = [json.loads(x) for x in (tmp_path / "run" / METRICS_FILE).read_text().splitlines()]
    trained = [r["step"] for r in recs if "train_loss" in r]
    # The kill follows rank 1's step-3 checkpoint report; Ray registers that checkpoint only if the
    # controller saw every rank's report first, so the restart resumes after step 3 or after step 2:
    # steps since the last registered checkpoint are redone, none before it, none skipped.
    before, after = trained[:3], trained[3:]
    assert before == [1, 2, 3] and after[0] in (3, 4) and after == list(range(int(after[0]), 6)), trained
    a, b = _train_state(Path(cfg0.out)), _train_state(tmp_path / "run")
    assert a["loader"] == b["loader"] and a["samples"] == b["samples"] == 40
    ha = load_file(Path(cfg0.out) / "last" / "model.safetensors")
    hb = load_file(tmp_path / "run" / "last" / "model.safetensors")
    for k in ha:
        torch.testing.assert_close(ha[k], hb[k], rtol=1e-5, atol=1e-6, msg=k)


def test_teacher_pretraining_on_two_workers(ray_cluster, srec_setup, tmp_path: Path) -> None:
    """The teacher's loop under Ray Train with DDP: replicas checked identical at every save (the loop
    raises otherwise), checkpoints reported to Ray, the distributed test evaluation written by rank 0."""
    from dist_srec.models.sasrec import SASRecConfig
    from dist_srec.train.teacher import TeacherRunConfig, TeacherTrainConfig, teacher_loop

    data, _ = srec_setup
    train = TeacherTrainConfig(
        loop=teacher_loop(epochs=2, eval_every_epochs=1, progress=False), eval_negatives=20, batch_size=8
    )
    job = TeacherRunConfig(
        data=str(data), out=str(tmp_path / "teacher"), model=SASRecConfig(hidden=16, max_len=20), train=train
    )
    result = fit(job, RayConfig(num_workers=2, name="teacher"))
    assert result.error is None and result.checkpoint is not None
    st = _train_state(tmp_path / "teacher")
    assert st["epoch"] == 2 and st["samples"] == 2 * 40 and len(st["loader"]) == 2
    assert (tmp_path / "teacher" / "best" / "model.safetensors").is_file()
    assert (tmp_path / "teacher" / "results.json").is_file()
