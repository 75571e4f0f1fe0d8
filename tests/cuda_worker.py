"""Checks of the CUDA module against the CPU module, run in a process of their own (the
simulator, NUMBA_ENABLE_CUDASIM=1, must be set before numba.cuda is imported, and must not
leak into the CPU tests). Used by tests/test_cuda.py.

    python tests/cuda_worker.py equal|stochastic|fit|auto SOURCE.nn BUILD_DIR [--dtype float64]
    python tests/cuda_worker.py serve

The first form prints one JSON line. `serve` answers one JSON request per stdin line
({"mode", "source", "folder", "dtype", "env"}) with one result line (after MARK): one
process runs every check of a test worker, so the kernels that examples share (by content)
are compiled once, for the CPU and for the simulator.
"""
from __future__ import annotations

import json
import os
import sys
import traceback
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from conftest import random_data  # noqa: E402  (the tests' one batch maker; tests/ is sys.path[0])

import cudasim_patch  # noqa: E402,F401  (the simulator's block loop without its busy poll)
from nndsl.build import render, write_rendered  # noqa: E402
from nndsl.frontend import load_source  # noqa: E402
from nndsl.loader import import_module  # noqa: E402


# the suite's one kernel folder (conftest.compile_source's): a CPU kernel that another test
# compiled is served from numba's cache here, and the reverse
KERNELS = ROOT / "tests" / ".build" / "nndsl_kernels"


def build(source: str, folder: Path, dtype: str, target: str):
    model = load_source(source, "model.nn")
    path = folder / target / f"{model.name}.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    # (MPI ranks too: kernel files are written atomically and only when absent, and numba
    # replaces its cache files atomically)
    write_rendered(render(model, dtype, target, kernel_dir=os.path.relpath(KERNELS, path.parent)), path, KERNELS)
    return import_module(path, f"nndsl_{target}_{model.name}")


def batch(module, n=3, seed=1):
    return random_data(module, n, seed)


def rel(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), 1e-30))


def rel_whole(a: dict, b: dict) -> float:
    """`rel` of every parameter's values (or gradient) as one vector. Not parameter by
    parameter: one whose gradient is zero by symmetry may come out as 3e-20 on one target and
    0 on the other, and Adam moves it by lr·g/eps (1e-15 against 0 after three steps, a
    relative difference of 1 where the other parameters agree to 1e-16; random model 5075)."""
    return rel(np.concatenate([np.ravel(a[p]) for p in a]), np.concatenate([np.ravel(b[p]) for p in a]))


def equal(cpu, gpu) -> dict:
    """Loss, gradient and three optimiser steps of every loss; forward; forward at a node."""
    data = batch(cpu)
    a, b = cpu.Model(seed=0), gpu.Model(seed=0)
    for name in cpu.LOSSES:                   # a cosine schedule's run: the steps below
        a.total_steps[name] = b.total_steps[name] = 4
    out = {"loss": 0.0, "grad": 0.0, "steps": 0.0, "params": 0.0, "forward": 0.0, "untouched": True}
    for name in cpu.LOSSES:
        d = {k: data[k] for k in cpu.STEPS[name].data}
        La, ga = a.grad(name, **d)
        Lb, gb = b.grad(name, **d)
        out["loss"] = max(out["loss"], rel(La, Lb))
        out["grad"] = max(out["grad"], rel_whole(ga, gb))
        before = {p: v.copy() for p, v in b.params.items()}
        for _ in range(3):
            out["steps"] = max(out["steps"], rel(a.step(name, **d), float(b.step(name, **d))))
        out["params"] = max(out["params"], rel_whole(a.params, b.params))
        # a step of one loss leaves the parameters outside its `wrt` bit-identical (a GAN)
        wrt = set()
        for lo, hi, _ in cpu.STEPS[name].ranges:
            wrt |= {p for p, (o, s, *_r) in cpu.PARAMS.items() if lo <= o < hi}
        stats = set(getattr(cpu, "STATS", ()))      # running statistics: every step updates them
        out["untouched"] &= all(np.array_equal(before[p], b.params[p]) for p in before if p not in wrt | stats)
    # a padded batch (x_lengths=): loss, gradient and the nodes of examples of their own lengths
    lengths = {k: np.arange(len(data[cpu.MASKS[m][1]])) % 3 + 1 for k, m in getattr(cpu, "LENGTHS", {}).items()}
    if lengths:
        name = cpu.LOSSES[0]
        d = dict({k: data[k] for k in cpu.STEPS[name].data}, **lengths)
        (La, ga), (Lb, gb) = a.grad(name, **d), b.grad(name, **d)
        out["lengths"] = max(rel(La, Lb), rel_whole(ga, gb),
                             max(rel(x, y) for x, y in zip(
                                 a.forward(outputs=list(cpu.NODES), **{k: data[k] for k in cpu.INPUTS}, **lengths),
                                 b.forward(outputs=list(cpu.NODES), **{k: data[k] for k in cpu.INPUTS}, **lengths))))
    inputs = {k: data[k] for k in cpu.INPUTS}
    fa, fb = a.forward(**inputs), b.forward(**inputs)
    fa, fb = (fa if isinstance(fa, tuple) else (fa,)), (fb if isinstance(fb, tuple) else (fb,))
    out["forward"] = max(rel(x, y) for x, y in zip(fa, fb))
    last = list(cpu.NODES)[-1]
    out["node"] = rel(a.forward(outputs=last, **inputs), b.forward(outputs=last, **inputs))
    return out


def stochastic(cpu, gpu, n_seeds=4) -> dict:
    """The draws are counter-based and the same on both targets: for each seed the CUDA
    module's loss and gradient equal the CPU module's; a seed reproduces its loss, another
    seed changes it."""
    data = batch(cpu, n=4)
    name = cpu.LOSSES[0]
    d = {k: data[k] for k in cpu.STEPS[name].data}
    a, b = cpu.Model(seed=0), gpu.Model(seed=0)
    out = {"loss": 0.0, "grad": 0.0}
    for seed in range(n_seeds):
        (La, ga), (Lb, gb) = a.grad(name, seed=seed, **d), b.grad(name, seed=seed, **d)
        out["loss"] = max(out["loss"], rel(La, Lb))
        out["grad"] = max(out["grad"], rel_whole(ga, gb))
    L = b.loss(name, seed=7, **d)
    out["reproducible"] = b.loss(name, seed=7, **d) == L
    out["varies"] = b.loss(name, seed=8, **d) != L
    return out


def fit(cpu, gpu) -> dict:
    """fit on the device equals fit on the CPU (same shuffles, validation as a tuple too);
    NaN in the data is refused by fit and step as on the CPU; a non-finite loss that is not
    the data's fault (a learning rate of 1e308) stops both modules' fit at the same step
    with the same message and the same last finite parameters; step returns a lazy loss."""
    data = batch(cpu, n=10)
    names = cpu.STEPS[cpu.LOSSES[0]].data
    held_out = tuple(batch(cpu, n=4, seed=2)[k] for k in names)
    a, b = cpu.Model(seed=0), gpu.Model(seed=0)
    ha = a.fit(epochs=2, batch_size=4, verbose=False, validation=held_out, **data)
    hb = b.fit(epochs=2, batch_size=4, verbose=False, validation=held_out, **data)
    out = {"fit_ok": rel(ha, hb) <= 1e-8 and rel(ha.val, hb.val) <= 1e-8 and len(hb.val) == 2
           and rel_whole(a.params, b.params) <= 1e-8, "streamed": b.streamed}
    L = b.step(**data)
    out["lazy_float"] = type(L).__name__ == "DeviceLoss" and abs(float(L) - a.step(**data)) <= 1e-8 * abs(float(L))

    bad = {k: (np.full_like(v, np.nan) if v.dtype.kind == "f" else v) for k, v in data.items()}
    refused = [_message(ValueError, call, m) for call in
               (lambda m: m.fit(epochs=1, batch_size=4, verbose=False, **bad), lambda m: m.step(**bad))
               for m in (a, b)]
    out["nan_refused"], out["refusals"] = all("NaN or inf" in r for r in refused) and refused[0] == refused[1], refused

    for m in (a, b):
        m.lr[cpu.LOSSES[0]] = 1e308
    messages = [_message(FloatingPointError, m.fit, epochs=1, batch_size=4, shuffle=False, verbose=False, **data)
                for m in (a, b)]
    out["guard"] = (messages[0] == messages[1] and "became" in messages[0]
                    and all(np.isfinite(b.params[p]).all() for p in b.params)
                    and rel_whole(a.params, b.params) <= 1e-8)
    out["messages"] = messages
    return out


def checkpoints(cpu, gpu) -> dict:
    """fit's checkpoint and resume on the device: one epoch with a checkpoint, then a fit of
    two epochs resumed from it, equals two epochs at once, and equals the CPU module's."""
    import tempfile
    data = batch(cpu, n=10)
    ends = {}
    with tempfile.TemporaryDirectory() as tmp:
        for module, tag in ((cpu, "cpu"), (gpu, "gpu")):
            whole = module.Model(seed=0)
            whole.fit(epochs=2, batch_size=4, verbose=False, **data)
            first = module.Model(seed=0)
            path = os.path.join(tmp, f"{tag}.npz")
            first.fit(epochs=1, batch_size=4, verbose=False, checkpoint=path, **data)
            resumed = module.Model(seed=5)
            h = resumed.fit(epochs=2, batch_size=4, verbose=False, resume=path, **data)
            ends[tag] = (whole, resumed, len(h))
    (cw, cr, _), (gw, gr, n) = ends["cpu"], ends["gpu"]
    return {"resumed": rel_whole(gw.params, gr.params), "cpu": rel_whole(cw.params, gw.params), "epochs": n}


def noise_inputs(cpu, gpu) -> dict:
    """fit with an input given as "normal" (fresh noise every batch, a GAN's z): the same
    draws on both targets."""
    data = batch(cpu, n=10)
    noise = [k for k in cpu.INPUTS if k not in cpu.STEPS[cpu.LOSSES[0]].data or k == "z"]
    given = {k: v for k, v in data.items() if k not in noise}
    a, b = cpu.Model(seed=0), gpu.Model(seed=0)
    ha = a.fit(epochs=2, batch_size=4, verbose=False, **given, **{k: "normal" for k in noise})
    hb = b.fit(epochs=2, batch_size=4, verbose=False, **given, **{k: "normal" for k in noise})
    return {"history": rel(ha, hb), "params": rel_whole(a.params, b.params),
            "noise": noise}


def _message(error, call, *args, **kwargs) -> str:
    """The message of the `error` that `call(*args, **kwargs)` raises; "" if it returns."""
    try:
        call(*args, **kwargs)
    except error as e:
        return str(e)
    return ""


def mpi(cpu, gpu) -> dict | None:
    """Run by `mpiexec -n 2`: fit over the ranks (comm=COMM_WORLD) against fit in one process,
    both on the CUDA module; the replicas must be bit-identical. Rank 0 reports."""
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    data = batch(cpu, n=10)
    one = gpu.Model(seed=0)
    one.fit(epochs=2, batch_size=4, verbose=False, **data)
    m = gpu.Model(seed=0)
    m.fit(epochs=2, batch_size=4, verbose=False, comm=comm, **data)
    theta = np.concatenate([v.ravel() for v in m.params.values()])
    replicas = comm.gather(theta, root=0)
    if comm.Get_rank():
        return None
    alone = np.concatenate([v.ravel() for v in one.params.values()])
    return {"rel": rel(alone, theta), "replicas_equal": all(np.array_equal(r, theta) for r in replicas),
            "path": m.comm_path, "ranks": comm.Get_size()}


def scan(cpu, gpu) -> dict:
    """The launches of the training plan for two sequence lengths: a recurrence's rows run as
    one launch of the scan kernel, so the count does not grow with T; and equality with the
    CPU module with the scan kernel on (`equal`)."""
    m = gpu.Model(seed=0)
    plan = cpu.STEPS[cpu.LOSSES[0]].train_plan
    size = m.tables.free_sizes[0]
    rows, launches = [], []
    for T in (2, 5):
        bound = m._plan_launches(plan, 3, {size: T}, True)
        rows.append(len(bound))
        launches.append(sum(go is not None for _, go in bound))
    return dict(equal(cpu, gpu), scan=gpu.SCAN is not None, rows=rows, launches=launches)


def auto(cpu, gpu) -> dict:
    """`equal`: the noise of a model that draws is the CPU module's too."""
    return dict(equal(cpu, gpu), mode="equal")


MODES = {"equal": equal, "scan": scan, "stochastic": stochastic, "fit": fit, "auto": auto, "mpi": mpi,
         "checkpoints": checkpoints, "noise_inputs": noise_inputs}

MARK = "@@cuda_worker "


def check(mode: str, source: str, folder: Path, dtype: str) -> dict:
    cpu, gpu = build(source, folder, dtype, "cpu"), build(source, folder, dtype, "cuda")
    return MODES[mode](cpu, gpu)


def serve():
    """One request per line; the modules read their environment (NNDSL_CUDA_BLOCK_MIN) when
    imported, so each request's `env` is set around its build and run."""
    # replies go to a copy of the stdout pipe; fd 1 itself (Python's and C's prints) goes to
    # stderr, so each request gets exactly one line back
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    for line in sys.stdin:
        req = json.loads(line)
        saved = {k: os.environ.get(k) for k in req.get("env", {})}
        os.environ.update(req.get("env", {}))
        try:
            reply = check(req["mode"], req["source"], Path(req["folder"]), req.get("dtype", "float64"))
        except Exception:                                    # noqa: BLE001  (the test shows it)
            reply = {"error": traceback.format_exc()}
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        out.write(MARK + json.dumps(reply) + "\n")
        out.flush()


if __name__ == "__main__":
    warnings.simplefilter("ignore")      # the simulator's uint64 overflow and object-mode notices
    if sys.argv[1] == "serve":
        serve()
    else:
        mode, source, folder = sys.argv[1], Path(sys.argv[2]).read_text(), Path(sys.argv[3])
        dtype = sys.argv[5] if len(sys.argv) > 5 and sys.argv[4] == "--dtype" else "float64"
        rank = os.environ.get("PMI_RANK")        # under mpiexec: a folder per rank, no write races
        result = check(mode, source, folder / f"rank{rank}" if rank else folder, dtype)
        if result is not None:
            print(json.dumps(result))
