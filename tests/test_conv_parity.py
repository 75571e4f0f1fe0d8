"""conv2d / maxpool / avgpool against torch.nn.functional (float64): loss, gradients, Adam steps."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import compile_source, random_data

torch = pytest.importorskip("torch")
F = torch.nn.functional


def _cnn(head: str, body: str) -> str:
    return f"model cnn_parity\n{head}\ntarget label: class(3)\n{body}\nloss cross_entropy(o, label)\n" \
           "optimizer adam(lr=0.01)\n"


# name: (.nn source, the same network in PyTorch on a dict of parameter tensors)
CASES = {
    "conv-pad1-maxpool": (
        _cnn("input x[2, 9, 7]", "c = conv2d(x, 4, 3, pad=1, act=relu)\np = maxpool(c, 2)\n"
                                 "f = flatten(p)\no = dense(f, 3)"),
        lambda P, x: F.linear(F.max_pool2d(F.relu(F.conv2d(x, P["c.W"], P["c.b"], padding=1)), 2)
                              .flatten(1), P["o.W"], P["o.b"])),
    "conv-stride2-pad2-avgpool-overlap": (
        _cnn("input x[3, 11, 8]", "c = conv2d(x, 3, 3, stride=2, pad=2, act=tanh)\n"
                                  "p = avgpool(c, 3, stride=1)\nf = flatten(p)\no = dense(f, 3)"),
        lambda P, x: F.linear(F.avg_pool2d(torch.tanh(F.conv2d(x, P["c.W"], P["c.b"], stride=2, padding=2)),
                                           3, stride=1).flatten(1), P["o.W"], P["o.b"])),
    "conv-stride3-no-bias-maxpool-overlap": (
        _cnn("input x[2, 13, 10]", "c = conv2d(x, 3, 2, stride=3, bias=false)\n"
                                   "p = maxpool(c, 2, stride=1)\nf = flatten(p)\no = dense(f, 3)"),
        lambda P, x: F.linear(F.max_pool2d(F.conv2d(x, P["c.W"], stride=3), 2, stride=1).flatten(1),
                              P["o.W"], P["o.b"])),
    "lenet-stack": (
        _cnn("input x[1, 12, 12]", "c1 = conv2d(x, 4, 3, pad=1, act=relu)\np1 = maxpool(c1, 2)\n"
                                   "c2 = conv2d(p1, 5, 3, act=relu)\np2 = maxpool(c2, 3, stride=2)\n"
                                   "f = flatten(p2)\no = dense(f, 3)"),
        lambda P, x: F.linear(F.max_pool2d(F.relu(F.conv2d(
            F.max_pool2d(F.relu(F.conv2d(x, P["c1.W"], P["c1.b"], padding=1)), 2), P["c2.W"], P["c2.b"])),
            3, stride=2).flatten(1), P["o.W"], P["o.b"])),
}


def _torch_params(m):
    return {k: torch.tensor(v.copy(), requires_grad=True) for k, v in m.params.items()}


def _both(case):
    """Our model of `case`, a batch, PyTorch's copy of its parameters and PyTorch's net."""
    source, net = CASES[case]
    module = compile_source(source)
    m = module.Model(seed=0)
    data = random_data(module, n=6)
    return m, data, _torch_params(m), net


@pytest.mark.parametrize("case", sorted(CASES))
def test_loss_and_gradients_equal_pytorch(case):
    m, data, P, net = _both(case)
    loss = F.cross_entropy(net(P, torch.from_numpy(data["x"])), torch.from_numpy(data["label"]))
    loss.backward()
    L, g = m.grad(**data)
    assert L == pytest.approx(loss.item(), rel=1e-12, abs=1e-12)
    for name, p in P.items():
        np.testing.assert_allclose(g[name], p.grad.numpy(), rtol=1e-10, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("case", sorted(CASES))
def test_three_adam_steps_equal_pytorch(case):
    m, data, P, net = _both(case)
    opt = torch.optim.Adam(P.values(), lr=0.01)
    x, label = torch.from_numpy(data["x"]), torch.from_numpy(data["label"])
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(net(P, x), label).backward()
        opt.step()
        m.step(**data)
    for name, p in P.items():
        np.testing.assert_allclose(m.params[name], p.detach().numpy(), rtol=1e-10, atol=1e-12, err_msg=name)


def test_maxpool_ties_route_to_the_first_in_the_window():
    """A constant image: every window is a tie. Like PyTorch, the whole Δ goes to the first
    (row-major) element of each window, never to every element equal to the max."""
    source, net = CASES["conv-stride3-no-bias-maxpool-overlap"]
    module = compile_source(source)
    m = module.Model(seed=0)
    data = random_data(module, n=4)
    data["x"] = np.ones_like(data["x"])
    P = _torch_params(m)
    F.cross_entropy(net(P, torch.from_numpy(data["x"])), torch.from_numpy(data["label"])).backward()
    _, g = m.grad(**data)
    np.testing.assert_allclose(g["c.W"], P["c.W"].grad.numpy(), rtol=1e-10, atol=1e-12)
