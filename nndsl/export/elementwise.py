"""A sympy expression (what `calculus/ops.py` makes of an activation, a user activation or
an elementwise expression) as ONNX elementwise nodes.

The operands are sympy symbols mapped to ONNX tensors that already broadcast numpy-style
against each other; the result has their broadcast shape. The sympy tree is the one the
generated module's kernels are printed from, so user activations are inlined exactly as
the module computes them (`swish2(a) = a * sigmoid(2 * a)` -> Mul(a, Sigmoid(Mul(2, a)))).

| sympy                         | ONNX                                             |
|-------------------------------|--------------------------------------------------|
| a + b, a - b (a + (-1)·b)     | Add, Sub (Neg when every term is negative)       |
| a·b, a/b (a·b^-1), c·a        | Mul, Div, Neg for c = -1                         |
| a^(1/2), a^-1, a^2, a^k       | Sqrt, Reciprocal, Mul(a, a), Pow                 |
| exp log tanh sin cos          | Exp Log Tanh Sin Cos                             |
| sigmoid relu abs sign         | Sigmoid Relu Abs Sign                            |
| leaky_relu(a, α)              | LeakyRelu(alpha=α) (float32); in float64 graphs Where(a > 0, a, a·α): an attribute is a float32, 2e-10 off α = 0.01 |
| elu, softplus                 | Elu(alpha=1), Softplus (float32); in float64 graphs Where(a > 0, a, Exp(a) - 1) and Max(a, 0) + Log(1 + Exp(-Abs(a))): onnxruntime's CPU provider has no double kernel for Elu and Softplus |
| max(a, b), min(a, b)          | Max, Min                                          |
| where(l OP r, a, b)           | Where(Less/LessOrEqual/Greater/GreaterOrEqual/Equal/Not(Equal)(l, r), a, b) |
| numbers (Integer, Rational, Float, π, e) | a scalar initializer of the graph's dtype |
"""
from __future__ import annotations

import sympy as sp

from ..calculus import functions as fn
from .errors import ExportError

_UNARY = {sp.exp: "Exp", sp.log: "Log", sp.tanh: "Tanh", sp.sin: "Sin", sp.cos: "Cos",
          fn.sigmoid: "Sigmoid", fn.relu: "Relu", fn.absolute: "Abs", fn.sign: "Sign"}
_COMPARE = {"<": ("Less", False), "<=": ("LessOrEqual", False), ">": ("Greater", False),
            ">=": ("GreaterOrEqual", False), "==": ("Equal", False), "!=": ("Equal", True)}


class Elementwise:
    """Translates sympy expressions into nodes of one ONNX graph (`g`: an `OnnxGraph`)."""

    def __init__(self, g, double: bool):
        self.g = g
        self.double = double

    def __call__(self, expr: sp.Expr, operands: dict, what: str) -> str:
        """`operands`: sympy Symbol -> ONNX tensor name. Returns the result's tensor name."""
        self.operands, self.what = operands, what
        self.memo: dict = {}
        return self.emit(expr)

    def emit(self, e) -> str:
        if e in self.memo:
            return self.memo[e]
        out = self._emit(e)
        self.memo[e] = out
        return out

    def _emit(self, e) -> str:
        g = self.g
        if isinstance(e, sp.Symbol):
            return self.operands[e]
        if e.is_number:
            if not e.is_real:
                raise ExportError(f"{self.what}: the constant {e} is not a real number")
            return g.scalar(float(e))
        if isinstance(e, sp.Add):
            return self._add(e)
        if isinstance(e, sp.Mul):
            return self._mul(e)
        if isinstance(e, sp.Pow):
            return self._pow(e.base, e.exp)
        f = e.func
        if f in _UNARY:
            return g.op(_UNARY[f], [self.emit(e.args[0])])
        if f is fn.leaky_relu:
            alpha = e.args[1]
            if not alpha.is_number:
                raise ExportError(f"{self.what}: leaky_relu's alpha must be a number, got {alpha}")
            x = self.emit(e.args[0])
            if not self.double:
                return g.op("LeakyRelu", [x], alpha=float(alpha))
            # an attribute is a float32: LeakyRelu(alpha=0.01) is 2e-10 off in double
            return g.op("Where", [g.op("Greater", [x, g.scalar(0.0)]), x, g.op("Mul", [x, g.scalar(float(alpha))])])
        if f is fn.elu:
            x = self.emit(e.args[0])
            if not self.double:
                return g.op("Elu", [x], alpha=1.0)
            neg = g.op("Sub", [g.op("Exp", [x]), g.scalar(1.0)])
            return g.op("Where", [g.op("Greater", [x, g.scalar(0.0)]), x, neg])
        if f is fn.softplus:
            x = self.emit(e.args[0])
            if not self.double:
                return g.op("Softplus", [x])
            tail = g.op("Log", [g.op("Add", [g.scalar(1.0), g.op("Exp", [g.op("Neg", [g.op("Abs", [x])])])])])
            return g.op("Add", [g.op("Max", [x, g.scalar(0.0)]), tail])
        if f is fn.maximum:
            return g.op("Max", [self.emit(a) for a in e.args])
        if f is fn.minimum:
            return g.op("Min", [self.emit(a) for a in e.args])
        if f in (fn.step, fn.ge, fn.eq):          # indicators (derivatives; not in a forward pass)
            args = [self.emit(a) for a in e.args] if f is not fn.step else [self.emit(e.args[0]), g.scalar(0.0)]
            test = {fn.step: "Greater", fn.ge: "GreaterOrEqual", fn.eq: "Equal"}[f]
            return g.op("Where", [g.op(test, args), g.scalar(1.0), g.scalar(0.0)])
        op = getattr(f, "op", None)
        if op in _COMPARE and f is fn.WHERE.get(op):
            lhs, rhs, a, b = (self.emit(x) for x in e.args)
            test, negate = _COMPARE[op]
            cond = g.op(test, [lhs, rhs])
            if negate:
                cond = g.op("Not", [cond])
            return g.op("Where", [cond, a, b])
        raise ExportError(f"{self.what}: `{f.__name__}` has no ONNX form in the exporter")

    def _add(self, e) -> str:
        pos, neg = [], []
        for term in e.args:
            if term.could_extract_minus_sign():
                neg.append(-term)
            else:
                pos.append(term)
        total = self._chain("Add", [self.emit(t) for t in pos]) if pos else None
        if neg:
            sub = self._chain("Add", [self.emit(t) for t in neg])
            return self.g.op("Neg", [sub]) if total is None else self.g.op("Sub", [total, sub])
        return total

    def _mul(self, e) -> str:
        coeff, factors = e.as_coeff_mul()
        num, den = [], []
        for f in factors:
            if isinstance(f, sp.Pow) and f.exp.is_number and f.exp.is_negative:
                den.append(self._pow(f.base, -f.exp))
            else:
                num.append(self.emit(f))
        if coeff.is_Rational and coeff.q != 1 and abs(coeff.p) == 1 and not den:
            den.append(self.g.scalar(float(coeff.q)))    # x/2: a division, as written
            coeff = sp.Integer(coeff.p)
        if coeff not in (1, -1):
            num.insert(0, self.g.scalar(float(coeff)))
        value = self._chain("Mul", num) if num else self.g.scalar(1.0)
        if den:
            value = self.g.op("Div", [value, self._chain("Mul", den)])
        return self.g.op("Neg", [value]) if coeff == -1 else value

    def _pow(self, base, exp) -> str:
        x = self.emit(base)
        if exp == sp.Rational(1, 2):
            return self.g.op("Sqrt", [x])
        if exp == -1:
            return self.g.op("Reciprocal", [x])
        if exp == sp.Rational(-1, 2):
            return self.g.op("Reciprocal", [self.g.op("Sqrt", [x])])
        if exp == 2:
            return self.g.op("Mul", [x, x])
        if exp.is_number:
            return self.g.op("Pow", [x, self.g.scalar(float(exp))])
        return self.g.op("Pow", [x, self.emit(exp)])

    def _chain(self, op: str, names: list[str]) -> str:
        value = names[0]
        for n in names[1:]:
            value = self.g.op(op, [value, n])
        return value
