"""Loop nests as Python text: the body every Python-kernel target (numba on the CPU, numba.cuda)
shares. A stage becomes a map (each element written once), a reduction (accumulated in a
scalar register), a scatter-add (`+=` at affine indices, looping over the whole iteration
space), a random draw or a one-hot; a fused group becomes one nest. The targets differ in
how they wrap the body (a function over flat slices; a grid-stride kernel), not in it.
"""
from __future__ import annotations

import sympy as sp

from ..calculus.formulas import Stage, Tensor, index_vars
from ..plan.fuse import Group
from ..plan.gemm import argmax_then_max
from .printer import NumbaPrinter, index_text


# a nest over images has four or more loops (n, c, h, w; im2col's six): the CPU renderer gives
# only those masked loop tails (`numba_cpu.masked_tails`) and splits only those over threads
IMAGE_NEST_LOOPS = 4


class Emitter:
    """Turns stages into indented source lines."""

    def __init__(self, tensors: dict[str, Tensor], dtype: str, batch_last=frozenset(), flat=frozenset(),
                 unsigned: bool = False, split_outer: bool = False):
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
        # the outermost loop of a nest over images as numba's `prange` where its iterations
        # write disjoint elements (`splits`): the CPU kernels of a model whose batch cannot be
        # split over threads (batchnorm) use the cores so
        self.split_outer = split_outer
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
        split = self.split_outer and self.splits(g)
        depth = 0
        for v, n in g.ranges:
            lines += ["    " * depth + f"{register[o]} = {zero}" for o, d in g.registers.items() if d == depth]
            if depth == len(g.ranges) - 1:
                lines += ["    " * depth + f"{row} = {t}[{self._index(start)}:]" for t, (row, start) in rows.items()]
            loop = "prange" if split and depth == 0 else "range"
            lines.append("    " * depth + f"for {self.var(v)} in {loop}({self.size(n)}):")
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
        split = self.split_outer and self.splits(s)

        def open_loop(v):
            nonlocal depth
            loop = "prange" if split and depth == 0 else "range"
            lines.append("    " * depth + f"for {self.var(v)} in {loop}({self.size(sizes[v])}):")
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
        elif s.reduce == "argmax":
            # the maximum first, then the window read backwards for the first position that
            # holds it: no branch, so the loop over windows vectorises (max-pool 0.105 ->
            # 0.084 ms, CNN b32; a running `if value > top` did not vectorise)
            lines.append(ind + "top = -np.inf")
            lines += self._inner(s, depth, f"top = max(top, {body})")
            lines.append(ind + f"acc = {p._lit('0.0')}")
            lines += self._inner(s, depth, f"acc = {p.doprint(s.reduced_position)} if {body} == top else acc",
                                 backwards=True)
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

    def splits(self, item) -> bool:
        """Whether a nest's outermost loop may run its iterations in parallel: a nest over
        images (a smaller nest does not pay for a fork and join of numba's threads) whose every
        stage writes, at each value of that loop, only
        elements indexed by it (it appears plainly in the written index, and is not summed
        over), or a register of its own iteration."""
        if isinstance(item, Group):
            stages, outer, scalars = item.stages, item.ranges[0][0], item.scalars
        else:
            if item.kind != "formula":
                return False
            stages, scalars = [item], ()
            loops = self._scatter_order(item) if not item.reduce_vars or not item.plain else item.out_vars
            if not loops:                 # a sum over everything: no loop to split
                return False
            outer = loops[0]
        return len(item.ranges) >= IMAGE_NEST_LOOPS and all(
            outer not in s.reduce_vars and (s.out in scalars or outer in s.index) for s in stages)

    def _scatter_order(self, s: Stage) -> list:
        order = [v for v, _ in s.ranges]
        if s.plain:
            return order
        written = self._write_order(s) if not s.accumulate and not s.reduce_vars else None
        if written is not None:
            return written + [v for v in order if v not in written]
        plain = [a for a in s.accesses if all(isinstance(i, sp.Symbol) for i in a.index)]
        if not plain:
            return order
        main = max(plain, key=lambda a: len(a.index))
        first = [v for v in self.memory_order(main.tensor, main.index) if v in order]
        return first + [v for v in order if v not in first]

    def _write_order(self, s: Stage) -> list | None:
        """The loop variables of a map's target index, outermost stored first and, within one
        axis, by falling coefficient (`y = 2·i + q`: i, then q), when each appears once with a
        constant coefficient: the innermost loop then stores along a row. A max-pool's adjoint
        (Δc[n, c, 2i + q, 2j + r]) looped in its reads' order stored one 2×2 window after
        another, 2 floats per row: 0.141 ms against 0.081 in rows (CNN b64, first pool)."""
        seen, out = set(), []
        for e in self.memory_order(s.out, s.index):
            e, terms = sp.expand(e), []
            for v in index_vars(e):
                c = e.coeff(v)
                if v in seen or not c.is_Integer or c <= 0:
                    return None
                seen.add(v)
                terms.append((-int(c), str(v), v))
            if not sp.expand(e - sum(-c * v for c, _, v in terms)).is_Integer:
                return None
            out += [v for _, _, v in sorted(terms)]
        return out

    def _inner(self, s: Stage, depth: int, statement: str, backwards: bool = False) -> list[str]:
        sizes = dict(s.ranges)
        lines = []
        for v in s.reduce_vars:
            bounds = f"{self.size(sizes[v] - 1)}, -1, -1" if backwards else self.size(sizes[v])
            lines.append("    " * depth + f"for {self.var(v)} in range({bounds}):")
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
