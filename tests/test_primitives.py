"""Float32 modules replace libm's exp, tanh and softplus by vectorisable approximations:
each stays within a few float32 ulps of the exact value over the range that matters."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import BUILD

from nndsl.build import render_helpers
from nndsl.loader import import_module


@pytest.fixture(scope="module")
def helpers():
    """The float32 scalar helpers every kernel file carries, in a module of their own."""
    path = BUILD / "helpers_float32.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = render_helpers("float32")
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return import_module(path, "nndsl_test_helpers_float32")


def _sigmoid(v):
    return 0.5 + 0.5 * np.tanh(0.5 * v)


EPS32 = 2.0 ** -23


# error = |got − exact| / max(|exact|, floor), in float32 epsilons: relative where the value
# is large, absolute below `floor` (σ via tanh is accurate to ~1e-7 absolutely, not relatively)
@pytest.mark.parametrize("helper,exact,lo,hi,floor,max_eps", [
    ("_exp", np.exp, -87.0, 88.0, 0.0, 1.5),
    ("_softplus", lambda v: np.logaddexp(0.0, v), -80.0, 100.0, 0.0, 2.5),
    ("_tanh", np.tanh, -12.0, 12.0, 1e-30, 2.5),
    ("_sigmoid", _sigmoid, -80.0, 80.0, 1.0, 1.5),
])
def test_float32_helper_is_accurate(helpers, helper, exact, lo, hi, floor, max_eps):
    module = helpers
    xs = np.concatenate([np.linspace(lo, hi, 1501), np.linspace(-1e-3, 1e-3, 41)]).astype(np.float32)
    got = np.array([getattr(module, helper)(v) for v in xs], dtype=np.float64)
    want = exact(xs.astype(np.float64))
    err = np.abs(got - want) / np.maximum(np.abs(want), floor) / EPS32
    assert err.max() <= max_eps, f"{helper}({xs[err.argmax()]}) off by {err.max():.2f} eps"


def test_float32_exp_saturates_instead_of_overflowing(helpers):
    module = helpers
    assert np.isfinite(module._exp(np.float32(1000.0)))
    assert module._exp(np.float32(-1000.0)) < 1.2e-38


# `_thin_gemm`: c (m×n) (+)= op(a)·op(b) for a product with a side of 1, on flat buffers at
# offsets, as `_blas_gemm` takes them; `a_t`: a stored k×m, `b_t`: b stored n×k
THIN = [  # name, a_t, b_t, m, n, k, beta
    ("outer product", 0, 0, 7, 5, 1, 0.0),
    ("outer product, a and b transposed, accumulated", 1, 1, 7, 5, 1, 1.0),
    ("matrix times vector", 0, 0, 9, 1, 6, 0.0),
    ("matrix times vector stored as a row, accumulated", 0, 1, 9, 1, 6, 1.0),
    ("vector times transposed matrix", 0, 1, 1, 8, 5, 0.0),
    ("transposed vector times transposed matrix, accumulated", 1, 1, 1, 8, 5, 1.0),
]


@pytest.mark.parametrize("name,a_t,b_t,m,n,k,beta", THIN, ids=[t[0] for t in THIN])
def test_thin_gemm_is_the_product(helpers, name, a_t, b_t, m, n, k, beta):
    rng = np.random.default_rng(len(name))
    oa, ob, oc = 3, 2, 4
    a = rng.standard_normal(oa + m * k + 5).astype(np.float32)
    b = rng.standard_normal(ob + n * k + 5).astype(np.float32)
    c = rng.standard_normal(oc + m * n + 5).astype(np.float32)
    A = a[oa:oa + m * k].reshape((k, m) if a_t else (m, k))
    B = b[ob:ob + n * k].reshape((n, k) if b_t else (k, n))
    want = (A.T if a_t else A).astype(np.float64) @ (B.T if b_t else B) + beta * c[oc:oc + m * n].reshape(m, n)
    before = c.copy()
    lda, ldb = (m if a_t else k), (k if b_t else n)
    helpers._thin_gemm(a_t, b_t, m, n, k, a, oa, lda, b, ob, ldb, c, oc, n, beta)
    np.testing.assert_allclose(c[oc:oc + m * n].reshape(m, n), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.delete(c, range(oc, oc + m * n)), np.delete(before, range(oc, oc + m * n)))


def test_thin_gemm_takes_a_data_array_whole(helpers):
    """A data array is passed as it is (2-D), at offset 0."""
    x = np.arange(12, dtype=np.float32).reshape(4, 3)          # 4 examples × 3 features
    w = np.array([1.0, -2.0, 0.5], np.float32)
    out = np.zeros(4, np.float32)
    helpers._thin_gemm(0, 1, 4, 1, 3, x, 0, 3, w, 0, 3, out, 0, 1, 0.0)
    np.testing.assert_allclose(out, x @ w)
