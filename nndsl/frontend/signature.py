"""Argument signatures of built-in calls and the binding of a call's arguments to them.

Every built-in that takes arguments (layers, losses, optimizers, `init`, `train`)
declares a `Signature`: an ordered list of `Arg`s, each with a *kind* that says
what a value must be (a tensor operand, a positive integer, a real in a range,
a boolean, an activation name, ...) and a default.  `bind` matches positional
and keyword arguments against it, converts and range-checks every scalar, fills
in the defaults, and reports every problem it finds as a `Diagnostic`.

The context-dependent conversions (what a const is worth, which user
activations exist) are asked of an `Env` supplied by the checker.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional, Protocol, Sequence, Union

from ..diagnostics import Diagnostic, Span, did_you_mean
from . import ast, ir

Number = Union[int, float]


class ArgError(Exception):
    """A value that does not fit where it is written."""

    def __init__(self, message: str, span: Optional[Span], hint: Optional[str] = None,
                 notes: tuple[tuple[str, Optional[Span]], ...] = ()):
        super().__init__(message)
        self.message, self.span, self.hint, self.notes = message, span, hint, notes

    @classmethod
    def silent(cls) -> "ArgError":
        """A failure already reported elsewhere (e.g. a const whose definition failed)."""
        return cls("", None)

    def report_to(self, errors: list[Diagnostic]) -> None:
        if self.message:
            errors.append(self.diagnostic())

    def diagnostic(self) -> Diagnostic:
        return Diagnostic(self.message, self.span, self.hint, notes=self.notes)


class Env(Protocol):
    """What converting a scalar argument needs to know about the model."""

    def number(self, expr: ast.Expr) -> Number: ...
    def activation(self, expr: ast.Expr) -> str: ...
    def init(self, expr: ast.Expr) -> ir.Init: ...


# ---------------------------------------------------------------- numbers
def fold_number(expr: ast.Expr, lookup: Callable[[ast.Name], Number]) -> Number:
    """The value of a constant arithmetic expression (numbers, consts, + - * / ^).

    Integers stay integers under + - *, under ^ with a non-negative integer
    exponent, and under / when the division is exact (so `H / 2` is a size).
    """
    if isinstance(expr, ast.Num):
        return int(expr.value) if expr.is_int else float(expr.value)
    if isinstance(expr, ast.Name):
        return lookup(expr)
    if isinstance(expr, ast.UnaryOp) and expr.op == "-":
        return -fold_number(expr.operand, lookup)
    if isinstance(expr, ast.BinOp) and expr.op in "+-*/^":
        a, b = fold_number(expr.left, lookup), fold_number(expr.right, lookup)
        return _arith(expr.op, a, b, expr.span)
    if isinstance(expr, ast.Bool):
        raise ArgError(f"expected a number, got `{'true' if expr.value else 'false'}`", expr.span)
    raise ArgError("expected a number or a constant expression", expr.span)


def _arith(op: str, a: Number, b: Number, span: Span) -> Number:
    both_int = isinstance(a, int) and isinstance(b, int)
    try:
        if op == "+":
            return a + b
        if op == "-":
            return a - b
        if op == "*":
            return a * b
        if op == "/":
            if both_int and b != 0 and a % b == 0:
                return a // b
            return a / b
        if both_int and b >= 0:
            return a ** b
        return float(a) ** float(b)
    except (ZeroDivisionError, OverflowError, ValueError):
        raise ArgError("this constant expression has no finite value", span) from None


def fmt_number(v: object) -> str:
    """An argument's value as it is written in a .nn file."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], str):      # a form: step(every=3)
        name, args = v
        return f"{name}({', '.join(f'{k}={fmt_number(a)}' for k, a in args)})" if args else name
    return str(v)


# ------------------------------------------------------------------ kinds
class Kind:
    """What an argument's value must be; `convert` returns it or raises ArgError."""
    is_tensor = False

    def convert(self, expr: ast.Expr, env: Env, arg: str) -> object:
        """`arg` names the argument in messages, e.g. "`p` of `dropout`"."""
        raise NotImplementedError


class TensorKind(Kind):
    """An operand: a node, or an expression the checker turns into one."""
    is_tensor = True


@dataclass(frozen=True)
class IntKind(Kind):
    """An integer in [lo, hi] (either bound optional)."""
    lo: Optional[int] = None
    hi: Optional[int] = None

    def convert(self, expr, env, arg):
        v = env.number(expr)
        if not isinstance(v, int):
            raise ArgError(f"{arg} must be an integer, got {fmt_number(v)}", expr.span)
        if self.lo is not None and v < self.lo:
            what = "a positive integer" if self.lo == 1 else f"an integer ≥ {self.lo}"
            raise ArgError(f"{arg} must be {what}, got {v}", expr.span)
        if self.hi is not None and v > self.hi:
            raise ArgError(f"{arg} must be ≤ {self.hi}, got {v}", expr.span)
        return v


@dataclass(frozen=True)
class RealKind(Kind):
    """A real number in an interval; `lo_open`/`hi_open` exclude the bound."""
    lo: Optional[float] = None
    hi: Optional[float] = None
    lo_open: bool = False
    hi_open: bool = False

    def convert(self, expr, env, arg):
        v = float(env.number(expr))
        bad_lo = self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo)
        bad_hi = self.hi is not None and (v >= self.hi if self.hi_open else v > self.hi)
        if bad_lo or bad_hi:
            raise ArgError(f"{arg} must be {self.describe()}, got {fmt_number(v)}", expr.span)
        return v

    def describe(self) -> str:
        if self.lo is not None and self.hi is not None:
            left = "(" if self.lo_open else "["
            right = ")" if self.hi_open else "]"
            return f"in {left}{fmt_number(self.lo)}, {fmt_number(self.hi)}{right}"
        if self.lo is not None:
            if self.lo == 0:
                return "positive" if self.lo_open else "non-negative"
            return f"{'>' if self.lo_open else '≥'} {fmt_number(self.lo)}"
        if self.hi is not None:
            return f"{'<' if self.hi_open else '≤'} {fmt_number(self.hi)}"
        return "a number"


class BoolKind(Kind):
    def convert(self, expr, env, arg):
        if isinstance(expr, ast.Bool):
            return expr.value
        raise ArgError(f"{arg} must be `true` or `false`", expr.span)


@dataclass(frozen=True)
class ChoiceKind(Kind):
    """One of a few bare words, e.g. `return=all|last`."""
    options: tuple[str, ...]

    def convert(self, expr, env, arg):
        if isinstance(expr, ast.Name) and expr.id in self.options:
            return expr.id
        choices = " or ".join(f"`{o}`" for o in self.options)
        got = expr.id if isinstance(expr, ast.Name) else None
        hint = did_you_mean(got, self.options) if got else None
        raise ArgError(f"{arg} must be {choices}" + (f", got `{got}`" if got else ""),
                       expr.span, hint)


@dataclass(frozen=True)
class FormKind(Kind):
    """One of a few named forms, bare (`cosine`) or called with its own arguments
    (`step(every=100, gamma=0.5)`): the value is (name, ((argument, value), ...))."""
    forms: Mapping[str, "Signature"]
    what: str                          # "a schedule", in messages

    def convert(self, expr, env, arg):
        if isinstance(expr, ast.Name):
            name, args, kwargs, span = expr.id, (), (), expr.span
        elif isinstance(expr, ast.Call):
            name, args, kwargs, span = expr.func, expr.args, expr.kwargs, expr.func_span
        else:
            raise ArgError(f"{arg} must be {self.what}: {', '.join(self.forms)}", expr.span)
        if name not in self.forms:
            raise ArgError(f"{arg}: unknown {self.what.split(' ', 1)[-1]} `{name}`", span,
                           did_you_mean(name, self.forms) or f"{self.what.split(' ', 1)[-1]}s: "
                           f"{', '.join(self.forms[f].usage(f) if self.forms[f].args else f for f in self.forms)}")
        errors: list[Diagnostic] = []
        bound = bind(self.forms[name], args, kwargs, expr.span, env, name, errors)
        if not bound.ok:
            d = errors[0] if errors else None
            raise ArgError(d.message, d.span, d.hint) if d else ArgError.silent()
        return (name, tuple(bound.values.items()))


class ActivationKind(Kind):
    """A built-in or user activation name (`act=relu`)."""

    def convert(self, expr, env, arg):
        return env.activation(expr)


class InitKind(Kind):
    """An initialiser: `xavier`, `he`, `zeros`, `normal(0.1)`, `uniform(0.05)`."""

    def convert(self, expr, env, arg):
        return env.init(expr)


TENSOR = TensorKind()
BOOL = BoolKind()
ACTIVATION = ActivationKind()
INIT = InitKind()
POSITIVE_INT = IntKind(lo=1)


# -------------------------------------------------------------- signatures
class _Required:
    def __repr__(self):
        return "REQUIRED"


REQUIRED = _Required()


@dataclass(frozen=True)
class Arg:
    """One argument. `default` is a value, REQUIRED, or a function of the other
    bound values (e.g. a pool's stride defaults to its size); `shown` is how the
    default is written in usage hints."""
    name: str
    kind: Kind
    default: object = REQUIRED
    shown: Optional[str] = None

    def usage(self) -> str:
        if self.default is REQUIRED:
            return self.name
        if self.shown is not None:
            shown = self.shown
        elif self.default is None:
            shown = "none"
        else:
            shown = fmt_number(self.default)
        return f"{self.name}={shown}"


@dataclass(frozen=True)
class Signature:
    args: tuple[Arg, ...]
    variadic: Optional[str] = None     # all positional args are tensors named so (concat)

    def names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.args)

    def usage(self, func: str) -> str:
        parts = [f"{self.variadic}, ..."] if self.variadic else []
        parts += [a.usage() for a in self.args]
        return f"{func}({', '.join(parts)})"


@dataclass(frozen=True)
class Bound:
    """A call matched to its signature.

    values:  every scalar argument, converted, defaults filled in
    tensors: (argument name, expression) of every tensor operand, in order
    spans:   the span of each argument as written (the call's span for defaults)
    ok:      False when a problem was reported (values may then be incomplete, but
             the tensors are all there, so their own errors can still be found)
    """
    values: Mapping[str, object]
    tensors: tuple[tuple[str, ast.Expr], ...]
    spans: Mapping[str, Span] = field(default_factory=dict)
    ok: bool = True


def bind(sig: Signature, args: Sequence[ast.Expr], kwargs: Sequence[ast.KwArg],
         span: Span, env: Env, func: str, errors: list[Diagnostic]) -> Bound:
    """Bind the arguments; append every problem to `errors` (then `ok` is False)."""
    n_before = len(errors)
    given, tensors, spans = _match(sig, args, kwargs, span, func, errors)
    values: dict[str, object] = {}
    failed = False
    for a in sig.args:
        if a.name not in given:
            continue
        expr = given[a.name]
        if a.kind.is_tensor:
            tensors.append((a.name, expr))
            continue
        try:
            values[a.name] = a.kind.convert(expr, env, f"`{a.name}` of `{func}`")
        except ArgError as exc:
            exc.report_to(errors)
            failed = True
    missing = [a.name for a in sig.args if a.default is REQUIRED and a.name not in given]
    if missing:
        names = ", ".join(f"`{m}`" for m in missing)
        plural = "s" if len(missing) > 1 else ""
        errors.append(Diagnostic(f"`{func}` is missing argument{plural} {names}", span,
                                 f"usage: {sig.usage(func)}"))
    order = {a.name: i for i, a in enumerate(sig.args)}
    tensors.sort(key=lambda t: order.get(t[0], -1))
    if failed or len(errors) > n_before:
        return Bound(values, tuple(tensors), spans, ok=False)
    for a in sig.args:
        if a.name not in given and not a.kind.is_tensor:
            values[a.name] = a.default(values) if callable(a.default) else a.default
            spans[a.name] = span
    in_order = {a.name: values[a.name] for a in sig.args if a.name in values}
    return Bound(in_order, tuple(tensors), spans)


def _match(sig, args, kwargs, span, func, errors):
    """Positional then keyword arguments to argument names (structural errors only)."""
    given: dict[str, ast.Expr] = {}
    spans: dict[str, Span] = {}
    tensors: list[tuple[str, ast.Expr]] = []
    if sig.variadic:
        for i, a in enumerate(args):
            key = f"{sig.variadic}[{i}]"
            tensors.append((key, a))
            spans[key] = a.span
    else:
        for i, a in enumerate(args):
            if i >= len(sig.args):
                errors.append(Diagnostic(
                    f"`{func}` takes at most {len(sig.args)} positional argument"
                    f"{'s' if len(sig.args) != 1 else ''}, got {len(args)}", a.span,
                    f"usage: {sig.usage(func)}"))
                break
            given[sig.args[i].name] = a
            spans[sig.args[i].name] = a.span
    names = sig.names()
    for kw in kwargs:
        if kw.name not in names:
            hint = did_you_mean(kw.name, names) or f"usage: {sig.usage(func)}"
            errors.append(Diagnostic(f"`{func}` has no argument `{kw.name}`", kw.span, hint))
        elif kw.name in given:
            errors.append(Diagnostic(f"argument `{kw.name}` of `{func}` is given twice",
                                     kw.span))
        else:
            given[kw.name] = kw.value
            spans[kw.name] = kw.value.span
    return given, tensors, spans
