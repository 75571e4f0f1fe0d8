"""Where a threaded step's parts run: numba's threads (the entry's `run_parts`) against a pool
of Python threads, in one process on one model, so both see the same machine.

    python benchmarks/parts_handover.py [--models lstm,cnn] [--rounds 30] [--threads 2]

Both ways compute the same step (tests/test_threads.py); they differ in how a part reaches
its thread: numba's OpenMP/TBB workers spin a while after a step, a Python worker sleeps on
a lock until the kernel wakes it. Each round times a block of steps each way, the order
alternating; the table shows each way's median ms/step and the median of the rounds'
paired ratios (Python threads / numba threads, above 1: numba's are faster). Ours against
ours, so one process serves: no other library's thread pool is in it.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from _common import MODELS, make_data
from impl_nndsl import load_built


def measure(model: str, rounds: int, threads: int) -> dict:
    from nndsl.build import build_file
    spec = MODELS[model]
    out = tempfile.mkdtemp(prefix="nndsl_parts_")
    build_file(str(spec["nn"]), out, dtype="float32")
    module = load_built(f"{out}/{spec['module']}.py")
    m = module.Model(seed=0, threads=threads)
    x, y = make_data(model)
    data = {next(iter(module.INPUTS)): x, spec["target"]: y}
    steps = max(10, spec["steps"] // 2)
    for numba_threads in (False, True):
        m._parts_in_numba = numba_threads
        for _ in range(20):
            m.step(**data)
    times = {False: [], True: []}
    ratios = []
    for r in range(rounds):
        pair = {}
        for numba_threads in ((True, False) if r % 2 else (False, True)):
            m._parts_in_numba = numba_threads
            m.step(**data)
            start = time.perf_counter()
            for _ in range(steps):
                m.step(**data)
            pair[numba_threads] = (time.perf_counter() - start) / steps * 1e3
            times[numba_threads].append(pair[numba_threads])
        ratios.append(pair[False] / pair[True])
    return dict(python=statistics.median(times[False]), numba=statistics.median(times[True]),
                ratio=statistics.median(ratios), low=min(ratios), high=max(ratios))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="lstm,cnn")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    print("| model | Python threads ms | numba threads ms | paired ratio (median, range) |")
    print("|---|---|---|---|")
    for model in args.models.split(","):
        r = measure(model, args.rounds, args.threads)
        print(f"| {model} | {r['python']:.3f} | {r['numba']:.3f} | "
              f"{r['ratio']:.3f}× ({r['low']:.2f}–{r['high']:.2f}) |", flush=True)


if __name__ == "__main__":
    main()
