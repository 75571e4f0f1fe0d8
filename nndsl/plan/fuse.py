"""Kernel-plan passes over a kernel's stage list: copy propagation and loop fusion.

- A stage that only copies one tensor into another (`Δz = Δa` behind a bias
  add) is removed and its readers read the source instead.
- Consecutive stages over the same iteration space whose values flow element
  to element (`a = z + b; h = tanh(a)`, or `Δa = Δh·(1 − h²); Δb[k] += Δa[n,k]`)
  become one loop nest; a value read only inside its nest becomes a scalar
  register instead of a workspace array.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import sympy as sp

from ..calculus.formulas import Stage, Tensor


@dataclass
class Group:
    """One loop nest: `ranges` in loop order, `stages` renamed onto those loop variables."""
    ranges: tuple
    stages: list[Stage]
    scalars: set[str] = field(default_factory=set)     # tensors held in registers
    zero_first: list[str] = field(default_factory=list)  # reduction targets zeroed before the nest
    # reductions summed in a register opened at this loop depth (their reduced
    # indices are the innermost loops), stored once when those loops close
    registers: dict[str, int] = field(default_factory=dict)


def propagate_copies(stages: list[Stage], tensors: dict[str, Tensor], keep: set[str]):
    """Drop `B[I] = A[I]` stages. Returns [(original, rewritten)] for the kept stages and
    the rename map B -> A."""
    writers: dict[str, int] = {}
    for s in stages:
        writers[s.out] = writers.get(s.out, 0) + 1
    renames: dict[str, str] = {}
    kept = []
    for original in stages:
        s = _rename(original, renames)
        src = _copy_source(s, tensors)
        if src is not None and writers[s.out] == 1 and s.out not in keep and \
                tensors[s.out].shape == tensors[src].shape:
            renames[s.out] = src
            continue
        kept.append((original, s))
    return kept, renames


def _copy_source(s: Stage, tensors) -> str | None:
    if s.kind != "formula" or s.reduce or s.accumulate or not s.plain or len(s.accesses) != 1:
        return None
    a = s.accesses[0]
    if s.expr != a.symbol or a.index != s.index or tensors[a.tensor].role not in ("value", "grad"):
        return None
    if tensors[s.out].role not in ("value", "grad"):
        return None
    return a.tensor


def _rename(s: Stage, renames: dict[str, str]) -> Stage:
    if not renames or not any(a.tensor in renames for a in s.accesses):
        return s
    return replace(s, accesses=tuple(replace(a, tensor=renames.get(a.tensor, a.tensor)) for a in s.accesses))


def fuse(stages: list[Stage], gemm_stage, reads: dict[str, int], keep: set[str],
         memory_order=lambda tensor, index: index) -> list:
    """Group consecutive fusible stages; GEMMs and special stages stay alone (as Stage).
    `memory_order(tensor, index)` lists an access's index in the order its tensor is stored."""
    plan: list = []
    for s in stages:
        if s.kind != "formula" or gemm_stage(s) or not _loopable(s):
            plan.append(s)
            continue
        space = _space(s, memory_order)
        last = plan[-1] if plan else None
        joined = None
        if isinstance(last, Group):
            for option in [space] + _read_orders(s, last):
                if _same_space(last.ranges, option) and _can_join(last, s, option):
                    joined = option
                    break
        if joined is not None:
            last.stages.append(_onto(s, joined, last.ranges))
        else:
            plan.append(Group(tuple((v, n) for v, n in space), [_onto(s, space, space)]))
    writes: dict[str, int] = {}
    for s in stages:
        writes[s.out] = writes.get(s.out, 0) + 1
    for item in plan:
        if isinstance(item, Group):
            _reductions_outermost(item)
            _assign_storage(item, reads, writes, keep)
    return plan


def _reductions_outermost(group: Group) -> None:
    """Put the indices a reduction keeps outermost (Δb[f] of a conv's Δa[n,f,i,j]: f, n, i, j)
    when that leaves the innermost loop as it is: the sum then runs in a register instead
    of a load-add-store chain through memory that LLVM cannot break (it cannot prove `Δb`
    does not alias the operands)."""
    kept = {tuple(g.out_vars) for g in group.stages if g.reduce_vars}
    if len(kept) != 1:
        return
    (outer,) = kept
    order = [v for v, _ in group.ranges]
    sizes = dict(group.ranges)
    # a loop of one iteration walks no memory: the bias gradient of a layer of one output
    # (Δb[j] of Δo[n, j], j < 1) sums in a register too (0.88 -> 0.07 µs, the lecture MLP)
    walking = [v for v in order if sizes[v] != 1]
    if not outer or order[:len(outer)] == list(outer) or (walking and walking[-1] in outer):
        return
    first = [v for v in order if v in outer]
    group.ranges = tuple((v, sizes[v]) for v in first + [v for v in order if v not in outer])


def _loopable(s: Stage) -> bool:
    """A map, or a sum whose target is plain: both run as one nest in memory order. A map
    may also write a block of its target at constant offsets (an LSTM gate's `Δa[n, 64 + k]`)."""
    if s.plain:
        return s.reduce is None or s.reduce == "sum"
    return not s.reduce_vars and s.reduce in (None, "sum") and blocks(s) is not None


def _space(s: Stage, memory_order) -> list[tuple]:
    """The loop order: the memory order of the stage's target (of its largest access for a
    reduction), then the rest, so the innermost loop walks contiguous memory."""
    order = list(memory_order(s.out, s.index))
    if s.reduce_vars:
        main = max(s.accesses, key=lambda a: len(a.index), default=None)
        if main is not None:
            order = [i for i in memory_order(main.tensor, main.index) if isinstance(i, sp.Symbol)]
    sizes = dict(s.ranges)
    order = [v for v in order if isinstance(v, sp.Symbol) and v in sizes]
    order += [v for v, _ in s.ranges if v not in order]
    return [(v, sizes[v]) for v in order]


def _read_orders(s: Stage, group: Group) -> list[list[tuple]]:
    """For a map that reads a value of `group` in another index order than it writes (a
    transposing copy: Δzc[f,n,i,j] = Δa[n,f,i,j]), the loop order of that read, so that
    it can join the nest that computes the value (which then stays in a register)."""
    if s.reduce_vars:
        return []
    produced = {g.out for g in group.stages}
    sizes = dict(s.ranges)
    options = []
    for a in s.accesses:
        if a.tensor in produced and all(isinstance(i, sp.Symbol) for i in a.index) \
                and set(a.index) == set(sizes) and len(a.index) == len(sizes):
            options.append([(v, sizes[v]) for v in a.index])
    return options


def _same_space(a, b) -> bool:
    return len(a) == len(b) and all(sp.simplify(x[1] - y[1]) == 0 for x, y in zip(a, b))


def _onto(s: Stage, space, ranges) -> Stage:
    """Rename the stage's loop variables onto the group's."""
    m = {v: w for (v, _), (w, _) in zip(space, ranges)}
    return replace(
        s, index=tuple(sp.sympify(i).xreplace(m) for i in s.index),
        accesses=tuple(replace(a, index=tuple(sp.sympify(i).xreplace(m) for i in a.index)) for a in s.accesses),
        ranges=tuple((m[v], n) for v, n in space))


def _can_join(group: Group, s: Stage, space) -> bool:
    """Values produced in the group may be read only element-locally (same index), and a
    reduction's target is never read inside its group."""
    # stages of one `nest` only (a batchnorm's running-statistics updates, which follow one
    # another for every layer at the end of a step: a nest per layer keeps the kernel the same
    # at any depth)
    nest = lambda st: st.attrs.get("nest") if st.attrs else None     # noqa: E731
    if any(nest(g) != nest(s) for g in group.stages):
        return False
    s2 = _onto(s, space, group.ranges)
    produced = {g.out: g for g in group.stages}
    for a in s2.accesses:
        if a.tensor in produced:
            p = produced[a.tensor]
            if p.reduce_vars or a.index != p.index:
                return False
    if any(s2.out == a.tensor for g in group.stages for a in g.accesses):
        return False
    # one target written in blocks by maps (the four gates of Δ(W·x_t + U·h)): no element twice
    return all(not g.reduce_vars and not s2.reduce_vars and blocks(g) is not None and blocks(s2) is not None
               and disjoint(g, s2) for g in group.stages if g.out == s2.out)


def _assign_storage(group: Group, reads: dict[str, int], writes: dict[str, int], keep: set[str]) -> None:
    full = set(v for v, _ in group.ranges)
    inside: dict[str, int] = {}
    for g in group.stages:
        for a in g.accesses:
            inside[a.tensor] = inside.get(a.tensor, 0) + 1
    order = [v for v, _ in group.ranges]
    for g in group.stages:
        if g.reduce_vars:
            depth = len(g.out_vars)
            if set(g.out_vars) == set(order[:depth]):
                group.registers[g.out] = depth
            elif not g.accumulate:
                group.zero_first.append(g.out)
        elif (reads.get(g.out, 0) == inside.get(g.out, 0) and writes[g.out] == 1 and g.out not in keep
              and set(g.index) == full and not g.accumulate):
            group.scalars.add(g.out)


def blocks(s: Stage):
    """`s.out`'s index as (loop variable or None, constant offset) per axis when each loop
    variable appears once, alone or plus a constant (`k`, `k + 192`): every element of the
    block is written once. Else None."""
    sizes = dict(s.ranges)
    out, seen = [], set()
    for e in s.index:
        e = sp.sympify(e)
        if e.is_Integer:
            out.append((None, int(e)))
            continue
        c, v = e.as_independent(*e.free_symbols, as_Add=True)
        if not isinstance(v, sp.Symbol) or v not in sizes or v in seen or not sp.sympify(c).is_Integer:
            return None
        seen.add(v)
        out.append((v, int(c)))
    return out if seen == set(sizes) else None


def disjoint(a: Stage, b: Stage) -> bool:
    """Two blocks of one tensor share no element: on some axis both are constants that
    differ, or one loop variable at offsets at least its (numeric) range apart."""
    pa, pb = blocks(a), blocks(b)
    sa, sb = dict(a.ranges), dict(b.ranges)
    for (va, ca), (vb, cb) in zip(pa, pb):
        if va is None and vb is None and ca != cb:
            return True
        if va is not None and vb is not None and sp.sympify(sa[va]).is_Integer and sa[va] == sb[vb] \
                and abs(ca - cb) >= int(sa[va]):
            return True
    return False
