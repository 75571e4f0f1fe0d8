"""Scalar primitives as sympy functions: definition, derivative and printed form side by side.

sympy differentiates everything the user writes; these classes give it the
derivative rules it must not invent itself (a kink's convention, a stable form
that a naive formula would overflow).  Each primitive's numba text lives next
to its derivative in `NUMBA`, so adding one is one block in this file.
"""
from __future__ import annotations

import sympy as sp


class sigmoid(sp.Function):
    """σ(x) = 1/(1+e^-x); σ' = σ(1-σ), written through σ itself so it reuses forward values."""
    nargs = 1

    def fdiff(self, argindex=1):
        s = sigmoid(self.args[0])
        return s * (1 - s)


class step(sp.Function):
    """Heaviside with step(0) = 0: the derivative convention of relu at its kink."""
    nargs = 1

    def fdiff(self, argindex=1):
        return sp.Integer(0)


class relu(sp.Function):
    nargs = 1

    def fdiff(self, argindex=1):
        return step(self.args[0])

    @staticmethod
    def derivative_from_output(out, x):
        """relu(x) > 0 exactly when x > 0: the backward pass needs only the output."""
        return step(out)


class leaky_relu(sp.Function):
    """leaky_relu(x, alpha); alpha is a constant (no derivative flows into it)."""
    nargs = (1, 2)

    @classmethod
    def eval(cls, x, alpha=None):
        if alpha is None:
            return cls(x, sp.Float(0.01))
        return None

    def fdiff(self, argindex=1):
        x, alpha = self.args
        if argindex == 2:
            return sp.Integer(0)
        return step(x) + alpha * (1 - step(x))

    @staticmethod
    def derivative_from_output(out, x, alpha=None):
        if alpha is None or not (alpha.is_number and alpha > 0):
            return None
        return step(out) + alpha * (1 - step(out))


class elu(sp.Function):
    """x for x > 0, e^x - 1 otherwise."""
    nargs = 1

    def fdiff(self, argindex=1):
        x = self.args[0]
        return step(x) + (1 - step(x)) * sp.exp(x)

    @staticmethod
    def derivative_from_output(out, x):
        """e^x = elu(x) + 1 on the negative side."""
        return step(out) + (1 - step(out)) * (out + 1)


class softplus(sp.Function):
    """log(1 + e^x), printed as max(x, 0) + log1p(e^-|x|) so that x = ±1000 stays finite."""
    nargs = 1

    def fdiff(self, argindex=1):
        return sigmoid(self.args[0])


class rsqrt(sp.Function):
    """1/sqrt(x), the scale of a normalisation: d/dx = −rsqrt(x)³/2, written through the
    output so that the backward pass reads the stored 1/σ and never takes a root again."""
    nargs = 1

    def fdiff(self, argindex=1):
        return -rsqrt(self.args[0]) ** 3 / 2

    @staticmethod
    def derivative_from_output(out, x):
        return -out ** 3 / 2


class maximum(sp.Function):
    """max(a, b) with the subgradient going to `a` on ties."""
    nargs = 2

    def fdiff(self, argindex=1):
        a, b = self.args
        return ge(a, b) if argindex == 1 else 1 - ge(a, b)


class minimum(sp.Function):
    nargs = 2

    def fdiff(self, argindex=1):
        a, b = self.args
        return ge(b, a) if argindex == 1 else 1 - ge(b, a)


class ge(sp.Function):
    """1 where a >= b else 0 (an indicator; no derivative)."""
    nargs = 2

    def fdiff(self, argindex=1):
        return sp.Integer(0)


class eq(sp.Function):
    """1 where a == b else 0 (an indicator; no derivative): routes a max's adjoint to the
    stored position of its first arg-max."""
    nargs = 2

    def fdiff(self, argindex=1):
        return sp.Integer(0)


class absolute(sp.Function):
    """|x| with d|x|/dx = sign(x) and sign(0) = 0."""
    nargs = 1

    def fdiff(self, argindex=1):
        return sign(self.args[0])


class sign(sp.Function):
    nargs = 1

    def fdiff(self, argindex=1):
        return sp.Integer(0)


def _where_class(name: str, op: str):
    """where(lhs OP rhs, a, b): derivatives flow into the chosen branch, never into the test."""
    def fdiff(self, argindex=1):
        lhs, rhs, a, b = self.args
        if argindex <= 2:
            return sp.Integer(0)
        return type(self)(lhs, rhs, 1, 0) if argindex == 3 else type(self)(lhs, rhs, 0, 1)
    return type(name, (sp.Function,), {"nargs": 4, "fdiff": fdiff, "op": op})


WHERE = {op: _where_class(f"where_{name}", op) for op, name in
         [("<", "lt"), ("<=", "le"), (">", "gt"), (">=", "ge"), ("==", "eq"), ("!=", "ne")]}


# The numba text of each primitive; `{0}`, `{1}` are the printed arguments.  `F` is the
# module's float type, so that constants do not promote float32 arithmetic to double.
NUMBA = {
    "sigmoid": "_sigmoid({0})",        # dtype-specific helpers in the module template
    "step": "(F(1.0) if {0} > 0 else F(0.0))",
    "relu": "({0} if {0} > 0 else F(0.0))",
    "leaky_relu": "({0} if {0} > 0 else {1} * {0})",
    "elu": "({0} if {0} > 0 else math.expm1({0}))",
    "softplus": "_softplus({0})",
    "rsqrt": "(F(1.0) / math.sqrt({0}))",
    "maximum": "({0} if {0} >= {1} else {1})",
    "minimum": "({0} if {0} <= {1} else {1})",
    "ge": "(F(1.0) if {0} >= {1} else F(0.0))",
    "eq": "(F(1.0) if {0} == {1} else F(0.0))",
    "absolute": "abs({0})",
    "sign": "(F(1.0) if {0} > 0 else (F(-1.0) if {0} < 0 else F(0.0)))",
}
NUMBA.update({cls.__name__: "({2} if {0} %s {1} else {3})" % op for op, cls in WHERE.items()})

# Scalar helpers a primitive's NUMBA text calls, that are not in `render/helpers.py`: name ->
# its definition without a decorator (each target adds its own), the same on every target.
# A new activation that needs one adds it here, beside its Function and NUMBA text.
PRIMITIVE_HELPERS: dict[str, str] = {}

# Name in the .nn language -> a callable building the sympy expression.
BUILTIN = {
    "exp": sp.exp, "log": sp.log, "sqrt": sp.sqrt, "abs": absolute, "tanh": sp.tanh,
    "sigmoid": sigmoid, "softplus": softplus, "relu": relu, "leaky_relu": leaky_relu,
    "elu": elu, "swish": lambda x: x * sigmoid(x), "sin": sp.sin, "cos": sp.cos,
    "min": minimum, "max": maximum, "identity": lambda x: x,
}
