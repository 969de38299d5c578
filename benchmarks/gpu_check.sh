#!/usr/bin/env bash
# The prepared GPU check: one script, under 8 minutes on one H200 (each step has its own time limit), results into the directory given.
#
#   bash benchmarks/gpu_check.sh prepare           # here, once: .gpu_carry/ (SmolLM2's config + tokenizer)
#   bash benchmarks/gpu_check.sh OUT               # on the GPU machine (carry .gpu_carry): the real check
#   bash benchmarks/gpu_check.sh OUT --dry-run     # on CPU (CI): the same steps, small, so it cannot rot
#
# Steps, each timed and its exit status kept in OUT/summary.json (a failing step does not stop the rest):
#   1. kernel_tests  the kernel tests on CUDA: compiled Triton, no interpreter (dry run: the interpreter)
#   2. bench_kernels Triton against torch eager and torch.compile, fwd and bwd, with activation memory
#   3. gpu_step      a SmolLM2-135M-architecture train step and catalog encoding in bf16, torch and
#                    Triton paths: samples/s, items/s, peak memory, loss and gradient parity
#                    (benchmarks/bench_gpu_step.py; random weights: real ones exceed the 64 MiB carry)
#   4. fused_step    the same step with the default fused compiled decoder layers (compile_layers) against
#                    eager ones: samples/s, items/s, loss and gradient parity (a separate step, so that a
#                    compile failure on CUDA keeps step 3's numbers)
# The GPU machine has torch, triton, transformers, pytest and pyarrow and no package index; nothing else
# is needed. The source tree is staged as an installed package would lay it out (kernels/ ->
# dist_srec/kernels/), so no build or install runs there.
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# $PYTHON, else the project venv's where there is one (here, CI), else python3 (the GPU machine's)
if [[ -n "${PYTHON:-}" ]]; then PY="$PYTHON"; elif [[ -x "$ROOT/.venv/bin/python" ]]; then PY="$ROOT/.venv/bin/python"; else PY=python3; fi
PY="$(command -v "$PY")" || { echo "no python at ${PYTHON:-python3}"; exit 1; }
CARRY="$ROOT/.gpu_carry"

if [[ "${1:-}" == "prepare" ]]; then
    # SmolLM2-135M's architecture and tokenizer from the embedded asset (weights stay behind)
    "$PY" - "$CARRY/smollm2-135m" <<'EOF' || exit 1
import shutil, sys
from pathlib import Path
from dist_srec.models.lm_config import LLMConfig
from dist_srec.models.lm_sources import resolve_llm_path
src, dst = Path(resolve_llm_path(LLMConfig(path="smollm2"))), Path(sys.argv[1])
dst.mkdir(parents=True, exist_ok=True)
for f in src.iterdir():
    if f.is_file() and not f.name.endswith((".safetensors", ".bin", ".gguf")):
        shutil.copy2(f, dst / f.name)
print(f"wrote {dst}: {sorted(p.name for p in dst.iterdir())}")
EOF
    exit 0
fi

OUT="${1:?usage: gpu_check.sh OUT [--dry-run] | gpu_check.sh prepare}"
DRY="${2:-}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
LOG="$OUT/gpu_check.log"
: >"$LOG"
STAGE="$(mktemp -d /tmp/dist-srec-gpu-check.XXXXXX)"
cp -r "$ROOT/dist_srec" "$ROOT/tests" "$ROOT/benchmarks" "$ROOT/pyproject.toml" "$STAGE/"
cp -r "$ROOT/kernels" "$STAGE/dist_srec/kernels"
mkdir -p "$STAGE/benchmarks/results"
cd "$STAGE" || exit 1
export PYTHONPATH="$STAGE" TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1

if [[ "$DRY" == "--dry-run" ]]; then
    TESTS=(tests/kernels -q -k "dispatch or paths_train_step or distill_loss")
    KERNELS=(--quick --no-compile --repeats 1 --ops distill_loss)
    STEP=(--llm tiny --device cpu --dtype float32 --steps 1 --warmup 0 --items 64)
    FUSED=(--llm tiny --device cpu --dtype float32 --steps 1 --warmup 1 --items 64)
    export TRITON_INTERPRET=1  # the Triton path of the step runs in the interpreter on CPU
else
    TESTS=(tests/kernels -q)
    KERNELS=(--repeats 10)
    STEP=(--lm-config "$CARRY/smollm2-135m" --device cuda --dtype bfloat16 --steps 10 --warmup 3 --items 3706)
    FUSED=("${STEP[@]}")
    [[ -f "$CARRY/smollm2-135m/config.json" ]] || echo "missing $CARRY/smollm2-135m: run 'gpu_check.sh prepare' and carry .gpu_carry" | tee -a "$LOG"
fi

STEPS="$STAGE/steps.tsv"
step() {  # step NAME TIMEOUT_S CMD...: run, log, keep the exit status and the time
    local name=$1 limit=$2
    shift 2
    echo "== $name: $*" | tee -a "$LOG"
    local t0=$SECONDS rc
    timeout "$limit" "$@" >>"$LOG" 2>&1
    rc=$?
    printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" >>"$STEPS"
    echo "== $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$LOG"
}

step kernel_tests 150 "$PY" -m pytest "${TESTS[@]}" -p no:cacheprovider --junitxml "$OUT/kernel_tests.xml"
step bench_kernels 200 "$PY" benchmarks/bench_kernels.py "${KERNELS[@]}" --name gpu_check_kernels
cp benchmarks/results/gpu_check_kernels.json benchmarks/results/gpu_check_kernels.md "$OUT/" 2>/dev/null
step gpu_step 150 "$PY" benchmarks/bench_gpu_step.py "${STEP[@]}" --out "$OUT/gpu_step.json" --work "$STAGE/work"
step fused_step 150 "$PY" benchmarks/bench_gpu_step.py "${FUSED[@]}" --paths torch,fused \
    --out "$OUT/fused_step.json" --work "$STAGE/work"

"$PY" - "$OUT/summary.json" "$DRY" "$STEPS" <<'EOF'
import json, sys
import torch
out, dry, steps = sys.argv[1:4]
rows = [line.split("\t") for line in open(steps).read().splitlines()]
doc = {"dry_run": dry == "--dry-run", "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
       "torch": torch.__version__, "steps": {n: {"exit": int(rc), "seconds": int(s)} for n, rc, s in rows}}
doc["ok"] = all(s["exit"] == 0 for s in doc["steps"].values())
open(out, "w").write(json.dumps(doc, indent=2) + "\n")
print(json.dumps(doc))
sys.exit(0 if doc["ok"] else 1)
EOF
ok=$?
rm -rf "$STAGE"
exit $ok
