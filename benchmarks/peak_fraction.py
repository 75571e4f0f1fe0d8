"""What fraction of the machine's float32 peak a training step reaches.

    python benchmarks/peak_fraction.py [--models cnn,cnn_bn,mnist] [--rounds 3]

The step's useful work is counted from the checked model, the way a lecture counts it:
every `conv2d` and `dense` costs 2·(outputs)·(fan-in) flops forward, as much again for its
weight gradient, and as much again for its input's gradient unless that input is data
(nobody needs ∂L/∂x). Activations, pooling, losses and the optimiser are left out (they are
a few per cent of the flops), so the fraction is a lower bound.

Each model is built and run once untimed first (numba compiles into its cache); the rounds
then time the warm module's steady step, after half a second of untimed steps (the
default `threads="auto"` times its ways on the first steps).

The peak is what this machine's OpenBLAS attains on a large float32 GEMM (n = 2048) with all
its cores: the practical two-core ceiling. Each round runs the step (`impl_nndsl.py`, the
module's default threads) and the GEMM in their own processes, one after the other; the
table shows medians over rounds.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import MODELS  # noqa: E402

PEAK_SNIPPET = """
import json, time
import numpy as np
n = 2048
a = np.random.default_rng(0).random((n, n), dtype=np.float32)
b = np.random.default_rng(1).random((n, n), dtype=np.float32)
a @ b                                   # OpenBLAS's threads start, pages are touched
times = []
for _ in range(7):
    t0 = time.perf_counter()
    a @ b
    times.append(time.perf_counter() - t0)
print(json.dumps({"gflops": 2 * n ** 3 / min(times) / 1e9}))
"""


def step_flops(nn_path: Path, batch: int) -> int:
    """Flops of one training step's products (conv2d and dense: forward, weight gradient,
    input gradient unless the input is data), for a batch of `batch` examples."""
    import nndsl
    model = nndsl.check(nn_path).model
    nodes = {n.name: n for n in model.nodes}
    params = {p.name: p for p in model.params}
    total = 0
    for node in model.nodes:
        if node.op not in ("conv2d", "dense"):
            continue
        W = params[node.params["W"]].shape
        fan_in = int(np.prod(W[1:]))          # conv: C·k·k; dense: the input width
        outputs = int(np.prod([s for s in node.shape if isinstance(s, int)]))
        forward = 2 * batch * outputs * fan_in
        source = nodes[node.inputs[0]]
        total += forward * (2 if source.op in ("input", "target") else 3)
    return total


def run_json(cmd: list[str]) -> dict:
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE.parent, check=True).stdout
    return json.loads(next(line for line in reversed(out.splitlines()) if line.startswith("{")))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="cnn,cnn_bn,mnist")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    models = args.models.split(",")
    peaks, ms = [], {m: [] for m in models}
    # each model built once, its kernels compiled into numba's cache by one untimed run: the
    # rounds time the steady step, as a training run sees it after its first seconds (a cold
    # run's timed steps overlap the compile of what its first threaded steps need)
    out = {m: tempfile.mkdtemp(prefix=f"nndsl_peak_{m}_") for m in models}
    for m in models:
        run_json([sys.executable, str(HERE / "impl_nndsl.py"), "--model", m, "--data", "random", "--out-dir", out[m]])
    for r in range(args.rounds):
        peaks.append(run_json([sys.executable, "-c", PEAK_SNIPPET])["gflops"])
        for m in models:
            rec = run_json([sys.executable, str(HERE / "impl_nndsl.py"), "--model", m, "--data", "random",
                            "--out-dir", out[m], "--reuse", "--warmup-seconds", "0.5"])
            ms[m].append(rec["median_ms"])
        print(f"# round {r + 1}/{args.rounds}: sgemm {peaks[-1]:.1f} GFLOP/s, "
              + ", ".join(f"{m} {ms[m][-1]:.3f} ms" for m in models), flush=True)
    peak = statistics.median(peaks)
    print(f"\nsgemm n=2048, all cores: {peak:.1f} GFLOP/s (median of {args.rounds})\n")
    print("| model | batch | MFLOP/step | ms/step | GFLOP/s | % of sgemm peak |")
    print("|---|---|---|---|---|---|")
    for m in models:
        spec = MODELS[m]
        flops = step_flops(spec["nn"], spec["batch"])
        t = statistics.median(ms[m])
        rate = flops / t / 1e6
        print(f"| {m} | {spec['batch']} | {flops / 1e6:.1f} | {t:.3f} | {rate:.1f} | {100 * rate / peak:.0f} % |")


if __name__ == "__main__":
    main()
