"""Parity with PyTorch (optional extra `nndsl[parity]`): losses, gradients and optimiser steps."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import BATCHNORM, EMBED_LN, compile_source, random_data

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


# ------------------------------------------------------------ the training kit


def test_embedding_and_layernorm_equal_pytorch():
    """nn.Embedding (weight = e.E, rows by class index) and nn.LayerNorm (weight = h.g,
    bias = h.b): loss, gradients and three Adam steps; a per-step cross-entropy is summed
    over the steps and averaged over the examples."""
    module = compile_source(EMBED_LN)
    m = module.Model(seed=0)
    rng = np.random.default_rng(5)
    m.params["h.g"][...] = rng.uniform(0.5, 1.5, 5)          # not the initial ones and zeros
    m.params["h.b"][...] = rng.normal(0, 0.3, 5)
    chars, nxt = rng.integers(0, 7, (6, 4)), rng.integers(0, 7, (6, 4))
    emb = torch.nn.Embedding(7, 5).double()
    ln = torch.nn.LayerNorm(5, eps=1e-3).double()
    lin = torch.nn.Linear(5, 7).double()
    with torch.no_grad():
        for mod, names in ((emb, {"weight": "e.E"}), (ln, {"weight": "h.g", "bias": "h.b"}),
                           (lin, {"weight": "o.W", "bias": "o.b"})):
            for attr, p in names.items():
                getattr(mod, attr).copy_(torch.from_numpy(m.params[p].copy()))
    params = {"e.E": emb.weight, "h.g": ln.weight, "h.b": ln.bias, "o.W": lin.weight, "o.b": lin.bias}
    opt = torch.optim.Adam(params.values(), lr=0.01)
    c, t = torch.from_numpy(chars), torch.from_numpy(nxt)

    def torch_loss():
        logits = lin(ln(emb(c)))
        return torch.nn.functional.cross_entropy(logits.reshape(-1, 7), t.reshape(-1), reduction="sum") / len(c)

    loss = torch_loss()
    loss.backward()
    L, g = m.grad(chars=chars, next=nxt)
    assert L == pytest.approx(loss.item(), rel=1e-12)
    for name, p in params.items():
        np.testing.assert_allclose(g[name], p.grad.numpy(), rtol=1e-10, atol=1e-12)
    for _ in range(3):
        opt.zero_grad()
        torch_loss().backward()
        opt.step()
        m.step(chars=chars, next=nxt)
    for name, p in params.items():
        np.testing.assert_allclose(m.params[name], p.detach().numpy(), rtol=1e-10, atol=1e-12)
    net = torch.nn.ModuleDict({"e": emb, "h": ln, "o": lin})      # the module's names: e.weight, ...
    net.load_state_dict({k: torch.from_numpy(v) for k, v in m.state_dict().items()})




class _TorchBN(torch.nn.Module if torch is not None else object):
    """BATCHNORM in PyTorch: BatchNorm1d on (N, K), BatchNorm2d per channel, and BatchNorm1d
    over a sequence's (N, K, T) transpose (normalised over the examples and the steps)."""

    def __init__(self, m):
        super().__init__()
        self.h, self.o, self.q = (torch.nn.Linear(*m.params[f"{k}.W"].shape[::-1], bias=k != "h").double()
                                  for k in "hoq")
        self.c = torch.nn.Conv2d(2, 3, 3, padding=1, bias=False).double()
        self.b = torch.nn.BatchNorm1d(5, momentum=0.2).double()
        self.d = torch.nn.BatchNorm2d(3, eps=1e-3).double()
        self.s = torch.nn.BatchNorm1d(3).double()
        with torch.no_grad():
            for name, p in self.named_parameters():
                p.copy_(torch.from_numpy(m.params[_NAMES[name]].copy()))

    def forward(self, x, img, seq):
        f = torch.cat([torch.tanh(self.b(self.h(x))), self.d(self.c(img)).flatten(1)], dim=1)
        return self.o(f), self.q(self.s(seq.transpose(1, 2)).transpose(1, 2))


_NAMES = {f"{k}.{a}": f"{k}.{b}" for k in "hoqc" for a, b in (("weight", "W"), ("bias", "b"))}
_NAMES.update({f"{k}.{a}": f"{k}.{b}" for k in "bds" for a, b in (("weight", "g"), ("bias", "b"))})


def test_batchnorm_equals_pytorch_in_training_and_forward():
    """Training mode: the loss and every gradient (the batch statistics couple the examples);
    two SGD steps, after which the running statistics (momentum, unbiased variance) equal
    PyTorch's; `forward` then normalises with them, as PyTorch in eval mode. `loss` and
    `grad` leave them unchanged."""
    module = compile_source(BATCHNORM)
    m = module.Model(seed=0)
    rng = np.random.default_rng(7)
    for k in "bds":
        m.params[f"{k}.g"][...] = rng.uniform(0.5, 1.5, m.params[f"{k}.g"].shape)
        m.params[f"{k}.b"][...] = rng.normal(0, 0.3, m.params[f"{k}.b"].shape)
    data = {"x": rng.normal(1, 2, (8, 6)), "img": rng.normal(0, 1, (8, 2, 5, 4)), "seq": rng.normal(0, 1, (8, 4, 3)),
            "y": rng.normal(0, 1, (8, 2)), "ys": rng.normal(0, 1, (8, 4, 2))}
    net = _TorchBN(m)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    t = {k: torch.from_numpy(v) for k, v in data.items()}

    def torch_loss():
        o, q = net(t["x"], t["img"], t["seq"])
        return (0.5 * ((o - t["y"]) ** 2).sum() + 0.5 * ((q - t["ys"]) ** 2).sum()) / 8

    loss = torch_loss()
    loss.backward()
    stats = {k: v.copy() for k, v in m.stats.items()}
    L, g = m.grad(**data)
    m.loss(**data)
    m.forward(outputs=["o", "q"], x=data["x"], img=data["img"], seq=data["seq"])
    assert all(np.array_equal(stats[k], m.stats[k]) for k in stats)      # only step/fit update them
    assert L == pytest.approx(loss.item(), rel=1e-12)
    for name, p in net.named_parameters():
        np.testing.assert_allclose(g[_NAMES[name]], p.grad.numpy(), rtol=1e-10, atol=1e-12, err_msg=name)
    for k in "bds":                         # PyTorch updated them in the forward above
        getattr(net, k).reset_running_stats()
    for _ in range(2):
        opt.zero_grad()
        torch_loss().backward()
        opt.step()
        m.step(**data)
    for k in "bds":
        bn = getattr(net, k)
        np.testing.assert_allclose(m.stats[f"{k}.running_mean"], bn.running_mean.numpy(), rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(m.stats[f"{k}.running_var"], bn.running_var.numpy(), rtol=1e-10, atol=1e-14)
    net.eval()
    o, q = net(t["x"][:3], t["img"][:3], t["seq"][:3])
    np.testing.assert_allclose(m.forward(outputs="o", x=data["x"][:3], img=data["img"][:3]),
                               o.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(m.forward(outputs="q", seq=data["seq"][:3]), q.detach().numpy(), rtol=1e-10, atol=1e-12)
    # the module's state_dict is the torch model's (strictly), running statistics included;
    # and back: torch's trained state into a fresh model gives the same forward
    sd = m.state_dict()
    assert sd["b.num_batches_tracked"].dtype == np.int64
    net.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
    fresh = module.Model(seed=1)
    fresh.load_torch(net.state_dict())
    for name in (*m.params, *m.stats):
        store = m.stats if name in m.stats else m.params
        np.testing.assert_array_equal((fresh.stats if name in m.stats else fresh.params)[name], store[name])
