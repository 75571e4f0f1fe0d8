"""Step times on a shared machine: quiet, and with one core kept busy by a spin loop.

    python benchmarks/shared_machine.py [--models mnist,cnn,lstm] [--impls nndsl,torch,jax]
                                        [--rounds 3] [--spinners 1] [--json FILE]

Each (model, implementation, condition) runs in its own process (`impl_*.py`, as
`step_time.py` runs them); the conditions and implementations alternate within each round,
the order rotating from round to round. "busy" starts `--spinners` processes that spin
(`while True: pass`) for the length of the run and stops them after it — what another user's
job, a browser or a second experiment does to a laptop or a course server. Besides nndsl's
default, `nndsl-1` is the same model at `threads=1` with one BLAS thread
(OPENBLAS_NUM_THREADS=1): what nndsl must never be slower than.

The table gives per model and implementation the median ms/step quiet and busy, the median
over rounds of busy/quiet (how much of its speed it keeps when half the machine is gone), and
nndsl's ratio to each peer in each condition.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import step_time  # noqa: E402
from _common import MODELS  # noqa: E402

IMPLS = ["nndsl", "nndsl-1", "torch", "jax"]
CONDITIONS = ["quiet", "busy"]


class Spinners:
    """`n` processes that keep a core each busy until stopped."""

    def __init__(self, n: int):
        self.procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
        time.sleep(0.2)                       # let the scheduler see them

    def stop(self):
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()


def run(impl: str, model: str, condition: str, args, cache: Path):
    """One run; (record or None, note)."""
    env_backup = dict(os.environ)
    real = "nndsl" if impl.startswith("nndsl") else impl
    if impl == "nndsl-1":                     # threads=1 and one BLAS thread: the floor
        os.environ.update(NNDSL_BENCH_THREADS="1", OPENBLAS_NUM_THREADS="1")
    spinners = Spinners(args.spinners) if condition == "busy" else None
    try:
        return step_time.run_one(real, model, args, cache)
    finally:
        if spinners is not None:
            spinners.stop()
        os.environ.clear()
        os.environ.update(env_backup)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=step_time.csv_list(sorted(MODELS)), default=["mnist", "cnn", "lstm"])
    ap.add_argument("--impls", type=step_time.csv_list(IMPLS), default=IMPLS)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--spinners", type=int, default=1, help="busy: this many spinning processes (default 1)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--samples", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=None,
                    help="untimed steps after the first (default 20): with ~1000, the timed steps are a long "
                         "run's, after nndsl's first round of tuning")
    ap.add_argument("--timeout", type=int, default=1800)
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args(argv)
    # what step_time.run_one reads of its arguments
    args.data, args.unset_openblas_coretype, args.jax_sync, args.nndsl_threads, args.cold = \
        "random", False, None, 0, False
    info = step_time.machine_info(args)
    print(f"# shared_machine: {info['cpus']} CPUs ({info['cpu']}), Python {info['python']}, "
          f"load average at start {info['loadavg_start']}, {args.spinners} spinner(s) when busy", flush=True)

    runs: dict = {}
    cache = Path(tempfile.mkdtemp(prefix="nndsl_shared_"))
    jobs = [(impl, cond) for impl in args.impls for cond in CONDITIONS]
    for rnd in range(args.rounds):
        for mi, model in enumerate(args.models):
            k = (rnd + mi) % len(jobs)
            for impl, cond in jobs[k:] + jobs[:k]:
                rec, note = run(impl, model, cond, args, cache)
                runs.setdefault((model, impl, cond), []).append(rec)
                text = f"{rec['median_ms']:.4f} ms/step" if rec else note
                print(f"# round {rnd + 1}/{args.rounds} {model:6s} {impl:8s} {cond:5s} {text}", flush=True)

    def median(model, impl, cond):
        ok = [r["median_ms"] for r in runs.get((model, impl, cond), []) if r]
        return statistics.median(ok) if ok else None

    def paired(model, a, ca, b, cb):
        """Median over rounds of a's time in condition ca over b's in cb."""
        pairs = zip(runs.get((model, a, ca), []), runs.get((model, b, cb), []))
        ratios = [x["median_ms"] / y["median_ms"] for x, y in pairs if x and y]
        return statistics.median(ratios) if ratios else None

    rows = []
    print("\n| model | impl | quiet ms | busy ms | busy/quiet | peer/nndsl quiet | peer/nndsl busy |")
    print("|---|---|---|---|---|---|---|")
    for model in args.models:
        for impl in args.impls:
            q, b = median(model, impl, "quiet"), median(model, impl, "busy")
            if q is None and b is None:
                continue
            row = dict(model=model, impl=impl, quiet_ms=q, busy_ms=b,
                       busy_over_quiet=paired(model, impl, "busy", impl, "quiet"),
                       vs_nndsl_quiet=None if impl == "nndsl" else paired(model, impl, "quiet", "nndsl", "quiet"),
                       vs_nndsl_busy=None if impl == "nndsl" else paired(model, impl, "busy", "nndsl", "busy"))
            rows.append(row)
            f = step_time.fmt
            print(f"| {model} | {impl} | {f(q)} | {f(b)} | {f(row['busy_over_quiet'], '{:.2f}×')} | "
                  f"{f(row['vs_nndsl_quiet'], '{:.2f}×')} | {f(row['vs_nndsl_busy'], '{:.2f}×')} |")
    print(f"\nMedian over {args.rounds} rounds; each run its own process; busy: {args.spinners} spinning "
          f"process(es) for the length of the run. Load average at end {step_time._loadavg()}.")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "rows": rows,
                                               "runs": {"|".join(k): v for k, v in runs.items()}}, indent=1))


if __name__ == "__main__":
    main()
