"""The numba.cuda renderer: each kernel of the plan (`plan/kernels.py`) as CUDA, a peer of
`render/numba_cpu.py` over the same target-neutral items.

Each kernel file holds `@cuda.jit` kernels plus a host-side `prepare` function that binds
one plan row (arrays, offsets, sizes) and returns a zero-argument launcher, so a plan is a
list of launchers built once per batch size (`runtime/cuda.py`). Loop bodies are the same
text as the CPU's (`render/loops.py`); the scalar helpers come from `render/helpers.py`.

How a loop nest is parallelised, without atomics:
- its *parallel* indices P are those every stored tensor of the nest is indexed by
  (as `i` or `i + c`): two threads with different P values never write the same element;
- the other indices S run inside a thread (*thread mode*, grid-stride over P), or, when
  every store is either a reduction over exactly S or an element of the full index
  space, split over a block's threads with a shared-memory reduction at the end
  (*block mode*, one block per P element). `prepare` picks block mode when S is large.
A GEMM is a call of the model's GEMM provider (`runtime/cuda_gemm.py`: cuBLAS through
nvmath-python, which works under stream capture; CuPy; numpy under the simulator) on the
same buffers, from the plan's `BlasGemm` (operands in storage and their transposes); draws are the CPU's counter-based draws, one thread per
element, so one seed gives the same noise on both targets; the optimiser update (the rule
of `plan/optimizers.py`) is a norm kernel, an update kernel and a one-thread finish kernel,
all reading the step count from device memory.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import sympy as sp

from ..calculus.formulas import Stage
from ..plan.fuse import Group
from ..plan.kernels import BUFFERS, KernelDef
from ..plan.optimizers import UpdateKernel, element_lines
from . import file_name
from .helpers import helpers_text, used
from .loops import Emitter
from .printer import NumbaPrinter, index_text

NAME = "cuda"
BASE_CLASS = "CudaModel"

TPB = 256            # threads per block; block reductions assume a power of two ≤ 256


@dataclass
class CudaFile:
    """One kernel of the plan as a CUDA kernel file's body."""
    name: str                 # cu_<kind>_<hash of the plan kernel's name and this renderer>
    kind: str
    text: str                 # device kernels + `prepare`
    signatures: dict          # device kernel -> numba signature text (for --ptx)


# ---------------------------------------------------------------- the kernels
def available() -> bool:
    """numba-cuda (the `cuda` extra) is installed: `numba.cuda` and its NVVM for --ptx."""
    import importlib.util
    return importlib.util.find_spec("numba_cuda") is not None


def render_kernel(k: KernelDef, dtype: str) -> CudaFile:
    """The kernel's CUDA file body (its name: `file_name(NAME, "cu_", k)`)."""
    if k.kind == "gemm":
        body, sigs = _gemm(k), {}
    elif k.kind == "draw":
        body, sigs = _draw(k, dtype)
    elif k.kind == "onehot":
        body, sigs = _onehot(k, dtype)
    else:
        body, sigs = _LoopKernel(k, dtype).render()
    return CudaFile(file_name(NAME, "cu_", k), k.kind, body, sigs)


def _views(k: KernelDef) -> list[str]:
    """The 1-D slices of the flat buffers a loop kernel indexes (as on the CPU)."""
    return [f"{t} = {st.base}[{st.offset}:{st.offset} + {' * '.join(str(d) for d in k.tensors[t].shape) or '1'}]"
            for t, st in k.storage.items() if t in k.flat]


def _array_type(k: KernelDef, param: str, dtype: str) -> str:
    if param in BUFFERS:
        return f"{dtype}[::1]"
    t = k.tensors[param]
    nd = max(len(t.shape), 1)
    base = "int64" if t.dtype == "int" else dtype
    return f"{base}[{', '.join([':'] * (nd - 1) + ['::1'])}]"


def _signature(k: KernelDef, params: list[str], dtype: str, extra: list[str] = ()) -> str:
    types = [_array_type(k, p, dtype) if (p in BUFFERS or p in k.tensors) else "int64" for p in params]
    return f"void({', '.join(types + list(extra))})"


def _gemm_args(k: KernelDef) -> str:
    """The arguments of a GEMM in row-major form: `a_t, b_t, m, n, k, a, its offset, b, its
    offset, out, its offset, accumulate` (a transposed output is computed as outᵀ = bᵀ·aᵀ)."""
    g = k.gemm.row_major()
    size = lambda e: index_text([sp.sympify(e)])    # noqa: E731

    def where(t):
        st = k.storage[t]
        return f"{st.base}, {st.offset}" if st.offset is not None else f"{t}, 0"

    return (f"{int(g.a_t)}, {int(g.b_t)}, {size(g.m)}, {size(g.n)}, {size(g.k)}, "
            f"{where(g.a)}, {where(g.b)}, {where(g.out)}, {1 if g.accumulate else 0}")


def _gemm_note(k: KernelDef) -> str:
    return f"# {k.gemm.out} {'+=' if k.gemm.accumulate else '='} {k.gemm.a} · {k.gemm.b}"


def _gemm(k: KernelDef) -> str:
    """The plan's BLAS form bound to this row by the model's GEMM provider (`ctx.gemm`:
    cuBLAS through nvmath, CuPy, or numpy under the simulator; runtime/cuda_gemm.py)."""
    lines = [_gemm_note(k), f"def prepare(ctx, {', '.join(k.params)}):", f"    return ctx.gemm({_gemm_args(k)})"]
    return "\n".join(lines) + "\n"


def _flat_size(k: KernelDef, name: str) -> str:
    return " * ".join(str(d) for d in k.tensors[name].shape) or "1"


def _draw(k: KernelDef, dtype: str):
    """The CPU's counter-based draw (`render/loops.py`): element c, counted in (example,
    feature) order whatever the storage, of example `first + n` of the global batch draws
    from `_mix(key + c·γ)`, key = f(step seed, draw's salt); one thread per element. The
    step seed and `first` are read from the device (`ctx.draw_key`), written before a run."""
    s: Stage = k.item
    a = s.attrs
    out = s.out
    shape = [index_text([d]) for d in k.tensors[out].shape]
    per_example = " * ".join(f"({d})" for d in shape[1:]) or "1"
    size = " * ".join(f"({d})" for d in shape)
    if a["dist"] == "normal":
        draw = "_normal(dk, base + c)"
    else:                     # keep with probability 1 - p, scaled
        draw = f"{a['scale']!r} if _uniform(dk, base + c) >= {a['p']!r} else 0.0"
    if out in k.batch_last:   # stored (K, N): element (n, j) at j·N + n
        at = ["        n = c // (" + shape[1] + ")", f"        at = (c - n * ({shape[1]})) * ({shape[0]}) + n"]
    else:
        at = ["        at = c"]
    params = [p for p in k.params if p not in ("training", "seed", "first")]
    cond = "True" if a.get("always") else "training != 0"
    kernel = ["@cuda.jit(cache=True)",
              f"def _draw({', '.join(params)}, training, key):"] + ["    " + v for v in _views(k)] + [
              "    dk = _draw_key(key[0], salt)",
              f"    base = key[1] * ({per_example})",
              f"    for c in range(cuda.grid(1), {size}, cuda.gridsize(1)):"] + at + [
              f"        if {cond}:",
              f"            {out}[at] = {draw}",
              "        else:",
              f"            {out}[at] = {a['neutral']!r}"]
    prep = [f"def prepare(ctx, {', '.join(params)}, training):",
            f"    return ctx.launch(_draw, ctx.blocks({size}), ({', '.join(params)}, int(training), ctx.draw_key))"]
    sig = _signature(k, params, dtype, ["int64", "int64[::1]"])
    return "\n".join(kernel) + "\n\n\n" + "\n".join(prep) + "\n", {"_draw": sig}


def _onehot(k: KernelDef, dtype: str):
    s: Stage = k.item
    emit = Emitter(k.tensors, dtype, k.batch_last, k.flat)
    n, c, t = sp.symbols("n c t_", integer=True)
    labels = s.attrs["labels"]
    shape = [str(d) for d in k.tensors[s.out].shape]
    if len(shape) == 3:                  # per-step labels (N, T): one row per (example, step)
        rows, cols = f"{shape[0]} * {shape[1]}", shape[2]
        # integer division as names: sympy's floor/Mod would print as float arithmetic
        target = emit.ref(s.out, (sp.Symbol(f"(n // {shape[1]})", integer=True),
                                  sp.Symbol(f"(n % {shape[1]})", integer=True), c))
        label = f"{labels}[n // {shape[1]}, n % {shape[1]}]"
    else:
        rows, cols = shape
        target, label = emit.ref(s.out, (n, c)), f"{labels}[n]"
    kernel = ["@cuda.jit(cache=True)",
              f"def _onehot({', '.join(k.params)}):"] + ["    " + v for v in _views(k)] + [
              f"    for t in range(cuda.grid(1), ({rows}) * {cols}, cuda.gridsize(1)):",
              f"        n = t // {cols}",
              f"        c = t - n * {cols}",
              f"        {target} = F(1.0) if {label} == c else F(0.0)"]
    prep = [f"def prepare(ctx, {', '.join(k.params)}):",
            f"    return ctx.launch(_onehot, ctx.blocks(({rows}) * {cols}), ({', '.join(k.params)},))"]
    return "\n".join(kernel) + "\n\n\n" + "\n".join(prep) + "\n", {"_onehot": _signature(k, k.params, dtype)}


def _injective(s: Stage) -> list:
    """Loop indices that pick out distinct elements of the stage's target: components
    `i` or `i + c` (c free of loop indices) of its index."""
    loop = {v for v, _ in s.ranges}
    out = []
    for e in s.index:
        e = sp.sympify(e)
        for v in e.free_symbols & loop:
            if not ((e - v).free_symbols & loop) and v not in out:
                out.append(v)
    return out


class _LoopKernel:
    """A fused group or a lone loop stage as a thread-mode and (if it qualifies) a
    block-mode kernel."""

    def __init__(self, k: KernelDef, dtype: str):
        self.k, self.dtype = k, dtype
        self.emit = Emitter(k.tensors, dtype, k.batch_last, k.flat)
        self.emit.taken |= set(k.params)
        item = k.item
        if isinstance(item, Group):
            self.stages, self.ranges, self.scalars = list(item.stages), list(item.ranges), set(item.scalars)
            self.lone = False
        elif isinstance(item, tuple):      # stages over one space the CPU runs in one pass
            self.stages, self.ranges, self.scalars = list(item), list(item[0].ranges), set()
            self.lone = False
        else:
            self.stages, self.ranges, self.scalars = [item], list(item.ranges), set()
            self.lone = True
        loop = [v for v, _ in self.ranges]
        stored = [s for s in self.stages if s.out not in self.scalars]
        par = set(loop)
        for s in stored:
            par &= set(_injective(s))
        self.par = [v for v in loop if v in par]          # in loop (memory) order
        self.ser = [v for v in loop if v not in par]
        self.size = dict(self.ranges)
        # a reduction into a register: its target is indexed by exactly the parallel indices
        self.register = {}
        for s in stored:
            if s.reduce_vars and s.plain and set(s.out_vars) == par:
                self.register[s.out] = self.emit.var(f"{s.out}_acc")
        full = set(loop)
        # a block reduction keeps no position: an arg-max reduces in one thread
        self.block_ok = bool(self.ser) and not any(s.reduce == "argmax" for s in stored) and all(
            s.out in self.register or (set(_injective(s)) == full and not s.reduce_vars) for s in stored)
        self.zero = [s.out for s in stored
                     if s.out not in self.register and s.reduce_vars and s.plain and not s.accumulate]

    # the text of one statement of the innermost body
    def _stmt(self, s: Stage) -> list[str]:
        p = self.emit._printer(s, self.scalars)
        body = p.doprint(s.expr)
        if s.out in self.scalars:
            return [f"{s.out} = {body}"]
        if s.out in self.register:
            acc = self.register[s.out]
            if s.reduce == "max":
                return [f"{acc} = max({acc}, {body})"]
            if s.reduce == "argmax":             # strict >: the first maximum wins, as on the CPU
                return [f"if {body} > {acc}_top:", f"    {acc}_top = {body}",
                        f"    {acc} = {p.doprint(s.reduced_position)}"]
            if s.reduce == "logsumexp":
                return [f"{acc} += _exp({body} - {acc}_top)"]
            return [f"{acc} += {body}"]
        if self.lone and (not s.reduce_vars or not s.plain):
            op = "+=" if s.accumulate else "="
        else:
            op = "+=" if (s.reduce_vars or s.accumulate) else "="
        return [f"{self.emit.ref(s.out, s.index)} {op} {body}"]

    def _decompose(self, flat: str, vars_: list) -> list[str]:
        """`flat` (an int) split into `vars_`, the last varying fastest (coalesced)."""
        if not vars_:
            return []
        lines, rest = [], flat
        for j, v in enumerate(reversed(vars_)):
            name = self.emit.var(v)
            n = index_text([self.size[v]])
            if j == len(vars_) - 1:
                lines.append(f"{name} = {rest}")
            else:
                lines.append(f"{name} = {rest} % ({n})")
                lines.append(f"{rest}_ = {rest} // ({n})")
                rest = f"{rest}_"
        return lines

    def _total(self, vars_) -> str:
        return " * ".join(f"({index_text([self.size[v]])})" for v in vars_) or "1"

    def _zero_lit(self) -> str:
        return NumbaPrinter({}, self.dtype)._lit("0.0")

    def _reg_init(self, s: Stage) -> str:
        acc = self.register[s.out]
        if s.reduce == "argmax":
            return f"{acc}, {acc}_top = {self._zero_lit()}, -math.inf"
        return f"{acc} = -math.inf" if s.reduce == "max" else f"{acc} = {self._zero_lit()}"

    def _reg_store(self, s: Stage, value: str) -> str:
        op = "+=" if s.accumulate else "="
        return f"{self.emit.ref(s.out, s.index)} {op} {value}"

    def _register_stages(self):
        return [s for s in self.stages if s.out in self.register]

    def _lse_stages(self):
        return [s for s in self._register_stages() if s.reduce == "logsumexp"]

    def _thread_kernel(self, device: str | None = None) -> list[str]:
        """The kernel of one thread per parallel element (grid-stride); or, named `device`, the
        same as a device function over one block's threads (`_tid` of `_nt`) for a scan kernel,
        which zeroes its memory reductions' targets first."""
        k = self.k
        if device is None:
            L = ["@cuda.jit(cache=True, fastmath=FASTMATH)", f"def _thread({', '.join(k.params)}):"]
            first, stride = "cuda.grid(1)", "cuda.gridsize(1)"
        else:
            L = ["@cuda.jit(device=True, inline=True)", f"def {device}({', '.join(k.params)}, _tid, _nt):"]
            first, stride = "_tid", "_nt"
        L += ["    " + v for v in _views(k)]
        if device is not None and self.zero:
            for t in self.zero:
                st = k.storage[t]
                L += [f"    for _z in range(_tid, {_flat_size(k, t)}, _nt):",
                      f"        {st.base}[{st.offset} + _z] = {self._zero_lit()}"]
            L.append("    cuda.syncthreads()")
        L.append(f"    for _p in range({first}, {self._total(self.par)}, {stride}):")
        ind = "        "
        L += [ind + ln for ln in self._decompose("_p", self.par)]
        for s in self._lse_stages():           # first pass: the maximum
            acc = self.register[s.out]
            L.append(ind + f"{acc}_top = -math.inf")
            L += self._serial_loops(ind, [f"{acc}_top = max({acc}_top, {self.emit._printer(s).doprint(s.expr)})"])
        L += [ind + self._reg_init(s) for s in self._register_stages()]
        body = [ln for s in self.stages for ln in self._stmt(s)]
        L += self._serial_loops(ind, body)
        for s in self._register_stages():
            acc = self.register[s.out]
            value = f"{acc}_top + math.log({acc})" if s.reduce == "logsumexp" else acc
            L.append(ind + self._reg_store(s, value))
        return L

    def _serial_loops(self, ind: str, body: list[str]) -> list[str]:
        L, depth = [], ind
        for v in self.ser:
            L.append(depth + f"for {self.emit.var(v)} in range({index_text([self.size[v]])}):")
            depth += "    "
        return L + [depth + b for b in body]

    def _block_kernel(self) -> list[str]:
        k = self.k
        L = ["@cuda.jit(cache=True, fastmath=FASTMATH)",
             f"def _block({', '.join(k.params)}):"]
        L += ["    " + v for v in _views(k)]
        L += [f"    _sh = cuda.shared.array({TPB}, DT)",
              "    _tid = cuda.threadIdx.x",
              f"    for _b in range(cuda.blockIdx.x, {self._total(self.par)}, cuda.gridDim.x):"]
        ind = "        "
        L += [ind + ln for ln in self._decompose("_b", self.par)]
        inner = ind + "    "
        ser_total = self._total(self.ser)
        for s in self._lse_stages():
            acc = self.register[s.out]
            L.append(ind + f"{acc}_top = -math.inf")
            L.append(ind + f"for _s in range(_tid, {ser_total}, cuda.blockDim.x):")
            L += [inner + ln for ln in self._decompose("_s", self.ser)]
            L.append(inner + f"{acc}_top = max({acc}_top, {self.emit._printer(s).doprint(s.expr)})")
            L.append(ind + f"{acc}_top = _block_max(_sh, {acc}_top)")
        L += [ind + self._reg_init(s) for s in self._register_stages()]
        L.append(ind + f"for _s in range(_tid, {ser_total}, cuda.blockDim.x):")
        L += [inner + ln for ln in self._decompose("_s", self.ser)]
        L += [inner + ln for s in self.stages for ln in self._stmt(s)]
        for s in self._register_stages():
            acc = self.register[s.out]
            fn = "_block_max" if s.reduce == "max" else "_block_sum"
            L.append(ind + f"{acc} = {fn}(_sh, {acc})")
        L.append(ind + "if _tid == 0:")
        for s in self._register_stages():
            acc = self.register[s.out]
            value = f"{acc}_top + math.log({acc})" if s.reduce == "logsumexp" else acc
            L.append(ind + "    " + self._reg_store(s, value))
        L.append(ind + "cuda.syncthreads()")
        return L

    def render(self):
        k = self.k
        parts = ["\n".join(self._thread_kernel())]
        sigs = {"_thread": _signature(k, k.params, self.dtype)}
        if self.block_ok:
            parts.append("\n".join(self._block_kernel()))
            sigs["_block"] = sigs["_thread"]
        par, ser = self._total(self.par), self._total(self.ser)
        prep = [f"def prepare(ctx, {', '.join(k.params)}):",
                f"    args = ({', '.join(k.params)},)",
                "    launches = []"]
        for t in self.zero:                 # reduction targets summed in memory start at 0
            st = k.storage[t]
            prep.append(f"    launches.append(ctx.zero({st.base}, {st.offset}, {_flat_size(k, t)}))")
        if self.block_ok:
            prep += [f"    if {ser} >= ctx.block_min:        # a long reduction: one block per output",
                     f"        launches.append(ctx.launch(_block, ctx.grid_blocks({par}), args))",
                     "    else:",
                     f"        launches.append(ctx.launch(_thread, ctx.blocks({par}), args))"]
        else:
            prep += [f"    launches.append(ctx.launch(_thread, ctx.blocks({par}), args))"]
        prep += ["    if len(launches) == 1:",
                 "        return launches[0]",
                 "    return lambda: [f() for f in launches]"]
        text = "\n\n\n".join(parts + ["\n".join(prep)]) + "\n"
        if self.block_ok:
            text = _BLOCK_REDUCE + "\n\n" + text
        return text, sigs


# a tree reduction over the block in shared memory (blockDim is a power of two), once per
# combining operation
_BLOCK_TREE = '''\
@cuda.jit(device=True, inline=True)
def {name}(sh, x):
    t = cuda.threadIdx.x
    sh[t] = x
    cuda.syncthreads()
    s = cuda.blockDim.x // 2
    while s > 0:
        if t < s:
            sh[t] = {combine}
        cuda.syncthreads()
        s //= 2
    r = sh[0]
    cuda.syncthreads()
    return r
'''
_BLOCK_REDUCE = (_BLOCK_TREE.format(name="_block_sum", combine="sh[t] + sh[t + s]") + "\n\n"
                 + _BLOCK_TREE.format(name="_block_max", combine="max(sh[t], sh[t + s])"))


# ------------------------------------------------------------- recurrences
# threads of a recurrence's kernel (one block: its barrier is `cuda.syncthreads`); 256 leaves
# a thread up to 255 registers, so any cell's kernel launches
SCAN_THREADS = 256

# C[m, n] (+)= op(A)·op(B) over one block's threads, row-major with the plan's transposes (as
# `ctx.gemm`): a recurrence's step product is small (N × 4H by H), so no tiling
_DEVICE_GEMM = '''\
@cuda.jit(device=True, inline=True)
def _gemm(a_t, b_t, m, n, k, a, oa, b, ob, c, oc, acc, _tid, _nt):
    for e in range(_tid, m * n, _nt):
        i = e // n
        j = e - i * n
        s = F(0.0)
        for p in range(k):
            s += a[oa + (p * m + i if a_t else i * k + p)] * b[ob + (j * k + p if b_t else p * n + j)]
        c[oc + e] = s + c[oc + e] if acc else s
'''


def scan_branches(spec) -> list:
    """The plan branches of the recurrences a scan kernel can run: those whose every call is
    a loop nest or a GEMM (a draw or a one-hot in a cell keeps its launches)."""
    by_id = {b.id: b for b in spec.plans.branches.values()}
    out = {}
    for plan in spec.plans.plans.values():
        for row in plan.rows:
            if getattr(row, "items", None) is None:
                continue
            branches = [by_id[r.branch] for r in row.items]
            if all(spec.kernels[b.kernel].kind in ("loop", "gemm") and not b.training for b in branches):
                out.update({b.id: b for b in branches})
    return [out[i] for i in sorted(out)]


def render_scan(spec, branches) -> tuple[CudaFile, list]:
    """One kernel that runs a recurrence's rows, every step of it, in one block: each row's
    kernel as a device function over the block's threads, a barrier between rows. A
    recurrence of T steps is then one launch instead of one per kernel per step (its input
    projections and parameter gradients are GEMMs outside it, over all steps at once).
    (the file, the arrays its kernel takes after the table and its row range)"""
    dtype = spec.dtype
    arrays = list(dict.fromkeys(a for b in branches for a in b.arrays))
    canon = {a: f"a{i}" for i, a in enumerate(arrays)}
    devices, calls, types = [], [], {}
    fn_of = {}
    for b in branches:
        k = spec.kernels[b.kernel]
        if b.kernel not in fn_of:
            fn = fn_of[b.kernel] = f"_k{len(fn_of)}"
            if k.kind == "gemm":
                devices.append("\n".join([_gemm_note(k), "@cuda.jit(device=True, inline=True)",
                                          f"def {fn}({', '.join(k.params)}, _tid, _nt):",
                                          f"    _gemm({_gemm_args(k)}, _tid, _nt)"]))
            else:
                devices.append("\n".join(_LoopKernel(k, dtype)._thread_kernel(device=fn)))
        for a, param in zip(b.arrays, k.params):
            types.setdefault(a, _array_type(k, param, dtype))
        ints = ", ".join(f"_table[_r, {2 + i}]" for i in range(b.n_ints))
        args = ", ".join([canon[a] for a in b.arrays] + ([ints] if ints else []) + ["_tid", "_nt"])
        calls.append((b.id, f"{fn_of[b.kernel]}({args})"))
    params = ", ".join(canon[a] for a in arrays)
    body = ["@cuda.jit(cache=True, fastmath=FASTMATH)",
            f"def _scan(_table, _r0, _r1, {params}):",
            "    _tid = cuda.threadIdx.x",
            "    _nt = cuda.blockDim.x",
            "    for _r in range(_r0, _r1):",
            "        _b = _table[_r, 0]"]
    for i, (branch, call) in enumerate(calls):
        body += [f"        {'if' if i == 0 else 'elif'} _b == {branch}:", f"            {call}"]
    body.append("        cuda.syncthreads()")
    prep = ["def prepare(ctx, table, r0, r1, arrays):",
            "    return ctx.launch(_scan, 1, (table, r0, r1) + tuple(arrays), threads=ctx.scan_threads)"]
    text = "\n\n\n".join([_DEVICE_GEMM.rstrip()] + devices + ["\n".join(body), "\n".join(prep)]) + "\n"
    sig = f"void(int64[:, ::1], int64, int64, {', '.join(types[a] for a in arrays)})"
    digest = hashlib.sha256(f"{dtype}\0{text}".encode()).hexdigest()[:12]
    return CudaFile(f"cu_scan_{digest}", "scan", text, {"_scan": sig}), arrays


# ------------------------------------------------------------- optimisers
def render_update(u: UpdateKernel) -> CudaFile:
    """Three kernels: the squared norm of the gradient over the loss's ranges (block sums,
    one atomic per block), the update of every element by the rule of `plan/optimizers.py`
    (skipped when the loss or the norm is not finite, or when an earlier step of a `fit`
    was not), and a one-thread finish that advances the step count and records the loss.
    No host synchronisation."""
    dtype = u.dtype
    hyper = "".join(f", {h}" for h in u.rule.hyper)
    setup = "\n".join("    " + ln for ln in ("lr = F(lr)",) + u.rule.setup)
    per_range = "\n".join("        " + ln for ln in ("decays = ranges[r, 2]",) + u.rule.range_setup)
    body = "\n".join("            " + ln for ln in
                     element_lines(u.rule, {"p": "theta[i]", "s1": "s1[i]", "s2": "s2[i]"}))
    text = _BLOCK_REDUCE + f'''

@cuda.jit(cache=True)
def _norm(grad, ranges, red):
    sh = cuda.shared.array({TPB}, DT)
    acc = F(0.0)
    for r in range(ranges.shape[0]):
        for i in range(ranges[r, 0] + cuda.grid(1), ranges[r, 1], cuda.gridsize(1)):
            acc += grad[i] * grad[i]
    acc = _block_sum(sh, acc)
    if cuda.threadIdx.x == 0:
        cuda.atomic.add(red, 0, acc)


@cuda.jit(cache=True)
def _update(theta, grad, s1, s2, ranges, ws, value_at, red, state, knobs, sticky, total{hyper}):
    # knobs: the learning rate and clip_norm, on the device (a captured step reads them there)
    lr, clip_norm = knobs[0], knobs[1]
    value = ws[value_at]
    norm2 = red[0]
    if not (math.isfinite(value) and math.isfinite(norm2)):
        return                          # parameters keep their last finite values
    if sticky != 0 and state[1] != 0:
        return                          # an earlier step of this fit was not finite
    t = state[0] + 1
    scale = F(1.0)
    if clip_norm > 0.0 and math.sqrt(norm2) > clip_norm:
        scale = F(clip_norm / math.sqrt(norm2))
{setup}
    for r in range(ranges.shape[0]):
{per_range}
        for i in range(ranges[r, 0] + cuda.grid(1), ranges[r, 1], cuda.gridsize(1)):
            g = grad[i] * scale
{body}


@cuda.jit(cache=True)
def _finish(ws, value_at, red, state, sticky, counter, history):
    # counter: the model's steps so far; its loss goes to slot counter % len(history)
    value = ws[value_at]
    history[counter[0] % history.shape[0]] = value
    counter[0] += 1
    ok = math.isfinite(value) and math.isfinite(red[0])
    if sticky != 0 and state[1] != 0:
        ok = False
    if ok:
        state[0] += 1                   # the step count Adam's bias correction reads
    elif sticky != 0 and state[1] == 0:
        state[1] = counter[0]           # the first non-finite step of a fit
    red[0] = 0.0


def prepare(ctx, theta, grad, s1, s2, ranges, ws, value_at, red, state, knobs, sticky, total, hyper):
    blocks = ctx.grid_blocks(1 << 30)
    norm = ctx.launch(_norm, blocks, (grad, ranges, red))
    update = ctx.launch(_update, blocks, (theta, grad, s1, s2, ranges, ws, value_at, red, state, knobs, sticky,
                                          total) + tuple(hyper))
    finish = ctx.launch(_finish, 1, (ws, value_at, red, state, sticky, ctx.counter, ctx.history), threads=1)

    def go():
        norm()
        update()
        finish()
    return go
'''
    buf = f"{dtype}[::1]"
    n_hyper = len(u.rule.hyper)
    sigs = {"_norm": f"void({buf}, int64[:, ::1], {buf})",
            "_update": f"void({buf}, {buf}, {buf}, {buf}, int64[:, ::1], {buf}, int64, {buf}, int64[::1], "
                       f"float64[::1], int64, int64{', float64' * n_hyper})",
            "_finish": f"void({buf}, int64, {buf}, int64[::1], int64, int64[::1], {buf})"}
    return CudaFile(file_name(NAME, "cu_", u), "update", text, sigs)


# ------------------------------------------------------------- the module
def render(spec, env, version: str) -> tuple[dict, dict, dict]:
    """(kernel files {name: text}, kernel names by kind, the module's target context: the
    plan branches' and the losses' update kernels)."""
    dtype = spec.dtype
    names, kinds, files, by_kind = {}, {}, {}, {}
    kernel_template = env.get_template("kernel_cuda.py.j2")

    def add(ck: CudaFile):
        if ck.name not in files:
            _, helpers = helpers_text(NAME, dtype, used(ck.text, NAME, dtype))
            files[ck.name] = kernel_template.render(version=version, k=ck, dtype=dtype, helpers=helpers)
            by_kind.setdefault(ck.kind, []).append(ck.name)

    for name, k in spec.kernels.items():
        ck = render_update(k) if isinstance(k, UpdateKernel) else render_kernel(k, dtype)
        names[name], kinds[name] = ck.name, ck.kind
        add(ck)
    branches = {b.id: (names[b.kernel], kinds[b.kernel], b.arrays, b.n_ints, b.training)
                for b in spec.plans.branches.values()}
    updates = {l.name: (names[l.update_kernel], tuple(float(a) for a in l.update_args)) for l in spec.losses}
    scan = None
    in_scans = scan_branches(spec)
    if in_scans:
        ck, arrays = render_scan(spec, in_scans)
        add(ck)
        scan = (ck.name, tuple(b.id for b in in_scans), tuple(arrays))
    return files, by_kind, {"branches": branches, "updates": updates, "scan": scan}


def write_ptx(kernel_dir, names, out_dir, cc=(9, 0)) -> list:
    """Compile every device kernel of the named kernel files for `cc` with numba-cuda's
    compile_ptx (NVVM from the toolkit wheels; no GPU needed) and write NAME.FUNC.ptx."""
    import importlib.util
    from pathlib import Path

    from numba import cuda, types
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    namespace = dict(types.__dict__)
    written = []
    for name in names:
        if not name.startswith("cu_"):
            continue                 # the runtime's files
        spec = importlib.util.spec_from_file_location(f"nndsl_ptx_{name}", Path(kernel_dir) / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        for func, sig in module.SIGNATURES.items():
            ptx, _ = cuda.compile_ptx(getattr(module, func).py_func, eval(sig, {}, namespace),
                                      cc=cc, fastmath=bool(module.FASTMATH))
            path = out_dir / f"{name}.{func}.ptx"
            path.write_text(ptx)
            written.append(path)
    return written


def module_block(spec, target_context: dict, source_file: str) -> str:
    """The CUDA module's kernel tables and `class Model`."""
    branches = "\n".join(f"    {i}: {v!r}," for i, v in target_context["branches"].items())
    updates = "\n".join(f"    {k!r}: {v!r}," for k, v in target_context["updates"].items())
    return f'''
# plan branch: (its CUDA kernel file, kind, the arrays it takes, its integers, takes `training`)
BRANCHES = {{
{branches}
}}
# loss: (its optimiser update's kernel file, the update's hyperparameters)
UPDATES = {{
{updates}
}}
# the recurrences' kernel: (its file, the branches it runs, the arrays it takes), or None
SCAN = {target_context["scan"]!r}


class Model({BASE_CLASS}):
    """The compiled network on a CUDA GPU (dtype {spec.dtype}); arrays are named as in {source_file}
    and may be numpy arrays (copied to the device) or device arrays. See the runtime's
    CudaModel for the API."""
    tables = TABLES
    kernel_dir = KERNEL_DIR
    branches = BRANCHES
    updates = UPDATES
    scan = SCAN
'''
