"""sympy → Numba-Python text for the scalar bodies of loop nests."""
from __future__ import annotations

import sympy as sp
from sympy.printing.precedence import PRECEDENCE
from sympy.printing.pycode import PythonCodePrinter

from ..calculus import functions as fn


class NumbaPrinter(PythonCodePrinter):
    """Prints scalar formulas; access symbols print as their array reads.

    In float32 code every literal is wrapped as `F(...)` (F = np.float32) so
    that arithmetic stays in single precision instead of promoting to double.
    """

    def __init__(self, names: dict[sp.Symbol, str], dtype: str = "float64"):
        super().__init__({"fully_qualified_modules": True, "standard": "python3"})
        self.names = names
        self.f32 = dtype == "float32"

    def _lit(self, text: str) -> str:
        return f"F({text})" if self.f32 else text

    def _print_Symbol(self, s):
        text = self.names.get(s, s.name)
        # an integer (a size, a loop index) in a float32 formula: numba would compute
        # `x / (s0*s3)` in float64, one conversion and a double division per element
        return self._lit(text) if s.is_integer and text.isidentifier() else text

    def _print_Float(self, e):
        return self._lit(repr(float(e)))

    def _print_Rational(self, e):
        return self._lit(repr(float(e)))

    def _print_Integer(self, e):
        return self._lit(f"{int(e)}.0")

    def _print_Half(self, e):
        return self._lit("0.5")

    def _print_Exp1(self, e):
        return self._lit(repr(float(sp.E)))

    def _print_Pi(self, e):
        return self._lit(repr(float(sp.pi)))

    def _print_Pow(self, e, rational=False):
        base, ex = e.args
        if ex.is_Integer and 1 < abs(int(ex)) <= 3:
            b = self.parenthesize(base, sp.printing.precedence.PRECEDENCE["Mul"] + 1)
            prod = " * ".join([b] * abs(int(ex)))
            return f"({prod})" if ex > 0 else f"({self._lit('1.0')} / ({prod}))"
        if ex == -1:
            return f"{self._lit('1.0')} / {self.parenthesize(base, 60)}"
        if ex == sp.S.Half:
            return f"math.sqrt({self._print(base)})"
        if ex == -sp.S.Half:
            return f"{self._lit('1.0')} / math.sqrt({self._print(base)})"
        b = self.parenthesize(base, 60)
        x = self._print(ex) if not ex.is_Integer else str(int(ex))
        return f"{b} ** {x}"

    def _print_Function(self, e):
        name = type(e).__name__
        if name in fn.NUMBA:
            # a template may use an argument as a factor (leaky_relu's `alpha * x`): a sum
            # or a negated value goes in parentheses
            return fn.NUMBA[name].format(*[self.parenthesize(a, PRECEDENCE["Mul"]) for a in e.args])
        return super()._print_Function(e)

    def _print_tanh(self, e):
        return f"_tanh({self._print(e.args[0])})"

    def _print_exp(self, e):
        return f"_exp({self._print(e.args[0])})"

    def _print_Relational(self, e):
        ops = {"==": "==", "!=": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}
        return f"({self._print(e.lhs)} {ops[e.rel_op]} {self._print(e.rhs)})"

    def _print_sign(self, e):
        return fn.NUMBA["sign"].format(self.parenthesize(e.args[0], PRECEDENCE["Mul"]))


def index_text(exprs) -> str:
    """`n, k` or `n, 2*i + p` for an array subscript (indices are integers, never F-wrapped)."""
    return ", ".join(_int_expr(e) for e in exprs)


def _int_expr(e) -> str:
    e = sp.sympify(e)
    return PythonCodePrinter({"standard": "python3"}).doprint(e)
