"""Data-parallel scaling: measured on this machine, modelled for a cluster (docs/scaling.md).

    python benchmarks/scaling.py [--model examples/mnist_mlp.nn] [--epochs 8] [--target 0.90]

Measured (float32, `--data mnist`, the model's batch):
  1. one process with 2 BLAS threads  against  2 MPI ranks (mpiexec -n 2) with 1 thread each
     (and one process with 1 thread, the reference):
     examples/s of training, and training seconds until the test accuracy first reaches
     `--target` (evaluation not counted);
  2. the compute time of one step against the per-rank batch b (1 thread), fitted as
     t(b) = t0 + c·b, and the time of one Allreduce of the gradient vector on 2 ranks here.
Modelled: ring all-reduce 2(p-1)/p · bytes / bandwidth + 2(p-1) · latency for p = 2…256
at 10 and 100 Gb/s against t(b), and the per-rank batch below which a model stops scaling.

It runs itself as the workers (`--worker ...`), so each configuration gets fresh processes
with its own thread settings. Numbers from a shared machine are noisy: repeat, compare medians.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BANDWIDTHS = {"10 Gb/s": 10e9 / 8, "100 Gb/s": 100e9 / 8}     # bytes per second
LATENCY = 5e-6            # seconds per message: a typical MPI latency over TCP/RoCE (assumed)
RANKS = [2, 4, 8, 16, 32, 64, 128, 256]
BATCHES = [16, 32, 64, 128, 256, 512]


# --------------------------------------------------------------------------- workers
def _world():
    if int(os.environ.get("PMI_SIZE", "1")) > 1:
        from mpi4py import MPI
        return MPI.COMM_WORLD
    return None


def _setup(args, comm):
    sys.path.insert(0, str(ROOT))
    from nndsl.train.datasets import load_dataset
    from nndsl.train.command import bind, build_and_import
    rank = comm.Get_rank() if comm is not None else 0
    out = Path(tempfile.gettempdir()) / "nndsl-scaling" / Path(args.model).stem
    for turn in (0, 1) if comm is not None else (0,):       # rank 0 builds, then the others
        if (rank == 0) == (turn == 0):
            ds = load_dataset(args.data, seed=0)
            module, _ = build_and_import(args.model, out, "float32")
        if comm is not None:
            comm.Barrier()
    return module, ds, bind(module, ds.x_train, ds.y_train)


def worker_train(args):
    """Train epoch by epoch; rank 0 reports examples/s and seconds to the target accuracy."""
    comm = _world()
    module, ds, train = _setup(args, comm)
    rank = comm.Get_rank() if comm is not None else 0
    batch = args.batch or module.TRAIN["batch"]
    module.Model(seed=0).fit(epochs=1, batch_size=batch, verbose=False, comm=comm,   # compile
                             **{k: v[:4 * batch] for k, v in train.items()})
    m = module.Model(seed=0)
    trained, to_target, accuracies = 0.0, None, []
    for _ in range(args.epochs):
        if comm is not None:
            comm.Barrier()
        t0 = time.perf_counter()
        m.fit(epochs=1, batch_size=batch, verbose=False, comm=comm, **train)
        trained += time.perf_counter() - t0
        if rank == 0:
            logits = m.forward(x=train_shape(module, ds.x_test))
            accuracies.append(float(np.mean(np.argmax(logits, axis=1) == ds.y_test)))
            if to_target is None and accuracies[-1] >= args.target:
                to_target = trained
    if rank == 0:
        print(json.dumps(dict(examples_per_s=ds.n_train * args.epochs / trained, seconds=trained,
                              to_target=to_target, accuracy=accuracies)))


def train_shape(module, x):
    first = next(k for k, v in module.DATA.items() if not v[2])
    return x.reshape((len(x),) + tuple(module.DATA[first][0])).astype(module.DTYPE)


def worker_compute(args):
    """Median seconds of one training step (forward, backward, update) per batch size."""
    module, ds, train = _setup(args, None)
    m = module.Model(seed=0)
    names = module.STEPS[module.LOSSES[0]].data
    out = {}
    for b in BATCHES:
        batch = {k: np.ascontiguousarray(train[k][:b]) for k in names}
        m.step(**batch)
        reps = max(5, int(2000 / b))
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(reps):
                m.step(**batch)
            times.append((time.perf_counter() - t0) / reps)
        out[b] = float(np.median(times))
    print(json.dumps(dict(step=out, n_params=int(module.N_PARAMS), itemsize=np.dtype(module.DTYPE).itemsize)))


def worker_allreduce(args):
    """Median seconds of one Allreduce of the gradient vector (plus loss and stop flag)."""
    comm = _world()
    module, _, _ = _setup(args, comm)
    send = np.ones(module.N_PARAMS + 2, module.DTYPE)
    recv = np.empty_like(send)
    times = []
    for _ in range(7):
        comm.Barrier()
        t0 = time.perf_counter()
        for _ in range(200):
            comm.Allreduce(send, recv)
        times.append((time.perf_counter() - t0) / 200)
    if comm.Get_rank() == 0:
        print(json.dumps(dict(allreduce=float(np.median(times)), bytes=int(send.nbytes))))


# --------------------------------------------------------------------------- driver
def _run_worker(kind, args, ranks, threads):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT))
    command = [sys.executable, __file__, "--worker", kind, "--model", args.model, "--data", args.data,
               "--epochs", str(args.epochs), "--target", str(args.target), "--batch", str(args.batch or 0)]
    if ranks > 1:
        command = [str(Path(sys.executable).parent / "mpiexec"), "-n", str(ranks)] + command
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def ring_allreduce(nbytes, p, bandwidth, latency=LATENCY):
    return 2 * (p - 1) / p * nbytes / bandwidth + 2 * (p - 1) * latency


def report(args):
    name = Path(args.model).stem
    print(f"# {name}: data-parallel scaling on {os.cpu_count()} cores (shared machine: noisy)\n")
    print("| configuration | examples/s | s to test accuracy ≥ "
          f"{args.target:.0%} | accuracy per epoch |\n|---|---|---|---|")
    for label, ranks, threads in [("1 process × 2 BLAS threads", 1, 2), ("2 MPI ranks × 1 thread", 2, 1),
                                  ("1 process × 1 thread (reference)", 1, 1)]:
        r = _run_worker("train", args, ranks, threads)
        target = f"{r['to_target']:.2f}" if r["to_target"] is not None else "not reached"
        print(f"| {label} | {r['examples_per_s']:,.0f} | {target} | "
              f"{', '.join(f'{a:.3f}' for a in r['accuracy'])} |")

    c = _run_worker("compute", args, 1, 1)
    a = _run_worker("allreduce", args, 2, 1)
    b = np.array(sorted(int(k) for k in c["step"]))
    t = np.array([c["step"][str(k)] for k in b])
    slope, t0 = np.polyfit(b, t, 1)                     # t(b) = t0 + slope · b
    if t0 < 0:         # superlinear in b (cache effects): a fit through the origin, so that a
        slope, t0 = float(b @ t / (b @ b)), 0.0         # smaller batch never costs less than nothing
    nbytes = c["n_params"] * c["itemsize"]
    print("\nstep compute (1 thread): " + ", ".join(f"b={k}: {v * 1e3:.3f} ms" for k, v in zip(b, t)))
    print(f"fit: t(b) = {t0 * 1e3:.3f} ms + {slope * 1e6:.2f} µs · b;  gradient {nbytes / 1e6:.2f} MB "
          f"({c['n_params']:,} float{8 * c['itemsize']})")
    print(f"one Allreduce on 2 ranks here (shared memory): {a['allreduce'] * 1e3:.3f} ms for {a['bytes']:,} bytes")

    print(f"\nmodel: ring all-reduce ms (latency {LATENCY * 1e6:.0f} µs), and the per-rank batch b* "
          "below which it takes longer than the step's compute (efficiency < 50 %)\n")
    print("| p | " + " | ".join(f"all-reduce {k} | b* {k}" for k in BANDWIDTHS) + " |")
    print("|---|" + "---|---|" * len(BANDWIDTHS))
    for p in RANKS:
        cells = []
        for bw in BANDWIDTHS.values():
            ar = ring_allreduce(nbytes, p, bw)
            b_star = max(0.0, (ar - t0) / slope)
            cells += [f"{ar * 1e3:.3f}", f"{b_star:,.0f}"]
        print(f"| {p} | " + " | ".join(cells) + " |")
    print("\nglobal batch 128 split over p ranks (no overlap): speed-up = t(128) / (t(128/p) + all-reduce)\n")
    print("| p | " + " | ".join(f"speed-up {k}" for k in BANDWIDTHS) + " |")
    print("|---|" + "---|" * len(BANDWIDTHS))
    for p in RANKS:
        cells = [f"{(t0 + slope * 128) / (t0 + slope * 128 / p + ring_allreduce(nbytes, p, bw)):.2f}"
                 for bw in BANDWIDTHS.values()]
        print(f"| {p} | " + " | ".join(cells) + " |")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(ROOT / "examples" / "mnist_mlp.nn"))
    p.add_argument("--data", default="mnist")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch", type=int, default=0, help="global batch (default: the model's)")
    p.add_argument("--target", type=float, default=0.90, help="test accuracy to time")
    p.add_argument("--worker", choices=["train", "compute", "allreduce"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        {"train": worker_train, "compute": worker_compute, "allreduce": worker_allreduce}[args.worker](args)
    else:
        report(args)


if __name__ == "__main__":
    main()
