"""The prelude: every built-in layer, activation and loss as index formulas, in one place.

Each entry turns a checked IR node (or loss term) into `Stage`s through the
`Builder`, in the notation of the lecture.  Nothing here differentiates:
`nndsl.derive` gets every derivative from sympy.  Adding a layer is one
`@layer("name")` function; adding a loss is one `@loss("name")` function.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Callable

import sympy as sp

from ..diagnostics import CompileError, Diagnostic
from ..frontend import ir
from ..registry import registrar
from . import functions as fn
from .formulas import Builder, Handle, N, fixed_size, idx, make_stage

LAYER_FORMULAS: dict[str, Callable] = {}
LOSS_FORMULAS: dict[str, Callable] = {}


layer = registrar(LAYER_FORMULAS)          # @layer("dense"): a layer's formula
loss = registrar(LOSS_FORMULAS)            # @loss("squared"): a loss's formula


class Graph:
    """The model being expanded: node values and parameters as Builder tensors."""

    def __init__(self, model: ir.ModelIR, conv_form: str | None = None):
        self.model = model
        self.conv_form = conv_form or CONV_FORM     # how conv2d is written (CONV_FORM below)
        self.b = Builder()
        self.values: dict[str, Handle] = {}
        self.params: dict[str, Handle] = {}
        self.sizes = {}                      # free size name -> sympy symbol
        self.node_stages: dict[str, tuple[int, int]] = {}   # node -> its slice of b.stages
        # a tensor that stacks parameters consecutive in theta (a recurrence's gates) -> them
        self.stacked: dict[str, list[str]] = {}
        # per-example lengths: free size T -> the (N, T) step mask (1 before the example's
        # length, else 0) the Model makes from `x_lengths=` (all ones without), and its source
        self.masks: dict[sp.Symbol, Handle] = {}
        self.mask_info: dict[str, tuple[str, str]] = {}     # mask tensor -> (size, input)
        for p in model.params:
            self.params[p.name] = self.b.tensor(p.name, p.shape, "param")
        # running statistics (model state in theta, never differentiated): a batchnorm's
        # forward reads them, and `step` runs `stat_updates` after the gradient
        for p in model.stats:
            self.params[p.name] = self.b.tensor(p.name, p.shape, "param")
        self.stat_updates: dict[str, list] = {}     # node -> its running statistics' update stages

    def size(self, d):
        if isinstance(d, str):
            return self.sizes.setdefault(d, sp.Symbol(d, integer=True, positive=True))
        return sp.Integer(d)

    def full_shape(self, shape) -> tuple:
        return (N,) + tuple(self.size(d) for d in shape)

    def new_value(self, label: str, shape, role="value") -> Handle:
        return self.b.tensor(label, self.full_shape(shape), role)

    def sequence_mask(self, size):
        """The step mask of a free sequence length (the first axis of a sequence input), or
        None for a fixed length: steps past an example's length keep its state and do not
        count in its loss."""
        if not isinstance(size, sp.Symbol) or size == N:
            return None
        if size not in self.masks:
            source = self.model.sequence_input(str(size))
            if source is None:
                return None
            h = self.b.tensor(f"{source}_mask", (N, size), "input")
            self.masks[size] = h
            self.mask_info[h.name] = (str(size), source)
        return self.masks[size]

    def param_tensors(self, names) -> list[str]:
        """The tensors that hold these parameters, stacked ones once (what derive takes)."""
        member = {m: t for t, ms in self.stacked.items() for m in ms}
        out = []
        for name in names:
            t = member.get(name, self.params[name].name)
            if t not in out:
                out.append(t)
        return out

    def param(self, node: ir.Node, local: str) -> Handle:
        return self.params[node.params[local]]

    def stat(self, node: ir.Node, local: str) -> Handle:
        return self.params[node.attrs["stats"][local]]

    def unsupported(self, node: ir.Node, what: str):
        raise CompileError(Diagnostic(
            f"`{node.op}` is not supported by the code generator yet ({what})", node.span,
            hint="it checks, but building it arrives with a later release"))


def loop_indices(rank: int) -> tuple[sp.Symbol, ...]:
    """(n, i1, ..., i_rank): the batch index and one index per per-example axis."""
    return idx("n " + " ".join(f"i{j}" for j in range(1, rank + 1))) if rank else idx("n")


def broadcast(h: Handle, index: tuple, result: tuple) -> sp.Expr:
    """`h` read at the (n, i...) index of a result of full shape `result`, numpy-style (right-aligned)."""
    per_example = h.shape[1:]
    inner, sizes = index[1:], result[1:]
    skip = len(inner) - len(per_example)
    ind = [index[0]]
    for size, i, full in zip(per_example, inner[skip:], sizes[skip:]):
        ind.append(sp.Integer(0) if size == 1 and full != 1 else i)
    return h[tuple(ind)]


def result_shape(handles) -> tuple:
    """The broadcast full shape of several tensors (scalars ignored)."""
    shapes = [h.shape for h in handles if isinstance(h, Handle)]
    rank = max(len(s) for s in shapes)
    out = []
    for axis in range(rank):
        sizes = [s[axis - rank + len(s)] for s in shapes if axis - rank + len(s) >= 0]
        out.append(next((x for x in sizes if x != 1), sizes[0]))
    return tuple(out)


# --------------------------------------------------------------- activations
def activation_fn(g: Graph, name: str) -> Callable[[sp.Expr], sp.Expr]:
    if name in g.model.activations:
        return user_function(g, g.model.activations[name])
    return fn.BUILTIN[name]


def user_function(g: Graph, f: ir.UserFn) -> Callable:
    """A user activation/loss as a callable on sympy arguments (missing args take defaults)."""
    def call(*args, **kwargs):
        env = dict(zip(f.params, args))
        for p in f.params[len(args):]:
            env[p] = number(kwargs.get(p, f.defaults[p]))
        return to_sympy(g, f.body, env)
    return call


def apply_activation(g: Graph, act: str, a: Handle, out_label: str, note: str) -> Handle:
    """out = act(a) elementwise; softmax normalises over the last axis."""
    if act == "identity":
        return a
    shape = a.shape
    ind = loop_indices(len(shape) - 1)
    out = g.b.tensor(out_label, shape, "value")
    if act == "softmax":
        lse = g.b.tensor(out_label + ".lse", shape[:-1], "value")
        g.b.assign(lse, ind[:-1], a[ind], over=(ind[-1],), reduce="logsumexp",
                   note=f"log Σ exp over the last axis of {a.tensor.label}")
        g.b.assign(out, ind, sp.exp(a[ind] - lse[ind[:-1]]), note=note)
        return out
    g.b.assign(out, ind, activation_fn(g, act)(a[ind]), note=note)
    return out


# --------------------------------------------------------------- expressions
def number(v) -> sp.Expr:
    """A literal as sympy: integral values stay exact (prints `2·x`, not `2.0·x`)."""
    if isinstance(v, sp.Expr):
        return v
    return sp.Integer(int(v)) if float(v).is_integer() else sp.Float(v)


_OPS = {"+": sp.Add, "*": sp.Mul, "-": lambda a, b: a - b, "/": lambda a, b: a / b,
        "^": sp.Pow, "neg": lambda a: -a}
_CMP = {"<": sp.StrictLessThan, "<=": sp.LessThan, ">": sp.StrictGreaterThan,
        ">=": sp.GreaterThan, "==": sp.Eq, "!=": sp.Ne}


def to_sympy(g: Graph, e: ir.Expr, env: dict) -> sp.Expr:
    """An IR expression as sympy; `env` maps Ref/IVar/Access names to sympy values."""
    if isinstance(e, ir.Const):
        return number(e.value)
    if isinstance(e, (ir.Ref, ir.IVar)):
        value = env[e.name]
        return value(*()) if callable(value) else value
    if isinstance(e, ir.Access):
        return env[e.tensor][tuple(to_sympy(g, i, env) for i in e.indices)]
    if isinstance(e, ir.Apply):
        if e.fn == "where":
            cond, a, b = e.args
            lhs, rhs = (to_sympy(g, x, env) for x in cond.args)
            return fn.WHERE[cond.fn](lhs, rhs, to_sympy(g, a, env), to_sympy(g, b, env))
        args = [to_sympy(g, a, env) for a in e.args]
        if e.fn in _OPS:
            return _OPS[e.fn](*args)
        if e.fn in _CMP:
            return _CMP[e.fn](*args)
        return activation_fn(g, e.fn)(*args)
    raise TypeError(f"unexpected expression {e!r}")


# -------------------------------------------------------------------- layers
@layer("input")
def _input(g: Graph, node: ir.Node):
    if node.attrs.get("classes"):          # class indices: (N,), or (N, T) per step
        return g.b.tensor(node.name, g.full_shape(node.shape), "input", dtype="int")
    return g.b.tensor(node.name, g.full_shape(node.shape), "input")


@layer("target")
def _target(g: Graph, node: ir.Node):
    if node.attrs.get("classes"):          # (N,), or (N, T) for per-step labels
        return g.b.tensor(node.name, g.full_shape(node.shape), "labels", dtype="int")
    return g.b.tensor(node.name, g.full_shape(node.shape), "target")


@layer("dense")
def _dense(g: Graph, node: ir.Node, x: Handle):
    """a[n,k] = Σ_d W[k,d]·x[n,d] + b[k];  out = act(a). On a sequence (N, T, D) it maps
    over the time axis: a[n,s,k] = Σ_d W[k,d]·x[n,s,d] + b[k], one GEMM over all N·T rows."""
    if len(x.shape) not in (2, 3):
        g.unsupported(node, "dense on a rank > 2 input")
    n, k, d = idx("n k d")
    W = g.param(node, "W")
    act = node.attrs.get("act", "identity")
    bias = node.attrs.get("bias", True)
    # The last stage of the node carries the node's own name.
    z_label = node.name if act == "identity" and not bias else node.name + ".z"
    z = g.b.tensor(z_label, x.shape[:-1] + (W.shape[0],), "value")
    if len(x.shape) == 2:
        g.b.assign(z, (n, k), W[k, d] * x[n, d], over=(d,), reduce="sum", note=f"{node.name}: W·x")
    else:
        _dense_rows(g, node, x, W, z)
    ind = loop_indices(len(z.shape) - 1)
    a = z
    if bias:
        b = g.param(node, "b")
        a = g.b.tensor(node.name if act == "identity" else node.name + ".a", z.shape, "value")
        g.b.assign(a, ind, z[ind] + b[ind[-1]], note=f"{node.name}: + b")
    return apply_activation(g, act, a, node.name, f"{node.name} = {act}(a)")


def _dense_rows(g: Graph, node: ir.Node, x: Handle, W: Handle, z: Handle) -> None:
    """z[n,s,·] = W·x[n,s,·] for every step: a (N, T, D) value in the workspace is viewed as
    N·T rows (`Tensor.view`, no copy) so that it is one GEMM; a data input loops."""
    r, s, k, d, n = idx("r s k d n")
    if x.tensor.role != "value":
        g.b.assign(z, (n, s, k), W[k, d] * x[n, s, d], over=(d,), reduce="sum", note=f"{node.name}: W·x_t")
        return
    rows = lambda h: g.b.tensor(h.tensor.label + "[rows]", (h.shape[0] * h.shape[1], h.shape[2]),  # noqa: E731
                                "value", view=(h.name, 0, "rows"))
    x_rows, z_rows = rows(x), rows(z)
    g.b.assign(z_rows, (r, k), W[k, d] * x_rows[r, d], over=(d,), reduce="sum",
               note=f"{node.name}: W·x_t, all steps")


@layer("expr")
def _expr(g: Graph, node: ir.Node, *operands: Handle):
    out = g.new_value(node.name, node.shape)
    ind = loop_indices(len(node.shape))
    env = {name: broadcast(h, ind, out.shape) for name, h in zip(node.inputs, operands)}
    g.b.assign(out, ind, to_sympy(g, node.attrs["expr"], env), note=f"{node.name} (expression)",
               sizes=dict(zip(ind, out.shape)))
    return out


@layer("concat")
def _concat(g: Graph, node: ir.Node, *parts: Handle):
    out = g.new_value(node.name, node.shape)
    ind = loop_indices(len(node.shape))
    offset = 0
    for name, h in zip(node.inputs, parts):
        shifted = ind[:-1] + (ind[-1] + offset,)
        g.b.assign(out, shifted, h[ind], note=f"{node.name}[..., {offset}:] = {name}",
                   sizes=dict(zip(ind, h.shape)))
        offset += int(h.shape[-1])
    return out


@layer("flatten")
def _flatten(g: Graph, node: ir.Node, x: Handle):
    """out[n, Σ_j i_j·stride_j] = x[n, i...] (row-major)."""
    out = g.new_value(node.name, node.shape)
    ind = loop_indices(len(x.shape) - 1)
    flat, stride = sp.Integer(0), 1
    for i, size in reversed(list(zip(ind[1:], x.shape[1:]))):
        flat += i * stride
        stride *= int(size)
    g.b.assign(out, (ind[0], flat), x[ind], note=f"{node.name} = flatten({node.inputs[0]})")
    return out


# ------------------------------------------------------- images: (C, H, W)
# Stages marked `attrs["view"]` only rearrange their input (a zero-padded copy, the im2col
# gather): a reader of the formulas, such as the gradient printer, may substitute their
# right-hand side to show `x[n, c, i·s+p−pad, j·s+q−pad]` instead of `c1.col[c,p,q,n,i,j]`.
def _padded(g: Graph, node: ir.Node, x: Handle, pad: int) -> Handle:
    """x with `pad` zeros around H and W: a zeroed tensor, then x written at an affine offset.
    The conv then reads only affine, always in-bounds accesses (no guards in its loops), and
    Δx comes out of derive as the plain read Δx[n,c,i,j] = Δxp[n,c,i+pad,j+pad]."""
    if pad == 0:
        return x
    n, c, h, w = idx("n c h w")
    _, C, H, W = x.shape
    xp = g.b.tensor(node.name + ".pad", (N, C, H + 2 * pad, W + 2 * pad), "value")
    g.b.assign(xp, (n, c, h, w), sp.Integer(0), note=f"{node.name}: zero border")
    g.b.assign(xp, (n, c, h + pad, w + pad), x[n, c, h, w], note=f"{node.name}: input inside a {pad}-wide zero border",
               attrs={"view": "pad"})
    return xp


def _window(x: Handle, n, c, i, j, p, q, stride: int):
    """x[n, c, i·s + p, j·s + q]: the (p, q) element of the window of output (i, j)."""
    return x[n, c, i * stride + p, j * stride + q]


# How conv2d is written (docs/performance.md, "Convolutions"): through its im2col matrix,
# so that the convolution and both of its adjoints are single GEMMs, or as the direct window
# sum (loop nests).  "rows": col is (N·H'·W') × CK², one window per row (tall GEMMs, but the
# loops around them transpose); "columns": col is CK² × (N·H'·W') and the GEMM's result is
# channel-major (F, N, H', W'), so that every loop around the GEMMs runs along an image row
# (vectorised).  All are the same function of W and x and derive differentiates any of them;
# the switch exists to measure one against the other (benchmarks/conv_lowering.py).
CONV_FORM = "columns"


@layer("conv2d")
def _conv2d(g: Graph, node: ir.Node, x: Handle):
    """out[n,f,i,j] = act(Σ_{c,p,q} W[f,c,p,q]·xp[n,c,i·s+p,j·s+q] + b[f])  (xp: x zero-padded).

    Through im2col ("columns"):  col[c,p,q,n,i,j] = xp[n,c,i·s+p,j·s+q]  (a gather: a map
    with affine reads), zc[f,n,i,j] = Σ_{c,p,q} W[f,c,p,q]·col[c,p,q,n,i,j]  (one GEMM,
    F × CK² times CK² × N·H'·W'), then a[n,f,i,j] = zc[f,n,i,j] + b[f] and out = act(a) (one
    loop nest that also puts the batch index first again).  derive then gives ΔW = Δzc·colᵀ
    and Δcol = Wᵀ·Δzc (two GEMMs) and Δxp as the scatter-add of Δcol over the windows
    (col2im).  "rows" is the same with col[n,i,j,c,p,q] and zc[n,i,j,f]."""
    n, f, i, j, c, p, q = idx("n f i j c p q")
    W = g.param(node, "W")
    s, pad = int(node.attrs["stride"]), int(node.attrs["pad"])
    act = node.attrs.get("act", "identity")
    bias = node.attrs.get("bias", True)
    src = _padded(g, node, x, pad)
    shape = g.full_shape(node.shape)
    F_, C, K = W.shape[0], W.shape[1], W.shape[2]
    _, _, Ho, Wo = shape
    window = _window(src, n, c, i, j, p, q, s)
    if g.conv_form == "columns":
        col = g.b.tensor(node.name + ".col", (C, K, K, N, Ho, Wo), "value")
        g.b.assign(col, (c, p, q, n, i, j), window, note=f"{node.name}: im2col, every window as a column",
                   attrs={"view": "im2col"})
        zc = g.b.tensor(node.name + ".zc", (F_, N, Ho, Wo), "value")
        g.b.assign(zc, (f, n, i, j), W[f, c, p, q] * col[c, p, q, n, i, j], over=(c, p, q), reduce="sum",
                   note=f"{node.name}: W·col")
        z_read = zc[f, n, i, j]
    elif g.conv_form == "rows":
        col = g.b.tensor(node.name + ".col", (N, Ho, Wo, C, K, K), "value")
        g.b.assign(col, (n, i, j, c, p, q), window, note=f"{node.name}: im2col, every window as a row",
                   attrs={"view": "im2col"})
        zc = g.b.tensor(node.name + ".zc", (N, Ho, Wo, F_), "value")
        g.b.assign(zc, (n, i, j, f), col[n, i, j, c, p, q] * W[f, c, p, q], over=(c, p, q), reduce="sum",
                   note=f"{node.name}: col·Wᵀ")
        z_read = zc[n, i, j, f]
    else:
        z = g.b.tensor(node.name + ".z", shape, "value")
        g.b.assign(z, (n, f, i, j), W[f, c, p, q] * window, over=(c, p, q), reduce="sum",
                   note=f"{node.name}: Σ_c,p,q W·x window")
        z_read = z[n, f, i, j]
    a = g.b.tensor(node.name if act == "identity" else node.name + ".a", shape, "value")
    if bias:
        g.b.assign(a, (n, f, i, j), z_read + g.param(node, "b")[f], note=f"{node.name}: + b")
    else:
        g.b.assign(a, (n, f, i, j), z_read, note=f"{node.name}: (N, F, H, W) order")
    return apply_activation(g, act, a, node.name, f"{node.name} = {act}(a)")


@layer("maxpool")
def _maxpool(g: Graph, node: ir.Node, x: Handle):
    """out[n,c,i,j] = max_{p,q} x[n,c,i·s+p,j·s+q].  The window's first arg-max (row-major,
    p·size + q) is kept beside it: derive routes Δout to exactly that element (ties: the
    first in the window, as PyTorch), rather than to every element equal to the max."""
    n, c, i, j, p, q = idx("n c i j p q")
    size, s = int(node.attrs["size"]), int(node.attrs["stride"])
    shape = g.full_shape(node.shape)
    sizes = {p: sp.Integer(size), q: sp.Integer(size)}
    arg = g.b.tensor(node.name + ".argmax", shape, "value")
    g.b.assign(arg, (n, c, i, j), _window(x, n, c, i, j, p, q, s), over=(p, q), reduce="argmax",
               sizes=sizes, note=f"{node.name}: first arg-max of each window")
    out = g.b.tensor(node.name, shape, "value")
    g.b.assign(out, (n, c, i, j), _window(x, n, c, i, j, p, q, s), over=(p, q), reduce="max",
               sizes=sizes, attrs={"argmax": arg.name}, note=f"{node.name} = max over each window")
    return out


@layer("avgpool")
def _avgpool(g: Graph, node: ir.Node, x: Handle):
    """out[n,c,i,j] = Σ_{p,q} x[n,c,i·s+p,j·s+q] / size²."""
    n, c, i, j, p, q = idx("n c i j p q")
    size, s = int(node.attrs["size"]), int(node.attrs["stride"])
    out = g.b.tensor(node.name, g.full_shape(node.shape), "value")
    g.b.assign(out, (n, c, i, j), _window(x, n, c, i, j, p, q, s) / (size * size), over=(p, q),
               reduce="sum", sizes={p: sp.Integer(size), q: sp.Integer(size)},
               note=f"{node.name} = mean over each window")
    return out


# ----------------------------------------------------- embeddings, normalisation
@layer("embed")
def _embed(g: Graph, node: ir.Node, x: Handle):
    """out[n,(t,)k] = E[x[n,(t)], k]: row x of E, a gather through the class index. Its adjoint
    comes out of derive as the scatter-add ΔE[x[n,(t)], k] += Δout[n,(t,)k] (rows of E that no
    example reads get no gradient), like the adjoint of any affine read."""
    E = g.param(node, "E")
    rows = loop_indices(len(x.shape) - 1)
    k = idx("k")[0]
    out = g.b.tensor(node.name, x.shape + (E.shape[1],), "value")
    g.b.assign(out, rows + (k,), E[x[rows], k], note=f"{node.name} = row {x.tensor.label} of E")
    return out


def _normalise(g: Graph, node: ir.Node, x: Handle, keep: tuple, over: tuple, ind: tuple, count,
               what: str, batch: bool):
    """mean[keep] = Σ_over x / count;  xc = x − mean;  var[keep] = Σ_over xc² / count (biased);
    r = rsqrt(var + eps);  out = g·xc·r + b  (g, b indexed by the kept feature/channel).
    `keep` indexes the statistics, `over` is summed; both are taken from `ind`, x's index."""
    eps = sp.Float(node.attrs["eps"])
    gain, shift = g.param(node, "g"), g.param(node, "b")
    sizes = dict(zip(ind, x.shape))
    stat_shape = tuple(sizes[v] for v in keep)
    # the statistics are named in `nndsl grad` (mean_h, var_h, rstd_h, xc_h), not inlined
    attrs = lambda local: {"named": True, **({"batchstat": g.stat(node, local).name} if batch else {})}   # noqa: E731
    mean = g.b.tensor(node.name + ".mean", stat_shape, "value")
    g.b.assign(mean, keep, x[ind] / count, over=over, reduce="sum", sizes=sizes,
               attrs=attrs("running_mean"), note=f"{node.name}: mean over {what}")
    xc = g.b.tensor(node.name + ".xc", x.shape, "value")
    g.b.assign(xc, ind, x[ind] - mean[keep], note=f"{node.name}: x − mean", attrs={"named": True})
    var = g.b.tensor(node.name + ".var", stat_shape, "value")
    g.b.assign(var, keep, xc[ind] ** 2 / count, over=over, reduce="sum", sizes=sizes,
               attrs=attrs("running_var"), note=f"{node.name}: variance over {what}")
    r = g.b.tensor(node.name + ".rstd", stat_shape, "value")
    g.b.assign(r, keep, fn.rsqrt(var[keep] + eps), note=f"{node.name}: 1/sqrt(var + eps)", attrs={"named": True})
    c = ind[-1] if not batch or len(ind) != 4 else ind[1]        # the feature, or an image's channel
    out = g.b.tensor(node.name, x.shape, "value")
    g.b.assign(out, ind, gain[c] * xc[ind] * r[keep] + shift[c], note=f"{node.name} = g·(x − mean)/σ + b")
    if batch:
        # the running statistics, updated by `step` after its gradient (PyTorch's rule: the
        # unbiased variance, count/(count − 1)·var, with weight `momentum`)
        m = sp.Float(node.attrs["momentum"])
        rm, rv = g.stat(node, "running_mean"), g.stat(node, "running_var")
        unbiased = count / fn.maximum(count - 1, 1)
        nest = {"nest": node.name}          # one loop nest per layer (plan/fuse.py)
        g.stat_updates[node.name] = [
            replace(make_stage(rm.name, keep, (1 - m) * rm[keep] + m * mean[keep], g.b.tensors,
                               note=f"{node.name}: running mean"), attrs=nest),
            replace(make_stage(rv.name, keep, (1 - m) * rv[keep] + m * unbiased * var[keep], g.b.tensors,
                               note=f"{node.name}: running variance (unbiased)"), attrs=nest)]
    return out


@layer("layernorm")
def _layernorm(g: Graph, node: ir.Node, x: Handle):
    """Per example (and per step of a sequence) over the last axis, gain g and shift b per feature."""
    ind = _norm_indices(len(x.shape))
    return _normalise(g, node, x, ind[:-1], ind[-1:], ind, fixed_size(x.shape[-1]), "the features", batch=False)


def _norm_indices(rank: int) -> tuple:
    """The lecture's letters (they are the summation indices `nndsl grad` prints)."""
    return idx({2: "n k", 3: "n t k", 4: "n c i j"}[rank])


@layer("batchnorm")
def _batchnorm(g: Graph, node: ir.Node, x: Handle):
    """Over the batch per feature: (N, K) over n; a sequence (N, T, K) over n and t; an image
    (N, C, H, W) over n, h and w per channel. Training normalises with the batch's mean and
    biased variance (its gradient couples the examples, and derive finds that coupling like
    any other); `forward` with the running statistics (`plan/module_plan.py: inference`)."""
    ind = _norm_indices(len(x.shape))
    if len(x.shape) == 4:
        keep, what = (ind[1],), "the batch and the positions"
    else:
        keep, what = (ind[-1],), "the batch" if len(x.shape) == 2 else "the batch and the steps"
    over = tuple(v for v in ind if v not in keep)
    sizes = [dict(zip(ind, x.shape))[v] for v in over]
    fixed = sp.prod([d for d in sizes if d.is_Integer])
    count = sp.prod([d for d in sizes if not d.is_Integer]) * (fixed_size(fixed) if fixed != 1 else 1)
    return _normalise(g, node, x, keep, over, ind, count, what, batch=True)


def _noise(g: Graph, node: ir.Node, dist: str, **attrs) -> Handle:
    eps = g.b.tensor(node.name + ".noise", g.full_shape(node.shape), "noise")
    return g.b.special("draw", eps, note=f"{node.name}: {dist} noise", dist=dist, **attrs)


def _masked(g: Graph, node: ir.Node, x: Handle, scale: float, what: str) -> Handle:
    """out = x·mask with mask ∈ {0, scale}, kept with probability 1 - p; forward uses mask = 1."""
    mask = _noise(g, node, "keep", p=float(node.attrs["p"]), scale=scale, neutral=1.0)
    out = g.new_value(node.name, node.shape)
    ind = loop_indices(len(node.shape))
    g.b.assign(out, ind, x[ind] * mask[ind], note=f"{node.name} = {what}")
    return out


@layer("dropout")
def _dropout(g: Graph, node: ir.Node, x: Handle):
    """Inverted dropout: the kept units are scaled by 1/(1-p), so the expectation is x."""
    return _masked(g, node, x, 1.0 / (1.0 - float(node.attrs["p"])), "dropout")


@layer("mask_noise")
def _mask_noise(g: Graph, node: ir.Node, x: Handle):
    """Denoising corruption: zero each input with probability p."""
    return _masked(g, node, x, 1.0, "masking noise")


@layer("gaussian_noise")
def _gaussian_noise(g: Graph, node: ir.Node, x: Handle):
    eps = _noise(g, node, "normal", neutral=0.0)
    out = g.new_value(node.name, node.shape)
    ind = loop_indices(len(node.shape))
    std = sp.Float(node.attrs["std"])
    g.b.assign(out, ind, x[ind] + std * eps[ind], note=f"{node.name} = x + std·ε")
    return out


@layer("sample_normal")
def _sample_normal(g: Graph, node: ir.Node, mu: Handle, logvar: Handle):
    """Reparameterised: mu + exp(logvar/2)·ε; ε is drawn, never differentiated."""
    eps = _noise(g, node, "normal", neutral=0.0, always=bool(node.attrs.get("sample", False)))
    out = g.new_value(node.name, node.shape)
    ind = loop_indices(len(node.shape))
    g.b.assign(out, ind, mu[ind] + sp.exp(logvar[ind] / 2) * eps[ind],
               note=f"{node.name} = mu + exp(logvar/2)·ε")
    return out


@layer("layer")
def _user_layer(g: Graph, node: ir.Node, *args: Handle):
    """A user `layer`: its body's index formulas, with the batch index n added to every tensor."""
    spec = g.model.layers[node.attrs["layer"]]
    n = idx("n")[0]
    env: dict = {}
    index_syms: dict = {}
    sizes: dict = {}
    for (aname, _), h in zip(spec.tensor_args, args):
        env[aname] = _batched(h, n)
    for i, size in node.attrs["index_sizes"].items():     # every index's range at this call
        sizes[_isym(index_syms, i)] = sp.Integer(size)
    for p in spec.params:
        env[p.name] = g.param(node, p.name)
    for var in _all_index_names(spec):
        env[var] = _isym(index_syms, var)
    for k, st in enumerate(spec.body):
        is_out = st.target == spec.out_name
        lhs = tuple(_isym(index_syms, i) for i in st.indices)
        shape = tuple(sizes[i] for i in lhs)
        if st.target not in env or not is_out:
            label = node.name if is_out else f"{node.name}.{st.target}"
            env[st.target] = _batched(g.b.tensor(label, (N,) + shape, "value"), n)
        target = env[st.target]
        value = _split_sums(g, node, st.value, env, (n,) + lhs, sizes, k)
        g.b.assign(target.handle, (n,) + lhs, value, note=f"{node.name}: {st.target}[{', '.join(st.indices)}]",
                   sizes=sizes, attrs=None if is_out else {"named": True})    # a temporary the user named
    return env[spec.out_name].handle


class _batched:
    """A tensor argument of a user layer, indexed without the batch index in the body."""

    def __init__(self, handle: Handle, n):
        self.handle, self.n = handle, n

    def __getitem__(self, index):
        index = index if isinstance(index, tuple) else (index,)
        return self.handle[(self.n,) + index]


def _isym(table: dict, name: str) -> sp.Symbol:
    return table.setdefault(name, sp.Symbol(name, integer=True))


def _all_index_names(spec: ir.UserLayer) -> set[str]:
    names = {i for _, ii in spec.tensor_args for i in ii} | {i for i, _ in spec.out_indices}
    for p in spec.params:
        names |= set(p.indices)
    for st in spec.body:
        names |= set(st.indices)
        names |= _sum_indices(st.value)
    return names


def _sum_indices(e) -> set[str]:
    if isinstance(e, ir.SumOver):
        return set(e.indices) | _sum_indices(e.body)
    if isinstance(e, ir.Apply):
        return set().union(*[_sum_indices(a) for a in e.args]) if e.args else set()
    if isinstance(e, ir.Access):
        return set().union(*[_sum_indices(a) for a in e.indices]) if e.indices else set()
    if isinstance(e, ir.IVar):
        return {e.name}
    return set()


def _split_sums(g: Graph, node: ir.Node, e: ir.Expr, env: dict, lhs: tuple, sizes: dict, k: int):
    """Each `sum(...)` becomes its own reduction stage into a temporary; the rest is a map."""
    if isinstance(e, ir.SumOver):
        body = _split_sums(g, node, e.body, env, lhs, sizes, k)
        summed = tuple(env[i] for i in e.indices)
        keep = tuple(i for i in lhs if i in body.free_symbols)
        temp = g.b.tensor(f"{node.name}.sum{k}", tuple(sizes.get(i, N) for i in keep), "value")
        g.b.assign(temp, keep, body, over=summed, reduce="sum", sizes=sizes,
                   note=f"{node.name}: Σ over {', '.join(e.indices)}")
        return temp[keep]
    if isinstance(e, ir.Apply):
        args = [_split_sums(g, node, a, env, lhs, sizes, k) for a in e.args]
        return to_sympy(g, ir.Apply(e.fn, tuple(ir.Ref(f"__arg{j}") for j in range(len(args)))),
                        {f"__arg{j}": a for j, a in enumerate(args)})
    return to_sympy(g, e, env)


# -------------------------------------------------------------------- losses
def _elementwise_loss(g: Graph, term: ir.LossTerm, operands, f: Callable, label: str) -> Handle:
    """ℓ[n] = Σ_I f(operands[n, I]) over the example's elements (scalars broadcast)."""
    shape = result_shape(operands)
    ind = loop_indices(len(shape) - 1)
    vals = [number(h) if not isinstance(h, Handle) else broadcast(h, ind, shape) for h in operands]
    out = g.b.tensor(label, (N,), "value")
    mask = g.sequence_mask(shape[1]) if len(shape) >= 3 else None
    value = f(*vals) * (mask[ind[:2]] if mask is not None else 1)     # steps past a length: 0
    if len(ind) == 1:
        g.b.assign(out, ind, value, note=f"{label}: per-example {term.fn}")
    else:
        g.b.assign(out, ind[:1], value, over=ind[1:], reduce="sum", sizes=dict(zip(ind, shape)),
                   note=f"{label}: per-example {term.fn}, summed over the example")
    return out


@loss("squared")
def _squared(g, term, label, o, y):
    return _elementwise_loss(g, term, (o, y), lambda o, y: (o - y) ** 2 / 2, label)


@loss("bce_logits")
def _bce_logits(g, term, label, o, y):
    """-log Bernoulli(y | σ(o)) = softplus(o) - y·o."""
    return _elementwise_loss(g, term, (o, y), lambda o, y: fn.softplus(o) - y * o, label)


@loss("gaussian_nll")
def _gaussian_nll(g, term, label, *args):
    """-log N(y | μ, σ²): learned log-variance, or fixed precision β (`beta=`)."""
    half_log_2pi = sp.Float(0.5 * math.log(2 * math.pi))
    if "beta" in term.kwargs:
        beta = sp.Float(term.kwargs["beta"])
        mu, y = args
        return _elementwise_loss(
            g, term, (mu, y),
            lambda mu, y: beta * (y - mu) ** 2 / 2 - sp.log(beta) / 2 + half_log_2pi, label)
    mu, logvar, y = args
    return _elementwise_loss(
        g, term, (mu, logvar, y),
        lambda mu, lv, y: (lv + (y - mu) ** 2 * sp.exp(-lv)) / 2 + half_log_2pi, label)


@loss("kl_normal")
def _kl_normal(g, term, label, mu, logvar):
    """KL(N(μ, e^logvar) ‖ N(0, I))."""
    return _elementwise_loss(g, term, (mu, logvar),
                             lambda mu, lv: -(1 + lv - mu ** 2 - sp.exp(lv)) / 2, label)


@loss("cross_entropy")
def _cross_entropy(g, term, label, o, labels):
    """-log softmax(o)[label] = Σ_k Y[n,k]·(lse[n] - o[n,k]) with Y one-hot. Per-step
    logits (N, T, K) with labels (N, T): summed over the steps, like every per-example loss
    sums over the example's elements."""
    n, k, s = idx("n k s")
    rows = (n, s) if len(o.shape) == 3 else (n,)
    onehot = g.b.tensor(f"{labels.tensor.label}.onehot", o.shape, "value")
    g.b.special("onehot", onehot, inputs=(labels.name,), note=f"one-hot of {labels.tensor.label}",
                labels=labels.name)
    lse = g.b.tensor(f"{label}.lse", o.shape[:-1], "value")
    g.b.assign(lse, rows, o[rows + (k,)], over=(k,), reduce="logsumexp",
               note=f"log Σ_k exp {o.tensor.label}[n,k]")
    out = g.b.tensor(label, (N,), "value")
    mask = g.sequence_mask(o.shape[1]) if len(o.shape) == 3 else None
    weight = mask[n, s] if mask is not None else 1                  # steps past a length: 0
    g.b.assign(out, (n,), weight * onehot[rows + (k,)] * (lse[rows] - o[rows + (k,)]), over=rows[1:] + (k,),
               reduce="sum", note=f"{label}: cross-entropy")
    return out


def user_loss(g: Graph, term: ir.LossTerm, label: str, *operands):
    f = user_function(g, g.model.user_losses[term.fn])
    kwargs = {k: number(v) for k, v in term.kwargs.items()}
    return _elementwise_loss(g, term, operands, lambda *a: f(*a, **kwargs), label)


# ------------------------------------------------------------------- driver
def expand_nodes(g: Graph, names=None) -> None:
    """Stages for every node (in topological order), or for the given ones and their inputs."""
    wanted = g.model.ancestors(names) if names is not None else None
    for node in g.model.nodes:
        if node.name in g.values or (wanted is not None and node.name not in wanted):
            continue
        rule = LAYER_FORMULAS.get(node.op)
        if rule is None:
            g.unsupported(node, "no formula")
        start = len(g.b.stages)
        g.values[node.name] = rule(g, node, *[g.values[i] for i in node.inputs])
        g.node_stages[node.name] = (start, len(g.b.stages))


def expand_loss(g: Graph, spec: ir.Loss) -> Handle:
    """L = Σ_t w_t · (1/N) Σ_n ℓ_t[n]: the batch mean of the weighted per-example losses."""
    names = [a for t in spec.terms for a in t.args if isinstance(a, str)]
    expand_nodes(g, names)
    n = idx("n")[0]
    total = sp.Integer(0)
    for j, term in enumerate(spec.terms):
        operands = [g.values[a] if isinstance(a, str) else a for a in term.args]
        label = f"{spec.name}.{j}" if len(spec.terms) > 1 else f"{spec.name}.per_example"
        rule = LOSS_FORMULAS.get(term.fn)
        per_example = rule(g, term, label, *operands) if rule else user_loss(g, term, label, *operands)
        total += number(term.weight) * per_example[n]
    L = g.b.tensor(spec.name, (1,), "loss")
    g.b.assign(L, (sp.Integer(0),), total / N, over=(n,), reduce="sum", sizes={n: N},
               note=f"{spec.name} = mean over the batch")
    return L
