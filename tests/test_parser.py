"""The parser accepts every form of LANGUAGE.md and builds the expected AST.

Shapes are compared as compact s-expressions (`sx`, spans left out), so each
table row reads like the source it came from; spans are checked separately by
the source text they cover.
"""
from __future__ import annotations

import dataclasses
import re

import pytest

from nndsl.frontend import ast
from nndsl.diagnostics import Span
from nndsl.frontend.parser import keywords, parse


# The `.nn` code blocks of LANGUAGE.md §2-§5, copied so that this test never
# depends on the shared file (tests/test_docs.py checks docs/language.md, which ships).
SNIPPETS = {
    "declarations": """
input  x[784]              # arrays passed as shape (N, 784)
input  img[1, 28, 28]      # (N, C, H, W), channels first
input  seq[T, 16]          # T is a free size, fixed per call: (N, T, 16)
target y[1]                # real-valued target, (N, 1)
target label: class(10)    # integer labels 0..9, shape (N,)
const  H = 64              # named integer/real constant, usable anywhere a number is
""",
    "user math": """
activation swish2(a) = a * sigmoid(2 * a)          # elementwise, any expression of a

loss huber(o, y, delta=1.0) = where(abs(o - y) <= delta,
                                    0.5 * (o - y)^2,
                                    delta * (abs(o - y) - 0.5 * delta))
                                                   # elementwise; summed over the
                                                   # example's elements

layer bilinear(x[i], z[j], units K) -> out[k:K] {  # index notation; k ranges over K
    param W[k, i, j] init=xavier
    param b[k] init=zeros
    out[k] = sum(i, j: W[k, i, j] * x[i] * z[j]) + b[k]
}
layer lecture_hidden(x[d], units K) -> h[k:K] {
    param W[k, d] init=normal(0.1)
    h[k] = tanh(sum(d: W[k, d] * x[d]))
}
""",
    "losses": """
loss squared(o, y)                       # ½ Σ_k (o_k − y_k)² per example
loss cross_entropy(o, label)             # softmax cross-entropy on logits, class labels
loss bce_logits(o, y)                    # Bernoulli likelihood on logits, y in [0,1]
loss gaussian_nll(mu, logvar, y)         # Gaussian likelihood, learned variance
loss gaussian_nll(mu, y, beta=4.0)       # Gaussian likelihood, fixed precision β
loss bce_logits(xr, x) + kl_normal(mu, logvar)      # sums, weights: 0.5 * a + b
loss huber(o, y, delta=2.0)              # user loss
""",
    "gan": """
network generator(z) { h = dense(z, 128, act=relu); return dense(h, 784, act=sigmoid) }
network discriminator(v) { h = dense(v, 128, act=leaky_relu); return dense(h, 1) }
fake = generator(z)
loss d_loss = bce_logits(discriminator(x), 1) + bce_logits(discriminator(fake), 0) wrt discriminator
loss g_loss = bce_logits(discriminator(fake), 1) wrt generator
""",
    "optimisation": """
optimizer sgd(lr=0.01, momentum=0.0, nesterov=false)
optimizer adagrad(lr=0.01, eps=1e-10)
optimizer rmsprop(lr=0.001, rho=0.9, eps=1e-8)
optimizer adam(lr=0.001, beta1=0.9, beta2=0.999, eps=1e-8)
optimizer d_loss: adam(lr=2e-4, beta1=0.5)         # per named loss
init xavier            # default for weights (biases start at zero): xavier | he | normal(std) | uniform(a) | zeros
train batch=64 epochs=10 shuffle=true clip_norm=5.0 seed=0    # defaults for fit/`nndsl train`
""",
    # §3's built-ins, one call each, and the expression example.
    "layers": """
input x[784]
h1 = dense(x, 128, act=relu, bias=true, init=he)
c = conv2d(img, 8, 3, stride=1, pad=0, act=relu)
p = maxpool(c, 2); q = avgpool(c, 2, stride=2)
f = flatten(p)
r = rnn(seq, 32, act=tanh, return=all)
l = lstm(r, 32, return=last)
g = gru(seq, 16, return=all)
d = dropout(h1, 0.5)
n = gaussian_noise(x, 0.1); m2 = mask_noise(x, 0.3)
s = sample_normal(mu, logvar, sample=true)
k = concat(a, b, c)
z = mu + exp(0.5 * logvar) * eps
w = where(a < b, leaky_relu(a, 0.01), max(a, b))
output z, w
""",
}


def with_model(code: str) -> str:
    """Fragments in LANGUAGE.md have no `model` line; add one."""
    return code if re.match(r"\s*model\b", code) else "model m\n" + code


def one(code: str):
    """The single statement of `code`, parsed after a `model m` line (so it is on line 2)."""
    statements = parse("model m\n" + code, "t.nn").statements
    assert len(statements) == 2, statements
    return statements[1]


def sx(node) -> str:
    """A compact, span-free rendering: `(+ a b)`, `dense(x, 128, act=relu)`, `Assign(h, ...)`."""
    if isinstance(node, ast.Num):
        return str(int(node.value)) if node.is_int else repr(node.value)
    if isinstance(node, ast.Bool):
        return "true" if node.value else "false"
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.BinOp):
        return f"({node.op} {sx(node.left)} {sx(node.right)})"
    if isinstance(node, ast.UnaryOp):
        return f"({node.op} {sx(node.operand)})"
    if isinstance(node, ast.Call):
        return f"{node.func}({', '.join(map(sx, node.args + node.kwargs))})"
    if isinstance(node, ast.KwArg):
        return f"{node.name}={sx(node.value)}"
    if isinstance(node, ast.Index):
        return f"{node.name}[{', '.join(map(sx, node.indices))}]"
    if isinstance(node, ast.Sum):
        return f"sum({', '.join(node.indices)}: {sx(node.body)})"
    if isinstance(node, tuple):
        return "[" + ", ".join(map(sx, node)) + "]"
    if dataclasses.is_dataclass(node):
        # an optional field left at its default None (an input's `class(V)`) is not shown
        values = [getattr(node, f.name) for f in dataclasses.fields(node) if not f.name.endswith("span")
                  and not (f.default is None and getattr(node, f.name) is None)]
        # optional per-index sizes (`param W[f, c, p:K]`) are shown only where one is given
        fields = [sx(v) for v in values if not (isinstance(v, tuple) and v and all(x is None for x in v))]
        return f"{type(node).__name__}({', '.join(fields)})"
    return str(node)


def covered(source: str, span: Span) -> str:
    """The source text a span covers."""
    lines = source.splitlines(keepends=True)
    offset = lambda line, col: sum(map(len, lines[:line - 1])) + col - 1   # noqa: E731
    return source[offset(span.line, span.col):offset(span.end_line, span.end_col)]


# ------------------------------------------------------------------ all forms
@pytest.mark.parametrize("name", SNIPPETS)
def test_snippet_parses(name):
    program = parse(with_model(SNIPPETS[name]), f"{name}.nn")
    assert isinstance(program.statements[0], ast.ModelDecl)
    assert len(program.statements) > 1


# --------------------------------------------------------------- AST shapes
SHAPES = [
    # declarations
    ("input x[784]", "InputDecl(x, [784])"),
    ("input img[1, 28, 28]", "InputDecl(img, [1, 28, 28])"),
    ("input seq[T, 16]", "InputDecl(seq, [T, 16])"),
    ("target y[1]", "TargetDecl(y, [1], None)"),
    ("target label: class(10)", "TargetDecl(label, None, 10)"),
    ("const H = 64", "ConstDecl(H, 64)"),
    ("const lr = 1e-3", "ConstDecl(lr, 0.001)"),
    ("output a, b", "OutputDecl([a, b])"),
    # assignments and calls: positional, then keyword (`return` is an option name)
    ("h = dense(x, 128, act=relu)", "Assign(h, dense(x, 128, act=relu))"),
    ("h = rnn(x, 8, return=all)", "Assign(h, rnn(x, 8, return=all))"),
    ("h = dense(x, 3, init=normal(0.1))", "Assign(h, dense(x, 3, init=normal(0.1)))"),
    ("s = sample_normal(mu, lv, sample=true)", "Assign(s, sample_normal(mu, lv, sample=true))"),
    ("h = dense(x, 3,)", "Assign(h, dense(x, 3))"),                 # trailing comma
    ("h = flatten(\n  x\n)", "Assign(h, flatten(x))"),               # newlines inside ( )
    # precedence and associativity
    ("z = mu + exp(0.5 * logvar) * eps", "Assign(z, (+ mu (* exp((* 0.5 logvar)) eps)))"),
    ("v = a - b - c", "Assign(v, (- (- a b) c))"),
    ("v = a / b * c", "Assign(v, (* (/ a b) c))"),
    ("v = a ^ b ^ c", "Assign(v, (^ a (^ b c)))"),
    ("v = a ** 2", "Assign(v, (^ a 2))"),                            # `**` is stored as ^
    ("v = -a^2", "Assign(v, (- (^ a 2)))"),                          # -(a^2), as in Python
    ("v = a^-b", "Assign(v, (^ a (- b)))"),
    ("v = +a", "Assign(v, a)"),                                      # unary plus is dropped
    ("v = -(a + b) * 2", "Assign(v, (* (- (+ a b)) 2))"),
    ("v = a + b < c * d", "Assign(v, (< (+ a b) (* c d)))"),
    ("v = where(a >= 0, a, 0.1 * a)", "Assign(v, where((>= a 0), a, (* 0.1 a)))"),
    ("v = where(a == b, 1, where(a != b, 2, 3))", "Assign(v, where((== a b), 1, where((!= a b), 2, 3)))"),
    ("v = where(a <= b, true, false)", "Assign(v, where((<= a b), true, false))"),
    ("v = x[c, i*2 + p]", "Assign(v, x[c, (+ (* i 2) p)])"),
    # numbers: is_int only without '.' and exponent
    ("v = 3 + 0.5 + .5 + 2e-4 + 1E3 + 7.", "Assign(v, (+ (+ (+ (+ (+ 3 0.5) 0.5) 0.0002) 1000.0) 7.0))"),
    # keywords glued to other letters are plain names
    ("modelx = inputs + letx + sum1 + return_ + truex", "Assign(modelx, (+ (+ (+ (+ inputs letx) sum1) return_) truex))"),
    # user math
    ("activation swish2(a) = a * sigmoid(2 * a)",
     "ActivationDef(swish2, [FnParam(a, None)], (* a sigmoid((* 2 a))))"),
    ("loss huber(o, y, delta=1.0) = where(abs(o - y) <= delta,\n    0.5 * (o - y)^2,\n    delta)",
     "LossDef(huber, [FnParam(o, None), FnParam(y, None), FnParam(delta, 1.0)], "
     "where((<= abs((- o y)) delta), (* 0.5 (^ (- o y) 2)), delta))"),
    # layers: tensor args, size args (`units K`), affine indices, param options
    ("layer bilinear(x[i], z[j], units K) -> out[k:K] {\n"
     "    param W[k, i, j] init=xavier\n"
     "    param b[k] init=zeros\n"
     "    out[k] = sum(i, j: W[k, i, j] * x[i] * z[j]) + b[k]\n"
     "}",
     "LayerDef(bilinear, [TensorArg(x, [i]), TensorArg(z, [j]), SizeArg(units, K)], out, "
     "[OutIndex(k, K)], [ParamDecl(W, [k, i, j], xavier), ParamDecl(b, [k], zeros), "
     "IndexAssign(out, [k], (+ sum(i, j: (* (* W[k, i, j] x[i]) z[j])) b[k]))])"),
    ("layer conv(x[c, h, w], units F, size S) -> y[f:F, i, j] { param W[f, c, p, q] init=normal(0.1); "
     "y[f, i, j] = sum(c, p, q: W[f, c, p, q] * x[c, i*2 + p, j*2 + q]) }",
     "LayerDef(conv, [TensorArg(x, [c, h, w]), SizeArg(units, F), SizeArg(size, S)], y, "
     "[OutIndex(f, F), OutIndex(i, None), OutIndex(j, None)], [ParamDecl(W, [f, c, p, q], normal(0.1)), "
     "IndexAssign(y, [f, i, j], sum(c, p, q: (* W[f, c, p, q] x[c, (+ (* i 2) p), (+ (* j 2) q)])))])"),
    ("layer conv1(x[c, t], units F, units L, units K) -> y[f:F, i:L] { param W[f, c, p:K]; "
     "y[f, i] = sum(c, p: W[f, c, p] * x[c, i*2 + p]) }",
     "LayerDef(conv1, [TensorArg(x, [c, t]), SizeArg(units, F), SizeArg(units, L), SizeArg(units, K)], y, "
     "[OutIndex(f, F), OutIndex(i, L)], [ParamDecl(W, [f, c, p], None, [None, None, K]), "
     "IndexAssign(y, [f, i], sum(c, p: (* W[f, c, p] x[c, (+ (* i 2) p)])))])"),
    ("layer id(x[i]) -> o[i] {\n  t = 2\n  o[i] = t * x[i]\n}",
     "LayerDef(id, [TensorArg(x, [i])], o, [OutIndex(i, None)], [IndexAssign(t, [], 2), "
     "IndexAssign(o, [i], (* t x[i]))])"),
    # networks: one line with `;`, or several lines
    ("network generator(z) { h = dense(z, 128, act=relu); return dense(h, 784) }",
     "NetworkDef(generator, [z], [Assign(h, dense(z, 128, act=relu)), Return(dense(h, 784))])"),
    ("network enc(x, c) {\n\n  h = dense(x, 64)   # hidden\n  return concat(h, c)\n}",
     "NetworkDef(enc, [x, c], [Assign(h, dense(x, 64)), Return(concat(h, c))])"),
    ("network empty() { }", "NetworkDef(empty, [], [])"),
    # loss statements: calls combined with + and scaling; named, with wrt
    ("loss squared(o, y)", "LossStmt(None, squared(o, y), [])"),
    ("loss bce_logits(xr, x) + kl_normal(mu, logvar)",
     "LossStmt(None, (+ bce_logits(xr, x) kl_normal(mu, logvar)), [])"),
    ("loss 0.5 * a(o, y) + b(o, y)", "LossStmt(None, (+ (* 0.5 a(o, y)) b(o, y)), [])"),
    ("loss d_loss = bce_logits(d(x), 1) + bce_logits(d(f), 0) wrt discriminator",
     "LossStmt(d_loss, (+ bce_logits(d(x), 1) bce_logits(d(f), 0)), [discriminator])"),
    ("loss g = f(o) wrt gen, enc", "LossStmt(g, f(o), [gen, enc])"),
    # optimizer: a bare name is a call without arguments
    ("optimizer adam", "OptimizerStmt(None, adam())"),
    ("optimizer adam()", "OptimizerStmt(None, adam())"),
    ("optimizer adam(lr=1e-3)", "OptimizerStmt(None, adam(lr=0.001))"),
    ("optimizer d_loss: adam(lr=2e-4, beta1=0.5)", "OptimizerStmt(d_loss, adam(lr=0.0002, beta1=0.5))"),
    ("optimizer g_loss: sgd", "OptimizerStmt(g_loss, sgd())"),
    ("init xavier", "InitStmt(xavier)"),
    ("init normal(0.1)", "InitStmt(normal(0.1))"),
    ("train batch=64 epochs=10 shuffle=true clip_norm=5.0 seed=0",
     "TrainStmt([batch=64, epochs=10, shuffle=true, clip_norm=5.0, seed=0])"),
    ("train", "TrainStmt([])"),
]


@pytest.mark.parametrize("code, expected", SHAPES, ids=[s[0].split("\n")[0][:40] for s in SHAPES])
def test_shape(code, expected):
    assert sx(one(code)) == expected


def test_numbers_keep_int_flag():
    value = one("v = f(3, 3.0, 3e0, 30)").value
    assert [(a.value, a.is_int) for a in value.args] == [(3, True), (3, False), (3, False), (30, True)]


@pytest.mark.parametrize("sep", ["\n", ";", "\n\n  # comment\n\n", " ;; \n ; "])
def test_statement_separators(sep):
    program = parse(f"model m{sep}a = 1{sep}b = 2{sep}", "t.nn")
    assert [sx(s) for s in program.statements] == ["ModelDecl(m)", "Assign(a, 1)", "Assign(b, 2)"]


def test_crlf_and_tabs_give_the_same_tree():
    lf = SNIPPETS["user math"] + SNIPPETS["gan"]
    program = parse(with_model(lf), "lf.nn")
    crlf = parse(with_model(lf).replace("\n", "\r\n"), "crlf.nn")
    tabs = parse(with_model(lf).replace("    ", "\t"), "tabs.nn")
    assert sx(crlf.statements) == sx(tabs.statements) == sx(program.statements)
    # CRLF does not move columns; a tab counts as one column
    assert crlf.statements == program.statements
    assert tabs.statements[3].body[0].span.col == 2           # "\tparam W..."


def test_program_keeps_path_and_source():
    program = parse("model mnist\n", "models/mnist.nn")
    assert (program.path, program.source) == ("models/mnist.nn", "model mnist\n")
    assert program.statements == (ast.ModelDecl("mnist", Span(1, 1, 1, 12)),)


def test_keywords_are_reserved_words():
    assert {"model", "input", "return", "sum", "wrt", "true", "class", "param"} <= keywords()
    assert "units" not in keywords() and "dense" not in keywords()


# -------------------------------------------------------------------- spans
def pick(statement, path: str):
    """`pick(stmt, "value.args.1")`: walk attributes and tuple indices."""
    node = statement
    for part in path.split(".") if path else []:
        node = node[int(part)] if part.isdigit() else getattr(node, part)
    return node


SPANS = [
    # (statement source, path to a node, span attribute, the text it covers)
    ("h = dense(x, 128, act=relu)", "", "span", "h = dense(x, 128, act=relu)"),
    ("h = dense(x, 128, act=relu)", "", "name_span", "h"),
    ("h = dense(x, 128, act=relu)", "value", "span", "dense(x, 128, act=relu)"),
    ("h = dense(x, 128, act=relu)", "value", "func_span", "dense"),
    ("h = dense(x, 128, act=relu)", "value.args.1", "span", "128"),
    ("h = dense(x, 128, act=relu)", "value.kwargs.0", "span", "act=relu"),
    ("v = (a + b) * c", "value", "span", "(a + b) * c"),        # parentheses are included
    ("v = (a + b) * c", "value.left", "span", "a + b"),
    ("v = -x[i, j*2]", "value", "span", "-x[i, j*2]"),
    ("v = -x[i, j*2]", "value.operand", "name_span", "x"),
    ("v = -x[i, j*2]", "value.operand.indices.1", "span", "j*2"),
    ("v = sum(i: w[i]) + 1", "value.left", "span", "sum(i: w[i])"),
    ("v = true", "value", "span", "true"),
    ("input seq[T, 16]", "dims.0", "span", "T"),
    ("target label: class(10)", "", "name_span", "label"),
    ("output a, b", "names.1", "span", "b"),
    ("loss g = f(o) wrt gen, enc", "", "name_span", "g"),
    ("loss g = f(o) wrt gen, enc", "wrt.1", "span", "enc"),
    ("optimizer adam", "call", "span", "adam"),
    ("optimizer d: adam(lr=1)", "loss", "span", "d"),
    ("activation sw(a, beta=1.0) = a", "params.1", "span", "beta=1.0"),
    ("layer f(x[i], units K) -> o[k:K] { param W[k, i] }", "args.1", "span", "units K"),
    ("layer f(x[i], units K) -> o[k:K] { param W[k, i] }", "out_indices.0", "span", "k:K"),
    ("layer f(x[i], units K) -> o[k:K] { param W[k, i] }", "body.0", "name_span", "W"),
    ("network n(z) { return z }", "body.0", "span", "return z"),
]


@pytest.mark.parametrize("code, path, attr, text", SPANS, ids=[f"{s[0][:24]}:{s[1]}.{s[2]}" for s in SPANS])
def test_span(code, path, attr, text):
    source = "model m\n" + code
    statement = parse(source, "t.nn").statements[1]
    assert covered(source, getattr(pick(statement, path), attr)) == text


def test_multiline_spans():
    code = "loss huber(o, y, delta=1.0) = where(abs(o - y) <= delta,\n    0.5 * (o - y)^2,\n    delta)\n"
    statement = one(code)
    assert statement.span == Span(2, 1, 4, 11)               # one past the final `)`
    assert statement.name_span == Span(2, 6, 2, 11)
    assert statement.body.args[1].span == Span(3, 5, 3, 20)
    layer = one("layer f(x[i]) -> o[i] {\n  o[i] = x[i]\n}")
    assert (layer.span.line, layer.span.end_line, layer.span.end_col) == (2, 4, 2)
    assert layer.body[0].span == Span(3, 3, 3, 14)


def test_grammar_has_no_conflicts_or_collisions():
    """Lark's strict mode rejects any shift/reduce conflict and any two terminals
    that could match the same text (that check needs `interegular`)."""
    pytest.importorskip("interegular")
    from lark import Lark

    from nndsl.frontend.parser import _PostLexer
    from nndsl.resources import grammar_path
    Lark(grammar_path().read_text(encoding="utf-8"), parser="lalr", lexer="contextual",
         postlex=_PostLexer(), strict=True)


def test_byte_order_mark_is_ignored():
    program = parse("\ufeffmodel m\nh = 1\n", "bom.nn")
    assert program.statements[0].span == Span(1, 1, 1, 8)
