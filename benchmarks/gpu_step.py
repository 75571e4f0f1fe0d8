"""Training-step time on a CUDA GPU: nndsl's CUDA module against PyTorch eager, torch.compile
and JAX jit (issue 12).

    python benchmarks/gpu_step.py [--models mnist128,mnist4096,wide1024] [--rounds 3]
                                  [--impls nndsl,nndsl_launches,nndsl_tf32,nndsl_rows,torch,torch_compile,jax]
                                  [--out DIR]

The MLPs use Adam and cross-entropy; `cnn64` and `lstm32` are the CPU benchmarks' CNN
(batch 64) and LSTM (T 32, hidden 64, batch 32), float32, built from benchmarks/models/ and
the same peer code (impl_torch.py, impl_jax.py) on the GPU. Each (model, implementation)
runs in its own process (`--child`), implementations alternate within a round (the order
rotates), and a peer's ratio is the median over rounds of peer/nndsl (above 1: nndsl is
faster). `nndsl` is the default: each step after the first two replays one captured CUDA
graph (cuBLAS through nvmath-python; launch by launch where capture is not available, and
the record says which); `nndsl_launches` launches kernel by kernel from the plan tables;
`nndsl_tf32` is the default with `tf32=True`; `nndsl_rows` is the default with a recurrence's
rows launched one by one (NNDSL_CUDA_SCAN=0) instead of its scan kernel (models with a
recurrence only). A missing library is a note, not a failure.
Writes DIR/gpu_step.json and DIR/gpu_step.md.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

# name: (layer widths, batch) of an MLP, or the name of a model of the CPU benchmarks
MODELS = {
    "mnist128": ([784, 256, 128, 10], 128),
    "mnist4096": ([784, 256, 128, 10], 4096),
    "wide1024": ([1024, 4096, 4096, 4096, 4096, 10], 1024),
    "cnn64": "cnn",
    "lstm32": "lstm",
}


def describe(model) -> str:
    spec = MODELS[model]
    if isinstance(spec, str):
        from _common import MODELS as CPU
        return f"{model}: the CPU benchmarks' {spec}, batch {CPU[spec]['batch']}"
    return f"{model}: {'-'.join(map(str, spec[0]))}, batch {spec[1]}"


def source_and_feed(model):
    """The .nn text and the batch {name: array} of a model."""
    spec = MODELS[model]
    if isinstance(spec, str):
        from _common import MODELS as CPU, make_data
        x, y = make_data(spec)
        return CPU[spec]["nn"].read_text(), {"x": x, CPU[spec]["target"]: y}
    x, y = data(*spec)
    return nn_source(spec[0]), {"x": x, "label": y}
IMPLS = ["nndsl", "nndsl_launches", "nndsl_tf32", "nndsl_rows", "torch", "torch_compile", "jax"]
LR, B1, B2, EPS = 1e-3, 0.9, 0.999, 1e-8


def nn_source(widths) -> str:
    lines = ["model bench", f"input x[{widths[0]}]", f"target label: class({widths[-1]})"]
    prev = "x"
    for i, w in enumerate(widths[1:-1]):
        lines.append(f"h{i} = dense({prev}, {w}, act=relu)")
        prev = f"h{i}"
    lines += [f"o = dense({prev}, {widths[-1]})", "loss cross_entropy(o, label)",
              f"optimizer adam(lr={LR})"]
    return "\n".join(lines) + "\n"


def data(widths, batch):
    import numpy as np
    rng = np.random.default_rng(0)
    return (rng.standard_normal((batch, widths[0])).astype(np.float32),
            rng.integers(0, widths[-1], batch).astype(np.int64))


SECONDS = float(os.environ.get("GPU_STEP_SECONDS", "1.5"))


def timed(step, sync, warmup=10, seconds=None, min_iters=20):
    """Median ms per step over blocks of steps (each block ends in one synchronisation)."""
    for _ in range(warmup):
        step()
    sync()
    seconds = SECONDS if seconds is None else seconds
    block, samples, start = 10, [], time.perf_counter()
    while time.perf_counter() - start < seconds or len(samples) * block < min_iters:
        t0 = time.perf_counter()
        for _ in range(block):
            step()
        sync()
        samples.append((time.perf_counter() - t0) * 1000 / block)
    return statistics.median(samples)


# ------------------------------------------------------------- the children
def child_nndsl(model, graph, scans=True):
    if not scans:
        os.environ["NNDSL_CUDA_SCAN"] = "0"          # read when the runtime is imported
    sys.path.insert(0, str(ROOT))
    from nndsl.build import build_file
    from nndsl.loader import import_module
    text, feed = source_and_feed(model)
    folder = Path(tempfile.gettempdir()) / "nndsl_gpu_bench" / model
    folder.mkdir(parents=True, exist_ok=True)
    src = folder / "bench.nn"
    src.write_text(text)
    r = build_file(src, folder, dtype="float32", target="cuda")
    mod = import_module(r.path, "bench_cuda_" + model)
    if not scans and mod.SCAN is None:
        return {"skip": "no recurrence: the same as nndsl"}
    m = mod.Model(seed=0, tf32=graph == "tf32")
    m.graphs = bool(graph)                           # graph replay (the default) or launch by launch
    m.step(**feed)
    _, n_rows, sizes = m._arrays(list(feed), feed, "bench")
    bufs = m._input_buffers(n_rows, sizes)           # data already on the device: time the step
    on_device = {k: bufs[k] for k in feed}
    m.step(**on_device)                              # the second step of a shape is captured
    result = {"ms": timed(lambda: m.step(**on_device), m.synchronize), "gemm": m._gemm.name}
    if graph and not m._graphs:
        result["note"] = "no graph: capture not available with this GEMM provider"
    return result


def child_torch(model, compiled):
    import torch
    from torch import nn
    if isinstance(MODELS[model], str):
        import impl_torch
        x, y = source_and_feed(model)[1].values()
        step = impl_torch.build(MODELS[model], x, y, device="cuda")
        return {"ms": timed(torch.compile(step) if compiled else step, torch.cuda.synchronize)}
    widths, batch = MODELS[model]
    dev = torch.device("cuda")
    layers = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    net = nn.Sequential(*layers).to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=LR, betas=(B1, B2), eps=EPS, fused=True)
    x_np, y_np = data(widths, batch)
    x, y = torch.from_numpy(x_np).to(dev), torch.from_numpy(y_np).to(dev)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        return loss
    if compiled:
        step = torch.compile(step)
    return {"ms": timed(step, torch.cuda.synchronize)}


def child_jax(model):
    import jax
    import jax.numpy as jnp
    import optax
    if jax.devices()[0].platform != "gpu":
        return {"skip": f"JAX runs on {jax.devices()[0].platform} here"}
    if isinstance(MODELS[model], str):
        import impl_jax
        x, y = source_and_feed(model)[1].values()
        step, _ = impl_jax.build(MODELS[model], x, y)
        box = [None]

        def run_one():
            box[0] = step()
        return {"ms": timed(run_one, lambda: box[0].block_until_ready())}
    widths, batch = MODELS[model]
    key = jax.random.PRNGKey(0)
    params = []
    for a, b in zip(widths[:-1], widths[1:]):
        key, k = jax.random.split(key)
        params.append((jax.random.normal(k, (a, b)) * (2 / (a + b)) ** 0.5, jnp.zeros(b)))
    x_np, y_np = data(widths, batch)
    x, y = jnp.asarray(x_np), jnp.asarray(y_np)
    opt = optax.adam(LR, B1, B2, EPS)
    state = opt.init(params)

    def loss_fn(p):
        h = x
        for i, (w, b) in enumerate(p):
            h = h @ w + b
            if i < len(p) - 1:
                h = jax.nn.relu(h)
        return optax.softmax_cross_entropy_with_integer_labels(h, y).mean()

    @jax.jit
    def step(p, s):
        loss, g = jax.value_and_grad(loss_fn)(p)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    box = [params, state, None]

    def run():
        box[0], box[1], box[2] = step(box[0], box[1])
    return {"ms": timed(run, lambda: box[2].block_until_ready())}


def child(impl, model):
    try:
        if impl in ("nndsl", "nndsl_launches", "nndsl_tf32", "nndsl_rows"):
            return child_nndsl(model, {"nndsl_launches": None, "nndsl_tf32": "tf32"}.get(impl, "graph"),
                               scans=impl != "nndsl_rows")
        if impl in ("torch", "torch_compile"):
            return child_torch(model, impl == "torch_compile")
        if impl == "jax":
            return child_jax(model)
    except ImportError as exc:
        return {"skip": f"not importable: {exc.name}"}
    raise ValueError(impl)


def report(args, models, impls, results, notes):
    """The table so far (written after every round: a run cut short still leaves one)."""
    table = ["| model | " + " | ".join(impls) + " |", "|---" * (len(impls) + 1) + "|"]
    summary = {"device": device_name(), "rounds": args.rounds, "models": {}}
    for m in models:
        base = results[m].get("nndsl", [])
        cells, entry = [], {}
        for impl in impls:
            ms = results[m][impl]
            if not ms:
                cells.append(f"— ({notes.get(m, {}).get(impl, 'no data')})")
                continue
            med = statistics.median(ms)
            ratio = statistics.median(p / b for p, b in zip(ms, base)) if base and impl != "nndsl" else None
            entry[impl] = {"ms": ms, "median_ms": med, "ratio_vs_nndsl": ratio}
            cells.append(f"{med:.3f} ms" + (f" ({ratio:.2f}×)" if ratio else ""))
        summary["models"][m] = entry
        table.append(f"| {describe(m)} | " + " | ".join(cells) + " |")
    summary["notes"] = notes
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_step.json").write_text(json.dumps(summary, indent=1))
    text = f"Device: {summary['device']}; float32 Adam step, median over {args.rounds} rounds; " \
           "(ratio) = median of peer/nndsl per round.\n\n" + "\n".join(table) + "\n"
    (out / "gpu_step.md").write_text(text)
    print(text)


# ------------------------------------------------------------- the parent
def device_name():
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip().splitlines()[0]
    except Exception:                                      # noqa: BLE001
        return "unknown GPU"


def prewarm(models, impls, args):
    from concurrent.futures import ThreadPoolExecutor
    env = dict(os.environ, GPU_STEP_SECONDS="0.01")

    def one(job):
        impl, m = job
        t0 = time.perf_counter()
        try:
            out = subprocess.run([sys.executable, __file__, "--child", impl, m], capture_output=True,
                                 text=True, timeout=args.timeout, env=env)
            tail = (out.stdout.strip().splitlines() or [""])[-1][:120] if out.returncode == 0 else \
                "failed: " + out.stderr.strip()[-300:]
        except subprocess.TimeoutExpired:
            tail = f"timed out after {args.timeout} s"
        print(f"prewarm {m:10s} {impl:14s} {time.perf_counter() - t0:6.1f} s {tail}", flush=True)
    with ThreadPoolExecutor(args.prewarm) as pool:
        list(pool.map(one, [(i, m) for m in models for i in impls]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--impls", default=",".join(IMPLS))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--timeout", type=int, default=240, help="seconds per child run")
    ap.add_argument("--prewarm", type=int, default=0, metavar="WORKERS",
                    help="first run every child once, WORKERS at a time, untimed: fills the numba, "
                         "inductor and JAX caches so the timed rounds start warm")
    ap.add_argument("--child", nargs=2, metavar=("IMPL", "MODEL"))
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return 0
    models, impls = args.models.split(","), args.impls.split(",")
    results = {m: {i: [] for i in impls} for m in models}
    notes = {}
    if args.prewarm:
        prewarm(models, impls, args)
    for r in range(args.rounds):
        for m in models:
            order = impls[r % len(impls):] + impls[:r % len(impls)]
            for impl in order:
                if impl in notes.get(m, {}):
                    continue
                try:
                    out = subprocess.run([sys.executable, __file__, "--child", impl, m], capture_output=True,
                                         text=True, timeout=args.timeout)
                    res = json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else \
                        {"skip": "failed: " + out.stderr.strip().splitlines()[-1][:200] if out.stderr.strip() else "failed"}
                except subprocess.TimeoutExpired:
                    res = {"skip": f"timed out after {args.timeout} s"}
                if "skip" in res:
                    notes.setdefault(m, {})[impl] = res["skip"]
                else:
                    results[m][impl].append(res["ms"])
                print(f"round {r + 1} {m:10s} {impl:14s} {res}", flush=True)
                report(args, models, impls, results, notes)      # a run cut short keeps its table
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
