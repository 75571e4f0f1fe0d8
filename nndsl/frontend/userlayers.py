"""User `layer`s in index notation.

A layer definition is checked once, on its own (it does not depend on the
data); it is then *instantiated* at each call, where the operand shapes and
size arguments fix the range of every index.

Index rules of a layer body (`out[k] = sum(i, j: W[k, i, j] * x[i] * z[j]) + b[k]`):
  * every index is bound by the signature (a tensor argument `x[i]`, the
    output `out[k:K]`) or by an enclosing `sum(i: ...)`;
  * on the right of `out[k] = ...` an index outside any `sum` must appear on
    the left (no implicit summation);
  * each assignment's left side is indexed exactly like the output (a
    temporary `t[k] = ...` has the output's shape);
  * index expressions are affine (`i*2 + p`); a product of two indices is not;
  * an index bound to two different sizes is an error (found at the call);
  * every access stays inside the axis it reads, for every index value (found
    at the call; there is no implicit padding): `x[i + 1]` needs `out[i: t - 1]`;
  * an index bound by a `sum` alone takes its range from the axes it indexes.
Parameter fans: fan_in = product of all dimensions but the first, fan_out =
the first dimension (1 for a scalar parameter).
"""
from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import Mapping, Optional

from ..diagnostics import Diagnostic, Span, did_you_mean
from . import ast, ir
from .builtins import FunctionSpec
from .exprs import ExprLowering, Lowered, format_expr
from .shapes import Operand, ParamShape, ShapeError, fmt_shape
from .signature import (
    POSITIVE_INT,
    TENSOR,
    Arg,
    ArgError,
    Env,
    Number,
    Signature,
    fold_number,
)


@dataclass(frozen=True)
class LayerInfo:
    """A checked user layer: its IR plus what instantiating it at a call needs."""
    layer: ir.UserLayer
    signature: Signature                          # tensor and size arguments, in order
    tensor_indices: Mapping[str, tuple[str, ...]]  # every tensor: args, params, temporaries
    out_sizes: tuple[tuple[str, Optional[ast.Expr]], ...]
    accesses: tuple[tuple[str, int, str, Span], ...]   # (tensor, axis, plain index, where)
    windows: tuple[tuple[str, int, ir.Expr, Span], ...]  # (tensor, axis, affine index, where)
    sum_only: tuple[str, ...]                     # indices bound by sums alone
    param_sizes: tuple[tuple[str, ast.Expr], ...] = ()   # window indices sized in `param W[.., p:K]`


class _LayerBody(ExprLowering):
    def __init__(self, errors, consts, user_functions, layer: str,
                 tensors: dict[str, tuple[str, ...]], signature_indices: set[str],
                 not_callable: Mapping[str, str]):
        super().__init__(errors, consts, user_functions)
        self.layer = layer
        self.tensors = tensors
        self.signature_indices = signature_indices
        self.not_callable = not_callable
        self.scope: list[set[str]] = []
        self.accesses: list[tuple[str, int, str, Span]] = []
        self.windows: list[tuple[str, int, ir.Expr, Span]] = []
        self.sum_indices: set[str] = set()
        self.reported: set[str] = set()       # unbound indices reported in this assignment

    def bound(self, index: str) -> bool:
        return any(index in s for s in self.scope)

    def name(self, e):
        if self.bound(e.id):
            return Lowered(ir.IVar(e.id))
        if e.id in self.consts:
            return self.const(self.consts[e.id])
        if e.id in self.tensors:
            idx = ", ".join(self.tensors[e.id]) or "..."
            self.error(f"`{e.id}` must be indexed in a layer body", e.span,
                       f"write `{e.id}[{idx}]`")
            return None
        self.unbound_index(e)
        return None

    def unbound_index(self, e: ast.Name) -> None:
        if e.id in self.reported:            # once per assignment
            return
        self.reported.add(e.id)
        if e.id in self.signature_indices:
            self.error(f"index `{e.id}` is not summed over and not on the left side",
                       e.span, f"write `sum({e.id}: ...)` to reduce over it")
        else:
            hint = did_you_mean(e.id, [i for s in self.scope for i in s] + list(self.tensors))
            self.error(f"index `{e.id}` is not bound", e.span, hint or
                       f"bind it in the signature (`x[{e.id}]`, `-> out[{e.id}:K]`) "
                       f"or in a `sum({e.id}: ...)`")

    def index(self, e):
        if e.name not in self.tensors:
            hint = did_you_mean(e.name, self.tensors)
            self.error(f"unknown tensor `{e.name}` in layer `{self.layer}`", e.name_span,
                       hint or "tensors are the layer's arguments, params and earlier "
                       "assignments")
            return None
        declared = self.tensors[e.name]
        if len(e.indices) != len(declared):
            self.error(f"`{e.name}` has {len(declared)} ind{'ex' if len(declared) == 1 else 'ices'}"
                       f" ({e.name}[{', '.join(declared)}]), but {len(e.indices)} are given",
                       e.span)
            return None
        parts = [self.affine(ix) for ix in e.indices]
        if any(p is None for p in parts):
            return None
        for axis, (ix, part) in enumerate(zip(e.indices, parts)):
            if isinstance(ix, ast.Name) and self.bound(ix.id):
                self.accesses.append((e.name, axis, ix.id, ix.span))
            else:
                self.windows.append((e.name, axis, part, ix.span))
        return Lowered(ir.Access(e.name, tuple(parts)))

    def sum(self, e):
        dup = {i for i in e.indices if e.indices.count(i) > 1}
        if dup:
            self.error(f"index `{sorted(dup)[0]}` is listed twice in `sum`", e.span)
            return None
        self.scope.append(set(e.indices))
        self.sum_indices.update(e.indices)
        body = self.lower(e.body)
        self.scope.pop()
        return body and Lowered(ir.SumOver(tuple(e.indices), body.expr))

    def call(self, e):
        what = self.not_callable.get(e.func)
        if what:
            self.error(f"{what} `{e.func}` cannot be called inside layer `{self.layer}`",
                       e.func_span, "a layer body is written in index notation")
        else:
            self.unknown_function(e, ())
        return None

    # ------------------------------------------------------ index expressions
    def affine(self, e: ast.Expr) -> Optional[ir.Expr]:
        """An affine index expression: index variables, integer constants, + - and
        multiplication by a constant."""
        if isinstance(e, ast.Name):
            if self.bound(e.id):
                return ir.IVar(e.id)
            if isinstance(self.consts.get(e.id), int):
                return ir.Const(float(self.consts[e.id]))
            self.unbound_index(e)
            return None
        if isinstance(e, ast.Num):
            if not e.is_int:
                self.error("index offsets must be integers", e.span)
                return None
            return ir.Const(float(e.value))
        if isinstance(e, ast.UnaryOp):
            inner = self.affine(e.operand)
            return inner and ir.Apply("neg", (inner,))
        if isinstance(e, ast.BinOp) and e.op in ("+", "-", "*"):
            left, right = self.affine(e.left), self.affine(e.right)
            if left is None or right is None:
                return None
            if e.op == "*" and _has_ivar(left) and _has_ivar(right):
                self.error("index expressions must be affine, but this multiplies two "
                           "indices", e.span, "use an index times a constant, e.g. `i*2 + p`")
                return None
            return ir.Apply(e.op, (left, right))
        self.error("not an index expression (expected e.g. `i`, `i + 1`, `i*2 + p`)", e.span)
        return None


def _has_ivar(e: ir.Expr) -> bool:
    if isinstance(e, ir.IVar):
        return True
    return isinstance(e, ir.Apply) and any(_has_ivar(a) for a in e.args)


class _LayerChecker:
    """Checks one `layer` definition; `run()` returns its LayerInfo or None."""

    def __init__(self, defn: ast.LayerDef, consts, user_functions, not_callable, env: Env,
                 errors: list[Diagnostic]):
        self.d, self.consts, self.env, self.errors = defn, consts, env, errors
        self.user_functions, self.not_callable = user_functions, not_callable
        self.names: dict[str, Span] = {}          # layer-local names: args, params, temps
        self.tensors: dict[str, tuple[str, ...]] = {}
        self.signature_indices: set[str] = set()
        self.param_sizes: list[tuple[str, ast.Expr]] = []

    def error(self, message, span, hint=None, notes=()):
        self.errors.append(Diagnostic(message, span, hint, notes=tuple(notes)))

    def declare(self, name: str, span: Span) -> bool:
        if name in self.names:
            self.error(f"`{name}` is already defined in layer `{self.d.name}`", span,
                       notes=[("previous definition here", self.names[name])])
            return False
        self.names[name] = span
        return True

    def run(self) -> Optional[LayerInfo]:
        n_before = len(self.errors)
        args = self.signature()
        out_sizes = self.output()
        params, body, lowering = self.body()
        if len(self.errors) > n_before:
            return None
        d = self.d
        layer = ir.UserLayer(
            d.name,
            tuple((a.name, a.indices) for a in d.args if isinstance(a, ast.TensorArg)),
            tuple(a.name for a in d.args if isinstance(a, ast.SizeArg)),
            d.out_name,
            tuple((k, _size_text(k, e)) for k, e in out_sizes),
            tuple(params), tuple(body), d.span)
        sum_only = tuple(sorted(lowering.sum_indices - self.signature_indices))
        return LayerInfo(layer, args, dict(self.tensors), tuple(out_sizes),
                         tuple(lowering.accesses), tuple(lowering.windows), sum_only,
                         tuple(self.param_sizes))

    def signature(self) -> Signature:
        args = []
        for a in self.d.args:
            self.declare(a.name, a.span)
            if isinstance(a, ast.TensorArg):
                dup = [i for i in a.indices if a.indices.count(i) > 1]
                if dup:
                    self.error(f"index `{dup[0]}` appears twice in `{a.name}[...]`", a.span,
                               "each axis of an argument needs its own index")
                self.tensors[a.name] = tuple(a.indices)
                self.signature_indices.update(a.indices)
                args.append(Arg(a.name, TENSOR))
            else:
                args.append(Arg(a.name, POSITIVE_INT))
        return Signature(tuple(args))

    def output(self) -> list[tuple[str, Optional[ast.Expr]]]:
        d, out = self.d, []
        self.declare(d.out_name, d.name_span)
        tensor_indices = set(self.signature_indices)
        sizes = {a.name for a in d.args if isinstance(a, ast.SizeArg)}
        seen: set[str] = set()
        for oi in d.out_indices:
            if oi.name in seen:
                self.error(f"output index `{oi.name}` appears twice", oi.span)
            seen.add(oi.name)
            if oi.size is None and oi.name not in tensor_indices:
                self.error(f"output index `{oi.name}` has no size", oi.span,
                           f"write `{oi.name}:K` with a size argument `units K`, or use an "
                           "index of a tensor argument")
            if oi.size is not None:
                for n in _names_in(oi.size):
                    if n.id not in sizes and n.id not in self.consts and n.id not in tensor_indices:
                        self.error(f"unknown size `{n.id}` in the output of `{d.name}`", n.span,
                                   did_you_mean(n.id, [*sizes, *self.consts]) or
                                   "sizes are size arguments (`units K`), consts or numbers")
            out.append((oi.name, oi.size))
        self.out_indices = tuple(oi.name for oi in d.out_indices)
        self.signature_indices.update(self.out_indices)
        self.tensors[d.out_name] = self.out_indices
        return out

    def body(self):
        params: list[ir.LayerParam] = []
        assigns: list[ir.LayerAssign] = []
        assigned: dict[str, Span] = {}
        tensor_args = {a.name for a in self.d.args if isinstance(a, ast.TensorArg)}
        lowering = _LayerBody(self.errors, self.consts, self.user_functions, self.d.name,
                              self.tensors, self.signature_indices, self.not_callable)
        # The output is readable only after it is assigned; temporaries likewise.
        visible = dict(self.tensors)
        visible.pop(self.d.out_name)
        lowering.tensors = visible
        for st in self.d.body:
            # A failed declaration stays visible, so its uses raise no further errors.
            if isinstance(st, ast.ParamDecl):
                p = self.param(st)
                if p is not None:
                    params.append(p)
                visible.setdefault(st.name, tuple(st.indices))
            else:
                declared_params = {d.name for d in self.d.body if isinstance(d, ast.ParamDecl)}
                a = self.assign(st, lowering, assigned, tensor_args, declared_params)
                if a is not None:
                    assigns.append(a)
                visible.setdefault(st.target, self.out_indices)
        if self.d.out_name not in assigned:
            self.error(f"layer `{self.d.name}` never assigns its output `{self.d.out_name}`",
                       self.d.name_span,
                       f"add `{self.d.out_name}[{', '.join(self.out_indices)}] = ...`")
        return params, assigns, lowering

    def param(self, st: ast.ParamDecl) -> Optional[ir.LayerParam]:
        ok = self.declare(st.name, st.name_span)
        for i, size in zip(st.indices, st.index_sizes):
            if size is not None:
                ok = self.window_index(i, size, st) and ok
        for i in st.indices:
            if i not in self.signature_indices:
                self.error(f"index `{i}` of param `{st.name}` is not bound by the signature",
                           st.span, "a parameter's indices must come from the arguments or "
                           "the output (`x[i]`, `-> out[k:K]`)")
                ok = False
        init = None
        if st.init is not None:
            try:
                init = self.env.init(st.init)
            except ArgError as exc:
                exc.report_to(self.errors)
                ok = False
        self.tensors[st.name] = tuple(st.indices)
        return ir.LayerParam(st.name, tuple(st.indices), init) if ok else None

    def window_index(self, i: str, size: ast.Expr, st: ast.ParamDecl) -> bool:
        """`p:K` in a param declaration binds the window index `p` to size K."""
        if i in self.signature_indices:
            self.error(f"index `{i}` of param `{st.name}` is already bound", st.span,
                       f"write `{i}` without a size: its range comes from the signature")
            return False
        sizes = {a.name for a in self.d.args if isinstance(a, ast.SizeArg)}
        for n in _names_in(size):
            if n.id not in sizes and n.id not in self.consts:
                self.error(f"unknown size `{n.id}` in param `{st.name}`", n.span,
                           did_you_mean(n.id, [*sizes, *self.consts]) or
                           "sizes are size arguments (`units K`), consts or numbers")
                self.signature_indices.add(i)       # bound all the same: no cascade of errors
                return False
        self.signature_indices.add(i)
        self.param_sizes.append((i, size))
        return True

    def assign(self, st: ast.IndexAssign, lowering: _LayerBody, assigned: dict[str, Span],
               tensor_args: set[str], params: set[str]) -> Optional[ir.LayerAssign]:
        if st.target in tensor_args or st.target in params:
            kind = "argument" if st.target in tensor_args else "parameter"
            self.error(f"cannot assign to the {kind} `{st.target}`", st.name_span)
            return None
        if st.target in assigned:
            self.error(f"`{st.target}` is assigned twice", st.name_span,
                       notes=[("first assigned here", assigned[st.target])])
            return None
        ok = True
        if tuple(st.indices) != self.out_indices:
            want = f"{st.target}[{', '.join(self.out_indices)}]"
            self.error(f"the left side must be indexed like the output: `{want}`", st.span)
            ok = False
        lowering.scope, lowering.reported = [set(st.indices)], set()
        value = lowering.lower(st.value)
        assigned[st.target] = st.name_span
        if st.target != self.d.out_name:
            self.names.setdefault(st.target, st.name_span)
            self.tensors[st.target] = self.out_indices
        if value is None or not ok:
            return None
        return ir.LayerAssign(st.target, tuple(st.indices), value.expr)


def check_layer(defn: ast.LayerDef, consts: Mapping[str, Number],
                user_functions: Mapping[str, FunctionSpec], not_callable: Mapping[str, str],
                env: Env, errors: list[Diagnostic]) -> Optional[LayerInfo]:
    return _LayerChecker(defn, consts, user_functions, not_callable, env, errors).run()


def _names_in(e: ast.Expr) -> list[ast.Name]:
    if isinstance(e, ast.Name):
        return [e]
    if isinstance(e, ast.BinOp):
        return _names_in(e.left) + _names_in(e.right)
    if isinstance(e, ast.UnaryOp):
        return _names_in(e.operand)
    return []


def _size_text(index: str, e: Optional[ast.Expr]) -> str:
    """How `UserLayer.out_indices` names an output index's size: the size argument
    (`K`), a number (`10`), or for a bare index the index itself (its range is
    that of the tensor argument that binds it).  The sizes of a call are in the
    node's attrs["index_sizes"]."""
    if e is None:
        return index
    if isinstance(e, ast.Name):
        return e.id
    if isinstance(e, ast.Num):
        return str(int(e.value)) if e.is_int else str(e.value)
    if isinstance(e, ast.BinOp):
        return f"({_size_text(index, e.left)} {e.op} {_size_text(index, e.right)})"
    if isinstance(e, ast.UnaryOp):
        return f"-{_size_text(index, e.operand)}"
    return "?"


# ------------------------------------------------------------ instantiation
@dataclass(frozen=True)
class LayerInstance:
    shape: tuple
    index_sizes: Mapping[str, object]
    params: tuple[tuple[ir.LayerParam, ParamShape], ...]


def instantiate(info: LayerInfo, operands: Mapping[str, Operand], sizes: Mapping[str, int],
                consts: Mapping[str, Number]) -> LayerInstance:
    """Fix every index range of a call; raises ShapeError (arg = the culprit argument)."""
    layer = info.layer.name
    idx: dict[str, object] = {}
    source: dict[str, str] = {}
    for name, indices in info.layer.tensor_args:
        op = operands[name]
        if len(op.shape) != len(indices):
            raise ShapeError(f"`{layer}` expects `{name}` of rank {len(indices)} "
                             f"({name}[{', '.join(indices)}]), but {op.described()}", name)
        for i, d in zip(indices, op.shape):
            if i in idx and idx[i] != d:
                raise ShapeError(f"index `{i}` of `{layer}` is bound to size {idx[i]} by "
                                 f"`{source[i]}` and to size {d} by `{name}` "
                                 f"({op.described()})", name)
            idx[i], source[i] = d, name
    _output_sizes(info, sizes, consts, idx, source)
    _output_sizes(info, sizes, consts, idx, source, info.param_sizes, "window")
    _access_sizes(info, idx)
    missing = [i for i in info.sum_only if i not in idx]
    if missing:
        raise ShapeError(f"cannot infer the range of index `{missing[0]}` in `{layer}`",
                         hint="use it to index an argument or a parameter axis")
    _window_bounds(info, idx)
    params = []
    for p in info.layer.params:
        shape = tuple(idx[i] for i in p.indices)
        if any(isinstance(d, str) for d in shape):
            raise ShapeError(f"parameter `{p.name}` of `{layer}` would have the free size "
                             f"{fmt_shape(shape)}", hint="parameters need fixed sizes")
        shape = tuple(int(d) for d in shape)
        fan_in = prod(shape[1:]) if len(shape) > 1 else 1
        fan_out = shape[0] if shape else 1
        params.append((p, ParamShape(p.name, shape, fan_in, fan_out)))
    out_shape = tuple(idx[k] for k, _ in info.layer.out_indices)
    return LayerInstance(out_shape, dict(idx), tuple(params))


def _output_sizes(info, sizes, consts, idx, source, entries=None, what="output") -> None:
    def lookup(name: ast.Name) -> Number:
        for table in (sizes, consts, idx):
            if name.id in table and isinstance(table[name.id], int):
                return table[name.id]
        raise ArgError(f"the size `{name.id}` is not a fixed integer here", name.span)

    for k, e in (info.out_sizes if entries is None else entries):
        if e is None:
            continue
        try:
            v = fold_number(e, lookup)
        except ArgError as exc:
            raise ShapeError(f"{what} size of `{info.layer.name}`: {exc.message}") from None
        if not isinstance(v, int) or v < 1:
            raise ShapeError(f"{what} index `{k}` of `{info.layer.name}` would have size {v}; "
                             "sizes must be positive integers")
        if k in idx and idx[k] != v:
            raise ShapeError(f"index `{k}` of `{info.layer.name}` is bound to size {idx[k]} by "
                             f"`{source[k]}` and to size {v} by the output", source[k])
        idx[k] = v


def _access_sizes(info: LayerInfo, idx: dict) -> None:
    """Plain-index accesses: an index bound by the signature must fit the axis it
    indexes (it may read a prefix, as in `x[i + 1] - x[i]`); an index bound by a
    `sum` alone takes its range from the axes it indexes, which must agree."""
    inferred: dict[str, tuple[str, int]] = {}
    for tensor, axis, i, span in info.accesses:
        d = idx.get(info.tensor_indices[tensor][axis])
        if d is None:
            continue
        if i not in idx:
            idx[i] = d
            inferred[i] = (tensor, axis)
        elif i in inferred and idx[i] != d:
            first = inferred[i]
            raise ShapeError(f"in `{info.layer.name}`, the index `{i}` of `sum` ranges over axis "
                             f"{first[1]} of `{first[0]}` (size {idx[i]}) and over axis {axis} of "
                             f"`{tensor}` (size {d})", notes=(("the access", span),))
        elif isinstance(d, int) and isinstance(idx[i], int) and idx[i] > d:
            raise ShapeError(f"in `{info.layer.name}`, the index `{i}` (size {idx[i]}) overruns "
                             f"axis {axis} of `{tensor}`, which has size {d}",
                             notes=(("the access", span),))
        elif isinstance(d, str) != isinstance(idx[i], str) or (
                isinstance(d, str) and d != idx[i]):
            raise ShapeError(f"in `{info.layer.name}`, the index `{i}` (size {idx[i]}) indexes "
                             f"axis {axis} of `{tensor}`, which has size {d}",
                             notes=(("the access", span),))


def _window_bounds(info: LayerInfo, idx: Mapping[str, object]) -> None:
    """An affine index (`x[c, i*2 + p]`) must stay inside the axis it indexes
    for every value of its indices (there is no implicit padding)."""
    for tensor, axis, expr, span in info.windows:
        size = idx.get(info.tensor_indices[tensor][axis])
        interval = _interval(expr, idx)
        if not isinstance(size, int) or interval is None:
            continue                       # free sizes: checked when the data arrive
        lo, hi = interval
        if lo < 0 or hi >= size:
            raise ShapeError(
                f"in `{info.layer.name}`, the index `{format_expr(expr)}` of `{tensor}` ranges over "
                f"{lo}..{hi}, outside axis {axis} of size {size}",
                hint="make the output smaller or the window fit the input",
                notes=(("the access", span),))


def _interval(e: ir.Expr, idx: Mapping[str, object]) -> Optional[tuple[int, int]]:
    """The range of an affine index expression given the index sizes (None if free)."""
    if isinstance(e, ir.Const):
        return int(e.value), int(e.value)
    if isinstance(e, ir.IVar):
        n = idx.get(e.name)
        return (0, n - 1) if isinstance(n, int) else None
    parts = [_interval(a, idx) for a in e.args]
    if any(p is None for p in parts):
        return None
    if e.fn == "neg":
        (lo, hi), = parts
        return -hi, -lo
    (alo, ahi), (blo, bhi) = parts
    if e.fn == "+":
        return alo + blo, ahi + bhi
    if e.fn == "-":
        return alo - bhi, ahi - blo
    corners = [alo * blo, alo * bhi, ahi * blo, ahi * bhi]      # "*" by a constant
    return min(corners), max(corners)
