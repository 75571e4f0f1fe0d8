"""A user `layer` in index notation as ONNX: `Einsum` for every `sum(...)`, `Gather` for
windowed reads, elementwise nodes (elementwise.py) for the rest.

Every value is an ONNX tensor with named axes: the batch axis (when it depends on the
layer's inputs) first, then one axis per index of the layer (`x[c, t]` read as `x[c, i + p]`
has axes (n, c, i, p)). So

* a read `x[c, i + p]` of an axis by anything but the plain index that spans it is a
  `Gather` of that axis with a constant index table (`idx[i, p] = i + p`; a constant index
  drops the axis, a plain index over a prefix reads the prefix) — the checker has proved
  every such read in bounds;
* `sum(c, p: W[f, c, p] * x[c, i + p])` is one `Einsum` of its factors ("fcp,ncip->nfi"),
  any other summed body a `ReduceSum` of it (an Einsum of one operand);
* an elementwise expression of reads and sums aligns its operands' axes (Transpose,
  Unsqueeze) and is translated from the same sympy tree the module's kernels come from.

What cannot be exported (ExportError naming the layer): a free size (a sequence length) where
a constant table needs its extent (a windowed or offset read along it, an index used as a
number), and a read that uses one index for two axes (a diagonal). A plain index over a free
size is an Einsum label like any other.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sympy as sp

from ..frontend import ir
from .errors import ExportError

BATCH = "\0n"              # the batch axis's label (no index is named so)


@dataclass(frozen=True)
class Labelled:
    tensor: str
    axes: tuple[str, ...]  # BATCH first when batched


class UserLayerExport:
    def __init__(self, ex, node: ir.Node, args: tuple[str, ...]):
        self.ex, self.g, self.node = ex, ex.g, node
        self.spec = ex.model.layers[node.attrs["layer"]]
        self.sizes = dict(node.attrs["index_sizes"])      # an int, or a free size's name (T)
        self.env: dict[str, Labelled] = {}
        self.shapes: dict[str, tuple] = {}       # per-example shape of every layer-local tensor
        for (name, _), t, source in zip(self.spec.tensor_args, args, node.inputs):
            self.shapes[name] = tuple(ex.model.node(source).shape)
            self.env[name] = Labelled(t, (BATCH,) + tuple(f"\0axis{j}" for j in range(len(self.shapes[name]))))
        for p in self.spec.params:
            pname = node.params[p.name]
            self.shapes[p.name] = tuple(ex.params[pname].shape)
            self.env[p.name] = Labelled(ex.param(pname), tuple(f"\0axis{j}" for j in range(len(p.indices))))
        self.order: list[str] = [i for i, _ in self.spec.out_indices]

    def fail(self, reason: str):
        raise self.ex.cannot(self.node, reason)

    def fixed(self, index: str, what: str) -> int:
        """The size of an index that must be known when exporting (a Gather table, a range)."""
        size = self.sizes[index]
        if not isinstance(size, int):
            self.fail(f"index {index} {what} ranges over the free size {size}")
        return size

    def run(self) -> str:
        out = None
        for st in self.spec.body:
            value = self.expr(st.value)
            if not isinstance(value, Labelled) or BATCH not in value.axes:
                self.fail(f"`{st.target}[{', '.join(st.indices)}]` does not depend on the layer's inputs")
            value = self.arrange(value, (BATCH,) + tuple(st.indices))
            self.env[st.target] = value
            self.shapes[st.target] = tuple(self.sizes[i] for i in st.indices)
            if st.target == self.spec.out_name:
                out = value
        return out.tensor

    # -- values -----------------------------------------------------------------
    def expr(self, e):
        """A Labelled tensor, or a python float for a constant."""
        if isinstance(e, ir.Const):
            return float(e.value)
        if isinstance(e, ir.IVar):
            size = self.fixed(e.name, "as a value")
            return Labelled(self.g.param(np.arange(size), f"{self.node.name}/{e.name}"), (e.name,))
        if isinstance(e, ir.Access):
            return self.access(e)
        if isinstance(e, ir.SumOver):
            return self.sum(e)
        if isinstance(e, ir.Apply):
            return self.elementwise(e)
        self.fail(f"unexpected expression {e!r}")

    def access(self, e: ir.Access) -> Labelled:
        if e.tensor not in self.env:
            self.fail(f"reads `{e.tensor}` before it is assigned")
        src = self.env[e.tensor]
        batched = bool(src.axes) and src.axes[0] == BATCH
        shape = self.shapes[e.tensor]
        tensor, labels = src.tensor, list(src.axes)
        # right to left, so that the axes to the left keep their positions
        for j in reversed(range(len(e.indices))):
            ix = e.indices[j]
            pos = j + (1 if batched else 0)
            if isinstance(ix, ir.IVar) and self.sizes[ix.name] == shape[j]:
                labels[pos] = ix.name
                continue
            variables = _variables(ix)
            sizes = [self.fixed(v, f"in the read {e.tensor}[..., {_text(ix)}, ...]") for v in variables]
            grids = np.meshgrid(*[np.arange(n) for n in sizes], indexing="ij") if variables else []
            table = np.asarray(_evaluate(ix, dict(zip(variables, grids))), np.int64)
            if table.ndim == 0 and variables:
                table = np.broadcast_to(table, tuple(sizes))
            idx = self.g.initializer(table, f"{self.node.name}/{e.tensor}[{j}]")
            tensor = self.g.op("Gather", [tensor, idx], axis=pos)
            labels[pos:pos + 1] = variables
        if len(set(labels)) != len(labels):
            repeated = next(x for x in labels if labels.count(x) > 1)
            self.fail(f"`{e.tensor}` is read with the index {repeated} on two axes (a diagonal)")
        return Labelled(tensor, tuple(labels))

    def sum(self, e: ir.SumOver) -> Labelled:
        coeff, factors = 1.0, []
        for f in _factors(e.body):
            v = self.expr(f)
            if isinstance(v, float):
                coeff *= v
            else:
                factors.append(v)
        if not factors:
            self.fail(f"sum over {', '.join(e.indices)} of a constant")
        letters = {}
        for f in factors:
            for a in f.axes:
                letters.setdefault(a, chr(ord("a") + len(letters)))
        if len(letters) > 26:
            self.fail("more than 26 indices in one sum")
        summed = set(e.indices)
        # (every summed index is read by a factor: the checker infers its range from a read)
        keep = tuple(a for a in self._ordered(letters) if a not in summed)
        equation = ",".join("".join(letters[a] for a in f.axes) for f in factors) + \
            "->" + "".join(letters[a] for a in keep)
        out = self.g.op("Einsum", [f.tensor for f in factors], equation=equation)
        if coeff != 1.0:
            out = self.g.op("Mul", [out, self.g.scalar(coeff)])
        return Labelled(out, keep)

    def elementwise(self, e: ir.Apply):
        """Apply nodes down to the first non-Apply: one sympy expression over those leaves."""
        leaves: list = []

        def strip(x):
            if isinstance(x, ir.Apply):
                return ir.Apply(x.fn, tuple(strip(a) for a in x.args))
            if isinstance(x, ir.Const):
                return x
            leaves.append(x)
            return ir.Ref(f"__leaf{len(leaves) - 1}")
        tree = strip(e)
        values = [self.expr(x) for x in leaves]
        labelled = [v for v in values if isinstance(v, Labelled)]
        if not labelled:
            self.fail("an expression of constants only")
        axes = [a for v in labelled for a in v.axes]          # as met: the same graph every run
        target = tuple(self._ordered(axes))
        symbols, operands = {}, {}
        for k, v in enumerate(values):
            s = sp.Symbol(f"leaf{k}")
            if isinstance(v, float):
                symbols[f"__leaf{k}"] = sp.Float(v) if not float(v).is_integer() else sp.Integer(int(v))
            else:
                symbols[f"__leaf{k}"] = s
                operands[s] = self.broadcastable(v, target)
        expr = self.ex.sympy_of(tree, symbols)
        out = self.ex.elementwise(expr, operands, f"layer `{self.node.name}`")
        if any(s not in expr.free_symbols for s in operands):   # sympy dropped an operand (x - x):
            out = self.g.op("Expand", [out, self.g.op("Shape", [self.g.op("Sum", list(operands.values()))])])
        return Labelled(out, target)

    # -- axes -------------------------------------------------------------------
    def _ordered(self, axes) -> list[str]:
        """Batch first, then the output's indices in order, then the others as met."""
        axes = list(dict.fromkeys(axes))
        rank = {a: k for k, a in enumerate([BATCH] + self.order)}
        return sorted(axes, key=lambda a: (rank.get(a, len(rank)), axes.index(a)))

    def broadcastable(self, v: Labelled, target: tuple[str, ...]) -> str:
        """`v` transposed into `target`'s order, with size-1 axes where it has none."""
        present = [a for a in target if a in v.axes]
        t = self.g.transpose(v.tensor, [v.axes.index(a) for a in present])
        missing = [k for k, a in enumerate(target) if a not in v.axes]
        return self.g.unsqueeze(t, missing)

    def arrange(self, v: Labelled, target: tuple[str, ...]) -> Labelled:
        extra = [a for a in v.axes if a not in target]
        if extra:
            self.fail(f"index {extra[0]} is left over")
        t = self.broadcastable(v, target)
        if any(a not in v.axes for a in target):
            shape = [1] + [self.fixed(a, "to broadcast over") for a in target[1:]]
            t = self.g.op("Expand", [t, self.g.ints(shape)])
        return Labelled(t, target)


def _factors(e):
    if isinstance(e, ir.Apply) and e.fn == "*":
        return [f for a in e.args for f in _factors(a)]
    if isinstance(e, ir.Apply) and e.fn == "neg":
        return [ir.Const(-1.0)] + _factors(e.args[0])
    return [e]


def _variables(e) -> list[str]:
    out: list[str] = []

    def walk(x):
        if isinstance(x, ir.IVar):
            if x.name not in out:
                out.append(x.name)
        elif isinstance(x, ir.Apply):
            for a in x.args:
                walk(a)
    walk(e)
    return out


def _text(e) -> str:
    if isinstance(e, ir.Const):
        return str(int(e.value))
    if isinstance(e, ir.IVar):
        return e.name
    if isinstance(e, ir.Apply) and e.fn == "neg":
        return f"-{_text(e.args[0])}"
    if isinstance(e, ir.Apply):
        return f"{_text(e.args[0])} {e.fn} {_text(e.args[1])}"
    return "?"


def _evaluate(e, env):
    if isinstance(e, ir.Const):
        return int(e.value)
    if isinstance(e, ir.IVar):
        return env[e.name]
    if isinstance(e, ir.Apply):
        args = [_evaluate(a, env) for a in e.args]
        if e.fn == "+":
            return args[0] + args[1]
        if e.fn == "-":
            return args[0] - args[1]
        if e.fn == "*":
            return args[0] * args[1]
        if e.fn == "neg":
            return -args[0]
    raise ExportError(f"index expression {e!r} is not affine")
