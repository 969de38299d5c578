"""Every run of the committed fidelity table, resumable: the reference (`run_reference_budget.py`) and
dist-srec (`dist-srec train --config benchmarks/configs/fidelity_ml-100k.yaml`, then `dist-srec
evaluate` on all test users) per seed and variant, one at a time, then the table (`fidelity_table.py`).

    .venv/bin/python benchmarks/reference/run_fidelity.py --ref /work/scratch/llmsrec-ref \\
        --ref-python /work/scratch/ref-venv/bin/python --lm /work/scratch/smollm2-l8 \\
        --data /work/scratch/data/ml-100k --teacher /work/scratch/fid/teacher-run/best \\
        --out /work/scratch/fid2 --seeds 0 1 2 3 [--dry-run] [-- --settings "..." --finding "..."]

Run it again after an interruption and it goes on: a finished run is one whose result JSON exists (written
under a temporary name and renamed, so a killed run never looks finished); an unfinished dist-srec run
resumes from its `last` checkpoint (the run file saves one every half epoch); an unfinished reference run
starts over (96 steps, a few minutes: its code has no resume). The file names are the ones the table's
arguments take: ref_<variant>_s<S>.json, srec_<variant>_s<S>/ and srec_<variant>_s<S>.eval.json. Arguments
after `--` go to fidelity_table.py, which runs once every run has its result. The setup of the reference,
its data, the converted teacher and the cut LM: benchmarks/reference/README.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "benchmarks" / "configs" / "fidelity_ml-100k.yaml"
STEPS = 96  # the reference's side of the budget: CONFIG's 2 epochs of ML-100K's 943 users in steps of 20


@dataclass(frozen=True)
class Job:
    """One run: `side` (ref or srec), `variant` (llmsrec, nodistill, warmup), `seed`, and the variant's
    one change as extra arguments."""

    side: str
    variant: str
    seed: int
    extra: tuple[str, ...] = field(default=())

    @property
    def stem(self) -> str:
        return f"{self.side}_{self.variant}_s{self.seed}"

    def result(self, out: Path) -> Path:
        return out / (f"{self.stem}.json" if self.side == "ref" else f"{self.stem}.eval.json")


VARIANTS = {  # (side, variant) -> that variant's change
    ("ref", "llmsrec"): (),
    ("srec", "llmsrec"): (),
    ("srec", "warmup"): ("--loop.warmup_steps", "10"),  # the recipe
    ("ref", "nodistill"): ("--no_distill",),
    ("srec", "nodistill"): ("--model.loss.distill", "false"),
}


def jobs(seeds: list[int], nodistill_seeds: list[int]) -> list[Job]:
    """The table's runs in the order they ran: per seed the reference, dist-srec and the recipe, then the
    no-distill pairs (fewer seeds: they only have to meet the acceptance)."""
    out = [Job(side, v, s, VARIANTS[side, v]) for s in seeds for side, v in VARIANTS if v != "nodistill"]
    return out + [Job(side, "nodistill", s, VARIANTS[side, "nodistill"]) for s in nodistill_seeds
                  for side in ("ref", "srec")]  # fmt: skip


def commands(job: Job, a: argparse.Namespace) -> list[list[str]]:
    """The command lines of one job; each writes its result JSON under a .tmp name first."""
    out, tmp = Path(a.out), str(job.result(Path(a.out))) + ".tmp"
    if job.side == "ref":
        import yaml

        lr = yaml.safe_load(CONFIG.read_text())["loop"]["lr"]  # one lr for both sides: the run file's
        return [[a.ref_python, str(ROOT / "benchmarks/reference/run_reference_budget.py"), "--ref", a.ref,
                 "--name", "ml-100k", "--llm_path", a.lm, "--steps", str(STEPS), "--lr", str(lr),
                 "--seed", str(job.seed), "--eval_users", "-1", "--candidates", "dist-srec", "--data", a.data,
                 "--save_dir", f"fid2_{job.variant}_s{job.seed}", "--threads", str(a.threads), "--out", tmp,
                 *job.extra]]  # fmt: skip
    cli = [sys.executable, "-m", "dist_srec"]
    run = str(out / job.stem)
    return [
        [*cli, "train", "--config", str(CONFIG), "--data", a.data, "--teacher", a.teacher, "--out", run,
         "--loop.seed", str(job.seed), "--model.seed", str(job.seed), *job.extra],
        [*cli, "evaluate", "--ckpt", f"{run}/best", "--split", "test", "--eval_users", "0",
         "--eval_negatives", "99", "--progress", "false", "--results", tmp],
    ]  # fmt: skip


def table_command(a: argparse.Namespace, todo: list[Job], passthrough: list[str]) -> list[str]:
    """fidelity_table.py's command line over `todo`'s results (a flag with no runs is left out)."""
    out, cmd = Path(a.out), [sys.executable, str(ROOT / "benchmarks/reference/fidelity_table.py")]
    for flag, side, variant, suffix in (
        ("--reference", "ref", "llmsrec", ".json"), ("--srec", "srec", "llmsrec", ""),
        ("--srec-evals", "srec", "llmsrec", ".eval.json"), ("--reference-nodistill", "ref", "nodistill", ".json"),
        ("--nodistill-evals", "srec", "nodistill", ".eval.json"), ("--recipe-evals", "srec", "warmup", ".eval.json"),
    ):  # fmt: skip
        files = [str(out / f"{j.stem}{suffix}") for j in todo if (j.side, j.variant) == (side, variant)]
        cmd += [flag, *files] if files else []
    cmd += [
        "--recipe",
        "10-step warm-up",
        "--data",
        a.data,
        *(["--lockstep", a.lockstep] if a.lockstep else []),
    ]
    return cmd + passthrough


def parse(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    argv = sys.argv[1:] if argv is None else argv
    cut = argv.index("--") if "--" in argv else len(argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ref", required=True, help="the reference's patched work tree")
    p.add_argument("--ref-python", required=True, help="the interpreter that imports the reference")
    p.add_argument("--lm", required=True, help="make_lm_dir.py --num_layers 8: the LM of both sides")
    p.add_argument("--data", required=True, help="dist-srec prepare --dataset ml-100k")
    p.add_argument("--teacher", required=True, help="the teacher checkpoint (converted for the reference)")
    p.add_argument("--out", required=True, help="where every run and result goes")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    p.add_argument("--nodistill-seeds", type=int, nargs="*", default=[0, 1, 2])
    p.add_argument("--lockstep", help="step_parity.py's JSON, for the table")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dry-run", action="store_true", help="print what would run, run nothing")
    return p.parse_args(argv[:cut]), argv[cut + 1 :]


def main(argv: list[str] | None = None) -> int:
    a, passthrough = parse(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    todo = jobs(a.seeds, a.nodistill_seeds)
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads)}
    for job in todo:
        if job.result(out).is_file():
            print(f"[fidelity] {job.stem}: done", flush=True)
            continue
        for cmd in commands(job, a):
            print(f"[fidelity] {job.stem}: {' '.join(cmd)}", flush=True)
            if a.dry_run:
                continue
            with open(out / f"{job.stem}.log", "a") as log:
                if subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode:
                    raise SystemExit(f"[fidelity] {job.stem} failed: see {out / job.stem}.log")
        if not a.dry_run:
            Path(str(job.result(out)) + ".tmp").replace(job.result(out))
    cmd = table_command(a, todo, passthrough)
    print(f"[fidelity] table: {' '.join(cmd)}", flush=True)
    return 0 if a.dry_run else subprocess.run(cmd, cwd=ROOT).returncode


if __name__ == "__main__":
    raise SystemExit(main())
