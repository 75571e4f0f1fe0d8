"""Cold and warm start of nndsl (MNIST MLP by default), with PyTensor's cold compile beside it.

    python benchmarks/compile_time.py [--model mnist] [--impls nndsl,pytensor,jax] [--rounds 1]
    python benchmarks/compile_time.py --impls nndsl --models mnist,deep16,deep48 --second deep20

`--models` sweeps several models (the deep MLPs: 16, 20 and 48 hidden tanh layers of 64);
`--second M` adds a phase per model: model M built into the same folder and numba cache
right after the cold build, the case of a second model that uses the same kinds of layers
(its kernels come from the shared cache; only its entry function compiles).

Every phase is a new process running `impl_<name>.py --samples 0` (build/compile, then one
timed step), so interpreter start-up and imports are inside `process s`:

- nndsl cold:  empty build directory and a fresh NUMBA_CACHE_DIR; `build_file` + first step.
- nndsl warm build: a new process, the same directory and caches; `build_file` again + first step.
- nndsl warm import: a new process that imports the generated module written by the cold
  run (no compiler import at all) + first step: what a user's program pays at start-up.
- pytensor cold / warm: a fresh PYTENSOR_FLAGS=base_compiledir=DIR (PyTensor keeps its
  Numba cache under it), then a second process with the same directory.
- jax: no persistent cache by default, so every start is cold.

Prints the build's per-stage timings (`res.timings`) for the nndsl builds.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import MODELS, UNAVAILABLE  # noqa: E402


def run_impl(impl, model, env_extra, extra_args=(), timeout=1800):
    cmd = [sys.executable, str(HERE / f"impl_{impl}.py"), "--model", model, "--samples", "0",
           *extra_args]
    env = dict(os.environ, **env_extra)
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=HERE.parent)
    wall = time.perf_counter() - t0
    rec = next((json.loads(line) for line in reversed(p.stdout.splitlines()) if line.startswith("{")), None)
    if p.returncode == UNAVAILABLE and rec and "skipped" in rec:
        return None, "skipped: " + rec["skipped"]
    if p.returncode != 0 or rec is None:
        tail = (p.stderr.strip().splitlines() or ["(no output)"])[-1]
        return None, f"failed (exit {p.returncode}): {tail}"
    rec["process_s"] = round(wall, 3)
    return rec, ""


def phases(impl, model, root: Path, second=None):
    """(phase name, env, extra args, model) for one implementation, in the order they must run."""
    if impl == "nndsl":
        env = {"NUMBA_CACHE_DIR": str(root / "numba")}
        out = ["--out-dir", str(root / "out")]
        runs = [("cold build", env, out, model)]
        if second:
            runs.append((f"then {second}", env, out, second))
        return runs + [("warm build", env, out, model), ("warm import", env, out + ["--reuse"], model)]
    if impl == "pytensor":
        flags = os.environ.get("PYTENSOR_FLAGS", "")
        flags = (flags + "," if flags else "") + f"base_compiledir={root / 'pytensor'}"
        env = {"PYTENSOR_FLAGS": flags}
        return [("cold compile", env, [], model), ("warm compile", env, [], model)]
    return [("start", {}, [], model)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(MODELS), default="mnist")
    ap.add_argument("--models", help="comma list of models to sweep (overrides --model)")
    ap.add_argument("--second", choices=sorted(MODELS),
                    help="nndsl: build this model into the same folder after each cold build")
    ap.add_argument("--impls", default="nndsl,pytensor",
                    help="comma list of nndsl,pytensor,jax,torch (default nndsl,pytensor)")
    ap.add_argument("--rounds", type=int, default=1, help="repeat each cold/warm sequence")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args(argv)
    impls = [i.strip() for i in args.impls.split(",") if i.strip()]

    models = [m.strip() for m in (args.models or args.model).split(",") if m.strip()]
    for model in models:
        report(model, impls, args)


def report(model, impls, args):
    results = []
    for rnd in range(args.rounds):
        for impl in impls:
            root = Path(tempfile.mkdtemp(prefix=f"compile_time_{impl}_"))
            try:
                for phase, env, extra, which in phases(impl, model, root, args.second):
                    rec, note = run_impl(impl, which, env, extra)
                    if rec is None:
                        print(f"# {impl} {phase}: {note}", flush=True)
                        break
                    rec.update(phase=phase, round=rnd + 1)
                    results.append(rec)
                    print(f"# round {rnd + 1} {impl} {phase}: compile {rec.get('compile_s')} s, "
                          f"first step {rec['first_step_s']} s, process {rec['process_s']} s", flush=True)
                    if rec.get("timings"):
                        stages = ", ".join(f"{k} {v:.3f}" for k, v in rec["timings"].items())
                        print(f"#   build stages (s): {stages}", flush=True)
            finally:
                shutil.rmtree(root, ignore_errors=True)

    print(f"\n{model}: start-up costs, seconds (median over {args.rounds} round(s))\n")
    print("| impl | phase | build/compile | import + Model() | first step | compile + first step | whole process |")
    print("|---|---|---|---|---|---|---|")
    seen = []
    for r in results:
        key = (r["impl"], r["phase"])
        if key in seen:
            continue
        seen.append(key)
        same = [q for q in results if (q["impl"], q["phase"]) == key]

        def med(field):
            vals = [q[field] for q in same if q.get(field) is not None]
            return statistics.median(vals) if vals else None

        comp, first = med("compile_s"), med("first_step_s")
        f = lambda v: "—" if v is None else f"{v:.2f}"  # noqa: E731
        print(f"| {r['impl']} {r.get('version', '')} | {r['phase']} | {f(comp)} | {f(med('import_s'))} | "
              f"{f(first)} | {f((comp or 0) + first)} | {f(med('process_s'))} |")
    stage_rows = [r for r in results if r.get("timings")]
    if stage_rows:
        print("\nnndsl build stages (s):\n")
        names = list(dict.fromkeys(k for r in stage_rows for k in r["timings"]))
        print("| phase | round | " + " | ".join(names) + " |")
        print("|---|---|" + "---|" * len(names))
        for r in stage_rows:
            cells = " | ".join(f"{r['timings'][k]:.3f}" if k in r["timings"] else "—" for k in names)
            print(f"| {r['phase']} | {r['round']} | {cells} |")
    if args.json:
        path = Path(args.json).with_suffix(f".{model}.json") if len(args.models or "") else Path(args.json)
        path.write_text(json.dumps(results, indent=1))
        print(f"\nWrote {path}")


if __name__ == "__main__":
    main()
