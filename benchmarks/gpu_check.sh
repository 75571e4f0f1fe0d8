#!/usr/bin/env bash
# The GPU check of issue 12, as one script for an H100/H200 machine (about 8 minutes):
#   bash benchmarks/gpu_check.sh            (from the repository root; results in $OUT)
# The image has PyTorch, CuPy, numba-cuda, JAX and pytest but no lark, and its numpy (2.5)
# breaks its numba-cuda (0.30.4 registers np.row_stack, which numpy 2.5 removed): the wheels of
# lark and numpy 2.4 travel in .whl/ beside the checkout (see benchmarks/README.md).
# IMPLS, MODELS, BENCH_SECONDS, TEST_SECONDS and TEST_WORKERS narrow a rerun. Writes to $OUT: versions and
# nvidia-smi, the pytest run of tests/test_cuda.py on the device (no simulator; the PTX test
# runs in CI), and the step benchmark's table. The tests and the benchmark's untimed warm-up
# share the machine's 16 cores; the timed rounds run alone.
set -u
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
start=$(date +%s)
say() { echo "[$(( $(date +%s) - start ))s] $*" | tee -a "$OUT/summary.txt"; }

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl > "$OUT/pip.log" 2>&1 || say "lark install failed (see pip.log)"
export PYTHONPATH=$PWD:/tmp/site
unset NUMBA_ENABLE_CUDASIM
export NNDSL_CUDA_DEVICE=1 PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false       # several JAX processes share the GPU in the warm-up
nvidia-smi > "$OUT/versions.txt" 2>&1
python3 - >> "$OUT/versions.txt" 2>&1 <<'PY'
import importlib
for m in ("numpy", "numba", "numba_cuda", "cupy", "torch", "jax", "lark", "sympy", "jinja2", "pytest"):
    try:
        print(m, importlib.import_module(m).__version__)
    except Exception as e:
        print(m, "MISSING", e)
from numba import cuda
print("cuda.is_available", cuda.is_available())
PY
say "versions: $(grep -E '^[a-z_]+ ' "$OUT/versions.txt" | tr '\n' ';' | cut -c1-400)"

# 1. correctness on the device (in the background): loss/grad/steps against the CPU module,
#    stochastic layers, fit and the non-finite guard
( timeout ${TEST_SECONDS:-200} python3 -m pytest -q -n ${TEST_WORKERS:-10} tests/test_cuda.py -k "not ptx_for_every" -p no:cacheprovider \
      > "$OUT/pytest_cuda.txt" 2>&1; echo "rc=$?" >> "$OUT/pytest_cuda.txt" ) &
tests=$!

# 2. the step benchmark: an untimed warm-up of every child (caches), then timed rounds alone
MODELS=${MODELS:-mnist128,wide1024,cnn64,lstm32,mnist4096}
IMPLS=${IMPLS:-nndsl,nndsl_launches,nndsl_tf32,nndsl_rows,torch,torch_compile,jax}
GPU_STEP_SECONDS=0.6 timeout 150 python3 benchmarks/gpu_step.py --models $MODELS --impls $IMPLS --prewarm 5 --rounds 0 \
    --timeout 140 --out "$OUT" > "$OUT/gpu_prewarm.log" 2>&1
say "prewarm done: rc=$?"
wait $tests
pkill -f "gpu_step.py --child"; pkill -f cuda_worker.py; pkill -f "pytest -q -n"   # nothing left to disturb the timing
say "pytest tests/test_cuda.py on the device: $(tail -2 "$OUT/pytest_cuda.txt" | tr '\n' ' ')"
GPU_STEP_SECONDS=0.6 timeout ${BENCH_SECONDS:-240} python3 benchmarks/gpu_step.py --models $MODELS --impls $IMPLS --rounds 2 \
    --timeout 60 --out "$OUT" > "$OUT/gpu_step.log" 2>&1
say "benchmark: rc=$?"
cat "$OUT/gpu_step.md" >> "$OUT/summary.txt" 2>/dev/null
say "done"
