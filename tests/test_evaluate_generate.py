"""`Model.evaluate` (losses and a metric per target, as `forward` computes) and
`Model.generate` (continuing a language model), against the same numbers by hand."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import compile_source, random_data

CLASSIFIER = """model cls
input x[4]
target label: class(3)
h = dense(x, 6, act=tanh)
d = dropout(h, 0.5)
o = dense(d, 3)
loss cross_entropy(o, label)
"""
REGRESSION = """model reg
input x[3]
target y[2]
o = dense(x, 2)
loss squared(o, y)
"""
LANGUAGE = """model lm
input x[T, 5]
target next[T]: class(5)
h = rnn(x, 6)
o = dense(h, 5)
loss cross_entropy(o, next)
"""


@pytest.mark.parametrize("batch_size", [3, 256])
def test_evaluate_a_classifier_without_noise(batch_size):
    module = compile_source(CLASSIFIER)
    m = module.Model(seed=0)
    data = random_data(module, n=10)
    out = m.evaluate(batch_size=batch_size, **data)
    logits = m.forward(x=data["x"])                     # forward: dropout off
    assert out["accuracy"] == pytest.approx(np.mean(np.argmax(logits, 1) == data["label"]))
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    assert out["loss"] == pytest.approx(-np.mean(np.log(p[np.arange(10), data["label"]])), rel=1e-10)


def test_evaluate_a_regression():
    module = compile_source(REGRESSION)
    m = module.Model(seed=0)
    data = random_data(module, n=7)
    out = m.evaluate(batch_size=4, **data)
    pred = m.forward(x=data["x"])
    assert out["rmse"] == pytest.approx(np.sqrt(np.mean((pred - data["y"]) ** 2)), rel=1e-12)
    assert out["loss"] == pytest.approx(m.loss(**data), rel=1e-12)


def test_evaluate_per_step_targets_counts_the_steps_within_each_length():
    module = compile_source(LANGUAGE)
    m = module.Model(seed=0)
    data = random_data(module, n=4)                     # T = 3
    lengths = np.array([1, 3, 2, 3])
    out = m.evaluate(x_lengths=lengths, **data)
    hits = np.argmax(m.forward(x=data["x"], x_lengths=lengths), -1) == data["next"]
    valid = np.arange(3)[None, :] < lengths[:, None]
    assert out["accuracy"] == pytest.approx(hits[valid].mean())


def test_generate_draws_from_the_last_steps_softmax():
    module = compile_source(LANGUAGE)
    m = module.Model(seed=0)
    a = m.generate(4, n=3, seed=7)
    b = m.generate(4, n=3, seed=7)
    assert a.shape == (3, 5) and (a[:, 0] == 0).all() and np.array_equal(a, b)
    assert not np.array_equal(a, m.generate(4, n=3, seed=8))
    greedy = m.generate(3, start=[1, 2], temperature=0)           # the most likely symbol each time
    seq = np.array([[1, 2]])
    for _ in range(3):
        nxt = np.argmax(m.forward(outputs="o", x=np.eye(5)[seq])[:, -1], axis=1)
        seq = np.concatenate([seq, nxt[:, None]], axis=1)
    np.testing.assert_array_equal(greedy, seq)


def test_generate_stops_at_the_stop_symbol_not_before_min_length():
    module = compile_source(LANGUAGE)
    m = module.Model(seed=0)
    out = m.generate(12, n=20, seed=1, stop=0, min_length=2)
    assert (out[:, 1:3] != 0).all()                                # no stop among the first two
    for row in out:
        ended = np.flatnonzero(row[1:] == 0)
        if len(ended):
            assert (row[1 + ended[0]:] == 0).all()                 # once stopped, it stays stopped


@pytest.mark.parametrize("call,error,message", [
    (lambda m: m.generate(3, start=[7]), ValueError, r"symbols in 0\.\.4"),
    (lambda m: m.generate(3, temperature=-1), ValueError, "temperature must be a number >= 0"),
    (lambda m: m.generate(-1), ValueError, "expected an integer >= 0"),
])
def test_generate_names_its_bad_arguments(call, error, message):
    with pytest.raises(error, match=message):
        call(compile_source(LANGUAGE).Model(seed=0))


def test_generate_needs_a_sequence_model():
    with pytest.raises(TypeError, match="not a sequence model"):
        compile_source(REGRESSION).Model(seed=0).generate(3)
