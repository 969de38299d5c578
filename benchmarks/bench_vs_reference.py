"""dist-srec against a reference-equivalent build of itself, interleaved in one process: train samples/s,
catalog items/s and peak RSS side by side, with the ratio (issue #20's targets: 4x, 5x, <= 3 GB).

    .venv/bin/python benchmarks/bench_vs_reference.py                       # ML-100K, SmolLM2, 5 steps
    .venv/bin/python benchmarks/bench_vs_reference.py --llm tiny --steps 1 --encode-items 32 \\
        --name _scratch/vs_reference_smoke                                  # a smoke run

The reference-equivalent mode is built from the project's own code with the paper code's choices
(Sein-Kim/LLM-SRec, as measured against it in benchmarks/results/NOTES.md):
- the full causal-LM forward, vocabulary logits included, with `output_hidden_states`, reading the
  last layer's states, and an attention mask over the padding;
- every item prompt run: the (1 + K) candidates of each user, no deduplication;
- each forward padded to its longest prompt: one forward per pass (user prompts, item prompts);
- no prompt-head reuse (the constant template head is run in every prompt);
- fp32 weights under bf16 autocast (the paper code's peft upcasts its 8-bit/bf16 load to fp32);
- eager layers (no `compile_layers`).
The default mode is `LLMSRecConfig()` / `LLMConfig(dtype=--dtype)`: what `dist-srec train` runs. Extra
modes (`--extra-modes`, default `eager,keep,flash,graph`) change one field of it, to price one lever in
the same run: `eager` without `compile_layers` (so also without what rides on the fused layers: the
selective recompute and the CPU attention choices), `keep` without `selective_checkpointing` (every
activation kept), `flash` with every attention on SDPA's flash kernel (`math_attention_max_keys` 0),
`graph` with the whole prompt after the cached head in the graph (`LLMSRecConfig.no_grad_prefix`
off), `checkpointed` with whole-layer `activation_checkpointing`.

All modes run the same batches, interleaved (A B C ...), after one warm-up each; the train step is loss +
backward + Adam on the heads. Encoding alternates chunks of `--encode-chunk` items, after one untimed
chunk per mode. Peak RSS is per mode, from a fresh child process that builds that mode alone and runs
one step and one chunk (one process cannot tell two modes' peaks apart); the children run first,
while this process holds no model. One more step of the default and of the reference runs under the
torch profiler (`--no-profile` skips it). Writes benchmarks/results/<name>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import machine, markdown_table, peak_rss_mb, run_child, write_results

MODES = ("default", "reference")
# The default with one field of LLMConfig ("llm") or LLMSRecConfig ("srec") changed: what each lever
# is worth in the same run.
EXTRA_MODES: dict[str, dict[str, dict[str, Any]]] = {
    "eager": {"llm": {"compile_layers": False}},
    "keep": {"llm": {"selective_checkpointing": False}},
    "flash": {"llm": {"math_attention_max_keys": 0}},
    "graph": {"srec": {"no_grad_prefix": False}},
    "checkpointed": {"llm": {"activation_checkpointing": True}},
}
_CONFIG_NAMES = {"llm": "LLMConfig", "srec": "LLMSRecConfig"}


def describe(mode: str) -> str:
    """'eager: LLMConfig(compile_layers=False)'."""
    return f"{mode}: " + ", ".join(
        f"{_CONFIG_NAMES[k]}(" + ", ".join(f"{f}={v!r}" for f, v in fields.items()) + ")"
        for k, fields in EXTRA_MODES[mode].items()
    )


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="ml-100k")
    p.add_argument("--data", help="a prepared data dir (default: prepare --dataset under --work)")
    p.add_argument("--teacher", help="a teacher checkpoint (default: a 1-epoch teacher under --work)")
    p.add_argument("--work", default="runs/bench/vs_reference")
    p.add_argument("--llm", default="smollm2")
    p.add_argument("--dtype", default="auto", help="the default mode's LM dtype")
    p.add_argument("--batch-size", type=int, default=20)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--encode-items", type=int, default=512, help="catalog items each mode encodes")
    p.add_argument("--encode-chunk", type=int, default=128)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument(
        "--extra-modes",
        default="eager,keep,flash,graph",
        help=f"comma-separated, also interleaved: {', '.join(EXTRA_MODES)} ('' for none)",
    )
    p.add_argument(
        "--memory-only", choices=[*MODES, *EXTRA_MODES], help="(internal) one mode's peak RSS, as JSON"
    )
    p.add_argument("--no-profile", action="store_true", help="skip the op profile of one more step per mode")
    p.add_argument("--name", default=None, help="results name (default vs_reference_<dataset>)")
    return p.parse_args(argv)


def reference_equivalent(model: Any, autocast: Any = "bfloat16") -> Any:
    """Give an `LLMSRec` the paper code's execution choices (module docstring); the same math, which
    tests/test_bench_vs_reference.py checks with `autocast=None` (no bf16 rounding)."""
    import torch

    lm, cfg = model.lm, model.cfg
    model.prefixes = {}  # no prompt-head reuse
    cfg.max_tokens_per_forward, cfg.bucket_max_padding = 1 << 40, 1.0  # one forward per pass

    def full_lm(ids: torch.Tensor, emb: torch.Tensor, prefix: Any) -> tuple[torch.Tensor, int]:
        with torch.autocast(
            emb.device.type, dtype=getattr(torch, autocast or "float32"), enabled=autocast is not None
        ):
            out = lm.model(
                inputs_embeds=emb, attention_mask=(ids != lm.pad_id).long(), output_hidden_states=True
            )
        return out.hidden_states[-1], 0

    def every_item(item_ids: torch.Tensor) -> torch.Tensor:  # no deduplication
        return model.heads.item_head(model._out_hidden(model.prompts.item_rows(item_ids.reshape(-1).cpu())))

    model._hidden, model.encode_items = full_lm, every_item
    return model


def build(args: argparse.Namespace, mode: str, data: Path, teacher: Path) -> tuple[Any, Any]:
    import torch

    from dist_srec.data.catalog import Catalog
    from dist_srec.models.llmsrec import LLMSRecConfig
    from dist_srec.models.lm_config import LLMConfig
    from dist_srec.train.srec_build import build_model

    torch.manual_seed(args.seed)
    cat = Catalog.load(data)
    # the default mode is LLMConfig's defaults (what `dist-srec train` runs); the reference runs eager fp32
    if mode == "reference":
        llm = LLMConfig(path=args.llm, dtype="float32", compile_layers=False)
    else:
        llm = LLMConfig(path=args.llm, dtype=args.dtype, **EXTRA_MODES.get(mode, {}).get("llm", {}))
    srec = LLMSRecConfig(seed=args.seed, **EXTRA_MODES.get(mode, {}).get("srec", {}))
    model, _ = build_model(llm, teacher, cat, srec, torch.device("cpu"))
    return (reference_equivalent(model) if mode == "reference" else model), cat


def batches(args: argparse.Namespace, cat: Any, n: int) -> list[tuple[dict, Any]]:
    """`n` (batch, negatives) pairs, the same for both modes."""
    import torch

    from dist_srec.config import LoaderConfig
    from dist_srec.data.loader import ShardLoader
    from dist_srec.train.teacher_loss import sample_train_negatives

    it = iter(
        ShardLoader(cat.root, "train", LoaderConfig(batch_size=args.batch_size, max_len=200, seed=args.seed))
    )
    gen = torch.Generator().manual_seed(args.seed)
    out = []
    for _ in range(n):
        b = next(it)
        seen = torch.cat([b["history"], b["target"][:, None]], 1)
        out.append((b, sample_train_negatives(seen, (seen.shape[0], 3), cat.num_items, gen)))
    return out


class Runner:
    """One mode's model, optimizer and timings."""

    def __init__(self, model: Any) -> None:
        import torch

        self.model = model
        self.opt = torch.optim.Adam(model.trainable_parameters(), lr=1e-4)
        self.step_s: list[float] = []
        self.encode_s = 0.0
        self.losses: list[float] = []

    def step(self, batch: dict, neg: Any, timed: bool) -> None:
        self.model.train()
        t0 = time.perf_counter()
        terms = self.model.loss(batch, neg)
        terms["loss"].backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if timed:
            self.step_s.append(time.perf_counter() - t0)
        self.losses.append(float(terms["loss"].detach()))

    def encode(self, lo: int, hi: int, timed: bool = True) -> None:
        import torch

        from dist_srec.eval.tables import encode_id_range

        self.model.eval()
        t0 = time.perf_counter()
        with torch.no_grad():
            encode_id_range(self.model.encode_items, lo, hi, 256, lambda n: None)
        if timed:
            self.encode_s += time.perf_counter() - t0


def memory_only(args: argparse.Namespace) -> None:
    from benchmarks.bench_throughput import inputs

    data, teacher = inputs(args)
    model, cat = build(args, args.memory_only, data, teacher)
    r = Runner(model)
    ((b, neg),) = batches(args, cat, 1)
    r.step(b, neg, timed=False)
    r.encode(1, 1 + min(args.encode_chunk, cat.num_items))
    print(json.dumps({"mode": args.memory_only, "peak_rss_mb": peak_rss_mb()}))


def main() -> None:
    args = parse()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_only:
        memory_only(args)
        return
    from benchmarks.bench_throughput import inputs, profile_lines
    from benchmarks.throughput_probe import op_profile

    data, teacher = inputs(args)
    modes = [*MODES, *(m for m in args.extra_modes.split(",") if m)]
    unknown = set(modes) - {*MODES, *EXTRA_MODES}
    if unknown:
        raise SystemExit(f"--extra-modes: unknown {sorted(unknown)}; known: {', '.join(EXTRA_MODES)}")
    # first, while this process holds no model: each child builds one mode alone (two at once need 25 GB)
    argv = [str(Path(__file__).resolve()), *sys.argv[1:]]
    memory = {m: run_child([*argv, "--memory-only", m])["peak_rss_mb"] for m in modes}
    built = {m: build(args, m, data, teacher) for m in modes}
    cat = built["default"][1]
    runners = {m: Runner(built[m][0]) for m in modes}
    work = batches(args, cat, 1 + args.steps)
    for i, (b, neg) in enumerate(work):  # every mode on the same batches; the first round is the warm-up
        for m in modes:
            runners[m].step(b, neg, timed=i > 0)
            print(f"[vs-reference] step {i} {m}: {runners[m].step_s[-1] if i else 0:.2f} s", flush=True)
    n = min(args.encode_items, cat.num_items)
    for m in modes:  # warm-up (a first no-graph pass compiles the fused layers' no-grad graphs): untimed
        runners[m].encode(n + 1, min(n + 1 + args.encode_chunk, cat.num_items + 1), timed=False)
    for lo in range(1, n + 1, args.encode_chunk):
        for m in modes:
            runners[m].encode(lo, min(lo + args.encode_chunk, n + 1))
    # one more step of the default and the reference, under the profiler: where each one's time goes
    last = work[-1]
    profiles = {} if args.no_profile else {m: op_profile(lambda m=m: runners[m].step(*last, timed=False))
                                           for m in MODES}  # fmt: skip
    rows = []
    for m in modes:
        r = runners[m]
        med = statistics.median(r.step_s)
        rows.append({"mode": m, "step_s_median": med, "step_s": r.step_s, "samples_per_s": args.batch_size / med,
                     "items_per_s": n / r.encode_s, "peak_rss_mb": memory[m], "losses": r.losses})  # fmt: skip
    ref, ours = rows[1], rows[0]
    for r in rows:
        r["train_x_reference"] = r["samples_per_s"] / ref["samples_per_s"]
        r["encode_x_reference"] = r["items_per_s"] / ref["items_per_s"]
    ratio = {"train_samples_per_s": ours["samples_per_s"] / ref["samples_per_s"],
             "encode_items_per_s": ours["items_per_s"] / ref["items_per_s"],
             "peak_rss": ours["peak_rss_mb"] / ref["peak_rss_mb"]}  # fmt: skip
    mach = machine()
    payload = {"benchmark": "vs_reference", "settings": vars(args), "machine": mach, "rows": rows, "ratio": ratio, "profiles": profiles,
               "targets": {"train_samples_per_s": 4.0, "encode_items_per_s": 5.0, "peak_rss_mb": 3072}}  # fmt: skip
    md = "\n".join([
        f"# dist-srec vs a reference-equivalent build, interleaved ({mach['date']})", "",
        f"Machine: {mach['cpu']}, {mach['cores']} cores, torch threads {mach['torch_threads']}; torch {mach['torch']}, "
        f"commit {mach['git_commit']}. {args.dataset}, LM {args.llm} (default mode dtype {args.dtype}), "
        f"{args.batch_size} users x (1 + 3) candidates, {args.steps} timed steps per mode after 1 warm-up, "
        f"modes interleaved; {n} items encoded per mode in chunks of {args.encode_chunk}. The reference-equivalent mode "
        "is described in benchmarks/bench_vs_reference.py.", "",
        markdown_table(rows, ["mode", "step_s_median", "samples_per_s", "train_x_reference", "items_per_s",
                              "encode_x_reference", "peak_rss_mb"]), "",
        ("Modes other than default and reference change one config field of the default: "
         + "; ".join(describe(m) for m in modes if m in EXTRA_MODES) + "."
         if any(m in EXTRA_MODES for m in modes) else "No other modes ran."), "",
        f"Ratios (default / reference): train {ratio['train_samples_per_s']:.2f}x (target 4x), encoding "
        f"{ratio['encode_items_per_s']:.2f}x (target 5x); peak RSS {ours['peak_rss_mb']:,.0f} MiB "
        f"(target <= 3,072 MiB per rank).",
    ])  # fmt: skip
    for m, prof in profiles.items():
        md += "\n\n" + f"**{m}.** " + "\n".join(profile_lines(prof))
    js, mdp = write_results(args.name or f"vs_reference_{args.dataset}", payload, md)
    print(md)
    print(f"wrote {js} and {mdp}")


if __name__ == "__main__":
    main()
