"""Throughput as a fraction of this machine's matmul limit, all measured in one run.

    .venv/bin/python benchmarks/bench_throughput.py                      # ML-1M, SmolLM2, paper step
    .venv/bin/python benchmarks/bench_throughput.py --llm tiny --steps 1 --encode-items 64 \\
        --eval-users 8 --name _scratch/throughput_smoke                  # a quick smoke run

In one process, on one machine state:
1. matmul peak, bf16 and fp32: a 2048^3 GEMM and the LM body's own GEMM shapes, best of `--peak-reps`,
   measured before and after the rest, the best reading kept (both are in the JSON);
2. the training step, end to end with the real LM at the paper's settings (20 users x (target + 3
   negatives), Adam on the heads), broken into phases (benchmarks/throughput_probe.py), with
   samples/s, tokens/s and useful FLOP/s (dist_srec/models/flops.py: real tokens only, input-gradient
   backward; padding is counted apart as executed work);
3. catalog encoding through the item prompt (forward only): items/s, FLOP/s;
4. evaluation on the test split: users/s for the sampled (1 + 99) and full protocols, with the item
   table from (3) reused, as evaluation reuses it per checkpoint.
Fractions are of the best matmul peak over dtypes measured here (the machine's limit) and of the peak
of the dtype the LM runs in. Writes benchmarks/results/<name>.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import machine, markdown_table, peak_rss_mb, write_results
from benchmarks.throughput_probe import PhaseTimer, instrumented, matmul_peaks, merge_peaks, op_profile
from dist_srec.models.lm_config import COMPILE_SCOPES

PHASES = ["data", "tokenise", "splice", "teacher", "user fwd", "item fwd", "losses", "backward", "optimizer"]


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="ml-1m")
    p.add_argument("--data", help="a prepared data dir (default: prepare --dataset under --work)")
    p.add_argument("--teacher", help="a teacher checkpoint (default: a 1-epoch teacher under --work)")
    p.add_argument("--work", default="runs/bench/throughput")
    p.add_argument("--llm", default="smollm2")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--compile-layers", action="store_true")
    p.add_argument("--compile-scope", default="layers", choices=COMPILE_SCOPES)
    p.add_argument("--max-tokens-per-forward", type=int, default=16384)
    p.add_argument("--bucket-max-padding", type=float, default=0.08, help="1.0 = buckets by size only")
    p.add_argument("--no-reuse-prefix", action="store_true", help="run every prompt's constant head")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    p.add_argument("--batch-size", type=int, default=20)
    p.add_argument("--steps", type=int, default=3, help="timed steps, after --warmup untimed ones")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--encode-items", type=int, default=0, help="catalog items to encode (0 = all)")
    p.add_argument("--eval-users", type=int, default=200)
    p.add_argument("--peak-reps", type=int, default=5)
    p.add_argument("--no-profile", action="store_true", help="skip the op-level profile of one more step")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--name", default="throughput")
    return p.parse_args()


def inputs(args: argparse.Namespace) -> tuple[Path, Path]:
    """The data dir and teacher checkpoint: given, or built once under --work."""
    from dist_srec.config import PrepareConfig
    from dist_srec.data.prepare import prepare
    from dist_srec.train.teacher import TeacherTrainConfig, pretrain_teacher, teacher_loop

    work = Path(args.work)
    data = Path(args.data) if args.data else work / f"data-{args.dataset}"
    if not args.data:
        prepare(PrepareConfig(dataset=args.dataset, out=str(data), progress=False))
    if args.teacher:
        return data, Path(args.teacher)
    teacher = work / f"teacher-{data.name}"
    if not (teacher / "best").is_dir():  # throughput does not depend on the teacher's quality
        cfg = TeacherTrainConfig(loop=teacher_loop(epochs=1, eval_every_epochs=1, progress=False))
        pretrain_teacher(data, teacher, cfg=cfg)
    return data, teacher / "best"


def build(args: argparse.Namespace, data: Path, teacher: Path) -> tuple[Any, Any]:
    import torch

    from dist_srec.data.catalog import Catalog
    from dist_srec.models.llmsrec import LLMSRecConfig
    from dist_srec.models.lm_config import LLMConfig
    from dist_srec.train.srec_build import build_model

    torch.manual_seed(args.seed)
    cat = Catalog.load(data)
    llm = LLMConfig(path=args.llm, dtype=args.dtype, attn_implementation=args.attn,
                    activation_checkpointing=args.activation_checkpointing, compile_layers=args.compile_layers,
                    compile_scope=args.compile_scope)  # fmt: skip
    cfg = LLMSRecConfig(max_tokens_per_forward=args.max_tokens_per_forward, seed=args.seed,
                        bucket_max_padding=args.bucket_max_padding, reuse_prefix=not args.no_reuse_prefix)  # fmt: skip
    model, _ = build_model(llm, teacher, cat, cfg, torch.device("cpu"))
    return model, cat


def head_lengths(model: Any) -> dict[str, tuple[int, int]]:
    """Per prompt kind: (constant head length, head length actually skipped by the run)."""
    out = {}
    for kind, out_id in (("user", model.lm.user_out_id), ("item", model.lm.item_out_id)):
        p = len(model.prompts.shared_prefix(kind))
        out[kind] = (p, p if out_id in model.prefixes else 0)
    return out


def flop_rates(timer: PhaseTimer, model: Any, shape: Any, seconds: float, backward: bool) -> dict[str, float]:
    """Useful FLOP/s (real tokens, each kind's constant head counted once: not at all per prompt; no
    backward before a row's first spliced position) and executed FLOP/s (padded rows, minus the head
    only where it was really skipped, the backward from each bucket's first spliced column where
    `no_grad_prefix` ran it so)."""
    from dist_srec.models.flops import body_flops

    heads = head_lengths(model)
    graph_from_first = backward and model.no_grad_prefix_applies
    useful = sum(body_flops(shape, lens, backward=backward, prefix=heads[k][0], grad_prefix=first)
                 for k, lens, _, first in timer.forwards)  # fmt: skip
    executed = sum(body_flops(shape, [t] * b, backward=backward, prefix=heads[k][1],
                              grad_prefix=int(first.min()) if graph_from_first else 0)
                   for k, _, (b, t), first in timer.forwards)  # fmt: skip
    real, padded = timer.tokens()
    return {"useful_gflop": useful / 1e9, "useful_gflops_per_s": useful / seconds / 1e9,
            "executed_gflops_per_s": executed / seconds / 1e9, "tokens": real, "padded_tokens": padded,
            "tokens_per_s": real / seconds, "padding_fraction": 1 - real / max(padded, 1),
            "head_tokens": {k: v[0] for k, v in heads.items()}}  # fmt: skip


def one_step(task: Any, opt: Any, batch: Any, gen: Any) -> float:
    """What the loop does per step (`dist_srec.train.loop.Trainer`), minus logging and checkpoints."""
    loss, _ = task.loss(batch, gen)
    loss.backward()
    task.sync_grads()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach())


def bench_step(args: argparse.Namespace, model: Any, cat: Any, shape: Any) -> dict[str, Any]:
    import torch

    from dist_srec.config import LoaderConfig
    from dist_srec.data.loader import ShardLoader
    from dist_srec.train.srec_task import SRecTask

    task = SRecTask(model, {"catalog": {"num_items": cat.num_items}})
    opt = torch.optim.Adam(task.trainable(), lr=1e-4, betas=(0.9, 0.98))
    loader = ShardLoader(
        cat.root, "train", LoaderConfig(batch_size=args.batch_size, max_len=200, seed=args.seed)
    )
    it, gen = iter(loader), torch.Generator().manual_seed(args.seed)
    timer, times, losses = PhaseTimer(), [], []
    model.train()
    with instrumented(model, timer):
        for i in range(args.warmup + args.steps):
            if i == args.warmup:
                timer.reset()
            t0 = time.perf_counter()
            with timer.phase("data"):
                batch = next(it)
            loss, _ = task.loss(batch, gen)
            with timer.phase("backward"):
                loss.backward()
            with timer.phase("optimizer"):
                task.sync_grads()
                opt.step()
                opt.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - t0)
            losses.append(float(loss.detach()))
    # one more step, outside the phase timer, under the profiler: where the time goes, by op
    profile = None if args.no_profile else op_profile(lambda: one_step(task, opt, next(it), gen))
    step_s = sum(times[args.warmup :]) / args.steps
    phases = {k: timer.seconds.get(k, 0.0) / args.steps for k in PHASES}
    phases["other"] = step_s - sum(phases.values())
    users_real, _ = timer.tokens("user")
    return {"step_s": step_s, "samples_per_s": args.batch_size / step_s, "losses": losses,
            "user_tokens_per_step": users_real / args.steps, "phases_s": phases,
            "phase_fraction": {k: v / step_s for k, v in phases.items()},
            "profile": profile,
            **flop_rates(timer, model, shape, step_s * args.steps, backward=True)}  # fmt: skip


def bench_encode(args: argparse.Namespace, model: Any, cat: Any, shape: Any) -> tuple[dict[str, Any], Any]:
    from dist_srec.eval.tables import encode_catalog

    n = args.encode_items or cat.num_items
    timer = PhaseTimer()
    model.eval()
    # untimed: compiled layers build their no-grad graphs (and a dynamic-shape one) on first use
    encode_catalog(model.encode_items, min(n, 512), batch_items=256, progress=False)
    with instrumented(model, timer):
        t0 = time.perf_counter()
        table = encode_catalog(model.encode_items, n, batch_items=256, progress=False)
        secs = time.perf_counter() - t0
    row = {
        "items": n,
        "seconds": secs,
        "items_per_s": n / secs,
        **flop_rates(timer, model, shape, secs, False),
    }
    if not args.no_profile:  # the same encoding again, under the profiler
        row["profile"] = op_profile(
            lambda: encode_catalog(model.encode_items, n, batch_items=256, progress=False)
        )
    return row, table


def bench_eval(args: argparse.Namespace, model: Any, cat: Any, items: Any) -> dict[str, Any]:
    import torch

    from dist_srec.data.loader import rank_loader
    from dist_srec.eval.protocols import EvalProtocol, select_users
    from dist_srec.eval.tables import evaluate_tables, user_table
    from dist_srec.parallel.context import TrainContext

    if items.shape[0] != cat.num_items + 1:
        return {"skipped": "needs the whole catalog encoded (--encode-items 0)"}
    user_items = cat.user_items()
    width = int(max(1, (user_items[0][1:] - user_items[0][:-1]).max()))
    batches = lambda: rank_loader(cat.root, "test", 16, width, TrainContext(), shuffle=False, remainder="pad")  # noqa: E731
    selected = select_users(cat.num_users, args.eval_users, args.seed)
    t0 = time.perf_counter()
    users = user_table(model.encode_users, batches(), cat.num_users, selected, progress=False)
    t_users = time.perf_counter() - t0
    row: dict[str, Any] = {"users": int(selected.sum()), "encode_users_s": t_users}
    for proto in ("sampled", "full"):
        p = EvalProtocol(protocol=proto, split="test", seed=args.seed, num_users=args.eval_users)
        t0 = time.perf_counter()
        with torch.no_grad():
            m = evaluate_tables(users, items, batches(), p, user_items=user_items, num_users=cat.num_users)
        rank_s = time.perf_counter() - t0
        row[proto] = {
            "rank_s": rank_s,
            "users_per_s": row["users"] / (t_users + rank_s),
            "ndcg@10": m["ndcg@10"],
        }
    return row


def profile_lines(prof: dict[str, Any] | None, what: str = "one more step") -> list[str]:
    if not prof:
        return []
    groups = ", ".join(f"{k} {v:.1%}" for k, v in sorted(prof["groups_share"].items(), key=lambda kv: -kv[1]))
    rows = [{"op": r["op"], "self s": r["self_s"], "share": f"{r['share']:.1%}", "calls": r["calls"]}
            for r in prof["top_ops"]]  # fmt: skip
    return [f"Profile of {what} (torch profiler, self CPU time {prof['total_self_s']:.1f} s): {groups}.",
            "", markdown_table(rows, ["op", "self s", "share", "calls"]), ""]  # fmt: skip


def report(
    args: argparse.Namespace, mach: dict, peaks: dict, dtype: str, step: dict, enc: dict, ev: dict
) -> str:
    best, own = peaks["best"], peaks[dtype]["peak"]
    frac = lambda g: f"{g:,.1f} GFLOP/s = {g / best:.1%} of best peak, {g / own:.1%} of {dtype} peak"  # noqa: E731
    phase_rows = [{"phase": k, "s/step": v, "share": f"{step['phase_fraction'][k]:.1%}"}
                  for k, v in step["phases_s"].items()]  # fmt: skip
    peak_rows = [{"dtype": d, **{k: v for k, v in peaks[d].items()}} for d in ("bfloat16", "float32")]
    lines = [
        f"# Throughput: fraction of the matmul limit ({mach['date']})", "",
        f"Machine: {mach['cpu']}, {mach['cores']} cores, torch threads {mach['torch_threads']}, GPU {mach['gpu']}; "
        f"torch {mach['torch']}, transformers {mach['transformers']}; commit {mach['git_commit']}.",
        f"LM {args.llm} in {dtype}, attention {args.attn}, activation checkpointing "
        f"{args.activation_checkpointing}, compiled layers {args.compile_layers} (scope {args.compile_scope}), max tokens per forward {args.max_tokens_per_forward}, bucket max "
        f"padding {args.bucket_max_padding}, prefix reuse {not args.no_reuse_prefix} (heads "
        f"{step['head_tokens']}); "
        f"{args.batch_size} users x (1 + 3) candidates per step; {args.steps} timed steps after {args.warmup}.", "",
        "## Matmul peak (GFLOP/s, best of N)", "", markdown_table(peak_rows, list(peak_rows[0])), "",
        "## Training step", "",
        f"- {step['step_s']:.2f} s/step, {step['samples_per_s']:.2f} samples/s, {step['tokens_per_s']:,.0f} "
        f"useful tokens/s ({step['user_tokens_per_step']:,.0f} user-prompt tokens/step), padding "
        f"{step['padding_fraction']:.1%}",
        f"- useful model FLOP/s (fwd + input-grad bwd): {frac(step['useful_gflops_per_s'])}",
        f"- executed (with padding): {step['executed_gflops_per_s']:,.1f} GFLOP/s", "",
        markdown_table(phase_rows, ["phase", "s/step", "share"]), "",
        *profile_lines(step.get("profile")),
        "## Catalog encoding (forward only)", "",
        f"- {enc['items']} items in {enc['seconds']:.1f} s = {enc['items_per_s']:.1f} items/s, "
        f"padding {enc['padding_fraction']:.1%}",
        f"- useful FLOP/s: {frac(enc['useful_gflops_per_s'])}", "",
        *profile_lines(enc.get("profile"), "the same encoding once more"),
        "## Evaluation (test split)", "",
    ]  # fmt: skip
    if "skipped" in ev:
        lines.append(f"- skipped: {ev['skipped']}")
    else:
        lines.append(f"- {ev['users']} users; encoding their prompts {ev['encode_users_s']:.1f} s")
        for p in ("sampled", "full"):
            lines.append(f"- {p}: {ev[p]['users_per_s']:.2f} users/s (ranking {ev[p]['rank_s']:.2f} s), "
                         "item table reused from the encoding above")  # fmt: skip
    lines += ["", "Targets (issue 8): step useful FLOP/s >= 62% and catalog encoding >= 75% of the peak; "
              "data + collation < 2% of the step."]  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    args = parse()
    import torch

    from dist_srec.models.flops import BodyShape

    if args.threads:
        torch.set_num_threads(args.threads)
    data, teacher = inputs(args)
    model, cat = build(args, data, teacher)
    shape = BodyShape.from_hf_config(model.lm.model.config)
    dtype = str(model.lm.dtype).removeprefix("torch.")
    peaks = matmul_peaks(shape, tokens=2048, reps=args.peak_reps)
    print(
        f"[throughput] peaks: bf16 {peaks['bfloat16']['peak']:.1f}, fp32 {peaks['float32']['peak']:.1f}",
        flush=True,
    )
    step = bench_step(args, model, cat, shape)
    print(f"[throughput] step {step['step_s']:.2f} s", flush=True)
    enc, table = bench_encode(args, model, cat, shape)
    print(f"[throughput] encode {enc['items_per_s']:.1f} items/s", flush=True)
    ev = bench_eval(args, model, cat, table)
    # Once more at the end: on a shared machine the first reading may have been taken under load.
    peaks = merge_peaks(peaks, matmul_peaks(shape, tokens=2048, reps=args.peak_reps))
    mach = machine()
    best = peaks["best"]
    summary = {"step_fraction_of_best_peak": step["useful_gflops_per_s"] / best,
               "encode_fraction_of_best_peak": enc["useful_gflops_per_s"] / best,
               "data_fraction_of_step": step["phase_fraction"]["data"],
               "peak_rss_mb": peak_rss_mb()}  # fmt: skip
    payload = {"benchmark": "throughput", "settings": vars(args), "machine": mach, "lm_dtype": dtype,
               "body_shape": vars(shape), "peaks_gflops": peaks, "step": step, "encode": enc, "eval": ev,
               "summary": summary}  # fmt: skip
    md = report(args, mach, peaks, dtype, step, enc, ev)
    md += f"\n\nPeak RSS {summary['peak_rss_mb']:,.0f} MiB."
    js, mdp = write_results(args.name, payload, md)
    print(md)
    print(f"wrote {js} and {mdp}")


if __name__ == "__main__":
    main()
