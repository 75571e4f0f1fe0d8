"""Semantic errors: each bad model gives exactly the expected diagnostic, at the
offending token's line:col, with the key words of its message and hint; several
independent mistakes are all reported in one run, and cascades are not."""
from __future__ import annotations

import pytest

from nndsl.cli import main
from nndsl.diagnostics import CompileError
from nndsl.frontend import load_source

# Every case is this prelude (lines 1-7) followed by its own lines (from line 8).
PRELUDE = """model m
input x[10]
input img[1, 8, 8]
input seq[T, 4]
target y[1]
target label: class(10)
o = dense(x, 1)
"""
LOSS = "loss squared(o, y)"

BILINEAR_BAD = """layer bl(x[i], z[j], units K) -> out[k:K] {
    param W[k, i, j]
    out[k] = sum(i: W[k, i, j] * x[i] * z[j])
}"""

# (id, lines after the prelude, "line:col", message words, hint words)
ERRORS = [
    # ---------------------------------------------------------- unknown names
    ("unknown layer", ["h = dens(x, 3)", LOSS], "8:5",
     ["unknown layer or function `dens`"], ["did you mean `dense`?"]),
    ("unknown activation", ["h = dense(x, 3, act=rleu)", LOSS], "8:21",
     ["unknown activation `rleu`"], ["did you mean `relu`?"]),
    ("unknown keyword argument", ["h = dense(x, 3, actt=relu)", LOSS], "8:17",
     ["`dense` has no argument `actt`"], ["did you mean `act`?"]),
    ("act on lstm", ["h = lstm(seq, 3, act=relu)", LOSS], "8:18",
     ["`lstm` has no argument `act`"], ["usage: lstm(x, hidden, return=all"]),
    ("unknown optimizer", [LOSS, "optimizer adan(lr=0.1)"], "9:11",
     ["unknown optimizer `adan`"], ["did you mean `adam`?"]),
    ("unknown optimizer argument", [LOSS, "optimizer adam(betta1=0.5)"], "9:16",
     ["`adam` has no argument `betta1`"], ["did you mean `beta1`?"]),
    ("unknown loss", ["loss squard(o, y)"], "8:6",
     ["unknown loss `squard`"], ["did you mean `squared`?"]),
    ("unknown initialiser", [LOSS, "init xavir"], "9:6",
     ["unknown initialiser `xavir`"], ["did you mean `xavier`?"]),
    ("unknown train option", [LOSS, "train epoch=3"], "9:7",
     ["`train` has no argument `epoch`"], ["did you mean `epochs`?"]),
    ("undefined name", ["h = dense(xx, 3)", LOSS], "8:11",
     ["undefined name `xx`"], ["did you mean `x`?"]),
    ("use before definition", ["h = g + 1", "g = dense(x, 10)", LOSS], "8:5",
     ["`g` is used before its definition"], []),
    ("const before definition", ["h = dense(x, H)", "const H = 3", LOSS], "8:14",
     ["`H` is used before its definition"], []),
    ("duplicate name", ["h = dense(x, 3)", "h = dense(x, 4)", LOSS], "9:1",
     ["`h` is already defined"], []),
    ("reserved name", ["relu = dense(x, 3)", LOSS], "8:1",
     ["`relu` is a built-in function and cannot be redefined"], []),
    ("unknown output", [LOSS, "output oo"], "9:8", ["unknown output `oo`"], ["`o`"]),
    ("network cannot see outer nodes",
     ["network g(v) { return dense(x, 2) }", "h = g(x)", LOSS], "8:29",
     ["`x` is not visible inside network `g`"], ["pass it as an argument"]),
    ("network used as a value", ["network g(v) { return v }", "h = g", LOSS], "9:5",
     ["`g` is a network, not a value"], ["call it"]),
    # ---------------------------------------------------------------- shapes
    ("loss operand shape mismatch", ["p = dense(x, 10)", "loss squared(p, y)"], "9:17",
     ["`squared` expects operands of the same shape", "`p` has shape (10,)",
      "`y` has shape (1,)"], []),
    ("cross_entropy class count", ["p = dense(x, 5)", "loss cross_entropy(p, label)"], "9:20",
     ["class count mismatch", "`p` has 5 logits", "`label` has 10 classes"], ["10 units"]),
    ("cross_entropy on real target", ["loss cross_entropy(o, y)"], "8:23",
     ["`cross_entropy` expects class labels", "`y` has shape (1,)"], ["class(K)"]),
    ("class labels in squared", ["p = dense(x, 10)", "loss squared(p, label)"], "9:17",
     ["`label` holds class labels"], ["cross_entropy"]),
    ("concat rank mismatch", ["h = concat(x, img)", LOSS], "8:15",
     ["`concat` operands must have the same rank", "`x` has shape (10,)",
      "`img` has shape (1, 8, 8)"], []),
    ("dense on a sequence of free width", ["input v[T, K]", "h = dense(v, 3)", LOSS], "9:11",
     ["`dense` needs a fixed feature size", "`v` has shape (T, K)"], []),
    ("dense on an image", ["h = dense(img, 3)", LOSS], "8:11",
     ["`dense` expects a vector", "`img` is an image of shape (1, 8, 8)"],
     ["flatten(img)"]),
    ("dense on a free size", ["input v[N]", "h = dense(v, 3)", LOSS], "9:11",
     ["`dense` needs fixed sizes", "free size `N`"], []),
    ("rnn on a vector", ["h = rnn(x, 3)", LOSS], "8:9",
     ["`rnn` expects a sequence (T, D)", "`x` is a vector"], ["seq[T, D]"]),
    ("kernel larger than padded input", ["h = conv2d(img, 4, 11, pad=1)", LOSS], "8:20",
     ["kernel 11x11 is larger than the padded input 10x10"], ["smaller kernel"]),
    ("pool window larger than input", ["h = maxpool(img, 9)", LOSS], "8:18",
     ["pool window 9x9 is larger than the input 8x8"], []),
    ("pool window leaves nothing after a conv", ["c = conv2d(img, 2, 7)", "h = avgpool(c, 3)", LOSS], "9:16",
     ["pool window 3x3 is larger than the input 2x2 of `c`"], []),
    ("conv2d on a vector", ["h = conv2d(x, 2, 3)", LOSS], "8:12",
     ["`conv2d` expects an image (channels, height, width)", "`x` is a vector"], ["input img[C, H, W]"]),
    ("elementwise broadcast", ["h = x + img", LOSS], "8:5",
     ["shapes do not broadcast", "`x` has shape (10,)", "`img` has shape (1, 8, 8)"], []),
    ("class labels in an expression", ["h = label * 2", LOSS], "8:5",
     ["`label` holds class labels"], []),
    ("network called with another shape",
     ["network g(v) { return dense(v, 2) }", "a = g(x)", "b = g(y)", LOSS], "10:5",
     ["network `g` is called with operands of another shape", "`g.out.W`"],
     ["share its parameters"]),
    # ---------------------------------------------------------------- values
    ("stride <= 0", ["h = conv2d(img, 4, 3, stride=0)", LOSS], "8:30",
     ["`stride` of `conv2d` must be a positive integer, got 0"], []),
    ("size <= 0", ["h = maxpool(img, 0)", LOSS], "8:18",
     ["`size` of `maxpool` must be a positive integer, got 0"], []),
    ("pool stride <= 0", ["h = maxpool(img, 2, stride=0)", LOSS], "8:28",
     ["`stride` of `maxpool` must be a positive integer, got 0"], []),
    ("pad < 0", ["h = conv2d(img, 2, 3, pad=-1)", LOSS], "8:27",
     ["`pad` of `conv2d` must be an integer ≥ 0, got -1"], []),
    ("units not an integer", ["const H = 2.5", "h = dense(x, H)", LOSS], "9:14",
     ["`units` of `dense` must be an integer, got 2.5"], []),
    ("dropout p = 1", ["h = dropout(x, 1)", LOSS], "8:16",
     ["`p` of `dropout` must be in [0, 1), got 1"], []),
    ("negative noise", ["h = gaussian_noise(x, -0.5)", LOSS], "8:23",
     ["`std` of `gaussian_noise` must be non-negative"], []),
    ("bad choice", ["h = rnn(seq, 3, return=first)", LOSS], "8:24",
     ["`return` of `rnn` must be `all` or `last`, got `first`"], []),
    ("missing argument", ["h = dense(x)", LOSS], "8:5",
     ["`dense` is missing argument `units`"], ["usage: dense(x, units, act=identity"]),
    ("too many arguments", ["h = maxpool(img, 2, 2, 2)", LOSS], "8:24",
     ["`maxpool` takes at most 3 positional arguments, got 4"], []),
    ("axis size 0", ["input v[0]", LOSS], "8:9",
     ["an axis size must be a positive integer, got 0"], []),
    # -------------------------------------------------------------- expressions
    ("comparison outside where", ["h = x > 0", LOSS], "8:5",
     ["comparison `>` outside `where`"], ["where(cond, a, b)"]),
    ("where without a comparison", ["h = where(o, 1, 2)", LOSS], "8:11",      # issue 26: a build crash
     ["the condition of `where` must be a comparison"], ["where(a > b, x, y)"]),
    ("user activation arity", ["activation sw(a) = a * sigmoid(a)", "h = sw(x, x)", LOSS], "9:5",
     ["`sw` takes 1 argument, got 2"], ["usage: sw(a)"]),
    ("recursive activation", ["activation f(a) = f(a) + 1", LOSS], "8:12",
     ["activation `f` is recursive"], []),
    ("unknown name in activation", ["activation f(a) = a * b", LOSS], "8:23",
     ["unknown name `b` in `f`"], []),
    ("indexing outside a layer", ["h = x[0]", LOSS], "8:5",
     ["indexing `x[...]` is only allowed inside a `layer` body"], []),
    # ------------------------------------------------------------- user layers
    ("unbound index", ["layer f(x[i], units K) -> out[k:K] {",
                       "    param W[k, i]", "    out[k] = sum(i: W[k, i] * x[q])", "}", LOSS],
     "10:33", ["index `q` is not bound"], ["sum(q: ...)"]),
    ("index not summed", [BILINEAR_BAD, LOSS], "10:29",
     ["index `j` is not summed over"], ["sum(j: ...)"]),
    ("inconsistent index sizes", ["layer f(a[i], b[i]) -> out[i] {", "    out[i] = a[i] * b[i]",
                                  "}", "h = f(x, y)", LOSS], "11:10",
     ["index `i` of `f` is bound to size 10 by `a` and to size 1 by `b`"], []),
    ("user layer rank", ["layer f(a[i]) -> out[i] {", "    out[i] = a[i]", "}", "h = f(img)", LOSS],
     "11:7", ["`f` expects `a` of rank 1", "`img` has shape (1, 8, 8)"], []),
    ("window outside the input", ["layer diff(a[t]) -> out[i: t] {", "    out[i] = a[i + 1]",
                                  "}", "h = diff(x)", LOSS], "11:5",
     ["the index `i + 1` of `a` ranges over 1..10, outside axis 0 of size 10"], []),
    ("index overruns an axis", ["layer f(a[i], b[j]) -> out[i] {", "    out[i] = a[i] * b[i]",
                                "}", "h = f(x, y)", LOSS], "11:5",
     ["the index `i` (size 10) overruns axis 0 of `b`, which has size 1"], []),
    ("product of indices", ["layer f(a[i]) -> out[i] {", "    out[i] = a[i * i]", "}", LOSS],
     "9:16", ["index expressions must be affine"], ["i*2 + p"]),
    ("param index not in signature", ["layer f(a[i]) -> out[i] {", "    param W[p]",
                                      "    out[i] = a[i]", "}", LOSS],
     "9:5", ["index `p` of param `W` is not bound by the signature"], []),
    ("window size on a bound index", ["layer f(a[i]) -> out[i] {", "    param W[i:3]",
                                      "    out[i] = W[i] * a[i]", "}", LOSS],
     "9:5", ["index `i` of param `W` is already bound"], ["without a size"]),
    ("unknown window size", ["layer f(a[i]) -> out[i] {", "    param W[p:Q]",
                             "    out[i] = sum(p: W[p]) * a[i]", "}", LOSS],
     "9:15", ["unknown size `Q` in param `W`"], []),
    ("left side not like output", ["layer f(a[i], units K) -> out[k:K] {",
                                   "    out[i] = a[i]", "}", LOSS],
     "9:5", ["the left side must be indexed like the output: `out[k]`"], []),
    # ---------------------------------------------------------------- losses
    ("model without a loss", ["h = dense(x, 3)"], "1:1",
     ["the model has no loss"], ["loss squared(o, y)"]),
    ("two unnamed losses", [LOSS, "loss bce_logits(o, y)"], "9:1",
     ["only one unnamed loss"], ["loss NAME = ..."]),
    ("duplicate loss name", ["loss a = squared(o, y)", "loss a = bce_logits(o, y)"], "9:6",
     ["loss `a` is already defined"], []),
    ("loss not a weighted sum", ["loss squared(o, y) * o"], "8:6",
     ["a loss must be a weighted sum of loss calls"], []),
    ("loss call in an expression", ["h = squared(o, y)", LOSS], "8:5",
     ["the loss `squared` can only be used in a `loss` statement"], []),
    ("wrt unknown network", ["network gen(v) { return dense(v, 10) }", "f = gen(x)",
                             "loss squared(dense(f, 1), y) wrt genn"], "10:34",
     ["no network or layer named `genn`"], ["did you mean `gen`?"]),
    ("wrt something without parameters", ["loss squared(o, y) wrt x"], "8:24",
     ["`x` has no parameters"], []),
    ("loss independent of wrt", ["h = dense(x, 1)", "loss squared(o, y) wrt h"], "9:24",
     ["loss `loss` does not depend on `h`"], []),
    ("loss without parameters", ["loss squared(y, y)"], "8:1",
     ["does not depend on any parameter"], []),
    ("optimizer for unknown loss", ["loss main = squared(o, y)", "optimizer mian: adam"], "9:11",
     ["optimizer for unknown loss `mian`"], ["did you mean `main`?"]),
    ("lr <= 0", [LOSS, "optimizer sgd(lr=0)"], "9:18",
     ["`lr` of `sgd` must be positive, got 0"], []),
    ("momentum = 1", [LOSS, "optimizer sgd(momentum=1)"], "9:24",
     ["`momentum` of `sgd` must be in [0, 1), got 1"], []),
    ("bad init argument", [LOSS, "init normal(0)"], "9:13",
     ["`std` of `normal` must be positive, got 0"], []),
    ("train batch 0", [LOSS, "train batch=0"], "9:13",
     ["`batch` of `train` must be a positive integer, got 0"], []),
    # ------------------------------------------------- the training kit (issue 23)
    ("embed of real numbers", ["e = embed(x, 4)", LOSS], "8:11",
     ["`embed` expects class indices, but `x` has shape (10,)"], ["input chars[T]: class(V)"]),
    ("class input into dense", ["input c[T]: class(5)", "h = dense(c, 3)", LOSS], "9:11",
     ["`c` holds class labels (class(5)) and is not a number"], ["embed(c, DIM)"]),
    ("class input in an expression", ["input c: class(5)", "h = c * 2", LOSS], "9:5",
     ["`c` holds class labels (class(5)) and is not a number"], ["embed(c, DIM)"]),
    ("class input with two axes", ["input c[T, 3]: class(5)", LOSS], "8:1",
     ["a class input holds one class index per example or per step"], ["input c[T]: class(...)"]),
    ("layernorm of an image", ["h = layernorm(img)", LOSS], "8:15",
     ["`layernorm` expects a vector (K) or a sequence (T, K), but `img` is an image"], []),
    ("layernorm of class labels", ["input c[T]: class(5)", "h = layernorm(c)", LOSS], "9:15",
     ["`c` holds class labels (class(5)) and is not a number"], ["embed(c, DIM)"]),
    ("batchnorm momentum above 1", ["h = batchnorm(x, momentum=1.5)", LOSS], "8:27",
     ["`momentum` of `batchnorm` must be in [0, 1], got 1.5"], []),
    ("layernorm eps 0", ["h = layernorm(x, eps=0)", LOSS], "8:22",
     ["`eps` of `layernorm` must be positive, got 0"], []),
    ("batchnorm of a free feature size", ["input s[T, K]", "h = batchnorm(s)", LOSS], "9:15",
     ["`batchnorm` needs fixed sizes, but `s` has shape (T, K)"], []),
    ("unknown initialiser one", [LOSS, "init one"], "9:6",
     ["unknown initialiser `one`"], ["did you mean `ones`?"]),
    # -------------------------------------------------------------- networks
    ("network arity", ["network g(a, b) { return a + b }", "h = g(x)", LOSS], "9:5",
     ["network `g` takes 2 arguments, got 1"], ["usage: g(a, b)"]),
    ("recursive network", ["network g(v) { return g(v) }", "h = g(x)", LOSS], "8:23",
     ["network `g` calls itself"], []),
    ("network without return", ["network g(v) { h = dense(v, 3) }", LOSS], "8:9",
     ["network `g` has no `return`"], ["return EXPR"]),
    ("error in an uncalled network", ["network g(v) { return dense(v, 3, act=rleu) }", LOSS],
     "8:39", ["unknown activation `rleu`"], []),
]


def _diagnostics(source: str):
    with pytest.raises(CompileError) as info:
        load_source(source, "m.nn")
    return info.value.diagnostics


@pytest.mark.parametrize("lines, where, words, hint_words",
                         [row[1:] for row in ERRORS], ids=[row[0] for row in ERRORS])
def test_semantic_error(lines, where, words, hint_words):
    diags = _diagnostics(PRELUDE + "\n".join(lines) + "\n")
    shown = [f"{d.span.line}:{d.span.col} {d.message} | {d.hint}" for d in diags]
    assert len(diags) == 1, shown                 # one mistake, one diagnostic
    (d,) = diags
    assert f"{d.span.line}:{d.span.col}" == where, shown
    for w in words:
        assert w in d.message, shown
    for w in hint_words:
        assert d.hint and w in d.hint, shown


def test_error_table_is_large_and_distinct():
    assert len(ERRORS) >= 25
    assert len({row[0] for row in ERRORS}) == len(ERRORS)
    assert len({(row[3][0]) for row in ERRORS}) >= 25


def test_notes_point_at_the_earlier_definition():
    (d,) = _diagnostics(PRELUDE + "h = dense(x, 3)\nh = dense(x, 4)\n" + LOSS)
    assert [(text, span.line, span.col) for text, span in d.notes] == [
        ("previous definition (node) here", 8, 1)]
    (d,) = _diagnostics(PRELUDE + "h = g + 1\ng = dense(x, 10)\n" + LOSS)
    assert [(text, span.line) for text, span in d.notes] == [("defined here", 9)]


def test_several_independent_errors_in_one_run():
    source = PRELUDE + "\n".join([
        "a = dense(x, 0)",                     # 8: units
        "b = conv2d(img, 4, 3, stride=-1)",    # 9: stride
        "c = dense(xx, 3)",                    # 10: undefined
        "d = maxpool(img, 2, act=relu)",       # 11: unknown kwarg
        "loss squared(o, y)",
        "optimizer adam(lr=-1, beta1=1)",      # 13: lr and beta1
    ]) + "\n"
    diags = _diagnostics(source)
    assert [(d.span.line, d.span.col) for d in diags] == [
        (8, 14), (9, 30), (10, 11), (11, 21), (13, 19), (13, 29)]


def test_cascades_are_suppressed():
    source = PRELUDE + "\n".join([
        "h = dense(xx, 3)",                    # the only mistake
        "k = dense(h, 2) + h",
        "network g(v) { return dense(v, 1) }",
        "f = g(k)",
        "loss squared(f, y) + squared(dense(k, 1), y) wrt g",
        "loss other = squared(k, 0)",
        "output k, f",
    ]) + "\n"
    diags = _diagnostics(source)
    assert [(d.span.line, d.message) for d in diags] == [(8, "undefined name `xx`")]


def test_one_error_per_mistake_in_network_called_twice():
    source = PRELUDE + "network g(v) { return dense(v, 2, act=rleu) }\na = g(x)\nb = g(x)\n" + LOSS
    assert len(_diagnostics(source)) == 1


def test_cli_check(tmp_path, capsys):
    bad = tmp_path / "bad.nn"
    bad.write_text(PRELUDE + "h = dense(img, 3)\n" + LOSS + "\n")
    assert main(["check", str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:8:11: error: `dense` expects a vector" in err
    assert "hint: use flatten(img)" in err
    assert "1 error in" in err
    good = tmp_path / "good.nn"
    good.write_text(PRELUDE + LOSS + "\n")
    assert main(["check", str(good)]) == 0
    out = capsys.readouterr().out
    assert "o.W" in out and "(1, 10)" in out and "updates o.*" in out
