"""The other side of tests/test_mpi.py: trains models as one of several MPI ranks (or as a
plain process) and saves the parameters. Run as `mpiexec -n K python mpi_child.py SPEC.json`.

A run may kill its own process (SIGKILL) when its step seed is drawn for the `kill_at`-th
time: an interruption at a known point, without timing races.
"""
from __future__ import annotations

import json
import os
import signal
import sys

import numpy as np


def data_for(module, n: int, seed: int) -> dict:
    """The same arrays on every rank and in the test: normal inputs, targets in (0, 1),
    and "normal" (fresh noise per batch) for the inputs listed as noise."""
    rng = np.random.default_rng(seed)
    data = {}
    for name, (shape, classes, is_target) in module.DATA.items():
        shape = tuple(4 if isinstance(s, str) else s for s in shape)      # a free length: 4 steps
        data[name] = rng.uniform(0.05, 0.95, (n,) + shape) if is_target else rng.standard_normal((n,) + shape)
    return data


def train(module, run: dict, comm):
    m = module.Model(seed=run.get("model_seed", 0))
    data = data_for(module, run["n"], run["data_seed"])
    for k in run.get("noise", []):
        data[k] = "normal"
    if run.get("kill_at"):
        rank = comm.Get_rank() if comm is not None else 0
        drawn, draw = [0], m._seed

        def counting(seed):
            drawn[0] += seed is None
            if drawn[0] == run["kill_at"] and rank == run.get("kill_rank", 0):
                os.kill(os.getpid(), signal.SIGKILL)
            return draw(seed)
        m._seed = counting
    m.fit(epochs=run["epochs"], batch_size=run["batch"], d_steps=run.get("d_steps"), verbose=False,
          comm=comm, checkpoint=run.get("checkpoint"), every=run.get("every"), resume=run.get("resume"), **data)
    return m


def main(spec_path: str) -> None:
    with open(spec_path) as f:
        spec = json.load(f)
    sys.path.insert(0, spec["root"])
    from nndsl.loader import import_module
    comm = None
    if spec.get("mpi"):
        from mpi4py import MPI
        comm = MPI.COMM_WORLD
    results = {}
    for run in spec["runs"]:
        module = import_module(run["path"], run["module"])
        m = train(module, run, comm)
        replicas = comm.gather(m.theta.copy(), root=0) if comm is not None else [m.theta]
        results[run["tag"]] = m.theta
        results[run["tag"] + ":replicas"] = np.stack(replicas) if replicas is not None else m.theta[None]
    if comm is None or comm.Get_rank() == 0:
        np.savez(spec["out"], **results)


if __name__ == "__main__":
    main(sys.argv[1])
