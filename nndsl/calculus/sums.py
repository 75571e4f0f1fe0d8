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
        body = simplify(s.function)
        bound = {lim[0] for lim in s.limits}
        # numbers and divisors that do not depend on the Σ's indices in front of it:
        # −(Σ_k a[k]) / 3, (Σ_n x[n,k]) / (9·N), not (Σ_k −a[k]) / 3, (Σ_n x[n,k] / N) / 9
        front = [f for f in sp.Mul.make_args(body) if f.is_number or
                 (f.is_Pow and f.exp.is_negative and not f.free_symbols & bound)]
        if not front or len(front) == len(sp.Mul.make_args(body)):
            sums[d] = sp.Sum(body, *s.limits)
            return d
        sums[d] = sp.Sum(sp.Mul(*[f for f in sp.Mul.make_args(body) if not any(f is g for g in front)]),
                         *s.limits)
        return sp.Mul(*front) * d

    def radical(p: sp.Pow):              # a root keeps its argument as written
        d = sp.Dummy()
        sums[d] = p
        return d
    body = expr.replace(lambda e: isinstance(e, sp.Sum), protect)
    body = sp.factor_terms(body.replace(lambda e: e.is_Pow and not e.exp.is_Integer, radical))
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


# ---------------------------------------------------------------- simplifications
# Three rewrites a derivation needs before a lecture would print it, each applied only where
# it changes something (a formula without such a term prints as before):
# - a Σ that is identically zero is dropped: Σ_k xc[n,k] = 0 for xc = x − mean over k (the
#   normalisations' gradients carry Σ_k Δvar·xc[n,k]·… through the mean);
# - equal sums under different summation indices merge: Σ_k' a[k'] + Σ_j a[j] = 2·Σ_k' a[k'];
# - constants stay where the formula wrote them: a square root keeps its argument
#   (1/sqrt(s/3 + 1e-05), not sqrt(3)/sqrt(3.0000000000000004e-05 + s)).

def alpha(expr):
    """`expr` with every summation index renamed by its nesting depth and position, so that
    sums equal up to the names of their indices are equal expressions. A chain of sums
    (Σ_n Σ_i Σ_j, in any order) becomes one Σ whose indices are ordered by where they first
    index a tensor of the body, so the order a derivation nested them in does not matter."""
    def walk(e, depth):
        if isinstance(e, sp.Sum):
            limits, body = sum_chain(e)
            ren, renamed = {}, []
            for j, (v, lo, hi) in enumerate(sorted(limits, key=lambda lim: _first_use(body, lim[0]))):
                w = sp.Symbol(f"_σ{depth}_{j}", integer=True)
                ren[v] = w
                renamed.append((w, lo, hi))
            return sp.Sum(walk(body.xreplace(ren), depth + 1), *renamed)
        if not e.args or isinstance(e, (sp.Indexed, sp.Symbol)):
            return e
        return e.func(*[walk(a, depth) for a in e.args])
    return walk(sp.sympify(expr), 0)


def sum_chain(s: sp.Sum):
    """(limits, body) of Σ_a Σ_b … body: the limits of directly nested sums, outermost first."""
    limits, body = list(s.limits), s.function
    while isinstance(body, sp.Sum):
        limits += list(body.limits)
        body = body.function
    return limits, body


def _first_use(body, v):
    """Where index `v` first indexes a tensor of `body`: (tensor, axis), tensors by name."""
    for ind in sorted(body.atoms(sp.Indexed), key=lambda i: str(i.base.label)):
        for axis, i in enumerate(ind.indices):
            if v in getattr(i, "free_symbols", ()):
                return (str(ind.base.label), axis)
    return ("~", 0)


def pull_out(expr):
    """Every factor of a Σ's body that does not depend on its index moved in front of it
    (the reverse of `into_sum`), everywhere: `Σ_j a[j]·b[k]` → `b[k]·Σ_j a[j]`."""
    def out(s):
        v = s.limits[0][0]
        inner = pull_out(s.function)
        coeff, rest = inner.as_independent(v, as_Add=False) if inner.is_Mul else (sp.Integer(1), inner)
        if v not in inner.free_symbols:
            return inner * (s.limits[0][2] - s.limits[0][1] + 1)
        return coeff * sp.Sum(rest, s.limits[0])
    return expr.replace(lambda e: isinstance(e, sp.Sum) and len(e.limits) == 1, out)


def linear(expr):
    """Σ distributed over sums and with constant factors pulled out, bottom-up: a normal
    form in which a Σ over an expression independent of its index is (count)·expression."""
    expr = sp.sympify(expr)
    if isinstance(expr, sp.Sum):
        body = linear(expr.function)
        for (v, lo, hi) in expr.limits:
            terms = []
            for t in sp.Add.make_args(sp.expand(body)):
                coeff, rest = t.as_independent(v, as_Add=False) if t.is_Mul else \
                    ((t, sp.Integer(1)) if v not in t.free_symbols else (sp.Integer(1), t))
                terms.append(coeff * (hi - lo + 1) if rest == 1 else coeff * sp.Sum(rest, (v, lo, hi)))
            body = sp.Add(*terms)
        return body
    if not expr.args or isinstance(expr, (sp.Indexed, sp.Symbol)):
        return expr
    return expr.func(*[linear(a) for a in expr.args])


def is_zero_sum(s: sp.Sum, define) -> bool:
    """Σ over one index or a chain of them (Σ_n Σ_i Σ_j) of a body that, its tensors written
    out by `define(indexed)` (their formula, or None for a leaf), is identically zero:
    Σ_k (x[k] − Σ_j x[j]/K) = 0, or an image's centred values summed over the batch and the
    positions."""
    limits, body = sum_chain(s)
    vs = [lim[0] for lim in limits]
    body = pull_out(body)
    coeff, rest = body.as_independent(*vs, as_Add=False) if body.is_Mul else (1, body)
    if not rest.free_symbols & set(vs) or not rest.atoms(sp.Indexed):
        return False
    expanded = rest
    for _ in range(4):                 # a definition may name another (xc through mean)
        subs = {}
        for ind in expanded.atoms(sp.Indexed):
            d = define(ind)
            if d is not None:
                subs[ind] = d
        if not subs:
            break
        expanded = expanded.xreplace(subs)
    if expanded == rest or sp.expand(expanded) == 0:
        return False                   # zero by cancelling over the sum, not term by term
    return sp.expand(alpha(linear(sp.Sum(expanded, *limits)))) == 0


def drop_zero_sums(expr, define):
    """Terms of a Σ's body (under a chain of sums, its innermost body) whose own Σ is
    identically zero (see `is_zero_sum`) dropped; a Σ with no such term is left as it is."""
    def visit(s):
        limits, body = sum_chain(s)       # (inner sums: `replace` went there first)
        terms = sp.Add.make_args(sp.expand(body, deep=False, power_base=False, power_exp=False,
                                           log=False, multinomial=False))
        kept = [t for t in terms if not is_zero_sum(sp.Sum(t, *limits), define)]
        if len(kept) == len(terms):
            return s
        if not kept:
            return sp.Integer(0)
        out = sp.Add(*kept)
        for lim in reversed(limits):
            out = sp.Sum(out, lim)
        return out
    return expr.replace(lambda e: isinstance(e, sp.Sum), visit)


def merge_equal_sums(expr):
    """Terms equal up to the names of their summation indices (`alpha`) merge into one, the
    first one's names kept: Σ_k' a[k'] − Σ_j a[j]/3 → (2/3)·Σ_k' a[k']."""
    def merge(add):
        groups: dict = {}
        for t in add.args:
            coeff, rest = t.as_coeff_Mul()
            key = alpha(rest)
            if key in groups:
                groups[key][0] += coeff
            else:
                groups[key] = [coeff, rest]
        if len(groups) == len(add.args):
            return add
        return sp.Add(*[c * r for c, r in groups.values()])
    return expr.replace(lambda e: e.is_Add and e.has(sp.Sum), merge)
