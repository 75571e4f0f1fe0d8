"""A model for the runtime's unit tests that needs no compiler: linear regression o = W·x + b
with a squared loss, its plan rows run by a numpy stand-in for the entry function.

The runtime (`nndsl/runtime/`) sees what it sees of a generated module — a `ModelTables`, plan
tables, a `run(addresses, theta, grad, ws, data…, plan, stop, …)` with the entry's signature —
so every path of `CpuModel` (checks, forward, loss/grad/step, fit, threads, save/load,
checkpoints, data-parallel steps) runs here in milliseconds.
"""
from __future__ import annotations

import math

import numpy as np

from nndsl.runtime.cpu import CpuModel
from nndsl.runtime.tables import ModelTables, Step

K = 3                                  # inputs per example
PARAMS = {"o.W": (0, (1, K), "xavier", None, K, 1), "o.b": (K, (1,), "zeros", None, K, 1)}
N_PARAMS = K + 1
DATA = {"x": ((K,), None, False), "y": ((1,), None, True)}

# rows: (kernel, node, ...); kernel 0: o = W·x + b; 1: the loss; 2: Δo; 3: ΔW, Δb
FORWARD = [(0, 0)]
VALUE = [(0, -1), (1, -1), (2, -1), (3, -1)]


def _table(rows, N):
    return np.array([r + (0,) for r in rows], np.int64).reshape(-1, 3)


def workspace_size(N):
    return 2 * N + 1                   # o (N), the loss (1), Δo (N)


def value_at(N):
    return {"loss": N}


def output_views(ws, N):
    return [ws[:N].reshape((N, 1))]


def node_views(ws, N):
    return {"o": ws[:N].reshape((N, 1))}


PLANS = {"forward": (lambda N: _table(FORWARD, N), 1), "nodes": (lambda N: _table(FORWARD, N), 1),
         "value_loss": (lambda N: _table(VALUE, N), 2)}
STEPS = {"loss": Step("value_loss", "value_loss", ("x", "y"), 1, np.array([[0, N_PARAMS, 1]], np.int64))}


def tables(dtype=np.float64, optimizer=("sgd", {"lr": 0.1}), **train) -> ModelTables:
    return ModelTables(
        name="fake", source_hash="0" * 64, dtype=dtype, params=PARAMS, n_params=N_PARAMS, data=DATA,
        free_sizes=(), outputs=("o",), nodes={"o": ((1,), ["x"])}, inputs=("x",), forward_inputs=("x",),
        losses=("loss",), optimizers={"loss": optimizer},
        train=dict(dict(batch=4, epochs=2, shuffle=True, clip_norm=None, seed=0, d_steps=1), **train),
        steps=STEPS, plans=PLANS, workspace_size=workspace_size, value_at=value_at,
        output_views=output_views, node_views=node_views)


def run(addresses, theta, grad, ws, x, y, plan, stop, given_mask, seed, first, training, update, value_at,
        s1, s2, ranges, t, lr, clip_norm, total):
    """The entry's contract in numpy: the rows plan[:stop], then an SGD update if asked."""
    with np.errstate(over="ignore", invalid="ignore"):        # a diverging run is a test case
        return _run(theta, grad, ws, x, y, plan, stop, given_mask, value_at, ranges, lr, clip_norm, update)


def _run(theta, grad, ws, x, y, plan, stop, given_mask, value_at, ranges, lr, clip_norm, update):
    N = len(x) if x.size else 0
    W, b = theta[:K], theta[K]
    for r in range(stop):
        kernel, node = plan[r, 0], plan[r, 1]
        if node >= 0 and given_mask[node]:
            continue
        if kernel == 0:
            ws[:N] = x @ W + b
        elif kernel == 1:
            ws[N] = 0.5 * np.mean((ws[:N] - y[:, 0]) ** 2)
        elif kernel == 2:
            ws[N + 1:2 * N + 1] = (ws[:N] - y[:, 0]) / N
        elif kernel == 3:
            grad[:K] = ws[N + 1:2 * N + 1] @ x
            grad[K] = ws[N + 1:2 * N + 1].sum()
    value = ws[value_at]
    if update:
        norm2 = sum(float(np.sum(grad[lo:hi] ** 2)) for lo, hi, _ in ranges)
        if math.isfinite(value) and math.isfinite(norm2):
            scale = clip_norm / math.sqrt(norm2) if 0 < clip_norm < math.sqrt(norm2) else 1.0
            for lo, hi, _ in ranges:
                theta[lo:hi] -= lr * grad[lo:hi] * scale
    return value


class FakeModel(CpuModel):
    tables = tables()

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._parts_in_numba = False       # its plans run in numpy: a threaded step's parts in Python's threads

    def _load_entry(self):
        return None

    def _call(self, found, update, args):
        return run(found, *args)


def model_class(**options):
    """A FakeModel class with other tables (dtype, optimiser, train defaults)."""
    return type("FakeModel", (FakeModel,), {"tables": tables(**options)})


def data(n=10, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, K))
    return {"x": x, "y": x @ np.array([[1.0], [-2.0], [0.5]]) + 0.3}
