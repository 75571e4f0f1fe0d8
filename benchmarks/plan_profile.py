"""Where a training step's time goes: each row of the step's plan table timed on its own.

    python benchmarks/plan_profile.py benchmarks/models/cnn.nn --batch 64 [--top 25]
    python benchmarks/plan_profile.py benchmarks/models/lstm_seq.nn --batch 32 --T 32

Builds the model (float32), runs one step on random data (so the workspace holds real
values), then runs every row of the step's plan alone, `--repeat` times in one call of the
module's own entry function (best of three), and prints the rows by time with the stage notes of the plan
(what each kernel computes) and their sum against the whole step. Rows of one kind of
kernel are also summed. `--context` times each row where the step runs it instead: the
plan's first r + 1 rows less its first r, so a row also pays for fetching what the rows
before it left in memory. One process, no peers: a tool to find the next thing to speed up,
not a comparison (benchmarks/step_time.py makes those).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--T", type=int, default=32, help="sequence length for a free size T")
    ap.add_argument("--repeat", type=int, default=50)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--threads", type=int, default=1,
                    help="Model(threads=K) for the whole-step time (1: one thread of one BLAS thread); "
                         "the rows alone always run in this thread")
    ap.add_argument("--blas", type=int, default=1, help="BLAS threads of the rows alone")
    ap.add_argument("--context", action="store_true",
                    help="time each row where the step runs it (after the rows before it), not alone")
    args = ap.parse_args()

    from nndsl.build import build_file
    from nndsl.loader import import_module
    out = Path(tempfile.mkdtemp(prefix="nndsl_profile_"))
    result = build_file(args.model, out)
    module = import_module(result.path, result.module_name)
    rng = np.random.default_rng(0)
    loss = module.LOSSES[0]
    names = module.STEPS[loss].data
    data = {}
    for k in names:
        shape, classes, _ = module.DATA[k]
        shape = tuple(args.T if isinstance(s, str) else s for s in shape)
        data[k] = (rng.integers(0, classes, (args.batch,) + shape) if classes is not None
                   else rng.standard_normal((args.batch,) + shape).astype(module.DTYPE))
    m = module.Model(seed=0, threads=args.threads)
    for _ in range(3):
        m.step(**data)
    t0 = time.perf_counter()
    for _ in range(args.repeat):
        m.step(**data)
    step = (time.perf_counter() - t0) / args.repeat

    # the step's plan and the arguments of its entry call, as `_run` makes them
    captured = {}
    real_call = m._call            # (found: the addresses by update, update, the entry's arguments)
    m._call = lambda found, update, a: captured.update(found=found, update=update, args=a) \
        or real_call(found, update, a)
    m.threads = 1                  # one call of the entry for the whole batch
    m.step(**data)
    del m._call
    call_args = list(captured["args"])
    table = call_args[len(call_args) - 15]       # the plan, then stop, given_mask, seed, first, ... (14)
    addresses = captured["found"][captured["update"]]
    plan_index = len(call_args) - 15
    notes = _row_notes(Path(result.path).read_text(), module.STEPS[loss].train_plan, len(table), args.T)
    kernels = _arm_kernels(module)

    threads = sys.modules[type(m).__mro__[1].__module__.rsplit(".", 1)[0] + ".threads"]
    threads.use_blas_threads(args.blas)
    call_args[plan_index + 6] = 0                    # no update
    times = _in_context(m, addresses, call_args, plan_index, table, args.repeat) if args.context \
        else _alone(m, addresses, call_args, plan_index, table, args.repeat)
    total = sum(times)
    how = "rows in the step" if args.context else "rows alone"
    print(f"{args.model.name}: batch {args.batch}, step {step * 1e3:.3f} ms, {how} {total * 1e3:.3f} ms "
          f"({len(table)} rows)\n")
    print("| ms | row | kernel | what |\n|---:|---:|---|---|")
    for r in sorted(range(len(table)), key=lambda r: -times[r])[:args.top]:
        print(f"| {times[r] * 1e3:.3f} | {r} | {kernels[table[r, 0]]} | {notes[r]} |")
    by_kind, by_kernel, calls = defaultdict(float), defaultdict(float), defaultdict(int)
    for r, t in enumerate(times):
        kernel = kernels[table[r, 0]]
        by_kind[kernel.split("_")[0]] += t
        by_kernel[kernel] += t
        calls[kernel] += 1
    print("\nby kind: " + ", ".join(f"{k} {v * 1e3:.3f} ms" for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])))
    print("\n| ms | calls | kernel |\n|---:|---:|---|")
    for k, v in sorted(by_kernel.items(), key=lambda kv: -kv[1])[:args.top]:
        print(f"| {v * 1e3:.3f} | {calls[k]} | {k} |")


def _alone(m, addresses, call_args, plan_index, table, repeat) -> list[float]:
    """Each row `repeat` times over: its operands stay in the caches, so a row's time is its
    own work, not the memory traffic between rows."""
    times = []
    for r in range(len(table)):
        # the row `repeat` times in one table: one call from Python (~20 µs of its own) for all
        call_args[plan_index] = np.repeat(table[r:r + 1], repeat, axis=0)
        call_args[plan_index + 1] = repeat
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            m._entry.run(addresses, *call_args)
            best = min(best, time.perf_counter() - t0)
        times.append(best / repeat)
    return times


def _in_context(m, addresses, call_args, plan_index, table, repeat) -> list[float]:
    """Each row where the step runs it: the median time of the plan's first r + 1 rows less
    that of its first r, so a row's time includes fetching what the rows before it left in
    memory (a step over large tensors spends much of its time there)."""
    prefix = [[] for _ in range(len(table) + 1)]
    call_args[plan_index] = table
    for _ in range(repeat):
        for r in range(len(table) + 1):
            call_args[plan_index + 1] = r
            t0 = time.perf_counter()
            m._entry.run(addresses, *call_args)
            prefix[r].append(time.perf_counter() - t0)
    med = [float(np.median(p)) for p in prefix]
    return [med[r + 1] - med[r] for r in range(len(table))]


def _arm_kernels(module) -> list[str]:
    entry = sys.modules["nndsl_kernels_" + module.KERNELS[-1]]
    return [name for name, _ in entry.ARMS]


def _row_notes(text: str, plan: str, n_rows: int, T: int) -> list[str]:
    """The stage notes above each row of the plan's table (`_plan_PLAN`), in order; the rows
    of a recurrence's `for t_ in ...:` block repeat once per step."""
    start = text.index(f"def _plan_{plan}(")
    out, notes, block = [], [], None
    for line in text[start:].splitlines()[1:]:
        line = line.strip()
        if line.startswith("def "):
            break
        if line.startswith("for "):
            block = []
        elif line == "])" and block is not None:
            out += block * T
            block = None
        elif line.startswith("# ") and not line.startswith("# ----"):
            notes.append(line[2:])
        elif line.startswith("("):
            (out if block is None else block).append(" | ".join(notes)[:90])
            notes = []
    return (out + [""] * n_rows)[:n_rows]


if __name__ == "__main__":
    main()
