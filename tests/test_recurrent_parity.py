"""Recurrent layers against PyTorch (float64): outputs, loss, gradients and three Adam steps.

The mapping (docs/architecture.md, "Recurrences"): torch's `weight_ih_l0` stacks our W_* in
its gate order — LSTM i, f, g(=our c), o; GRU r, z, n(=our h); RNN the one W — likewise
`weight_hh_l0` our U_*, `bias_ih_l0` our b_*, and `bias_hh_l0` is 0 (held fixed): we have
one bias per gate, and the GRU's b_h sits outside r ⊙ (U_h h) as torch's b_in does.
"""
from __future__ import annotations

import numpy as np
import pytest

from conftest import compile_source

torch = pytest.importorskip("torch")

TORCH_ORDER = {"rnn": ("",), "lstm": ("_i", "_f", "_c", "_o"), "gru": ("_r", "_z", "_h")}
D, H, T, N = 3, 5, 4, 6


def source(kind: str, ret: str, act: str = "") -> str:
    per_step = ret == "all"
    return (f"model p_{kind}_{ret}\ninput x[T, {D}]\ntarget y[{'T, ' if per_step else ''}2]\n"
            f"h = {kind}(x, {H}{act}, return={ret})\no = dense(h, 2)\nloss squared(o, y)\n"
            "optimizer adam(lr=0.01)\n")


class TorchNet(torch.nn.Module):
    def __init__(self, kind, m, act="tanh"):
        super().__init__()
        cls = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[kind]
        kw = {"nonlinearity": act} if kind == "rnn" else {}
        self.rnn = cls(D, H, batch_first=True, **kw).double()
        self.lin = torch.nn.Linear(H, 2).double()
        stack = lambda p: torch.from_numpy(np.concatenate([m.params[f"h.{p}{g}"] for g in TORCH_ORDER[kind]]))  # noqa: E731
        with torch.no_grad():
            self.rnn.weight_ih_l0.copy_(stack("W"))
            self.rnn.weight_hh_l0.copy_(stack("U"))
            self.rnn.bias_ih_l0.copy_(stack("b"))
            self.rnn.bias_hh_l0.zero_()
            self.lin.weight.copy_(torch.from_numpy(m.params["o.W"].copy()))
            self.lin.bias.copy_(torch.from_numpy(m.params["o.b"].copy()))
        self.rnn.bias_hh_l0.requires_grad_(False)

    def forward(self, x, ret):
        seq, _ = self.rnn(x)
        return self.lin(seq if ret == "all" else seq[:, -1])

    def ours(self, kind, what):
        """Our parameter `h.<W|U|b><gate>` (or the gradient) from torch's stacked tensors."""
        out = {}
        for p, t in (("W", self.rnn.weight_ih_l0), ("U", self.rnn.weight_hh_l0), ("b", self.rnn.bias_ih_l0)):
            value = (t.grad if what == "grad" else t.detach()).numpy()
            for chunk, g in zip(np.split(value, len(TORCH_ORDER[kind])), TORCH_ORDER[kind]):
                out[f"h.{p}{g}"] = chunk
        lin = {"W": self.lin.weight, "b": self.lin.bias}
        out.update({f"o.{p}": (t.grad if what == "grad" else t.detach()).numpy() for p, t in lin.items()})
        return out


def loss_of(o, y):
    return 0.5 * ((o - y) ** 2).reshape(len(o), -1).sum(dim=1).mean()   # ½Σ over steps and units, mean over n


CASES = [("rnn", "last", ""), ("rnn", "all", ", act=relu"), ("lstm", "last", ""), ("lstm", "all", ""),
         ("gru", "last", ""), ("gru", "all", "")]


@pytest.mark.parametrize("kind,ret,act", CASES)
def test_outputs_loss_gradients_and_adam_equal_pytorch(kind, ret, act):
    module = compile_source(source(kind, ret, act))
    m = module.Model(seed=0)
    rng = np.random.default_rng(1)
    data = dict(x=rng.standard_normal((N, T, D)), y=rng.standard_normal((N, T, 2) if ret == "all" else (N, 2)))
    net = TorchNet(kind, m, "relu" if "relu" in act else "tanh")
    x, y = torch.from_numpy(data["x"]), torch.from_numpy(data["y"])

    np.testing.assert_allclose(m.forward(x=data["x"]), net(x, ret).detach().numpy(), rtol=1e-12, atol=1e-13)
    loss = loss_of(net(x, ret), y)
    loss.backward()
    L, g = m.grad(**data)
    assert L == pytest.approx(loss.item(), rel=1e-12)
    for name, value in net.ours(kind, "grad").items():
        np.testing.assert_allclose(g[name], value, rtol=1e-10, atol=1e-12, err_msg=name)

    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=0.01)
    for _ in range(3):
        opt.zero_grad()
        loss_of(net(x, ret), y).backward()
        opt.step()
        m.step(**data)
    for name, value in net.ours(kind, "value").items():
        np.testing.assert_allclose(m.params[name], value, rtol=1e-10, atol=1e-12, err_msg=name)
