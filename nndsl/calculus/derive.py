"""Reverse mode over tensor formulas; every partial derivative comes from sympy.

For a stage `out[I] = R_J F(u[A], ...)` and each access `u[A]` that needs a
gradient, the adjoint stage is

    Δu[A] += Σ_{(I ∪ J) \\ A} Δout[I] · w · ∂F/∂u

with `∂F/∂u` from `sympy.diff` on the scalar `F` (accesses are plain symbols),
re-expressed through the forward value `out` where sympy's result contains F
itself (`1 - h²` for tanh, `h(1 - h)` for σ), and `w` the reduction's weight
(1 for sums, `exp(F - out)` for log-sum-exp, the arg-max indicator for max: the
stored first arg-max where the forward pass kept one, else `F >= out`).
A plain `A` makes the adjoint a reduction; an affine or repeated `A` (windows,
concat, broadcasting) makes it a scatter-add.  Nothing else is special-cased.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import sympy as sp

from . import functions as fn
from .formulas import N, Builder, Handle, Stage, indirect, make_stage, memory_owner

_DIFFERENTIABLE_ROLES = {"param", "value", "loss"}


@dataclass
class Adjoint:
    stages: list[Stage]                 # the backward pass, in execution order
    grads: dict[str, str]               # parameter tensor name -> gradient tensor name
    adjoint_of: dict[str, str]          # every differentiated tensor -> its gradient tensor


def relevant_stages(stages: list[Stage], target: str, tensors=None) -> list[Stage]:
    """The stages that `target` depends on, in order (see `needed_stages`)."""
    return needed_stages(stages, (target,), tensors)


def needed_stages(stages: list[Stage], targets, tensors=None) -> list[Stage]:
    """The stages that any of `targets` depends on, in order, in one backward pass. With
    `tensors`, a step view and its sequence are one value (a recurrence writes h_t and reads
    h_{t-1}, both views of h)."""
    needed, keep = set(targets), []
    for s in reversed(stages):
        if s.out in needed or memory_owner(tensors, s.out) in needed:
            keep.append(s)
            needed |= {a.tensor for a in s.accesses} | {memory_owner(tensors, a.tensor) for a in s.accesses}
            if "argmax" in s.attrs:              # the max's adjoint reads its arg-max
                needed.add(s.attrs["argmax"])
    return keep[::-1]


def differentiate(b: Builder, stages: list[Stage], loss: Handle, wrt: list[str]) -> Adjoint:
    """Append gradient tensors to `b` and return the stages computing ∂loss/∂p for p in wrt."""
    stages = relevant_stages(stages, loss.name, b.tensors)
    base = lambda name: memory_owner(b.tensors, name)          # noqa: E731
    active = set(wrt)
    for s in stages:
        if s.kind == "formula" and any(a.tensor in active or base(a.tensor) in active for a in s.accesses):
            active |= {s.out, base(s.out)}

    adjoint: dict[str, Handle] = {}
    written: set[str] = set()
    out_stages: list[Stage] = []

    def grad_of(name: str) -> Handle:
        if name not in adjoint:
            t = b.tensors[name]
            if t.view:                  # Δ of a step view: the same view of Δ(sequence)
                seq = grad_of(t.view[0])
                adjoint[name] = b.tensor("Δ" + t.label, t.shape, "grad", name="d_" + t.name,
                                         view=(seq.name,) + tuple(t.view[1:]))
                return adjoint[name]
            role = "pgrad" if t.role == "param" else "grad"
            adjoint[name] = b.tensor("Δ" + t.label, t.shape, role, name="d_" + t.name)
        return adjoint[name]

    # A recurrence's cell (stages with attrs["scan"]) is differentiated once, like any
    # stage; its adjoint stages form the backward block run for t = T-1..0. In the block
    # every write goes to a step view and accumulates into a sequence gradient zeroed at the
    # block's start (Δh_{t-1} collects from step t, the output, the next layer); parameter
    # gradients are hoisted after the block as one sum over all T·N rows (BPTT's Σ_t).
    block, block_start, hoisted = None, 0, []
    for s in reversed(stages):
        scan = s.attrs.get("scan") if s.attrs else None
        if scan != block:
            out_stages += hoisted
            block, block_start, hoisted = scan, len(out_stages), []
        if s.kind != "formula" or (s.out not in active and base(s.out) not in active):
            continue
        if s.out == loss.name:
            d_out = sp.Integer(1)
        elif s.out in adjoint or (b.tensors[s.out].view and base(s.out) in adjoint):
            d_out = grad_of(s.out)[s.index]
        else:
            continue                                  # out does not reach the loss
        out_value = sp.IndexedBase(s.out)[s.index]
        back = {a.symbol: sp.IndexedBase(a.tensor)[a.index] if a.index else sp.IndexedBase(a.tensor)[0]
                for a in s.accesses}
        for a in s.accesses:
            if (a.tensor not in active and base(a.tensor) not in active) or \
                    b.tensors[a.tensor].role not in _DIFFERENTIABLE_ROLES:
                continue
            partial = sp.diff(s.expr, a.symbol)
            if partial == 0:
                continue
            partial = _through_forward_value(partial, s, out_value, a.symbol)
            contribution = (d_out * partial).xreplace(back)
            target = grad_of(a.tensor)
            first = a.tensor not in written
            stage = make_stage(target.name, a.index, contribution, b.tensors,
                               over=tuple(v for v, _ in s.ranges), reduce="sum",
                               sizes=dict(s.ranges),
                               note=f"Δ{b.tensors[a.tensor].label} from {s.note or s.out}")
            if stage.plain and not stage.reduce_vars:
                stage = _replace(stage, reduce=None)
            sink = out_stages
            t = b.tensors[a.tensor]
            if t.view:
                # views alias: every write accumulates into Δ(sequence), zeroed before the first
                # (before the backward block when that is inside it)
                if t.view[0] not in written:
                    zero = _zero_stage(b, grad_of(t.view[0]))
                    out_stages.insert(block_start if scan is not None else len(out_stages), zero)
                    block_start += 1
                    written.add(t.view[0])
                attrs = {"scan": replace(scan, reverse=True)} if scan is not None else {}
                out_stages.append(_replace(stage, accumulate=True, attrs=attrs))
                continue
            if scan is not None:
                stage, sink = _hoist(b, stage, scan), hoisted
            full = (stage.plain and _covers(stage, target)) or _tiles(stage, target)
            if first and not full:
                sink.append(_zero_stage(b, target))
            sink.append(_replace(stage, accumulate=not (first and full)))
            written.add(a.tensor)
    out_stages += hoisted

    grads = {w: grad_of(w).name for w in wrt}
    for w in wrt:
        if w not in written:                         # the loss does not reach this parameter
            out_stages.append(_zero_stage(b, adjoint[w]))
    return Adjoint(out_stages, grads, {k: h.name for k, h in adjoint.items()})


def _through_forward_value(partial: sp.Expr, s: Stage, out_value, wrt: sp.Symbol) -> sp.Expr:
    """Reuse the forward result: F itself inside ∂F/∂u becomes `out` (tanh → 1 - h²), and a
    primitive whose derivative is a function of its output says so (relu → step(out)), so
    the backward pass need not keep the pre-activation."""
    if s.reduce is None:
        rule = getattr(type(s.expr), "derivative_from_output", None)
        if rule is not None and s.expr.args and s.expr.args[0] == wrt:
            via_output = rule(out_value, *s.expr.args)
            if via_output is not None:
                return via_output
        return partial.xreplace({s.expr: out_value}) if not s.expr.is_Atom else partial
    if s.reduce == "logsumexp":
        return sp.exp(s.expr - out_value) * partial
    if s.reduce == "max":
        if "argmax" in s.attrs:      # exactly the first arg-max, whatever the ties
            return fn.eq(s.reduced_position, sp.IndexedBase(s.attrs["argmax"])[s.index]) * partial
        return fn.ge(s.expr, out_value) * partial
    return partial


def _hoist(b: Builder, stage: Stage, scan) -> Stage:
    """A cell's contribution to a parameter gradient, summed over all steps at once: every
    step view it reads becomes the view of all T·N rows, and its batch index ranges over
    them (`ΔU = Σ_t Σ_n Δa_t[n,·] h_{t-1}[n,·]ᵀ` is one GEMM after the backward loop)."""
    batch, accesses = None, []
    for a in stage.accesses:
        t = b.tensors[a.tensor]
        if t.role == "param":
            accesses.append(a)
            continue
        if not t.view or t.view[2] != "step" or not isinstance(a.index[0], sp.Symbol) or \
                batch not in (None, a.index[0]):
            raise ValueError(f"{stage.note}: a parameter gradient in a recurrence must read step views")
        batch = a.index[0]
        name = f"{t.name}_all"
        if name not in b.tensors:
            b.tensor(t.label + "[all steps]", (scan.count * N,) + tuple(t.shape[1:]), t.role, name=name,
                     view=(t.view[0], t.view[1], "all"))
        accesses.append(replace(a, tensor=name))
    ranges = tuple((v, scan.count * N if v == batch else n) for v, n in stage.ranges)
    return replace(stage, accesses=tuple(accesses), ranges=ranges, attrs={})


def _covers(stage: Stage, target: Handle) -> bool:
    sizes = dict(stage.ranges)
    return all((n == 1) if i.is_Integer else sp.simplify(sizes[i] - n) == 0
               for i, n in zip(stage.index, target.shape))


def _tiles(stage: Stage, target: Handle) -> bool:
    """Windows that tile the target: every index is a loop index over its whole axis or
    `s·i + p` with p over [0, s) and i over axis/s, and nothing is summed, so each element is
    written exactly once (the max-pool adjoint for stride = size dividing the image): the
    scatter-add is a plain write and needs no zeroing first."""
    if stage.plain or stage.reduce_vars or any(indirect(e) for e in stage.index):
        return False
    sizes = dict(stage.ranges)
    used: list = []
    for e, n in zip(stage.index, target.shape):
        e = sp.sympify(e)
        if isinstance(e, sp.Symbol):
            ok, vs = sp.simplify(sizes[e] - n) == 0, [e]
        else:
            vs = sorted(e.free_symbols, key=str)
            ok = len(vs) == 2 and sp.expand(e - sum(e.coeff(v) * v for v in vs)) == 0
            if ok:
                i, p = sorted(vs, key=lambda v: -abs(int(e.coeff(v))) if e.coeff(v).is_Integer else 0)
                step = e.coeff(i)
                ok = (e.coeff(p) == 1 and step.is_Integer and sp.simplify(sizes[p] - step) == 0
                      and sp.simplify(sizes[i] * step - n) == 0)
        if not ok:
            return False
        used += vs
    return len(used) == len(set(used)) == len(stage.ranges)


def _zero_stage(b: Builder, target: Handle) -> Stage:
    ind = tuple(sp.Symbol(f"i{j}", integer=True) for j in range(len(target.shape)))
    return Stage(target.name, ind, sp.Integer(0), (), tuple(zip(ind, target.shape)),
                 note=f"{target.tensor.label} = 0")


def _replace(stage: Stage, **changes) -> Stage:
    from dataclasses import replace
    return replace(stage, **changes)
