"""The fused decoder layer (`compile_scope` `layers` / `auto`, `dist_srec.models.fused_layer`): the same
outputs and input gradients as the model's own layers, in every pass kind a training step runs, and a
refusal with the reason wherever it would compute something else."""

from __future__ import annotations

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
    fused = _lm(cache)
    selective = _lm(cache, selective_checkpointing=True)
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


def test_selective_checkpointing_needs_the_fused_layers() -> None:
    with pytest.raises(ConfigError, match="selective_checkpointing"):
        LLMConfig(selective_checkpointing=True, compile_layers=False)
    with pytest.raises(ConfigError, match="selective_checkpointing"):
        LLMConfig(selective_checkpointing=True, compile_scope="parts")
    with pytest.raises(ConfigError, match="choose one"):
        LLMConfig(selective_checkpointing=True, activation_checkpointing=True)
