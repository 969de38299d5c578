"""Teacher loop on synthetic in-memory data: loss goes down, negatives, checkpoints, resume, bad input."""

from __future__ import annotations

import json
from dataclasses import asdict, fields

import numpy as np
import pytest
import torch

from dist_srec.data.batch import collate
from dist_srec.errors import CheckpointError, ConfigError
from dist_srec.models.sasrec import SASRec, SASRecConfig
from dist_srec.train import checkpoint as ckpt_io
from dist_srec.train.loop_types import LoopConfig
from dist_srec.train.teacher import TeacherTrainConfig, load_teacher, teacher_loop, train_teacher
from dist_srec.train.teacher_loss import (
    sample_train_negatives,
    sampled_softmax_loss,
    softmax_loss,
    teacher_loss,
)

N_ITEMS, N_USERS, L = 40, 48, 10


def cyclic_samples(seed: int = 0) -> list[dict]:
    """User u walks the catalog in steps of +1 from a random start: next item = last + 1 (mod N)."""
    rng = np.random.default_rng(seed)
    out = []
    for u in range(1, N_USERS + 1):
        n = int(rng.integers(4, L + 2))
        start = int(rng.integers(0, N_ITEMS))
        items = [(start + k) % N_ITEMS + 1 for k in range(n + 1)]
        out.append(
            {
                "user": u,
                "history": items[:-1],
                "history_ts": list(range(n)),
                "target": items[-1],
                "target_ts": n,
            }
        )
    return out


class ListLoader:
    """An in-memory loader with the ShardLoader interface (epochs, seeded shuffle, resumable cursor)."""

    def __init__(self, samples: list[dict], batch_size: int = 8, shuffle: bool = True, pad: bool = False):
        self.samples, self.bs, self.shuffle, self.pad = samples, batch_size, shuffle, pad
        self.epoch, self.consumed = 0, 0

    def __len__(self) -> int:
        return -(-len(self.samples) // self.bs)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.consumed = epoch, 0

    def __iter__(self):
        order = np.arange(len(self.samples))
        if self.shuffle:
            np.random.default_rng(self.epoch).shuffle(order)
        while self.consumed < len(order):
            idx = order[self.consumed : self.consumed + self.bs]
            self.consumed += len(idx)
            yield collate([self.samples[i] for i in idx], L)
        self.epoch, self.consumed = self.epoch + 1, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "consumed": self.consumed}

    def load_state_dict(self, sd: dict) -> None:
        self.epoch, self.consumed = sd["epoch"], sd["consumed"]


def _model(seed: int = 0, dropout: float = 0.1) -> SASRec:
    torch.manual_seed(seed)
    return SASRec(SASRecConfig(num_items=N_ITEMS, hidden=16, max_len=L, dropout=dropout))


def _next_item_accuracy(m: SASRec) -> dict[str, float]:
    """Validation stand-in (reported as the selection metric): how often the target is in the top 5 of 40."""
    batch = collate(cyclic_samples(seed=99), L)
    with torch.no_grad():
        s = m.user_vector(batch["history"]) @ m.item_embeddings()[1:].T
    top5 = s.topk(5).indices + 1
    return {"ndcg@10": float((top5 == batch["target"][:, None]).any(1).float().mean())}


LOOP_FIELDS = {f.name for f in fields(LoopConfig)}


def _cfg(**kw) -> TeacherTrainConfig:
    """A teacher config from flat keyword arguments: the loop's fields go to its nested `LoopConfig`."""
    base = {"epochs": 4, "batch_size": 8, "eval_every_epochs": 2, "patience": 0, "progress": False, "seed": 3}
    kw = {**base, **kw}
    loop = {k: v for k, v in kw.items() if k in LOOP_FIELDS}
    return TeacherTrainConfig(
        loop=teacher_loop(**loop), **{k: v for k, v in kw.items() if k not in LOOP_FIELDS}
    )


def test_negatives_avoid_the_users_window() -> None:
    seen = torch.tensor([[1, 2, 3, 0], [5, 6, 7, 8]])
    neg = sample_train_negatives(seen, (2, 50), 10, torch.Generator().manual_seed(0))
    assert neg.min() >= 1 and neg.max() <= 10
    assert not set(neg[0].tolist()) & {1, 2, 3}
    assert not set(neg[1].tolist()) & {5, 6, 7, 8}


def test_loss_masks_padding_and_matches_hand_computation() -> None:
    m = _model(dropout=0.0).eval()
    batch = collate(cyclic_samples()[:4], L)
    gen = torch.Generator().manual_seed(5)
    loss, n = teacher_loss(m, batch, N_ITEMS, gen, L)
    assert n == int((batch["history"] != 0).sum())
    # recompute by hand with the same negatives
    hist = batch["history"]
    pos = torch.cat([hist[:, 1:], batch["target"][:, None]], 1)
    neg = sample_train_negatives(torch.cat([hist, batch["target"][:, None]], 1), tuple(hist.shape), N_ITEMS,
                                 torch.Generator().manual_seed(5))  # fmt: skip
    h = m(hist)
    valid = hist != 0
    lp = (h * m.item_emb(pos)).sum(-1)[valid]
    ln = (h * m.item_emb(neg)).sum(-1)[valid]
    expect = torch.nn.functional.softplus(-lp).mean() + torch.nn.functional.softplus(ln).mean()
    torch.testing.assert_close(loss, expect)


def test_loss_goes_down_and_model_learns_the_pattern(tmp_path) -> None:
    m = _model()
    before = _next_item_accuracy(m.eval())["ndcg@10"]
    state = train_teacher(
        m,
        ListLoader(cyclic_samples()),
        _next_item_accuracy,
        cfg=_cfg(epochs=30, eval_every_epochs=10, lr=5e-3),
        out_dir=tmp_path,
    )
    losses = [h["train_loss"] for h in state.history]
    assert losses[-1] < losses[0] * 0.7, losses
    assert before < 0.3 and state.best_metric > 0.7  # chance is 5/40
    assert state.stopped == "epochs" and state.epoch == 30


def test_sampled_softmax_matches_hand_computation_and_learns(tmp_path) -> None:
    m = _model(dropout=0.0).eval()
    batch = collate(cyclic_samples()[:4], L)
    loss, n = sampled_softmax_loss(m, batch, N_ITEMS, torch.Generator().manual_seed(2), L, 6)
    negs = torch.randint(1, N_ITEMS + 1, (6,), generator=torch.Generator().manual_seed(2))
    hist = batch["history"]
    valid = hist != 0
    pos = torch.cat([hist[:, 1:], batch["target"][:, None]], 1)[valid]
    h = m(hist)[valid]
    logits = torch.cat([(h * m.item_emb(pos)).sum(-1, keepdim=True), h @ m.item_emb(negs).T], 1)
    logits[:, 1:][negs[None, :] == pos[:, None]] = float("-inf")
    assert n == int(valid.sum())
    torch.testing.assert_close(
        loss, torch.nn.functional.cross_entropy(logits, torch.zeros(n, dtype=torch.int64))
    )
    state = train_teacher(
        _model(), ListLoader(cyclic_samples()), _next_item_accuracy,
        cfg=_cfg(epochs=20, eval_every_epochs=10, lr=5e-3, loss="sampled_softmax", num_negatives=8), out_dir=tmp_path,
    )  # fmt: skip
    assert state.history[-1]["train_loss"] < state.history[0]["train_loss"] and state.best_metric > 0.7


def test_full_softmax_matches_hand_computation_in_chunks_and_learns(tmp_path) -> None:
    m = _model(dropout=0.0).eval()
    batch = collate(cyclic_samples()[:4], L)
    hist = batch["history"]
    valid = hist != 0
    pos = torch.cat([hist[:, 1:], batch["target"][:, None]], 1)[valid]
    logits = m(hist)[valid] @ m.item_emb.weight[1:].T  # every real item is a class
    want = torch.nn.functional.cross_entropy(logits, pos - 1)
    want.backward()
    want_grad = m.item_emb.weight.grad.clone()
    m.zero_grad()
    loss, n = softmax_loss(m, batch, L, chunk=3)  # several checkpointed chunks, one short
    assert n == int(valid.sum()) and n % 3 != 0
    torch.testing.assert_close(loss, want)
    loss.backward()
    torch.testing.assert_close(m.item_emb.weight.grad, want_grad)
    assert float(want_grad[0].abs().sum()) == 0.0  # the padding row is never a class
    state = train_teacher(
        _model(), ListLoader(cyclic_samples()), _next_item_accuracy,
        cfg=_cfg(epochs=20, eval_every_epochs=10, lr=5e-3, loss="softmax"), out_dir=tmp_path,
    )  # fmt: skip
    assert state.history[-1]["train_loss"] < state.history[0]["train_loss"] and state.best_metric > 0.7


def test_checkpoint_round_trip_gives_identical_scores(tmp_path) -> None:
    m = _model()
    train_teacher(m, ListLoader(cyclic_samples()), _next_item_accuracy, cfg=_cfg(), out_dir=tmp_path)
    for name in ("best", "last"):
        back, ck = load_teacher(tmp_path / name, num_items=N_ITEMS, hidden=16)
        assert ck.config["model"] == asdict(m.cfg)
        batch = collate(cyclic_samples(seed=5), L)
        items = torch.randint(1, N_ITEMS + 1, (len(batch["user"]), 7))
        if name == "last":
            torch.testing.assert_close(
                back.eval().score(batch["history"], items),
                m.eval().score(batch["history"], items),
                rtol=0,
                atol=0,
            )
    assert not any(p.suffix in (".pt", ".pth", ".bin", ".pkl") for p in tmp_path.rglob("*"))


def test_mismatched_checkpoint_raises(tmp_path) -> None:
    m = _model()
    train_teacher(m, ListLoader(cyclic_samples()), _next_item_accuracy, cfg=_cfg(epochs=2), out_dir=tmp_path)
    with pytest.raises(CheckpointError, match=f"{N_ITEMS} items.*has 41"):
        load_teacher(tmp_path / "best", num_items=N_ITEMS + 1)
    with pytest.raises(CheckpointError, match="D=16, expected D=64"):
        load_teacher(tmp_path / "best", hidden=64)
    with pytest.raises(CheckpointError, match="missing"):
        load_teacher(tmp_path / "nowhere")
    # tensors that do not fit the config
    cfg = json.loads((tmp_path / "best" / "config.json").read_text())
    cfg["model"]["hidden"] = 8
    (tmp_path / "best" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="does not match its config"):
        load_teacher(tmp_path / "best")
    # resuming into a model over another catalog
    other = SASRec(SASRecConfig(num_items=N_ITEMS + 5, hidden=16, max_len=L))
    with pytest.raises(CheckpointError, match="items"):
        train_teacher(other, ListLoader(cyclic_samples()), _next_item_accuracy, cfg=_cfg(), out_dir=tmp_path)


def test_resume_reproduces_an_uninterrupted_run(tmp_path) -> None:
    full = _model()
    train_teacher(
        full, ListLoader(cyclic_samples()), _next_item_accuracy, cfg=_cfg(epochs=4), out_dir=tmp_path / "a"
    )
    part = _model()
    s1 = train_teacher(
        part, ListLoader(cyclic_samples()), _next_item_accuracy, cfg=_cfg(epochs=2), out_dir=tmp_path / "b"
    )
    assert s1.epoch == 2
    resumed = _model(seed=123)  # weights come from the checkpoint, not from this init
    s2 = train_teacher(
        resumed, ListLoader(cyclic_samples()), _next_item_accuracy, cfg=_cfg(epochs=4), out_dir=tmp_path / "b"
    )
    assert s2.epoch == 4 and s2.global_step == 4 * 6
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)


def test_mid_epoch_resume_uses_the_data_cursor(tmp_path) -> None:
    loader = ListLoader(cyclic_samples())
    train_teacher(
        _model(), loader, _next_item_accuracy, cfg=_cfg(epochs=1, save_every_steps=4), out_dir=tmp_path
    )
    st = json.loads((tmp_path / "last" / "train_state.json").read_text())["train_state"]
    assert st["loader"] == [{"epoch": 1, "consumed": 0}]  # the epoch-end save replaced the step-4 one
    ck = ckpt_io.load_checkpoint(tmp_path / "last")
    assert ck.optimizer is not None and ck.optimizer["param_groups"][0]["betas"] == (0.9, 0.98)


def test_time_budget_stops_and_validates(tmp_path) -> None:
    state = train_teacher(
        _model(),
        ListLoader(cyclic_samples()),
        _next_item_accuracy,
        cfg=_cfg(epochs=50, eval_every_epochs=25, time_budget_s=1e-6),
        out_dir=tmp_path,
    )
    assert state.stopped == "time_budget" and state.global_step == 1  # checked after every step
    assert (
        state.history
        and state.history[-1]["step"] == 1
        and (tmp_path / "best" / "model.safetensors").is_file()
    )


def test_early_stopping(tmp_path) -> None:
    state = train_teacher(
        _model(),
        ListLoader(cyclic_samples()),
        lambda m: {"ndcg@10": 0.5},
        cfg=_cfg(epochs=20, eval_every_epochs=1, patience=2),
        out_dir=tmp_path,
    )
    assert state.stopped == "early_stop" and state.epoch == 3 and state.best_step == 6  # 6 steps per epoch


def test_train_config_validation() -> None:
    with pytest.raises(ConfigError, match="'epochs'"):
        teacher_loop(epochs=0)
    with pytest.raises(ConfigError, match="'betas'"):
        teacher_loop(betas=(0.9, 1.5))
    with pytest.raises(ConfigError, match="'loss'"):
        TeacherTrainConfig(loss="bpr")
    with pytest.raises(ConfigError, match="'eval_protocol'"):
        TeacherTrainConfig(eval_protocol="auc")
    with pytest.raises(ConfigError, match="'warmup_steps'"):
        teacher_loop(warmup_steps=-1)


def test_warmup_ramps_the_lr_linearly_then_holds_it(tmp_path, monkeypatch) -> None:
    seen: list[float] = []
    step = torch.optim.Adam.step

    def recording(self, *a, **kw):
        seen.append(self.param_groups[0]["lr"])
        return step(self, *a, **kw)

    monkeypatch.setattr(torch.optim.Adam, "step", recording)
    train_teacher(_model(), ListLoader(cyclic_samples()), _next_item_accuracy,
                  cfg=_cfg(epochs=2, lr=1e-2, warmup_steps=4, eval_every_epochs=1), out_dir=tmp_path)  # fmt: skip
    assert len(seen) > 6
    torch.testing.assert_close(seen[:6], [2.5e-3, 5e-3, 7.5e-3, 1e-2, 1e-2, 1e-2])
    assert all(x == 1e-2 for x in seen[4:])
