"""The frozen LM: loading, special tokens, freezing, body-only forward, content hash, bad paths."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

from dist_srec.errors import ConfigError
from dist_srec.models.frozen_lm import FrozenLM, load_frozen_lm
from dist_srec.models.lm_config import COMPILE_SCOPES, LLMConfig, resolve_dtype
from dist_srec.models.lm_sources import smollm2_safetensors
from dist_srec.models.special_tokens import SPECIAL_TOKENS
from dist_srec.models.tiny_lm import tiny_lm_dir
from tests.models.helpers import saved_bytes

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("llm-cache"))


@pytest.fixture(scope="module")
def lm(cache) -> FrozenLM:
    return load_frozen_lm(LLMConfig(path="tiny", cache_dir=cache, dtype="float32"))


def test_special_tokens_added_and_embeddings_resized(lm: FrozenLM) -> None:
    tok = lm.tokenizer
    ids = [lm.hist_id, lm.user_out_id, lm.item_out_id, lm.pad_id]
    assert len(set(ids)) == 4
    for t in SPECIAL_TOKENS:
        assert tok(t, add_special_tokens=False)["input_ids"] == [tok.convert_tokens_to_ids(t)]
    assert lm.input_embeddings().shape == (len(tok), lm.hidden_size)
    assert lm.model.config.pad_token_id == lm.pad_id
    # new rows are the mean of the old ones, deterministically
    table = lm.input_embeddings()
    torch.testing.assert_close(table[lm.hist_id], table[: lm.hist_id].mean(0))


def test_every_weight_frozen_and_eval_even_after_train(lm: FrozenLM) -> None:
    lm.train()
    assert not lm.training and not lm.model.training
    assert all(not p.requires_grad for p in lm.parameters())


def test_hidden_is_body_only_and_grads_reach_inputs_not_weights(lm: FrozenLM) -> None:
    calls = []
    hook = lm.model.get_output_embeddings().register_forward_hook(lambda *a: calls.append(1))
    try:
        x = torch.randn(2, 7, lm.hidden_size, requires_grad=True)
        h = lm.hidden(x)
        (h * torch.randn_like(h)).sum().backward()
    finally:
        hook.remove()
    assert h.shape == (2, 7, lm.hidden_size)
    assert calls == []  # the vocabulary projection never ran
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in lm.parameters())


def test_right_padding_without_mask_matches_masked_at_real_positions(lm: FrozenLM) -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 9, lm.hidden_size)
    lengths = torch.tensor([9, 5, 2])
    mask = (torch.arange(9)[None] < lengths[:, None]).long()
    with torch.no_grad():
        free = lm.hidden(x)
        masked = lm.hidden(x, mask)
        alone = lm.hidden(x[1:2, :5])
    real = mask.bool()
    torch.testing.assert_close(free[real], masked[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(free[1, :5], alone[0], atol=1e-5, rtol=1e-5)


def test_content_hash_is_stable_across_reload_and_dtype_and_sees_weights(lm: FrozenLM, cache: str) -> None:
    again = load_frozen_lm(LLMConfig(path="tiny", cache_dir=cache, dtype="bfloat16"))
    assert again.content_hash() == lm.content_hash()
    assert len(lm.content_hash()) == 64
    with torch.no_grad():
        again.model.model.layers[1].mlp.up_proj.weight.mul_(2.0)
    again._hash = None
    assert again.content_hash() != lm.content_hash()


def test_num_layers_truncates(cache: str) -> None:
    one = load_frozen_lm(LLMConfig(path="tiny", cache_dir=cache, num_layers=1, dtype="float32"))
    assert len(one.body.layers) == 1


def test_bad_paths_give_config_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_frozen_lm(LLMConfig(path=str(tmp_path / "nope")))
    with pytest.raises(ConfigError, match="not a Hugging Face model directory"):
        load_frozen_lm(LLMConfig(path=str(tmp_path)))
    from transformers import ViTConfig

    ViTConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    ).save_pretrained(tmp_path / "vit")
    with pytest.raises(ConfigError, match="not a causal LM"):
        load_frozen_lm(LLMConfig(path=str(tmp_path / "vit")))


def test_config_validation_and_dtypes() -> None:
    with pytest.raises(ConfigError, match="dtype"):
        LLMConfig(dtype="int8")
    with pytest.raises(ConfigError, match="num_layers"):
        LLMConfig(num_layers=0)
    assert resolve_dtype("float32") is torch.float32
    assert resolve_dtype("auto") in (torch.bfloat16, torch.float32)


@pytest.mark.slow
@pytest.mark.real_assets
def test_smollm2_conversion_special_tokens_and_paris() -> None:
    """Converts the GGUF once into the default cache (reused afterwards), then checks the real model.
    The weights are 4-bit quantized (Q4_1), dequantized on load."""
    t0 = time.perf_counter()
    path = smollm2_safetensors()
    convert_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    lm = load_frozen_lm(LLMConfig(path="smollm2", dtype="float32"))
    load_s = time.perf_counter() - t0
    print(f"smollm2: convert-or-reuse {convert_s:.1f} s, load {load_s:.1f} s from {path}")
    assert lm.hidden_size == 576 and len(lm.body.layers) == 30
    assert all(not p.requires_grad for p in lm.parameters())
    tok = lm.tokenizer
    ids = tok("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = lm.model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=lm.pad_id)
    assert "Paris" in tok.decode(out[0, ids.shape[1] :])


@pytest.mark.slow
@pytest.mark.real_assets
def test_smollm2_two_layers_gradients_reach_inputs_only() -> None:
    lm = load_frozen_lm(LLMConfig(path="smollm2", num_layers=2))
    assert len(lm.body.layers) == 2 and lm.hidden_size == 576
    x = torch.randn(2, 16, 576, dtype=lm.dtype, requires_grad=True)
    lm.hidden(x).float().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in lm.parameters())


def test_activation_checkpointing_same_outputs_and_grads_less_memory(cache) -> None:
    plain = load_frozen_lm(LLMConfig(path="tiny", cache_dir=cache, dtype="float32"))
    ckpt = load_frozen_lm(
        LLMConfig(path="tiny", cache_dir=cache, dtype="float32", activation_checkpointing=True)
    )
    torch.manual_seed(0)
    x = torch.randn(3, 40, plain.hidden_size)
    w = torch.randn(3, 40, plain.hidden_size)
    results = []
    for lm in (plain, ckpt):
        xi = x.clone().requires_grad_(True)
        h, saved = saved_bytes(lambda lm=lm, xi=xi: lm.hidden(xi))
        (h * w).sum().backward()
        results.append((h.detach(), xi.grad, saved))
    (h0, g0, s0), (h1, g1, s1) = results
    torch.testing.assert_close(h1, h0)
    torch.testing.assert_close(g1, g0)
    assert s1 < s0 / 2, (s0, s1)  # only the layers' inputs are kept
    with torch.no_grad():  # no graph: the plain forward, nothing recomputed
        torch.testing.assert_close(ckpt.hidden(x), h0)


@pytest.mark.parametrize("scope", COMPILE_SCOPES)
def test_compiled_layers_same_outputs_and_input_grads(cache, scope: str) -> None:
    plain = load_frozen_lm(LLMConfig(path="tiny", cache_dir=cache, dtype="float32", compile_layers=False))
    comp = load_frozen_lm(
        LLMConfig(path="tiny", cache_dir=cache, dtype="float32", compile_layers=True, compile_scope=scope)
    )
    torch.manual_seed(0)
    for shape in ((3, 17), (5, 9)):  # a second shape: recompiled (dynamic), still equal
        x = torch.randn(*shape, plain.hidden_size)
        w = torch.randn(*shape, plain.hidden_size)
        out = []
        for lm in (plain, comp):
            xi = x.clone().requires_grad_(True)
            h = lm.hidden(xi)
            (h * w).sum().backward()
            out.append((h.detach(), xi.grad))
        torch.testing.assert_close(out[1][0], out[0][0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(out[1][1], out[0][1], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(("scope", "graphs"), [("layers", 2), ("parts", 2)])
def test_compile_covers_every_layer(cache, scope: str, graphs: int) -> None:
    """9 layers, one pass kind: `layers` shares 2 graphs (before and after the attention) across all 9
    layers, and `parts` 2 (MLP, RMSNorm). Compiling each layer module whole needed one graph per layer
    (its KV-cache slot), past torch's default recompile limit of 8, where the 9th layer ran eager."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    lm = load_frozen_lm(
        LLMConfig(path=str(tiny_lm_dir(Path(cache), num_layers=9)), dtype="float32",
                  compile_layers=True, compile_scope=scope)
    )  # fmt: skip
    counters.clear()
    lm.prefix_kv(torch.tensor([1, 2, 3]))
    assert counters["stats"]["unique_graphs"] == graphs


def test_compile_scope_is_validated() -> None:
    with pytest.raises(ConfigError, match="compile_scope"):
        LLMConfig(compile_scope="model")


class ScaledEmbedding(torch.nn.Embedding):
    """An embedding module that transforms inside its forward, as Gemma's scales by sqrt(H)."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return super().forward(ids) * 3.0 + 0.5


def test_spliced_plain_tokens_are_what_the_models_own_embedding_module_computes(cache: str) -> None:
    from dist_srec.kernels.seq_embed import seq_embed

    lm = load_frozen_lm(LLMConfig(path="tiny", dtype="float32", cache_dir=cache))
    plain = lm.model.get_input_embeddings()
    scaled = ScaledEmbedding(plain.num_embeddings, plain.embedding_dim)
    scaled.weight.data.copy_(plain.weight.data)
    lm.model.set_input_embeddings(scaled)
    lm = FrozenLM(lm.model, lm.tokenizer, source="tiny-scaled")
    ids = torch.tensor(
        [lm.tokenizer("hello world, a title", add_special_tokens=False)["input_ids"] + [lm.hist_id]]
    )
    h = lm.hidden_size
    emb = seq_embed(ids, lm.input_embeddings(), torch.zeros(1, h), torch.tensor([0]), torch.zeros(2, h),
                    hist_id=lm.hist_id, out_ids=(lm.user_out_id, lm.item_out_id))  # fmt: skip
    with torch.no_grad():
        want = scaled(ids[:, :-1])
    torch.testing.assert_close(emb[:, :-1], want)
    assert not torch.allclose(emb[:, :-1], plain.weight[ids[:, :-1]]), "the raw weight would be wrong here"


def test_a_hub_id_loads_offline_from_the_hub_cache(cache: str, tmp_path: Path) -> None:
    """`--llm.path org/name` with HF_HUB_OFFLINE=1: the model comes from a Hugging Face cache laid out on
    disk (here the tiny model under a fake id), identical to loading its directory; an id the cache
    lacks is one clear error."""
    import json
    import shutil
    import subprocess
    import sys

    src = tiny_lm_dir(Path(cache))
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--fake-org--tiny-llama"
    shutil.copytree(src, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    want = load_frozen_lm(LLMConfig(path=str(src), dtype="float32")).content_hash()
    code = (
        "import json\n"
        "from dist_srec.errors import ConfigError\n"
        "from dist_srec.models.frozen_lm import load_frozen_lm\n"
        "from dist_srec.models.lm_config import LLMConfig\n"
        "h = load_frozen_lm(LLMConfig(path='fake-org/tiny-llama', dtype='float32')).content_hash()\n"
        "try:\n    load_frozen_lm(LLMConfig(path='fake-org/absent'))\n    err = None\n"
        "except ConfigError as e:\n    err = str(e)\n"
        "print(json.dumps({'hash': h, 'err': err}))\n"
    )
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(tmp_path / "hub"),
        "HF_HOME": str(tmp_path / "hf"),
    }
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["hash"] == want
    assert got["err"].startswith(
        "LLM fake-org/absent is not in the Hugging Face cache (HF_HUB_OFFLINE is set)"
    )
