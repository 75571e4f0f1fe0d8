"""The numba.cuda renderer: each canonical kernel of the plan (`KernelDef.item`) as CUDA.

The CPU emitter (`plan/lower.py`) prints loop nests; this one prints the same items as
`@cuda.jit` kernels plus a host-side `prepare` function that binds one plan row (arrays,
offsets, sizes) and returns a zero-argument launcher, so a plan is a list of launchers
built once per batch size (and, later, one CUDA graph).

How a loop nest is parallelised, without atomics:
- its *parallel* indices P are those every stored tensor of the nest is indexed by
  (as `i` or `i + c`): two threads with different P values never write the same element;
- the other indices S run inside a thread (*thread mode*, grid-stride over P), or, when
  every store is either a reduction over exactly S or an element of the full index
  space, split over a block's threads with a shared-memory reduction at the end
  (*block mode*, one block per P element). `prepare` picks block mode when S is large.
A GEMM is a call of the GEMM provider (`xp.matmul`, CuPy on the device, numpy only under
the simulator) on views of the same buffers with the transposes the plan chose; draws use
numba's xoroshiro128p states; the optimiser update is a norm kernel, an update kernel and
a one-thread finish kernel, all reading the step count from device memory.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import sympy as sp

from ..calculus.formulas import Stage
from ..plan.fuse import Group
from ..plan.kernels import BUFFERS, KernelDef
from ..plan.lower import Emitter
from .printer import NumbaPrinter, index_text

TPB = 256            # threads per block; block reductions assume a power of two ≤ 256


@dataclass
class CudaKernel:
    name: str                 # cu_<kind>_<hash of this text>
    kind: str
    text: str                 # the kernel file's body (device kernels + `prepare`)
    signatures: dict          # device kernel -> numba signature text (for --ptx)
    helpers: set


# ------------------------------------------------------------------ helpers
_HELPERS = {
    "_tanh": "return math.tanh(x)",
    "_exp": "return math.exp(x)",
    "_sigmoid": ("if x >= 0:\n    return F(1.0) / (F(1.0) + math.exp(-x))\n"
                 "e = math.exp(x)\nreturn e / (F(1.0) + e)"),
    "_softplus": "return max(x, F(0.0)) + math.log1p(math.exp(-abs(x)))",
}


def helpers_text(used) -> str:
    out = []
    for name in ("_tanh", "_exp", "_sigmoid", "_softplus"):
        if name in used:
            body = "\n".join("    " + line for line in _HELPERS[name].splitlines())
            out.append(f"@cuda.jit(device=True, inline=True)\ndef {name}(x):\n{body}\n")
    return "\n\n".join(out)


def _helpers_used(text: str) -> set:
    return {h for h in _HELPERS if f"{h}(" in text}


# ---------------------------------------------------------------- the kernels
def render_kernel(k: KernelDef, dtype: str) -> CudaKernel:
    if k.kind == "gemm":
        body, sigs = _gemm(k), {}
    elif k.kind == "draw":
        body, sigs = _draw(k, dtype)
    elif k.kind == "onehot":
        body, sigs = _onehot(k, dtype)
    else:
        body, sigs = _LoopKernel(k, dtype).render()
    digest = hashlib.sha256(f"cuda\n{dtype}\n{body}".encode()).hexdigest()[:12]
    return CudaKernel(f"cu_{k.kind}_{digest}", k.kind, body, sigs, _helpers_used(body))


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


def _top_level_args(text: str) -> list[str]:
    """`a.reshape((m, n)), b, c` -> its three arguments (commas inside brackets kept)."""
    args, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += ch in "([" and 1 or (ch in ")]" and -1 or 0)
        if ch == "," and depth == 0:
            args.append(text[start:i].strip())
            start = i + 1
    return args + [text[start:].strip()]


def _gemm(k: KernelDef) -> str:
    """Views of the provider's arrays made once; `go` is the cuBLAS call."""
    calls = []
    for line in k.body:
        if line.startswith("#"):
            continue
        m = re.fullmatch(r"np\.dot\((.+)\)", line)
        if m and len(_top_level_args(m[1])) == 3:
            a, b, out = _top_level_args(m[1])
            calls.append(f"xp.matmul({a}, {b}, out={out})")
            continue
        m = re.fullmatch(r"(\S+) \+= np\.dot\((.+)\)", line)
        if not m or len(_top_level_args(m[2])) != 2:
            raise ValueError(f"unexpected GEMM line {line!r}")
        a, b = _top_level_args(m[2])
        calls.append(f"xp.add({m[1]}, xp.matmul({a}, {b}), out={m[1]})")
    lines = [f"def prepare(ctx, {', '.join(k.params)}):",
             "    xp = ctx.xp"] + ["    " + v for v in k.views] + \
        ["", "    def go():"] + ["        " + c for c in calls] + ["", "    return go"]
    return "\n".join(lines) + "\n"


def _flat_size(k: KernelDef, name: str) -> str:
    return " * ".join(str(d) for d in k.tensors[name].shape) or "1"


_XOROSHIRO = '''\
# xoroshiro128+ as in numba.cuda.random (its state layout; the module seeds the states from
# the model's seed), written as CUDA device functions: numba's own are CPU-jit functions that
# compile_ptx cannot build without a driver, and every kernel here must build to PTX.
@cuda.jit(device=True, inline=True)
def _next(states, i):
    s0 = states[i]["s0"]
    s1 = states[i]["s1"]
    result = s0 + s1
    s1 ^= s0
    states[i]["s0"] = ((s0 << uint32(55)) | (s0 >> uint32(9))) ^ s1 ^ (s1 << uint32(14))
    states[i]["s1"] = (s1 << uint32(36)) | (s1 >> uint32(28))
    return result


@cuda.jit(device=True, inline=True)
def _uniform(states, i):
    # in (0, 1]: the top 53 (float64) or 24 (float32) bits
    return F((_next(states, i) >> uint32(BITS_SHIFT)) + 1) * F(ULP)


@cuda.jit(device=True, inline=True)
def _normal(states, i):
    # Box-Muller, as numba's xoroshiro128p_normal
    u1 = _uniform(states, i)
    u2 = _uniform(states, i)
    return math.sqrt(F(-2.0) * math.log(u1)) * math.cos(F(2.0 * math.pi) * u2)
'''


def _draw(k: KernelDef, dtype: str):
    s: Stage = k.item
    a = s.attrs
    if a["dist"] == "normal":
        draw = "_normal(states, tid)"
    else:                     # keep with probability 1 - p, scaled
        draw = f"F({a['scale']!r}) if _uniform(states, tid) > F({a['p']!r}) else F(0.0)"
    out = s.out
    # the CPU's counter-based draws take the step seed and the batch's first example; the
    # device draws from its own xoroshiro states (reseeded from the step seed by the runtime)
    params = [p for p in k.params if p not in ("training", "seed", "first")]
    head = [ln for ln in k.views if ln.startswith(f"{out} =")]
    size = _flat_size(k, out)
    cond = "True" if a.get("always") else "training != 0"
    kernel = ["@cuda.jit(cache=True)",
              f"def _draw({', '.join(params)}, training, states):"] + ["    " + v for v in head] + [
              "    tid = cuda.grid(1)",
              "    if tid >= states.shape[0]:",
              "        return",
              f"    for i in range(tid, {size}, states.shape[0]):",
              f"        if {cond}:",
              f"            {out}[i] = {draw}",
              "        else:",
              f"            {out}[i] = F({a['neutral']!r})"]
    prep = [f"def prepare(ctx, {', '.join(params)}, training, seed=0, first=0):",
            "    k = _draw[ctx.n_states // ctx.tpb, ctx.tpb, ctx.stream]",
            f"    args = ({', '.join(params)}, int(training), ctx.states)",
            "    return lambda: k(*args)"]
    sig = _signature(k, params, dtype, ["int64", "xoroshiro128p_type[::1]"])
    shift, ulp = ("40", "1.0 / 16777216.0") if dtype == "float32" else ("11", "1.0 / 9007199254740992.0")
    return _XOROSHIRO.replace("BITS_SHIFT", shift).replace("ULP", ulp) + "\n\n" + "\n".join(kernel) + "\n\n\n" + "\n".join(prep) + "\n", {"_draw": sig}


def _onehot(k: KernelDef, dtype: str):
    s: Stage = k.item
    emit = Emitter(k.tensors, dtype, _batch_last(k), _flat(k))
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
              f"def _onehot({', '.join(k.params)}):"] + ["    " + v for v in k.views] + [
              f"    for t in range(cuda.grid(1), ({rows}) * {cols}, cuda.gridsize(1)):",
              f"        n = t // {cols}",
              f"        c = t - n * {cols}",
              f"        {target} = F(1.0) if {label} == c else F(0.0)"]
    prep = [f"def prepare(ctx, {', '.join(k.params)}):",
            f"    k = _onehot[ctx.blocks(({rows}) * {cols}), ctx.tpb, ctx.stream]",
            f"    args = ({', '.join(k.params)},)",
            "    return lambda: k(*args)"]
    return "\n".join(kernel) + "\n\n\n" + "\n".join(prep) + "\n", {"_onehot": _signature(k, k.params, dtype)}


def _batch_last(k: KernelDef) -> set:
    return {t for t, st in k.storage.items() if st.batch_last}


def _flat(k: KernelDef) -> set:
    return {t for t, st in k.storage.items() if st.base in BUFFERS}


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
        self.emit = Emitter(k.tensors, dtype, _batch_last(k), _flat(k))
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

    def _thread_kernel(self) -> list[str]:
        k = self.k
        L = ["@cuda.jit(cache=True, fastmath=FASTMATH)",
             f"def _thread({', '.join(k.params)}):"]
        L += ["    " + v for v in k.views]
        L.append(f"    for _p in range(cuda.grid(1), {self._total(self.par)}, cuda.gridsize(1)):")
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
        L += ["    " + v for v in k.views]
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
                     f"        kb = _block[ctx.grid_blocks({par}), ctx.tpb, ctx.stream]",
                     "        launches.append(lambda: kb(*args))",
                     "    else:",
                     f"        kt = _thread[ctx.blocks({par}), ctx.tpb, ctx.stream]",
                     "        launches.append(lambda: kt(*args))"]
        else:
            prep += [f"    kt = _thread[ctx.blocks({par}), ctx.tpb, ctx.stream]",
                     "    launches.append(lambda: kt(*args))"]
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


# ------------------------------------------------------------- optimisers
# Per-element bodies of the updates (plan/optimizers.py has the CPU loops): `g` is the
# (clipped) gradient, `p`, `m`, `v` name theta[i], s1[i], s2[i].
_UPDATES = {
    "adam": ("beta1, beta2, eps", '''\
b1, b2 = F(beta1), F(beta2)
step_size = F(lr / (1.0 - beta1 ** t))
inv_root_correction = F(1.0 / math.sqrt(1.0 - beta2 ** t))
m = b1 * s1[i] + (F(1.0) - b1) * g
v = b2 * s2[i] + (F(1.0) - b2) * g * g
s1[i] = m
s2[i] = v
theta[i] -= step_size * m / (math.sqrt(v) * inv_root_correction + F(eps))'''),
    "sgd": ("", "theta[i] -= F(lr) * g"),
    "momentum": ("momentum", '''\
v = F(momentum) * s1[i] + g if t > 1 else g
s1[i] = v
theta[i] -= F(lr) * v'''),
    "nesterov": ("momentum", '''\
v = F(momentum) * s1[i] + g if t > 1 else g
s1[i] = v
theta[i] -= F(lr) * (g + F(momentum) * v)'''),
    "adagrad": ("eps", '''\
G = s1[i] + g * g
s1[i] = G
theta[i] -= F(lr) * g / (math.sqrt(G) + F(eps))'''),
    "rmsprop": ("rho, eps", '''\
v = F(rho) * s1[i] + (F(1.0) - F(rho)) * g * g
s1[i] = v
theta[i] -= F(lr) * g / (math.sqrt(v) + F(eps))'''),
}


def render_update(kind: str, dtype: str) -> CudaKernel:
    """Three kernels: the squared norm of the gradient over the loss's ranges (block sums,
    one atomic per block), the update of every element (skipped when the loss or the norm
    is not finite, or when an earlier step of a `fit` was not), and a one-thread finish
    that advances the step count and records the loss. No host synchronisation."""
    names, body = _UPDATES[kind]
    hyper = f", {names}" if names else ""
    body = "\n".join("            " + ln for ln in body.splitlines())
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
def _update(theta, grad, s1, s2, ranges, ws, value_at, red, state, lr, clip_norm, sticky{hyper}):
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
    for r in range(ranges.shape[0]):
        for i in range(ranges[r, 0] + cuda.grid(1), ranges[r, 1], cuda.gridsize(1)):
            g = grad[i] * scale
{body}


@cuda.jit(cache=True)
def _finish(ws, value_at, red, state, sticky, step_no, history, slot):
    value = ws[value_at]
    history[slot] = value
    ok = math.isfinite(value) and math.isfinite(red[0])
    if sticky != 0 and state[1] != 0:
        ok = False
    if ok:
        state[0] += 1                   # the step count Adam's bias correction reads
    elif sticky != 0 and state[1] == 0:
        state[1] = step_no              # the first non-finite step of a fit
    red[0] = 0.0


def prepare(ctx, theta, grad, s1, s2, ranges, ws, value_at, red, state, lr, clip_norm, sticky, hyper):
    blocks = ctx.grid_blocks(1 << 30)
    kn = _norm[blocks, ctx.tpb, ctx.stream]
    ku = _update[blocks, ctx.tpb, ctx.stream]
    kf = _finish[1, 1, ctx.stream]
    args = (theta, grad, s1, s2, ranges, ws, value_at, red, state, lr, clip_norm, sticky) + tuple(hyper)

    def go(step_no, slot):
        kn(grad, ranges, red)
        ku(*args)
        kf(ws, value_at, red, state, sticky, step_no, ctx.history, slot)
    return go
'''
    buf = f"{dtype}[::1]"
    n_hyper = len([h for h in names.split(",") if h.strip()])
    sigs = {"_norm": f"void({buf}, int64[:, ::1], {buf})",
            "_update": f"void({buf}, {buf}, {buf}, {buf}, int64[:, ::1], {buf}, int64, {buf}, int64[::1], "
                       f"float64, float64, int64{', float64' * n_hyper})",
            "_finish": f"void({buf}, int64, {buf}, int64[::1], int64, int64, {buf}, int64)"}
    digest = hashlib.sha256(f"cuda\n{dtype}\n{text}".encode()).hexdigest()[:12]
    return CudaKernel(f"cu_update_{kind}_{digest}", "update", text, sigs, set())


# ------------------------------------------------------------- the module
def render_cuda(spec, env, context: dict, version: str):
    """The CUDA module's text and its kernel files' texts (name -> text), from the same
    ModuleSpec and template context as the CPU module."""
    dtype = spec.dtype
    names, kinds, files, by_kind = {}, {}, {}, {}
    kernel_template = env.get_template("kernel_cuda.py.j2")

    def add(ck: CudaKernel):
        if ck.name not in files:
            files[ck.name] = kernel_template.render(version=version, k=ck, dtype=dtype,
                                                    helpers=helpers_text(ck.helpers))
            by_kind.setdefault(ck.kind, []).append(ck.name)

    for name, k in spec.kernels.items():
        if isinstance(k, KernelDef):
            ck = render_kernel(k, dtype)
            names[name], kinds[name] = ck.name, ck.kind
            add(ck)
    updates = {}
    for l in spec.losses:
        ck = render_update(spec.kernels[l.update_kernel].kind, dtype)
        updates[l.name] = ck.name
        add(ck)
    text = env.get_template("module_cuda.py.j2").render(
        **context, cuda_names=names, cuda_kinds=kinds, cuda_updates=updates, cuda_kernel_names=list(files))
    return text, files, by_kind


def write_ptx(kernel_dir, names, out_dir, cc=(9, 0)) -> list:
    """Compile every device kernel of the named kernel files for `cc` with numba-cuda's
    compile_ptx (NVVM from the toolkit wheels; no GPU needed) and write NAME.FUNC.ptx."""
    import importlib.util
    from pathlib import Path

    from numba import cuda, types
    from numba.cuda.random import xoroshiro128p_type
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    namespace = {**types.__dict__, "xoroshiro128p_type": xoroshiro128p_type}
    written = []
    for name in names:
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
