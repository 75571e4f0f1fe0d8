"""The built-in layers: signature, defaults, ranges, shape rule and parameters, one entry each.

Adding a layer is one `_layer(BuiltinLayer(...))` call below.  A shape rule gets
the operands (node name + per-example shape) and the bound scalar arguments and
returns the output shape, or raises `ShapeError` naming the argument at fault
(its span is where the diagnostic points).  A parameter rule returns the
layer's parameters with their shapes and fans.

Fan conventions (used by xavier/he initialisation):
  dense   W[units, in]           fan_in = in,        fan_out = units
  conv2d  W[F, C, k, k]          fan_in = C*k*k,     fan_out = F*k*k
  rnn/lstm/gru  W_*[hidden, in]  fan_in = in,        fan_out = hidden
                U_*[hidden, hidden]  fan_in = fan_out = hidden
  biases use the fans of their layer (they start at zero anyway).
"""
from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import Callable, Mapping, Optional, Sequence

from .ir import Shape
from .signature import (
    ACTIVATION,
    BOOL,
    INIT,
    POSITIVE_INT,
    TENSOR,
    Arg,
    ChoiceKind,
    IntKind,
    RealKind,
    Signature,
)


def fmt_shape(shape: Shape) -> str:
    """`(10,)`, `(T, 16)`, `()` -- the way numpy prints a shape."""
    if len(shape) == 1:
        return f"({shape[0]},)"
    return "(" + ", ".join(str(d) for d in shape) + ")"


class ShapeError(Exception):
    """An operand or argument that does not fit; `arg` names the argument to point at."""

    def __init__(self, message: str, arg: Optional[str] = None, hint: Optional[str] = None,
                 notes: tuple = ()):
        super().__init__(message)
        self.message, self.arg, self.hint, self.notes = message, arg, hint, notes


@dataclass(frozen=True)
class Operand:
    """An operand as messages describe it: a node (by name) or an anonymous value."""
    name: str                       # node name ("" for an anonymous value)
    shape: Shape
    classes: Optional[int] = None   # class-label targets
    what: str = "expression"        # how an anonymous value is called

    @property
    def label(self) -> str:
        return f"`{self.name}`" if self.name else f"the {self.what}"

    def described(self) -> str:
        if self.classes is not None:
            return f"{self.label} holds class labels (class({self.classes}))"
        return f"{self.label} has shape {fmt_shape(self.shape)}"


def broadcast(operands: Sequence[Operand]) -> Shape:
    """numpy-style broadcasting of per-example shapes (size-1 axes and scalars stretch)."""
    out: Shape = ()
    seen: list[Operand] = []
    for op in operands:
        merged = _broadcast2(out, op.shape)
        if merged is None:
            other = next((s for s in seen if _broadcast2(s.shape, op.shape) is None),
                         Operand("", out))
            raise ShapeError(f"shapes do not broadcast: {other.described()} and "
                             f"{op.described()}")
        out = merged
        seen.append(op)
    return out


def _broadcast2(a: Shape, b: Shape) -> Optional[Shape]:
    n = max(len(a), len(b))
    a = (1,) * (n - len(a)) + tuple(a)
    b = (1,) * (n - len(b)) + tuple(b)
    out = []
    for x, y in zip(a, b):
        if x == y or y == 1:
            out.append(x)
        elif x == 1:
            out.append(y)
        else:
            return None
    return tuple(out)


# ------------------------------------------------------------- the registry
@dataclass(frozen=True)
class ParamShape:
    name: str                       # local name: "W", "b", "U_i"
    shape: tuple[int, ...]
    fan_in: int
    fan_out: int
    bias: bool = False              # biases start at zero
    init: Optional[tuple] = None    # (kind, arg): the parameter's own start, not the model's default
    trainable: bool = True          # False: model state (a batchnorm's running statistics)


ShapeRule = Callable[[Sequence[Operand], Mapping[str, object]], Shape]
ParamRule = Callable[[Sequence[Operand], Mapping[str, object]], tuple[ParamShape, ...]]


def _no_params(ops, a) -> tuple[ParamShape, ...]:
    return ()


@dataclass(frozen=True)
class BuiltinLayer:
    name: str
    signature: Signature
    shape: ShapeRule
    params: ParamRule = _no_params
    doc: str = ""

    def attrs(self, values: Mapping[str, object]) -> dict[str, object]:
        """The IR attrs of a bound call: every scalar argument but `init` (which
        belongs to the parameters)."""
        return {k: v for k, v in values.items() if k != "init"}


BUILTIN_LAYERS: dict[str, BuiltinLayer] = {}


def _layer(spec: BuiltinLayer) -> None:
    BUILTIN_LAYERS[spec.name] = spec


# --------------------------------------------------- operand requirements
def _kind_of(shape: Shape) -> str:
    return {0: "a scalar", 1: "a vector", 2: "a sequence", 3: "an image"}.get(
        len(shape), f"a rank-{len(shape)} tensor")


def _fixed(op: Operand, layer: str, arg: str) -> tuple[int, ...]:
    free = [d for d in op.shape if isinstance(d, str)]
    if free:
        raise ShapeError(f"`{layer}` needs fixed sizes, but {op.label} has shape "
                         f"{fmt_shape(op.shape)} with free size `{free[0]}`", arg)
    return tuple(int(d) for d in op.shape)


def _vector(op: Operand, layer: str, arg: str = "x") -> int:
    if len(op.shape) == 2:
        raise ShapeError(
            f"`{layer}` expects a vector, but {op.label} is a sequence of shape "
            f"{fmt_shape(op.shape)}", arg,
            "reduce the sequence with rnn/lstm/gru(..., return=last), or use flatten(...)")
    if len(op.shape) != 1:
        hint = (f"use flatten({op.name or 'x'}) first" if len(op.shape) > 1 else None)
        raise ShapeError(f"`{layer}` expects a vector, but {op.label} is "
                         f"{_kind_of(op.shape)} of shape {fmt_shape(op.shape)}", arg, hint)
    return _fixed(op, layer, arg)[0]


def _image(op: Operand, layer: str, arg: str = "x") -> tuple[int, int, int]:
    if len(op.shape) != 3:
        raise ShapeError(f"`{layer}` expects an image (channels, height, width), but "
                         f"{op.label} is {_kind_of(op.shape)} of shape "
                         f"{fmt_shape(op.shape)}", arg,
                         "declare image inputs as `input img[C, H, W]`")
    c, h, w = _fixed(op, layer, arg)
    return c, h, w


def _sequence(op: Operand, layer: str, arg: str = "x") -> int:
    if len(op.shape) != 2:
        hint = "declare sequences as `input seq[T, D]` (T may be a free size)"
        raise ShapeError(f"`{layer}` expects a sequence (T, D), but {op.label} is "
                         f"{_kind_of(op.shape)} of shape {fmt_shape(op.shape)}", arg, hint)
    d = op.shape[1]
    if isinstance(d, str):
        raise ShapeError(f"`{layer}` needs a fixed feature size, but {op.label} has shape "
                         f"{fmt_shape(op.shape)}", arg)
    return int(d)


def _same_shapes(ops: Sequence[Operand], layer: str, args: Sequence[str]) -> Shape:
    for op, arg in zip(ops[1:], args[1:]):
        if op.shape != ops[0].shape:
            raise ShapeError(f"`{layer}` expects operands of the same shape, but "
                             f"{ops[0].described()} and {op.described()}", arg)
    return ops[0].shape


# ------------------------------------------------------------------ dense
def _dense_in(op: Operand) -> int:
    """dense reads a vector, or a sequence (T, K) step by step (it maps over the time axis)."""
    if len(op.shape) == 2:
        return _sequence(op, "dense")
    return _vector(op, "dense")


def _dense_shape(ops, a):
    _dense_in(ops[0])
    return tuple(ops[0].shape[:-1]) + (a["units"],)


def _dense_params(ops, a):
    d, u = _dense_in(ops[0]), a["units"]
    ps = (ParamShape("W", (u, d), d, u),)
    return ps + ((ParamShape("b", (u,), d, u, bias=True),) if a["bias"] else ())


_layer(BuiltinLayer(
    "dense",
    Signature((Arg("x", TENSOR), Arg("units", POSITIVE_INT),
               Arg("act", ACTIVATION, "identity", "identity"), Arg("bias", BOOL, True),
               Arg("init", INIT, None, "model default"))),
    _dense_shape, _dense_params,
    "out[k] = act(sum_d W[k,d] x[d] + b[k])"))


# ----------------------------------------------------------------- conv2d
def _window_out(size: int, k: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - k) // stride + 1


def _conv_shape(ops, a):
    c, h, w = _image(ops[0], "conv2d")
    k, s, p = a["kernel"], a["stride"], a["pad"]
    if k > h + 2 * p or k > w + 2 * p:
        raise ShapeError(f"kernel {k}x{k} is larger than the padded input "
                         f"{h + 2 * p}x{w + 2 * p} of {ops[0].label} "
                         f"(shape {fmt_shape(ops[0].shape)}, pad={p})", "kernel",
                         "use a smaller kernel or more padding")
    return (a["filters"], _window_out(h, k, s, p), _window_out(w, k, s, p))


def _conv_params(ops, a):
    c = _image(ops[0], "conv2d")[0]
    f, k = a["filters"], a["kernel"]
    ps = (ParamShape("W", (f, c, k, k), c * k * k, f * k * k),)
    return ps + ((ParamShape("b", (f,), c * k * k, f * k * k, bias=True),)
                 if a["bias"] else ())


_layer(BuiltinLayer(
    "conv2d",
    Signature((Arg("x", TENSOR), Arg("filters", POSITIVE_INT), Arg("kernel", POSITIVE_INT),
               Arg("stride", POSITIVE_INT, 1), Arg("pad", IntKind(lo=0), 0),
               Arg("act", ACTIVATION, "identity", "identity"), Arg("bias", BOOL, True),
               Arg("init", INIT, None, "model default"))),
    _conv_shape, _conv_params,
    "out[f,i,j] = act(sum_{c,p,q} W[f,c,p,q] x[c, i*s+p, j*s+q] + b[f])"))


# ------------------------------------------------------------------ pools
def _pool_shape(name):
    def rule(ops, a):
        c, h, w = _image(ops[0], name)
        size, s = a["size"], a["stride"]
        if size > h or size > w:
            raise ShapeError(f"pool window {size}x{size} is larger than the input "
                             f"{h}x{w} of {ops[0].label}", "size")
        return (c, _window_out(h, size, s, 0), _window_out(w, size, s, 0))
    return rule


for _name in ("maxpool", "avgpool"):
    _layer(BuiltinLayer(
        _name,
        Signature((Arg("x", TENSOR), Arg("size", POSITIVE_INT),
                   Arg("stride", POSITIVE_INT, lambda v: v["size"], "size"))),
        _pool_shape(_name), doc=f"per-channel window {_name[:3]}"))


# ---------------------------------------------------------------- flatten
def _flatten_shape(ops, a):
    if not ops[0].shape:
        raise ShapeError(f"`flatten` expects a tensor, but {ops[0].label} is a scalar", "x")
    return (prod(_fixed(ops[0], "flatten", "x")),)


_layer(BuiltinLayer("flatten", Signature((Arg("x", TENSOR),)), _flatten_shape,
                 doc="row-major flatten"))


# -------------------------------------------------------------- recurrent
def _recurrent(name: str, gates: tuple[str, ...], act: bool) -> BuiltinLayer:
    def shape(ops, a):
        _sequence(ops[0], name)
        return (ops[0].shape[0], a["hidden"]) if a["return"] == "all" else (a["hidden"],)

    def params(ops, a):
        d, h = _sequence(ops[0], name), a["hidden"]
        ps = []
        for prefix, shp, fan in (("W", (h, d), (d, h)), ("U", (h, h), (h, h))):
            ps += [ParamShape(f"{prefix}{g}", shp, *fan) for g in gates]
        ps += [ParamShape(f"b{g}", (h,), d, h, bias=True) for g in gates]
        return tuple(ps)

    args = [Arg("x", TENSOR), Arg("hidden", POSITIVE_INT)]
    if act:
        args.append(Arg("act", ACTIVATION, "tanh", "tanh"))
    args += [Arg("return", ChoiceKind(("all", "last")), "all", "all"),
             Arg("init", INIT, None, "model default")]
    return BuiltinLayer(name, Signature(tuple(args)), shape, params,
                     f"recurrent {name}; return=all gives (T, hidden), last gives (hidden,)")


_layer(_recurrent("rnn", ("",), act=True))
_layer(_recurrent("lstm", ("_i", "_f", "_o", "_c"), act=False))
_layer(_recurrent("gru", ("_z", "_r", "_h"), act=False))


# ------------------------------------------------- noise and regularisers
def _identity_shape(ops, a):
    return ops[0].shape


_PROB = RealKind(lo=0.0, hi=1.0, hi_open=True)

_layer(BuiltinLayer("dropout", Signature((Arg("x", TENSOR), Arg("p", _PROB))),
                 _identity_shape, doc="inverted dropout while training"))
_layer(BuiltinLayer("mask_noise", Signature((Arg("x", TENSOR), Arg("p", _PROB))),
                 _identity_shape, doc="zero-out with probability p while training"))
_layer(BuiltinLayer("gaussian_noise",
                 Signature((Arg("x", TENSOR), Arg("std", RealKind(lo=0.0)))),
                 _identity_shape, doc="add N(0, std^2) noise while training"))


def _sample_shape(ops, a):
    return _same_shapes(ops, "sample_normal", ("mu", "logvar"))


_layer(BuiltinLayer("sample_normal",
                 Signature((Arg("mu", TENSOR), Arg("logvar", TENSOR),
                            Arg("sample", BOOL, False))),
                 _sample_shape, doc="mu + exp(logvar/2) * eps"))


# ----------------------------------------------------------------- concat
def _concat_shape(ops, a):
    if len(ops) < 2:
        raise ShapeError("`concat` needs at least two operands")
    first = ops[0]
    for i, op in enumerate(ops):
        arg = f"inputs[{i}]"
        if not op.shape:
            raise ShapeError(f"`concat` cannot join scalars: {op.label} has shape ()", arg)
        if len(op.shape) != len(first.shape):
            raise ShapeError(f"`concat` operands must have the same rank, but "
                             f"{first.described()} and {op.described()}", arg)
        if op.shape[:-1] != first.shape[:-1]:
            raise ShapeError(f"`concat` joins along the last axis; the other axes must "
                             f"agree, but {first.described()} and {op.described()}", arg)
        if isinstance(op.shape[-1], str):
            raise ShapeError(f"`concat` needs a fixed last axis, but {op.described()}", arg)
    return first.shape[:-1] + (sum(int(op.shape[-1]) for op in ops),)


_layer(BuiltinLayer("concat", Signature((), variadic="inputs"), _concat_shape,
                 doc="join along the last per-example axis"))


# -------------------------------------------------------------- embeddings
def _embed_shape(ops, a):
    x = ops[0]
    if x.classes is None:
        raise ShapeError(f"`embed` expects class indices, but {x.described()}", "x",
                         "declare them as `input chars[T]: class(V)` (or `input c: class(V)`)")
    return tuple(x.shape) + (a["dim"],)


def _embed_params(ops, a):
    v, d = ops[0].classes, a["dim"]
    # PyTorch's nn.Embedding: weight (V, dim), drawn from N(0, 1)
    return (ParamShape("E", (v, d), v, d, init=("normal", 1.0)),)


_layer(BuiltinLayer(
    "embed",
    Signature((Arg("x", TENSOR), Arg("dim", POSITIVE_INT), Arg("init", INIT, None, "normal(1)"))),
    _embed_shape, _embed_params,
    "out[..., k] = E[x[...], k]: row x of E (a gather)"))


# ----------------------------------------------------------- normalisation
def _features(op: Operand, layer: str, ranks: tuple[int, ...], hint: str) -> Shape:
    if op.classes is not None:
        raise ShapeError(f"`{layer}` expects numbers, but {op.described()}", "x",
                         f"embed class indices first: embed({op.name or 'x'}, dim)")
    if len(op.shape) not in ranks:
        raise ShapeError(f"`{layer}` expects {hint}, but {op.label} is {_kind_of(op.shape)} of "
                         f"shape {fmt_shape(op.shape)}", "x")
    return op.shape


def _layernorm_width(op: Operand) -> int:
    shape = _features(op, "layernorm", (1, 2), "a vector (K) or a sequence (T, K)")
    if isinstance(shape[-1], str):
        raise ShapeError(f"`layernorm` needs a fixed feature size, but {op.label} has shape "
                         f"{fmt_shape(shape)}", "x")
    return int(shape[-1])


def _layernorm_params(ops, a):
    k = _layernorm_width(ops[0])
    return (ParamShape("g", (k,), k, k, init=("ones", None)),
            ParamShape("b", (k,), k, k, bias=True))


_layer(BuiltinLayer(
    "layernorm",
    Signature((Arg("x", TENSOR), Arg("eps", RealKind(lo=0.0, lo_open=True), 1e-5))),
    lambda ops, a: (_layernorm_width(ops[0]), ops[0].shape)[1], _layernorm_params,
    "out[k] = g[k]·(x[k] − mean_k x)/sqrt(var_k x + eps) + b[k], per example over the last axis"))


def batchnorm_channels(shape: Shape) -> int:
    """The axis a batchnorm keeps: the channel of an image (C, H, W), the feature (last axis)
    of a vector (K) or a sequence (T, K)."""
    return int(shape[0] if len(shape) == 3 else shape[-1])


def _batchnorm_width(op: Operand) -> int:
    shape = _features(op, "batchnorm", (1, 2, 3), "a vector (K), a sequence (T, K) or an image (C, H, W)")
    axis = 0 if len(shape) == 3 else len(shape) - 1
    if isinstance(shape[axis], str) or (len(shape) == 3 and any(isinstance(d, str) for d in shape)):
        raise ShapeError(f"`batchnorm` needs fixed sizes, but {op.label} has shape {fmt_shape(shape)}", "x")
    return batchnorm_channels(shape)


def _batchnorm_params(ops, a):
    c = _batchnorm_width(ops[0])
    return (ParamShape("g", (c,), c, c, init=("ones", None)),
            ParamShape("b", (c,), c, c, bias=True),
            ParamShape("running_mean", (c,), c, c, init=("zeros", None), trainable=False),
            ParamShape("running_var", (c,), c, c, init=("ones", None), trainable=False))


_layer(BuiltinLayer(
    "batchnorm",
    Signature((Arg("x", TENSOR), Arg("momentum", RealKind(lo=0.0, hi=1.0), 0.1),
               Arg("eps", RealKind(lo=0.0, lo_open=True), 1e-5))),
    lambda ops, a: (_batchnorm_width(ops[0]), ops[0].shape)[1], _batchnorm_params,
    "out = g·(x − mean)/sqrt(var + eps) + b, mean and var over the batch (and steps, positions) "
    "per feature or channel; running statistics in `forward`"))
