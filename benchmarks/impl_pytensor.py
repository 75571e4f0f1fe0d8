"""PyTensor Adam step on the Numba backend: `python benchmarks/impl_pytensor.py --model lecture`.

The gradient comes from `pytensor.grad`; Adam is written symbolically with shared
variables and `updates`, and the whole step is one `pytensor.function(mode="NUMBA")`
(graph rewrites plus Numba code generation: the graph compilation is `compile_s`, the
Numba JIT happens on the first call). `trust_input=True` skips per-call input checks;
inputs are given in the exact dtype. The compile cache lives under PyTensor's
`base_compiledir` (set PYTENSOR_FLAGS=base_compiledir=DIR for a cold run).
"""
from __future__ import annotations

import time

from _common import LR, BETA1, BETA2, EPS, MODELS, make_data, parse_args, run_benchmark, unavailable, xavier_limits

IMPL = "pytensor"


def build(model: str, x_np, y_np):
    import numpy as np
    import pytensor
    import pytensor.tensor as pt

    spec = MODELS[model]
    sizes = spec["sizes"]
    f32 = np.float32
    rng = np.random.default_rng(0)
    params = []
    for a, b, lim in zip(sizes[:-1], sizes[1:], xavier_limits(sizes)):
        params.append(pytensor.shared(rng.uniform(-lim, lim, (a, b)).astype(f32), borrow=True))
        params.append(pytensor.shared(np.zeros(b, f32), borrow=True))

    x = pt.matrix("x", dtype="float32")
    h = x
    n_layers = len(sizes) - 1
    for i in range(n_layers):
        h = h @ params[2 * i] + params[2 * i + 1]
        if i < n_layers - 1:
            h = pt.tanh(h) if spec["act"] == "tanh" else pt.maximum(h, 0)
    o = h
    if spec["loss"] == "squared":
        y = pt.matrix("y", dtype="float32")
        loss = 0.5 * pt.mean(pt.sum((o - y) ** 2, axis=1))  # ½ Σ_k (o_k − y_k)², batch mean
    else:
        y = pt.vector("label", dtype="int64")
        logp = pt.special.log_softmax(o, axis=1)
        loss = -pt.mean(logp[pt.arange(y.shape[0]), y])

    grads = pytensor.grad(loss, params)
    t = pytensor.shared(np.asarray(0.0, dtype=f32), name="t")
    t_new = t + 1
    c1 = 1 - BETA1 ** t_new  # bias corrections
    c2 = 1 - BETA2 ** t_new
    updates = [(t, t_new)]
    for p, g in zip(params, grads):
        m = pytensor.shared(np.zeros_like(p.get_value()), borrow=True)
        v = pytensor.shared(np.zeros_like(p.get_value()), borrow=True)
        m_new = BETA1 * m + (1 - BETA1) * g
        v_new = BETA2 * v + (1 - BETA2) * g * g
        step_size = (LR / c1).astype("float32")
        p_new = p - step_size * m_new / (pt.sqrt(v_new / c2) + EPS)
        updates += [(m, m_new.astype("float32")), (v, v_new.astype("float32")),
                    (p, p_new.astype("float32"))]

    t0 = time.perf_counter()
    fn = pytensor.function([x, y], loss, updates=updates, mode="NUMBA", trust_input=True)
    compile_s = time.perf_counter() - t0

    def step():
        return fn(x_np, y_np)

    return step, compile_s


def main(argv=None):
    args = parse_args(IMPL, argv)
    if "image" in MODELS[args.model]:
        unavailable(IMPL, args.model, "the PyTensor implementation covers the MLPs only")
    try:
        import pytensor
    except ImportError as exc:
        unavailable(IMPL, args.model, f"pytensor not importable: {exc}")
    try:
        import numba  # noqa: F401
    except ImportError as exc:
        unavailable(IMPL, args.model, f"numba (PyTensor's NUMBA mode) not importable: {exc}")
    if MODELS[args.model].get("kind") == "lstm":
        unavailable(IMPL, args.model, "no PyTensor LSTM implementation in this benchmark")
    pytensor.config.floatX = "float32"
    x, y = make_data(args.model, args.data)

    def setup():
        step, compile_s = build(args.model, x, y)
        return step, {"compile_s": compile_s, "compiledir": str(pytensor.config.compiledir)}

    run_benchmark(IMPL, args, setup, version=pytensor.__version__)


if __name__ == "__main__":
    main()
