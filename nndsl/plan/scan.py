"""The plan of a recurrence: the cell's kernel calls repeated once per step.

A scan's stages (`attrs["scan"]`, see `calculus/recurrent.py`) are fused and made kernels
like any others; their calls become a `Block`, which a plan function emits inside
`for t_ in range(T)` (backward: `range(T - 1, -1, -1)`), with the offsets of the step
views moving with `t_`. The table is filled once per (N, T) and kept by the Model, so a
step costs one row per kernel of the cell, and the whole pass grows linearly in T.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import sympy as sp

from ..calculus.formulas import N, STEP, Access, Handle, Tensor
from .fuse import blocks, disjoint
from .gemm import matrix_product


@dataclass
class Block:
    """Calls (or rows) repeated once per step, t_ = 0..count-1 (reversed: count-1..0)."""
    count: object              # the number of steps, a sympy size (T)
    reverse: bool
    items: list


def segments(stages):
    """Consecutive runs of stages: (Scan or None, stages)."""
    out = []
    for s in stages:
        scan = s.attrs.get("scan") if s.attrs else None
        if out and out[-1][0] == scan:
            out[-1][1].append(s)
        else:
            out.append((scan, [s]))
    return out


def scan_calls(stages, fuse, call) -> list:
    """The calls of a stage list: a scan's runs become Blocks, the rest plain calls."""
    out = []
    for scan, run in segments(stages):
        calls = [call(item) for item in fuse(run)]
        if scan is None:
            out += calls
        else:
            out.append(Block(scan.count, scan.reverse, calls))
    return out


def view_offset(t: Tensor, tensors: dict[str, Tensor], ws_offsets) -> sp.Expr:
    """A step view's offset in the workspace: its sequence's, plus whole steps of N rows."""
    seq, shift, mode = t.view
    if mode == "rows":                     # a (N, T, K) value seen as N·T rows: the same memory
        return ws_offsets[seq]
    step = N * tensors[seq].shape[2]
    first = shift + STEP if mode == "step" else shift
    return sp.expand(ws_offsets[seq] + first * step)


def untransposed_step_operands(stages: list, builder, made: dict) -> list:
    """A step GEMM that reads a parameter transposed (`U·h_(t-1)`: out[n, j] = Σ_k U[j, k]·
    h[n, k], i.e. h·Uᵀ) reads instead a copy `Uᵀ` made once before the recurrence: BLAS
    multiplies a 32×64 by a 64×256 block in 8.6 µs, by the transpose of a 256×64 one in
    12.8 (sgemm on this 2-core VM), and the product runs once per step while the copy runs
    once per pass. The gradients were derived before this rewrite and read U itself.

    `made` maps a parameter to its copy's stage, so that every plan of a module (forward,
    each loss) shares one copy tensor."""
    out, inserted = [], set()
    for s in stages:
        scan = s.attrs.get("scan") if s.attrs else None
        p = matrix_product(s, builder.tensors) if scan is not None and not scan.reverse else None
        if p is None or not p.right_t or builder.tensors[p.right.tensor].role != "param" or p.blocks:
            out.append(s)
            continue
        param = builder.tensors[p.right.tensor]
        if param.name not in made:
            # a gates' stacked tensor is labelled as its first member (`h.U_i`)
            label = f"{param.label.rsplit('_', 1)[0]}ᵀ (all gates)" if param.name.endswith("_gates") \
                else f"{param.label}ᵀ"
            copy = builder.tensor(label, param.shape[::-1], "value", name=f"{param.name}_T")
            a, b = sp.symbols("a b", integer=True)
            before = len(builder.stages)
            builder.assign(copy, (b, a), Handle(param)[a, b],
                           sizes={a: param.shape[0], b: param.shape[1]},
                           note=f"{copy.tensor.label}, once before the steps (their GEMMs read it untransposed)")
            made[param.name] = builder.stages.pop(before)
        copy_stage = made[param.name]
        if copy_stage.out not in inserted:
            first = next(i for i, x in enumerate(out + [s]) if (x.attrs or {}).get("scan") == scan)
            out.insert(first, copy_stage)
            inserted.add(copy_stage.out)
        access = Access(p.right.symbol, copy_stage.out, (p.K[0], p.J[0]))
        out.append(replace(s, accesses=tuple(access if x is p.right else x for x in s.accesses)))
    return out


def overwritten_step_gradients(stages: list, tensors: dict) -> list:
    """Drop the zeroing of a sequence gradient that the backward block overwrites whole.

    derive accumulates every write to a step view into its sequence's gradient, zeroed
    before the block, because in general several steps write one slot (Δh_(t-1) gets a
    share from step t and one from the output). A sequence whose only writers are maps of
    one step view `[t]`, each element once, tiling the view (the four gates' blocks of
    Δ(W·x_t + U·h_(t-1)), or Δo_t alone), and which nothing reads before they wrote it, is
    written exactly once per slot in the block: its writes become `=`, and its zeroing
    (a pass over the whole T·N·width sequence, ~2 MB per step for the issue's LSTM) goes.
    """
    drop, overwrite = set(), set()
    for z, s in enumerate(stages):
        if s.kind != "formula" or s.accesses or s.expr != 0 or (s.attrs or {}).get("scan"):
            continue
        seq = s.out
        views = {name for name, t in tensors.items() if t.view and t.view[0] == seq}
        if not views:
            continue
        touching = {seq} | views
        writers = [i for i, w in enumerate(stages) if w.out in touching and i != z]
        readers = [i for i, r in enumerate(stages) if any(a.tensor in touching for a in r.accesses)]
        if not writers or min(writers) < z or (readers and min(readers) <= max(writers)):
            continue
        ws = [stages[i] for i in writers]
        scan = (ws[0].attrs or {}).get("scan")
        # inside the block only the written view itself is read (after its writers, in the
        # same step); after the block any view, every slot being written by then
        if any((stages[i].attrs or {}).get("scan") and any(a.tensor in touching and a.tensor != ws[0].out
                                                           for a in stages[i].accesses) for i in readers):
            continue
        if scan is None or tensors[seq].shape[0] != scan.count:
            continue
        if not all((w.attrs or {}).get("scan") == scan and tensors[w.out].view == (seq, 0, "step")
                   and w.accumulate and not w.reduce_vars and blocks(w) is not None for w in ws):
            continue
        size = sp.prod(tensors[ws[0].out].shape)
        if sp.simplify(sum(sp.prod([n for _, n in w.ranges]) for w in ws) - size) != 0:
            continue
        if all(disjoint(a, b) for k, a in enumerate(ws) for b in ws[k + 1:]):
            drop.add(z)
            overwrite |= set(writers)
    return [replace(s, accumulate=False) if i in overwrite else s
            for i, s in enumerate(stages) if i not in drop]


def aliased_views(stages: list, tensors: dict) -> set:
    """The step views and sequences whose memory is shared: every sequence, and each of its
    views, except a sequence that the stages touch only through one view and never by its
    own name (it needs no memory beyond what that view's value needs)."""
    sequences = {t.view[0] for t in tensors.values() if t.view}
    seen: dict = {}
    for s in stages:
        for name in [s.out] + [a.tensor for a in s.accesses]:
            t = tensors[name]
            if t.view:
                seen.setdefault(t.view[0], set()).add(name)
            elif name in sequences:
                seen.setdefault(name, set()).add(name)
    out = set()
    for t in tensors.values():
        if t.view and not (seen.get(t.view[0]) == {t.name}):
            out |= {t.name, t.view[0]}
    return out
