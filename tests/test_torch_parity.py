"""Parity with PyTorch (optional extra `nndsl[parity]`): losses, gradients and optimiser steps."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import compile_source, random_data

torch = pytest.importorskip("torch")

MLP = """model parity
input x[6]
target label: class(4)
h1 = dense(x, 8, act=tanh)
h2 = dense(h1, 5, act=relu)
o = dense(h2, 4)
loss cross_entropy(o, label)
"""
REGRESSION = """model parity_reg
input x[6]
target y[2]
h = dense(x, 7, act=sigmoid)
o = dense(h, 2)
loss squared(o, y)
"""


def torch_net(m, acts):
    """The same network in PyTorch, initialised from the nndsl model's parameters."""
    layers = []
    names = list(dict.fromkeys(k.rsplit(".", 1)[0] for k in m.params))
    for name, act in zip(names, acts):
        W = m.params[f"{name}.W"]
        lin = torch.nn.Linear(W.shape[1], W.shape[0]).double()
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(W.copy()))
            lin.bias.copy_(torch.from_numpy(m.params[f"{name}.b"].copy()))
        layers += [lin] + ([act()] if act else [])
    return torch.nn.Sequential(*layers), names


def torch_grads(net, names):
    out = {}
    for lin, name in zip([l for l in net if isinstance(l, torch.nn.Linear)], names):
        out[f"{name}.W"], out[f"{name}.b"] = lin.weight.grad.numpy(), lin.bias.grad.numpy()
    return out


def test_loss_and_gradients_equal_pytorch():
    module = compile_source(MLP)
    m = module.Model(seed=0)
    data = random_data(module, n=9)
    net, names = torch_net(m, [torch.nn.Tanh, torch.nn.ReLU, None])
    loss = torch.nn.functional.cross_entropy(net(torch.from_numpy(data["x"])), torch.from_numpy(data["label"]))
    loss.backward()
    L, g = m.grad(**data)
    assert L == pytest.approx(loss.item(), rel=1e-12, abs=1e-12)
    for name, value in torch_grads(net, names).items():
        np.testing.assert_allclose(g[name], value, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("optimizer,make", [
    ("adam(lr=0.01)", lambda p: torch.optim.Adam(p, lr=0.01)),
    ("sgd(lr=0.1, momentum=0.9)", lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)),
])
def test_three_steps_equal_pytorch(optimizer, make):
    module = compile_source(REGRESSION + f"optimizer {optimizer}\n")
    m = module.Model(seed=0)
    data = random_data(module, n=9)
    net, names = torch_net(m, [torch.nn.Sigmoid, None])
    opt = make(net.parameters())
    x, y = torch.from_numpy(data["x"]), torch.from_numpy(data["y"])
    for _ in range(3):
        opt.zero_grad()
        loss = 0.5 * ((net(x) - y) ** 2).sum(dim=1).mean()     # nndsl's squared: ½Σ_k, mean over n
        loss.backward()
        opt.step()
        m.step(**data)
    for lin, name in zip([l for l in net if isinstance(l, torch.nn.Linear)], names):
        np.testing.assert_allclose(m.params[f"{name}.W"], lin.weight.detach().numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(m.params[f"{name}.b"], lin.bias.detach().numpy(), rtol=1e-10, atol=1e-12)
