"""Lowering: tensor-formula stages → kernel plan → lines of Numba Python.

Three shapes of code come out of a stage:
- a GEMM (`np.dot` into a workspace view, BLAS) for a sum over one shared index
  of a product of two 2-D operands — forward `W·x` and both of its adjoints;
- a loop nest for everything else: maps write each element once, reductions
  accumulate in a scalar register, scatter-adds (`+=` at affine indices) loop
  over the whole iteration space;
- a few non-formula stages: random draws and one-hot labels.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import sympy as sp

from ..calculus.formulas import Stage, Tensor
from ..render.printer import NumbaPrinter, index_text
from .fuse import Group


@dataclass(frozen=True)
class Gemm:
    out: str
    a: str            # operand text, e.g. "x" or "W.T"
    b: str
    accumulate: bool


def as_gemm(s: Stage, tensors: dict[str, Tensor]) -> Optional[Gemm]:
    """`out[i,j] = Σ_c A[.,.]·B[.,.]` with plain 2-D indices, as a BLAS call; else None."""
    if s.kind != "formula" or s.reduce != "sum" or len(s.reduce_vars) != 1 or not s.plain:
        return None
    if len(s.index) != 2 or len(s.accesses) != 2 or s.expr != s.accesses[0].symbol * s.accesses[1].symbol:
        return None
    if any(a.tensor == s.out or len(a.index) != 2 or not all(isinstance(i, sp.Symbol) for i in a.index)
           or tensors[a.tensor].dtype != "float" for a in s.accesses):
        return None
    (c,), (i, j) = s.reduce_vars, s.index
    left = next((a for a in s.accesses if set(a.index) == {i, c}), None)
    right = next((a for a in s.accesses if set(a.index) == {c, j} and a is not left), None)
    if left is None or right is None or i == j:
        return None
    a_text = left.tensor if left.index == (i, c) else f"{left.tensor}.T"
    b_text = right.tensor if right.index == (c, j) else f"{right.tensor}.T"
    return Gemm(s.out, a_text, b_text, s.accumulate)


def _transposed(operand: str) -> str:
    return operand[:-2] if operand.endswith(".T") else f"{operand}.T"


class Emitter:
    """Turns stages into indented source lines."""

    def __init__(self, tensors: dict[str, Tensor], dtype: str, batch_last=frozenset(), flat=frozenset()):
        self.tensors = tensors
        self.dtype = dtype
        self.batch_last = batch_last              # (N, K) tensors stored as (K, N)
        # tensors held as 1-D slices and indexed by flat offsets: a slice is cheap to make and
        # to compile (a reshaped view is not), and loops over it vectorise all the same
        self.flat = flat
        # loop variables must not shadow array names (a node may be called `n` or `k`)
        self.taken = set(tensors) | {"N", "F", "np", "math", "acc", "top", "value", "theta", "grad", "ws"}

    def var(self, v) -> str:
        name = str(v)
        while name in self.taken:
            name += "_"
        return name

    def ix(self, exprs) -> str:
        """An array subscript with loop variables renamed away from array names."""
        return index_text(self._renamed(exprs))

    def _renamed(self, exprs) -> list:
        subs = {v: sp.Symbol(self.var(v), integer=True) for e in exprs for v in sp.sympify(e).free_symbols
                if str(v) in self.taken}
        return [sp.sympify(e).xreplace(subs) for e in exprs]

    def ref(self, tensor: str, index: tuple) -> str:
        """The text of one element: `x[n, k]`, or `x[k*N + n]` for a flat tensor."""
        if tensor not in self.flat:
            return f"{tensor}[{self.ix(index) if index else '0'}]"
        dims = self.memory_order(tensor, self.tensors[tensor].shape)
        offset = sp.Integer(0)
        for i, d in zip(self.memory_order(tensor, self._renamed(index)), dims):
            offset = offset * d + i
        return f"{tensor}[{index_text([sp.expand(offset)])}]"

    def memory_order(self, tensor: str, index: tuple) -> tuple:
        """`index` of an access to `tensor`, outermost stored axis first."""
        return tuple(index[::-1]) if tensor in self.batch_last else tuple(index)

    def size(self, e) -> str:
        return index_text([e])

    def plan(self, items) -> list[str]:
        lines = []
        for item in items:
            lines += self.group(item) if isinstance(item, Group) else self.stage(item)
        return lines

    def group(self, g: Group) -> list[str]:
        """One fused loop nest. A reduction whose reduced indices are the innermost loops sums
        in a register; any other accumulates in memory order into its zeroed target."""
        if len(g.stages) == 1 and not g.stages[0].reduce_vars:
            return self.stage(g.stages[0])
        zero = NumbaPrinter({}, self.dtype)._lit('0.0')
        lines = [f"# {s.note}" for s in g.stages if s.note]
        lines += [f"{t}[:] = {zero}" for t in g.zero_first]
        by_out = {s.out: s for s in g.stages}
        register = {out: self.var(f"{out}_sum") for out in g.registers}
        depth = 0
        for v, n in g.ranges:
            lines += ["    " * depth + f"{register[o]} = {zero}" for o, d in g.registers.items() if d == depth]
            lines.append("    " * depth + f"for {self.var(v)} in range({self.size(n)}):")
            depth += 1
        for s in g.stages:
            p = self._printer(s, g.scalars)
            if s.out in register:
                target, op = register[s.out], "+="
            else:
                target = s.out if s.out in g.scalars else self.ref(s.out, s.index)
                op = "+=" if (s.reduce_vars or s.accumulate) else "="
            lines.append("    " * depth + f"{target} {op} {p.doprint(s.expr)}")
        for d in range(len(g.ranges) - 1, -1, -1):
            for o in (o for o, od in g.registers.items() if od == d):
                s = by_out[o]
                lines.append("    " * d + f"{self._target(s)} {'+=' if s.accumulate else '='} {register[o]}")
        return lines

    def _target(self, s: Stage) -> str:
        return self.ref(s.out, s.index)

    def stage(self, s: Stage, training: str = "training") -> list[str]:
        head = [f"# {s.note}"] if s.note else []
        if s.kind == "draw":
            return head + self._draw(s, training)
        if s.kind == "onehot":
            return head + self._onehot(s)
        gemm = as_gemm(s, self.tensors)
        if gemm is not None:
            if gemm.accumulate:
                return head + [f"{gemm.out} += np.dot({gemm.a}, {gemm.b})"]
            if gemm.out in self.batch_last:         # BLAS writes C-ordered memory: outᵀ = bᵀ·aᵀ
                return head + [f"np.dot({_transposed(gemm.b)}, {_transposed(gemm.a)}, {gemm.out}.T)"]
            return head + [f"np.dot({gemm.a}, {gemm.b}, {gemm.out})"]
        return head + self._loops(s)

    # ------------------------------------------------------------ loop nests
    def _printer(self, s: Stage, scalars=frozenset()) -> NumbaPrinter:
        names = {a.symbol: a.tensor if a.tensor in scalars else
                 self.ref(a.tensor, a.index) for a in s.accesses}
        return NumbaPrinter(names, self.dtype)

    def _loops(self, s: Stage) -> list[str]:
        p = self._printer(s)
        target = self.ref(s.out, s.index)
        sizes = dict(s.ranges)
        lines, depth = [], 0

        def open_loop(v):
            nonlocal depth
            lines.append("    " * depth + f"for {self.var(v)} in range({self.size(sizes[v])}):")
            depth += 1

        if not s.reduce_vars or not s.plain:
            # a map, or a scatter-add: one statement in the innermost loop
            for v, _ in s.ranges:
                open_loop(v)
            op = "+=" if s.accumulate else "="
            lines.append("    " * depth + f"{target} {op} {p.doprint(s.expr)}")
            return lines
        for v in s.out_vars:
            open_loop(v)
        body = p.doprint(s.expr)
        ind = "    " * depth
        if s.reduce == "sum":
            lines.append(ind + f"acc = {p._lit('0.0')}")
            lines += self._inner(s, depth, f"acc += {body}")
            result = "acc"
        elif s.reduce == "max":
            lines.append(ind + "acc = -np.inf")
            lines += self._inner(s, depth, f"acc = max(acc, {body})")
            result = "acc"
        elif s.reduce == "logsumexp":                 # two passes: max, then Σ exp(x - max)
            lines.append(ind + "top = -np.inf")
            lines += self._inner(s, depth, f"top = max(top, {body})")
            lines.append(ind + f"acc = {p._lit('0.0')}")
            lines += self._inner(s, depth, f"acc += _exp({body} - top)")
            result = "top + math.log(acc)"
        else:
            raise ValueError(f"unknown reduction {s.reduce}")
        lines.append(ind + f"{target} {'+=' if s.accumulate else '='} {result}")
        return lines

    def _inner(self, s: Stage, depth: int, statement: str) -> list[str]:
        sizes = dict(s.ranges)
        lines = []
        for v in s.reduce_vars:
            lines.append("    " * depth + f"for {self.var(v)} in range({self.size(sizes[v])}):")
            depth += 1
        lines.append("    " * depth + statement)
        return lines

    # ---------------------------------------------------- non-formula stages
    def _draw(self, s: Stage, training: str) -> list[str]:
        a = s.attrs
        cond = "True" if a.get("always") else training
        if a["dist"] == "normal":
            draw = "np.random.standard_normal()"
        else:                                         # keep with probability 1 - p, scaled
            draw = f"{a['scale']!r} if np.random.random() >= {a['p']!r} else 0.0"
        shape = self.tensors[s.out].shape
        if s.out in self.batch_last:
            # draw in (example, feature) order whatever the storage: a seed gives the same noise
            n, k = sp.symbols(f"{self.var('n')} {self.var('k')}", integer=True)
            setup, target = [], s.out
            fill = [f"    for {n} in range({self.size(shape[0])}):",
                    f"        for {k} in range({self.size(shape[1])}):",
                    f"            {self.ref(s.out, (n, k))} = {draw}"]
        elif s.out in self.flat:
            setup, target = [], s.out
            fill = [f"    for i in range({target}.size):",
                    f"        {target}[i] = {draw}"]
        else:
            target = f"{s.out}_flat"
            setup = [f"{target} = {s.out}.reshape(-1)"]
            fill = [f"    for i in range({target}.size):",
                    f"        {target}[i] = {draw}"]
        return setup + [f"if {cond}:"] + fill + ["else:", f"    {target}[:] = {a['neutral']!r}"]

    def _onehot(self, s: Stage) -> list[str]:
        labels = s.attrs["labels"]
        n = sp.Symbol("n", integer=True)
        shape = self.tensors[s.out].shape
        if len(shape) == 3:                       # per-step labels (N, T)
            t = sp.Symbol("t", integer=True)
            return [f"{s.out}[:] = 0.0",
                    f"for n in range({self.size(shape[0])}):",
                    f"    for t in range({self.size(shape[1])}):",
                    f"        {self.ref(s.out, (n, t, sp.Symbol(labels + '[n, t]')))} = 1.0"]
        return [f"{s.out}[:] = 0.0",
                f"for n in range({self.size(self.tensors[s.out].shape[0])}):",
                f"    {self.ref(s.out, (n, sp.Symbol(labels + '[n]')))} = 1.0"]
