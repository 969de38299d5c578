"""Does `LLMConfig.compile_layers` (torch.compile of each decoder layer) pay on this machine?

    .venv/bin/python benchmarks/bench_compile.py                       # SmolLM2 cut to 4 layers
    .venv/bin/python benchmarks/bench_compile.py --layers 0            # all layers

An eager and a compiled copy of the same LM run the same random inputs, interleaved (eager, compiled,
eager, ...), so both see the same load from anything else on the machine; best of `--repeats` each.
Shapes: an item-prompt bucket without a graph (catalog encoding) and a user-prompt bucket forward +
input-gradient backward (a training step's LM work). The first compiled call (compilation) is timed
apart. Writes benchmarks/results/<name>.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import machine, markdown_table, write_results


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--llm", default="smollm2")
    p.add_argument("--layers", type=int, default=4, help="keep the first k layers (0 = all)")
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--name", default="compile_layers_cpu")
    return p.parse_args()


def main() -> None:
    args = parse()
    import torch

    from dist_srec.models.llm import LLMConfig, load_frozen_lm

    kw = {"path": args.llm, "num_layers": args.layers or None}
    eager = load_frozen_lm(LLMConfig(**kw))
    comp = load_frozen_lm(LLMConfig(**kw, compile_layers=True))
    h = eager.hidden_size

    def once(lm, b: int, t: int, grad: bool) -> float:
        x = torch.randn(b, t, h, dtype=lm.dtype, requires_grad=grad)
        t0 = time.perf_counter()
        if grad:
            lm.hidden(x).float().sum().backward()
        else:
            with torch.no_grad():
                lm.hidden(x)
        return time.perf_counter() - t0

    rows = []
    for what, b, t, grad in (
        ("item bucket, no graph", 256, 22, False),
        ("user bucket, fwd + bwd", 10, 360, True),
    ):
        first = once(comp, b, t, grad)
        once(eager, b, t, grad)
        e, c = [], []
        for _ in range(args.repeats):
            e.append(once(eager, b, t, grad))
            c.append(once(comp, b, t, grad))
        rows.append({"what": what, "shape": f"{b}x{t}", "eager_s": min(e), "compiled_s": min(c),
                     "speedup": min(e) / min(c), "first_compiled_call_s": first})  # fmt: skip
        print(rows[-1], flush=True)
    mach = machine()
    md = "\n".join([
        f"# torch.compile of the decoder layers vs eager ({mach['date']})", "",
        f"LM {args.llm}, first {args.layers or 'all'} layers, dtype {str(eager.dtype).removeprefix('torch.')}; "
        f"{mach['cpu']}, {mach['cores']} cores, torch {mach['torch']}, load average {mach['loadavg_1_5_15']} "
        "(eager and compiled interleaved, so both saw the same load); best of "
        f"{args.repeats}.", "",
        markdown_table(rows, ["what", "shape", "eager_s", "compiled_s", "speedup", "first_compiled_call_s"]),
    ])  # fmt: skip
    write_results(args.name, {"settings": vars(args), "machine": mach, "rows": rows}, md)
    print(md)


if __name__ == "__main__":
    main()
