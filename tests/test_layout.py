"""Storage layout is an optimisation only: batch-last tensors give the same numbers."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import BUILD, random_data

from nndsl.build import render, write_rendered
from nndsl.frontend import load_source
from nndsl.plan import module_plan
from nndsl.loader import import_module

WIDE = """model wide
input x[5]
target label: class(4)
h = dense(x, 96, act=relu)
d = dropout(h, 0.2)
g = dense(d, 64, act=tanh)
o = dense(g, 4)
loss cross_entropy(o, label)
"""


def build(name: str, min_width: int, monkeypatch):
    monkeypatch.setattr(module_plan, "BATCH_LAST_MIN_WIDTH", min_width)
    rendered = render(load_source(WIDE, "wide.nn"), "float64", kernel_dir="../../nndsl_kernels")
    # a fixed folder: numba's on-disk cache keeps the kernels warm between runs
    path = BUILD / "layout" / name / "wide.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_rendered(rendered, path, BUILD / "nndsl_kernels")
    text = rendered.module + "".join(rendered.kernels.values())
    return text, import_module(path, f"nndsl_test_layout_{name}")


@pytest.fixture(scope="module")
def modules():
    mp = pytest.MonkeyPatch()
    try:
        return {name: build(name, width, mp) for name, width in [("batch_last", 64), ("batch_first", 10**9)]}
    finally:
        mp.undo()


@pytest.mark.parametrize("name,views", [
    ("batch_last", ["reshape((96, N)).T", "reshape((64, N)).T"]),
    ("batch_first", ["reshape((N, 96))", "reshape((N, 64))"]),
])
def test_wide_vectors_are_stored_as_chosen(modules, name, views):
    text, _ = modules[name]
    for v in views:
        assert v in text


def test_layouts_agree_on_loss_gradient_and_steps(modules):
    data = random_data(modules["batch_last"][1], n=7)
    runs = []
    for name in ("batch_last", "batch_first"):
        m = modules[name][1].Model(seed=3)
        L, g = m.grad(seed=5, **data)
        for k in range(3):
            m.step(seed=k, **data)
        runs.append((L, g, {p: v.copy() for p, v in m.params.items()}))
    (L1, g1, p1), (L2, g2, p2) = runs
    assert L1 == pytest.approx(L2, rel=1e-12)
    for p in g1:
        np.testing.assert_allclose(g1[p], g2[p], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(p1[p], p2[p], rtol=1e-10, atol=1e-12)


# ---- the workspace laid out by liveness (plan/liveness.py): tensors share memory
@pytest.mark.parametrize("example", ["cnn", "lenet_mnist_bn", "lstm", "gru", "gan", "vae", "user_layer",
                                     "names_lm", "strided_cnn"])
def test_no_plan_reads_workspace_it_has_not_written(example, monkeypatch):
    """With every element of a fresh workspace NaN (`NNDSL_POISON_WORKSPACE`), every plan
    gives what it gives on zeros: what tensors sharing memory leave there is never read."""
    from conftest import compile_example
    module = compile_example(example)
    data = random_data(module, n=6, seed=2)
    runs = []
    for poison in (False, True):
        if poison:
            monkeypatch.setenv("NNDSL_POISON_WORKSPACE", "1")
        m = module.Model(seed=1, threads=1)
        out = [m.forward(**{k: data[k] for k in module.INPUTS if k in data})]
        for name in module.LOSSES:
            d = {k: data[k] for k in module.STEPS[name].data}
            out += [m.loss(name, seed=3, **d), m.step(name, seed=4, **d)]
        last = list(module.NODES)[-1]
        out.append(m.forward(outputs=last, **{k: data[k] for k in module.INPUTS if k in data}))
        runs.append((out, m.theta.copy()))
    (a, theta_a), (b, theta_b) = runs
    assert np.isfinite(theta_b).all()
    for x, y in zip(a, b):
        for u, v in zip(np.atleast_1d(x) if not isinstance(x, tuple) else x,
                        np.atleast_1d(y) if not isinstance(y, tuple) else y):
            np.testing.assert_array_equal(u, v)
    np.testing.assert_array_equal(theta_a, theta_b)


def test_tensors_never_needed_at_once_share_the_workspace():
    """The CNN benchmark's workspace: 0.42 MB a row tensor by tensor, 0.18 MB laid out by liveness."""
    import sympy as sp
    from conftest import ROOT
    from nndsl.calculus.formulas import N
    from nndsl.frontend import load_model
    from nndsl.plan.module_plan import module_plan
    plan = module_plan(load_model(ROOT / "benchmarks" / "models" / "cnn.nn"), "float32")
    owned = [t for t in plan.tensors.values() if t.role in ("value", "noise", "grad", "loss") and not t.view]
    bytes_a_row = lambda size: 4 * sp.expand(size).coeff(N)         # noqa: E731
    assert bytes_a_row(sum(sp.prod(t.shape) for t in owned)) == 421_608
    assert bytes_a_row(plan.ws_size) < 180_000


# (slot size, tensor size) -> whether the slot holds the tensor for every batch size and T
COVERS = [
    ("equal", "N*64", "N*64", True),
    ("wider", "N*64", "N*32", True),
    ("narrower", "N*32", "N*64", False),
    ("a constant against a batch", "4096", "N*8", False),
    ("a batch and a constant against a batch", "N*8 + 16", "N*8", True),
    ("T steps against one", "N*T*16", "N*16", True),
]


@pytest.mark.parametrize("what,big,small,holds", COVERS, ids=[c[0] for c in COVERS])
def test_a_slot_holds_a_tensor_only_if_it_is_as_large_for_every_size(what, big, small, holds):
    import sympy as sp
    from nndsl.plan.liveness import covers
    N, T = sp.symbols("N T", integer=True, positive=True)
    assert covers(sp.sympify(big, locals={"N": N, "T": T}), sp.sympify(small, locals={"N": N, "T": T})) == holds
