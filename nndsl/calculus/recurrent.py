"""Recurrent layers — rnn, lstm, gru — as a scan whose cell is ordinary index formulas.

A recurrence keeps every per-step value in a *sequence tensor* of shape
(steps, N, width), step-major, so that one step is a contiguous (N, width) slice.
The cell is written once, over *step views* of those sequences (`Tensor.view`):
`h_prev` is step t of h (whose slot 0 is h_0 = 0), `h_t` step t + 1, `x_t` step t
of the input projections, and so on. Its stages carry `attrs["scan"]`; the plan runs
them once per step (`plan/scan.py`), with the views' offsets moving with t.

derive differentiates the cell like any other stages (`derive.py`): the adjoint of a
step view is the same view of the sequence's gradient, so Δh_{t-1} written at step t is
the Δh_t read at step t - 1, and the backward block run for t = T-1..0 is BPTT. The
parameter gradients of the cell are hoisted after that loop as sums over all T·N rows.

Lowering (what makes it fast): the input projections `W x_t` of all steps are one GEMM
before the loop (`xW`, all gates stacked: W_i W_f W_o W_c are contiguous in theta, so
they are one (4H, in) matrix), each step is one GEMM `U h_{t-1}` (all gates) and one
fused loop for the gates, and ΔW, ΔU, Δb are single GEMMs / reductions after the loop.

Gate layout (ours → torch, for parity): lstm stacks i, f, o, c (torch: i, f, g, o);
gru stacks z, r, h (torch: r, z, n); one bias per gate, torch's `bias_ih` (`bias_hh` = 0,
which for the GRU is exactly ours: b_h sits outside r ⊙ (U_h h)).
"""
from __future__ import annotations

from dataclasses import replace

import sympy as sp

from ..frontend import ir
from . import functions as fn
from .formulas import N, Handle, Scan, identifier, idx
from .ops import Graph, activation_fn, layer

GATES = {"rnn": ("",), "lstm": ("_i", "_f", "_o", "_c"), "gru": ("_z", "_r", "_h")}


def stacked_param(g: Graph, node: ir.Node, prefix: str, gates) -> Handle:
    """The gates' parameters `prefix_*` as one tensor: they are consecutive in theta (the
    checker lists them in gate order), so the stacked tensor is a view, not a copy. It is
    labelled as its first member, which is where its storage and gradient start."""
    names = [node.params[prefix + gate] for gate in gates]
    if len(names) == 1:
        return g.params[names[0]]
    first = g.params[names[0]]
    rows = sum(g.params[n].shape[0] for n in names)
    h = g.b.tensor(names[0], (rows,) + tuple(first.shape[1:]), "param",
                   name=identifier(f"{node.name}.{prefix}") + "_gates")
    g.stacked[h.name] = names
    return h


class _Cell:
    """Sequence tensors and step views of one recurrent node."""

    def __init__(self, g: Graph, node: ir.Node, steps):
        self.g, self.node, self.T = g, node, steps
        self.scan = Scan(node.name, steps)

    def seq(self, what: str, steps, width) -> Handle:
        return self.g.b.tensor(f"{self.node.name}.{what}", (steps, N, width), "value")

    def view(self, seq: Handle, shift, mode: str = "step") -> Handle:
        width = seq.shape[2]
        shape = (self.T * N, width) if mode == "all" else (N, width)
        suffix = {"step": f"[t{'+' + str(shift) if shift else ''}]", "all": "[all steps]",
                  "fixed": f"[{shift}]"}[mode]
        return self.g.b.tensor(seq.tensor.label + suffix, shape, "value", view=(seq.name, shift, mode))

    def step(self, out: Handle, index, expr, **kw) -> None:
        """A stage of the cell: run once per step."""
        self.g.b.assign(out, index, expr, **kw)
        self.g.b.stages[-1] = replace(self.g.b.stages[-1], attrs={"scan": self.scan})


@layer("rnn")
@layer("lstm")
@layer("gru")
def _recurrent(g: Graph, node: ir.Node, x: Handle):
    kind = node.op
    if len(x.shape) != 3:
        g.unsupported(node, "a recurrent layer needs a (T, features) sequence")
    gates = GATES[kind]
    H = int(node.attrs["hidden"])
    G = H * len(gates)
    T, D = x.shape[1], x.shape[2]
    c = _Cell(g, node, T)
    name = node.name
    W, U, bias = (stacked_param(g, node, p, gates) for p in ("W", "U", "b"))
    n, s, d, k, j, r = idx("n s d k j r")

    # the input step-major, and its projections for all steps as one GEMM: xW = W·x_t
    xs = c.seq("x_steps", T, D)
    g.b.assign(xs, (s, n, d), x[n, s, d], note=f"{name}: x step-major")
    x_all, xw = c.view(xs, 0, "all"), c.seq("xW", T, G)
    xw_all = c.view(xw, 0, "all")
    g.b.assign(xw_all, (r, j), W[j, d] * x_all[r, d], over=(d,), reduce="sum",
               note=f"{name}: W·x_t, all steps")
    # the biases too, before the loop: each step then adds U·h_(t-1) alone, and Δb is one
    # column sum of Δ(W·x_t + U·h_(t-1) + b) over all T·N rows after it
    g.b.assign(xw_all, (r, j), bias[j], accumulate=True, sizes={r: T * N, j: G},
               note=f"{name}: + b, all steps")
    h = c.seq("h", T + 1, H)                      # slot 0 is h_0 = 0
    g.b.assign(h, (0, n, k), sp.Integer(0), sizes={n: N, k: H}, note=f"{name}: h_0 = 0")
    if kind == "lstm":
        C = c.seq("C", T + 1, H)
        g.b.assign(C, (0, n, k), sp.Integer(0), sizes={n: N, k: H}, note=f"{name}: C_0 = 0")

    # x_lengths: past its length an example keeps its state, m_t = 1[t < length]
    mask = g.sequence_mask(T)
    if mask is not None:
        ms = c.seq("mask", T, 1)
        g.b.assign(ms, (s, n, 0), mask[n, s], sizes={n: N, s: T}, note=f"{name}: step mask")
        m_t = c.view(ms, 0)
    keep = (lambda new, old: m_t[n, 0] * new + (1 - m_t[n, 0]) * old) if mask is not None else \
        (lambda new, old: new)                                         # noqa: E731

    # the cell, once per step
    h_prev, h_t = c.view(h, 0), c.view(h, 1)
    xw_t = c.view(xw, 0)
    if kind == "gru":            # r_t multiplies U_h·h_(t-1) alone: keep it apart
        uh = c.seq("Uh", T, G)
        uh_t = c.view(uh, 0)
        c.step(uh_t, (n, j), U[j, k] * h_prev[n, k], over=(k,), reduce="sum", note=f"{name}: U·h_(t-1)")
    else:
        # rnn, lstm: U·h_(t-1) is added onto W·x_t in place, so the backward pass has one
        # gradient of the pre-activations (Δ(W x_t) and Δ(U h_(t-1)) are the same numbers)
        c.step(xw_t, (n, j), U[j, k] * h_prev[n, k], over=(k,), reduce="sum", accumulate=True,
               note=f"{name}: W·x_t + U·h_(t-1)")

    nk = {n: N, k: H}            # gates read the stacked (N, G) tensors at k + gate·H

    def pre(gate: int):
        o = gate * H
        if kind == "gru":
            return xw_t[n, k + o] + uh_t[n, k + o]
        return xw_t[n, k + o]

    def gate_value(what: str, f, gate: int) -> Handle:
        seq = c.seq(what, T, H)
        v = c.view(seq, 0)
        c.step(v, (n, k), f(pre(gate)), sizes=nk, note=f"{name}: {what}_t")
        return v

    if kind == "rnn":
        act = node.attrs.get("act", "tanh")
        if act == "softmax":       # normalised over the hidden units: exp(a − log Σ_k exp(a))
            lse_t = c.view(c.seq("lse", T, 1), 0)
            c.step(lse_t, (n, 0), pre(0), over=(k,), reduce="logsumexp", sizes=nk,
                   note=f"{name}: log Σ_k exp(W x_t + U h_(t-1) + b)")
            value = sp.exp(pre(0) - lse_t[n, 0])
        else:
            value = activation_fn(g, act)(pre(0))
        c.step(h_t, (n, k), keep(value, h_prev[n, k]), sizes=nk, note=f"{name}: h_t = {act}(W x_t + U h_(t-1) + b)")
    elif kind == "lstm":
        i_t = gate_value("i", fn.sigmoid, 0)
        f_t = gate_value("f", fn.sigmoid, 1)
        o_t = gate_value("o", fn.sigmoid, 2)
        cc_t = gate_value("Ĉ", sp.tanh, 3)
        C_prev, C_t = c.view(C, 0), c.view(C, 1)
        c.step(C_t, (n, k), keep(C_prev[n, k] * f_t[n, k] + cc_t[n, k] * i_t[n, k], C_prev[n, k]),
               note=f"{name}: C_t = C_(t-1)⊙f_t + Ĉ_t⊙i_t")
        c.step(h_t, (n, k), keep(sp.tanh(C_t[n, k]) * o_t[n, k], h_prev[n, k]), note=f"{name}: h_t = tanh(C_t)⊙o_t")
    else:
        z_t = gate_value("z", fn.sigmoid, 0)
        r_t = gate_value("r", fn.sigmoid, 1)
        hh = c.seq("ĥ", T, H)
        hh_t = c.view(hh, 0)
        c.step(hh_t, (n, k), sp.tanh(xw_t[n, k + 2 * H] + r_t[n, k] * uh_t[n, k + 2 * H]),
               sizes=nk, note=f"{name}: ĥ_t = tanh(W_h x_t + r_t⊙(U_h h_(t-1)) + b_h)")
        c.step(h_t, (n, k), keep((1 - z_t[n, k]) * hh_t[n, k] + z_t[n, k] * h_prev[n, k], h_prev[n, k]),
               note=f"{name}: h_t = (1-z_t)⊙ĥ_t + z_t⊙h_(t-1)")

    # the node's value, batch-major as the language has it
    out = g.new_value(name, node.shape)
    if node.attrs.get("return", "all") == "all":
        g.b.assign(out, (n, s, k), h[s + 1, n, k], sizes={n: N, s: T, k: H}, note=f"{name} = h_1..h_T")
    else:
        last = c.view(h, T, "fixed")
        g.b.assign(out, (n, k), last[n, k], note=f"{name} = h_T")
    return out
