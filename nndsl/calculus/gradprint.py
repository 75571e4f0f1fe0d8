"""`nndsl grad`: the derived gradients in index notation, the way a lecture writes them.

The backward stages that `nndsl.derive` produced are read back as sums of
products, and every intermediate adjoint is substituted by its definition
until only forward quantities and the error signals remain, e.g. for the
lecture's network

    e[n] = ∂L/∂o[n] = (o[n] − y[n]) / N
    ∂L/∂o.W[k] = Σ_n e[n]·h[n,k]
    ∂L/∂h.W[k,d] = Σ_n e[n]·o.W[k]·(1 − h[n,k]²)·x[n,d]

Indices of size 1 are dropped, as a lecture would.  An error signal is the
gradient of the loss with respect to a loss operand.
"""
from __future__ import annotations

import itertools

import sympy as sp
from sympy.printing.latex import LatexPrinter
from sympy.printing.str import StrPrinter

from ..diagnostics import CompileError, Diagnostic, did_you_mean
from ..frontend import ir
from ..plan.codegen import generate
from . import functions as fn
from .formulas import N, Stage

_MAX_INLINE = 12            # beyond this many factors a formula stops at the layer's δ


def format_gradients(model: ir.ModelIR, param: str | None = None, latex: bool = False) -> str:
    if param is not None and param not in {p.name for p in model.params}:
        raise CompileError(Diagnostic(f"unknown parameter `{param}`", None,
                                      hint=did_you_mean(param, [p.name for p in model.params])
                                      or "parameters: " + ", ".join(p.name for p in model.params)))
    spec = generate(model, "float64")
    out = []
    for loss in model.losses:
        loss_stages, full, _partial, _wrt = spec.adjoints[loss.name]
        view = _View(spec, loss, full, latex)
        block = view.render(param)
        if block:
            if len(model.losses) > 1:
                out.append(f"# loss {loss.name} (updates {', '.join(sorted({_prefix(p) for p in loss.wrt}))})")
            out.extend(block)
            out.append("")
    return "\n".join(out).rstrip()


def _prefix(name: str) -> str:
    return name.rsplit(".", 1)[0]


class _View:
    def __init__(self, spec, loss: ir.Loss, adjoint, latex: bool):
        self.spec, self.loss, self.latex = spec, loss, latex
        self.tensors = spec.tensors
        self.g = spec.graph
        self.defs: dict[str, list[tuple[tuple, sp.Expr]]] = {}
        self.order = {}
        for pos, s in enumerate(spec.adjoints[loss.name][0]):
            self.order.setdefault(s.out, pos)
            for a in s.accesses:
                self.order.setdefault(a.tensor, pos)
        for s in adjoint.stages:
            if s.kind == "formula" and s.expr != 0:
                self.defs.setdefault(s.out, []).append((s.index, self._as_sum(s)))
        operands = [a for t in loss.terms for a in t.args if isinstance(a, str)]
        self.signals = {}
        names = iter(["e"] + [f"e{k}" for k in range(2, 100)])
        self.adjoint_of = adjoint.adjoint_of
        for node in operands:
            grad = self.adjoint_of.get(self.g.values[node].name)
            if grad in self.defs and grad not in self.signals:
                self.signals[grad] = (next(names), node)
        self.original: dict = {}
        self.fresh = (sp.Symbol(f"{c}{k}", integer=True) for k in itertools.count() for c in "jmpq")

    # -- reading stages back --------------------------------------------------
    def _as_sum(self, s: Stage) -> sp.Expr:
        body = s.expr.xreplace({a.symbol: sp.IndexedBase(a.tensor)[a.index] if a.index
                                else sp.IndexedBase(a.tensor)[0] for a in s.accesses})
        sizes = dict(s.ranges)
        for v in s.reduce_vars:
            body = _sum(body, v, sizes[v])
        # a scalar index of a size-1 loop prints as no index at all
        return body.xreplace({v: 0 for v, n in s.ranges if n == 1})

    def _inline(self, expr: sp.Expr, stop_at_values: bool) -> sp.Expr:
        for _ in range(64):
            changed = False
            for ind in sorted(expr.atoms(sp.Indexed), key=str):
                name = str(ind.base.label)
                if name not in self.defs or name in self.signals:
                    continue
                if stop_at_values and self._is_node_value(name):
                    continue
                expr = expr.xreplace({ind: self._definition(name, ind.indices)})
                changed = True
            if not changed:
                break
        return self._restore_names(expr)

    def _restore_names(self, expr: sp.Expr) -> sp.Expr:
        """Give each summation index back its natural name where that name is free there."""
        for fresh, orig in self.original.items():
            for s in list(expr.atoms(sp.Sum)):
                if any(lim[0] == fresh for lim in s.limits):
                    taken = {x.name for x in s.free_symbols if isinstance(x, sp.Symbol)}
                    outer_taken = {x.name for x in expr.free_symbols if isinstance(x, sp.Symbol)}
                    name = orig.name
                    while name in taken or name in outer_taken or _bound_inside(s, name, fresh):
                        name = name + "'"
                    expr = expr.xreplace({s: s.xreplace({fresh: sp.Symbol(name, integer=True)})})
        return expr

    def _is_node_value(self, grad_name: str) -> bool:
        t = self.tensors[grad_name]
        return t.role == "grad" and t.label[1:] in self.g.values

    def _definition(self, name: str, indices) -> sp.Expr:
        total = sp.Integer(0)
        for index, body in self.defs[name]:
            if not all(isinstance(i, sp.Symbol) or i.is_Integer for i in index):
                return sp.IndexedBase(name)[indices]        # a scatter: keep it named
            renames = {}
            for v in _sum_vars(body):
                renames[v] = next(self.fresh)
                self.original[renames[v]] = v
            body = body.xreplace(renames)
            subst = {i: v for i, v in zip(index, indices) if isinstance(i, sp.Symbol)}
            total += body.xreplace(subst)
        return total

    # -- rendering -------------------------------------------------------------
    def render(self, only: str | None) -> list[str]:
        p = _LatexPrinter(self) if self.latex else _TextPrinter(self)
        lines, shown = [], set()
        for grad, (sig, node) in self.signals.items():
            defn = self._inline(self._definition(grad, self._index_of(grad)), False)
            lhs = p.access(sig, grad, self._index_of(grad))
            lines.append(p.equation(lhs, p.partial(node, grad, self._index_of(grad)), p.doprint(defn)))
        for prm in self.spec.model.params:
            if prm.name not in self.loss.wrt or (only is not None and prm.name != only):
                continue
            grad = self.adjoint_of.get(self.g.params[prm.name].name)
            if grad not in self.defs:
                index = self._index_of(self.g.params[prm.name].name)
                lines.append(p.equation(p.partial(prm.name, self.g.params[prm.name].name, index), None, "0"))
                continue
            expr = self._inline(self._definition(grad, self._index_of(grad)), False)
            if _size(expr) > _MAX_INLINE:
                expr = self._inline(self._definition(grad, self._index_of(grad)), True)
                lines += self._deltas_used(expr, p, shown)
            lines.append(p.equation(p.partial(prm.name, grad, self._index_of(grad)), None, p.doprint(expr)))
        return lines

    def _deltas_used(self, expr, p, shown: set) -> list[str]:
        """Definition lines of the layer adjoints (Δh) a formula stopped at, innermost last."""
        lines = []
        for ind in sorted(expr.atoms(sp.Indexed), key=str):
            name = str(ind.base.label)
            if name in shown or name not in self.defs or name in self.signals:
                continue
            shown.add(name)
            index = self._index_of(name)
            defn = self._inline(self._definition(name, index), True)
            lines += self._deltas_used(defn, p, shown)
            node = self.tensors[name].label[1:]
            lines.append(p.equation(p.access(self.tensors[name].label, name, index),
                                    p.partial(node, name, index), p.doprint(defn)))
        return lines

    def _index_of(self, tensor: str) -> tuple:
        shape = self.tensors[tensor].shape
        letters = iter("kdijlmpqrs")
        out = []
        for k, size in enumerate(shape):
            out.append(sp.Symbol("n", integer=True) if (k == 0 and size == N) else
                       (sp.Integer(0) if size == 1 else sp.Symbol(next(letters), integer=True)))
        return tuple(out)

    def sort_key(self, factor) -> tuple:
        """Backprop order: error signals, then what lies nearer the loss, then the inputs."""
        names = [str(i.base.label) for i in factor.atoms(sp.Indexed)]
        if any(n in self.signals for n in names):
            return (0, 0)
        if not names:
            return (1, 0)
        return (2, -max(self.order.get(n, -1) for n in names))


def _add_key(term):
    """Positive terms first, then by text: `o − y`, `1 − h²`."""
    return (term.as_coeff_Mul()[0].is_negative, not term.is_number, str(term))


def _sum(body, v, size):
    if size == 1:
        return body.xreplace({v: 0})
    return sp.Sum(body, (v, 0, size - 1))


def _bound_inside(s: sp.Sum, name: str, fresh) -> bool:
    return any(lim[0].name == name for inner in s.atoms(sp.Sum) for lim in inner.limits if lim[0] != fresh)


def _sum_vars(expr) -> set:
    return {lim[0] for s in expr.atoms(sp.Sum) for lim in s.limits}


def _size(expr) -> int:
    return len(sp.Mul.make_args(expr.function if isinstance(expr, sp.Sum) else expr)) + \
        sum(_size(s.function) for s in expr.atoms(sp.Sum) if s is not expr)


class _TextPrinter(StrPrinter):
    printmethod = "_nndsl_text"          # not sympy's own `_sympystr` of Indexed

    def __init__(self, view: _View):
        super().__init__()
        self.view = view

    def access(self, name, tensor, index) -> str:
        return name + self._index(tensor, index)

    def partial(self, label, tensor, index) -> str:
        return f"∂L/∂{label}{self._index(tensor, index)}"

    def equation(self, lhs, middle, rhs) -> str:
        return f"{lhs} = {middle} = {rhs}" if middle else f"{lhs} = {rhs}"

    def _index(self, tensor, index) -> str:
        shape = self.view.tensors[tensor].shape
        shown = [str(i) for i, size in zip(index, shape) if not (size == 1 and i == 0)]
        return f"[{','.join(shown)}]" if shown else ""

    def _print_Indexed(self, e):
        name = str(e.base.label)
        if name in self.view.signals:
            label = self.view.signals[name][0]
        else:
            t = self.view.tensors[name]
            label = t.label
        return label + self._index(name, e.indices)

    def _print_Sum(self, e):
        vars_ = ",".join(str(lim[0]) for lim in e.limits)
        return f"Σ_{vars_} {self.parenthesize(e.function, 45)}"

    def _print_Mul(self, e):
        coeff, factors = e.as_coeff_mul()
        factors = sorted(factors, key=self.view.sort_key)
        num = [f for f in factors if not (f.is_Pow and f.exp.is_negative)]
        den = [1 / f for f in factors if f.is_Pow and f.exp.is_negative]
        text = "·".join(self.parenthesize(f, 50) for f in num) or "1"
        if coeff == -1:
            text = "−" + text
        elif coeff != 1:
            text = f"{self._print(coeff)}·{text}"
        if den:
            text += " / " + "·".join(self.parenthesize(f, 50) for f in den)
        return text

    def _print_Add(self, e, order=None):
        terms = sorted(e.args, key=_add_key)
        out = self._print(terms[0])
        for t in terms[1:]:
            c, _ = t.as_coeff_Mul()
            out += f" − {self._print(-t)}" if c.is_negative else f" + {self._print(t)}"
        return out.replace("-", "−")

    def _print_Pow(self, e, rational=False):
        if e.exp == 2:
            return f"{self.parenthesize(e.base, 60)}²"
        if e.exp == -1:
            return f"1/{self.parenthesize(e.base, 60)}"
        return super()._print_Pow(e, rational)

    def _print_Function(self, e):
        if hasattr(type(e), "op"):                       # where(lhs OP rhs, a, b)
            lhs, rhs, a, b = (self._print(x) for x in e.args)
            return f"where({lhs} {type(e).op} {rhs}, {a}, {b})"
        name = fn.DISPLAY.get(type(e).__name__, type(e).__name__)
        return f"{name}({', '.join(self._print(a) for a in e.args)})"

    def _print_Symbol(self, e):
        return e.name

    def _print_Rational(self, e):
        return f"{e.p}/{e.q}"


class _LatexPrinter(LatexPrinter):
    printmethod = "_nndsl_latex"

    def __init__(self, view: _View):
        super().__init__()
        self.view = view

    def _label(self, label: str) -> str:
        parts = label.split(".")
        return parts[-1] + ("^{(" + ".".join(parts[:-1]) + ")}" if len(parts) > 1 else "")

    def _index(self, tensor, index) -> str:
        shape = self.view.tensors[tensor].shape
        shown = [str(i) for i, size in zip(index, shape) if not (size == 1 and i == 0)]
        return "_{" + ",".join(shown) + "}" if shown else ""

    def access(self, name, tensor, index) -> str:
        return name + self._index(tensor, index)

    def partial(self, label, tensor, index) -> str:
        return r"\frac{\partial L}{\partial " + self._label(label) + self._index(tensor, index) + "}"

    def equation(self, lhs, middle, rhs) -> str:
        return f"{lhs} = {middle} = {rhs}" if middle else f"{lhs} = {rhs}"

    def _print_Mul(self, e):
        coeff, factors = e.as_coeff_mul()
        if any(f.is_Pow and f.exp.is_negative for f in factors) or coeff.q != 1:
            return super()._print_Mul(e)
        text = " ".join(self.parenthesize(f, 50) for f in sorted(factors, key=self.view.sort_key))
        return ("-" + text) if coeff == -1 else (text if coeff == 1 else f"{self._print(coeff)} {text}")

    def _print_Add(self, e, order=None):
        terms = sorted(e.args, key=_add_key)
        out = self._print(terms[0])
        for t in terms[1:]:
            out += f" - {self._print(-t)}" if t.as_coeff_Mul()[0].is_negative else f" + {self._print(t)}"
        return out

    def _print_Indexed(self, e):
        name = str(e.base.label)
        if name in self.view.signals:
            return self.view.signals[name][0] + self._index(name, e.indices)
        return "{" + self._label(self.view.tensors[name].label) + "}" + self._index(name, e.indices)

    def _print_Sum(self, e):
        vars_ = ",".join(str(lim[0]) for lim in e.limits)
        return r"\sum_{" + vars_ + "} " + self.parenthesize(e.function, 45)

    def _print_Function(self, e, exp=None):
        names = {"sigmoid": r"\sigma", "relu": r"\operatorname{relu}", "softplus": r"\operatorname{softplus}",
                 "step": r"\operatorname{step}", "elu": r"\operatorname{elu}", "leaky_relu": r"\operatorname{leaky\_relu}",
                 "absolute": r"\operatorname{abs}", "sign": r"\operatorname{sign}",
                 "maximum": r"\max", "minimum": r"\min", "ge": r"\operatorname{ge}"}
        name = type(e).__name__
        if name in names:
            text = names[name] + r"\left(" + ", ".join(self._print(a) for a in e.args) + r"\right)"
            return f"{text}^{{{exp}}}" if exp else text
        return super()._print_Function(e, exp)
