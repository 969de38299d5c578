"""The LLM-SRec train step and catalog encoding on one device, on the torch and the Triton kernel paths:
samples/s, items/s, peak memory, and the parity of the two paths' losses and gradients.

    python benchmarks/bench_gpu_step.py --lm-config DIR --device cuda --out results.json   # the GPU check
    python benchmarks/bench_gpu_step.py --llm tiny --device cpu --dtype float32 --steps 1 \\
        --items 64 --out /tmp/step.json                                                  # its CPU dry run

Needs no prepared data and no teacher run, so that it runs on a machine with only torch, triton and
transformers: the catalog is synthetic (`--items` titles "Film <i> (<year>)"), histories and negatives
are seeded draws, and the teacher is a randomly initialised SASRec. With `--lm-config DIR` (a model's
config.json and tokenizer files, no weights) the LM is that architecture with random weights: what a
step costs depends on the shapes and the dtype, not on the weights' values, and SmolLM2's real weights
do not fit the 64 MiB a GPU check may carry.

Paths (`--paths`, in order): `torch` and `triton` are the kernel paths on eager decoder layers; `fused`
is the torch kernel path on a second build of the same LM whose decoder layers run as the compiled
fused functions (`LLMConfig.compile_layers`, `compile_scope="layers"`: a layer that cannot be fused is
an error here, not a silent eager fallback; each row counts its fused layers). Per path: `--warmup`
untimed and `--steps` timed steps (loss, backward, Adam on the heads; the fused path compiles in the
warm-up), one untimed encoding of up to 512 items (where the fused path compiles its no-grad graphs)
and one timed encoding of the whole synthetic catalog. Parity, against `torch`: the same batch,
negatives and initial heads; the largest relative difference of the loss terms and of each head's
gradient (on the scale of the largest gradient), checked against `--rtol`. On CPU the Triton path runs
in triton's interpreter (set TRITON_INTERPRET=1): a correctness run, whose times mean nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from benchmarks.harness import machine, peak_rss_mb


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--llm", default="tiny", help="an LLMConfig path (ignored with --lm-config)")
    p.add_argument("--lm-config", help="a config.json + tokenizer dir: that architecture, random weights")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--items", type=int, default=3706, help="synthetic catalog size (ML-1M's by default)")
    p.add_argument("--batch-size", type=int, default=20)
    p.add_argument("--negatives", type=int, default=3)
    p.add_argument("--history", type=int, default=50, help="history length per user (the prompt keeps 10)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--paths", default="torch,triton", help="any of torch, triton, fused (see above)")
    p.add_argument("--rtol", type=float, default=2e-2, help="parity tolerance (bf16 reorders sums)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default="/tmp/dist-srec-gpu-step")
    p.add_argument("--out", required=True, help="the results JSON")
    return p.parse_args()


def random_lm_dir(config_dir: Path, work: Path) -> Path:
    """A saved HF causal LM of `config_dir`'s architecture with random weights (seeded), and its tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    out = work / f"random-{config_dir.name}"
    if not (out / "config.json").is_file():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(config_dir))
        model.save_pretrained(out)
        AutoTokenizer.from_pretrained(config_dir).save_pretrained(out)
    return out


def build(args: argparse.Namespace, fused: bool = False) -> tuple[Any, dict[str, torch.Tensor], torch.Tensor]:
    """The model, one batch and its negatives; the same for every call with the same `args` (seeded),
    with eager decoder layers, or with the fused compiled ones (`fused`)."""
    from dist_srec.models.frozen_lm import load_frozen_lm
    from dist_srec.models.llmsrec import LLMSRec, LLMSRecConfig
    from dist_srec.models.lm_config import LLMConfig
    from dist_srec.models.sasrec import SASRec, SASRecConfig

    dev = torch.device(args.device)
    path = str(random_lm_dir(Path(args.lm_config), Path(args.work))) if args.lm_config else args.llm
    torch.manual_seed(args.seed)  # the random teacher below: equal in every build
    scope = {"compile_layers": True, "compile_scope": "layers"} if fused else {"compile_layers": False}
    lm = load_frozen_lm(LLMConfig(path=path, dtype=args.dtype, cache_dir=args.work, **scope), dev)
    g = torch.Generator().manual_seed(args.seed)
    titles = [None] + [
        f"Film {i} ({1950 + int(torch.randint(70, (1,), generator=g))})" for i in range(args.items)
    ]
    teacher = SASRec(SASRecConfig(num_items=args.items, hidden=64, max_len=args.history, dropout=0.0))
    model = LLMSRec(lm, teacher.to(dev), titles, LLMSRecConfig(seed=args.seed)).to(dev).train()
    b, n = args.batch_size, args.history
    history = torch.randint(1, args.items + 1, (b, n), generator=g)
    ts = 1_000_000_000 + torch.cumsum(torch.randint(3600, 86400 * 30, (b, n), generator=g), dim=1)
    batch = {"history": history.to(dev), "history_ts": ts.to(dev), "target": torch.randint(1, args.items + 1, (b,), generator=g).to(dev)}  # fmt: skip
    negatives = torch.randint(1, args.items + 1, (b, args.negatives), generator=g)
    return model, batch, negatives


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def step_once(model: Any, opt: torch.optim.Optimizer, batch: dict, negatives: torch.Tensor) -> float:
    terms = model.loss(batch, negatives)
    terms["loss"].backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(terms["loss"].detach())


def loss_and_grads(
    model: Any, batch: dict, negatives: torch.Tensor
) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    terms = model.loss(batch, negatives)
    terms["loss"].backward()
    grads = {n: p.grad.detach().float().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return {k: float(v.detach()) for k, v in terms.items()}, grads


def max_rel(a: torch.Tensor, b: torch.Tensor, floor: float = 1e-12) -> float:
    """max |a - b| / max(max |b|, floor)."""
    return float((a - b).abs().max() / b.abs().max().clamp_min(floor))


def run_path(
    args: argparse.Namespace, model: Any, batch: dict, negatives: torch.Tensor, path: str
) -> dict[str, Any]:
    from dist_srec.eval.tables import encode_catalog
    from dist_srec.kernels._dispatch import force_kernel_path
    from dist_srec.models.lm_levers import decoder_layers

    dev = torch.device(args.device)
    kernel_path = "torch" if path == "fused" else path
    state = {k: v.clone() for k, v in model.heads.state_dict().items()}  # every path starts from these
    opt = torch.optim.Adam(model.trainable_parameters(), lr=1e-4)
    row: dict[str, Any] = {"path": path}
    with force_kernel_path(kernel_path):  # type: ignore[arg-type]
        terms, grads = loss_and_grads(model, batch, negatives)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times, losses = [], []
        for i in range(args.warmup + args.steps):
            sync(dev)
            t0 = time.perf_counter()
            losses.append(step_once(model, opt, batch, negatives))
            sync(dev)
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
        row["train_peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else None
        model.eval()
        # untimed: the fused path compiles its no-grad graphs here (two batches: two shapes)
        encode_catalog(model.encode_items, min(args.items, 512), batch_items=256, progress=False)
        sync(dev)
        t0 = time.perf_counter()
        encode_catalog(model.encode_items, args.items, batch_items=256, progress=False)
        sync(dev)
        enc_s = time.perf_counter() - t0
        model.train()
    model.heads.load_state_dict(state)
    # layers whose forward was replaced (the fused graphs): what the `fused` path claims, counted
    row["layers_fused"] = sum("forward" in vars(layer) for layer in decoder_layers(model.lm.body))
    times.sort()
    step_s = times[len(times) // 2]
    row |= {"step_s_median": step_s, "step_s_all": times, "samples_per_s": args.batch_size / step_s,
            "encode_s": enc_s, "items_per_s": args.items / enc_s, "losses": losses}  # fmt: skip
    return {"row": row, "terms": terms, "grads": grads}


def main() -> None:
    args = parse()
    paths = args.paths.split(",")
    bad = sorted(set(paths) - {"torch", "triton", "fused"})
    if bad:
        raise SystemExit(f"--paths: unknown {bad}; choose from torch, triton, fused")
    model, batch, negatives = build(args)
    runs = {}
    for p in paths:
        if p == "fused":
            fused_model, _, _ = build(args, fused=True)
            runs[p] = run_path(args, fused_model, batch, negatives, p)
            del fused_model
        else:
            runs[p] = run_path(args, model, batch, negatives, p)
    parity: dict[str, Any] = {}
    for p in [p for p in paths if p != "torch" and "torch" in paths]:
        ref, other = runs["torch"], runs[p]
        terms = {k: abs(other["terms"][k] - v) / max(abs(v), 1e-12) for k, v in ref["terms"].items()}
        # A gradient that is zero in exact arithmetic (item_head's last bias: the CE sees only differences
        # of item scores) holds rounding noise, different on every path: compare each tensor on the scale
        # of the largest gradient, 1e-4 of it at least.
        floor = 1e-4 * max(float(g.abs().max()) for g in ref["grads"].values())
        grads = {n: max_rel(other["grads"][n], g, floor) for n, g in ref["grads"].items()}
        worst = max([*terms.values(), *grads.values()])
        parity[p] = {"loss_terms_rel": terms, "grads_max_rel": grads, "worst_rel": worst, "rtol": args.rtol,
                     "ok": worst <= args.rtol and ref["grads"].keys() == other["grads"].keys()}  # fmt: skip
    if parity:
        parity["ok"] = all(v["ok"] for v in parity.values())
    lm = model.lm
    payload = {
        "benchmark": "gpu_step", "settings": vars(args), "machine": machine(),
        "lm": {"source": args.lm_config or args.llm, "random_weights": bool(args.lm_config) or args.llm == "tiny",
               "dtype": str(lm.dtype).removeprefix("torch."), "layers": lm.model.config.num_hidden_layers,
               "hidden": lm.hidden_size},
        "rows": [r["row"] for r in runs.values()], "parity": parity, "peak_rss_mb": peak_rss_mb(),
    }  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(payload, indent=2) + "\n")
    for r in payload["rows"]:
        print(f"[gpu-step] {r['path']}: {r['samples_per_s']:.2f} samples/s, {r['items_per_s']:.1f} items/s, "
              f"peak {r['train_peak_mem_mb']} MiB")  # fmt: skip
    for p, v in parity.items():
        if p != "ok":
            print(f"[gpu-step] parity {p} vs torch: worst rel {v['worst_rel']:.2e} (rtol {args.rtol}): "
                  f"{'ok' if v['ok'] else 'FAILED'}")  # fmt: skip
    print(f"wrote {args.out}")
    sys.exit(0 if not parity or parity["ok"] else 1)


if __name__ == "__main__":
    main()
