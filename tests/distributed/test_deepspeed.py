"""DeepSpeed placement of the frozen LLM, on 2 gloo ranks (no Ray): generated config, ZeRO-3
partitioning, the LM's hash and outputs unchanged by partitioning and by training, stage 0 and stage 3
giving the same losses (and so does one engine over LM + heads at stage 3, DeepSpeed stepping), no hang when ranks run different numbers of LM forwards per pass, and the
catalog encoded in shards over ranks equal to the catalog encoded whole."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dist_srec.errors import ConfigError
from dist_srec.parallel.deepspeed_config import DeepSpeedConfig, deep_merge, deepspeed_dict
from tests.spawned import finish_worker, free_port


def test_config_is_generated_and_overridable(tmp_path: Path) -> None:
    d = deepspeed_dict(DeepSpeedConfig(stage=3), micro_batch=4, bf16=False)
    z = d["zero_optimization"]
    assert (z["stage"], z["stage3_param_persistence_threshold"], z["overlap_comm"]) == (3, 0, False)
    assert d["zero_force_ds_cpu_optimizer"] is False and d["bf16"] == {"enabled": False}
    assert deepspeed_dict(DeepSpeedConfig(stage=0, bf16=True), micro_batch=4, bf16=False)["bf16"]["enabled"]
    user = tmp_path / "ds.json"
    user.write_text(
        json.dumps({"zero_optimization": {"stage3_max_live_parameters": 1e8}, "bf16": {"enabled": True}})
    )
    d = deepspeed_dict(DeepSpeedConfig(stage=3, override=str(user)), micro_batch=4, bf16=False)
    assert (
        d["zero_optimization"]["stage"] == 3 and d["zero_optimization"]["stage3_max_live_parameters"] == 1e8
    )
    assert d["bf16"]["enabled"] is True
    user.write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    with pytest.raises(ConfigError, match="stage 0 or 3"):
        deepspeed_dict(DeepSpeedConfig(override=str(user)), micro_batch=4, bf16=False)
    with pytest.raises(ConfigError, match="must be 0 or 3"):
        DeepSpeedConfig(stage=2)  # type: ignore[arg-type]
    assert deep_merge({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}}) == {"a": {"b": 1, "c": 3}}


def test_override_path_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray Train workers run in their own working directories, so a relative override must not reach
    them as relative (bench_train_step --ds-override did)."""
    (tmp_path / "ds.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    cfg = DeepSpeedConfig(override="ds.json")
    assert cfg.override == str(tmp_path.resolve() / "ds.json")
    monkeypatch.chdir("/")
    assert deepspeed_dict(cfg, micro_batch=1, bf16=False)["zero_optimization"]["stage"] == 3


def test_deepspeed_needs_a_process_group(srec_setup, tmp_path: Path) -> None:
    from dist_srec.train.srec_train import train_srec
    from tests.train.helpers import tiny_srec_config

    cfg = tiny_srec_config(*srec_setup, tmp_path / "run", max_steps=1)
    cfg.deepspeed = DeepSpeedConfig(stage=3)
    with pytest.raises(ConfigError, match="needs an initialised process group"):
        train_srec(cfg)


def _steps(
    stage: int, data: str, teacher: str, out: str, ctx, pattern: str = "lm-engine"
) -> tuple[list[float], object]:
    from dist_srec.data.catalog import Catalog
    from dist_srec.data.loader import rank_loader
    from dist_srec.models.lm_sources import resolve_llm_path
    from dist_srec.train.loop import Trainer
    from dist_srec.train.loop_types import LoopConfig
    from dist_srec.train.srec_build import build_model
    from dist_srec.train.srec_task import SRecTask
    from tests.train.helpers import tiny_srec_config

    cfg = tiny_srec_config(Path(data), Path(teacher), Path(out), max_steps=3)
    cfg.llm.cache_dir = str(Path(out).parent / "cache")
    cfg.model.max_tokens_per_forward = 64  # ranks' batches fall into different numbers of buckets
    cat = Catalog.load(data)
    ctx.local_first(lambda: resolve_llm_path(cfg.llm))
    ds = DeepSpeedConfig(stage=stage, pattern=pattern)  # type: ignore[arg-type]
    model, parts = build_model(
        cfg.llm, teacher, cat, cfg.model, ctx.device, deepspeed=ds, micro_batch=cfg.batch_size
    )
    ident = {"catalog": {"num_items": cat.num_items}, "llm": {"content_hash": parts["lm_hash"]}}
    task = SRecTask(model, ident, deepspeed=ds, micro_batch=cfg.batch_size)
    loader = rank_loader(
        data, "train", cfg.batch_size, 20, ctx, shuffle=True, seed=cfg.loop.seed, remainder="drop"
    )
    losses: list[float] = []
    trainer = Trainer(task, loader, lambda t: {"ndcg@10": 0.0},
                      cfg=LoopConfig(max_steps=3, lr=1e-3, progress=False, log_every_steps=1, save_every_steps=1),
                      ctx=ctx, out_dir=out,
                      reporter=lambda m, c: losses.append(m["train_loss"]) if "train_loss" in m else None)  # fmt: skip
    trainer.fit()
    return losses, (model, parts["lm_hash"])


def _worker(rank: int, world: int, port: int, data: str, teacher: str, root: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))  # fmt: skip
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    ok = False
    try:
        from dist_srec.models.frozen_lm import FrozenLM
        from dist_srec.parallel.context import TrainContext
        from dist_srec.parallel.lm_engine import init_deepspeed_distributed, partition_numel

        idle: list[int] = []  # count the idle forwards that keep the ranks' LM forwards equal
        match = FrozenLM.forwards_to_match
        FrozenLM.forwards_to_match = lambda self, n: idle.append(match(self, n)) or idle[-1]  # type: ignore[method-assign]
        init_deepspeed_distributed()
        ctx = TrainContext.from_env("cpu")
        loss0, (model0, hash0) = _steps(0, data, teacher, f"{root}/stage0", ctx)
        assert partition_numel(model0.lm)[0] == partition_numel(model0.lm)[1]  # replicated
        del model0
        loss3, (model3, hash3) = _steps(3, data, teacher, f"{root}/stage3", ctx)
        local, total = partition_numel(model3.lm)
        assert local < 0.6 * total, f"stage 3 holds {local} of {total} LM weights on rank {rank}"
        assert hash3 == hash0, "the partitioned LM hashes as the replicated one"
        model3.lm._hash = None
        assert model3.lm.content_hash() == hash0, "the frozen LM changed during training"
        torch.testing.assert_close(torch.tensor(loss3), torch.tensor(loss0), rtol=1e-5, atol=1e-6)
        # distributed evaluation: the catalog encoded in shards and gathered = encoded whole
        from dist_srec.eval.tables import encode_catalog, sharded_encode_catalog

        model3.eval()
        n_items = model3.teacher_items.shape[0] - 1
        whole = encode_catalog(model3.encode_items, n_items, 16, progress=False)
        sharded = sharded_encode_catalog(model3.encode_items, n_items, ctx, 16, progress=False)
        torch.testing.assert_close(sharded, whole, rtol=1e-5, atol=1e-6)
        del model3, whole, sharded
        # the one-engine pattern at stage 3: DeepSpeed steps; same losses, LM partitioned and unchanged
        loss1, (model1, hash1) = _steps(3, data, teacher, f"{root}/one3", ctx, pattern="one-engine")
        local, total = partition_numel(model1.lm)
        assert local < 0.6 * total and hash1 == hash0
        from dist_srec.models.zero3 import is_available, is_partitioned

        left = [n for n, p in model1.lm.model.named_parameters() if is_partitioned(p) and is_available(p)]
        assert not left, f"LM weights left gathered after training: {left[:3]}"
        model1.lm._hash = None
        assert model1.lm.content_hash() == hash0, "the frozen LM changed under the one engine"
        torch.testing.assert_close(torch.tensor(loss1), torch.tensor(loss0), rtol=1e-5, atol=1e-6)
        Path(f"{root}/ok-{rank}").write_text(json.dumps({"loss0": loss0, "loss3": loss3, "idle": sum(idle)}))
        ok = True
    finally:
        finish_worker(ok)


@pytest.mark.distributed
def test_stage3_partitions_and_matches_stage0(srec_setup, tmp_path: Path) -> None:
    data, teacher = srec_setup
    mp.spawn(_worker, args=(2, free_port(), str(data), str(teacher), str(tmp_path)), nprocs=2, join=True)
    for r in range(2):
        doc = json.loads((tmp_path / f"ok-{r}").read_text())
        assert len(doc["loss3"]) == 3
    a, b = (json.loads((tmp_path / f"ok-{r}").read_text()) for r in range(2))
    assert a["loss3"] != b["loss3"], "ranks trained on different batches"
    assert a["idle"] + b["idle"] > 0, "the test should make ranks run different numbers of LM forwards"
