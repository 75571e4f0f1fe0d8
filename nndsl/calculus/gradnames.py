"""Names in the gradient view: each tensor's display label (the user's names, never an
internal one), the index letters a lecture would use (`n` for the example, `t` for the
step, `k`, `d`, … for a dense layer's axes, a user layer's own letters)."""
from __future__ import annotations

import itertools
from dataclasses import replace

import sympy as sp

from ..frontend import ir
from .formulas import Access, N, Stage, fixed_values
from .ops import Graph


class Names:
    """Display labels of the tensors: the user's names, never an internal one."""

    def __init__(self, model: ir.ModelIR, g: Graph, used=None):
        self.model, self.g = model, g
        self.tensors = g.b.tensors
        self.node_of = {h.name: name for name, h in g.values.items()}
        self.calls = _network_calls(model, used)

    def node_label(self, node: str) -> str:
        """`discriminator#2.out` → `discriminator(fake).out` where a network is called twice."""
        head, dot, rest = node.partition(".")
        base = head.split("#")[0]
        if dot and base in self.calls and len(self.calls[base]) > 1:
            return f"{base}({self.calls[base][head]}).{rest}"
        return node

    def label(self, tensor: str) -> str | None:
        """The display label of a forward tensor, or None for an internal one."""
        t = self.tensors[tensor]
        if t.role == "param":
            return t.label
        if tensor in self.node_of:
            return self.node_label(self.node_of[tensor])
        if t.role in ("input", "target", "labels"):
            return t.label
        return None


def _network_calls(model: ir.ModelIR, used=None) -> dict[str, dict[str, str]]:
    """network -> {call prefix ("discriminator#2"): the call's argument ("fake")}; two calls
    on the same argument that a loss both reads (`used`: its nodes) are `net(x)`, `net(x, call 2)`."""
    calls: dict[str, dict[str, str]] = {}
    for node in model.nodes:
        head, dot, _ = node.name.partition(".")
        if not dot:
            continue
        base = head.split("#")[0]
        outside = [i for i in node.inputs if not i.startswith(head + ".")]
        if outside and head not in calls.get(base, {}):
            calls.setdefault(base, {})[head] = ", ".join(outside)
    for base, heads in calls.items():       # two calls on the same argument: `net(x, call 2)`
        seen: set = set()
        for k, head in enumerate(heads, start=1):
            if used is not None and not any(n.startswith(head + ".") for n in used):
                continue
            if heads[head] in seen:
                heads[head] = f"{heads[head]}, call {k}"
            seen.add(heads[head])
    return calls


class Lecture:
    """A stage as the lecture reads it: a "rows" view (N·T, K) of a sequence value (N, T, K)
    is the value at [n, t, ·] (its row index r = n·T + t split in two), a step mask reads 1,
    and a loop index that runs over the steps of a sequence is named `t`."""

    def __init__(self, tensors, masks: set, user: set):
        self.tensors, self.masks, self.user = tensors, masks, user

    def __call__(self, s: Stage) -> Stage:
        tensors = self.tensors
        if s.attrs and s.attrs.get("scan") is not None:
            return s                                  # a recurrence's cell: gradrecur reads it
        # (a fixed size a formula uses as a number, `§64`, is the number 64 to a reader)
        expr = fixed_values(s.expr).xreplace({a.symbol: sp.Integer(1) for a in s.accesses if a.tensor in self.masks})
        accesses = [a for a in s.accesses if a.tensor not in self.masks]
        ranges = dict(s.ranges)
        used = {str(v) for v in ranges}
        split = {}                                    # row index r -> (n, t)

        def unrow(tensor, index):
            view = tensors[tensor].view
            if not view or view[2] != "rows" or not isinstance(index[0], sp.Symbol):
                return tensor, tuple(index)
            r = index[0]
            if r not in split:
                base = tensors[view[0]].shape
                n = sp.Symbol("n" if "n" not in used else unused("n", used), integer=True)
                used.add(str(n))
                t = sp.Symbol(unused("t", used | self.user), integer=True)
                used.add(str(t))
                split[r] = (n, t, base[0], base[1])
            n, t = split[r][:2]
            return view[0], (n, t) + tuple(index[1:])

        out, index = unrow(s.out, s.index)
        accesses = [replace(a, tensor=tt, index=ii) for a in accesses for tt, ii in [unrow(a.tensor, a.index)]]
        if split:
            new_ranges = []
            for v, size in s.ranges:
                if v in split:
                    n, t, sn, st = split[v]
                    new_ranges += [(n, sn), (t, st)]
                else:
                    new_ranges.append((v, size))
            ranges = dict(new_ranges)
        # a loop over the steps of a sequence (N, T, ·) is `t`
        if "t" not in self.user and not any(str(v) == "t" for v in ranges):
            for a in list(accesses) + [Access(None, out, index)]:
                shape = tensors[a.tensor].shape
                if len(shape) >= 2 and shape[0] == N and len(a.index) >= 2 and \
                        isinstance(a.index[1], sp.Symbol) and a.index[1] in ranges and \
                        is_steps(shape[1]) and str(a.index[1]) != "n":
                    v, t = a.index[1], sp.Symbol("t", integer=True)
                    ren = {v: t}
                    expr = expr.xreplace(ren)
                    index = tuple(sp.sympify(i).xreplace(ren) for i in index)
                    accesses = [replace(x, index=tuple(sp.sympify(i).xreplace(ren) for i in x.index))
                                for x in accesses]
                    ranges = {(t if k == v else k): size for k, size in ranges.items()}
                    break
        if expr is s.expr and not split and ranges == dict(s.ranges) and index == tuple(s.index):
            return s
        return replace(s, out=out, index=index, expr=expr, accesses=tuple(accesses),
                       ranges=tuple(ranges.items()))


def is_steps(size) -> bool:
    """A sequence's free length (`T` of `input x[T, 8]`)."""
    return isinstance(size, sp.Symbol) and size != N


def unused(base: str, used) -> str:
    return next(x for x in itertools.chain([base], (base + "'" * k for k in itertools.count(1))) if x not in used)


def declared_letters(model: ir.ModelIR, label: str, role: str, rank: int) -> tuple[str, ...]:
    """The index names a parameter was declared with: `W[f, c, p]` of a user layer, `W[k, d]`."""
    node_name, _, local = label.rpartition(".")
    node = next((n for n in model.nodes if n.name == node_name), None)
    if node is None:
        return ()
    if node.op == "batchnorm" and len(node.shape) == 3 and rank == 1:
        return ("c",)                           # an image's channel: g, b and the statistics
    if role != "param":
        return ()
    if node.op == "conv2d":
        return {"W": ("f", "c", "p", "q"), "b": ("f",)}.get(local, ())
    if node.op == "embed":
        return {"E": ("v", "k")}.get(local, ())           # row v of the vocabulary, feature k
    if node.op == "layer":
        spec = model.layers[node.attrs["layer"]]
        p = next((p for p in spec.params if p.name == local), None)
        if p is not None and len(set(p.indices)) == len(p.indices) == rank and "n" not in p.indices:
            return tuple(p.indices)
    return ()
