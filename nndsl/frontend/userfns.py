"""User `activation` and `loss` definitions: elementwise formulas of their parameters.

Each is checked once, on its own: parameter names unique, defaults (numbers or
consts) after the parameters without one, a body that uses only its
parameters, consts, built-in functions and user activations (no recursion).
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence, Union

from ..diagnostics import Diagnostic, did_you_mean
from . import ast, ir
from .builtins import BUILTIN_LOSSES, FunctionSpec
from .exprs import ExprLowering, Lowered
from .shapes import BUILTIN_LAYERS
from .signature import ArgError, Number, fold_number


class _FnBody(ExprLowering):
    """The body of a user activation/loss: its parameters, consts, functions."""

    def __init__(self, errors, consts, user_functions, params: Sequence[str], owner: str,
                 not_callable: Mapping[str, str]):
        super().__init__(errors, consts, user_functions)
        self.params, self.owner = tuple(params), owner
        self.not_callable = not_callable        # name -> what it is (layer, loss, ...)
        self.calls: set[str] = set()            # user activations this body calls
        self.user_names = set(user_functions)

    def name(self, e):
        if e.id in self.params:
            return Lowered(ir.Ref(e.id))
        if e.id in self.consts:
            return self.const(self.consts[e.id])
        hint = did_you_mean(e.id, [*self.params, *self.consts])
        self.error(f"unknown name `{e.id}` in `{self.owner}`", e.span,
                   hint or f"only the parameters ({', '.join(self.params)}) and consts "
                   "are visible here")
        return None

    def apply(self, call, spec):
        if call.func in self.user_names:
            self.calls.add(call.func)
        return super().apply(call, spec)

    def call(self, e):
        what = self.not_callable.get(e.func)
        if what:
            self.error(f"{what} `{e.func}` cannot be used inside `{self.owner}`", e.func_span,
                       "an activation or loss body is an elementwise formula of its parameters")
        else:
            self.unknown_function(e, ())
        return None


def fn_defaults(defn: Union[ast.ActivationDef, ast.LossDef], consts: Mapping[str, Number],
                errors: list[Diagnostic]) -> dict[str, float]:
    """Check the parameter list (unique names, defaults last) and fold the defaults."""
    defaults: dict[str, float] = {}
    seen: dict[str, ast.FnParam] = {}
    lookup = const_lookup(consts)
    for p in defn.params:
        if p.name in seen:
            errors.append(Diagnostic(f"parameter `{p.name}` of `{defn.name}` is declared twice",
                                     p.span, notes=(("first declared here", seen[p.name].span),)))
        seen[p.name] = p
        if p.default is not None:
            try:
                defaults[p.name] = float(fold_number(p.default, lookup))
            except ArgError as exc:
                exc.report_to(errors)
        elif defaults:
            errors.append(Diagnostic(f"parameter `{p.name}` without a default follows one "
                                     "with a default", p.span,
                                     "put the parameters with defaults last"))
    return defaults


def check_user_fn(defn: Union[ast.ActivationDef, ast.LossDef], consts: Mapping[str, Number],
                  user_functions: Mapping[str, FunctionSpec], not_callable: Mapping[str, str],
                  errors: list[Diagnostic]) -> tuple[Optional[ir.UserFn], set[str]]:
    """The checked function and the user activations its body calls."""
    n_before = len(errors)
    defaults = fn_defaults(defn, consts, errors)
    body = _FnBody(errors, consts, user_functions, [p.name for p in defn.params],
                   f"{defn.name}", not_callable)
    lowered = body.lower(defn.body)
    if lowered is None or len(errors) > n_before:
        return None, body.calls
    fn = ir.UserFn(defn.name, tuple(p.name for p in defn.params), defaults, lowered.expr,
                   defn.span)
    return fn, body.calls


def find_cycles(calls: Mapping[str, set[str]]) -> list[list[str]]:
    """Each call cycle among user activations once (as the path that closes it)."""
    cycles, done = [], set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            cycles.append(path[path.index(name):] + [name])
            return
        if name in done:
            return
        for callee in sorted(calls.get(name, ())):
            visit(callee, path + [name])
        done.add(name)

    for name in calls:
        visit(name, [])
    unique, seen = [], set()
    for c in cycles:
        key = frozenset(c)
        if key not in seen:
            seen.add(key)
            unique.append(c)
    return unique


def const_lookup(consts: Mapping[str, Number]):
    def lookup(name: ast.Name) -> Number:
        if name.id in consts:
            return consts[name.id]
        raise ArgError(f"`{name.id}` is not a constant", name.span,
                       did_you_mean(name.id, consts))
    return lookup


def not_callable_names(networks: Sequence[str], layers: Sequence[str],
                       losses: Sequence[str]) -> dict[str, str]:
    """Names that a function body may not call, with what they are."""
    table = {n: "layer" for n in BUILTIN_LAYERS}
    table.update({n: "loss" for n in BUILTIN_LOSSES})
    table.update({n: "network" for n in networks})
    table.update({n: "layer" for n in layers})
    table.update({n: "loss" for n in losses})
    return table
