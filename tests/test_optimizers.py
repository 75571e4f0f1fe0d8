"""Every optimiser's update against its reference formula (written out here in numpy)."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import compile_source, random_data

BODY = "model opt\ninput x[3]\ntarget y[2]\nh = dense(x, 4, act=tanh)\no = dense(h, 2)\nloss squared(o, y)\n"


def sgd(p, g, s, t, lr=0.01, momentum=0.0, nesterov=False):
    if momentum == 0:
        return p - lr * g
    s["v"] = g if t == 1 else momentum * s["v"] + g
    return p - lr * (g + momentum * s["v"] if nesterov else s["v"])


def adagrad(p, g, s, t, lr=0.01, eps=1e-10):
    s["G"] = s.get("G", 0) + g * g
    return p - lr * g / (np.sqrt(s["G"]) + eps)


def rmsprop(p, g, s, t, lr=0.001, rho=0.9, eps=1e-8):
    s["v"] = rho * s.get("v", 0) + (1 - rho) * g * g
    return p - lr * g / (np.sqrt(s["v"]) + eps)


def adam(p, g, s, t, lr=0.001, beta1=0.9, beta2=0.999, eps=1e-8):
    s["m"] = beta1 * s.get("m", 0) + (1 - beta1) * g
    s["v"] = beta2 * s.get("v", 0) + (1 - beta2) * g * g
    m_hat, v_hat = s["m"] / (1 - beta1 ** t), s["v"] / (1 - beta2 ** t)
    return p - lr * m_hat / (np.sqrt(v_hat) + eps)


CASES = [
    ("sgd(lr=0.1)", sgd, dict(lr=0.1)),
    ("sgd(lr=0.1, momentum=0.9)", sgd, dict(lr=0.1, momentum=0.9)),
    ("sgd(lr=0.1, momentum=0.9, nesterov=true)", sgd, dict(lr=0.1, momentum=0.9, nesterov=True)),
    ("adagrad(lr=0.1)", adagrad, dict(lr=0.1)),
    ("rmsprop(lr=0.01, rho=0.8)", rmsprop, dict(lr=0.01, rho=0.8)),
    ("adam(lr=0.01, beta1=0.8)", adam, dict(lr=0.01, beta1=0.8)),
    ("adam()", adam, dict()),
]


@pytest.mark.parametrize("optimizer,reference,args", CASES, ids=[c[0] for c in CASES])
def test_update_matches_reference(optimizer, reference, args):
    module = compile_source(BODY + f"optimizer {optimizer}\n")
    m, ref = module.Model(seed=0), module.Model(seed=0)
    data = random_data(module, n=6)
    states = {name: {} for name in ref.params}
    for t in range(1, 4):
        _, grads = ref.grad(**data)
        for name, p in ref.params.items():
            ref.params[name] = reference(p.copy(), grads[name], states[name], t, **args)
        m.step(**data)
        for name in m.params:
            np.testing.assert_allclose(m.params[name], ref.params[name], rtol=1e-10, atol=1e-12)


def test_clip_norm_scales_the_gradient():
    module = compile_source(BODY + "optimizer sgd(lr=1.0)\ntrain clip_norm=0.01\n")
    m, ref = module.Model(seed=0), module.Model(seed=0)
    data = random_data(module, n=6)
    _, grads = ref.grad(**data)
    norm = np.sqrt(sum(np.sum(g * g) for g in grads.values()))
    assert norm > 0.01
    m.step(**data)
    for name in m.params:
        np.testing.assert_allclose(m.params[name], ref.params[name] - grads[name] * 0.01 / norm, rtol=1e-10)


def test_lr_is_adjustable_at_run_time():
    module = compile_source(BODY + "optimizer sgd(lr=0.1)\n")
    m, ref = module.Model(seed=0), module.Model(seed=0)
    data = random_data(module, n=6)
    m.lr["loss"] = 0.0
    m.step(**data)
    for name in m.params:
        np.testing.assert_array_equal(m.params[name], ref.params[name])
