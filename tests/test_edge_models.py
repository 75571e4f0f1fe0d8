"""Models at the edges of the plan: unused nodes, degenerate sizes, the printout. One row per
failure that issue 26 or a random-model hunt found, each the minimal model; every row gets
the random-model tester's check (tests/modelcheck.py: each parameter's float64 gradient
against central differences, `loss` equal to `grad`'s, forward, optimiser steps, and
`nndsl grad` printed and, where it prints sums, evaluated against the module's gradient).

A hunt (`pytest tests/test_random_models.py --random-models N`) saves each failing model as
a file in tests/.random_failures/; moved into tests/regressions/ it becomes a row here too.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from modelcheck import check_model


def model(body: str, head: str = "input x[3]\ntarget y[2]") -> str:
    return f"model edge\n{head}\n{body}\n"


SEQ = "input x[T, 2]\ntarget y[T, 3]"

EDGES = {
    # -- a parameter no loss reaches: its gradient's zeroing was fused into a loop whose only
    #    tensor became a register (nothing reads it), so the kernel lost its array: a plan row
    #    `(7, -1, , 0, ...)` (a syntax error at import) or numba's `name 'v0' is not defined`
    "unused-dense": model("o = dense(x, 2)\nu = dense(x, 2)\nloss squared(o, y)"),
    "unused-dense-no-bias-beside-constant-plus-node": model(
        "h = dense(x, 5, act=leaky_relu)\nu = dense(z, 5, act=tanh, bias=false)\ne = (-0.5) + h\n"
        "o = dense(e, 2)\nloss bce_logits(o, y)", "input x[3]\ninput z[5]\ntarget y[2]"),
    "second-input-feeds-only-an-unused-dense": model(
        "o = dense(x, 2)\nu = dense(z, 4)\nloss squared(o, y)", "input x[3]\ninput z[2]\ntarget y[2]"),
    "two-named-losses-each-wrt-its-own-node": model(
        "a = dense(x, 2)\nb = dense(x, 2)\nloss la = squared(a, y) wrt a\nloss lb = squared(b, y) wrt b"),
    "where-condition-with-parameters": model(
        "k = dense(x, 2)\nh = dense(x, 2)\no = where(k > 0, h, 2 * h)\nloss squared(o, y)"),
    # -- an input of a free length that nothing reads: the plan of a loss without it took its
    #    length from the call's arrays (KeyError 'T' at the first step; a valid mutant's find)
    "unused-sequence-input": model("o = dense(x, 2)\nloss squared(o, y)", "input s[T, 2]\ninput x[3]\ntarget y[2]"),
    # -- a sequence whose values cancel (h - h reads nothing): its length is still the input's
    #    (KeyError 'T' at the first step; or the wrong T, had the plan not taken the input)
    "cancelled-sequence-keeps-its-length": model("h = dense(s, 1)\ne = h - h\no = dense(e, 2)\nloss squared(o, 0)",
                                                "input s[T, 2]"),
    # -- an output whose values cancel reads no input: forward had no batch size (`20*None`
    #    in the plan table)
    "cancelled-output-keeps-the-batch-size": model("h = dense(x, 2)\ne = h - h\nloss squared(e, y)"),
    # -- `nndsl grad` on degenerate sizes and activations
    "softmax-over-one-unit": model("o = dense(x, 1, act=softmax)\nloss squared(o, y)", "input x[3]\ntarget y[1]"),
    "rnn-act-leaky_relu": model("h = rnn(x, 3, act=leaky_relu)\no = dense(h, 3)\nloss squared(o, y)", SEQ),
    "rnn-act-identity": model("h = rnn(x, 3, act=identity)\no = dense(h, 3)\nloss squared(o, y)", SEQ),
    "rnn-act-user": model("activation sw(a) = a * sigmoid(2 * a)\nh = rnn(x, 3, act=sw)\n"
                          "o = dense(h, 3)\nloss squared(o, y)", SEQ),
    # -- a valid model that the build refused ("not supported by the code generator yet")
    "rnn-act-softmax": model("h = rnn(x, 3, act=softmax)\nloss squared(h, y)", SEQ),
    "rnn-act-softmax-stacked-last": model("h = rnn(x, 3, act=softmax)\ng = rnn(h, 2, act=softmax, return=last)\n"
                                          "loss squared(g, y)", "input x[T, 2]\ntarget y[2]"),
    # -- the recursion's Δh: a loss reading the state (its term was missing), a recurrence read
    #    by a dense and by a recurrence (an internal `x_steps` name, and that part twice), a
    #    dense feeding a recurrence (its Δ through the recurrence's W), hidden size 1
    "loss-reads-a-recurrent-state": model("h = rnn(x, 3)\nloss squared(h, y)", SEQ),
    "recurrence-read-by-dense-and-recurrence": model(
        "h = rnn(x, 3)\ng = rnn(h, 3)\no = dense(h, 3) + g\nloss squared(o, y)", SEQ),
    "dense-into-recurrence": model("h = dense(x, 3, act=tanh)\nr = gru(h, 2, return=last)\nloss squared(r, y)",
                                   "input x[T, 2]\ntarget y[2]"),
    "recurrences-of-one-unit": model("h = lstm(x, 1)\ng = gru(h, 1)\nloss squared(g, y)",
                                     "input x[T, 2]\ntarget y[T, 1]"),
    # -- two calls of a network on one argument printed the same label for two nodes, each Δ
    #    defined twice and their parameter gradient summed as 2·Σ of the first
    "network-called-twice-on-one-input": model(
        "network net(v) { a = dense(v, 2, act=elu); return dense(a, 2) }\np = net(x)\nq = net(x)\n"
        "o = p * q\nloss squared(o, y)"),
    # -- a strided pool's adjoint read as a gather solved its window offset p (2·i + p = k) with
    #    no bound on p: Δc[n,0,k,d] = Σ_i Σ_j e[n,0,i,j]/4, every window's Δ at every element
    "avgpool-stride-2-read-beside-its-input": model(
        "c = conv2d(img, 1, 2, pad=1)\np = avgpool(c, 2)\nloss squared(p, y1) + squared(c, y2)",
        "input img[1, 4, 4]\ntarget y1[1, 2, 2]\ntarget y2[1, 5, 5]"),
    # -- a convolution's pre-activation printed (swish needs it): its Σ over input channels
    #    captured the output channel (`Σ_c W[c,c,0,0]`), its padded input printed `img[n,c,h,w]`
    "conv-pre-activation-with-padding": model("c = conv2d(img, 2, 1, pad=1, act=swish)\nloss squared(c, y)",
                                              "input img[2, 3, 4]\ntarget y[2, 5, 6]"),
    # -- a Δ that reaches no parameter (a `where` of constants passes no gradient to its
    #    condition's operands): its stage wrote an array the plan had no storage for
    #    (numba's `name 'v0' is not defined`; a kit hunt's find, seed 7203)
    "gradient-of-a-where-of-constants-read-by-nothing": model("h = dense(x, 2)\ne = where(h != 0, 3, 6)\n"
                                                             "loss squared(e, y)"),
    # -- a kit hunt's find (seed 7053): leaky_relu of a sum printed `alpha * a + b` for
    #    alpha·(a + b), so the kernel computed another function than the one derived
    "leaky-relu-of-a-sum": model("h = dense(x, 4)\ne = leaky_relu(h + leaky_relu(h, alpha=0.2))\n"
                                 "o = dense(e, 2)\nloss squared(o, y)"),
    # -- batchnorm's printed lines hold for the batch's statistics, which the gradient uses
    #    (`forward` normalises with the running ones): the tester evaluates them so
    "batchnorm-printout-with-the-batch-statistics": model(
        "h = dense(x, 4)\nb = batchnorm(h)\no = dense(b, 2, act=tanh)\nloss squared(o, y)"),
    "batchnorm-of-an-image-printout": model(
        "c = conv2d(img, 2, 3)\nb = batchnorm(c)\nf = flatten(b)\no = dense(f, 2)\nloss squared(o, y)",
        "input img[1, 4, 5]\ntarget y[2]"),
}

# what each row is about: the plan rows need no printout, the printout rows no optimiser step
# (the suite's time: each row builds a module)
PLAN_ROWS = {"unused-dense", "unused-dense-no-bias-beside-constant-plus-node", "second-input-feeds-only-an-unused-dense",
             "two-named-losses-each-wrt-its-own-node", "where-condition-with-parameters", "unused-sequence-input",
             "cancelled-sequence-keeps-its-length", "cancelled-output-keeps-the-batch-size",
             "gradient-of-a-where-of-constants-read-by-nothing"}

REGRESSIONS = Path(__file__).resolve().parent / "regressions"
FILES = sorted(REGRESSIONS.glob("*.nn")) if REGRESSIONS.is_dir() else []


@pytest.mark.parametrize("case", sorted(EDGES))
def test_edge_model(case):
    plan = case in PLAN_ROWS
    check_model(EDGES[case], case.replace("-", "_"), float32=False, formulas=not plan,
                steps=plan or case.startswith("rnn-act-softmax"))


if FILES:                  # (none yet: every finding so far is a row of EDGES)
    @pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
    def test_saved_regression(path):
        check_model(path.read_text(), path.stem.replace("-", "_"), float32=False)
