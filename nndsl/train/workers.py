"""Data-parallel `nndsl train`: finding the MPI world, launching it, and failing loudly.

`nndsl train --workers K` re-runs the same command under `mpiexec -n K`; each rank (or
each rank of a job the user started with `mpiexec -n K nndsl train ...`) finds its
communicator here and passes it to the generated module's `fit(comm=...)`.  The module
itself never imports mpi4py (docs/scaling.md).
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import traceback
from contextlib import contextmanager

from ..diagnostics import UsageError

# set by the launchers of MPICH (hydra), Open MPI and PMIx-based ones (Slurm's srun)
_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS")


def launched_size() -> int:
    """How many processes the MPI launcher started this one among (1 if none)."""
    for name in _SIZE_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 1


def world():
    """mpi4py's COMM_WORLD when this process is one of several MPI ranks, else None."""
    if launched_size() <= 1:
        return None
    try:
        from mpi4py import MPI
    except ImportError:
        raise UsageError("started by mpiexec, but mpi4py is not installed: pip install -e \".[mpi]\"") from None
    return MPI.COMM_WORLD if MPI.COMM_WORLD.Get_size() > 1 else None


def mpiexec() -> str:
    """The `mpiexec` beside this Python (the mpich wheel's), else the first on PATH."""
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    found = here if os.access(here, os.X_OK) else shutil.which("mpiexec")
    if found is None:
        raise UsageError("--workers needs MPI: pip install -e \".[mpi]\" (mpi4py and the mpich wheel)")
    return found


def launch(argv: list[str], workers: int) -> int:
    """Run `nndsl ARGV` as `workers` MPI ranks and wait; returns the job's exit status.

    Each rank gets an even share of the cores for BLAS (unless the user set the threads):
    K ranks × all cores each would oversubscribe the machine. A rank that dies makes
    mpiexec end the others and report which one; the status says so here too."""
    try:
        import mpi4py  # noqa: F401  -- fail here, before K processes each fail alike
    except ImportError:
        raise UsageError("--workers needs mpi4py: pip install -e \".[mpi]\"") from None
    env = dict(os.environ)
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env.setdefault(name, threads)
    command = [mpiexec(), "-n", str(workers), sys.executable, "-m", "nndsl"] + argv + ["--workers", "1"]
    # mpiexec in a session of its own, so that a Ctrl-C reaches it once, from here: the
    # terminal's SIGINT to the whole group would reach it twice with ours, and hydra takes
    # a second Ctrl-C as "force abort" (no checkpoint)
    job = subprocess.Popen(command, env=env, start_new_session=True)
    forward = lambda signum, frame: job.send_signal(signum)     # noqa: E731
    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        status = job.wait()            # mpiexec forwards the signal to every rank, which finish
    finally:                           # the batch, checkpoint and exit 130
        for s, handler in previous.items():
            signal.signal(s, handler)
    if status not in (0, 130):
        print(f"nndsl: the {workers}-worker job failed (mpiexec exit status {status}); "
              "the messages above say which rank and why", file=sys.stderr)
    return status


@contextmanager
def aborting(comm):
    """An error on one rank must end the job, not leave the others waiting forever in an
    Allreduce or Barrier: print it and MPI_Abort. A KeyboardInterrupt that `fit` raises on
    every rank at the same batch (`all_ranks`: the stop flag travels in the Allreduce)
    passes through for a clean exit 130; any other (during loading or building) aborts."""
    try:
        yield
    except BaseException as exc:
        if comm is None or getattr(exc, "all_ranks", False):
            raise
        if isinstance(exc, KeyboardInterrupt):     # outside fit (loading, building): the
            code, detail = 130, "interrupted"      # others may be waiting in a Barrier
        else:
            code = exc.code if isinstance(exc, SystemExit) and isinstance(exc.code, int) else 1
            if code == 0:
                raise
            detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        rank = comm.Get_rank()
        print(f"nndsl: rank {rank} of {comm.Get_size()} failed: {detail}; ending the job", file=sys.stderr)
        sys.stderr.flush()
        comm.Abort(code or 1)
