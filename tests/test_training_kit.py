"""The training kit's language half (issue 23): class-valued inputs and their checks, running
statistics (state beside the parameters: only `step`/`fit` change them, `forward` reads them),
`init ones`, and what `nndsl check` says about them. Gradients: tests/test_gradients.py;
PyTorch: tests/test_torch_parity.py; CUDA: tests/test_cuda.py."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import BATCHNORM, EMBED_LN, compile_source, random_data


@pytest.fixture(scope="module")
def embed():
    return compile_source(EMBED_LN)


@pytest.fixture(scope="module")
def bn():
    return compile_source(BATCHNORM)


@pytest.mark.parametrize("chars,message", [
    (np.zeros((4, 3)), "'chars': expected integer class labels of shape (N, T), got float64 array"),
    (np.full((4, 3), 7), "'chars': labels must lie in 0..6, got values in 7..7"),
    (np.zeros(4, np.int64), "'chars': expected integer class labels of shape (N, T)"),
])
def test_class_inputs_are_checked_like_class_targets(embed, chars, message):
    m = embed.Model(seed=0)
    with pytest.raises(ValueError) as err:
        m.forward(chars=chars)
    assert message in str(err.value)


def test_an_embedding_reads_rows_of_E(embed):
    m = embed.Model(seed=0)
    assert m.params["e.E"].shape == (7, 5)
    assert 0.5 < np.std(m.params["e.E"]) < 1.5                # normal(1), as nn.Embedding
    assert np.array_equal(m.params["h.g"], np.ones(5)) and np.array_equal(m.params["h.b"], np.zeros(5))
    chars = np.array([[3, 3, 0], [6, 1, 3]])
    e = m.forward(outputs="e", chars=chars)
    np.testing.assert_array_equal(e, m.params["e.E"][chars])
    # rows no example reads get no gradient
    _, g = m.grad(chars=chars, next=chars)
    assert not g["e.E"][[2, 4, 5]].any() and g["e.E"][[0, 1, 3, 6]].any()


def test_running_statistics_change_only_in_step_and_fit(bn, tmp_path):
    m = bn.Model(seed=0)
    assert bn.STATS == ["b.running_mean", "b.running_var", "d.running_mean", "d.running_var",
                        "s.running_mean", "s.running_var"]
    assert set(m.stats) == set(bn.STATS) and not set(m.params) & set(bn.STATS)    # state, not parameters
    assert np.array_equal(m.stats["b.running_mean"], np.zeros(5))
    assert np.array_equal(m.stats["d.running_var"], np.ones(3))
    data = random_data(bn, n=6)
    start = {k: m.stats[k].copy() for k in bn.STATS}
    m.loss(**data)
    _, g = m.grad(**data)
    m.forward(outputs=["o", "q"], **{k: data[k] for k in bn.INPUTS})
    assert all(np.array_equal(start[k], m.stats[k]) for k in bn.STATS)
    assert not set(g) & set(bn.STATS)                                 # no gradient
    o_before = m.forward(outputs="o", x=data["x"], img=data["img"])
    m.step(**data)
    assert all(not np.array_equal(start[k], m.stats[k]) for k in bn.STATS)
    after = {k: m.stats[k].copy() for k in bn.STATS}
    m.fit(epochs=1, batch_size=3, verbose=False, **data)
    assert all(not np.array_equal(after[k], m.stats[k]) for k in bn.STATS)
    # forward normalises with them: the same batch gives another output after training
    assert not np.allclose(o_before, m.forward(outputs="o", x=data["x"], img=data["img"]))
    m.save(tmp_path / "bn.npz")
    m2 = bn.Model.load(tmp_path / "bn.npz")
    assert all(np.array_equal(m.stats[k], m2.stats[k]) for k in bn.STATS)


def test_the_eval_plan_computes_the_loss_as_forward_does(bn):
    """`STEPS[loss].eval_plan`: the loss with the running statistics, which `evaluate` and
    fit's validation loss report."""
    m = bn.Model(seed=0)
    data = random_data(bn, n=6)
    m.step(**data)
    L = m.evaluate(**data)["loss"]
    o, q = m.forward(outputs=["o", "q"], **{k: data[k] for k in bn.INPUTS})
    want = (0.5 * ((o - data["y"]) ** 2).sum() + 0.5 * ((q - data["ys"]) ** 2).sum()) / 6
    assert L == pytest.approx(want, rel=1e-12)
    assert L != pytest.approx(m.loss(**data), rel=1e-6)               # the batch statistics' loss


def test_init_ones_statement_and_per_parameter():
    module = compile_source("model ones\ninput x[3]\ntarget y[2]\n"
                            "layer scale(x[k], units K) -> out[k:K] {\n    param g[k] init=ones\n"
                            "    out[k] = g[k] * x[k]\n}\ns = scale(x, 3)\no = dense(s, 2)\n"
                            "loss squared(o, y)\ninit ones\n")
    m = module.Model(seed=0)
    assert np.array_equal(m.params["s.g"], np.ones(3)) and np.array_equal(m.params["o.W"], np.ones((2, 3)))


def test_check_lists_the_running_statistics(tmp_path, capsys):
    from nndsl.cli import main
    path = tmp_path / "bn.nn"
    path.write_text(BATCHNORM)
    assert main(["check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "running statistics: 6 tensors, 22 values (updated by step and fit, read by forward)" in out
    assert "b.running_var   (5,)  5  ones" in out
    assert "batchnorm(h, momentum=0.2, eps=1e-05)" in out
