"""Lowering: tensor-formula stages → kernel plan → lines of Numba Python.

Three shapes of code come out of a stage:
- a GEMM for a sum over one shared index of a product of two 2-D operands —
  forward `W·x` and both of its adjoints: `np.dot` lines on 2-D views (what the CUDA
  renderer reads), and for the CPU one direct BLAS call (`BlasGemm`);
- a loop nest for everything else: maps write each element once, reductions
  accumulate in a scalar register, scatter-adds (`+=` at affine indices) loop
  over the whole iteration space;
- a few non-formula stages: random draws and one-hot labels.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import sympy as sp

from ..calculus.formulas import N, Stage, Tensor, index_vars
from ..render.printer import NumbaPrinter, index_text
from .fuse import Group


@dataclass(frozen=True)
class Gemm:
    out: str
    a: str            # operand text, e.g. "x" or "W.T"
    b: str
    accumulate: bool


@dataclass(frozen=True)
class _Product:
    """`out[I, J] = Σ_K left·right`: `left` holds the I- and K-blocks, `right` the K- and
    J-blocks (each a run of plain indices); `*_t`: indexed K-first / J-first."""
    left: object
    right: object
    I: tuple
    J: tuple
    K: tuple
    left_t: bool
    right_t: bool
    blocks: bool       # higher-rank operands, each 2-D after a reshape


def matrix_product(s: Stage, tensors: dict[str, Tensor]) -> Optional[_Product]:
    """`out[I, J] = Σ_K A[.,.]·B[.,.]` as one BLAS call, else None.

    With 2-D operands, I, J, K are single indices.  Higher-rank operands qualify when
    their indices fall into blocks: `out` is (I-block, J-block), A holds the I- and the
    K-block, B the K- and the J-block, each block a run of plain indices in the same
    order wherever it appears, so that every operand is a 2-D matrix after a reshape of
    its C-ordered storage.  That is how a convolution written through its im2col matrix
    is a GEMM: `zc[f,n,i,j] = Σ_{c,p,q} W[f,c,p,q]·col[c,p,q,n,i,j]` and both adjoints."""
    if s.kind != "formula" or s.reduce != "sum" or not s.reduce_vars or not s.plain:
        return None
    if len(s.accesses) != 2 or s.expr != s.accesses[0].symbol * s.accesses[1].symbol:
        return None
    if any(a.tensor == s.out or not all(isinstance(i, sp.Symbol) for i in a.index)
           or tensors[a.tensor].dtype != "float" for a in s.accesses):
        return None
    if len(s.index) == 2 and len(s.reduce_vars) == 1 and all(len(a.index) == 2 for a in s.accesses):
        (c,), (i, j) = s.reduce_vars, s.index
        left = next((a for a in s.accesses if set(a.index) == {i, c}), None)
        right = next((a for a in s.accesses if set(a.index) == {c, j} and a is not left), None)
        if left is None or right is None or i == j:
            return None
        return _Product(left, right, (i,), (j,), (c,), left.index != (i, c), right.index != (c, j), False)
    # (N, K) tensors may be stored batch-last (a transposed view that cannot be reshaped)
    if any(len(tensors[t].shape) == 2 and tensors[t].shape[0] == N for t in [s.out] + [a.tensor for a in s.accesses]):
        return None
    reduced = set(s.reduce_vars)
    out = tuple(s.index)
    for cut in range(1, len(out)):
        I, J = out[:cut], out[cut:]
        for left, right in (s.accesses, s.accesses[::-1]):
            a = _split(left.index, I, reduced)
            b = _split(right.index, J, reduced)
            if a is not None and b is not None and a[0] == b[0]:       # K in the same order in both
                return _Product(left, right, I, J, a[0], not a[1], b[1], True)
    return None


def as_gemm(s: Stage, tensors: dict[str, Tensor]) -> Optional[Gemm]:
    """The GEMM a stage is (see `matrix_product`) as `np.dot` operand texts on 2-D views, else None."""
    p = matrix_product(s, tensors)
    if p is None:
        return None
    t = lambda transposed: ".T" if transposed else ""    # noqa: E731
    if not p.blocks:
        return Gemm(s.out, p.left.tensor + t(p.left_t), p.right.tensor + t(p.right_t), s.accumulate)
    sizes = dict(s.ranges)
    shape = lambda blocks: "(" + ", ".join(index_text([sp.prod([sizes[v] for v in blk])])  # noqa: E731
                                            for blk in blocks) + ")"
    a_text = f"{p.left.tensor}.reshape({shape((p.K, p.I) if p.left_t else (p.I, p.K))})" + t(p.left_t)
    b_text = f"{p.right.tensor}.reshape({shape((p.J, p.K) if p.right_t else (p.K, p.J))})" + t(p.right_t)
    return Gemm(f"{s.out}.reshape({shape((p.I, p.J))})", a_text, b_text, s.accumulate)


@dataclass(frozen=True)
class BlasGemm:
    """A GEMM as one BLAS call on storage: `out (m×n) [+]= op(a) · op(b)`, every operand a
    contiguous row-major block; `a_t`: `a` is stored as its transpose (k×m), `b_t` likewise
    (n×k), `out_t`: `out` is stored as (n×m)."""
    out: str
    a: str
    b: str
    a_t: bool
    b_t: bool
    out_t: bool
    m: object
    n: object
    k: object
    accumulate: bool

    def lines(self, where) -> list[str]:
        """A comment with the product, then `_gemm(...)` with the operands' arrays and offsets
        from `where(tensor)` (texts)."""
        flipped = [x for x, t in ((self.out, self.out_t), (self.a, self.a_t), (self.b, self.b_t)) if t]
        note = f" ({', '.join(flipped)} stored transposed)" if flipped else ""
        return [f"# {self.out} {'+=' if self.accumulate else '='} {self.a} · {self.b}{note}", self.call(where)]

    def call(self, where) -> str:
        """`_gemm(...)`; a transposed output is computed as outᵀ = op(b)ᵀ·op(a)ᵀ: BLAS writes
        row-major."""
        a, b, a_t, b_t, m, n = self.a, self.b, self.a_t, self.b_t, self.m, self.n
        if self.out_t:
            a, b, a_t, b_t, m, n = b, a, not b_t, not a_t, n, m
        size = lambda e: index_text([sp.sympify(e)])    # noqa: E731
        args = [str(int(a_t)), str(int(b_t)), size(m), size(n), size(self.k),
                *where(a), *where(b), *where(self.out), "1.0" if self.accumulate else "0.0"]
        return f"_gemm({', '.join(args)})"


def blas_gemm(s: Stage, tensors: dict[str, Tensor], batch_last=frozenset()) -> Optional[BlasGemm]:
    """The GEMM a stage is (see `matrix_product`) as operands in storage, for a direct BLAS call:
    a batch-last 2-D tensor is stored as the transpose of its index order."""
    p = matrix_product(s, tensors)
    if p is None:
        return None
    sizes = dict(s.ranges)
    prod = lambda block: sp.prod([sizes[v] for v in block])    # noqa: E731
    stored = (lambda x: x in batch_last) if not p.blocks else (lambda x: False)    # noqa: E731
    return BlasGemm(s.out, p.left.tensor, p.right.tensor, p.left_t != stored(p.left.tensor),
                    p.right_t != stored(p.right.tensor), stored(s.out), prod(p.I), prod(p.J), prod(p.K),
                    s.accumulate)


def _split(index: tuple, outer: tuple, reduced: set):
    """(K, outer_first) when `index` is `outer + K` or `K + outer` with K the reduced
    indices (in `index`'s order), else None."""
    n = len(outer)
    if index[:n] == outer and set(index[n:]) == reduced and len(index) - n == len(reduced):
        return index[n:], True
    if index[len(index) - n:] == outer and set(index[:len(index) - n]) == reduced \
            and len(index) - n == len(reduced):
        return index[:len(index) - n], False
    return None


def argmax_then_max(item, nxt) -> bool:
    """`arg = argmax_w F; out = max_w F` over the same window and output index."""
    return (isinstance(item, Stage) and isinstance(nxt, Stage) and item.reduce == "argmax"
            and nxt.reduce == "max" and nxt.attrs.get("argmax") == item.out and nxt.expr.xreplace(
                {b.symbol: sp.Indexed(b.tensor, *b.index) for b in nxt.accesses})
            == item.expr.xreplace({b.symbol: sp.Indexed(b.tensor, *b.index) for b in item.accesses})
            and nxt.index == item.index and nxt.ranges == item.ranges and not nxt.accumulate)


def _transposed(operand: str) -> str:
    return operand[:-2] if operand.endswith(".T") else f"{operand}.T"


class Emitter:
    """Turns stages into indented source lines."""

    def __init__(self, tensors: dict[str, Tensor], dtype: str, batch_last=frozenset(), flat=frozenset(),
                 unsigned: bool = False):
        self.tensors = tensors
        self.dtype = dtype
        # indices as `I(...)` (uint64): numba then adds no negative-index wraparound, whose
        # select hides the address from LLVM's dependence analysis, and nests vectorise
        # (a 2-D map over two slices of `ws`: 8 lanes instead of none). Generated indices
        # never are negative.
        self.unsigned = unsigned
        self.batch_last = batch_last              # (N, K) tensors stored as (K, N)
        # tensors held as 1-D slices and indexed by flat offsets: a slice is cheap to make and
        # to compile (a reshaped view is not), and loops over it vectorise all the same
        self.flat = flat
        # loop variables must not shadow array names (a node may be called `n` or `k`)
        self.taken = set(tensors) | {"N", "F", "np", "math", "acc", "top", "value", "theta", "grad", "ws",
                                     "key", "base", "seed", "salt", "first", "training"}

    def var(self, v) -> str:
        name = str(v)
        while name in self.taken:
            name += "_"
        return name

    def ix(self, exprs) -> str:
        """An array subscript with loop variables renamed away from array names."""
        return index_text(self._renamed(exprs))

    def _renamed(self, exprs) -> list:
        subs = {v: sp.Symbol(self.var(v), integer=True) for e in exprs for v in index_vars(e)
                if str(v) in self.taken}
        return [sp.sympify(e).xreplace(subs) for e in exprs]

    def ref(self, tensor: str, index: tuple) -> str:
        """The text of one element: `x[n, k]`, or `x[k*N + n]` for a flat tensor."""
        if tensor not in self.flat:
            if not index:
                return f"{tensor}[0]"
            if not self.unsigned:
                return f"{tensor}[{self.ix(index)}]"
            return f"{tensor}[{', '.join(self._index(e) for e in self._renamed(index))}]"
        return f"{tensor}[{self._index(self._flat_offset(tensor, index))}]"

    def _flat_offset(self, tensor: str, index: tuple) -> sp.Expr:
        dims = self.memory_order(tensor, self.tensors[tensor].shape)
        offset = sp.Integer(0)
        for i, d in zip(self.memory_order(tensor, self._renamed(index)), dims):
            offset = offset * d + i
        return sp.expand(offset)

    def _row_views(self, g: Group) -> dict:
        """Flat targets that several maps of the nest write in blocks (the four gates of an
        LSTM's Δ(W·x_t + U·h)) are addressed through a view of the current row, made inside
        the outer loops: `row[k + 64]`. Over the whole nest the blocks' address ranges
        interleave row by row, so LLVM's run-time overlap check, which it hoists out of the
        nest, always fails and the nest runs scalar (17 µs instead of 3.4 for the LSTM's
        backward cell); within one row the blocks are disjoint. {tensor: (view, row start)}."""
        inner = sp.Symbol(self.var(g.ranges[-1][0]), integer=True)
        writers: dict = {}
        for s in g.stages:
            if s.out in self.flat and s.out not in g.scalars and not s.reduce_vars:
                writers.setdefault(s.out, []).append(self._flat_offset(s.out, s.index))
        out = {}
        for t, offsets in writers.items():
            starts = {sp.expand(o - o.coeff(inner) * inner - o.as_coeff_Add()[0]) for o in offsets}
            if len(offsets) > 1 and len(starts) == 1 and all(o.coeff(inner) == 1 for o in offsets):
                out[t] = (self.var(f"{t}_row"), starts.pop())
        return out

    def _index(self, e) -> str:
        # a bare loop variable needs no cast: LLVM knows a range() counter is never negative
        e = sp.sympify(e)
        return f"I({index_text([e])})" if self.unsigned and not (e.is_Integer or e.is_Symbol) else index_text([e])

    def memory_order(self, tensor: str, index: tuple) -> tuple:
        """`index` of an access to `tensor`, outermost stored axis first."""
        return tuple(index[::-1]) if tensor in self.batch_last else tuple(index)

    def size(self, e) -> str:
        return index_text([e])

    def plan(self, items) -> list[str]:
        lines = []
        items = list(items)
        k = 0
        while k < len(items):
            item = items[k]
            nxt = items[k + 1] if k + 1 < len(items) else None
            if argmax_then_max(item, nxt):
                # one pass over each window: the running maximum of the arg-max loop is the max
                lines += [f"# {s.note}" for s in (item, nxt) if s.note] + self._loops(item, also_max=nxt.out)
                k += 2
                continue
            lines += self.group(item) if isinstance(item, Group) else self.stage(item)
            k += 1
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
        rows = self._row_views(g)
        depth = 0
        for v, n in g.ranges:
            lines += ["    " * depth + f"{register[o]} = {zero}" for o, d in g.registers.items() if d == depth]
            if depth == len(g.ranges) - 1:
                lines += ["    " * depth + f"{row} = {t}[{self._index(start)}:]" for t, (row, start) in rows.items()]
            lines.append("    " * depth + f"for {self.var(v)} in range({self.size(n)}):")
            depth += 1
        for s in g.stages:
            p = self._printer(s, g.scalars)
            if s.out in register:
                target, op = register[s.out], "+="
            elif s.out in rows:
                row, start = rows[s.out]
                target = f"{row}[{self._index(self._flat_offset(s.out, s.index) - start)}]"
                op = "+=" if s.accumulate else "="
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
            if gemm.accumulate and "." in gemm.out:          # a reshaped view: += needs a name
                return head + [f"{s.out}_2d = {gemm.out}", f"{s.out}_2d += np.dot({gemm.a}, {gemm.b})"]
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
        # loop indices inside a body (an arg-max position `p·K + q`), renamed like the loops
        names.update({v: self.var(v) for v, _ in s.ranges if str(v) in self.taken})
        return NumbaPrinter(names, self.dtype)

    def _loops(self, s: Stage, also_max: str | None = None) -> list[str]:
        p = self._printer(s)
        target = self.ref(s.out, s.index)
        sizes = dict(s.ranges)
        lines, depth = [], 0

        def open_loop(v):
            nonlocal depth
            lines.append("    " * depth + f"for {self.var(v)} in range({self.size(sizes[v])}):")
            depth += 1

        if not s.reduce_vars or not s.plain:
            # a map, or a scatter-add: one statement in the innermost loop, looping in the
            # memory order of the largest plainly indexed operand (col2im reads Δcol in order)
            for v in self._scatter_order(s):
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
        elif s.reduce == "argmax":                    # strict >: the first maximum wins
            lines.append(ind + "top = -np.inf")
            lines.append(ind + f"acc = {p._lit('0.0')}")
            lines += self._inner(s, depth, "value = " + body)
            inner = "    " * (depth + len(s.reduce_vars))
            lines += [inner + "if value > top:", inner + "    top = value",
                      inner + f"    acc = {p.doprint(s.reduced_position)}"]
            result = "acc"
            if also_max is not None:
                lines.append(ind + f"{self.ref(also_max, s.index)} = top")
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

    def _scatter_order(self, s: Stage) -> list:
        order = [v for v, _ in s.ranges]
        if s.plain:
            return order
        plain = [a for a in s.accesses if all(isinstance(i, sp.Symbol) for i in a.index)]
        if not plain:
            return order
        main = max(plain, key=lambda a: len(a.index))
        first = [v for v in self.memory_order(main.tensor, main.index) if v in order]
        return first + [v for v in order if v not in first]

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
        """Counter-based noise: element `c` of example `first + n` of the global batch draws
        from `_mix(key + c·γ)`, key = f(seed, salt). No generator state, so the value of an
        element does not depend on the batch split (data-parallel ranks) nor on loop order
        (a CUDA thread per element draws the same number)."""
        a = s.attrs
        cond = "True" if a.get("always") else training
        shape = self.tensors[s.out].shape
        n_sym, k_sym = self.var('n'), self.var('k')
        per_example = " * ".join(self.size(d) for d in shape[1:]) or "1"

        def draw(counter):
            if a["dist"] == "normal":
                return f"_normal(key, {counter})"
            # keep with probability 1 - p, scaled
            return f"{a['scale']!r} if _uniform(key, {counter}) >= {a['p']!r} else 0.0"

        setup = ["key = _draw_key(seed, salt)", f"base = first * ({per_example})"]
        if s.out in self.batch_last:
            # counted in (example, feature) order whatever the storage
            n, k = sp.symbols(f"{n_sym} {k_sym}", integer=True)
            target = s.out
            fill = [f"    for {n} in range({self.size(shape[0])}):",
                    f"        for {k} in range({self.size(shape[1])}):",
                    f"            {self.ref(s.out, (n, k))} = {draw(f'base + {n} * {self.size(shape[1])} + {k}')}"]
        else:                            # kernels hold their workspace tensors as flat slices
            target = s.out
            fill = [f"    for i in range({target}.size):",
                    f"        {target}[i] = {draw('base + i')}"]
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
