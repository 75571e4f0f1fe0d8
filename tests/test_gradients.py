"""Every derived gradient against central differences: one row per construct, one checker."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import BATCHNORM, GAN, compile_source, random_data
from gradcheck import check_gradients


def model(body: str, head: str = "input x[4]\ntarget y[3]") -> str:
    return f"model g\n{head}\n{body}\n"


ACTIVATIONS = ["identity", "sigmoid", "tanh", "relu", "leaky_relu", "elu", "softplus", "swish", "softmax"]

CASES = {
    # -- dense layers and every built-in activation
    **{f"act-{a}": model(f"h = dense(x, 5, act={a})\no = dense(h, 3)\nloss squared(o, y)") for a in ACTIVATIONS},
    "dense-no-bias": model("h = dense(x, 5, act=tanh, bias=false)\no = dense(h, 3, bias=false)\nloss squared(o, y)"),
    "lecture": model("h = dense(x, 6, act=tanh, bias=false)\no = dense(h, 1, bias=false)\nloss squared(o, y)",
                     "input x[4]\ntarget y[1]"),
    # -- user activations, elementwise expressions, broadcasting, concat, flatten
    "user-activation": model("activation swish2(a) = a * sigmoid(2 * a)\n"
                             "h = dense(x, 5, act=swish2)\ng = swish2(h)\no = dense(g, 3)\nloss squared(o, y)"),
    "expression-functions": model(
        "h = dense(x, 5)\n"
        "e = exp(0.3 * h) + log(1 + h^2) + sqrt(2 + sin(h)) - cos(h) / 2 + abs(h) + softplus(h)\n"
        "f = max(h, 0.1 * e) + min(h, e) + where(h > 0, h * e, -h) + leaky_relu(h, 0.2) + relu(h) * 2\n"
        "o = dense(f, 3)\nloss squared(o, y)"),
    "expression-power": model("h = dense(x, 3)\no = h ** 3 / 3 - h ^ 2\nloss squared(o, y)"),
    "broadcast-scalar-and-size-1": model("h = dense(x, 3)\ns = dense(x, 1)\no = h * s + 2 * h\nloss squared(o, y)"),
    "concat": model("a = dense(x, 2, act=tanh)\nb = dense(x, 4, act=sigmoid)\nc = concat(a, b, x)\n"
                    "o = dense(c, 3)\nloss squared(o, y)"),
    "flatten": model("f = flatten(img)\no = dense(f, 3)\nloss squared(o, y)", "input img[2, 3]\ntarget y[3]"),
    # -- user layers in index notation
    "user-layer-bilinear": model(
        "layer bilinear(x[i], z[j], units K) -> out[k:K] {\n"
        "    param W[k, i, j] init=xavier\n    param b[k] init=zeros\n"
        "    out[k] = sum(i, j: W[k, i, j] * x[i] * z[j]) + b[k]\n}\n"
        "z = dense(x, 2, act=tanh)\no = bilinear(x, z, 3)\nloss squared(o, y)"),
    "user-layer-lecture": model(
        "layer lecture_hidden(x[d], units K) -> h[k:K] {\n"
        "    param W[k, d] init=normal(0.1)\n    h[k] = tanh(sum(d: W[k, d] * x[d]))\n}\n"
        "h = lecture_hidden(x, 6)\no = dense(h, 3)\nloss squared(o, y)"),
    "user-layer-window": model(   # a strided 1-D convolution: affine reads, window index bound by the param
        "layer conv(x[c, t], units F, units L, units K) -> out[f:F, i:L] {\n"
        "    param W[f, c, p:K] init=xavier\n    param b[f] init=zeros\n"
        "    out[f, i] = tanh(sum(c, p: W[f, c, p] * x[c, i*2 + p]) + b[f])\n}\n"
        "s = conv(x, 3, 4, 3)\nh = conv(s, 2, 2, 2)\nloss squared(h, y)",   # Δs: a scatter-add over windows
        "input x[2, 10]\ntarget y[2, 2]"),
    # -- images (C, H, W): conv2d with zero padding as a pre-padded copy, pools, strides
    **{f"conv-s{s}-p{p}": model(f"c = conv2d(x, 3, 3, stride={s}, pad={p}, act=tanh)\nf = flatten(c)\n"
                                "o = dense(f, 3)\nloss squared(o, y)", "input x[2, 7, 9]\ntarget y[3]")
       for s in (1, 2, 3) for p in (0, 1, 2)},
    "conv-no-bias-non-square": model("c = conv2d(x, 2, 2, bias=false)\nloss squared(c, y)",
                                     "input x[3, 4, 6]\ntarget y[2, 3, 5]"),
    "conv-kernel-1-identity": model("c = conv2d(x, 2, 1, stride=2)\nf = flatten(c)\no = dense(f, 3)\n"
                                    "loss squared(o, y)", "input x[3, 5, 4]\ntarget y[3]"),
    **{f"{pool}-size{k}-stride{s}": model(f"c = conv2d(x, 2, 2, act=sigmoid)\nm = {pool}(c, {k}, stride={s})\n"
                                          "f = flatten(m)\no = dense(f, 3)\nloss squared(o, y)",
                                          "input x[2, 8, 7]\ntarget y[3]")
       # stride < size: windows overlap; 3 does not divide 7 or 6
       for pool in ("maxpool", "avgpool") for k, s in ((2, 1), (2, 2), (3, 2), (3, 3))},
    "maxpool-tiling-windows": model("c = conv2d(x, 2, 3, pad=1, act=tanh)\nm = maxpool(c, 2)\nf = flatten(m)\n"
                                    "o = dense(f, 3)\nloss squared(o, y)", "input x[1, 8, 6]\ntarget y[3]"),
    "cnn-stack": model("c1 = conv2d(x, 4, 3, pad=1, act=relu)\np1 = maxpool(c1, 2)\n"
                       "c2 = conv2d(p1, 3, 3, pad=1, act=elu)\np2 = avgpool(c2, 2)\nf = flatten(p2)\n"
                       "o = dense(f, 3)\nloss cross_entropy(o, label)", "input x[1, 9, 8]\ntarget label: class(3)"),
    # -- losses
    "cross-entropy": model("h = dense(x, 5, act=relu)\no = dense(h, 4)\nloss cross_entropy(o, label)",
                           "input x[4]\ntarget label: class(4)"),
    "bce-logits": model("o = dense(x, 3)\nloss bce_logits(o, y)"),
    "bce-scalar-target": model("o = dense(x, 1)\nloss bce_logits(o, 1)", "input x[4]"),
    "gaussian-learned-variance": model("mu = dense(x, 3)\nlogvar = dense(x, 3)\nloss gaussian_nll(mu, logvar, y)"),
    "gaussian-fixed-precision": model("mu = dense(x, 3, act=tanh)\nloss gaussian_nll(mu, y, beta=4.0)"),
    "kl-normal": model("mu = dense(x, 3)\nlogvar = dense(x, 3)\nloss kl_normal(mu, logvar)", "input x[4]"),
    "user-loss-huber": model(
        "loss huber(o, y, delta=1.0) = where(abs(o - y) <= delta, 0.5 * (o - y)^2, delta * (abs(o - y) - 0.5 * delta))\n"
        "o = dense(x, 3)\nloss huber(o, y, delta=0.3)"),
    "weighted-sum-of-losses": model("o = dense(x, 3)\nloss 0.5 * squared(o, y) + bce_logits(o, y) - 0.1 * squared(o, 0)"),
    # -- stochastic layers (same seed, same noise)
    "dropout": model("h = dense(x, 6, act=tanh)\nd = dropout(h, 0.5)\no = dense(d, 3)\nloss squared(o, y)"),
    "gaussian-noise": model("n = gaussian_noise(x, 0.3)\no = dense(n, 3)\nloss squared(o, y)"),
    "mask-noise": model("n = mask_noise(x, 0.25)\no = dense(n, 3)\nloss squared(o, y)"),
    "sample-normal": model("mu = dense(x, 3)\nlogvar = dense(x, 3)\nz = sample_normal(mu, logvar)\n"
                           "o = dense(z, 3)\nloss squared(o, y) + kl_normal(mu, logvar)"),
    # -- vectors of 64+ features are stored batch-last ((K, N)): GEMMs write their transpose,
    #    loops run the batch index innermost, draws fill the stored order
    "wide-batch-last": model(
        "activation swish2(a) = a * sigmoid(2 * a)\n"
        "h = dense(x, 80, act=tanh)\nd = dropout(h, 0.3)\ng = dense(d, 70, act=swish2)\n"
        "s = dense(g, 64, act=softmax)\nn = gaussian_noise(s, 0.1)\nc = concat(n, x)\n"
        "o = dense(c, 3)\nloss squared(o, y)"),
    "wide-user-layer": model(
        "layer lecture_hidden(x[d], units K) -> h[k:K] {\n"
        "    param W[k, d] init=normal(0.1)\n    h[k] = tanh(sum(d: W[k, d] * x[d]))\n}\n"
        "h = lecture_hidden(x, 72)\ng = h * h + 0.5 * h\no = dense(g, 3)\nloss squared(o, y)"),
    # -- the training kit: embeddings (a gather; its adjoint a scatter-add into the rows
    #    of E), layer and batch normalisation (batch statistics couple the examples)
    "embed-layernorm": model(      # per step (N, T) and per example (N,) class indices
        "e = embed(chars, 4)\nh = layernorm(e, eps=0.01)\no = dense(h, 6)\n"
        "f = embed(c, 3)\ng = layernorm(concat(f, x))\np = dense(g, 3)\n"
        "loss cross_entropy(o, next) + squared(p, y)",
        "input chars[T]: class(6)\ninput c: class(5)\ninput x[4]\ntarget next[T]: class(6)\ntarget y[3]"),
    "batchnorm-vector-image-sequence": BATCHNORM,     # (the parity and CUDA tests' model)
    "batchnorm-layernorm-batch-last": model(   # 40-wide values are stored (K, N)
        "h = dense(x, 40)\nb = batchnorm(h)\nl = layernorm(relu(b))\no = dense(l, 3)\nloss squared(o, y)"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_gradient(case):
    module = compile_source(CASES[case])
    check_gradients(module, random_data(module, n=5))


VAE = model("h = dense(x, 6, act=relu)\nmu = dense(h, 2)\nlogvar = dense(h, 2)\nz = sample_normal(mu, logvar)\n"
            "d = dense(z, 6, act=relu)\nxr = dense(d, 4)\nloss bce_logits(xr, x) + kl_normal(mu, logvar)", "input x[4]")


def test_vae_loss_gradient():
    module = compile_source(VAE)
    data = random_data(module, overrides={"x": np.random.default_rng(3).uniform(0, 1, (5, 4))})
    for seed in (0, 1):
        check_gradients(module, data, seed=seed)


@pytest.mark.parametrize("loss", ["d_loss", "g_loss"])
def test_gan_loss_gradients(loss):
    module = compile_source(GAN)
    check_gradients(module, random_data(module), loss=loss)


def test_relu_kink_convention():
    """relu'(0) = 0: at a pre-activation of exactly zero no gradient flows through."""
    module = compile_source(model("h = dense(x, 5, act=relu)\no = dense(h, 3)\nloss squared(o, y)"))
    m = module.Model(seed=0)
    m.params["h.W"] = np.zeros((5, 4))
    m.params["h.b"] = np.zeros(5)
    _, g = m.grad(**random_data(module))
    assert np.all(g["h.W"] == 0) and np.all(g["h.b"] == 0)
    assert np.any(g["o.b"] != 0)


# Each kink's rule (docs/language.md, "Derivatives at kinks"): node o{i} is f(a{i}) with
# a{i} = dense(x, 3) held at exactly 0 (its weights and bias zero); the gradient of a{i}'s bias
# is then f'(0)·Σ_n (f(0) − y[n]) / N with the f'(0) of the stated rule. One model holds every
# row (one build).
KINKS = [  # id, o = f(a), f(0), the derivative the rule takes at 0
    ("relu", "relu({a})", 0.0, 0.0),
    ("act=relu", None, 0.0, 0.0),
    ("leaky_relu", "leaky_relu({a})", 0.0, 0.01),
    ("act=leaky_relu", None, 0.0, 0.01),
    ("leaky_relu-alpha", "leaky_relu({a}, alpha=0.2)", 0.0, 0.2),
    ("abs", "abs({a})", 0.0, 0.0),
    ("max-tie-to-the-first", "max({a}, 0)", 0.0, 1.0),
    ("max-tie-not-to-the-second", "max(0, {a})", 0.0, 0.0),
    ("min-tie-to-the-first", "min({a}, 0)", 0.0, 1.0),
    ("min-tie-not-to-the-second", "min(0, {a})", 0.0, 0.0),
    ("max-of-itself", "max({a}, {a})", 0.0, 1.0),
    ("min-of-itself", "min({a}, -{a})", 0.0, 1.0),
    ("where-strict-takes-the-else-branch", "where({a} > 0, {a}, 0.5 * {a})", 0.0, 0.5),
    ("where-inclusive-takes-the-then-branch", "where({a} >= 0, {a}, 0.5 * {a})", 0.0, 1.0),
    ("elu-has-no-kink", "elu({a})", 0.0, 1.0),
    ("user-activation-inherits", "sw({a})", 0.0, 1.0),       # sw(a) = max(a, 0.2·a): the tie's first
]


def _kink_model() -> str:
    lines = ["activation sw(a) = max(a, 0.2 * a)"]
    for i, (name, f, _, _) in enumerate(KINKS):
        if f is None:
            lines.append(f"o{i} = dense(x, 3, {name})")
        else:
            lines += [f"a{i} = dense(x, 3)", f"o{i} = " + f.format(a=f"a{i}")]
    lines.append("loss " + " + ".join(f"squared(o{i}, y)" for i in range(len(KINKS))))
    return model("\n".join(lines))


@pytest.mark.parametrize("i", range(len(KINKS)), ids=[k[0] for k in KINKS])
def test_the_derivative_at_each_kink(i):
    name, f, value, slope = KINKS[i]
    module = compile_source(_kink_model())
    m = module.Model(seed=0)
    layer = f"o{i}" if f is None else f"a{i}"
    m.params[f"{layer}.W"] = np.zeros((3, 4))
    m.params[f"{layer}.b"] = np.zeros(3)
    data = random_data(module, n=5)
    _, g = m.grad(**data)
    delta = (value - data["y"]) / 5                     # ∂L/∂o at o = f(0)
    np.testing.assert_allclose(g[f"{layer}.b"], slope * delta.sum(0), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(g[f"{layer}.W"], slope * delta.T @ data["x"], rtol=1e-12, atol=1e-15)


def test_maxpool_ties_go_to_the_first_maximum():
    """Every window of a zero image ties: its gradient goes to the window's first element in
    row-major order, (i·s, j·s), overlapping windows (stride 1) included."""
    module = compile_source(model("c = conv2d(img, 1, 1)\np = maxpool(c, 2, stride=1)\nloss squared(p, y)",
                                  "input img[2, 4, 5]\ntarget y[1, 3, 4]"))
    m = module.Model(seed=0)
    m.params["c.W"] = np.zeros((1, 2, 1, 1))
    m.params["c.b"] = np.zeros(1)
    data = random_data(module, n=3)
    _, g = m.grad(**data)
    delta = -data["y"] / 3                                # ∂L/∂p at p = 0
    first = data["img"][:, :, :3, :4]                     # the first element of window (i, j)
    np.testing.assert_allclose(g["c.W"][0, :, 0, 0], np.einsum("nij,ncij->c", delta[:, 0], first), rtol=1e-12)
    np.testing.assert_allclose(g["c.b"], [delta.sum()], rtol=1e-12)


@pytest.mark.parametrize("loss,target", [
    ("cross_entropy(o, label)", "target label: class(3)"),
    ("bce_logits(o, y)", "target y[3]"),
])
def test_extreme_logits_stay_finite(loss, target):
    """Stable primitives: logits of ±1000 give finite losses and gradients."""
    module = compile_source(model(f"o = dense(x, 3)\nloss {loss}", f"input x[4]\n{target}"))
    m = module.Model(seed=0)
    m.params["o.W"] = np.zeros((3, 4))
    m.params["o.b"] = np.array([1000.0, -1000.0, 0.0])
    L, g = m.grad(**random_data(module))
    assert np.isfinite(L) and L > 100
    assert all(np.all(np.isfinite(v)) for v in g.values())


@pytest.mark.parametrize("case", ["act-tanh", "act-softmax", "cross-entropy", "gaussian-learned-variance",
                                  "user-layer-bilinear", "act-sigmoid", "cnn-stack"])
def test_float32_agrees_with_float64(case):
    source = CASES[case]
    m64 = compile_source(source, "float64").Model(seed=2)
    m32 = compile_source(source, "float32").Model(seed=2)
    data = random_data(compile_source(source), n=16)
    L64, g64 = m64.grad(**data)
    L32, g32 = m32.grad(**data)
    assert L32 == pytest.approx(L64, rel=1e-5, abs=1e-6)
    for name in g64:
        np.testing.assert_allclose(g32[name], g64[name], rtol=2e-3, atol=2e-5)


def test_window_outside_the_input_is_a_diagnostic():
    from nndsl.diagnostics import CompileError
    from nndsl.frontend import load_source
    source = model("layer conv(x[c, t], units F, units L, units K) -> out[f:F, i:L] {\n"
                   "    param W[f, c, p:K]\n    out[f, i] = sum(c, p: W[f, c, p] * x[c, i*2 + p])\n}\n"
                   "h = conv(x, 3, 5, 3)\nloss squared(h, y)", "input x[2, 10]\ntarget y[3, 5]")
    with pytest.raises(CompileError) as err:
        load_source(source, "w.nn")
    assert "ranges over 0..10, outside axis 1 of size 10" in str(err.value)
