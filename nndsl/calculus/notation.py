"""Index-notation formulas as text or LaTeX, the way a lecture writes them.

The printers read *display expressions*: sympy expressions whose tensors are
`sp.Indexed(sp.IndexedBase(label), *indices)` with a printable label (`h.W`,
`e`, `Δh`, `p`), scalars `sp.Symbol(label)`, reductions `sp.Sum(body, (v, 0,
size − 1))`, index expressions that may be affine (`x[n,c,i·s+p−pad]`), and
the functions of `nndsl.calculus.functions` plus `indicator` (𝟙[k = label[n]]).
They know nothing about models, so any stage that produces such an expression
prints with them; `nndsl.calculus.gradprint.format_equation` is the entry
point for a new construct (a BPTT recursion, a convolution's window).

Plain text, by construction unambiguous (tests/test_gradprint.py parses it back):

- a product is `a·b`; its denominator follows one ` / `, parenthesised when it is
  a product (`(o[n] − y[n]) / (N·exp(logvar[n]))`);
- a sum binds weaker than a product: `Σ_n a·b / N + c` is `(Σ_n (a·b/N)) + c`, and a
  Σ that is a factor of a longer product is parenthesised;
- powers print as superscripts ²…⁹, otherwise `^` with a parenthesised exponent;
  `x^(1/2)` prints as `sqrt(x)`; unary minus is `−`;
- numbers are exact where they can be (`1/2`, `4`), never `1.0·` nor `**`.
"""
from __future__ import annotations

import sympy as sp


class indicator(sp.Function):
    """𝟙[a = b]: 1 where the two integers agree (the one-hot of a class label)."""
    nargs = 2


SUPERSCRIPTS = dict(zip("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹"))

# precedence levels: a sub-expression binding weaker than its context is parenthesised
ADD, MUL, NEG, POW, ATOM = 10, 20, 25, 30, 40

_TEXT_NAMES = {"sigmoid": "σ", "absolute": "abs", "maximum": "max", "minimum": "min"}
_LATEX_NAMES = {"sigmoid": r"\sigma", "exp": r"\exp", "log": r"\log", "tanh": r"\tanh",
                "sin": r"\sin", "cos": r"\cos", "maximum": r"\max", "minimum": r"\min"}


def exact_numbers(expr: sp.Expr) -> sp.Expr:
    """Floats that are small exact fractions become Rationals (`1.0` → 1, `0.5` → 1/2)."""
    subs = {}
    for f in expr.atoms(sp.Float):
        r = sp.Rational(str(f)).limit_denominator(64)
        if abs(float(r) - float(f)) <= 1e-12 * max(1.0, abs(float(f))):
            subs[f] = r
    return expr.xreplace(subs) if subs else expr


class _Base:
    """The structure every notation shares: precedence, fractions, signs, sums."""

    minus = "−"

    def __init__(self, defined=(), order=None):
        self.defined = set(defined)          # names of quantities the output defines (e, p)
        self.factor_key = order or (lambda f: 0)     # order of a product's factors

    # -- entry point ------------------------------------------------------
    def __call__(self, expr) -> str:
        return self.expr(sp.sympify(expr), 0)

    def expr(self, e, context: int) -> str:
        text, prec = self.node(e)
        return self.paren(text) if prec < context else text

    def node(self, e) -> tuple[str, int]:
        if isinstance(e, sp.Sum):
            return self.sum(e), MUL
        if e.is_Add:
            return self.add(e), ADD
        if e.is_Mul or (e.is_Pow and e.exp.is_negative) or (e.is_Rational and not e.is_Integer):
            return self.mul(e)
        if e.is_Pow:
            return self.power(e)
        if e.is_Number:
            text = self.number(abs(e))
            return (self.minus + text, NEG) if e.is_negative else (text, ATOM)
        if isinstance(e, sp.Indexed):
            return self.access(str(e.base.label), e.indices), ATOM
        if isinstance(e, sp.Symbol):
            return self.symbol(e.name), ATOM
        if isinstance(e, indicator):
            return self.indicator(*e.args), ATOM
        if isinstance(e, sp.Function):
            return self.function(e), ATOM
        raise TypeError(f"cannot print {e!r} ({type(e).__name__})")

    # -- sums of terms: positive terms first (`o − y`, `1 − h²`) ----------
    def add(self, e) -> str:
        terms = sorted(e.args, key=lambda t: (_is_negative(t), not t.is_number, sp.default_sort_key(t)))
        out = self.expr(terms[0], ADD)
        for t in terms[1:]:
            if _is_negative(t):
                out += f" {self.minus_op} " + self.expr(-t, ADD + 1)
            else:
                out += " + " + self.expr(t, ADD + 1)
        return out

    minus_op = "−"

    # -- products and fractions ---------------------------------------------
    def mul(self, e) -> tuple[str, int]:
        coeff, factors = e.as_coeff_mul()
        negative = coeff.is_negative
        coeff = abs(coeff)
        num, den = [], []
        for f in factors:
            if f.is_Pow and f.exp.is_negative:
                den.append(f.base ** -f.exp)
            elif isinstance(f, sp.exp) and _is_negative(f.args[0]):
                den.append(sp.exp(-f.args[0]))               # exp(−x) reads as / exp(x)
            else:
                num.append(f)
        if coeff.is_Rational:
            if coeff.p != 1:
                num.insert(0, sp.Integer(coeff.p))
            if coeff.q != 1:
                den.insert(0, sp.Integer(coeff.q))
        elif coeff != 1:
            num.insert(0, coeff)
        num = self.order(num)
        den = self.order(den)
        text = self.fraction(num, den)
        if negative:
            return self.minus + text, NEG
        return text, MUL

    def order(self, factors: list) -> list:
        """Numbers first, then in the caller's order (backprop order), ties by text."""
        return sorted(factors, key=lambda f: (0,) if f.is_number else (1, self.factor_key(f), self(f)))

    def product(self, factors: list) -> str:
        parts = []
        for j, f in enumerate(factors):
            last = j == len(factors) - 1
            # a Σ in the middle of a product would swallow the factors after it
            if isinstance(f, sp.Sum):
                parts.append(self.sum(f) if last else self.paren(self.sum(f)))
            else:
                parts.append(self.expr(f, MUL + 1))
        return self.times.join(parts)

    # -- powers ---------------------------------------------------------------
    def power(self, e) -> tuple[str, int]:
        base, exp = e.base, e.exp
        if exp == sp.Rational(1, 2):
            return self.function_call("sqrt", [base]), ATOM
        return self.raise_to(self.expr(base, POW + 1), exp), POW

    # -- shared leaves ------------------------------------------------------
    def number(self, x) -> str:
        if x.is_Integer:
            return str(int(x))
        if x.is_Rational:
            return self.rational(x)
        return _float_text(float(x))

    def index_text(self, i) -> str:
        return _Compact(self)(i)


class Text(_Base):
    times = "·"

    def paren(self, s: str) -> str:
        return f"({s})"

    def fraction(self, num, den) -> str:
        top = self.product(num) if num else "1"
        if not den:
            return top
        if any(isinstance(f, sp.Sum) for f in num):
            top = self.paren(top)                            # (Σ_k a) / N, not Σ_k (a / N)
        bottom = self.product(den)
        if len(den) > 1:
            bottom = self.paren(bottom)
        return f"{top} / {bottom}"

    def rational(self, x) -> str:
        return f"{x.p}/{x.q}"

    def raise_to(self, base: str, exp) -> str:
        if exp.is_Integer and 2 <= exp <= 9:
            return base + "".join(SUPERSCRIPTS[c] for c in str(int(exp)))
        return f"{base}^{self.expr(exp, ATOM)}"

    def sum(self, e: sp.Sum) -> str:
        # sympy lists the innermost index first: Σ_n Σ_k' reads outermost first
        heads = " ".join(f"Σ_{lim[0]}" for lim in reversed(e.limits))
        return f"{heads} {self.expr(e.function, MUL)}"

    def access(self, label: str, indices) -> str:
        return label + "[" + ",".join(self.index_text(i) for i in indices) + "]"

    def symbol(self, name: str) -> str:
        return name

    def indicator(self, a, b) -> str:
        return f"𝟙[{self.index_text(a)} = {self.index_text(b)}]"

    def function(self, e) -> str:
        name = type(e).__name__
        if hasattr(type(e), "op"):                           # where(lhs OP rhs, a, b)
            lhs, rhs, a, b = (self(x) for x in e.args)
            return f"where({lhs} {type(e).op} {rhs}, {a}, {b})"
        return self.function_call(name, e.args)

    def function_call(self, name: str, args) -> str:
        return f"{_TEXT_NAMES.get(name, name)}({', '.join(self(a) for a in args)})"


class Latex(_Base):
    """LaTeX in the lecture's style: `W^{(h)}_{k,d}` for the parameter W of layer h."""

    times = " "
    minus = "-"
    minus_op = "-"

    def paren(self, s: str) -> str:
        return rf"\left({s}\right)"

    def fraction(self, num, den) -> str:
        top = (self(num[0]) if len(num) == 1 else self.product(num)) if num else "1"
        if not den:
            return self.product(num) if num else "1"
        bottom = self(den[0]) if len(den) == 1 else self.product(den)
        return rf"\frac{{{top}}}{{{bottom}}}"

    def rational(self, x) -> str:
        return rf"\frac{{{x.p}}}{{{x.q}}}"

    def raise_to(self, base: str, exp) -> str:
        return f"{base}^{{{self(exp)}}}"

    def sum(self, e: sp.Sum) -> str:
        heads = " ".join(rf"\sum_{{{lim[0]}}}" for lim in reversed(e.limits))
        return f"{heads} {self.expr(e.function, MUL)}"

    def label(self, label: str) -> str:
        """`h.W` → `W^{(h)}`: the parameter named by its layer, as a lecture writes it."""
        delta = label.startswith("Δ")
        head, _, last = label.lstrip("Δ").rpartition(".")
        if not head and label in self.defined and "_" not in label and last[-1:].isdigit() and last.rstrip("0123456789"):  # e2 -> e^{(2)}
            head, last = last[len(last.rstrip("0123456789")):], last.rstrip("0123456789")
        if "_" in last and label not in self.defined:
            last = last.replace("_", r"\_")             # a user's `my_layer` is one name
        name = f"{last}^{{({head})}}" if head else last
        return (r"\Delta " if delta else "") + name

    def access(self, label: str, indices) -> str:
        inner = ",".join(self.index_text(i) for i in indices)
        name = self.label(label)
        plain = label in self.defined and "_" not in label      # a_h: {a_h}_{n,k}, one name
        return f"{name}_{{{inner}}}" if plain else f"{{{name}}}_{{{inner}}}"

    def symbol(self, name: str) -> str:
        return name if name in self.defined or "." not in name else "{" + self.label(name) + "}"

    def indicator(self, a, b) -> str:
        return rf"\mathbb{{1}}[{self.index_text(a)} = {self.index_text(b)}]"

    def function(self, e) -> str:
        name = type(e).__name__
        if hasattr(type(e), "op"):
            lhs, rhs, a, b = (self(x) for x in e.args)
            op = {"<=": r"\le", ">=": r"\ge", "!=": r"\ne", "==": "="}.get(type(e).op, type(e).op)
            return rf"\operatorname{{where}}\left({lhs} {op} {rhs}, {a}, {b}\right)"
        return self.function_call(name, e.args)

    def function_call(self, name: str, args) -> str:
        if name == "sqrt":
            return rf"\sqrt{{{self(args[0])}}}"
        head = _LATEX_NAMES.get(name) or rf"\operatorname{{{_TEXT_NAMES.get(name, name).replace('_', r'_')}}}"
        return head + r"\left(" + ", ".join(self(a) for a in args) + r"\right)"


class _Compact:
    """An affine index expression without spaces: `i·2+p−1`, `6·k+i'`."""

    def __init__(self, outer: _Base):
        self.outer = outer

    def __call__(self, i) -> str:
        i = sp.sympify(i)
        if i.is_Add:
            terms = sorted(i.args, key=lambda t: (t.is_number, _is_negative(t), sp.default_sort_key(t)))
            out = self(terms[0])
            for t in terms[1:]:
                out += (self.outer.minus_op + self(-t)) if _is_negative(t) else "+" + self(t)
            return out
        if i.is_Mul:
            return self.outer.times.strip(" ").join(self(f) for f in i.args) if isinstance(self.outer, Text) \
                else r"\cdot ".join(self(f) for f in i.args)
        if i.is_Integer:
            return (self.outer.minus if i < 0 else "") + str(abs(int(i)))
        return self.outer(i)


def _is_negative(t) -> bool:
    return t.as_coeff_Mul()[0].is_negative


def _float_text(x: float) -> str:
    return repr(x).removesuffix(".0")


def text(expr, defined=()) -> str:
    return Text(defined)(expr)


def latex(expr, defined=()) -> str:
    return Latex(defined)(expr)
