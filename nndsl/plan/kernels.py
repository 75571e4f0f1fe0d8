"""The kernel plan: every fused loop nest and every GEMM of a model as a shared kernel.

A plan item (a fused `Group` or a lone `Stage`) is made *canonical* before it is
rendered: its tensors become `v0, v1, …` (in order of appearance), every size in
its shapes and loop bounds becomes an argument `s0, s1, …` (equal sizes share
one), its loop indices become `i0, i1, …`.  What is left depends only on the
item's structure — the formula, the index pattern, the storage order — so the
128-wide and the 64-wide tanh layers, and every model that has one, render the
same text.  A hash of that structure (and the dtype) names the kernel
(`loop_3f9c…`), and a kernel with a given name is compiled once and served by numba's
cache to every layer, model and later build that needs it.

A kernel here is target-neutral: the canonical item, its tensors and where they live.
Each renderer (`render/numba_cpu.py`, `render/numba_cuda.py`) prints it for its target;
the printed kernel takes the arrays it touches (`theta`, `grad`, `ws` or a data array),
an offset per tensor stored in a flat array, and its sizes, and makes its own views.
A `Call` binds those to one use: the offsets and sizes are affine in the batch size `N`
and the model's free sizes.  Calls become rows of a plan
table (`Plans`), which the module's one entry function runs: numba compiles a
call site per (kernel, arrays) pair, not per layer, and integers read from the
table are never literals (numba would compile one specialisation per literal
argument value, which would undo the sharing).
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field, replace

import sympy as sp

from ..calculus.formulas import Stage, Tensor, fixed_values, memory_owner
from .fuse import Group
from .gemm import BlasGemm, blas_gemm, is_gemm
from .scan import Block

BUFFERS = ("theta", "grad", "ws")          # the flat arrays of a model, in argument order
SMALL = 4                                  # see `size_symbol`
DRAW_PARAMS = ("training", "seed", "first")    # a draw's arguments from the entry function
_INT_PARAM = re.compile(r"[os]\d+|salt")   # a kernel's integers: offsets, sizes, a draw's key
_ROLE_ORDER = {"param": 0, "pgrad": 1}     # then values, adjoints and data, by index pattern
# the stage attributes a renderer reads (a draw's distribution, a one-hot's labels): the rest
# (the recurrence a stage belongs to, a statistic's running tensor) belong to the plan
RENDERED_ATTRS = ("labels", "argmax", "dist", "scale", "p", "neutral", "always")


@dataclass(frozen=True)
class Storage:
    """Where a tensor lives: a slice of a flat buffer (offset affine in N), or a data argument."""
    base: str                  # "theta" | "grad" | "ws" | the data argument's name
    offset: object = None      # sympy expression; None for data arguments
    batch_last: bool = False   # an (N, K) tensor stored as (K, N)


@dataclass
class KernelDef:
    """One shared kernel of the plan, before any target prints it: the canonical item, its
    formal parameters, its tensors and where they live."""
    name: str                            # KIND_HASH: the hash of the structure below and the dtype
    kind: str                            # gemm | loop | draw | onehot
    params: list[str]                    # buffers, data arrays, offsets o*, sizes s*, a draw's salt and entry args
    tensors: dict[str, Tensor]           # canonical tensors (v0, v1, …)
    storage: dict[str, Storage]          # canonical tensor -> storage (base is canonical too)
    item: object                         # the canonical Group, Stage or tuple of Stages
    dtype: str
    has_draws: bool = False
    gemm: BlasGemm | None = None         # a GEMM's BLAS form (operands in storage)

    @property
    def data(self) -> list[str]:
        """The data arrays it takes (canonical names), after the buffers."""
        return [p for p in self.params if p not in BUFFERS and not _INT_PARAM.fullmatch(p)
                and p not in DRAW_PARAMS]

    @property
    def ints(self) -> list[str]:
        """Its integers, in the order a plan row holds them (from `row[2]` on)."""
        return [p for p in self.params if _INT_PARAM.fullmatch(p)]

    @property
    def draw_params(self) -> list[str]:
        return [p for p in self.params if p in DRAW_PARAMS]

    @property
    def batch_last(self) -> set[str]:
        return {t for t, st in self.storage.items() if st.batch_last}

    @property
    def flat(self) -> set[str]:
        """Tensors in the flat buffers (a loop kernel holds them as 1-D slices)."""
        return {t for t, st in self.storage.items() if st.base in BUFFERS}


@dataclass
class Call:
    """One use of a kernel: the arrays it takes (flat buffers or data arguments) and its
    integer arguments (offsets and sizes: sympy expressions affine in N and the free sizes)."""
    kernel: str
    arrays: list[str]
    ints: list
    training: bool = False          # draws take the `training` flag
    notes: list[str] = field(default_factory=list)
    # the tensors whose memory it reads or writes (a view's: its sequence's), registers not:
    # what the workspace's layout by liveness sees of it (`plan/liveness.py`)
    touches: frozenset = frozenset()

    @property
    def branch(self) -> tuple:
        """Calls that differ only in their integers share one branch of the entry's dispatch."""
        return (self.kernel, tuple(self.arrays), self.training)


class KernelLibrary:
    """The distinct kernels a module uses, by name (content-addressed). `touches_only`: calls
    that say only which tensors they touch (no kernel, arrays or integers), for a lowering
    that only lays out the workspace (`module_plan`): the canonical kernels' sympy printing
    was two thirds of the CNN's lowering."""

    def __init__(self, tensors: dict[str, Tensor], storage: dict[str, Storage], dtype: str,
                 touches_only: bool = False):
        self.tensors, self.storage, self.dtype, self.touches_only = tensors, storage, dtype, touches_only
        self.kernels: dict[str, KernelDef] = {}

    def call(self, item) -> Call:
        stages = item.stages if isinstance(item, Group) else list(item) if isinstance(item, tuple) else [item]
        registers = set(item.scalars) if isinstance(item, Group) else set()
        named = {t for s in stages for t in [s.out] + [a.tensor for a in s.accesses]} - registers
        notes = [s.note for s in stages if s.note]
        touches = frozenset(memory_owner(self.tensors, t) for t in named)
        if self.touches_only:
            return Call("", [], [], notes=notes, touches=touches)
        k, arrays, ints = canonical_kernel(item, self.tensors, self.storage, self.dtype)
        self.kernels.setdefault(k.name, k)
        return Call(k.name, arrays, ints, k.has_draws, notes, touches)


def canonical_kernel(item, tensors: dict[str, Tensor], storage: dict[str, Storage],
                     dtype: str) -> tuple[KernelDef, list[str], list[str]]:
    """The shared kernel for one plan item, and the arrays and integers (sympy) that bind
    it to this use."""
    # a Group (one loop nest), a Stage, or a tuple of Stages the emitter renders together
    # (an arg-max and the max of the same windows: one pass)
    stages = list(item.stages) if isinstance(item, Group) else list(item) if isinstance(item, tuple) else [item]
    scalars = set(item.scalars) if isinstance(item, Group) else set()

    # tensors in a structural order (outputs first, then by role, home and index pattern),
    # never by name: sympy sorts accesses by name, and `h10.W` sorts before `h9`
    ranges = item.ranges if isinstance(item, Group) else stages[0].ranges
    loop_vars = {v: sp.Symbol(f"i{j}", integer=True) for j, (v, _) in enumerate(ranges)}
    for s in stages:                     # a lone stage's reduced indices, in its own order
        for v, _ in s.ranges:
            loop_vars.setdefault(v, sp.Symbol(f"i{len(loop_vars)}", integer=True))
    # an index that reads a tensor (an embedding's `E[x[n, t], k]`) shows as `@[…]` in the
    # pattern: the order must not depend on the user's names
    read_labels = lambda e: {a.base.label: sp.Symbol("@") for a in e.atoms(sp.Indexed)}  # noqa: E731
    pattern = lambda index: str(tuple(sp.sympify(e).xreplace({**loop_vars, **read_labels(sp.sympify(e))})  # noqa: E731
                                      for e in index))
    first: dict[str, tuple] = {}
    for si, s in enumerate(stages):
        seen = [(s.out, s.index, 0)] + [(a.tensor, a.index, 1) for a in s.accesses]
        if "labels" in s.attrs:
            seen.append((s.attrs["labels"], (), 1))
        for t, index, reads in seen:
            st = storage[t]
            first.setdefault(t, (si, reads, _ROLE_ORDER.get(tensors[t].role, 9), st.base not in BUFFERS,
                                 BUFFERS.index(st.base) if st.base in BUFFERS else 0, st.batch_last,
                                 len(tensors[t].shape), pattern(index)))
    order = sorted(first, key=lambda t: (first[t], t))
    rename = {t: f"v{i}" for i, t in enumerate(order)}

    # sizes: every distinct size expression of a shape or a loop bound
    sizes: dict = {}

    # a small window that no tensor has as a dimension (a pooling window) stays a literal:
    # LLVM unrolls its loops and vectorises around them (max-pool 1.26 -> 0.32 ms, CNN b64)
    dims = {sp.sympify(d) for t in order if t not in scalars for d in tensors[t].shape}

    def size_symbol(e):
        e = sp.sympify(e)
        # ... and so does a side of 1 (a layer of one output): its loops vanish, and a product
        # with such a side is a matrix times a vector, not a BLAS call (`_thin_gemm`)
        if e.is_Integer and (e <= SMALL and e not in dims or e == 1):
            return e
        if e not in sizes:
            sizes[e] = sp.Symbol(f"s{len(sizes)}", integer=True, positive=True)
        return sizes[e]

    for t in order:
        if t not in scalars:
            for d in tensors[t].shape:
                size_symbol(d)
    for s in stages:
        for _, n in s.ranges:
            size_symbol(n)
        # a size only a formula names (a running variance's N/(N − 1))
        for v in sorted(sp.sympify(s.expr).free_symbols, key=str):
            if v.is_integer and v.is_positive:
                size_symbol(v)
    symbolic = {e: sym for e, sym in sizes.items() if e.free_symbols}   # N, T: also in formulas

    labels = {sp.Symbol(t): sp.Symbol(v) for t, v in rename.items()}     # indirect reads' tensors

    def canon_stage(s: Stage) -> Stage:
        ix = lambda exprs: tuple(sp.sympify(e).xreplace({**loop_vars, **labels}) for e in exprs)    # noqa: E731
        attrs = dict(s.attrs)
        for key in ("labels", "argmax"):          # tensors a stage names in its attributes
            if key in attrs and attrs[key] in rename:
                attrs[key] = rename[attrs[key]]
        # access symbols renamed in the canonical order too: sympy orders a product's
        # factors by symbol name, so the printed text must not depend on the user's names
        accesses = sorted(s.accesses, key=lambda a: (int(rename[a.tensor][1:]), pattern(a.index)))
        symbols = {a.symbol: sp.Symbol(f"a{j}") for j, a in enumerate(accesses)}
        return replace(
            s, out=rename[s.out], index=ix(s.index), note="",
            # loop indices may appear in a body too (a max-pool adjoint compares the arg-max
            # with the window position p·K + q)
            expr=sp.sympify(s.expr).xreplace({**symbolic, **symbols, **loop_vars}),
            accesses=tuple(replace(a, symbol=symbols[a.symbol], tensor=rename[a.tensor], index=ix(a.index))
                           for a in accesses),
            ranges=tuple((loop_vars[v], size_symbol(n)) for v, n in s.ranges),
            attrs=attrs)

    c_stages = [canon_stage(s) for s in stages]
    if isinstance(item, Group):
        c_item = replace(item, ranges=tuple((loop_vars[v], size_symbol(n)) for v, n in item.ranges),
                         stages=c_stages, scalars={rename[t] for t in scalars},
                         zero_first=[rename[t] for t in item.zero_first],
                         registers={rename[t]: d for t, d in item.registers.items()})
    elif isinstance(item, tuple):
        c_item = tuple(c_stages)
    else:
        c_item = c_stages[0]

    c_tensors = {rename[t]: replace(tensors[t], name=rename[t],
                                    shape=tuple(size_symbol(d) for d in tensors[t].shape)
                                    if t not in scalars else tensors[t].shape)
                 for t in order}
    c_storage, params, arrays, ints = {}, [], [], []
    bases = [b for b in BUFFERS if any(storage[t].base == b for t in order if t not in scalars)]
    params += bases
    arrays += bases
    for t in order:
        if t in scalars:
            continue
        st = storage[t]
        if st.base not in BUFFERS:                     # a data array, passed as it is
            params.append(rename[t])
            arrays.append(st.base)
            c_storage[rename[t]] = Storage(rename[t])
    kind = _kind(c_item, c_tensors)
    for i, t in enumerate(order):
        if t in scalars or storage[t].base not in BUFFERS:
            continue
        st = storage[t]
        o = f"o{i}"
        params.append(o)
        ints.append(fixed_values(st.offset))
        c_storage[rename[t]] = Storage(st.base, sp.Symbol(o, integer=True), st.batch_last)
    for e, sym in sizes.items():
        params.append(str(sym))
        ints.append(fixed_values(e))
    has_draws = any(s.kind == "draw" for s in stages)
    if has_draws:
        # A draw's noise is a function of (step seed, draw, example's place in the global
        # batch, element): `salt` names the draw (a row integer, so kernels stay shared),
        # `seed` and `first` come from the entry. The noise of an example then does not
        # depend on how a batch is split over data-parallel ranks (docs/scaling.md), nor on
        # the target: a CUDA thread per element draws the same number as the CPU's loop.
        (draw,) = [s for s in stages if s.kind == "draw"]
        params.append("salt")
        ints.append(sp.Integer(draw_salt(draw.out)))
        params += ["training", "seed", "first"]

    batch_last = {rename[t] for t in order if t not in scalars and storage[t].batch_last}
    gemm = blas_gemm(c_item, c_tensors, batch_last) if kind == "gemm" else None
    digest = hashlib.sha256(structure(c_item, c_tensors, c_storage, params, dtype).encode()).hexdigest()[:12]
    k = KernelDef(f"{kind}_{digest}", kind, params, c_tensors, c_storage, c_item, dtype, has_draws, gemm)
    return k, arrays, ints


def structure(item, tensors: dict[str, Tensor], storage: dict[str, Storage], params: list[str],
              dtype: str) -> str:
    """A canonical item as text: everything a renderer reads of it, and nothing it does not
    (a tensor's user label, a stage's note, the recurrence it belongs to), so that the same
    structure in any layer or model gets the same name."""
    lines = [dtype, " ".join(params)]
    registers = item.scalars if isinstance(item, Group) else set()      # a register's shape is never printed
    lines += [f"{n}: {t.dtype} {'register' if n in registers else tuple(map(str, t.shape))}"
              for n, t in sorted(tensors.items())]
    lines += [f"{n} @ {st.base} + {st.offset}{' batch-last' if st.batch_last else ''}"
              for n, st in sorted(storage.items())]
    stages = list(item.stages) if isinstance(item, Group) else list(item) if isinstance(item, tuple) else [item]
    if isinstance(item, Group):
        lines.append(f"nest {[(str(v), str(n)) for v, n in item.ranges]} scalars {sorted(item.scalars)} "
                     f"zero {item.zero_first} registers {sorted(item.registers.items())}")
    elif isinstance(item, tuple):
        lines.append("one pass")
    for s in stages:
        attrs = {k: v for k, v in (s.attrs or {}).items() if k in RENDERED_ATTRS}
        lines.append(f"{s.kind} {s.out}{tuple(map(str, s.index))} {'+=' if s.accumulate else '='} "
                     f"{s.reduce} {[(str(v), str(n)) for v, n in s.ranges]} {sp.srepr(s.expr)} "
                     f"{[(str(a.symbol), a.tensor, tuple(map(str, a.index))) for a in s.accesses]} "
                     f"{sorted((k, repr(v)) for k, v in attrs.items())}")
    return "\n".join(lines)


def draw_salt(tensor: str) -> int:
    """A draw's key: 31 bits of a hash of its tensor's name, the same in every plan and build."""
    return int.from_bytes(hashlib.sha256(tensor.encode()).digest()[:4], "little") & 0x7FFFFFFF


def _kind(item, tensors) -> str:
    if isinstance(item, (Group, tuple)):
        return "loop"
    if item.kind in ("draw", "onehot"):
        return item.kind
    return "gemm" if is_gemm(item, tensors) else "loop"


@dataclass
class Branch:
    """One arm of the entry function's dispatch: a kernel bound to its arrays. Every call
    of that kernel on those arrays, in any plan and at any depth, runs through it."""
    id: int
    kernel: str
    arrays: list[str]
    training: bool
    n_ints: int

    def roles(self) -> tuple[str, ...]:
        """The CPU kernel's arguments (`render/numba_cpu.py`), by the entry's names for them."""
        data = [a for a in self.arrays if a not in BUFFERS]
        return (*BUFFERS, *data, "row", *(DRAW_PARAMS if self.training else ()))


@dataclass
class Row:
    branch: int
    node: int                  # the node this row computes (forward from any node), or -1
    ints: list                 # sympy expressions
    notes: list[str]


@dataclass
class Plan:
    """An entry's kernel calls in order, as rows of a table the module fills for N."""
    name: str
    rows: list                 # Row, or Block of Rows (a recurrence: once per step)
    n_forward: int             # entries of `rows` before the gradient part


class Plans:
    """The plans of a module and the branches they share."""

    def __init__(self):
        self.branches: dict[tuple, Branch] = {}
        self.plans: dict[str, Plan] = {}

    def row(self, call: Call, node: int = -1) -> Row:
        b = self.branches.get(call.branch)
        if b is None:
            b = Branch(len(self.branches), call.kernel, call.arrays, call.training, len(call.ints))
            self.branches[call.branch] = b
        return Row(b.id, node, call.ints, call.notes)

    def _rows(self, item, node: int = -1):
        """A Row, or for a recurrence's Block a Block of Rows (repeated per step)."""
        if isinstance(item, Block):
            return Block(item.count, item.reverse, [self.row(c, node) for c in item.items])
        return self.row(item, node)

    def add(self, name: str, forward: list, backward: list = ()) -> Plan:
        """`forward`: calls, or (node index, calls) pairs for the plan over every node."""
        rows = []
        for item in forward:
            if isinstance(item, (Call, Block)):
                rows.append(self._rows(item))
            else:
                node, calls = item
                rows += [self._rows(c, node) for c in calls]
        n_forward = len(rows)
        rows += [self._rows(c) for c in backward]
        self.plans[name] = Plan(name, rows, n_forward)
        return self.plans[name]

    @property
    def width(self) -> int:
        return 2 + max((b.n_ints for b in self.branches.values()), default=0)
