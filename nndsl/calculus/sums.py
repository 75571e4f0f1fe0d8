"""Σ-expressions for the gradient view: a stage read back as a sum (or a log-sum-exp),
and the rewrites that make a derived gradient read as a lecture writes it — common
factors out, factors into the Σ they belong to, the batch sum first, a one-hot summed
away, a user loss's two `where` branches merged."""
from __future__ import annotations

import sympy as sp

from .formulas import Stage
from .notation import indicator


def as_sum(s: Stage) -> sp.Expr:
    body = s.expr.xreplace({a.symbol: sp.IndexedBase(a.tensor)[a.index] if a.index
                            else sp.IndexedBase(a.tensor)[0] for a in s.accesses})
    sizes = dict(s.ranges)
    for v in s.reduce_vars:
        body = sum_over(body, v, sizes[v])
    # a loop over a size-1 axis is the index 0 (an axis the display drops)
    return body.xreplace({v: 0 for v, n in s.ranges if n == 1})


def as_sum_body(s: Stage) -> sp.Expr:
    return s.expr.xreplace({a.symbol: sp.IndexedBase(a.tensor)[a.index] for a in s.accesses})


def as_forward(s: Stage) -> sp.Expr:
    """A forward stage's value: a sum, a log-sum-exp or a max over its reduced indices."""
    body = s.expr.xreplace({a.symbol: sp.IndexedBase(a.tensor)[a.index] for a in s.accesses})
    sizes = dict(s.ranges)
    if s.reduce == "logsumexp":
        inner = sp.exp(body)
        for v in s.reduce_vars:
            inner = sum_over(inner, v, sizes[v])
        return sp.log(inner)
    for v in s.reduce_vars:
        body = sum_over(body, v, sizes[v])
    return body


def sum_over(body, v, size):
    if size == 1:
        return body.xreplace({v: 0})
    return sp.Sum(body, (v, 0, size - 1))


def sum_of_indicator(s: sp.Sum) -> sp.Expr:
    """Σ_k c·𝟙[k = label[n]] = c, the one-hot sums to one."""
    if len(s.limits) != 1:
        return s
    v = s.limits[0][0]
    coeff, rest = s.function.as_independent(v, as_Add=False)
    if isinstance(rest, indicator) and rest.args[0] == v and v not in rest.args[1].free_symbols:
        return coeff
    return s


def merge_where(expr: sp.Expr) -> sp.Expr:
    """a·where(c, 1, 0) + b·where(c, 0, 1) → where(c, a, b): a user loss's two branches."""
    def merge(add):
        terms = list(add.args)
        for i, t in enumerate(terms):
            for j, u in enumerate(terms):
                if i >= j:
                    continue
                for w in [f for f in t.atoms(sp.Function) if hasattr(type(f), "op") and f.args[2:] == (1, 0)]:
                    other = type(w)(*w.args[:2], 0, 1)
                    if u.has(other):
                        a, b = sp.cancel(t / w), sp.cancel(u / other)
                        if not a.has(w) and not b.has(other):
                            rest = [x for k, x in enumerate(terms) if k not in (i, j)]
                            return sp.Add(type(w)(*w.args[:2], a, b), *rest)
        return add
    return expr.replace(lambda e: e.is_Add, merge)


def simplify(expr: sp.Expr) -> sp.Expr:
    """Common factors out (`(o − y)/N`, `(1 − ...)/(2·N)`) inside every Σ, then every
    factor that does not depend on a Σ's index into it: `Σ_n e[n]·o.W[k]·x[n,d]`."""
    sums: dict = {}

    def protect(s: sp.Sum):
        d = sp.Dummy()
        sums[d] = sp.Sum(simplify(s.function), *s.limits)
        return d
    body = sp.factor_terms(expr.replace(lambda e: isinstance(e, sp.Sum), protect))
    while body.has(*sums):
        body = body.xreplace(sums)
    return body.replace(lambda e: e.is_Mul, into_sum).replace(lambda e: isinstance(e, sp.Sum), batch_outermost)


def batch_outermost(s: sp.Sum) -> sp.Sum:
    """Σ_n Σ_i Σ_k: the batch sum first, as the lecture writes Σ_n (sympy lists it last),
    then the steps of a sequence (Σ_n Σ_t Σ_k')."""
    # the printer writes the last limit first: n, t, then the others alphabetically (Σ_f Σ_p Σ_q)
    limits = sorted(sorted(s.limits, key=lambda lim: str(lim[0]), reverse=True),
                    key=lambda lim: {"n": 2, "t": 1}.get(str(lim[0]), 0))
    return sp.Sum(s.function, *limits) if limits != list(s.limits) else s


def into_sum(m: sp.Mul) -> sp.Expr:
    sums = [f for f in m.args if isinstance(f, sp.Sum)]
    if len(sums) != 1:
        return m
    s = sums[0]
    bound = {lim[0] for lim in s.limits}
    inside = [f for f in m.args if f is not s and not f.is_number and not (f.is_Pow and f.exp.is_negative)
              and not (f.free_symbols & bound)]
    if not inside:
        return m
    outside = [f for f in m.args if f is not s and not any(f is x for x in inside)]
    return sp.Mul(*outside) * sp.Sum(sp.Mul(*inside) * s.function, *s.limits)


def sum_vars(expr) -> set:
    return {lim[0] for s in expr.atoms(sp.Sum) for lim in s.limits}


def sum_sizes(expr) -> dict:
    return {str(lim[0]): lim[2] + 1 for s in expr.atoms(sp.Sum) for lim in s.limits}


def bound_inside(s: sp.Sum, name: str, fresh) -> bool:
    return any(lim[0].name == name for inner in s.atoms(sp.Sum) for lim in inner.limits if lim[0] != fresh)


def bound_around(expr, s: sp.Sum, name: str) -> bool:
    """`name` is already a summation index of a Σ that encloses `s`."""
    return any(lim[0].name == name and outer.function.has(s)
               for outer in expr.atoms(sp.Sum) if outer is not s for lim in outer.limits)


def factor_count(expr) -> int:
    return len(sp.Mul.make_args(expr.function if isinstance(expr, sp.Sum) else expr)) + \
        sum(factor_count(s.function) for s in expr.atoms(sp.Sum) if s is not expr)
