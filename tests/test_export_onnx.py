"""ONNX export (docs/export.md): every example's inference graph through onnxruntime (CPU)
against `Model.forward`, the op coverage the examples miss, and the command's bad input.

Tolerances: float64 graphs ≤ 1e-10 and float32 graphs ≤ 1e-5, relative:
|onnx − ours| ≤ tol·(|ours| + max|ours|). onnxruntime's CPU provider has no double
kernels for Conv, AveragePool, RNN, LSTM and GRU: a model with one of them is checked in
float64 through its float32 export against the float64 module, at the float32 tolerance.
"""
from __future__ import annotations

import numpy as np
import pytest

from conftest import BATCHNORM, EMBED_LN, EXAMPLES, compile_example, compile_source

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from nndsl.export import ExportError, export_onnx, onnx_model  # noqa: E402
from nndsl.frontend import load_model, load_source  # noqa: E402

EXAMPLE_NAMES = sorted(p.stem for p in EXAMPLES.glob("*.nn"))
NO_DOUBLE_KERNEL = {"Conv", "AveragePool", "RNN", "LSTM", "GRU"}   # onnxruntime 1.18..1.32, CPU
# float32 modules (their saved float32 weights, their float32 kernels) against their float32
# export; the float32 graph of every example is checked against the float64 module above.
# Two that test_examples.py builds in float32 anyway: a user activation and a bilinear
# user layer (Einsum), and an LSTM over a free T.
FLOAT32_EXAMPLES = ["user_defined", "lstm"]
BATCHES = (1, 7, 64)
TOL = {"float32": 1e-5, "float64": 1e-10}


def randomised(module, seed: int = 0):
    """A Model whose every parameter, biases included, is random (a zero bias hides a
    misplaced one)."""
    m = module.Model(seed=0)
    rng = np.random.default_rng(seed)
    for name, v in m.params.items():
        fan_in = int(np.prod(v.shape[1:])) if v.ndim > 1 else 4
        v[...] = rng.normal(0.0, 1.0 / np.sqrt(fan_in), v.shape)
    return m


def session(proto):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


def close(got, want, dtype: str, what: str):
    tol = TOL[dtype]
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * float(np.max(np.abs(want))), err_msg=what)


def check_against_forward(m, sess, dtype: str, lengths_of=None, seq_lengths=(None,), batches=BATCHES, seed=1):
    """forward(**x) against the session for each batch size (and free length T)."""
    rng = np.random.default_rng(seed)
    inputs = sess.get_inputs()
    for T in seq_lengths:
        for n in batches:
            feeds, ours_kw = {}, {}
            for i in inputs:
                if i.type == "tensor(int32)":
                    continue
                shape = [n] + [T if isinstance(d, str) else d for d in i.shape[1:]]
                classes = m.tables.data[i.name][1]
                feeds[i.name] = rng.standard_normal(shape) if classes is None else rng.integers(0, classes, shape)
                ours_kw[i.name] = feeds[i.name]
            for i in inputs:
                if i.type == "tensor(int32)":            # X_lengths, when exported with lengths=True
                    lengths = rng.integers(1, T + 1, n)
                    feeds[i.name] = lengths.astype(np.int32)
                    ours_kw[i.name] = lengths
            ours = m.forward(**ours_kw)
            ours = ours if isinstance(ours, tuple) else (ours,)
            theirs = sess.run(None, {k: v.astype(dtype) if v.dtype.kind == "f" else v for k, v in feeds.items()})
            for o, a, b in zip(sess.get_outputs(), theirs, ours):
                assert a.shape == b.shape, (o.name, a.shape, b.shape)
                close(a, b, dtype, f"{o.name}, batch {n}, T={T}")


def runs_in_double(proto) -> bool:
    return not any(nd.op_type in NO_DOUBLE_KERNEL for nd in proto.graph.node)


def free_lengths(model):
    """Two lengths for a free T, else None (fixed shapes)."""
    return (3, 6) if any(isinstance(d, str) for x in model.inputs for d in x.shape) else (None,)


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_every_example_exports_and_matches_forward_in_float64(name, tmp_path):
    """Every example has an inference graph (its outputs): saved, exported through the file
    `Model.save` wrote, checked (full_check), run by onnxruntime for batches 1, 7, 64 and two
    sequence lengths, in double where onnxruntime has the kernels, else through float32."""
    module = compile_example(name)
    m = randomised(module)
    m.save(tmp_path / "w.npz")
    model = load_model(EXAMPLES / f"{name}.nn")
    out = export_onnx(model, tmp_path / "w.npz", tmp_path / f"{name}.onnx")
    proto = onnx.load(out)
    onnx.checker.check_model(proto, full_check=True)
    assert proto.ir_version == 8 and proto.opset_import[0].version == 17
    assert [o.name for o in proto.graph.output] == list(module.OUTPUTS)
    dtype = "float64" if runs_in_double(proto) else "float32"
    if dtype == "float32":
        proto = onnx_model(model, tmp_path / "w.npz", dtype="float32")
    check_against_forward(m, session(proto), dtype, seq_lengths=free_lengths(model))


@pytest.mark.parametrize("name", FLOAT32_EXAMPLES)
def test_float32_examples_match_their_float32_module(name, tmp_path):
    module = compile_example(name, "float32")
    m = randomised(module)
    m.save(tmp_path / "w.npz")
    model = load_model(EXAMPLES / f"{name}.nn")
    proto = onnx_model(model, tmp_path / "w.npz")           # the weights' dtype: float32
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    check_against_forward(m, session(proto), "float32", seq_lengths=free_lengths(model))


@pytest.mark.parametrize("name", ["lstm", "names_lm", "rnn"])
def test_sequence_lengths_become_sequence_lens(name):
    """`X_lengths` -> sequence_lens: return=last is each example's own last state, and the
    steps of return=all past a length hold it (names_lm: a per-step output; rnn: stacked)."""
    module = compile_example(name)
    m = randomised(module, seed=3)
    model = load_model(EXAMPLES / f"{name}.nn")
    proto = onnx_model(model, m, dtype="float32", lengths=True)
    assert [i.name for i in proto.graph.input] == [model.inputs[0].name, f"{model.inputs[0].name}_lengths"]
    check_against_forward(m, session(proto), "float32", seq_lengths=(5,), batches=(7,))


# ------------------------------------------------------------ what examples miss
ELEMENTWISE = """model elementwise
input x[5]
input z[3, 5]
target y[5]
activation bump(a) = exp(-a^2 / 2) * cos(a) + sin(a) / (1 + abs(a))
h = dense(x, 5, act=elu)
e = where(h > 0, sqrt(abs(h) + 1), log(1 + h^2)) + min(h, 0.5) * max(h, -0.5) - relu(-h) / 3
f = where(h <= 0.1, softplus(h), swish(h)) + where(h == 0, 1, tanh(h)) * where(h != 1, leaky_relu(h, alpha=0.2), 0)
g = where(h < -0.2, sigmoid(h), bump(h)) + where(h >= 0.3, h ** 3, 2 ^ h) - h / h + elu(h) + x
w = z * h + e
s = dense(x, 4, act=softmax)
loss squared(g, y) + squared(s, 0)
output e, f, g, w, s
"""

USER_LAYERS = """model user_layers
input x[6]
input img[3, 9]
target y[2]
layer diff(x[t], units L) -> out[i:L] {
    param w[i] init=xavier
    out[i] = w[i] * (x[i + 1] - x[i])
}
layer strided(x[c, t], units F, units L, units K) -> out[f:F, i:L] {
    param W[f, c, p:K] init=xavier
    param b[f] init=zeros
    tmp[f, i] = sum(c, p: W[f, c, p] * x[c, 2*i + p])
    out[f, i] = relu(tmp[f, i] + b[f]) - 0.1 * tmp[f, i]
}
layer nonprod(x[d], units K) -> out[k:K] {
    param W[k, d] init=xavier
    out[k] = sum(d: tanh(W[k, d] * x[d])) / 3 + x[0]
}
a = diff(x, 5)
s = strided(img, 4, 4, 3)
n = nonprod(x, 2)
o = dense(concat(a, n, flatten(s)), 2)
loss squared(o, y)
output a, s, n, o
"""

IMAGES = """model images
input img[2, 7, 9]
target y[3]
c = conv2d(img, 3, 3, stride=2, pad=1, act=tanh, bias=false)
a = avgpool(c, 2, stride=1)
m = maxpool(conv2d(img, 4, 2, act=sigmoid), 3, stride=2)
o = dense(concat(flatten(a), flatten(m)), 3, act=relu)
loss squared(o, y)
output a, m, o
"""

RECURRENCES = """model recurrences
input x[T, 3]
target y[3]
a = rnn(x, 3, act=relu)
b = rnn(a, 3, act=identity, return=last)
c = rnn(x, 3, act=leaky_relu, return=last)
k = tanh(a) * (b + c)
loss squared(b, y) + squared(c, y) + squared(k, 0)
output a, b, c, k
"""


@pytest.mark.parametrize("source", [ELEMENTWISE, USER_LAYERS, IMAGES, RECURRENCES, EMBED_LN, BATCHNORM],
                         ids=["elementwise", "user_layers", "images", "recurrences", "embed_layernorm", "batchnorm"])
def test_constructs_the_examples_miss(source):
    """Every function of expressions and activations (Elu and Softplus natively in float32,
    as Where/Exp/Log in float64), user layers with prefix and strided reads, a temporary and
    a non-product sum, strided/padded/bias-free convolutions and overlapping pools on a
    non-square image, rnn with ONNX's Relu, Affine (identity) and LeakyRelu (the examples
    have Tanh), stacked, and a (K,) value against a (T, K) one over a free T, with and
    without lengths; Gather, LayerNormalization, and BatchNormalization with the running
    statistics (made non-trivial) of a vector, an image and a sequence."""
    module = compile_source(source)
    m = randomised(module, seed=5)
    rng = np.random.default_rng(3)
    for name, v in m.stats.items():
        v[...] = rng.uniform(0.5, 1.5, v.shape) if name.endswith("var") else rng.normal(0, 0.5, v.shape)
    model = load_source(source, "m.nn")
    sequences = free_lengths(model)
    proto = onnx_model(model, m)
    if runs_in_double(proto):
        check_against_forward(m, session(proto), "float64", seq_lengths=sequences, batches=(1, 7))
    check_against_forward(m, session(onnx_model(model, m, dtype="float32")), "float32",
                          seq_lengths=sequences, batches=(1, 7))
    if sequences != (None,):
        check_against_forward(m, session(onnx_model(model, m, dtype="float32", lengths=True)), "float32",
                              seq_lengths=(5,), batches=(7,))


def test_gru_is_linear_before_reset_and_gates_are_in_onnx_order():
    model = load_model(EXAMPLES / "gru.nn")
    params = {p.name: np.full(p.shape, k, np.float32) for k, p in enumerate(model.params)}
    proto = onnx_model(model, params)
    gru = next(nd for nd in proto.graph.node if nd.op_type == "GRU")
    assert onnx.helper.get_attribute_value(next(a for a in gru.attribute if a.name == "linear_before_reset")) == 1
    W = next(onnx.numpy_helper.to_array(t) for t in proto.graph.initializer if t.name == gru.input[1])
    assert [W[0, 32 * g, 0] for g in range(3)] == [0, 1, 2]              # z r h, ours in order
    lstm = onnx_model(load_model(EXAMPLES / "lstm.nn"),
                      {p.name: np.full(p.shape, k, np.float32) for k, p in enumerate(load_model(EXAMPLES / "lstm.nn").params)})
    node = next(nd for nd in lstm.graph.node if nd.op_type == "LSTM")
    W = next(onnx.numpy_helper.to_array(t) for t in lstm.graph.initializer if t.name == node.input[1])
    assert [W[0, 32 * g, 0] for g in range(4)] == [0, 2, 1, 3]           # ONNX i o f c = ours i f o c


@pytest.mark.parametrize("opset,ir_version", [(18, 8), (19, 9), (20, 9), (21, 10)])
def test_opsets_18_to_21(opset, ir_version):
    source = EXAMPLES / "lstm.nn"
    model = load_model(source)
    m = randomised(compile_example("lstm"))
    proto = onnx_model(model, m, opset=opset, dtype="float32")
    assert (proto.opset_import[0].version, proto.ir_version) == (opset, ir_version)
    check_against_forward(m, session(proto), "float32", seq_lengths=(4,), batches=(7,))


@pytest.mark.parametrize("opset", [18, 21])
def test_normalisation_in_later_opsets(opset):
    """float64 layer norm is primitives, float32 LayerNormalization; both run at any opset."""
    model = load_source(EMBED_LN, "m.nn")
    m = randomised(compile_source(EMBED_LN), seed=2)
    for dtype in ("float64", "float32"):
        proto = onnx_model(model, m, opset=opset, dtype=dtype)
        onnx.checker.check_model(proto, full_check=True)
        check_against_forward(m, session(proto), dtype, seq_lengths=(4,), batches=(3,))


# ------------------------------------------------------------------- bad input
def run_cli(args, capsys):
    from nndsl.cli import main
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def lstm_weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "lstm.npz"
    randomised(compile_example("lstm")).save(path)
    return path


def test_cli_export_writes_a_checked_file(lstm_weights, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    code, stdout, err = run_cli(["export", EXAMPLES / "lstm.nn", "--weights", lstm_weights, "-o", out,
                                 "--opset", "19", "--lengths"], capsys)
    assert (code, err) == (0, "") and "wrote" in stdout
    proto = onnx.load(out)
    onnx.checker.check_model(proto, full_check=True)
    assert proto.opset_import[0].version == 19
    assert [i.name for i in proto.graph.input] == ["seq", "seq_lengths"]
    assert [d.dim_param for d in proto.graph.input[0].type.tensor_type.shape.dim[:2]] == ["N", "T"]
    assert list(tmp_path.iterdir()) == [out]


UNEXPORTABLE = {
    "rnn_swish": ("model r\ninput x[T, 2]\ntarget y[3]\nh = rnn(x, 3, act=swish, return=last)\n"
                  "loss squared(h, y)\n", "cannot export layer `h` (rnn with act=swish"),
    "sampling": ("model s\ninput x[4]\nmu = dense(x, 2)\nlv = dense(x, 2)\nz = sample_normal(mu, lv, sample=true)\n"
                 "o = dense(z, 4)\nloss squared(o, x)\n", "cannot export layer `z` (sample=true"),
    "window_over_T": ("model w\ninput x[T, 2]\ntarget y[3]\nlayer f(x[t, d], units K) -> out[k:K] {\n"
                      "  param W[k, d]\n  out[k] = sum(t, d: W[k, d] * x[t, d] * t)\n}\nh = f(x, 3)\n"
                      "loss squared(h, y)\n", "cannot export layer `h` (index t as a value ranges over the free size T)"),
    "diagonal": ("model d\ninput x[3, 3]\ntarget y[2]\nlayer tr(x[i, j], units K) -> out[k:K] {\n"
                 "  param w[k]\n  out[k] = w[k] * sum(i: x[i, i])\n}\nh = tr(x, 2)\nloss squared(h, y)\n",
                 "cannot export layer `h` (`x` is read with the index i on two axes"),
}


@pytest.mark.parametrize("case", sorted(UNEXPORTABLE))
def test_an_unexportable_layer_is_one_line_exit_1_and_no_file(case, tmp_path, capsys):
    source, message = UNEXPORTABLE[case]
    path = tmp_path / "m.nn"
    path.write_text(source)
    model = load_model(path)
    weights = tmp_path / "w.npz"
    np.savez(weights, __model__=np.array(model.name),
             **{f"param:{p.name}": np.zeros(p.shape, np.float32) for p in model.params})
    code, stdout, err = run_cli(["export", path, "--weights", weights, "-o", tmp_path / "m.onnx"], capsys)
    assert code == 1 and stdout == ""
    assert err.count("\n") == 1 and message in err and f"{path}:" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.nn", "w.npz"]


def test_bad_usage_is_one_line(lstm_weights, tmp_path, capsys):
    mlp = tmp_path / "mlp.npz"
    randomised(compile_example("lecture_mlp")).save(mlp)
    lstm = EXAMPLES / "lstm.nn"
    out = tmp_path / "m.onnx"
    cases = [
        (["--weights", lstm_weights, "--opset", "16"], 2, "--opset 16: nndsl exports ONNX opsets 17..21"),
        (["--weights", lstm_weights, "--opset", "22"], 2, "opsets 17..21"),
        ([], 2, "export needs --weights"),
        (["--weights", tmp_path / "none.npz"], 2, "none.npz: no such file"),
        (["--weights", mlp], 1, "weights of model 'lecture_mlp', not of 'lstm_digits'"),
        (["--weights", lstm], 1, "not a weights file"),
        (["--weights", lstm_weights, "-o", tmp_path / "no" / "m.onnx"], 2, "cannot write"),
    ]
    for extra, want_code, message in cases:
        args = ["export", lstm, "-o", out] + extra if "-o" not in extra else ["export", lstm] + extra
        code, stdout, err = run_cli(args, capsys)
        assert (code, err.count("\n")) == (want_code, 1) and message in err, (extra, err)
        assert not out.exists() and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlp.npz"]


def test_weights_by_name_survive_edits_and_a_flat_theta_needs_its_source(tmp_path):
    """A file of parameters by name fits a source whose parameters are the same (an edited
    comment) and names what no longer fits; a flat `theta` (the first format) is laid out by
    the source that wrote it, so another source is refused."""
    model = load_model(EXAMPLES / "lstm.nn")
    m = randomised(compile_example("lstm"))
    m.save(tmp_path / "w.npz")
    commented = load_source(model.source + "# trained on digits\n", str(EXAMPLES / "lstm.nn"))
    onnx_model(commented, tmp_path / "w.npz")
    edited = load_source(model.source.replace("lstm(seq, 32", "lstm(seq, 16"), str(EXAMPLES / "lstm.nn"))
    with pytest.raises(ExportError, match=r"do not fit 'lstm_digits': reshaped h.W_i \(32, 8\)"):
        onnx_model(edited, tmp_path / "w.npz")
    with pytest.raises(ExportError, match="reshaped"):
        onnx_model(edited, m)
    from nndsl.build import source_hash
    theta = np.concatenate([m.params[p.name].ravel() for p in model.params])
    np.savez(tmp_path / "flat.npz", theta=theta, __model__=np.array(model.name),
             __hash__=np.array(source_hash(model.source, "float64", "cpu")))
    assert onnx_model(model, tmp_path / "flat.npz").graph.node
    with pytest.raises(ExportError, match="from another source"):
        onnx_model(commented, tmp_path / "flat.npz")
