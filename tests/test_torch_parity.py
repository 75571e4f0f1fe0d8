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


def _split_groups(net, wd):
    """PyTorch's parameter groups for nndsl's `decay=weights`: the matrices decay, biases not."""
    weights = [p for p in net.parameters() if p.ndim >= 2]
    biases = [p for p in net.parameters() if p.ndim < 2]
    return [{"params": weights, "weight_decay": wd}, {"params": biases, "weight_decay": 0.0}]


def _assert_same(m, net, names):
    for lin, name in zip([l for l in net if isinstance(l, torch.nn.Linear)], names):
        np.testing.assert_allclose(m.params[f"{name}.W"], lin.weight.detach().numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(m.params[f"{name}.b"], lin.bias.detach().numpy(), rtol=1e-10, atol=1e-12)


def _steps(m, net, names, data, opt, n, scheduler=None):
    x, y = torch.from_numpy(data["x"]), torch.from_numpy(data["y"])
    for _ in range(n):
        opt.zero_grad()
        loss = 0.5 * ((net(x) - y) ** 2).sum(dim=1).mean()
        loss.backward()
        opt.step()
        if scheduler is not None:
            scheduler.step()
        m.step(**data)
    _assert_same(m, net, names)


# weight decay: L2 added to the gradient (every optimiser), decoupled for adamw; weights only by
# default (decay=weights), every parameter with decay=all
WEIGHT_DECAY = [
    ("sgd(lr=0.1, weight_decay=0.05)", lambda g: torch.optim.SGD(g, lr=0.1), True),
    ("sgd(lr=0.1, momentum=0.9, nesterov=true, weight_decay=0.05)",
     lambda g: torch.optim.SGD(g, lr=0.1, momentum=0.9, nesterov=True), True),
    ("adagrad(lr=0.1, weight_decay=0.05)", lambda g: torch.optim.Adagrad(g, lr=0.1, eps=1e-10), True),
    ("rmsprop(lr=0.01, weight_decay=0.05)", lambda g: torch.optim.RMSprop(g, lr=0.01, alpha=0.9, eps=1e-8), True),
    ("adam(lr=0.01, weight_decay=0.05)", lambda g: torch.optim.Adam(g, lr=0.01), True),
    ("adamw(lr=0.01, weight_decay=0.1)", lambda g: torch.optim.AdamW(g, lr=0.01), True),
    ("adamw(lr=0.01, weight_decay=0.1, decay=all)", lambda g: torch.optim.AdamW(g, lr=0.01, weight_decay=0.1), False),
]


@pytest.mark.parametrize("optimizer,make,groups", WEIGHT_DECAY, ids=[w[0] for w in WEIGHT_DECAY])
def test_weight_decay_equals_pytorch(optimizer, make, groups):
    module = compile_source(REGRESSION + f"optimizer {optimizer}\n")
    m = module.Model(seed=0)
    data = random_data(module, n=9)
    net, names = torch_net(m, [torch.nn.Sigmoid, None])
    wd = float(optimizer.split("weight_decay=")[1].split(",")[0].rstrip(")"))
    _steps(m, net, names, data, make(_split_groups(net, wd) if groups else net.parameters()), 3)


SCHEDULES = [   # ten steps against torch.optim.lr_scheduler
    ("schedule=step(every=3, gamma=0.5)", lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.5)),
    ("schedule=exponential(gamma=0.8)", lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.8)),
    ("schedule=cosine", lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=10)),
    ("warmup=4", lambda o: torch.optim.lr_scheduler.LinearLR(o, start_factor=0.25, total_iters=3)),
]


@pytest.mark.parametrize("schedule,make", SCHEDULES, ids=[s[0] for s in SCHEDULES])
def test_schedules_equal_pytorch(schedule, make):
    module = compile_source(REGRESSION + f"optimizer sgd(lr=0.5, momentum=0.5, {schedule})\n")
    m = module.Model(seed=0)
    m.total_steps["loss"] = 10              # a cosine's run (fit sets it from its epochs)
    data = random_data(module, n=9)
    net, names = torch_net(m, [torch.nn.Sigmoid, None])
    opt = torch.optim.SGD(net.parameters(), lr=0.5, momentum=0.5)
    _steps(m, net, names, data, opt, 10, make(opt))
