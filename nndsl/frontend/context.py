"""The state every part of the checker shares: diagnostics, the top-level names,
consts, settings and the checked user definitions.

`Context` is also the `signature.Env` that argument binding asks what a const
is worth, which activations exist and what an initialiser means.
"""
from __future__ import annotations

import keyword
import sys

from dataclasses import dataclass
from typing import Optional, Sequence

from ..diagnostics import Diagnostic, Span, did_you_mean
from . import ast, ir
from .builtins import ACTIVATIONS, DEFAULT_INIT, INITS, FunctionSpec, reserved_kind
from .signature import ArgError, Number, bind, fold_number
from .userlayers import LayerInfo


class Failed(Exception):
    """The current node cannot be built; its problem is already reported."""


@dataclass(frozen=True)
class TopName:
    kind: str               # input target const node network activation "loss function" layer
    span: Span
    index: int              # statement index


DEFINITION_KINDS = frozenset({"network", "activation", "loss function", "layer"})

_KIND_OF_STATEMENT = {
    ast.InputDecl: "input", ast.TargetDecl: "target", ast.ConstDecl: "const",
    ast.Assign: "node", ast.NetworkDef: "network", ast.ActivationDef: "activation",
    ast.LossDef: "loss function", ast.LayerDef: "layer"}


class Context:
    def __init__(self, program: ast.Program):
        self.program = program
        self.errors: list[Diagnostic] = []
        self.top: dict[str, TopName] = {}
        self.skip: set[int] = set()                  # statements shadowed by a duplicate
        self.stmt_index: Optional[int] = None        # the top-level statement being checked
        self.consts: dict[str, Number] = {}
        self.default_init = ir.Init(DEFAULT_INIT)
        self.train = ir.TrainConfig()
        self.user_specs: dict[str, FunctionSpec] = {}     # user activations' signatures
        self.loss_specs: dict[str, FunctionSpec] = {}     # user losses' signatures
        self.activations: dict[str, ir.UserFn] = {}       # checked (absent: failed)
        self.user_losses: dict[str, ir.UserFn] = {}
        self.layer_defs: dict[str, ast.LayerDef] = {}
        self.layers: dict[str, LayerInfo] = {}            # checked (absent: failed)
        self.network_defs: dict[str, ast.NetworkDef] = {}
        self.broken_networks: set[str] = set()

    # ------------------------------------------------------------- reporting
    def error(self, message: str, span: Optional[Span], hint: Optional[str] = None,
              notes: Sequence[tuple[str, Optional[Span]]] = ()) -> None:
        self.errors.append(Diagnostic(message, span, hint, notes=tuple(notes)))

    def fail(self, message: str, span: Optional[Span], hint: Optional[str] = None,
             notes: Sequence[tuple[str, Optional[Span]]] = ()) -> Failed:
        """Report and return the exception that abandons the current node."""
        self.error(message, span, hint, notes)
        return Failed()

    def report(self, exc: ArgError) -> None:
        exc.report_to(self.errors)

    # ----------------------------------------------------------------- names
    def collect(self, stmts: Sequence[ast.Stmt]) -> Optional[ast.ModelDecl]:
        """Register every top-level name; report duplicates and reserved names."""
        model = None
        for i, st in enumerate(stmts):
            if isinstance(st, ast.ModelDecl):
                if model is not None:
                    self.error("a file holds one model", st.span,
                               notes=[("the model is declared here", model.span)])
                model = model or st
                self._check_module_name(st)
                continue
            kind = _KIND_OF_STATEMENT.get(type(st))
            if kind is not None and not self.declare(st.name, kind, st.name_span, i):
                self.skip.add(i)
        if model is None:
            first = stmts[0].span if stmts else Span.point(1, 1)
            self.error("missing `model NAME` declaration", first,
                       "start the file with `model NAME`")
        return model

    def declare(self, name: str, kind: str, span: Span, index: int) -> bool:
        if not self.not_reserved(name, span):
            return False
        if name in self.top:
            prev = self.top[name]
            self.error(f"`{name}` is already defined", span,
                       notes=[(f"previous definition ({prev.kind}) here", prev.span)])
            return False
        self.top[name] = TopName(kind, span, index)
        return True

    def not_reserved(self, name: str, span: Span) -> bool:
        what = reserved_kind(name)
        if what is not None:
            self.error(f"`{name}` is a built-in {what} and cannot be redefined", span,
                       "choose another name")
        elif keyword.iskeyword(name) or keyword.issoftkeyword(name):
            # names become keyword arguments (`m.forward(x=...)`) and variables of the
            # generated module: a Python keyword can be neither
            self.error(f"`{name}` is a Python keyword and cannot name a value", span,
                       f"choose another name, e.g. `{name}_`")
            return False
        return what is None

    def _check_module_name(self, st: ast.ModelDecl) -> None:
        """`model NAME` writes NAME.py: a name that shadows a module the generated code (or
        the user's program) imports would make `import NAME` load the wrong file."""
        clash = module_name_clash(st.name)
        if clash is None:
            return
        line = self.program.source.splitlines()[st.span.line - 1] if self.program.source else ""
        col = line.find(st.name, st.span.col - 1 + len("model"))
        span = Span(st.span.line, col + 1, st.span.line, col + 1 + len(st.name)) if col >= 0 else st.span
        self.error(f"model name `{st.name}` would shadow {clash}: `nndsl build` writes "
                   f"{st.name}.py, and importing it would hide that module", span,
                   f"choose another name, e.g. `{st.name}_model`")

    def statements(self, kind: type) -> list:
        """The statements of one type, without those shadowed by a duplicate."""
        return [st for i, st in enumerate(self.program.statements)
                if isinstance(st, kind) and i not in self.skip]

    # -------------------------------------------------------------- numbers
    def number(self, expr: ast.Expr) -> Number:
        return fold_number(expr, self.const_value)

    def try_number(self, expr: ast.Expr) -> Optional[float]:
        """The value of a constant expression, or None (nothing reported)."""
        try:
            return float(fold_number(expr, self.const_value))
        except ArgError:
            return None

    def size(self, expr: ast.Expr, what: str) -> int:
        v = self.number(expr)
        if not isinstance(v, int) or v < 1:
            raise ArgError(f"{what} must be a positive integer, got {v}", expr.span)
        return v

    def const_value(self, name: ast.Name) -> Number:
        top = self.top.get(name.id)
        if top is not None and top.kind == "const":
            if self.stmt_index is not None and top.index >= self.stmt_index:
                raise ArgError(f"`{name.id}` is used before its definition", name.span,
                               notes=(("defined here", top.span),))
            if name.id in self.consts:
                return self.consts[name.id]
            raise ArgError.silent()           # its definition failed: reported there
        if top is not None:
            raise ArgError(f"`{name.id}` is a {top.kind}, not a number", name.span,
                           "sizes and options take numbers or consts")
        raise ArgError(f"unknown const `{name.id}`", name.span,
                       did_you_mean(name.id, self.consts) or
                       f"declare it: `const {name.id} = ...`")

    # ------------------------------------------------- activations, inits
    def activation(self, expr: ast.Expr) -> str:
        valid = [*ACTIVATIONS, *self.user_specs]
        if not isinstance(expr, ast.Name):
            raise ArgError("`act` takes an activation name, e.g. `act=relu`", expr.span)
        if expr.id in ACTIVATIONS:
            return expr.id
        spec = self.user_specs.get(expr.id)
        if spec is None:
            raise ArgError(f"unknown activation `{expr.id}`", expr.span,
                           did_you_mean(expr.id, valid) or f"activations: {', '.join(valid)}")
        if spec.required > 1:
            raise ArgError(f"activation `{expr.id}` takes {spec.required} arguments; "
                           "`act=` needs a one-argument activation", expr.span)
        return expr.id

    def init(self, expr: ast.Expr) -> ir.Init:
        if isinstance(expr, ast.Name):
            kind, args, kwargs, span = expr.id, (), (), expr.span
        elif isinstance(expr, ast.Call):
            kind, args, kwargs, span = expr.func, expr.args, expr.kwargs, expr.func_span
        else:
            raise ArgError("expected an initialiser: xavier, he, zeros, ones, normal(std) or "
                           "uniform(a)", expr.span)
        if kind not in INITS:
            raise ArgError(f"unknown initialiser `{kind}`", span,
                           did_you_mean(kind, INITS) or f"initialisers: {', '.join(INITS)}")
        errors: list[Diagnostic] = []
        bound = bind(INITS[kind], args, kwargs, expr.span, self, kind, errors)
        if not bound.ok:
            d = errors[0] if errors else None
            raise ArgError(d.message, d.span, d.hint) if d else ArgError.silent()
        value = next(iter(bound.values.values()), None)
        return ir.Init(kind, None if value is None else float(value))


# Packages the generated module and `nndsl train` import (it registers the module in
# sys.modules under its name), besides the standard library.
_GENERATED_IMPORTS = ("numpy", "numba", "llvmlite", "scipy", "nndsl", "jinja2", "sympy", "lark",
                      "matplotlib", "sklearn", "mlxtend")


def module_name_clash(name: str) -> Optional[str]:
    """What a module named `name` would shadow, or None."""
    if name in _GENERATED_IMPORTS:
        return f"the `{name}` package"
    if name in sys.stdlib_module_names:
        return f"the standard library's `{name}` module"
    return None
