"""Tensor formulas: the one representation every layer, loss and adjoint is written in.

A `Stage` is `out[I] (=|+=) R_J F(a[A], b[B], ...)`: a scalar expression `F`
over indexed *accesses*, reduced (`R` = sum, max or logsumexp) over the loop
indices that `out` does not carry.  Index expressions may be affine
(`x[n, c, i*s + p]`), which is all that windows (convolution, pooling) need.
`argmax` stores the row-major position, among the reduced indices, of the first
maximum (a float; a max reduction names it in `attrs["argmax"]` so that its
adjoint routes to that one element).

Layers are written with `Builder`, in index notation that reads like the
lecture: `b.assign(z, (n, k), W[k, d] * x[n, d], over=(d,))`.  Each distinct
access becomes a scalar symbol, so sympy's scalar `diff` is all the calculus
the reverse pass needs.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping, Optional

import sympy as sp

N = sp.Symbol("N", integer=True, positive=True)     # the batch size


# A fixed size that a formula uses as a number (a layer norm's 1/K, a batchnorm's count
# N·H·W): a symbol, so that the kernel plan makes it a size argument like the sizes of the
# shapes, and the 64- and the 128-wide layer norm share their kernels. Its value is FIXED[it]:
# the plan's integers and `nndsl grad` write the number.
FIXED: dict = {}


def fixed_size(value) -> sp.Symbol:
    v = int(value)
    sym = sp.Symbol(f"§{v}", integer=True, positive=True)
    FIXED[sym] = sp.Integer(v)
    return sym


def fixed_values(expr):
    """`expr` with every fixed-size symbol written as its number."""
    expr = sp.sympify(expr)
    return expr.xreplace(FIXED) if FIXED and expr.free_symbols & FIXED.keys() else expr


def idx(names: str) -> tuple[sp.Symbol, ...]:
    """Integer index symbols: `n, k, d = idx("n k d")`."""
    return tuple(sp.Symbol(s, integer=True) for s in names.split())


@dataclass(frozen=True)
class Tensor:
    name: str                      # identifier in the generated code
    shape: tuple                   # sympy sizes: ints, N, free sizes
    role: str                      # input target labels param value noise loss grad
    label: str                     # the user's name ("h.W"), for display
    dtype: str = "float"           # "float" or "int" (class labels)
    # A view of another tensor's memory (`calculus/recurrent.py`): (tensor, step shift, mode).
    # It owns no memory: "step" is the (N, ·) slice of step t + shift of a (steps, N, ·)
    # sequence tensor, "all" its T·N rows from step `shift` on, "fixed" the slice of step
    # `shift`; "rows" a (N, T, K) value seen as (N·T, K). None: a tensor with its own memory.
    view: Optional[tuple] = None


def memory_owner(tensors, name: str) -> str:
    """The tensor that owns `name`'s memory: a step view's sequence, else itself."""
    t = tensors.get(name) if tensors else None
    return t.view[0] if t is not None and t.view else name


@dataclass(frozen=True)
class Scan:
    """A recurrence's loop over steps: stages carrying `attrs["scan"]` are the cell, run once
    per step t = 0..count-1 (backward: count-1..0), reading and writing step views of
    sequence tensors (`Tensor.view`) whose offsets move with t (`plan/scan.py`)."""
    id: str
    count: object                  # the number of steps (T, a sympy size)
    reverse: bool = False


STEP = sp.Symbol("t_", integer=True, nonnegative=True)     # the step of a scan, in plan offsets


@dataclass(frozen=True)
class Access:
    symbol: sp.Symbol
    tensor: str
    index: tuple


@dataclass(frozen=True)
class Stage:
    out: str
    index: tuple                               # index expressions of `out`
    expr: sp.Expr                              # over the access symbols
    accesses: tuple[Access, ...]
    ranges: tuple[tuple[sp.Symbol, object], ...]   # every loop index with its size, out's first
    reduce: Optional[str] = None               # None | "sum" | "max" | "logsumexp" | "argmax"
    accumulate: bool = False                   # out[I] += ... instead of =
    kind: str = "formula"                      # formula | draw | onehot
    attrs: Mapping[str, object] = field(default_factory=dict)
    note: str = ""

    @property
    def out_vars(self) -> tuple[sp.Symbol, ...]:
        """Loop indices that appear in `out`'s index (outer loops)."""
        free = set().union(*[index_vars(i) for i in self.index])
        return tuple(v for v, _ in self.ranges if v in free)

    @property
    def reduce_vars(self) -> tuple[sp.Symbol, ...]:
        """Loop indices reduced over (inner loops)."""
        outs = set(self.out_vars)
        return tuple(v for v, _ in self.ranges if v not in outs)

    @property
    def plain(self) -> bool:
        """`out` is indexed by distinct loop indices: each out element is written once."""
        syms = [e for e in self.index if isinstance(e, sp.Symbol)]
        return all(isinstance(e, sp.Symbol) or e.is_Integer for e in self.index) and len(set(syms)) == len(syms)

    @property
    def reduced_position(self) -> sp.Expr:
        """Row-major position of the reduced indices (`p·K + q`): what `argmax` stores."""
        sizes = dict(self.ranges)
        pos = sp.Integer(0)
        for v in self.reduce_vars:
            pos = pos * sizes[v] + v
        return pos

    def access(self, symbol: sp.Symbol) -> Access:
        return next(a for a in self.accesses if a.symbol == symbol)


class Handle:
    """A tensor in a Builder; `T[i, j]` is an indexed access usable in sympy expressions."""

    def __init__(self, tensor: Tensor):
        self.tensor = tensor
        self.base = sp.IndexedBase(tensor.name)

    def __getitem__(self, index):
        if not isinstance(index, tuple):
            index = (index,)
        if len(index) != len(self.tensor.shape):
            raise ValueError(f"{self.tensor.label}: rank {len(self.tensor.shape)}, indexed with {len(index)}")
        return self.base[index]

    @property
    def name(self) -> str:
        return self.tensor.name

    @property
    def shape(self) -> tuple:
        return self.tensor.shape


def identifier(label: str) -> str:
    """A Python identifier for a user name: "generator#2.h.W" -> "generator_2_h_W"."""
    s = re.sub(r"[^0-9A-Za-z_]+", "_", label).strip("_")
    return s if s and not s[0].isdigit() else "t_" + s


class Builder:
    """Collects tensors and stages; the formulas of `nndsl.ops` are written against it."""

    def __init__(self):
        self.tensors: dict[str, Tensor] = {}
        self.stages: list[Stage] = []

    def tensor(self, label: str, shape, role: str, dtype: str = "float", name: str | None = None,
               view: tuple | None = None) -> Handle:
        base = name or identifier(label)
        name, k = base, 1
        while name in self.tensors or name in _RESERVED:
            k += 1
            name = f"{base}_{k}"
        t = Tensor(name, tuple(sp.sympify(s) for s in shape), role, label, dtype, view)
        self.tensors[name] = t
        return Handle(t)

    def assign(self, out: Handle, index, expr, over=(), reduce=None, accumulate=False,
               note="", sizes: Mapping | None = None, attrs: Mapping | None = None) -> Handle:
        index = tuple(sp.sympify(i) for i in (index if isinstance(index, tuple) else (index,)))
        stage = make_stage(out.name, index, sp.sympify(expr), self.tensors, over=over,
                           reduce=reduce if over else None, accumulate=accumulate, note=note,
                           sizes=sizes)
        if attrs:
            from dataclasses import replace
            stage = replace(stage, attrs=dict(attrs))
        self.stages.append(stage)
        return out

    def special(self, kind: str, out: Handle, note: str = "", inputs=(), **attrs) -> Handle:
        """A stage that is not a formula: random draws, one-hot labels."""
        n_idx = tuple(sp.Symbol(f"i{j}", integer=True) for j in range(len(out.shape)))
        acc = tuple(Access(sp.Symbol(f"{t}_0"), t, ()) for t in inputs)
        self.stages.append(Stage(out.name, n_idx, sp.Integer(0), acc,
                                 tuple(zip(n_idx, out.shape)), kind=kind, attrs=attrs, note=note))
        return out


_RESERVED = {"np", "nb", "math", "N", "F", "L", "theta", "grad", "ws", "seed", "training", "want_grad",
             "acc", "top", "i", "value", "t_"}


def by_name(symbol) -> str:
    """The sort key of a symbol: its printed text (`str`), which for a plain Symbol is its
    name, read without sympy's printer (a 48-layer MLP's warm build 0.72 -> 0.67 s)."""
    return symbol.name if type(symbol) is sp.Symbol else str(symbol)


def index_vars(e) -> list[sp.Symbol]:
    """The loop indices in an index expression, those of an indirect read too (`n, t` of
    `x[n, t]` in `E[x[n, t], k]`), never a tensor's name."""
    e = sp.sympify(e)
    labels = {a.base.label for a in e.atoms(sp.Indexed)}
    return sorted((v for v in e.free_symbols if isinstance(v, sp.Symbol) and v not in labels), key=by_name)


def indirect(e) -> bool:
    """An index that reads a tensor: an embedding's row `x[n, t]` (integer class indices)."""
    return bool(sp.sympify(e).atoms(sp.Indexed))


def make_stage(out: str, index: tuple, expr: sp.Expr, tensors: Mapping[str, Tensor], over=(),
               reduce=None, accumulate=False, note="", sizes: Mapping | None = None) -> Stage:
    """Turn an expression over `sp.Indexed` accesses into a Stage with scalar access symbols.

    An index may itself read a tensor of integers (a gather `E[x[n, t], k]`, or the scatter
    `ΔE[x[n, t], k] += …` of its adjoint): that read is an access too (its symbol does not
    occur in the body; the index keeps the `x[n, t]` it reads, and renderers print it)."""
    accesses, subs = [], {}
    found = expr.atoms(sp.Indexed).union(*[sp.sympify(i).atoms(sp.Indexed) for i in index])
    for k, ind in enumerate(sorted(found, key=sp.default_sort_key)):
        sym = sp.Symbol(f"{ind.base.label}_{k}")
        accesses.append(Access(sym, str(ind.base.label), tuple(ind.indices)))
        subs[ind] = sym
    body = expr.xreplace(subs)
    explicit = dict(sizes or {})
    known = dict(explicit)
    for name, ind in [(out, index)] + [(a.tensor, a.index) for a in accesses]:
        for pos, e in enumerate(ind):
            if not isinstance(e, sp.Symbol) or e in explicit:
                continue
            size = tensors[name].shape[pos]
            if e in known and sp.simplify(known[e] - size) != 0:
                # an index plainly addressing axes of different sizes is a formula bug
                raise ValueError(f"stage {out}: index {e} ranges over {known[e]} and {size}; give `sizes`")
            known.setdefault(e, size)
    out_vars = []
    for e in index:
        out_vars += [v for v in index_vars(e) if v not in out_vars]
    loop_vars = out_vars + [v for v in over if v not in out_vars]
    missing = [v for v in loop_vars if v not in known]
    if missing:
        raise ValueError(f"stage {out}: no size known for index {missing}")
    ranges = tuple((v, known[v]) for v in loop_vars)
    return Stage(out, index, body, tuple(accesses), ranges, reduce, accumulate, note=note)
