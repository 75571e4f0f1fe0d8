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
