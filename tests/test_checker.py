"""The checker on valid models: per-example shapes, parameters, attrs with their
defaults, network inlining and naming, losses, optimizers, settings, summary."""
from __future__ import annotations

import pytest

from nndsl.frontend import ir
from nndsl.frontend import load_source
from nndsl.frontend.summary import summarize


# A loss must reach a parameter; snippets without one get this dense head.
HEAD = "input head_in[2]\nhead = dense(head_in, 1)"


def check(body: str, loss: str = "loss squared(o, o) + squared(head, 0)") -> ir.ModelIR:
    """The model `body` plus a small layer `head` for the default loss to train."""
    return load_source(f"model m\n{body}\n{HEAD}\n{loss}\n", "m.nn")


def names_of(m: ir.ModelIR) -> list[str]:
    return [n.name for n in m.nodes if not n.name.startswith("head")]


def params_of(m: ir.ModelIR) -> dict[str, tuple]:
    return {p.name: p.shape for p in m.params if not p.name.startswith("head.")}


# ------------------------------------------------------------------ layer table
# (id, declarations, call producing node `o`, expected shape, expected params, attrs subset)
LAYERS = [
    ("dense", "input x[784]", "dense(x, 128, act=relu)", (128,),
     {"o.W": (128, 784), "o.b": (128,)}, {"units": 128, "act": "relu", "bias": True}),
    ("dense no bias", "input x[10]", "dense(x, 32, bias=false)", (32,),
     {"o.W": (32, 10)}, {"act": "identity", "bias": False}),
    ("dense const units", "const H = 64\ninput x[10]", "dense(x, H * 2)", (128,),
     {"o.W": (128, 10), "o.b": (128,)}, {"units": 128}),
    ("conv2d", "input img[1, 28, 28]", "conv2d(img, 8, 5)", (8, 24, 24),
     {"o.W": (8, 1, 5, 5), "o.b": (8,)},
     {"filters": 8, "kernel": 5, "stride": 1, "pad": 0, "act": "identity", "bias": True}),
    ("conv2d stride pad", "input img[3, 32, 32]", "conv2d(img, 16, 3, stride=2, pad=1, act=relu)",
     (16, 16, 16), {"o.W": (16, 3, 3, 3), "o.b": (16,)}, {"stride": 2, "pad": 1}),
    ("conv2d same", "input img[1, 8, 8]", "conv2d(img, 4, 3, pad=1)", (4, 8, 8),
     {"o.W": (4, 1, 3, 3), "o.b": (4,)}, {}),
    ("maxpool", "input img[4, 8, 8]", "maxpool(img, 2)", (4, 4, 4), {}, {"size": 2, "stride": 2}),
    ("avgpool stride", "input img[4, 9, 9]", "avgpool(img, 3, stride=2)", (4, 4, 4), {},
     {"size": 3, "stride": 2}),
    ("flatten", "input img[2, 3, 4]", "flatten(img)", (24,), {}, {}),
    ("rnn all", "input seq[T, 16]", "rnn(seq, 32)", ("T", 32),
     {"o.W": (32, 16), "o.U": (32, 32), "o.b": (32,)}, {"hidden": 32, "act": "tanh", "return": "all"}),
    ("rnn last relu", "input seq[T, 16]", "rnn(seq, 8, act=relu, return=last)", (8,),
     {"o.W": (8, 16), "o.U": (8, 8), "o.b": (8,)}, {"act": "relu", "return": "last"}),
    ("lstm last", "input seq[T, 8]", "lstm(seq, 4, return=last)", (4,),
     {**{f"o.W_{g}": (4, 8) for g in "ifoc"}, **{f"o.U_{g}": (4, 4) for g in "ifoc"},
      **{f"o.b_{g}": (4,) for g in "ifoc"}}, {"hidden": 4, "return": "last"}),
    ("gru all fixed T", "input seq[5, 3]", "gru(seq, 6)", (5, 6),
     {**{f"o.W_{g}": (6, 3) for g in "zrh"}, **{f"o.U_{g}": (6, 6) for g in "zrh"},
      **{f"o.b_{g}": (6,) for g in "zrh"}}, {"hidden": 6, "return": "all"}),
    ("dropout", "input x[10]", "dropout(x, 0.5)", (10,), {}, {"p": 0.5}),
    ("dropout p 0", "input x[10]", "dropout(x, 0)", (10,), {}, {"p": 0.0}),
    ("gaussian_noise", "input x[3, 4]", "gaussian_noise(x, 0.1)", (3, 4), {}, {"std": 0.1}),
    ("mask_noise", "input x[10]", "mask_noise(x, p=0.25)", (10,), {}, {"p": 0.25}),
    ("sample_normal", "input mu[4]\ninput lv[4]", "sample_normal(mu, lv)", (4,), {},
     {"sample": False}),
    ("sample_normal sample", "input mu[4]\ninput lv[4]", "sample_normal(mu, lv, sample=true)",
     (4,), {}, {"sample": True}),
    ("concat", "input a[3]\ninput b[5]", "concat(a, b)", (8,), {}, {}),
    ("concat seq", "input a[T, 3]\ninput b[T, 2]\ninput c[T, 1]", "concat(a, b, c)", ("T", 6),
     {}, {}),
]


@pytest.mark.parametrize("decls, call, shape, params, attrs",
                         [row[1:] for row in LAYERS], ids=[row[0] for row in LAYERS])
def test_layer_shape_params_attrs(decls, call, shape, params, attrs):
    m = check(f"{decls}\no = {call}")
    node = m.node("o")
    assert node.shape == shape
    assert params_of(m) == params
    assert {k: node.attrs[k] for k in attrs} == attrs
    assert dict(node.params) == {q.split(".")[-1]: q for q in params}


def test_layer_attrs_have_every_default():
    m = check("input x[3]\no = dense(x, 2)")
    assert dict(m.node("o").attrs) == {"units": 2, "act": "identity", "bias": True}
    m = check("input img[1, 6, 6]\no = conv2d(img, 2, 3)")
    assert dict(m.node("o").attrs) == {"filters": 2, "kernel": 3, "stride": 1, "pad": 0,
                                       "act": "identity", "bias": True}


def test_fans_and_inits():
    m = check("input img[2, 8, 8]\nc = conv2d(img, 4, 3)\nf = flatten(c)\n"
              "o = dense(f, 5, init=normal(0.1))", loss="loss squared(o, o)")
    p = {q.name: q for q in m.params}
    assert (p["c.W"].fan_in, p["c.W"].fan_out) == (2 * 9, 4 * 9)
    assert (p["o.W"].fan_in, p["o.W"].fan_out) == (144, 5)
    assert p["o.W"].init == ir.Init("normal", 0.1)
    assert p["o.b"].init == ir.Init("zeros")
    assert p["c.W"].init == ir.Init("xavier")


def test_recurrent_fans():
    m = check("input s[T, 6]\no = lstm(s, 4)", loss="loss squared(o, o)")
    p = {q.name: q for q in m.params}
    assert (p["o.W_i"].fan_in, p["o.W_i"].fan_out) == (6, 4)
    assert (p["o.U_c"].fan_in, p["o.U_c"].fan_out) == (4, 4)


@pytest.mark.parametrize("stmt, init", [
    ("", ir.Init("xavier")),
    ("init he", ir.Init("he")),
    ("init normal(0.02)", ir.Init("normal", 0.02)),
    ("init uniform(a=0.1)", ir.Init("uniform", 0.1)),
    ("init zeros", ir.Init("zeros")),
])
def test_default_init(stmt, init):
    m = check(f"{stmt}\ninput x[3]\no = dense(x, 2, act=relu)")
    assert m.default_init == init
    assert m.params[0].init == init          # weights; relu does NOT switch to he
    assert m.params[1].init == ir.Init("zeros")


# ------------------------------------------------------------------ expressions
EXPRS = [
    ("scalar number", "o = 3", ()),
    ("same shape", "o = a + a", (4,)),
    ("broadcast size 1", "o = a * one", (4,)),
    ("broadcast scalar", "o = 2 * a - 1", (4,)),
    ("broadcast rank", "o = m2 + a", (3, 4)),
    ("free size", "o = exp(s) * s", ("T", 4)),
    ("functions", "o = leaky_relu(a, 0.2) + max(a, 0) + where(a > 0, a, -a)", (4,)),
    ("power", "o = a ^ 2 + a ** 3", (4,)),
    ("const", "o = a * H", (4,)),
    ("user activation", "o = sq(a) + sq(a, 3)", (4,)),
]


@pytest.mark.parametrize("expr, shape", [r[1:] for r in EXPRS], ids=[r[0] for r in EXPRS])
def test_expression_shapes(expr, shape):
    decls = ("const H = 2\ninput a[4]\ninput one[1]\ninput m2[3, 4]\ninput s[T, 4]\n"
             "activation sq(v, k=2) = v ^ k")
    m = load_source(f"model m\n{decls}\n{expr}\np = dense(a, 1)\nloss squared(p, p)\n")
    assert m.node("o").shape == shape
    assert m.node("o").op == "expr"


def test_expression_ir():
    m = check("input x[3]\nh = -x * 2 + leaky_relu(x)\no = dense(h, 1)")
    h = m.node("h")
    assert h.inputs == ("x",)
    assert h.attrs["expr"] == ir.Apply("+", (
        ir.Apply("*", (ir.Apply("neg", (ir.Ref("x"),)), ir.Const(2.0))),
        ir.Apply("leaky_relu", (ir.Ref("x"), ir.Const(0.01)))))


def test_layer_call_inside_expression_is_hoisted():
    m = check("input x[3]\no = relu(dense(x, 4)) + dense(x, 4)")
    assert names_of(m) == ["x", "o.1", "o.2", "o"]
    assert params_of(m) == {"o.1.W": (4, 3), "o.1.b": (4,), "o.2.W": (4, 3), "o.2.b": (4,)}
    assert m.node("o").inputs == ("o.1", "o.2")


def test_alias_and_nodes_in_topological_order():
    m = check("input x[3]\nh = dense(x, 4)\na = h\no = dense(a, 2)")
    assert names_of(m) == ["x", "h", "a", "o"]
    assert m.node("a").attrs["expr"] == ir.Ref("h")


# ------------------------------------------------------------------ user layers
BILINEAR = """
layer bilinear(x[i], z[j], units K) -> out[k:K] {
    param W[k, i, j] init=xavier
    param b[k] init=zeros
    out[k] = sum(i, j: W[k, i, j] * x[i] * z[j]) + b[k]
}
input x[3]
input z[5]
o = bilinear(x, z, 16)
"""


def test_user_layer_bilinear():
    m = check(BILINEAR)
    o = m.node("o")
    assert (o.op, o.shape, o.inputs) == ("layer", (16,), ("x", "z"))
    assert o.attrs["layer"] == "bilinear"
    assert o.attrs["sizes"] == {"K": 16}
    assert o.attrs["index_sizes"] == {"i": 3, "j": 5, "k": 16}
    assert params_of(m) == {"o.W": (16, 3, 5), "o.b": (16,)}
    w = m.params[0]
    assert (w.fan_in, w.fan_out, w.init) == (15, 16, ir.Init("xavier"))
    layer = m.layers["bilinear"]
    assert layer.tensor_args == (("x", ("i",)), ("z", ("j",)))
    assert layer.size_args == ("K",)
    assert layer.out_indices == (("k", "K"),)
    assert [p.name for p in layer.params] == ["W", "b"]
    assert layer.body[0].value == ir.Apply("+", (
        ir.SumOver(("i", "j"), ir.Apply("*", (ir.Apply("*", (
            ir.Access("W", (ir.IVar("k"), ir.IVar("i"), ir.IVar("j"))),
            ir.Access("x", (ir.IVar("i"),)))), ir.Access("z", (ir.IVar("j"),))))),
        ir.Access("b", (ir.IVar("k"),))))


def test_user_layer_default_init_temporaries_and_affine_indices():
    m = check("""
const N = 4
layer shifted(x[c, t], units K) -> out[k:K] {
    param W[k, c]
    a[k] = sum(c, t: W[k, c] * x[c, t * 1 + 0])
    out[k] = tanh(a[k])
}
input x[2, 7]
o = shifted(x, N)""")
    assert m.node("o").shape == (4,)
    assert m.params[0].init == ir.Init("xavier")
    assert [a.target for a in m.layers["shifted"].body] == ["a", "out"]


def test_user_layer_output_bound_by_argument():
    m = check("""
layer scale(x[i]) -> out[i] {
    param s[i]
    out[i] = s[i] * x[i]
}
input x[6]
o = scale(x)""")
    assert m.node("o").shape == (6,)
    assert params_of(m) == {"o.s": (6,)}
    assert m.layers["scale"].out_indices == (("i", "i"),)


def test_user_layer_windows():
    m = check("""
layer diff(x[t]) -> out[i: t - 1] {
    out[i] = x[i + 1] - x[i]
}
layer conv1d(x[c, t], w[f, c, p]) -> out[f, i: t - 2] {
    out[f, i] = sum(c, p: w[f, c, p] * x[c, i + p])
}
input s[10]
input x[2, 8]
input w[4, 2, 3]
d = diff(s)
o = conv1d(x, w)""")
    assert m.node("d").shape == (9,)
    assert m.node("o").shape == (4, 6)
    assert m.node("o").attrs["index_sizes"] == {"c": 2, "t": 8, "f": 4, "p": 3, "i": 6}


# --------------------------------------------------------------------- networks
GAN = """
input x[64]
input z[16]
network generator(z) { h = dense(z, 128, act=relu); return dense(h, 64, act=sigmoid) }
network discriminator(v) { h = dense(v, 128, act=leaky_relu); return dense(h, 1) }
fake = generator(z)
loss d_loss = bce_logits(discriminator(x), 1) + bce_logits(discriminator(fake), 0) wrt discriminator
loss g_loss = bce_logits(discriminator(fake), 1) wrt generator
optimizer d_loss: adam(lr=2e-4, beta1=0.5)
"""


def test_gan_naming_and_shared_params():
    m = load_source("model gan\n" + GAN, "gan.nn")
    assert [n.name for n in m.nodes] == [
        "x", "z", "generator.h", "fake", "discriminator.h", "discriminator.out",
        "discriminator#2.h", "discriminator#2.out", "discriminator#3.h", "discriminator#3.out"]
    assert list(params_of(m)) == [
        "generator.h.W", "generator.h.b", "generator.out.W", "generator.out.b",
        "discriminator.h.W", "discriminator.h.b", "discriminator.out.W", "discriminator.out.b"]
    assert dict(m.node("fake").params) == {"W": "generator.out.W", "b": "generator.out.b"}
    assert m.node("discriminator#2.h").inputs == ("fake",)
    assert dict(m.node("discriminator#3.out").params) == dict(m.node("discriminator.out").params)


def test_gan_losses_wrt_and_optimizers():
    m = load_source("model gan\n" + GAN, "gan.nn")
    d, g = m.losses
    assert d.name == "d_loss" and g.name == "g_loss"
    assert [(t.weight, t.fn, t.args) for t in d.terms] == [
        (1.0, "bce_logits", ("discriminator.out", 1.0)),
        (1.0, "bce_logits", ("discriminator#2.out", 0.0))]
    assert d.wrt == ("discriminator.h.W", "discriminator.h.b", "discriminator.out.W",
                     "discriminator.out.b")
    assert g.wrt == ("generator.h.W", "generator.h.b", "generator.out.W", "generator.out.b")
    assert m.optimizers["d_loss"] == ir.Optimizer("adam", {"lr": 2e-4, "beta1": 0.5,
                                                           "beta2": 0.999, "eps": 1e-8, **KIT})
    assert m.optimizers["g_loss"] == ir.Optimizer("adam", {"lr": 1e-3, "beta1": 0.9,
                                                           "beta2": 0.999, "eps": 1e-8, **KIT})
    assert m.outputs == ("discriminator.out",)


def test_network_returning_a_local_and_nested_calls():
    m = check("""
input x[4]
network enc(v) { h = dense(v, 3); return h }
network ae(v) { c = enc(v); return dense(c, 4) }
o = ae(x)
p = ae(o)""", loss="loss squared(p, x)")
    assert names_of(m) == ["x", "enc.h", "ae.c", "o", "enc#2.h", "ae#2.c", "p"]
    assert m.node("ae.c").attrs["expr"] == ir.Ref("enc.h")
    assert params_of(m) == {"enc.h.W": (3, 4), "enc.h.b": (3,), "ae.out.W": (4, 3),
                            "ae.out.b": (4,)}


def test_network_argument_expression_and_unassigned_call():
    m = check("input x[4]\nnetwork f(v) { return dense(v, 2) }\no = f(x * 2) + f(x)")
    assert names_of(m) == ["x", "o.1.1", "f.out", "f#2.out", "o"]
    assert m.node("o").inputs == ("f.out", "f#2.out")


# ----------------------------------------------------------------------- losses
def test_vae_loss_sum_and_hoisted_arguments():
    m = load_source("""model vae
input x[8]
h = dense(x, 6, act=relu)
mu = dense(h, 2)
logvar = dense(h, 2)
z = sample_normal(mu, logvar)
xr = dense(z, 8)
loss bce_logits(xr, x) + 0.5 * kl_normal(mu, logvar) - 2 * squared(xr * 2, x) / 4
""", "vae.nn")
    (loss,) = m.losses
    assert loss.name == "loss"
    assert [(t.weight, t.fn, t.args) for t in loss.terms] == [
        (1.0, "bce_logits", ("xr", "x")), (0.5, "kl_normal", ("mu", "logvar")),
        (-0.5, "squared", ("_loss.2.0", "x"))]
    assert m.node("_loss.2.0").op == "expr"
    assert set(loss.wrt) == {p.name for p in m.params}
    assert m.outputs == ("xr",)


LOSS_CALLS = [
    ("squared", "squared(o, y)", "squared", ("o", "y"), {}),
    ("cross_entropy", "cross_entropy(o, label)", "cross_entropy", ("o", "label"), {}),
    ("bce scalar target", "bce_logits(o, 1)", "bce_logits", ("o", 1.0), {}),
    ("gaussian_nll learned", "gaussian_nll(o, lv, y)", "gaussian_nll", ("o", "lv", "y"), {}),
    ("gaussian_nll fixed", "gaussian_nll(o, y, beta=4.0)", "gaussian_nll", ("o", "y"),
     {"beta": 4.0}),
    ("gaussian_nll fixed default", "gaussian_nll(o, y)", "gaussian_nll", ("o", "y"),
     {"beta": 1.0}),
    ("kl_normal", "kl_normal(o, lv)", "kl_normal", ("o", "lv"), {}),
    ("user loss default", "huber(o, y)", "huber", ("o", "y"), {"delta": 1.0}),
    ("user loss kwarg", "huber(o, y, delta=2)", "huber", ("o", "y"), {"delta": 2.0}),
]


@pytest.mark.parametrize("call, fn, args, kwargs", [r[1:] for r in LOSS_CALLS],
                         ids=[r[0] for r in LOSS_CALLS])
def test_loss_terms(call, fn, args, kwargs):
    m = load_source(f"""model m
input x[5]
target y[3]
target label: class(3)
loss huber(a, b, delta=1.0) = where(abs(a - b) <= delta, 0.5 * (a - b)^2, delta * abs(a - b))
o = dense(x, 3)
lv = dense(x, 3)
loss {call}
""", "m.nn")
    (term,) = m.losses[0].terms
    assert (term.fn, term.args, dict(term.kwargs)) == (fn, args, kwargs)
    assert m.user_losses["huber"].defaults == {"delta": 1.0}


def test_loss_without_wrt_updates_what_it_depends_on():
    m = check("input x[3]\na = dense(x, 2)\no = dense(x, 2)\nunused = dense(x, 1)",
              loss="loss squared(o, a)\nloss only_a = squared(a, 0)")
    assert m.losses[0].wrt == ("a.W", "a.b", "o.W", "o.b")
    assert m.losses[1].wrt == ("a.W", "a.b")


def test_wrt_a_top_level_layer():
    m = check("input x[3]\na = dense(x, 2)\no = dense(a, 2)",
              loss="loss squared(o, 0) wrt o")
    assert m.losses[0].wrt == ("o.W", "o.b")


# ------------------------------------------------------------ optimizers, train
KIT = {"weight_decay": 0.0, "decay": "weights", "schedule": ("none", ()), "warmup": 0}   # every optimiser's


@pytest.mark.parametrize("stmt, kind, args", [
    ("", "adam", {"lr": 0.001, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}),
    ("optimizer adam", "adam", {"lr": 0.001, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}),
    ("optimizer adam()", "adam", {"lr": 0.001, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}),
    ("optimizer sgd", "sgd", {"lr": 0.01, "momentum": 0.0, "nesterov": False}),
    ("optimizer sgd(lr=0.1, momentum=0.9, nesterov=true)", "sgd",
     {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
    ("optimizer adagrad(0.5)", "adagrad", {"lr": 0.5, "eps": 1e-10}),
    ("optimizer rmsprop(rho=0.5)", "rmsprop", {"lr": 0.001, "rho": 0.5, "eps": 1e-8}),
    ("optimizer adamw", "adamw", {"lr": 0.001, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.01}),
    ("optimizer sgd(weight_decay=0.1, decay=all, schedule=step(every=5), warmup=3)", "sgd",
     {"lr": 0.01, "momentum": 0.0, "nesterov": False, "weight_decay": 0.1, "decay": "all",
      "schedule": ("step", (("every", 5), ("gamma", 0.1))), "warmup": 3}),
    ("optimizer adam(schedule=exponential(0.9))", "adam",
     {"lr": 0.001, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "schedule": ("exponential", (("gamma", 0.9),))}),
    ("optimizer adam(schedule=cosine)", "adam",
     {"lr": 0.001, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "schedule": ("cosine", ())}),
])
def test_optimizer_defaults(stmt, kind, args):
    m = check(f"input x[3]\no = dense(x, 2)\n{stmt}")
    assert m.optimizers == {"loss": ir.Optimizer(kind, {**KIT, **args})}


def test_per_loss_optimizer_and_global_default():
    m = check("input x[3]\no = dense(x, 2)\noptimizer sgd\noptimizer b: rmsprop(lr=0.1)",
              loss="loss a = squared(o, 0)\nloss b = squared(o, 1)")
    assert m.optimizers["a"].kind == "sgd"
    assert m.optimizers["b"] == ir.Optimizer("rmsprop", {"lr": 0.1, "rho": 0.9, "eps": 1e-8, **KIT})


@pytest.mark.parametrize("stmt, config", [
    ("", ir.TrainConfig()),
    ("train batch=32", ir.TrainConfig(batch=32)),
    ("train batch=16 epochs=3 shuffle=false clip_norm=5 seed=7 d_steps=2",
     ir.TrainConfig(16, 3, False, 5.0, 7, 2)),
    ("train epochs=2\ntrain seed=1", ir.TrainConfig(epochs=2, seed=1)),
])
def test_train_config(stmt, config):
    assert check(f"input x[3]\no = dense(x, 2)\n{stmt}").train == config


def test_outputs():
    m = check("input x[3]\nh = dense(x, 4)\no = dense(h, 2)\noutput h, o")
    assert m.outputs == ("h", "o")
    m = check("input x[3]\nh = dense(x, 4)\no = dense(h, 2)")
    assert m.outputs == ("o",)


def test_data_and_consts():
    m = load_source("""model m
const C = 3
const HW = C * 2 + 2
input img[C, HW, HW]
input seq[T, C]
target label: class(C)
target y[1]
o = dense(flatten(img), C)
loss cross_entropy(o, label)
""", "m.nn")
    assert [(d.name, d.shape, d.classes, d.is_target) for d in m.data] == [
        ("img", (3, 8, 8), None, False), ("seq", ("T", 3), None, False),
        ("label", (), 3, True), ("y", (1,), None, True)]
    assert m.node("label").attrs == {"classes": 3}
    assert m.node("y").attrs == {"classes": None}
    assert m.consts == {"C": 3, "HW": 8}


def test_user_activation_ir():
    m = check("activation sw(a, beta=2) = a * sigmoid(beta * a)\ninput x[3]\n"
              "o = dense(x, 2, act=sw)")
    fn = m.activations["sw"]
    assert fn.params == ("a", "beta") and fn.defaults == {"beta": 2.0}
    assert fn.body == ir.Apply("*", (ir.Ref("a"), ir.Apply("sigmoid", (
        ir.Apply("*", (ir.Ref("beta"), ir.Ref("a"))),))))
    assert m.node("o").attrs["act"] == "sw"


def test_definitions_may_follow_their_use():
    m = check("input x[3]\no = twice(dense(x, 2))\nactivation twice(a) = 2 * a")
    assert m.node("o").op == "expr"


# ----------------------------------------------------------------------- summary
def test_summary():
    m = load_source("model gan\n" + GAN + "train batch=32", "gan.nn")
    text = summarize(m)
    for needle in ["model gan", "input  x  (64,)", "fake", "(64,)", "dense(",
                   "generator.h.W", "(128, 16)", "parameters: 8 tensors, 18,881 values",
                   "d_loss = bce_logits(discriminator.out, 1) + bce_logits(discriminator#2.out, 0)",
                   "updates discriminator.*", "updates generator.*",
                   "optimizer adam(lr=0.0002, beta1=0.5", "train    batch=32"]:
        assert needle in text, needle
    assert "  x  " not in text.split("nodes")[1].split("parameters")[0]   # data not in nodes
