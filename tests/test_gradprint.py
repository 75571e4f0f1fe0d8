"""`nndsl grad` and `nndsl.gradients`: golden output, a round trip through a parser of the
printed notation, no internal names, the notation's precedence rules, the Python API."""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import sympy as sp
from notation_parser import (
    Evaluator,
    internal,
    model_resolver,
    parse_latex,
    parse_text,
    rhs_of,
)

import nndsl
from nndsl.calculus import functions as fn
from nndsl.calculus.gradprint import format_block, format_blocks, format_gradients
from nndsl.calculus.gradview import model_formulas
from nndsl.calculus.notation import indicator, latex, text
from nndsl.diagnostics import CompileError
from nndsl.frontend import load_model, load_source

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden" / "grad"
EXAMPLES = sorted(p.stem for p in (ROOT / "examples").glob("*.nn"))

# Models that are not examples, printed and checked like them (golden files, round trips):
# a layer norm written in index notation as a user layer beside the built-in `layernorm`,
# and `batchnorm` of a vector and an image. Their derivations carry sums that are identically
# zero (Σ_k xc[n,k] = 0 for xc = x − mean over k), which the printout drops; widths of 3
# keep the round trips' evaluation (every Σ over at most 3 values) exact.
EXTRA = {
    "layer_norm": """model layer_norm
const D = 3
input x[D]
target y[2]
layer lnorm(x[k], units K) -> out[k:K] {
    param g[k] init=ones
    param b[k] init=zeros
    xc[k] = x[k] - sum(j: x[j]) / D
    out[k] = g[k] * xc[k] / sqrt(sum(j: xc[j]^2) / D + 0.00001) + b[k]
}
h = dense(x, D)
l = lnorm(h, D)
m = layernorm(h)
s = l + m
o = dense(s, 2)
loss squared(o, y)
""",
    "batch_norm": """model batch_norm
input x[3]
input img[2, 3, 3]
target y[2]
h = dense(x, 3)
b = batchnorm(h)
q = batchnorm(img)
f = flatten(q)
z = concat(b, f)
o = dense(z, 2)
loss squared(o, y)
""",
}
PRINTED = EXAMPLES + sorted(EXTRA)
UPDATE = os.environ.get("NNDSL_UPDATE_GOLDEN") == "1"

_cache: dict = {}


def blocks(example: str):
    """The formulas of an example, or a skip where a layer is not differentiable yet."""
    if example not in _cache:
        model = load_source(EXTRA[example], f"{example}.nn") if example in EXTRA else \
            load_model(ROOT / "examples" / f"{example}.nn")
        try:
            _cache[example] = (model, model_formulas(model))
        except CompileError as exc:
            _cache[example] = (model, exc)
    model, result = _cache[example]
    if isinstance(result, CompileError):
        pytest.skip(f"{example}: {result}")
    return model, result


_printed: dict = {}


def printed(example: str, latex_: bool = False) -> str:
    """`nndsl grad` of an example (text or LaTeX), from the one cached derivation."""
    if (example, latex_) not in _printed:
        _printed[example, latex_] = format_blocks(blocks(example)[1], latex_)
    return _printed[example, latex_]


BPTT = [  # example, a line the output must contain: the recursion, derived from the cell
    ("rnn", "Δa_h1[n,t,k] = ∂L/∂a_h1[n,t,k] = Δh1[n,t,k]·(1 − h1[n,t,k]²)"),
    ("rnn", "Δh1[n,t,k] = ∂L/∂h1[n,t,k] = Σ_j Δa_h1[n,t+1,j]·h1.U[j,k] + Σ_j Δa_h2[n,t,j]·h2.W[j,k]"),
    ("rnn", "∂L/∂h1.U[k,j] = Σ_n Σ_t Δa_h1[n,t,k]·h1[n,t−1,j]"),
    ("rnn", "∂L/∂h1.W[k,d] = Σ_n Σ_t Δa_h1[n,t,k]·seq[n,t,d]"),
    ("lstm", "ΔC_h[n,t,k] = ∂L/∂C_h[n,t,k] = ΔC_h[n,t+1,k]·f_h[n,t+1,k] + Δh[n,t,k]·(1 − tanh(C_h[n,t,k])²)·o_h[n,t,k]"),
    ("gru", "∂L/∂h.U_h[k,j] = Σ_n Σ_t Δa_h_h[n,t,k]·h[n,t−1,j]·r_h[n,t,k]"),
    ("names_lm", "e[n,t,k] = ∂L/∂o[n,t,k] = (p[n,t,k] − 𝟙[k = next[n,t]]) / N"),
    ("names_lm", "∂L/∂o.W[k,d] = Σ_n Σ_t e[n,t,k]·h[n,t,d]"),
    ("cnn", "∂L/∂c1.W[f,0,p,q] = Σ_n Σ_i Σ_j Δc1[n,f,i,j]·step(c1[n,f,i,j])·img[n,0,i+p−1,j+q−1]"),
    ("cnn", "(img is zero outside the image: zero padding)"),
    ("cnn", "Δc2[n,c,2·i+p,2·j+q] = ∂L/∂c2[n,c,2·i+p,2·j+q] = Δp2[n,c,i,j]·𝟙[2·p+q = argmax_p2[n,c,i,j]]"),
    ("strided_cnn", "∂L/∂c2.W[f,c,p,q] = Σ_n Σ_i Σ_j Δc2[n,f,i,j]·step(c2[n,f,i,j])·c1[n,c,2·i+p−1,2·j+q−1]"),
]



def test_dense_layers_over_a_sequence_print_in_n_t_k(tmp_path):
    """Per-step values are [n,t,k], a sum over the steps is Σ_t right after Σ_n."""
    path = tmp_path / "steps.nn"
    path.write_text("model steps\ninput x[T, 3]\ntarget y[T, 2]\nh = dense(x, 4, act=tanh)\n"
                    "o = dense(h, 2)\nloss squared(o, y)\n")
    assert nndsl.gradients(path).text.splitlines() == [
        "e[n,t,k] = ∂L/∂o[n,t,k] = (o[n,t,k] − y[n,t,k]) / N",
        "∂L/∂h.W[k,d] = Σ_n Σ_t Σ_k' e[n,t,k']·o.W[k',k]·(1 − h[n,t,k]²)·x[n,t,d]",
        "∂L/∂h.b[k] = Σ_n Σ_t Σ_k' e[n,t,k']·o.W[k',k]·(1 − h[n,t,k]²)",
        "∂L/∂o.W[k,d] = Σ_n Σ_t e[n,t,k]·h[n,t,d]",
        "∂L/∂o.b[k] = Σ_n Σ_t e[n,t,k]",
    ]


# ------------------------------------------------------------------ the recursion in numbers
TINY_RECURRENT = """model tiny_{kind}
input x[T, 3]
target y[2]
h = {kind}(x, 4, return=last)
o = dense(h, 2)
loss squared(o, y)
"""
TINY_PER_STEP = """model tiny_{kind}_steps
input x[T, 3]
target next[T]: class(2)
h = {kind}(x, 4)
o = dense(h, 2)
loss cross_entropy(o, next)
"""


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru", "gru per step"])
def test_the_printed_bptt_recursion_gives_the_modules_gradients(kind, tmp_path):
    """The printed lines of a tiny recurrent model (`nndsl.gradients`: the state's update,
    a_g, the gates, Δh, ΔC, Δa_g and ∂L/∂P as sympy), evaluated in float64 by running t
    forwards for the states and backwards for the deltas, equal the compiled module's
    gradient of every parameter."""
    from conftest import compile_source
    per_step = kind.endswith("per step")         # names_lm's shape: logits and labels per step
    kind = kind.split()[0]
    source = (TINY_PER_STEP if per_step else TINY_RECURRENT).format(kind=kind)
    m = compile_source(source).Model(seed=0)
    batch, steps = 2, 3
    rng = np.random.default_rng(1)
    data = {"x": rng.standard_normal((batch, steps, 3))}
    data.update({"next": rng.integers(0, 2, (batch, steps))} if per_step else
                {"y": rng.standard_normal((batch, 2))})
    _, want = m.grad(**data)
    path = tmp_path / f"tiny_{kind}.nn"
    path.write_text(source)
    g = nndsl.gradients(path)
    params = {name: np.asarray(m.params[name], dtype=np.float64) for name in want}
    lines = {x.name: x for x in g if x.expr is not None and x.kind != "param"}
    cell = [x for x in lines.values() if isinstance(x.lhs, sp.Indexed) and len(x.lhs.indices) == 3
            and str(x.lhs.indices[1]) == "t" and x.name not in ("p", "e")]
    sizes = {"N": batch, "T": steps}
    ev = Evaluator({"n": batch, "t": steps}, clip=10 ** 6)

    def resolve(label, idx):
        if label in params:
            return float(params[label][idx])
        if label in data:
            return float(data[label][idx])
        if label == "o":                  # the dense layer on h (not a BPTT line)
            n, k, t = idx[0], idx[-1], idx[1] if per_step else steps - 1
            return float(params["o.b"][k]) + sum(params["o.W"][k, j] * ev.value("h", (n, t, j))
                                                 for j in range(4))
        line = lines[label]
        if label == "h" and len(idx) == 2:     # return=last: h[n,k] = h[n,T−1,k]
            return ev.value("h", (idx[0], steps - 1, idx[1]))
        if len(idx) == 3 and not 0 <= idx[1] < steps:
            return 0.0                    # h[n,−1,k] = 0, the initial state; a Δ at step T is 0
        env = {str(i): v for i, v in zip(line.lhs.indices, idx)}
        return ev(line.expr, {**sizes, **env})
    ev.resolve = resolve
    forward = [x for x in cell if not x.name.startswith("Δ")]
    backward = [x for x in cell if x.name.startswith("Δ")]
    assert {"h", "Δh"} <= {x.name for x in cell} and any(x.name.startswith("Δa") for x in backward)
    for t in range(steps):                                   # the forward recursion
        for x in forward:
            for n in range(batch):
                for k in range(4):
                    ev.value(x.name, (n, t, k))
    for t in reversed(range(steps)):                         # BPTT: Δ at step t from step t + 1
        for x in backward:
            for n in range(batch):
                for k in range(4):
                    ev.value(x.name, (n, t, k))
    assert set(g.losses["loss"].params) == set(want)
    for name, grad in want.items():
        line = g[name]
        got = np.zeros(params[name].shape)
        for pos in np.ndindex(got.shape):
            shown = [i for i, size in zip(pos, got.shape) if size != 1] if got.ndim <= 2 else list(pos)
            env = {str(i): v for i, v in zip(line.lhs.indices, shown)}
            got[pos] = ev(line.expr, {**sizes, **env})
        np.testing.assert_allclose(got, np.asarray(grad).reshape(got.shape), rtol=1e-8, atol=1e-10,
                                   err_msg=f"{kind}: {line.text}")


# ------------------------------------------------------------------ golden files
@pytest.mark.parametrize("latex_", [False, True], ids=["text", "latex"])
@pytest.mark.parametrize("example", PRINTED)
def test_golden(example, latex_):
    out = printed(example, latex_) + "\n"
    path = GOLDEN / f"{example}.{'tex' if latex_ else 'txt'}"
    if UPDATE or not path.exists():
        if not UPDATE:
            pytest.fail(f"no golden file {path.name}: run with NNDSL_UPDATE_GOLDEN=1 and read it")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(out)
    assert out == path.read_text()


LECTURE = {
    "e[n]": "e[n] = ∂L/∂o[n] = (o[n] − y[n]) / N",
    "h.W": "∂L/∂h.W[k,d] = Σ_n e[n]·o.W[k]·(1 − h[n,k]²)·x[n,d]",
    "o.W": "∂L/∂o.W[k] = Σ_n e[n]·h[n,k]",
}


NORMALISED = [  # the lecture's normalisation gradient: Σ_k Δvar·xc[n,k]·… through the mean is 0
    ("layer_norm", "Δh[n,k] = ∂L/∂h[n,k] = Δl[n,k]·l.g[k] / sqrt(1e-05 + sum_l[n] / 3) + Δm[n,k]·m.g[k]·rstd_m[n] "
                   "− (Σ_k' Δl[n,k']·l.g[k']·xc_l[n,k']·xc_l[n,k]) / (3·(1e-05 + sum_l[n] / 3)^(3 / 2)) "
                   "− (Σ_k' Δl[n,k']·l.g[k']) / (3·sqrt(1e-05 + sum_l[n] / 3)) − (Σ_k' Δm[n,k']·m.g[k']·rstd_m[n]) / 3 "
                   "− (Σ_k' Δm[n,k']·m.g[k']·rstd_m[n]³·xc_m[n,k']·xc_m[n,k]) / 3"),
    ("layer_norm", "rstd_m[n] = 1 / sqrt(1e-05 + var_m[n])"),
    ("layer_norm", "sum_l[n] = Σ_j xc_l[n,j]²"),
    ("batch_norm", "Δh[n,k] = ∂L/∂h[n,k] = Δb[n,k]·b.g[k]·rstd_b[k] − (Σ_n' Δb[n',k]·b.g[k]·rstd_b[k]) / N "
                   "− (Σ_n' Δb[n',k]·b.g[k]·rstd_b[k]³·xc_b[n',k]·xc_b[n,k]) / N"),
    ("batch_norm", "mean_q[c] = (Σ_n Σ_i Σ_j img[n,c,i,j]) / (9·N)"),
    ("names_lm", "∂L/∂x.E[v,k] = Σ_n Σ_t Δx[n,t,k]·𝟙[chars[n,t] = v]"),
    ("names_lm", "Δx[n,t,k] = ∂L/∂x[n,t,k] = Σ_j Δa_h_h[n,t,j]·h.W_h[j,k] + Σ_j Δa_r_h[n,t,j]·h.W_r[j,k] "
                 "+ Σ_j Δa_z_h[n,t,j]·h.W_z[j,k]"),
]


@pytest.mark.parametrize("example,line", NORMALISED)
def test_normalisations_and_embeddings_print_as_a_lecture(example, line):
    assert line in printed(example).splitlines()


def test_a_zero_sum_is_dropped_and_equal_sums_merge():
    from nndsl.calculus import sums
    n, k, j = (sp.Symbol(c, integer=True) for c in "nkj")
    x, xc, a = sp.IndexedBase("x"), sp.IndexedBase("xc"), sp.IndexedBase("a")
    define = lambda ind: x[ind.indices] - sp.Sum(x[ind.indices[0], j], (j, 0, 2)) / 3 \
        if str(ind.base.label) == "xc" else None                                           # noqa: E731
    zero = sp.Sum(a[n] * xc[n, k], (k, 0, 2))
    assert sums.drop_zero_sums(zero + a[n], define) == a[n]
    kept = sp.Sum(a[k] * xc[n, k], (k, 0, 2))                # a[k] depends on k: not zero
    assert sums.drop_zero_sums(kept, define) == kept
    merged = sums.merge_equal_sums(sp.Sum(a[k], (k, 0, 2)) + sp.Sum(a[j], (j, 0, 2)) / 3)
    assert sums.alpha(merged) == sums.alpha(sp.Rational(4, 3) * sp.Sum(a[k], (k, 0, 2)))


def test_the_lecture_mlp_prints_the_lecture_formulas():
    assert printed("lecture_mlp").splitlines() == list(LECTURE.values())


NAMED = [  # example, a line the output must contain
    ("digits_mlp", "p[n,k] = exp(o[n,k]) / Σ_k' exp(o[n,k'])   (p = softmax(o))"),
    ("digits_mlp", "e[n,k] = ∂L/∂o[n,k] = (p[n,k] − 𝟙[k = label[n]]) / N"),
    ("breast_cancer", "e[n] = ∂L/∂o[n] = (σ(o[n]) − y[n]) / N"),
    ("gaussian_regression", "e[n] = ∂L/∂mu[n] = (mu[n] − y[n]) / (N·exp(logvar[n]))"),
    ("gaussian_fixed", "e[n] = ∂L/∂mu[n] = 4·(mu[n] − y[n]) / N"),
    ("vae", "e2[n,k] = ∂L/∂mu[n,k] = mu[n,k] / N + Δz[n,k]"),
    ("vae", "e3[n,k] = ∂L/∂logvar[n,k] = (exp(logvar[n,k]) − 1) / (2·N) + Δz[n,k]·(z[n,k] − mu[n,k]) / 2"),
    ("user_defined", "∂L/∂q.W[0,i,j] = Σ_n e[n]·h[n,j]·x[n,i]"),
    ("user_conv", "∂L/∂h.W[f,c,p] = Σ_n Σ_i Σ_k e[n,k]·o.W[k,6·f+i]·step(h[n,f,i])·img[n,c,i+p]"),
]


# named patterns (NAMED), windows and recursions (BPTT): each line as a lecture writes it
@pytest.mark.parametrize("example,line", NAMED + BPTT)
def test_lines_print_as_a_lecture_writes_them(example, line):
    assert line in printed(example).splitlines()


ONE_PARAM = [  # example, parameter, the lines `--param` prints (definitions it needs, then the gradient)
    ("lecture_mlp", "o.W", [LECTURE["e[n]"], LECTURE["o.W"]]),
    ("vae", "d.W", ["e[n,k] = ∂L/∂xr[n,k] = (σ(xr[n,k]) − x[n,k]) / N",
                    "Δd[n,k] = ∂L/∂d[n,k] = Σ_k' e[n,k']·xr.W[k',k]",
                    "∂L/∂d.W[k,i] = Σ_n Δd[n,k]·step(d[n,k])·z[n,i]"]),
    ("dropout_mlp", "o.b", ["p[n,k] = exp(o[n,k]) / Σ_k' exp(o[n,k'])   (p = softmax(o))",
                            "e[n,k] = ∂L/∂o[n,k] = (p[n,k] − 𝟙[k = label[n]]) / N",
                            "∂L/∂o.b[k] = Σ_n e[n,k]"]),
]


@pytest.mark.parametrize("example,param,lines", ONE_PARAM)
def test_one_parameter_prints_what_it_needs(example, param, lines):
    model, _ = blocks(example)
    assert format_gradients(model, param=param).splitlines() == lines


# ------------------------------------------------------------------ round trip
def _lines(example):
    _, bs = blocks(example)
    for b in bs:
        for f, t, tex in zip(b.formulas, format_block(b, False), format_block(b, True)):
            if f.rhs is not None:
                yield b, f, t, tex


@pytest.mark.parametrize("example", PRINTED)
def test_printed_formulas_parse_back_to_the_derived_expression(example):
    for b, f, line, tex in _lines(example):
        sizes = {k: v for k, v in f.sizes.items()}
        for form, parsed in (("text", parse_text(rhs_of(line.split("   (")[0]))),
                             ("latex", parse_latex(rhs_of(tex)))):
            for seed in range(3):
                ev = Evaluator(sizes, b.int_labels, seed=seed)
                env = {str(s): (seed + k) % 2 for k, s in enumerate(sorted(f.lhs.free_symbols, key=str))
                       if s.is_integer and str(s) != "N"}
                want, got = ev(f.rhs, env), ev(parsed, env)
                assert got == pytest.approx(want, rel=1e-9, abs=1e-12), (form, line if form == "text" else tex)


@pytest.mark.parametrize("example", PRINTED)
def test_the_named_simplified_formulas_equal_the_derivation(example):
    """Every ∂L/∂P line, its definitions (p, e, Δh, a_h) substituted, equals the adjoint
    that `derive` produced, evaluated through the forward formulas at random points."""
    _, bs = blocks(example)
    checked = 0
    for b in bs:
        ints = {"§" + b.tensor_of[x][0] for x in b.int_labels if x in b.tensor_of}
        for f in b.formulas:
            if f.raw is None or any(str(i.base.label).startswith("d_") for i in f.raw.atoms(sp.Indexed)):
                continue                         # a scatter-add stays a named adjoint
            shown = {str(s): 1 for s in f.lhs.free_symbols if s.is_integer and str(s) != "N"}
            full = {str(s): shown.get(str(s), 0) for s in f.raw.free_symbols if s.is_integer and str(s) != "N"}
            for seed in range(2):
                ev = Evaluator({}, ints, seed=seed)
                ev.resolve = model_resolver(b, lambda ev=ev: ev)
                assert ev(f.rhs, shown) == pytest.approx(ev(internal(f.raw), full), rel=1e-9, abs=1e-12), \
                    format_gradients(blocks(example)[0], param=_label_of(f.lhs))
            checked += 1
    assert checked


def _label_of(access):
    return str(access.base.label) if isinstance(access, sp.Indexed) else str(access)


INTERNAL = re.compile(r"per_example|onehot|\blse\b|\.lse|\.noise|\.sum\d|#\d|\.[za]\[|1\.0·|\*\*|\bloss\.")


@pytest.mark.parametrize("example", PRINTED)
def test_no_internal_name_is_printed(example):
    model, _ = blocks(example)
    params = {p.name for p in model.params}
    nodes = {n.name for n in model.nodes}
    for out in (printed(example), printed(example, True)):
        assert not INTERNAL.search(out), INTERNAL.search(out)
    formulas = "\n".join(line for line in printed(example).splitlines() if not line.startswith("#"))
    for name in re.findall(r"[A-Za-z_][\w]*(?:\([\w, ]+\))?(?:\.[A-Za-z_]\w*)+", formulas):
        plain = re.sub(r"\([\w, ]+\)", "", name)
        assert plain in params or plain in nodes, name


# ------------------------------------------------------------------ the notation itself
n, k, d = (sp.Symbol(c, integer=True) for c in "nkd")
N = sp.Symbol("N", integer=True, positive=True)
o, y, s, h, W = (sp.IndexedBase(c) for c in ("o", "y", "s", "h", "h.W"))

NOTATION = [  # expression, text, LaTeX
    ((o[n] - y[n]) / N, "(o[n] − y[n]) / N", r"\frac{{o}_{n} - {y}_{n}}{N}"),
    ((o[n] - y[n]) / (N * s[n] ** 2), "(o[n] − y[n]) / (N·s[n]²)", r"\frac{{o}_{n} - {y}_{n}}{N {s}_{n}^{2}}"),
    (-o[n] / 2, "−o[n] / 2", r"-\frac{{o}_{n}}{2}"),
    ((o[n] + y[n]) ** 3, "(o[n] + y[n])³", r"\left({o}_{n} + {y}_{n}\right)^{3}"),
    (o[n] ** 12, "o[n]^12", r"{o}_{n}^{12}"),
    (o[n] ** sp.Rational(1, 2), "sqrt(o[n])", r"\sqrt{{o}_{n}}"),
    (1 / (1 + 1 / o[n]), "1 / (1 + 1 / o[n])", None),
    (sp.Float(1.0) * o[n], "o[n]", r"{o}_{n}"),
    (sp.Float(0.5) * o[n], "o[n] / 2", r"\frac{{o}_{n}}{2}"),
    (sp.Sum(o[n] * h[n, k], (n, 0, N - 1)) * W[k, d], "h.W[k,d]·Σ_n h[n,k]·o[n]", None),
    (sp.Sum(o[n], (n, 0, N - 1)) / N, "(Σ_n o[n]) / N", None),
    (indicator(k, y[n]), "𝟙[k = y[n]]", r"\mathbb{1}[k = {y}_{n}]"),
    (fn.sigmoid(o[n]) - y[n], "σ(o[n]) − y[n]", r"\sigma\left({o}_{n}\right) - {y}_{n}"),
    (h[n, 2 * k + d - 1], "h[n,d+2·k−1]", None),
]


@pytest.mark.parametrize("expr,want_text,want_latex", NOTATION, ids=[t for _, t, _ in NOTATION])
def test_notation(expr, want_text, want_latex):
    from nndsl.calculus.notation import exact_numbers
    expr = exact_numbers(expr)
    assert text(expr) == want_text
    if want_latex is not None:
        assert latex(expr) == want_latex
    ev = Evaluator({"n": 3})
    assert ev(parse_text(want_text)) == pytest.approx(ev(expr))
    assert ev(parse_latex(latex(expr))) == pytest.approx(ev(expr))


# ------------------------------------------------------------------ Python API
def test_gradients_api():
    g = nndsl.gradients(ROOT / "examples" / "lecture_mlp.nn")
    assert g["o.W"].text == LECTURE["o.W"]
    assert g["h.W"].latex.startswith(r"\frac{\partial L}{\partial W^{(h)}_{k,d}} = \sum_{n}")
    assert isinstance(g["o.W"].expr, sp.Sum)
    assert g["e"].kind == "signal"
    assert "aligned" in g._repr_latex_() and g["o.W"]._repr_latex_().startswith("$")
    assert str(g) == "\n".join(LECTURE.values())


def test_gradients_of_several_losses():
    g = nndsl.gradients(ROOT / "examples" / "gan.nn")
    assert set(g.losses) == {"d_loss", "g_loss"}
    assert g["generator.h.W"].loss == "g_loss"
    assert g.losses["d_loss"]["discriminator.h.W"].text.startswith("∂L/∂discriminator.h.W[k,d] = ")


def test_check_api():
    summary = nndsl.check(ROOT / "examples" / "lecture_mlp.nn")
    assert str(summary).startswith("model lecture_mlp") and "<pre>" in summary._repr_html_()
    assert summary.model.name == "lecture_mlp"


def test_a_bad_model_raises_the_cli_diagnostic(tmp_path):
    bad = tmp_path / "bad.nn"
    bad.write_text("model b\ninput x[3]\ntarget y[3]\nh = dens(x, 3)\nloss squared(h, y)\n")
    with pytest.raises(CompileError) as info:
        nndsl.gradients(bad)
    assert "did you mean `dense`?" in info.value.rendered and f"{bad}:4:5" in info.value.rendered


def test_import_nndsl_is_cheap():
    import subprocess
    import sys
    code = "import sys, nndsl; print(any(m.startswith(('sympy', 'lark', 'numba')) for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout
    assert out.strip() == "False"
