"""Lowering AST expressions to IR expressions, shared by every place that has them.

`ExprLowering` handles what all expressions share -- numbers, arithmetic,
comparisons (only as the condition of `where`), built-in functions and user
activations with their arity and defaults.  Its subclasses say what a bare
name, an indexing `x[i]`, a `sum(...)` and a call to a non-function mean in
their context (a node at top level, a parameter in an activation, an index
variable in a layer body).

Lowering never stops at the first problem: it reports it, returns None for the
failed sub-expression, and the parent returns None without a further message
(no cascades).  Each result carries an `Operand` describing its per-example
shape where the context tracks shapes (top-level expressions), else None.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

from ..diagnostics import Diagnostic, Span, did_you_mean
from . import ast, ir
from .builtins import ARITHMETIC, COMPARISONS, FUNCTIONS, FunctionSpec
from .shapes import Operand, ShapeError, broadcast
from .signature import Number, fmt_number

_CMP_HINT = "comparisons are only allowed as the condition of `where(cond, a, b)`"


@dataclass(frozen=True)
class Lowered:
    expr: ir.Expr
    operand: Optional[Operand] = None     # per-example shape info, where tracked


class ExprLowering:
    """Base lowering; `functions` are the callable elementwise functions
    (built-ins plus the user activations visible here)."""

    track_shapes = False

    def __init__(self, errors: list[Diagnostic], consts: Mapping[str, Number],
                 user_functions: Mapping[str, FunctionSpec]):
        self.errors = errors
        self.consts = consts
        self.functions: dict[str, FunctionSpec] = {**FUNCTIONS, **user_functions}

    # ------------------------------------------------------------ helpers
    def error(self, message: str, span: Optional[Span], hint: Optional[str] = None,
              notes: Sequence[tuple[str, Optional[Span]]] = ()) -> None:
        self.errors.append(Diagnostic(message, span, hint, notes=tuple(notes)))

    def const(self, value: float) -> Lowered:
        return Lowered(ir.Const(float(value)), Operand("", (), what="number")
                       if self.track_shapes else None)

    def combine(self, fn: str, parts: Sequence[Lowered], span: Span) -> Optional[Lowered]:
        """An elementwise application; broadcasts shapes where they are tracked."""
        expr = ir.Apply(fn, tuple(p.expr for p in parts))
        if not self.track_shapes:
            return Lowered(expr)
        try:
            shape = broadcast([p.operand for p in parts])
        except ShapeError as exc:
            self.error(exc.message, span, "operands of elementwise operations must have "
                       "equal shapes, or size 1 (or no axis) where they differ")
            return None
        return Lowered(expr, Operand("", shape))

    # ------------------------------------------------------------ dispatch
    def lower(self, e: ast.Expr, allow_cmp: bool = False) -> Optional[Lowered]:
        if isinstance(e, ast.Num):
            return self.const(e.value)
        if isinstance(e, ast.Bool):
            self.error(f"`{'true' if e.value else 'false'}` is not a number", e.span,
                       "booleans are only used as arguments such as `bias=false`")
            return None
        if isinstance(e, ast.Name):
            return self.name(e)
        if isinstance(e, ast.Index):
            return self.index(e)
        if isinstance(e, ast.Sum):
            return self.sum(e)
        if isinstance(e, ast.UnaryOp):
            inner = self.lower(e.operand)
            return inner and self.combine("neg", [inner], e.span)
        if isinstance(e, ast.BinOp):
            return self.binop(e, allow_cmp)
        if isinstance(e, ast.Call):
            if e.func in self.functions:
                return self.apply(e, self.functions[e.func])
            return self.call(e)
        raise TypeError(f"unexpected expression {e!r}")     # pragma: no cover

    def binop(self, e: ast.BinOp, allow_cmp: bool) -> Optional[Lowered]:
        if e.op in COMPARISONS and not allow_cmp:
            self.error(f"comparison `{e.op}` outside `where`", e.span, _CMP_HINT)
            return None
        left, right = self.lower(e.left), self.lower(e.right)
        if left is None or right is None:
            return None
        assert e.op in ARITHMETIC or e.op in COMPARISONS, e.op
        return self.combine(e.op, [left, right], e.span)

    def apply(self, call: ast.Call, spec: FunctionSpec) -> Optional[Lowered]:
        """A function call: bind positional/keyword args, fill defaults, check arity."""
        args = bind_function(call, spec, self.error)
        if args is None:
            return None
        cond = args[0] if call.func == "where" else None
        if cond is not None and not (isinstance(cond, ast.BinOp) and cond.op in COMPARISONS):
            self.error("the condition of `where` must be a comparison", getattr(cond, "span", call.span),
                       "write `where(a > b, x, y)` with one of < <= > >= == !=")
            return None
        parts: list[Optional[Lowered]] = []
        for i, arg in enumerate(args):
            if isinstance(arg, float):
                parts.append(self.const(arg))
            else:
                parts.append(self.lower(arg, allow_cmp=(call.func == "where" and i == 0)))
        if any(p is None for p in parts):
            return None
        return self.combine(call.func, parts, call.span)

    # ----------------------------------------------------- context hooks
    def name(self, e: ast.Name) -> Optional[Lowered]:
        raise NotImplementedError

    def index(self, e: ast.Index) -> Optional[Lowered]:
        self.error(f"indexing `{e.name}[...]` is only allowed inside a `layer` body",
                   e.span, "write the operation on whole tensors, or define a `layer`")
        return None

    def sum(self, e: ast.Sum) -> Optional[Lowered]:
        self.error("`sum(...)` is only allowed inside a `layer` body", e.span,
                   "define a `layer` in index notation for reductions")
        return None

    def call(self, e: ast.Call) -> Optional[Lowered]:
        self.unknown_function(e, ())
        return None

    def unknown_function(self, e: ast.Call, extra: Sequence[str],
                         what: str = "function") -> None:
        hint = did_you_mean(e.func, [*self.functions, *extra])
        if e.func == "softmax":
            hint = "softmax is not elementwise; use it as `act=softmax` of a layer"
        self.error(f"unknown {what} `{e.func}`", e.func_span, hint)


def bind_function(call: ast.Call, spec: FunctionSpec, report) -> Optional[list]:
    """The arguments of a function call in parameter order, defaults as floats;
    None (after `report`ing) when the call does not fit the parameters."""
    n = len(spec.params)
    slots: list = [None] * n
    ok = True
    if len(call.args) > n or len(call.args) + len(call.kwargs) < spec.required:
        want = (f"{n}" if spec.required == n else f"{spec.required} to {n}")
        report(f"`{call.func}` takes {want} argument{'s' if n != 1 else ''}, "
               f"got {len(call.args) + len(call.kwargs)}", call.span,
               f"usage: {call.func}({', '.join(spec.params)})")
        return None
    for i, a in enumerate(call.args):
        slots[i] = a
    for kw in call.kwargs:
        if kw.name not in spec.params:
            report(f"`{call.func}` has no argument `{kw.name}`", kw.span,
                   did_you_mean(kw.name, spec.params))
            ok = False
        elif slots[spec.params.index(kw.name)] is not None:
            report(f"argument `{kw.name}` of `{call.func}` is given twice", kw.span)
            ok = False
        else:
            slots[spec.params.index(kw.name)] = kw.value
    for i, pname in enumerate(spec.params):
        if slots[i] is None:
            if pname in spec.defaults:
                slots[i] = float(spec.defaults[pname])
            else:
                report(f"`{call.func}` is missing argument `{pname}`", call.span,
                       f"usage: {call.func}({', '.join(spec.params)})")
                ok = False
    return slots if ok else None


_INFIX = {"+": 1, "-": 1, "*": 2, "/": 2, "^": 4,
          "<": 0, "<=": 0, ">": 0, ">=": 0, "==": 0, "!=": 0}


def format_expr(e: ir.Expr, parent: int = -1) -> str:
    """An IR expression in the source notation (for summaries and messages)."""
    if isinstance(e, ir.Ref):
        return e.name
    if isinstance(e, ir.IVar):
        return e.name
    if isinstance(e, ir.Const):
        return fmt_number(int(e.value) if float(e.value).is_integer() else e.value)
    if isinstance(e, ir.Access):
        return f"{e.tensor}[{', '.join(format_expr(i) for i in e.indices)}]"
    if isinstance(e, ir.SumOver):
        return f"sum({', '.join(e.indices)}: {format_expr(e.body)})"
    if e.fn == "neg":
        return f"-{format_expr(e.args[0], 3)}"
    if e.fn in _INFIX and len(e.args) == 2:
        prec = _INFIX[e.fn]
        right_prec = prec + (0 if e.fn == "^" else 1)
        left_prec = prec + (1 if e.fn == "^" else 0)
        text = f"{format_expr(e.args[0], left_prec)} {e.fn} {format_expr(e.args[1], right_prec)}"
        return f"({text})" if prec < parent else text
    return f"{e.fn}({', '.join(format_expr(a) for a in e.args)})"
