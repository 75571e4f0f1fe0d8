"""PyTorch (eager, CPU, float32) Adam step: `python benchmarks/impl_torch.py --model lecture`."""
from __future__ import annotations

from _common import LR, BETA1, BETA2, EPS, MODELS, make_data, parse_args, run_benchmark, unavailable

IMPL = "torch"


def make_cnn(model: str = "cnn"):
    """The CNN of issue 10 (PyTorch's default conv init; the step time does not depend on it);
    `cnn_bn`: BatchNorm2d (training mode) after each bias-free convolution."""
    from torch import nn
    spec = MODELS[model]
    f1, f2, out = spec["sizes"]
    c, h, w = spec["image"]
    bn = spec.get("batchnorm", False)

    def block(cin, cout):
        conv = nn.Conv2d(cin, cout, 3, padding=1, bias=not bn)
        return [conv, nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)] if bn else [conv, nn.ReLU(), nn.MaxPool2d(2)]

    return nn.Sequential(*block(c, f1), *block(f1, f2), nn.Flatten(), nn.Linear(f2 * (h // 4) * (w // 4), out))


def make_net(model: str, adam_impl: str = "fused", device: str = "cpu"):
    """The MLP (Glorot-uniform weights, zero biases) or the CNN on `device`, and its Adam
    optimiser."""
    import torch
    from torch import nn

    spec = MODELS[model]
    torch.manual_seed(0)
    sizes, act = spec["sizes"], spec["act"]
    layers = []
    if "image" in spec:
        layers = list(make_cnn(model))
        sizes = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        lin = nn.Linear(a, b)
        nn.init.xavier_uniform_(lin.weight)
        nn.init.zeros_(lin.bias)
        layers.append(lin)
        if i < len(sizes) - 2:
            layers.append(nn.Tanh() if act == "tanh" else nn.ReLU())
    net = nn.Sequential(*layers).to(device)
    # fused Adam (one kernel for all parameters) is the fastest CPU variant here; "foreach"
    # and the per-parameter loop measured the same or slower
    kw = {"fused": True} if adam_impl == "fused" else {"foreach": adam_impl == "foreach"}
    opt = torch.optim.Adam(net.parameters(), lr=LR, betas=(BETA1, BETA2), eps=EPS, **kw)
    return net, opt


def make_lstm(model: str, adam_impl: str = "fused", device: str = "cpu"):
    """x (N, T, F) -> nn.LSTM(hidden) -> last state -> Linear(1)."""
    import torch
    from torch import nn

    spec = MODELS[model]
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.LSTM(spec["features"], spec["hidden"], batch_first=True)
            self.out = nn.Linear(spec["hidden"], 1)

        def forward(self, x):
            seq, _ = self.rnn(x)
            return self.out(seq[:, -1])

    net = Net().to(device)
    kw = {"fused": True} if adam_impl == "fused" else {"foreach": adam_impl == "foreach"}
    return net, torch.optim.Adam(net.parameters(), lr=LR, betas=(BETA1, BETA2), eps=EPS, **kw)


def build(model: str, x_np, y_np, adam_impl: str = "fused", device: str = "cpu"):
    import torch
    import torch.nn.functional as F

    spec = MODELS[model]
    net, opt = (make_lstm if spec.get("kind") == "lstm" else make_net)(model, adam_impl, device)
    x = torch.from_numpy(x_np).to(device)
    y = torch.from_numpy(y_np).to(device)

    if spec["loss"] == "squared":
        def loss_fn(o):  # ½ Σ_k (o_k − y_k)², mean over the batch
            return 0.5 * (o - y).pow(2).sum(dim=1).mean()
    else:
        def loss_fn(o):
            return F.cross_entropy(o, y)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(x))
        loss.backward()
        opt.step()
        return loss.detach()

    return step


def main(argv=None):
    args = parse_args(IMPL, argv)
    try:
        import torch
    except ImportError as exc:
        unavailable(IMPL, args.model, f"torch not importable: {exc}")
    x, y = make_data(args.model, args.data)

    def setup():
        # eager: nothing is compiled ahead of the first step
        return build(args.model, x, y), {"torch_threads": torch.get_num_threads(), "adam": "fused"}

    run_benchmark(IMPL, args, setup, version=torch.__version__)


if __name__ == "__main__":
    main()
