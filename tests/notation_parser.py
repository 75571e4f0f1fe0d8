"""A small parser of `nndsl grad`'s printed notation (text and LaTeX) back into sympy,
and a numeric evaluator, so tests can check that what is printed is what was derived.

The grammar is the one nndsl/calculus/notation.py promises:

    expr  := term (('+' | '−') term)*
    term  := unary (('·' | '/' | juxtaposition) unary)*
    unary := '−' unary | 'Σ_v' term | power
    power := atom (superscript | '^' atom)*
    atom  := number | '(' expr ')' | name '(' args ')' | name '[' expr, ... ']' | name | '𝟙[' expr '=' expr ']'
"""
from __future__ import annotations

import math
import random
import re

import sympy as sp

from nndsl.calculus import functions as fn
from nndsl.calculus.notation import indicator

SUPER = dict(zip("⁰¹²³⁴⁵⁶⁷⁸⁹", "0123456789"))
FUNCS = {"σ": fn.sigmoid, "exp": sp.exp, "log": sp.log, "tanh": sp.tanh, "sqrt": sp.sqrt,
         "step": fn.step, "sign": fn.sign, "abs": fn.absolute, "max": fn.maximum, "min": fn.minimum,
         "relu": fn.relu, "elu": fn.elu, "softplus": fn.softplus, "leaky_relu": fn.leaky_relu,
         "sin": sp.sin, "cos": sp.cos, "ge": fn.ge}
NAME = r"[^\W\d][\w]*(?:\([A-Za-z0-9_, ]+\)(?=\.))?(?:\.[A-Za-z_][A-Za-z0-9_]*)*'*"
TOKEN = re.compile(rf"\s*(?:(?P<sum>Σ_(?:[A-Za-z]\w*'*))|(?P<ind>𝟙\[)|(?P<num>\d+(?:\.\d+)?(?:e-?\d+)?)"
                   rf"|(?P<sup>[⁰¹²³⁴⁵⁶⁷⁸⁹]+)|(?P<op><=|>=|==|!=|[-−+·/^()\[\],<>=])|(?P<name>{NAME}))")


def tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        m = TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise SyntaxError(f"cannot read {text[pos:pos + 20]!r} in {text!r}")
        kind = m.lastgroup
        value = m.group(kind)
        out.append((kind, "−" if value == "-" else value))
        pos = m.end()
    return out


class _Parser:
    def __init__(self, toks):
        self.toks, self.i = toks, 0

    def peek(self):
        return self.toks[self.i] if self.i < len(self.toks) else (None, None)

    def take(self, value=None):
        tok = self.peek()
        if value is not None and tok[1] != value:
            raise SyntaxError(f"expected {value!r}, got {tok!r} at {self.i}")
        self.i += 1
        return tok

    def expr(self):
        left = self.term()
        while self.peek()[1] in ("+", "−"):
            op = self.take()[1]
            right = self.term()
            left = left + right if op == "+" else left - right
        return left

    def starts_atom(self):
        kind, value = self.peek()
        return kind in ("num", "name", "sum", "ind") or value == "("

    def term(self):
        left = self.unary()
        while True:
            value = self.peek()[1]
            if value == "·":
                self.take()
                left = left * self.unary()
            elif value == "/":
                self.take()
                left = left / self.unary()
            elif self.starts_atom():                 # LaTeX juxtaposition
                left = left * self.unary()
            else:
                return left

    def unary(self):
        kind, value = self.peek()
        if value == "−":
            self.take()
            return -self.unary()
        if kind == "sum":
            self.take()
            var = sp.Symbol(value[2:], integer=True)
            return sp.Sum(self.term(), (var, 0, sp.Symbol("size_" + var.name) - 1))
        return self.power()

    def power(self):
        base = self.atom()
        while True:
            kind, value = self.peek()
            if kind == "sup":
                self.take()
                base = base ** int("".join(SUPER[c] for c in value))
            elif value == "^":
                self.take()
                base = base ** self.atom()
            else:
                return base

    def atom(self):
        kind, value = self.take()
        if kind == "num":
            return sp.Rational(value) if "." not in value and "e" not in value else sp.Float(value)
        if value == "(":
            e = self.expr()
            self.take(")")
            return e
        if kind == "ind":
            a = self.expr()
            self.take("=")
            b = self.expr()
            self.take("]")
            return indicator(a, b)
        if kind == "name":
            if self.peek()[1] == "(" and (value in FUNCS or value == "where"):
                return self.call(value)
            if self.peek()[1] == "[":
                self.take()
                idx = [self.expr()]
                while self.peek()[1] == ",":
                    self.take()
                    idx.append(self.expr())
                self.take("]")
                return sp.IndexedBase(value)[tuple(idx)]
            return sp.Symbol("N", integer=True, positive=True) if value == "N" else \
                sp.Symbol(value, integer=True) if _is_index(value) else sp.Symbol(value)
        raise SyntaxError(f"unexpected {value!r}")

    def call(self, name):
        self.take("(")
        if name == "where":
            lhs = self.expr()
            op = self.take()[1]
            rhs = self.expr()
            self.take(",")
            a = self.expr()
            self.take(",")
            b = self.expr()
            self.take(")")
            return fn.WHERE[op](lhs, rhs, a, b)
        args = [self.expr()]
        while self.peek()[1] == ",":
            self.take()
            args.append(self.expr())
        self.take(")")
        return FUNCS[name](*args)


def _is_index(name: str) -> bool:
    return len(name.rstrip("'")) == 1 and name[0] in "nkdijlmpqrscftu"


def parse_text(text: str) -> sp.Expr:
    p = _Parser(tokens(text))
    e = p.expr()
    if p.i != len(p.toks):
        raise SyntaxError(f"trailing {p.toks[p.i:]} in {text!r}")
    return e


def rhs_of(line: str) -> str:
    """The right-hand side of `lhs = [middle =] rhs`: the text after the last ` = ` outside brackets."""
    depth, cut = 0, None
    for i, c in enumerate(line):
        depth += c in "([{" and 1 or 0
        depth -= c in ")]}" and 1 or 0
        if depth == 0 and line.startswith(" = ", i):
            cut = i + 3
    return line[cut:]


# ------------------------------------------------------------------ LaTeX
def _braced(s: str, i: int) -> tuple[str, int]:
    """The text of the {...} group starting at s[i] == '{', and the index after it."""
    assert s[i] == "{", s[i:]
    depth = 0
    for j in range(i, len(s)):
        depth += {"{": 1, "}": -1}.get(s[j], 0)
        if depth == 0:
            return s[i + 1:j], j + 1
    raise SyntaxError("unbalanced braces")


def latex_to_text(s: str) -> str:
    s = s.replace(r"\_", "_").replace(r"\left(", "(").replace(r"\right)", ")").replace(r"\mathbb{1}[", "𝟙[")
    out, i = [], 0
    while i < len(s):
        if s.startswith(r"\frac", i):
            a, i = _braced(s, i + 5)
            b, i = _braced(s, i)
            out.append(f"(({latex_to_text(a)}) / ({latex_to_text(b)}))")
        elif s.startswith(r"\sqrt", i):
            a, i = _braced(s, i + 5)
            out.append(f"sqrt({latex_to_text(a)})")
        elif s.startswith(r"\sum_", i):
            a, i = _braced(s, i + 5)
            out.append(f"Σ_{a} ")
        elif s.startswith("^{", i) and not s.startswith("^{(", i):
            a, i = _braced(s, i + 1)
            out.append(f"^({latex_to_text(a)})")
        else:
            out.append(s[i])
            i += 1
    t = "".join(out)
    t = re.sub(r"\\operatorname\{([a-z_\\]+)\}", lambda m: m.group(1).replace("\\_", "_"), t)
    for a, b in [(r"\sigma", "σ"), (r"\exp", "exp"), (r"\log", "log"), (r"\tanh", "tanh"), (r"\sin", "sin"),
                 (r"\cos", "cos"), (r"\max", "max"), (r"\min", "min"), (r"\le", "<="), (r"\ge", ">="),
                 (r"\ne", "!="), (r"\cdot ", "·"), (r"\Delta ", "Δ")]:
        t = t.replace(a, b)
    idx = r"_\{([^{}]*)\}"
    t = re.sub(r"\{([^{}^]+)\^\{\(([^{}]+)\)\}\}" + idx, r"\2.\1[\3]", t)     # {W^{(h)}}_{k,d}
    t = re.sub(r"\{([^{}^]+)\^\{\(([^{}]+)\)\}\}", r"\2.\1", t)               # {b^{(mu)}}
    t = re.sub(r"([^\W\d]\w*)\^\{\((\d+)\)\}" + idx, r"\1\2[\3]", t)       # e^{(2)}_{n}
    t = re.sub(r"(Δ?)([^\W\d]\w*)\^\{\(([^{}]+)\)\}" + idx, r"\1\3.\2[\4]", t)  # \Delta h^{(d)}_{n,k}
    t = re.sub(r"\{([^{}]+)\}" + idx, r"\1[\2]", t)                            # {h}_{n,k}
    t = re.sub(r"([^\W\d][\w.()]*)" + idx, r"\1[\2]", t)                   # e_{n}
    return t


def parse_latex(s: str) -> sp.Expr:
    return parse_text(latex_to_text(s))


# ------------------------------------------------------------------ numbers
class Evaluator:
    """Evaluates display expressions at random tensor values; every Σ runs over at most
    `clip` values, the same for both sides, so equal formulas give equal numbers."""

    def __init__(self, sizes: dict, int_labels=(), seed=0, clip=3, resolve=None):
        self.sizes, self.ints, self.clip = sizes, set(int_labels), clip
        self.seed = seed
        self.values: dict = {}
        self.resolve = resolve              # (label, idx) -> a value, or None for a leaf

    def value(self, label, idx):
        key = (label, idx)
        if self.resolve is not None and key not in self.values:
            got = self.resolve(label, idx)
            if got is not None:
                self.values[key] = got
                return got
        if key not in self.values:
            rnd = random.Random(hash((self.seed, label, idx)) & 0xFFFFFFFF)
            self.values[key] = rnd.randrange(self.clip) if label in self.ints else rnd.uniform(-1.5, 1.5)
        return self.values[key]

    def __call__(self, e, env=None):
        env = env or {}
        ev = lambda x: self(x, env)
        if isinstance(e, sp.Sum):
            total = 0.0
            (var, _, _), rest = e.limits[0], e.limits[1:]
            inner = sp.Sum(e.function, *rest) if rest else e.function
            upper = e.limits[0][2]
            size = int(upper) + 1 if upper.is_Integer else self.size(var)
            for v in range(min(self.clip, size)):
                total += self(inner, {**env, var.name: v})
            return total
        if isinstance(e, sp.Indexed):
            return self.value(str(e.base.label), tuple(round(ev(i)) for i in e.indices))
        if isinstance(e, sp.Symbol):
            if e.name in env:
                return env[e.name]
            if e.name == "N":
                return 3.0
            return self.value(e.name, ())
        if e.is_Number:
            return float(e)
        if e.is_Add:
            return sum(ev(a) for a in e.args)
        if e.is_Mul:
            out = 1.0
            for a in e.args:
                out *= ev(a)
            return out
        if e.is_Pow:
            b, x = ev(e.base), ev(e.exp)
            return abs(b) ** x if x != int(x) else b ** x
        if isinstance(e, indicator):
            return 1.0 if round(ev(e.args[0])) == round(ev(e.args[1])) else 0.0
        args = [ev(a) for a in e.args]
        name = type(e).__name__
        if hasattr(type(e), "op"):
            lhs, rhs, a, b = args
            ok = {"<": lhs < rhs, "<=": lhs <= rhs, ">": lhs > rhs, ">=": lhs >= rhs,
                  "==": lhs == rhs, "!=": lhs != rhs}[type(e).op]
            return a if ok else b
        return _NUMERIC[name](*args)

    def size(self, var) -> int:
        s = self.sizes.get(var.name, self.clip)
        try:
            return int(s)
        except TypeError:
            return self.clip                  # N or a free size


_NUMERIC = {
    "exp": lambda x: math.exp(min(x, 50)), "log": lambda x: math.log(abs(x) + 1e-300), "tanh": math.tanh,
    "sqrt": lambda x: math.sqrt(abs(x)), "rsqrt": lambda x: 1 / math.sqrt(abs(x)), "sigmoid": lambda x: 1 / (1 + math.exp(-x)),
    "step": lambda x: 1.0 if x > 0 else 0.0, "sign": lambda x: (x > 0) - (x < 0), "absolute": abs,
    "maximum": max, "minimum": min, "relu": lambda x: max(x, 0.0),
    "elu": lambda x: x if x > 0 else math.expm1(x), "softplus": lambda x: math.log1p(math.exp(x)),
    "leaky_relu": lambda x, a: x if x > 0 else a * x, "sin": math.sin, "cos": math.cos,
    "ge": lambda a, b: 1.0 if a >= b else 0.0,
}


def internal(expr):
    """An expression over internal tensor names, moved to their own namespace (`§h`)."""
    return expr.xreplace({i: sp.IndexedBase("§" + str(i.base.label))[i.indices] for i in expr.atoms(sp.Indexed)})


def model_resolver(block, ev_for):
    """Resolve display labels and internal tensors (`§name`, see `internal`) of a
    `LossFormulas` through their definitions: defined quantities (e, p, Δh) by their lines,
    node values by their forward formulas; inputs, parameters and noise stay random leaves."""
    lines = {}
    for f in block.formulas:
        if f.rhs is not None and f.kind in ("define", "signal", "delta"):
            label = str(f.lhs.base.label) if isinstance(f.lhs, sp.Indexed) else str(f.lhs)
            lines[label] = (tuple(f.lhs.indices) if isinstance(f.lhs, sp.Indexed) else (), f.rhs)
    forward = {t: (index, internal(value)) for t, (index, value) in block.forward.items()}

    def bind(index, idx):
        return {str(i): v for i, v in zip(index, idx) if isinstance(i, sp.Symbol)}

    def resolve(label, idx):
        if label.startswith("§"):
            if label[1:] in forward:
                index, value = forward[label[1:]]
                return ev_for()(value, bind(index, idx))
            return None                                   # a leaf: random
        if label in lines:
            index, rhs = lines[label]
            return ev_for()(rhs, bind(index, idx))
        tensor, shown = block.tensor_of[label]
        it = iter(idx)
        return ev_for().value("§" + tensor, tuple(next(it) if keep else 0 for keep in shown))
    return resolve
