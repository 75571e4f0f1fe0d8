"""One checker for every derived gradient: float64 central differences along random directions."""
from __future__ import annotations

import numpy as np


def check_gradients(module, data: dict, loss: str | None = None, seed: int = 0, eps: float = 1e-6,
                    rtol: float = 1e-4, atol: float = 1e-7, directions: int = 3, model_seed: int = 1):
    """Assert ∂L/∂p · v == (L(p + εv) − L(p − εv)) / 2ε for every parameter p and random v.

    Stochastic layers draw the same noise for the same `seed`, so loss and grad agree exactly.
    """
    m = module.Model(seed=model_seed)
    L, grads = m.grad(name=loss, seed=seed, **data)
    assert np.isfinite(L)
    assert set(grads) == set(m.params)
    errors = direction_errors(m, grads, data, loss, seed, eps, rtol, atol, directions)
    assert not errors, errors[0]
    return L, grads


def direction_errors(m, grads: dict, data: dict, loss: str | None, seed: int, eps: float, rtol: float,
                     atol: float, directions: int) -> list[str]:
    """For each parameter, the first random direction v along which ∂L/∂p·v differs from
    the central difference (L(p + εv) − L(p − εv)) / 2ε: one line each."""
    rng = np.random.default_rng(42)
    errors = []
    for name, p in m.params.items():
        for _ in range(directions):
            v = rng.standard_normal(p.shape)
            original = p.copy()
            p[...] = original + eps * v
            up = m.loss(name=loss, seed=seed, **data)
            p[...] = original - eps * v
            down = m.loss(name=loss, seed=seed, **data)
            p[...] = original
            numeric = (up - down) / (2 * eps)
            analytic = float(np.sum(grads[name] * v))
            if not abs(numeric - analytic) <= atol + rtol * abs(numeric):
                errors.append(f"{loss}: {name}: derived {analytic:.10g}, central difference {numeric:.10g}")
                break
    return errors
