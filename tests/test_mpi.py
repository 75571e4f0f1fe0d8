"""Data-parallel training (issue 13): `fit(comm=...)` over MPI ranks gives the parameters
of one process with the same global batch, replicas stay bit-identical, the noise of an
example does not depend on the number of ranks, and a killed run resumes exactly.

Two layers of tests:
- in-process, with a communicator of threads (`ThreadComm`): the sharding logic for any
  number of ranks, uneven shares and ranks without rows; needs no MPI;
- real MPI, `mpiexec -n 2` running tests/mpi_child.py (mpi4py and the mpich wheel: the
  `mpi` extra, also in `test`); skipped, with the reason, where mpi4py is not installed.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, SMALL_LSTM, compile_source
from mpi_child import data_for, train

MLP = """model dp_mlp
input x[6]
target y[3]
h = dense(x, 8, act=tanh)
o = dense(h, 3)
loss squared(o, y)
optimizer adam(lr=0.01)
"""

# dropout and Gaussian noise: the draws must not depend on how a batch is split
DROPOUT = """model dp_dropout
input x[6]
target y[3]
n = gaussian_noise(x, 0.2)
h = dense(n, 40, act=tanh)
d = dropout(h, 0.3)
o = dense(d, 3)
loss squared(o, y)
optimizer sgd(lr=0.05, momentum=0.9)
"""

# named losses, `wrt`, d_steps, fresh noise z per batch, and dropout in the discriminator
GAN = """model dp_gan
input x[4]
input z[2]
network generator(z) { h = dense(z, 5, act=relu); return dense(h, 4, act=sigmoid) }
network discriminator(v) { h = dense(v, 6, act=leaky_relu); d = dropout(h, 0.25); return dense(d, 1) }
fake = generator(z)
loss d_loss = bce_logits(discriminator(x), 1) + bce_logits(discriminator(fake), 0) wrt discriminator
loss g_loss = bce_logits(discriminator(fake), 1) wrt generator
optimizer d_loss: adam(lr=0.01, beta1=0.5)
optimizer g_loss: adam(lr=0.01, beta1=0.5)
"""

# model, fit arguments: 40 examples in global batches of 8 → 5 batches an epoch, 20 steps
# (the GAN takes d_steps + 1 = 3 optimiser steps a batch)
RUNS = {
    "mlp": (MLP, dict(n=40, batch=8, epochs=4)),
    "dropout": (DROPOUT, dict(n=40, batch=8, epochs=4)),
    "gan": (GAN, dict(n=40, batch=8, epochs=4, d_steps=2, noise=["z"])),
    "lstm": (SMALL_LSTM, dict(n=40, batch=8, epochs=4)),   # a recurrence: its step masks too
}


def run_spec(tag: str, **extra) -> dict:
    source, args = RUNS[tag]
    module = compile_source(source)
    return {**dict(tag=tag, path=module.__file__, module=module.__name__, data_seed=1), **args, **extra}


def single_process(tag: str, **extra) -> np.ndarray:
    module = compile_source(RUNS[tag][0])
    return train(module, run_spec(tag, **extra), None).theta.copy()


def assert_close(theta, reference):
    """≤ 1e-12 relative: the ranks sum their partial gradients in another order."""
    np.testing.assert_allclose(theta, reference, rtol=1e-12, atol=1e-12 * np.abs(reference).max())


# ------------------------------------------------------------------ in-process ranks
class ThreadComm:
    """mpi4py's Allreduce/Bcast/Get_rank/Get_size for `size` threads of one process."""

    def __init__(self, rank, size, shared):
        self.rank, self.size, self.shared = rank, size, shared

    def Get_rank(self):
        return self.rank

    def Get_size(self):
        return self.size

    def _exchange(self, buf):
        slots, barrier = self.shared
        slots[self.rank] = None if buf is None else np.array(buf)
        barrier.wait()
        out = list(slots)
        barrier.wait()
        return out

    def Allreduce(self, send, recv):
        parts = self._exchange(send)
        recv[...] = parts[0]
        for p in parts[1:]:
            recv += p

    def Bcast(self, buf, root=0):
        buf[...] = self._exchange(buf if self.rank == root else None)[root]


def threaded(tag: str, ranks: int, **extra) -> list[np.ndarray]:
    """Train on `ranks` threads, each a rank with its own Model; the thetas by rank."""
    module = compile_source(RUNS[tag][0])
    shared = ([None] * ranks, threading.Barrier(ranks))
    thetas, errors = [None] * ranks, []

    def rank_main(r):
        try:
            # a different seed on every rank but 0: the broadcast must make them agree
            spec = run_spec(tag, model_seed=0 if r == 0 else 100 + r, **extra)
            thetas[r] = train(module, spec, ThreadComm(r, ranks, shared)).theta.copy()
        except BaseException as exc:            # noqa: BLE001 -- reported below
            errors.append(exc)
            shared[1].abort()
    threads = [threading.Thread(target=rank_main, args=(r,)) for r in range(ranks)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return thetas


@pytest.mark.parametrize("tag,ranks,extra", [
    ("mlp", 2, {}),
    ("mlp", 3, {}),                               # shares of 2, 3, 3 rows: weighted means
    ("mlp", 3, dict(n=10, batch=2)),              # one rank without rows in every batch
    ("dropout", 3, {}),                           # noise keyed by the place in the global batch
    ("gan", 2, {}),
    ("lstm", 2, {}),
])
def test_ranks_in_threads_match_one_process(tag, ranks, extra):
    reference = single_process(tag, **extra)
    thetas = threaded(tag, ranks, **extra)
    assert_close(thetas[0], reference)
    for theta in thetas[1:]:
        assert np.array_equal(theta, thetas[0])   # replicas never drift


def test_draws_do_not_depend_on_the_split():
    """The gradient of a dropout model over a batch is the share-weighted sum of the
    gradients over its halves when each half says where it starts (`first`)."""
    module = compile_source(DROPOUT)
    m = module.Model(seed=0)
    data = data_for(module, 8, 3)
    step = module.STEPS[module.LOSSES[0]]
    plan, names = step.value_plan, list(step.data)
    arrays = [data[k] for k in names]

    def grad(lo, hi):
        part = [a[lo:hi] for a in arrays]
        L, _ = m._run(plan, names, part, hi - lo, {}, 7, True, loss=module.LOSSES[0], first=lo)
        return float(L), m._grad.copy()
    (L, g), (L1, g1), (L2, g2) = grad(0, 8), grad(0, 3), grad(3, 8)
    assert np.isclose(L, (3 * L1 + 5 * L2) / 8, rtol=1e-13)
    np.testing.assert_allclose(g, (3 * g1 + 5 * g2) / 8, rtol=1e-12, atol=1e-15)
    L_other, _ = m._run(plan, names, [a[3:8] for a in arrays], 5, {}, 7, True,
                        loss=module.LOSSES[0], first=0)
    assert float(L_other) != L2                   # the place in the batch does matter


# ------------------------------------------------------------------ real MPI
def mpiexec():
    pytest.importorskip("mpi4py", reason="the mpi extra (mpi4py, mpich) is not installed")
    here = Path(sys.executable).parent / "mpiexec"
    found = str(here) if here.exists() else shutil.which("mpiexec")
    if found is None:
        pytest.skip("mpi4py is installed but no mpiexec was found (pip install mpich)")
    return found


def launch(tmp_path, name, runs, ranks=2, expect_killed=False) -> dict:
    """Run tests/mpi_child.py on `ranks` MPI ranks (0: a plain process); its results."""
    spec = dict(root=str(ROOT), mpi=ranks > 0, runs=runs, out=str(tmp_path / f"{name}.npz"))
    spec_path = tmp_path / f"{name}.json"
    spec_path.write_text(json.dumps(spec))
    child = [sys.executable, str(ROOT / "tests" / "mpi_child.py"), str(spec_path)]
    command = [mpiexec(), "-n", str(ranks)] + child if ranks else child
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
               OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    if expect_killed:
        assert done.returncode != 0, "the run was to be killed"
        return {}
    assert done.returncode == 0, done.stdout + done.stderr
    with np.load(spec["out"]) as f:
        return dict(f)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """The three models on 2 MPI ranks (one launch), replicas gathered on rank 0."""
    mpiexec()
    runs = [run_spec(tag) for tag in RUNS]
    return launch(tmp_path_factory.mktemp("mpi"), "equivalence", runs)


@pytest.mark.parametrize("tag", list(RUNS))
def test_two_mpi_ranks_match_one_process(two_ranks, tag):
    assert_close(two_ranks[tag], single_process(tag))


@pytest.mark.parametrize("tag", list(RUNS))
def test_mpi_replicas_are_bit_identical(two_ranks, tag):
    replicas = two_ranks[tag + ":replicas"]
    assert len(replicas) == 2 and np.array_equal(replicas[0], replicas[1])


# killed at step 11 of 20 (mid-epoch 3; the checkpoint of batch 9 is the last), resumed
@pytest.mark.parametrize("ranks", [0, 2], ids=["one-process", "two-ranks"])
def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path, ranks, two_ranks):
    checkpoint = str(tmp_path / "ck" / "checkpoint.npz")
    launch(tmp_path, "killed", [run_spec("gan", checkpoint=checkpoint, every=3, kill_at=11 * 3,
                                         kill_rank=ranks - 1 if ranks else 0)],
           ranks, expect_killed=True)
    with np.load(checkpoint) as f:
        assert list(f["__position__"]) == [2, 4]          # epoch 2, after its 4th batch of 5
    resumed = launch(tmp_path, "resumed", [run_spec("gan", checkpoint=checkpoint, resume=checkpoint)], ranks)
    uninterrupted = two_ranks["gan"] if ranks else single_process("gan")
    assert np.array_equal(resumed["gan"], uninterrupted)


# ------------------------------------------------------------------ interrupts and failures
def test_sigint_finishes_the_batch_checkpoints_and_resumes_exactly(tmp_path):
    """A real SIGINT in the middle of `fit`: the batch completes, the checkpoint is written,
    KeyboardInterrupt is raised, and resuming gives the uninterrupted parameters."""
    import signal
    module = compile_source(GAN)
    spec = run_spec("gan")
    checkpoint = str(tmp_path / "ck.npz")
    m = module.Model(seed=0)
    drawn, draw = [0], m._seed

    def interrupting(seed):
        drawn[0] += seed is None
        if drawn[0] == 20:                       # inside batch 7 (3 steps a batch)
            os.kill(os.getpid(), signal.SIGINT)
        return draw(seed)
    m._seed = interrupting
    data = data_for(module, spec["n"], spec["data_seed"])
    data["z"] = "normal"
    with pytest.raises(KeyboardInterrupt, match="epoch 2, batch 2"):
        m.fit(epochs=4, batch_size=8, d_steps=2, verbose=False, checkpoint=checkpoint, **data)
    with np.load(checkpoint) as f:
        assert list(f["__position__"]) == [2, 2]
    resumed = module.Model(seed=0)
    resumed.fit(epochs=4, batch_size=8, d_steps=2, verbose=False, resume=checkpoint, **data)
    assert np.array_equal(resumed.theta, single_process("gan"))


class RecordingComm:
    def __init__(self):
        self.aborted = None

    def Get_rank(self):
        return 1

    def Get_size(self):
        return 2

    def Abort(self, code):
        self.aborted = code


@pytest.mark.parametrize("error,aborts_with", [
    (ValueError("bad data on this rank"), 1),     # would leave rank 0 waiting in an Allreduce
    (SystemExit(3), 3),
    (KeyboardInterrupt(), 130),                   # a Ctrl-C while loading or building
])
def test_an_error_on_one_rank_aborts_the_job(error, aborts_with, capsys):
    from nndsl.train.workers import aborting
    comm = RecordingComm()
    with aborting(comm):
        raise error
    assert comm.aborted == aborts_with
    assert "rank 1 of 2 failed" in capsys.readouterr().err


def test_an_interrupt_every_rank_agreed_on_passes_through():
    from nndsl.train.workers import aborting
    comm, agreed = RecordingComm(), KeyboardInterrupt("interrupted at epoch 1, batch 2")
    agreed.all_ranks = True
    with pytest.raises(KeyboardInterrupt):
        with aborting(comm):
            raise agreed
    assert comm.aborted is None


def test_nndsl_train_workers_runs_mpiexec(tmp_path):
    """`nndsl train --workers 2`: one report (rank 0's), on 2 workers."""
    mpiexec()
    pytest.importorskip("sklearn")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-m", "nndsl", "train", str(ROOT / "examples" / "iris_softmax.nn"),
                           "--data", "iris", "--epochs", "3", "--quiet", "--workers", "2",
                           "--checkpoint", str(tmp_path / "ck")],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "on 2 workers" in done.stdout and done.stdout.count("test accuracy") == 1
    assert (tmp_path / "ck" / "checkpoint.npz").exists()
