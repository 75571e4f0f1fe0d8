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
