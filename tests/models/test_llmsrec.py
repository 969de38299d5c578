"""LLM-SRec composition: the trainable set, freezing, dedup, bucketing, out-token reads, learning."""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest
import torch
from torch import nn

from dist_srec.errors import CheckpointError, ConfigError
from dist_srec.models.frozen_lm import FrozenLM, load_frozen_lm
from dist_srec.models.llmsrec import LLMSRec, LLMSRecConfig
from dist_srec.models.lm_config import LLMConfig
from dist_srec.models.losses import LossConfig

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TITLES = [None] + [
    f"Movie number {w} ({1990 + i})"
    for i, w in enumerate(
        ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven"]
    )
]
N = len(TITLES) - 1
TRAINABLE = {"item_proj", "user_out", "item_out", "user_head", "item_head", "teacher_proj"}


class StubTeacher(nn.Module):
    """Anything with item_embeddings() and user_vector(); dropout shows whether it stays in eval."""

    def __init__(self, n_items: int, d: int = 16) -> None:
        super().__init__()
        self.emb = nn.Embedding(n_items + 1, d, padding_idx=0)
        self.lin = nn.Linear(d, d)
        self.drop = nn.Dropout(0.5)

    def item_embeddings(self) -> torch.Tensor:
        return self.emb.weight

    def user_vector(self, history: torch.Tensor) -> torch.Tensor:
        return self.lin(self.drop(self.emb(history).mean(1)))


@pytest.fixture(scope="module")
def lm(tmp_path_factory) -> FrozenLM:
    return load_frozen_lm(
        LLMConfig(path="tiny", cache_dir=str(tmp_path_factory.mktemp("c")), dtype="float32")
    )


def make_model(lm: FrozenLM, **cfg) -> LLMSRec:
    torch.manual_seed(0)
    return LLMSRec(lm, StubTeacher(N), TITLES, LLMSRecConfig(head_hidden=64, **cfg))


def make_batch() -> dict[str, torch.Tensor]:
    history = torch.tensor([[0, 0, 0, 1, 2], [3, 4, 5, 6, 7], [0, 0, 0, 0, 9], [2, 11, 10, 8, 3]])
    ts = torch.where(history > 0, 1_600_000_000 + history * 86400 * 3, 0)
    return {"history": history, "history_ts": ts, "target": torch.tensor([3, 8, 10, 1])}


NEG = torch.tensor([[4, 5, 6], [1, 2, 9], [1, 3, 4], [5, 6, 7]])


def test_trainable_parameters_are_exactly_the_heads(lm: FrozenLM) -> None:
    model = make_model(lm)
    names = model.trainable_parameter_names()
    assert {n.split(".")[1] for n in names} == TRAINABLE
    assert all(n.startswith("heads.") for n in names)
    assert set(names) == {f"heads.{k}" for k in model.trainable_state_dict()}
    assert sum(p.numel() for p in model.trainable_parameters()) == sum(
        p.numel() for p in model.heads.parameters()
    )


def test_frozen_parts_stay_in_eval_mode(lm: FrozenLM) -> None:
    model = make_model(lm).train()
    assert model.heads.training and not model.lm.training and not model.teacher.training
    assert not any(m.training for m in model.lm.modules())


def test_teacher_dropout_only_while_training_and_only_when_asked(lm: FrozenLM) -> None:
    h = make_batch()["history"]
    for flag, training, noisy in ((False, True, False), (True, False, False), (True, True, True)):
        model = make_model(lm, teacher_dropout=flag).train(training)
        a, b = model.teacher_user(h), model.teacher_user(h)
        assert (not torch.equal(a, b)) == noisy, (flag, training)
        assert not model.teacher.training  # back in eval mode after every call


def test_gradients_reach_every_head_and_no_frozen_weight_changes(lm: FrozenLM) -> None:
    model = make_model(lm).train()
    frozen = {k: v.clone() for k, v in {**model.lm.state_dict(), **model.teacher.state_dict()}.items()}
    heads_before = copy.deepcopy(model.heads.state_dict())
    opt = torch.optim.Adam(model.trainable_parameters(), lr=1e-3)
    terms = model.loss(make_batch(), NEG)
    terms["loss"].backward()
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, n
        else:
            assert p.grad is None, n
    opt.step()
    after = {**model.lm.state_dict(), **model.teacher.state_dict()}
    assert all(torch.equal(frozen[k], after[k]) for k in frozen)
    assert any(not torch.equal(heads_before[k], v) for k, v in model.heads.state_dict().items())


def _count_rows(model: LLMSRec) -> list[int]:
    """Record the rows of every LM forward (whole prompts or after the cached head); undo with
    `_uncount`."""
    rows: list[int] = []
    hidden, after = model.lm.hidden, model.lm.hidden_after

    def counted_hidden(x, attention_mask=None):
        rows.append(x.shape[0])
        return hidden(x, attention_mask)

    def counted_after(prefix, x):
        rows.append(x.shape[0])
        return after(prefix, x)

    model.lm.hidden, model.lm.hidden_after = counted_hidden, counted_after
    return rows


def _uncount(model: LLMSRec) -> None:
    del model.lm.hidden, model.lm.hidden_after


def test_items_are_deduplicated_before_the_lm(lm: FrozenLM) -> None:
    model = make_model(lm)
    rows = _count_rows(model)
    try:
        with torch.no_grad():
            z = model.encode_items(torch.tensor([3, 1, 3, 3, 2]))
    finally:
        _uncount(model)
    assert sum(rows) == 3
    assert z.shape == (5, 128)
    torch.testing.assert_close(z[0], z[2])
    torch.testing.assert_close(z[0], z[3])


def test_bucketing_and_padding_do_not_change_results(lm: FrozenLM) -> None:
    big, small = make_model(lm), make_model(lm, max_tokens_per_forward=64)
    small.heads.load_state_dict(big.heads.state_dict())
    batch = make_batch()
    rows = _count_rows(small)
    try:
        with torch.no_grad():
            u_small = small.encode_users(batch)
            i_small = small.encode_items(torch.arange(1, N + 1))
    finally:
        _uncount(small)
    assert len(rows) > 2  # several buckets ran
    with torch.no_grad():
        u_big = big.encode_users(batch)
        i_big = big.encode_items(torch.arange(1, N + 1))
        # each user alone: no padding at all, out token at T-1
        alone = torch.cat([big.encode_users({k: v[b : b + 1] for k, v in batch.items()}) for b in range(4)])
    torch.testing.assert_close(u_small, u_big, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(i_small, i_big, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(alone, u_big, atol=1e-5, rtol=1e-4)


def _loss_and_grads(model: LLMSRec) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.train()
    loss = model.loss(make_batch(), NEG)["loss"]
    model.heads.zero_grad(set_to_none=True)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.heads.named_parameters()}


def test_throughput_levers_keep_loss_and_gradients(lm: FrozenLM) -> None:
    """Prefix reuse, the no-graph constant prefix and padding-aware buckets (issues 8, 20) against the
    plain path: whole prompts with a graph, one bucket padded to the longest row."""
    plain = make_model(lm, reuse_prefix=False, no_grad_prefix=False, bucket_max_padding=1.0)
    assert not plain.prefixes
    ref_loss, ref_grads = _loss_and_grads(plain)
    for cfg in ({}, {"bucket_max_padding": 0.0, "bucket_min_tokens": 0}, {"max_tokens_per_forward": 64},
                {"no_grad_prefix": False}):  # fmt: skip
        fast = make_model(lm, **cfg)
        assert fast.prefixes, "the default reuses each prompt kind's constant head"
        for head, _ in fast.prefixes.values():
            assert 0 < len(head) < 40
        fast.heads.load_state_dict(plain.heads.state_dict())
        loss, grads = _loss_and_grads(fast)
        torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-5)
        for name, g in ref_grads.items():
            torch.testing.assert_close(
                grads[name], g, atol=1e-5, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}"
            )


def test_no_grad_prefix_keeps_gradients_and_builds_the_graph_from_the_first_slot(
    lm: FrozenLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without prefix reuse too: the leading constant columns run without a graph (extend_kv), the
    graph starts at the first column holding a spliced token in any row, and the gradients match."""
    plain = make_model(lm, reuse_prefix=False, no_grad_prefix=False)
    ref_loss, ref_grads = _loss_and_grads(plain)
    fast = make_model(lm, reuse_prefix=False)
    fast.heads.load_state_dict(plain.heads.state_dict())
    calls: list[tuple[bool, int, int]] = []  # (grad enabled, first graph column, bucket length)
    extend, after = lm.extend_kv, lm.hidden_after

    def spy_extend(prefix, emb):
        assert prefix is None  # reuse_prefix off: the rows start at position 0
        kv = extend(prefix, emb)
        assert all(not k.requires_grad and not v.requires_grad for k, v in kv)
        return kv

    def spy_after(kv, emb):
        calls.append((torch.is_grad_enabled(), kv[0][0].shape[2], kv[0][0].shape[2] + emb.shape[1]))
        return after(kv, emb)

    monkeypatch.setattr(lm, "extend_kv", spy_extend)
    monkeypatch.setattr(lm, "hidden_after", spy_after)
    loss, grads = _loss_and_grads(fast)
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-5)
    for name, g in ref_grads.items():
        torch.testing.assert_close(grads[name], g, atol=1e-5, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")
    assert calls and all(grad and 0 < s < t for grad, s, t in calls), calls
    # the graph starts right at the first [HistoryEmb] of some row: the title / first entry ran without one
    b = make_batch()
    rows = [*fast.prompts.user_rows(b["history"], b["history_ts"]).rows,
            *fast.prompts.item_rows(torch.arange(1, N + 1)).rows]  # fmt: skip
    firsts = {int(np.argmax(r == lm.hist_id)) for r in rows}
    assert {s for _, s, _ in calls} <= firsts, (calls, firsts)
    calls.clear()
    with torch.no_grad():  # no graph anyway: the passes run whole, as before
        fast.encode_items(torch.arange(1, N + 1))
    assert not calls


def test_activation_checkpointing_with_prefix_reuse_keeps_loss_and_gradients(lm: FrozenLM, tmp_path) -> None:
    """Recomputing a layer that appended to the cached head's keys/values must start from the head
    alone again (a regression: the recomputation saw the head + the suffix twice)."""
    plain = make_model(lm, reuse_prefix=False)
    ref_loss, ref_grads = _loss_and_grads(plain)
    ckpt_lm = load_frozen_lm(
        LLMConfig(path="tiny", cache_dir=str(tmp_path), dtype="float32", activation_checkpointing=True)
    )
    fast = make_model(ckpt_lm)
    assert fast.prefixes
    fast.heads.load_state_dict(plain.heads.state_dict())
    loss, grads = _loss_and_grads(fast)
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-5)
    for name, g in ref_grads.items():
        torch.testing.assert_close(grads[name], g, atol=1e-5, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")


def test_prefix_is_the_template_head(lm: FrozenLM) -> None:
    model = make_model(lm)
    b = make_batch()
    users = model.prompts.user_rows(b["history"], b["history_ts"]).rows
    items = model.prompts.item_rows(torch.arange(1, N + 1)).rows
    texts = {"user": model.prompts.user_text(b["history"][1].tolist(), b["history_ts"][1].tolist()),
             "item": model.prompts.item_text(1)}  # fmt: skip
    for kind, out_id, rows in (("user", lm.user_out_id, users), ("item", lm.item_out_id, items)):
        head, _ = model.prefixes[out_id]
        text = lm.tokenizer.decode(head.tolist(), skip_special_tokens=True).strip()
        assert len(text) > 20 and texts[kind].startswith(text), (kind, text)
        assert all(np.array_equal(r[: len(head)], head.numpy()) for r in rows)


def test_loss_goes_down(lm: FrozenLM) -> None:
    model = make_model(lm).train()
    opt = torch.optim.Adam(model.trainable_parameters(), lr=1e-3, betas=(0.9, 0.98))
    batch = make_batch()
    losses = []
    for _ in range(12):
        opt.zero_grad()
        terms = model.loss(batch, NEG)
        terms["loss"].backward()
        opt.step()
        losses.append(terms["loss"].item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_ablation_without_distillation_leaves_teacher_proj_untouched(lm: FrozenLM) -> None:
    model = make_model(lm, loss=LossConfig(distill=False))
    terms = model.loss(make_batch(), NEG)
    terms["loss"].backward()
    assert terms["distill_mse"] == 0
    assert all(p.grad is None for p in model.heads.teacher_proj.parameters())


def test_bad_inputs(lm: FrozenLM) -> None:
    with pytest.raises(CheckpointError, match="another catalog"):
        LLMSRec(lm, StubTeacher(N + 3), TITLES, LLMSRecConfig(head_hidden=64))
    with pytest.raises(ValueError, match="negatives"):
        make_model(lm).loss(make_batch(), NEG[:, :2])
    with pytest.raises(ConfigError, match="max_tokens_per_forward"):
        LLMSRecConfig(max_tokens_per_forward=0)


def test_with_the_sasrec_teacher(lm: FrozenLM) -> None:
    sasrec = pytest.importorskip("dist_srec.models.sasrec")
    teacher = sasrec.SASRec(sasrec.SASRecConfig(num_items=N, hidden=16, max_len=8))
    model = LLMSRec(lm, teacher, TITLES, LLMSRecConfig(head_hidden=64)).train()
    terms = model.loss(make_batch(), NEG)
    terms["loss"].backward()
    assert torch.isfinite(terms["loss"]) and not teacher.training
    assert all(p.grad is None for p in teacher.parameters())


@pytest.mark.slow
@pytest.mark.real_assets
def test_smollm2_two_layers_training_step() -> None:
    """Real (4-bit quantized, dequantized) SmolLM2 weights cut to 2 layers, default dtype."""
    lm = load_frozen_lm(LLMConfig(path="smollm2", num_layers=2))
    model = LLMSRec(lm, StubTeacher(N), TITLES, LLMSRecConfig()).train()
    before = {k: v.clone() for k, v in lm.state_dict().items()}
    opt = torch.optim.Adam(model.trainable_parameters(), lr=1e-4)
    terms = model.loss(make_batch(), NEG)
    terms["loss"].backward()
    opt.step()
    assert torch.isfinite(terms["loss"])
    assert all(torch.equal(before[k], v) for k, v in lm.state_dict().items())
