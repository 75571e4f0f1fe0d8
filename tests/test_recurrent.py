"""Recurrent layers: BPTT derived from the cell, checked against central differences; one row
per construct, every row at two sequence lengths with one module (and T = 1)."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import compile_source
from gradcheck import check_gradients


def model(body: str, head: str = "input x[T, 3]\ntarget y[2]") -> str:
    return f"model r\n{head}\n{body}\n"


LAST = "o = dense(h, 2)\nloss squared(o, y)"
PER_STEP = "input x[T, 3]\ntarget y[T, 2]"

CASES = {
    "rnn-tanh-last": model("h = rnn(x, 4, return=last)\n" + LAST),
    "rnn-relu-last": model("h = rnn(x, 4, act=relu, return=last)\n" + LAST),
    "rnn-sigmoid-all": model("h = rnn(x, 4, act=sigmoid)\no = dense(h, 2)\nloss squared(o, y)", PER_STEP),
    "lstm-last": model("h = lstm(x, 4, return=last)\n" + LAST),
    "lstm-all": model("h = lstm(x, 4)\no = dense(h, 2, act=tanh)\nloss squared(o, y)", PER_STEP),
    "gru-last": model("h = gru(x, 4, return=last)\n" + LAST),
    "gru-all": model("h = gru(x, 4)\no = dense(h, 2)\nloss bce_logits(o, y)", PER_STEP),
    "stacked": model("h1 = lstm(x, 4)\nh2 = gru(h1, 3)\nh = rnn(h2, 4, act=relu, return=last)\n" + LAST),
    # per-step targets: class labels and real values, one loss summed over the steps
    "per-step-losses": model("h = gru(x, 5)\no = dense(h, 4)\np = dense(h, 2, act=tanh)\n"
                             "loss cross_entropy(o, next) + squared(p, y)",
                             "input x[T, 3]\ntarget next[T]: class(4)\ntarget y[T, 2]"),
    "sequence-expression": model("h = lstm(x, 4)\ng = h * h + tanh(h)\nh2 = rnn(g, 3, return=last)\n"
                                 "o = dense(h2, 2)\nloss squared(o, y)"),
    "dense-on-input-sequence": model("e = dense(x, 4, act=tanh)\nh = rnn(e, 3, return=last)\n" + LAST),
}


def sequence_data(module, n: int, T: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    data = {}
    for name, (shape, classes, is_target) in module.DATA.items():
        shape = tuple(T if isinstance(s, str) else s for s in shape)
        if classes is not None:
            data[name] = rng.integers(0, classes, (n,) + shape)
        elif is_target:
            data[name] = rng.uniform(0.05, 0.95, (n,) + shape)
        else:
            data[name] = rng.standard_normal((n,) + shape)
    return data


@pytest.mark.parametrize("case", sorted(CASES))
def test_bptt_gradient(case):
    module = compile_source(CASES[case])
    for T in (3, 1, 5):                 # one module, different lengths per call
        check_gradients(module, sequence_data(module, 4, T, seed=T))


def test_cost_is_linear_in_T():
    """The plan table repeats the cell's rows once per step: rows(T) is affine in T."""
    module = compile_source(CASES["lstm-last"])
    m = module.Model(seed=0)
    rows = [len(m._table("value_loss", 4, {"T": T})[0]) for T in (2, 4, 8)]
    assert rows[2] - rows[1] == 2 * (rows[1] - rows[0]) > 0


@pytest.mark.parametrize("case", ["rnn-tanh-last", "lstm-last", "lstm-all", "gru-last", "gru-all"])
def test_a_step_is_two_kernel_calls_each_way(case):
    """Forward: the step GEMM U·h_(t-1) and one fused loop for the cell; backward: one fused
    loop for the cell's adjoint (the gates' blocks of Δ(W·x+U·h+b) included, the gate
    gradients in registers) and the GEMM Δa·U. The step GEMM reads Uᵀ copied once per pass,
    and only the states' gradients, which several steps write, are zeroed."""
    module = compile_source(CASES[case])
    m = module.Model(seed=0)
    for plan, per_step in (("value_loss", 4), ("forward", 2)):
        rows = [len(m._table(plan, 4, {"T": T})[0]) for T in (2, 3)]
        assert rows[1] - rows[0] == per_step, plan
    text = open(module.__file__).read()
    assert "Uᵀ (all gates), once before the steps" in text or "h.Uᵀ, once before the steps" in text
    zeroed = {line.strip()[2:-4] for line in text.splitlines() if line.strip().startswith("# Δ") and line.strip().endswith(" = 0")}
    assert zeroed <= {"Δh", "Δh.h", "Δh.C"}, zeroed


def test_return_last_is_the_last_step_of_return_all():
    all_ = compile_source(model("h = lstm(x, 4)\no = dense(h, 2)\nloss squared(o, y)\noutput h", PER_STEP))
    last = compile_source(model("h = lstm(x, 4, return=last)\n" + LAST + "\noutput h"))
    x = np.random.default_rng(0).standard_normal((3, 6, 3))
    ha = all_.Model(seed=0).forward(x=x)
    hl = last.Model(seed=0).forward(x=x)
    assert ha.shape == (3, 6, 4) and hl.shape == (3, 4)
    np.testing.assert_allclose(ha[:, -1], hl, rtol=1e-12)
    # a prefix of the sequence gives the prefix of the states (causality)
    np.testing.assert_allclose(all_.Model(seed=0).forward(x=x[:, :4]), ha[:, :4], rtol=1e-12)


def test_clip_norm_trains_a_recurrent_model():
    module = compile_source(model("h = rnn(x, 8, return=last)\n" + LAST + "\ntrain clip_norm=0.5"))
    m = module.Model(seed=0)
    data = sequence_data(module, 16, 6)
    first = m.loss(**data)
    for _ in range(30):
        m.step(**data)
    assert m.loss(**data) < first


# -- different lengths in one batch: x_lengths= masks the cell and the per-step losses
LENGTH_CASES = {
    "lstm-last": model("h = lstm(x, 4, return=last)\n" + LAST),
    "gru-per-step": model("h = gru(x, 4)\no = dense(h, 3)\nloss cross_entropy(o, next)",
                          "input x[T, 3]\ntarget next[T]: class(3)"),
    "stacked-rnn-per-step": model("h1 = rnn(x, 4)\nh = lstm(h1, 3)\no = dense(h, 2)\nloss squared(o, y)", PER_STEP),
}


@pytest.mark.parametrize("case", sorted(LENGTH_CASES))
def test_padded_batch_equals_examples_alone(case):
    """The loss and gradient of a padded batch are the mean of each example's run alone."""
    module = compile_source(LENGTH_CASES[case])
    lengths = np.array([5, 2, 4, 1])
    data = sequence_data(module, 4, 5, seed=3)
    m = module.Model(seed=0)
    L, g = m.grad(x_lengths=lengths, **data)
    alone = []
    for i, n in enumerate(lengths):
        one = {k: v[i:i + 1, :n] if module.DATA[k][0][:1] == ("T",) else v[i:i + 1] for k, v in data.items()}
        alone.append(m.grad(**one))
    assert L == pytest.approx(np.mean([a[0] for a in alone]), rel=1e-12)
    for p in g:
        np.testing.assert_allclose(g[p], np.mean([a[1][p] for a in alone], axis=0), rtol=1e-10, atol=1e-13)
    check_gradients(module, dict(data, x_lengths=lengths))


def test_return_last_gives_each_examples_own_last_state():
    module = compile_source(model("h = gru(x, 4, return=last)\n" + LAST + "\noutput h"))
    m = module.Model(seed=0)
    x = np.random.default_rng(0).standard_normal((3, 6, 3))
    h = m.forward(x=x, x_lengths=np.array([6, 3, 1]))
    for i, n in enumerate([6, 3, 1]):
        np.testing.assert_allclose(h[i], m.forward(x=x[i:i + 1, :n])[0], rtol=1e-12)


def test_forward_at_any_node_takes_lengths():
    """forward(outputs=...) with x_lengths=: each example's states and last state as alone."""
    module = compile_source(model("h1 = rnn(x, 4)\nh = gru(h1, 3, return=last)\n" + LAST))
    m = module.Model(seed=0)
    x = np.random.default_rng(1).standard_normal((3, 6, 3))
    lengths = np.array([6, 2, 4])
    h1, h = m.forward(outputs=["h1", "h"], x=x, x_lengths=lengths)
    for i, n in enumerate(lengths):
        h1_alone, h_alone = m.forward(outputs=["h1", "h"], x=x[i:i + 1, :n])
        np.testing.assert_allclose(h1[i, :n], h1_alone[0], rtol=1e-12)
        np.testing.assert_allclose(h[i], h_alone[0], rtol=1e-12)


@pytest.mark.parametrize("lengths,message", [
    (np.array([3, 7]), "every length must lie in 1..6"),
    (np.array([3, 0]), "every length must lie in 1..6"),
    (np.array([3]), "expected integer lengths of shape (2,)"),
    (np.array([3.0, 2.0]), "expected integer lengths"),
])
def test_bad_lengths_name_the_input(lengths, message):
    module = compile_source(LENGTH_CASES["lstm-last"])
    data = sequence_data(module, 2, 6)
    with pytest.raises(ValueError, match="'x_lengths'") as e:
        module.Model(seed=0).loss(x_lengths=lengths, **data)
    assert message in str(e.value)


def test_wrong_feature_size_names_the_input():
    module = compile_source(LENGTH_CASES["lstm-last"])
    with pytest.raises(ValueError, match=r"'x': expected shape \(N, T, 3\)"):
        module.Model(seed=0).loss(x=np.zeros((2, 5, 4)), y=np.zeros((2, 2)))
