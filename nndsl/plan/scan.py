"""The plan of a recurrence: the cell's kernel calls repeated once per step.

A scan's stages (`attrs["scan"]`, see `calculus/recurrent.py`) are fused and made kernels
like any others; their calls become a `Block`, which a plan function emits inside
`for t_ in range(T)` (backward: `range(T - 1, -1, -1)`), with the offsets of the step
views moving with `t_`. The table is filled once per (N, T) and kept by the Model, so a
step costs one row per kernel of the cell, and the whole pass grows linearly in T.
"""
from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

from ..calculus.formulas import N, STEP, Tensor
from ..render.printer import index_text


@dataclass
class Block:
    """Calls (or rows) repeated once per step, t_ = 0..count-1 (reversed: count-1..0)."""
    count: str                 # the number of steps, as text in the plan's sizes
    reverse: bool
    items: list

    @property
    def range_text(self) -> str:
        return f"range({self.count} - 1, -1, -1)" if self.reverse else f"range({self.count})"


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
            out.append(Block(index_text([scan.count]), scan.reverse, calls))
    return out


def view_offset(t: Tensor, tensors: dict[str, Tensor], ws_offsets) -> sp.Expr:
    """A step view's offset in the workspace: its sequence's, plus whole steps of N rows."""
    seq, shift, mode = t.view
    if mode == "rows":                     # a (N, T, K) value seen as N·T rows: the same memory
        return ws_offsets[seq]
    step = N * tensors[seq].shape[2]
    first = shift + STEP if mode == "step" else shift
    return sp.expand(ws_offsets[seq] + first * step)
