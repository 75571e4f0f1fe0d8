#!/usr/bin/env bash
# The GPU check of issue 12, as one script for an H100/H200 machine (at most ~7.5 minutes:
# pytest ≤ 180 s, benchmark ≤ 240 s; round 1 of the benchmark is written even if round 2
# is cut short):
#   bash benchmarks/gpu_check.sh            (from the repository root; results in $OUT)
# The image has PyTorch, CuPy, numba-cuda and JAX but no lark: a lark wheel travels in
# .wheels/ beside the checkout. Writes to $OUT: versions, nvidia-smi, the pytest run of
# tests/test_cuda.py on the device (no simulator), the PTX check, and the step benchmark.
set -u
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD
unset NUMBA_ENABLE_CUDASIM
export NNDSL_CUDA_DEVICE=1
start=$(date +%s)
say() { echo "[$(( $(date +%s) - start ))s] $*" | tee -a "$OUT/summary.txt"; }

python -m pip install --no-index --find-links .wheels lark > "$OUT/pip.log" 2>&1 || say "lark install failed (see pip.log)"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
python - > "$OUT/versions.txt" 2>&1 <<'PY'
import importlib
for m in ("numpy", "numba", "numba_cuda", "cupy", "torch", "jax", "lark", "sympy", "jinja2", "scipy", "pytest"):
    try:
        print(m, importlib.import_module(m).__version__)
    except Exception as e:
        print(m, "MISSING", e)
from numba import cuda
print("cuda.is_available", cuda.is_available())
cuda.detect()
PY
say "versions: $(tr '\n' ';' < "$OUT/versions.txt" | cut -c1-400)"

# 1. correctness on the device: loss/grad/steps against the CPU module, stochastic layers,
#    fit and the non-finite guard (the PTX-for-every-example test runs in CI without a GPU)
if python -c "import pytest" 2>/dev/null; then
    timeout 180 python -m pytest -q tests/test_cuda.py -k "not ptx_for_every and not iris and not vae" \
        -p no:cacheprovider > "$OUT/pytest_cuda.txt" 2>&1
    say "pytest tests/test_cuda.py on the device: rc=$? $(tail -1 "$OUT/pytest_cuda.txt")"
else                                   # no pytest in the image: the same checks, by hand
    for check in "equal examples/digits_mlp.nn" "equal examples/user_conv.nn" \
                 "stochastic examples/dropout_mlp.nn" "fit examples/lecture_mlp.nn"; do
        set -- $check
        timeout 60 python tests/cuda_worker.py "$1" "$2" "$OUT/build_$1_$(basename "$2" .nn)" \
            >> "$OUT/pytest_cuda.txt" 2>&1
        say "worker $check: rc=$? $(tail -1 "$OUT/pytest_cuda.txt" | cut -c1-300)"
    done
fi

# 2. the step benchmark (each implementation in its own process, alternating, median ratio)
GPU_STEP_SECONDS=1.0 timeout 240 python benchmarks/gpu_step.py --rounds 2 --timeout 90 --out "$OUT" \
    > "$OUT/gpu_step.log" 2>&1
say "benchmark: rc=$?"
cat "$OUT/gpu_step.md" >> "$OUT/summary.txt" 2>/dev/null
say "done"
