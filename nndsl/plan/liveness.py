"""The workspace laid out by liveness: tensors that are never needed at once share memory.

Tensor by tensor, every value, noise and adjoint of a step has its own place: the CNN
benchmark's workspace is 0.42 MB a row, 27 MB at a batch of 64, and a step's kernels fetch
much of it from memory. Here each plan (forward, forward from any node, and each loss's
value, train and eval plans) is a sequence of kernel calls, each touching some tensors
(`Call.touches`; a recurrence's block counts as one call). A tensor is live in a plan from
the first call that touches it to the last; Python reads some after a plan (the outputs,
the loss values, every node after forward from any node) and writes some before one (the
nodes given to forward from any node): those are live to the end, or from the start. Two
tensors conflict when they are live at once in some plan. Slots are filled largest tensor
first: a tensor joins the first slot whose size is at least its own for every batch size
and free size and whose tensors it does not conflict with.

That is sound because no kernel reads memory that its plan has not written before it (a
padded input's border, an accumulated sum: each is zeroed by a call of the plan), which
the suite checks by running with a workspace filled with NaN (`NNDSL_POISON_WORKSPACE`).
"""
from __future__ import annotations

import bisect

import sympy as sp

from .scan import Block

# the batch size and free sizes at which tensors are ordered by size (largest first)
_REFERENCE = 64


def touched(items) -> list[frozenset]:
    """The tensors each call of a plan touches, in order; a recurrence's block as one call;
    the plan over every node as its nodes' calls in order."""
    out = []
    for item in items:
        if isinstance(item, tuple):                  # (node index, its calls)
            out += touched(item[1])
        elif isinstance(item, Block):
            out.append(frozenset().union(*(c.touches for c in item.items)))
        else:
            out.append(item.touches)
    return out


def intervals(plans, workspace: set[str]) -> dict[str, list[tuple[int, int, int]]]:
    """{tensor: (plan, first call, last call) of every plan it is live in}. `plans`: (calls'
    touched sets, tensors read after the plan, tensors written before it). Two tensors
    conflict when their intervals in some plan overlap; kept as intervals, not as pairs:
    forward from any node keeps every node live throughout, and its pairs grew with the
    square of the depth (0.29 s of a 400-layer MLP's plan)."""
    out = {t: [] for t in workspace}
    for p, (seq, read_after, written_before) in enumerate(plans):
        first, last = {}, {}
        for i, ts in enumerate(seq):
            for t in ts & workspace:
                first.setdefault(t, i)
                last[t] = i
        for t in read_after & first.keys():
            last[t] = len(seq)
        for t in written_before & first.keys():
            first[t] = -1
        for t, f in first.items():
            out[t].append((p, f, last[t]))
    return out


def covers(big, small) -> bool:
    """Whether size `big` is at least `small` for every batch size and free size (each ≥ 1):
    their difference, a polynomial in those sizes, written in each size less one has no
    negative coefficient (T·N·16 ≥ N·16: 16·(t+1)(n+1) − 16·(n+1) = 16·t·n + 16·t)."""
    d = sp.expand(sp.sympify(big) - sp.sympify(small))
    if d.is_Number:
        return d >= 0
    sizes = sorted(d.free_symbols, key=str)
    shifted = sp.expand(d.xreplace({v: v + 1 for v in sizes}))
    return shifted.is_Number and shifted >= 0 or all(c >= 0 for c in sp.Poly(shifted, *sizes).coeffs())


def packed(sizes: dict[str, object], live: dict[str, list[tuple[int, int, int]]]):
    """({tensor: offset}, total size): slots filled largest tensor first; a tensor joins a
    slot when its `intervals` overlap none of the slot's members' (in each plan a slot's
    intervals are disjoint and kept sorted, so one look decides)."""
    def at_reference(e):
        e = sp.sympify(e)
        return float(e.subs({v: _REFERENCE for v in e.free_symbols}))

    def free(taken, plan, f, l):
        spans = taken.get(plan, [])
        i = bisect.bisect_right(spans, (l, float("inf"))) - 1       # the last span starting by l
        return i < 0 or spans[i][1] < f

    slots: list[tuple[object, list[str], dict]] = []
    for t in sorted(sizes, key=lambda t: (-at_reference(sizes[t]), t)):
        mine = live.get(t, ())
        for size, members, taken in slots:
            if all(free(taken, p, f, l) for p, f, l in mine) and covers(size, sizes[t]):
                break
        else:
            size, members, taken = sizes[t], [], {}
            slots.append((size, members, taken))
        members.append(t)
        for p, f, l in mine:
            bisect.insort(taken.setdefault(p, []), (f, l))
    offsets, total = {}, sp.Integer(0)
    for size, members, _ in slots:
        for t in members:
            offsets[t] = total
        total = sp.expand(total + size)
    return offsets, total

