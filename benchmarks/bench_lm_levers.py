"""CPU levers on the frozen LM, A/B at the bucket level: regional torch.compile (`compile_layers`, both
`compile_scope`s), the attention implementation (SDPA vs eager) and the intra-op thread count.

    .venv/bin/python benchmarks/bench_lm_levers.py                      # all layers, every variant
    .venv/bin/python benchmarks/bench_lm_levers.py --variants compile-layers --layers 4

One copy of the LM per variant runs the same random inputs, interleaved (base, compile-layers, ...,
base, ...), so all see the same load from anything else on the machine; best of `--repeats` each.
The inputs go the way a training step sends them: after a cached prompt head (`FrozenLM.hidden_after`,
which is what made whole compiled layers recompile per layer). Shapes: an item-prompt bucket without a
graph (catalog encoding) and a user-prompt bucket forward + input-gradient backward (a training step's
LM work). The first call of each variant (compilation, for the compiled ones) is timed apart.
Thread affinity (OMP_PROC_BIND / OMP_PLACES) is process-wide and fixed at start, so it is compared by
running the script twice under different environments, not here. Writes
benchmarks/results/<name>.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import machine, markdown_table, write_results

VARIANTS: dict[str, tuple[dict, int | None]] = {
    # name: (LLMConfig overrides, intra-op threads or None for torch's default)
    "compile-layers": ({"compile_layers": True, "compile_scope": "layers"}, None),
    "compile-parts": ({"compile_layers": True, "compile_scope": "parts"}, None),
    "attn-eager": ({"attn_implementation": "eager"}, None),
    "threads-1": ({}, 1),
}


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--llm", default="smollm2")
    p.add_argument("--layers", type=int, default=0, help="keep the first k layers (0 = all)")
    p.add_argument("--variants", default=",".join(VARIANTS), help="compared with `base` (SDPA, eager)")
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--name", default="lm_levers_cpu")
    return p.parse_args()


def main() -> None:
    args = parse()
    import torch

    from dist_srec.models.frozen_lm import load_frozen_lm
    from dist_srec.models.lm_config import LLMConfig

    kw = {"path": args.llm, "num_layers": args.layers or None}
    base_kw = {"compile_layers": False}  # the eager baseline; variants override
    names = [v for v in args.variants.split(",") if v]
    unknown = set(names) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"--variants: unknown {sorted(unknown)}; known: {', '.join(VARIANTS)}")
    default_threads = torch.get_num_threads()
    runs = {"base": (load_frozen_lm(LLMConfig(**kw, **base_kw)), default_threads)}
    for name in names:
        over, threads = VARIANTS[name]
        runs[name] = (load_frozen_lm(LLMConfig(**kw, **{**base_kw, **over})), threads or default_threads)
    base = runs["base"][0]
    h = base.hidden_size
    vocab = base.input_embeddings().shape[0]
    head = {n: torch.randint(0, vocab, (n,)) for n in (10, 21)}  # item / user prompt-head lengths

    def once(name: str, b: int, t: int, p: int, grad: bool) -> float:
        lm, threads = runs[name]
        torch.set_num_threads(threads)
        x = torch.randn(b, t, h, dtype=lm.dtype, requires_grad=grad)
        t0 = time.perf_counter()
        prefix = lm.prefix_kv(head[p])
        if grad:
            lm.hidden_after(prefix, x).float().sum().backward()
        else:
            with torch.no_grad():
                lm.hidden_after(prefix, x)
        elapsed = time.perf_counter() - t0
        torch.set_num_threads(default_threads)
        return elapsed

    rows = []
    for what, b, t, p, grad in (
        ("item bucket, no graph", 256, 22, 10, False),
        ("user bucket, fwd + bwd", 10, 340, 21, True),
    ):
        row = {"what": what, "shape": f"{b}x{t} after {p}"}
        for name in runs:
            row[f"first_call_{name}_s"] = once(name, b, t, p, grad)
        times = {name: [] for name in runs}
        for _ in range(args.repeats):
            for name in runs:
                times[name].append(once(name, b, t, p, grad))
        for name in runs:
            row[f"{name}_s"] = min(times[name])
        for name in names:
            row[f"speedup_{name}"] = row["base_s"] / row[f"{name}_s"]
        rows.append(row)
        print(rows[-1], flush=True)
    cols = ["what", "shape", "base_s", *(f"{c}_s" for c in names), *(f"speedup_{c}" for c in names),
            *(f"first_call_{c}_s" for c in runs)]  # fmt: skip
    mach = machine()
    md = "\n".join([
        f"# LM levers on CPU, A/B at the bucket level ({mach['date']})", "",
        f"LM {args.llm}, first {args.layers or 'all'} layers, dtype {str(base.dtype).removeprefix('torch.')}; "
        f"{mach['cpu']}, {mach['cores']} cores, torch {mach['torch']}, load average {mach['loadavg_1_5_15']}, "
        f"{default_threads} threads by default "
        "(variants interleaved, so all saw the same load); base = SDPA, eager, default threads; best of "
        f"{args.repeats}; inputs after a cached prompt head, as in a training step.", "",
        markdown_table(rows, cols),
    ])  # fmt: skip
    write_results(args.name, {"settings": vars(args), "machine": mach, "rows": rows}, md)
    print(md)


if __name__ == "__main__":
    main()
