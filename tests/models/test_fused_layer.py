"""The fused decoder layer (`compile_scope` `layers` / `auto`, `dist_srec.models.fused_layer`): the same
outputs and input gradients as the model's own layers, in every pass kind a training step runs, and a
refusal with the reason wherever it would compute something else."""

from __future__ import annotations

import logging

import pytest
import torch

from dist_srec.errors import ConfigError
from dist_srec.models import fused_layer
from dist_srec.models.frozen_lm import FrozenLM, load_frozen_lm
from dist_srec.models.lm_config import LLMConfig
from dist_srec.models.lm_levers import compile_decoder, decoder_layers
from tests.models.helpers import saved_bytes


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("llm-cache"))


def _lm(cache: str, **kw) -> FrozenLM:
    return load_frozen_lm(LLMConfig(path="tiny", cache_dir=cache, dtype="float32", **kw))


def test_the_default_fuses_every_layer(cache: str) -> None:
    lm = _lm(cache)
    layers = decoder_layers(lm.body)
    assert all("forward" in vars(layer) for layer in layers)  # an instance forward: the fused one
    eager = _lm(cache, compile_layers=False)
    assert not any("forward" in vars(layer) for layer in decoder_layers(eager.body))


@pytest.mark.parametrize("checkpointing", [False, True])
def test_fused_layers_match_the_models_own_after_a_cached_prompt_head(
    cache: str, checkpointing: bool
) -> None:
    """The training step's passes: a cached constant head (no graph), then prompts attending to it, with
    gradients to the inputs; with activation checkpointing wrapped around the fused forward too."""
    plain = _lm(cache, compile_layers=False)
    fused = _lm(cache, compile_scope="layers", activation_checkpointing=checkpointing)
    head = torch.tensor([5, 9, 2, 7])
    torch.manual_seed(0)
    for shape in ((3, 11), (4, 6)):  # a second shape: the dynamic recompile, still equal
        x = torch.randn(*shape, plain.hidden_size)
        w = torch.randn(*shape, plain.hidden_size)
        out = []
        for lm in (plain, fused):
            xi = x.clone().requires_grad_(True)
            h = lm.hidden_after(lm.prefix_kv(head), xi)
            (h * w).sum().backward()
            out.append((h.detach(), xi.grad))
        torch.testing.assert_close(out[1][0], out[0][0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(out[1][1], out[0][1], atol=1e-4, rtol=1e-4)


def test_fused_layers_match_in_bf16(cache: str) -> None:
    plain = load_frozen_lm(LLMConfig(path="tiny", cache_dir=cache, dtype="bfloat16", compile_layers=False))
    fused = load_frozen_lm(LLMConfig(path="tiny", cache_dir=cache, dtype="bfloat16", compile_scope="layers"))
    x = torch.randn(2, 9, plain.hidden_size, generator=torch.Generator().manual_seed(1)).bfloat16()
    grads = []
    for lm in (plain, fused):
        xi = x.clone().requires_grad_(True)
        lm.hidden(xi).float().pow(2).sum().backward()
        grads.append(xi.grad.float())
    torch.testing.assert_close(grads[1], grads[0], atol=5e-2, rtol=5e-2)


def _refused(lm: FrozenLM, match: str) -> None:
    layers = decoder_layers(lm.body)
    before = [vars(layer).get("forward") for layer in layers]
    with pytest.raises(ConfigError, match=match):
        compile_decoder(lm.body, "layers")
    assert compile_decoder(lm.body, "auto") == 0  # auto: left eager, the reason logged
    assert [vars(layer).get("forward") for layer in layers] == before


def test_a_layer_of_another_form_is_refused(cache: str) -> None:
    lm = _lm(cache, compile_layers=False)
    decoder_layers(lm.body)[1].self_attn.q_norm = torch.nn.Identity()  # Qwen3-style q/k norms
    _refused(lm, "not of the Llama form .*q_norm")


def test_a_layer_that_computes_something_else_is_caught_by_the_probe(cache: str) -> None:
    lm = _lm(cache, compile_layers=False)
    norm = decoder_layers(lm.body)[0].input_layernorm
    plain_forward = norm.forward
    norm.forward = lambda x: plain_forward(x) * 2.0  # same structure, other math (as Gemma's 1 + w)
    _refused(lm, "computes something else")


def test_zero3_partitioned_weights_are_refused(cache: str) -> None:
    lm = _lm(cache, compile_layers=False)
    next(lm.body.parameters()).ds_id = 0  # what DeepSpeed ZeRO-3 marks a partitioned parameter with
    _refused(lm, "ZeRO-3")


def test_a_cpu_without_a_cpp_compiler_is_refused(cache: str, monkeypatch) -> None:
    lm = _lm(cache, compile_layers=False)
    monkeypatch.setattr(fused_layer.shutil, "which", lambda _name: None)
    _refused(lm, "C\\+\\+ compiler")


def test_selective_checkpointing_same_grads_and_keeps_less(cache: str) -> None:
    # flash attention throughout: the math path's saved probabilities would dilute the MLP's share
    fused = _lm(cache, selective_checkpointing=False, math_attention_max_keys=0)
    selective = _lm(cache, math_attention_max_keys=0)  # the default
    x = torch.randn(3, 40, fused.hidden_size, generator=torch.Generator().manual_seed(2))
    w = torch.randn(3, 40, fused.hidden_size, generator=torch.Generator().manual_seed(3))
    results = []
    for lm in (fused, selective):
        xi = x.clone().requires_grad_(True)
        h, saved = saved_bytes(lambda lm=lm, xi=xi: lm.hidden(xi), lm.parameters())
        (h * w).sum().backward()
        results.append((h.detach(), xi.grad, saved))
    (h0, g0, s0), (h1, g1, s1) = results
    torch.testing.assert_close(h1, h0)
    torch.testing.assert_close(g1, g0, atol=1e-5, rtol=1e-4)
    assert s1 < 0.8 * s0, (s0, s1)  # 71% here (I = 2H); the MLP weighs more in real LMs (SmolLM2: 2.67H)


def test_selective_checkpointing_is_inert_without_the_fused_layers(cache: str, caplog) -> None:
    """On by default, it applies only where the fused layers run: elsewhere, and under whole-layer
    checkpointing, the LM loads without it and the log says so."""
    for kw in ({"compile_layers": False}, {"compile_scope": "parts"}, {"activation_checkpointing": True}):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="dist_srec"):
            _lm(cache, **kw)
        assert "selective_checkpointing has no effect" in caplog.text, kw


def _attention_kernels(
    lm: FrozenLM, x: torch.Tensor, grad: bool
) -> tuple[set[str], torch.Tensor, torch.Tensor]:
    """The SDPA kernels one pass runs (forward, and backward with `grad`), its output and input grad."""
    xi = x.clone().requires_grad_(grad)
    cpu = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=cpu) as prof, torch.set_grad_enabled(grad):
        h = lm.hidden(xi)
        if grad:
            h.pow(2).sum().backward()
    names = {e.key for e in prof.key_averages() if "scaled_dot_product" in e.key}
    return names, h.detach(), xi.grad


FLASH = "aten::_scaled_dot_product_flash_attention_for_cpu"


def test_short_attention_with_grad_runs_the_math_path_with_the_same_grads(cache: str) -> None:
    """`math_attention_max_keys`: a CPU pass with grad over few keys runs `math_attention` instead of
    the flash kernel, with the same outputs and input gradients; longer prompts and passes without grad
    keep flash, and 0 turns it off."""
    lever = _lm(cache, math_attention_max_keys=16)
    off = _lm(cache, math_attention_max_keys=0)
    short = torch.randn(3, 12, lever.hidden_size, generator=torch.Generator().manual_seed(4))
    long = torch.randn(2, 20, lever.hidden_size, generator=torch.Generator().manual_seed(5))

    k_lever, h_lever, g_lever = _attention_kernels(lever, short, grad=True)
    k_off, h_off, g_off = _attention_kernels(off, short, grad=True)
    assert not k_lever, k_lever  # no SDPA kernel at all: the math path
    assert FLASH in k_off, k_off
    torch.testing.assert_close(h_lever, h_off, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g_lever, g_off, atol=1e-5, rtol=1e-4)

    assert FLASH in _attention_kernels(lever, long, grad=True)[0]  # 20 keys > 16: flash
    assert FLASH in _attention_kernels(lever, short, grad=False)[0]  # no grad: flash's fast forward


@pytest.mark.parametrize("mask", ["none", "bool", "additive"])
def test_math_attention_equals_sdpa(mask: str) -> None:
    """`math_attention` and `sdpa_gqa_attention` against SDPA on repeated kv heads, GQA (6 query heads, 2
    kv heads), queries after a 5-token cached head: no mask (causal, top-left, as SDPA's is_causal), a
    boolean mask, an additive one."""
    g = torch.Generator().manual_seed(6)
    q = torch.randn(2, 6, 7, 8, generator=g)
    k, v = torch.randn(2, 2, 12, 8, generator=g), torch.randn(2, 2, 12, 8, generator=g)
    allowed = torch.ones(7, 12, dtype=torch.bool).tril(5)[None, None].expand(2, 1, 7, 12)
    m = {"none": None, "bool": allowed,
         "additive": torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))}[mask]  # fmt: skip
    want = torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat_interleave(3, 1), v.repeat_interleave(3, 1), attn_mask=m, is_causal=m is None, scale=0.3
    )
    for attention in (fused_layer.math_attention, fused_layer.sdpa_gqa_attention):
        got, _ = attention(torch.nn.Module(), q, k, v, m, 0.3)
        torch.testing.assert_close(got, want.transpose(1, 2), atol=1e-5, rtol=1e-5)
    if m is not None:  # a per-head mask, as [b, heads, tq, tk]
        got, _ = fused_layer.math_attention(torch.nn.Module(), q, k, v, m.expand(2, 6, 7, 12), 0.3)
        torch.testing.assert_close(got, want.transpose(1, 2), atol=1e-5, rtol=1e-5)


def test_math_attention_max_keys_is_validated() -> None:
    with pytest.raises(ConfigError, match="math_attention_max_keys"):
        LLMConfig(math_attention_max_keys=-1)


def test_cpu_sdpa_keeps_the_kv_heads_grouped_after_a_cached_head(cache: str, monkeypatch) -> None:
    """With the cached prompt head there is a mask, and transformers would repeat each kv head for its
    query heads; the fused layer calls SDPA on the kv heads as they are (`enable_gqa`), with the same
    outputs and input gradients as transformers' own call (the eager layers)."""
    x = torch.randn(2, 6, _lm(cache).hidden_size, generator=torch.Generator().manual_seed(7))
    head = torch.tensor([5, 9, 2])

    def run(model: FrozenLM) -> tuple[torch.Tensor, torch.Tensor]:
        xi = x.clone().requires_grad_(True)
        h = model.hidden_after(model.prefix_kv(head), xi)
        h.pow(2).sum().backward()
        return h.detach(), xi.grad

    want = run(_lm(cache, compile_layers=False))
    lm = _lm(cache, math_attention_max_keys=0)
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, **kw):
        calls.append((q.shape[1], k.shape[1], kw.get("enable_gqa"), kw.get("attn_mask") is not None))
        return sdpa(q, k, v, **kw)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    got = run(lm)
    torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[1], want[1], atol=1e-5, rtol=1e-4)
    heads, kv = lm.model.config.num_attention_heads, lm.model.config.num_key_value_heads
    assert kv < heads  # the tiny LM has grouped kv heads
    assert all(c[:3] == (heads, kv, True) for c in calls), calls  # the head's own pass too
    assert sum(c[3] for c in calls) == lm.model.config.num_hidden_layers, calls  # after it: masked
