"""The inference graph of a checked model as ONNX: what `Model.forward` computes for the
declared outputs, with the trained parameters as initializers.

Built from the `ModelIR` (node ops, attributes, per-example shapes; networks are already
inlined), one exporter function per node op in `ONNX_EXPORTERS`: adding a layer kind is
one `@onnx_exporter("op")` function (batchnorm -> BatchNormalization with the running
statistics, layernorm -> LayerNormalization, embedding -> Gather, when they exist). Every
tensor has a leading dynamic batch axis `N`; a free sequence length is the dynamic axis
`T`. docs/export.md has the op table and what cannot be exported.
"""
from __future__ import annotations

import os
import tempfile
from typing import Callable

import numpy as np
import sympy as sp

from ..frontend import ir
from ..registry import registrar
from .elementwise import Elementwise
from .errors import ExportError
from .graph import OnnxGraph

DEFAULT_OPSET = 17
OPSETS = range(17, 22)                 # 17..21
# the lowest IR version that carries each opset (onnx.helper.VERSION_TABLE): 17 -> 8, ...
IR_VERSION = {17: 8, 18: 8, 19: 9, 20: 9, 21: 10}

ONNX_EXPORTERS: dict[str, Callable] = {}


# @onnx_exporter(*ops) registers `f(ex, node, *input_tensors) -> output tensor` for node ops
onnx_exporter = registrar(ONNX_EXPORTERS)


class _Shim:
    """What `calculus.ops.to_sympy` / `activation_fn` read of their Graph: the model."""

    def __init__(self, model):
        self.model = model


class Exporter:
    def __init__(self, model: ir.ModelIR, params: dict, dtype, lengths: bool = False):
        self.model = model
        self.params = params
        self.g = OnnxGraph(dtype)
        self.double = self.g.dtype == np.float64
        self.elementwise_tr = Elementwise(self.g, self.double)
        self.lengths = lengths
        self.values: dict[str, str] = {}       # node -> its tensor
        self.length_inputs: dict[str, str] = {}  # free size -> the int32 lengths input
        self._shim = _Shim(model)

    # -- helpers for exporter functions -------------------------------------------
    def cannot(self, node: ir.Node, reason: str) -> ExportError:
        where = f"{self.model.path}:{node.span.line}: " if node.span else f"{self.model.path}: "
        return ExportError(f"{where}cannot export layer `{node.name}` ({reason})")

    def param(self, name: str) -> str:
        return self.g.param(self.params[name], name)

    def shape(self, node_name: str) -> tuple:
        return tuple(self.model.node(node_name).shape)

    def sympy_of(self, e: ir.Expr, env: dict) -> sp.Expr:
        from ..calculus.ops import to_sympy
        return to_sympy(self._shim, e, env)

    def elementwise(self, expr: sp.Expr, operands: dict, what: str) -> str:
        return self.elementwise_tr(expr, operands, what)

    def activation(self, node: ir.Node, act: str, x: str) -> str:
        """act(x) elementwise (softmax: over the last axis), as the module computes it."""
        if act == "identity":
            return x
        if act == "softmax":
            return self.g.op("Softmax", [x], axis=-1)
        from ..calculus.ops import activation_fn
        a = sp.Symbol("a")
        return self.elementwise(activation_fn(self._shim, act)(a), {a: x}, f"layer `{node.name}`, act={act}")

    def lengths_input(self, size: str) -> str | None:
        """The int32 `X_lengths` input of a free sequence length (as `forward(X_lengths=)`),
        when the export takes lengths; None otherwise (every sequence runs all T steps)."""
        if not self.lengths or not isinstance(size, str):
            return None
        if size not in self.length_inputs:
            source = self.model.sequence_input(size)
            if source is None:
                return None
            self.length_inputs[size] = self.g.add_input(f"{source}_lengths", ["N"], self.g.TensorProto.INT32)
        return self.length_inputs[size]

    # -- the graph ----------------------------------------------------------------
    def build(self):
        needed = self.model.ancestors(self.model.outputs)
        self.model_inputs = set()
        for d in self.model.inputs:
            if d.name in needed:           # class indices are int64, as the module takes them
                elem = self.g.TensorProto.INT64 if d.classes is not None else None
                self.values[d.name] = self.g.add_input(d.name, ["N", *d.shape], elem)
                self.model_inputs.add(d.name)
        for node in self.model.nodes:
            if node.name not in needed or node.name in self.values:
                continue
            f = ONNX_EXPORTERS.get(node.op)
            if f is None:
                raise self.cannot(node, f"no ONNX form for `{node.op}`")
            self.g.scope = node.name
            out = f(self, node, *[self.values[i] for i in node.inputs])
            if out not in self.values.values() and out not in self.model_inputs:   # made here
                out = self.g.rename(out, node.name)
            self.values[node.name] = out
        self.g.scope = "graph"
        for name in self.model.outputs:
            tensor = self.values[name]
            if tensor != name:
                tensor = self.g.op("Identity", [tensor])
                tensor = self.g.rename(tensor, name)
                if tensor != name:
                    raise ExportError(f"output {name!r}: its name is taken in the graph")
            self.g.add_output(name, ["N", *self.shape(name)])
        return self.g


# ------------------------------------------------------------------ exporters
@onnx_exporter("input")
def _input(ex, node):
    raise ex.cannot(node, "an input the outputs do not read")


@onnx_exporter("target")
def _target(ex, node):
    raise ex.cannot(node, "a target is not part of the inference graph")


@onnx_exporter("dense")
def _dense(ex, node, x):
    """Gemm(x, W, b, transB=1) on a vector; over a sequence (N, T, D), MatMul by Wᵀ + b."""
    g = ex.g
    W, b = node.params["W"], node.params.get("b")
    if len(ex.shape(node.inputs[0])) == 1:
        inputs = [x, ex.param(W)] + ([ex.param(b)] if b else [])
        z = g.op("Gemm", inputs, transB=1)
    else:
        z = g.op("MatMul", [x, g.param(ex.params[W].T, f"{W}^T")])
        if b:
            z = g.op("Add", [z, ex.param(b)])
    return ex.activation(node, node.attrs.get("act", "identity"), z)


@onnx_exporter("conv2d")
def _conv2d(ex, node, x):
    W, b = node.params["W"], node.params.get("b")
    k, s, p = int(node.attrs["kernel"]), int(node.attrs["stride"]), int(node.attrs["pad"])
    inputs = [x, ex.param(W)] + ([ex.param(b)] if b else [])
    z = ex.g.op("Conv", inputs, kernel_shape=[k, k], strides=[s, s], pads=[p, p, p, p])
    return ex.activation(node, node.attrs.get("act", "identity"), z)


@onnx_exporter("maxpool", "avgpool")
def _pool(ex, node, x):
    size, s = int(node.attrs["size"]), int(node.attrs["stride"])
    op = "MaxPool" if node.op == "maxpool" else "AveragePool"
    return ex.g.op(op, [x], kernel_shape=[size, size], strides=[s, s])


@onnx_exporter("flatten")
def _flatten(ex, node, x):
    free = [d for d in ex.shape(node.inputs[0]) if isinstance(d, str)]
    if free:
        raise ex.cannot(node, f"flatten over the free size {free[0]}")
    return ex.g.op("Flatten", [x], axis=1)


@onnx_exporter("concat")
def _concat(ex, node, *parts):
    return ex.g.op("Concat", list(parts), axis=-1)


@onnx_exporter("dropout", "gaussian_noise", "mask_noise")
def _noise(ex, node, x):
    """Noise is off in `forward`: the layer is its input."""
    return x


@onnx_exporter("sample_normal")
def _sample_normal(ex, node, mu, logvar):
    if node.attrs.get("sample", False):
        raise ex.cannot(node, "sample=true draws fresh noise in `forward`; the module's draws cannot be "
                              "reproduced in ONNX")
    return mu                          # forward returns the mean


@onnx_exporter("expr")
def _expr(ex, node, *operands):
    """An elementwise expression: operands broadcast with the batch axis apart (a (K,) value
    against a (T, K) one gets a length-1 axis after the batch axis, as ops.broadcast reads it)."""
    rank = len(node.shape)
    symbols, env = {}, {}
    for k, (name, t) in enumerate(zip(node.inputs, operands)):
        s = sp.Symbol(f"v{k}")
        missing = rank - len(ex.shape(name))
        symbols[s] = ex.g.unsqueeze(t, list(range(1, 1 + missing)))
        env[name] = s
    expr = ex.sympy_of(node.attrs["expr"], env)
    out = ex.elementwise(expr, symbols, f"expression `{node.name}`")
    if any(s not in expr.free_symbols for s in symbols):       # sympy dropped an operand (x - x)
        shape = ex.g.op("Shape", [ex.g.op("Sum", list(symbols.values()))])
        out = ex.g.op("Expand", [out, shape])
    return out


@onnx_exporter("layer")
def _user_layer(ex, node, *args):
    from .index_layers import UserLayerExport
    return UserLayerExport(ex, node, args).run()


@onnx_exporter("embed")
def _embed(ex, node, x):
    """Gather: row x of E for every class index."""
    return ex.g.op("Gather", [ex.param(node.params["E"]), x], axis=0)


# ONNX's `epsilon` attributes are float32: 1e-3 is 1.00000005e-3 there, an error of 1e-9
# relative in a float64 graph. So a float64 layer norm is its primitives, and a batchnorm's
# eps is added to its running variance at export (in the graph's dtype) with epsilon=0.
@onnx_exporter("layernorm")
def _layernorm(ex, node, x):
    """LayerNormalization over the last axis (opset 17), gain g and shift b; in float64,
    (x − mean)/sqrt(var + eps)·g + b, the means a MatMul by a column of 1/K (ReduceMean's
    axes moved from attribute to input at opset 18; MatMul is the same in every opset)."""
    g, eps = ex.g, float(node.attrs["eps"])
    gain, shift = ex.param(node.params["g"]), ex.param(node.params["b"])
    if g.dtype != np.float64:
        return g.op("LayerNormalization", [x, gain, shift], axis=-1, epsilon=eps)
    k = ex.shape(node.inputs[0])[-1]
    mean_of = g.initializer(np.full((k, 1), 1.0 / k, g.dtype), f"const/mean{k}")
    xc = g.op("Sub", [x, g.op("MatMul", [x, mean_of])])
    var = g.op("MatMul", [g.op("Mul", [xc, xc]), mean_of])
    y = g.op("Div", [xc, g.op("Sqrt", [g.op("Add", [var, g.scalar(eps)])])])
    return g.op("Add", [g.op("Mul", [y, gain]), shift])


@onnx_exporter("batchnorm")
def _batchnorm(ex, node, x):
    """BatchNormalization with the running statistics (inference, as `forward`): over the
    channel axis of an image, the feature axis of a vector; a sequence's (N, T, K) is
    transposed to (N, K, T) and back. Its variance input is `NAME.running_var+eps`."""
    g = ex.g
    stats = node.attrs["stats"]
    var = ex.params[stats["running_var"]]
    var_eps = g.initializer(np.asarray(var, g.dtype) + np.asarray(node.attrs["eps"], g.dtype),
                            f"{stats['running_var']}+eps")
    inputs = [ex.param(node.params["g"]), ex.param(node.params["b"]), ex.param(stats["running_mean"]), var_eps]
    rank = len(ex.shape(node.inputs[0]))
    if rank == 2:
        x = g.transpose(x, [0, 2, 1])
    y = g.op("BatchNormalization", [x] + inputs, epsilon=0.0, momentum=float(1.0 - node.attrs["momentum"]))
    return g.transpose(y, [0, 2, 1]) if rank == 2 else y


# ONNX's gate order, in our gate names: LSTM iofc (ours i f o c), GRU zrh (ours z r h)
ONNX_GATES = {"rnn": ("",), "lstm": ("_i", "_o", "_f", "_c"), "gru": ("_z", "_r", "_h")}
# rnn's act= -> ONNX RNN activations (name, alpha)
RNN_ACTIVATIONS = {"tanh": ("Tanh", None), "relu": ("Relu", None), "sigmoid": ("Sigmoid", None),
                   "leaky_relu": ("LeakyRelu", 0.01), "softplus": ("Softplus", None),
                   "elu": ("Elu", 1.0), "identity": ("Affine", 1.0)}


@onnx_exporter("rnn", "lstm", "gru")
def _recurrent(ex, node, x):
    """ONNX RNN/LSTM/GRU, forward, time-major (onnxruntime runs layout=0 only): the input
    transposed to (T, N, D); W, R, B stacked in ONNX's gate order; the GRU with
    linear_before_reset=1 (ĥ = tanh(W_h x + b_h + r ⊙ (U_h h)), the lecture's GRU);
    `X_lengths` -> sequence_lens. return=last is Y_h, an example's own last state; return=all
    is Y, whose steps past an example's length ONNX zeroes and the module fills with the last
    state (it keeps the state there), so those steps are set to Y_h."""
    g = ex.g
    kind, H = node.op, int(node.attrs["hidden"])
    attrs = {"hidden_size": H, "direction": "forward"}
    if kind == "rnn":
        act = node.attrs.get("act", "tanh")
        if act not in RNN_ACTIVATIONS:
            raise ex.cannot(node, f"rnn with act={act}: ONNX RNN's activations are "
                                  f"{', '.join(sorted(RNN_ACTIVATIONS))}")
        name, alpha = RNN_ACTIVATIONS[act]
        attrs["activations"] = [name]
        if alpha is not None:
            attrs["activation_alpha"] = [alpha]
            if name == "Affine":
                attrs["activation_beta"] = [0.0]
    if kind == "gru":
        attrs["linear_before_reset"] = 1
    stack = lambda p: np.concatenate([ex.params[node.params[p + gate]] for gate in ONNX_GATES[kind]])  # noqa: E731
    W = g.param(stack("W")[None], f"{node.name}.W[onnx]")
    R = g.param(stack("U")[None], f"{node.name}.R[onnx]")
    b = stack("b")
    B = g.param(np.concatenate([b, np.zeros_like(b)])[None], f"{node.name}.B[onnx]")
    T = ex.shape(node.inputs[0])[0]
    lengths = ex.lengths_input(T)
    xt = g.op("Transpose", [x], perm=[1, 0, 2])
    Y, Y_h = g.op(kind.upper(), [xt, W, R, B] + ([lengths] if lengths else []), outputs=2, **attrs)
    last = g.squeeze(Y_h, [0])                                   # (N, H)
    if node.attrs.get("return", "all") == "last":
        return last
    seq = g.transpose(g.squeeze(Y, [1]), [1, 0, 2])               # (N, T, H)
    if lengths is None:
        return seq
    steps = g.op("Range", [g.int_scalar(0), g.op("Gather", [g.op("Shape", [x]), g.int_scalar(1)]),
                           g.int_scalar(1)])                      # (T,)
    valid = g.op("Less", [g.unsqueeze(steps, [0]), g.unsqueeze(g.op("Cast", [lengths], to=7), [1])])
    return g.op("Where", [g.unsqueeze(valid, [2]), seq, g.unsqueeze(last, [1])])


# ------------------------------------------------------------------ the model
def onnx_model(model: ir.ModelIR, params: dict, opset: int = DEFAULT_OPSET, dtype=None,
               lengths: bool = False):
    """The checked ONNX ModelProto of the model's inference graph (no file written)."""
    import onnx
    from .. import __version__
    if opset not in OPSETS:
        raise ValueError(f"opset {opset}: nndsl exports opsets {OPSETS.start}..{OPSETS.stop - 1}")
    if dtype is None:
        dtype = np.float32 if all(a.dtype == np.float32 for a in params.values()) and params else np.float64
    g = Exporter(model, params, dtype, lengths).build()
    h = g.helper
    graph = h.make_graph(g.nodes, model.name, g.inputs, g.outputs, g.initializers,
                         doc_string=f"nndsl model {model.name} ({os.path.basename(model.path)}): "
                                    f"the inference graph of Model.forward")
    m = h.make_model(graph, opset_imports=[h.make_opsetid("", opset)], producer_name="nndsl",
                     producer_version=__version__)
    m.ir_version = IR_VERSION[opset]
    h.set_model_props(m, {"nndsl.model": model.name, "nndsl.outputs": ",".join(model.outputs),
                          "nndsl.dtype": np.dtype(dtype).name})
    try:
        onnx.checker.check_model(m, full_check=True)
    except Exception as exc:        # a bug of the exporter, never the user's: say so, write nothing
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"the exported graph of {model.name!r} fails onnx.checker ({first}); "
                          "please report this") from None
    return m


def write_atomically(data: bytes, path: str) -> None:
    """Into a temporary file beside `path`, then renamed: no partial file, ever."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(suffix=".onnx.tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
