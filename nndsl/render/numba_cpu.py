"""The CPU renderer: the kernel plan as numba `@njit` kernels, one entry function that runs a
plan table, and the generated module's CPU part (`class Model(CpuModel)`).

A loop kernel holds its tensors as 1-D slices of the flat buffers, indexed by flat offsets
(a reshaped view costs 3x the compile time and vectorises no better), with unsigned indices
(`render/loops.py`); a GEMM kernel is one call of BLAS's gemm on row-major blocks (`_blas_gemm`,
numba's own BLAS wrapper: np.dot on reshaped views cost ~0.15 s of compile per kernel, the
direct call a few milliseconds). Every kernel takes `(theta, grad, ws, data…, row, draw
arguments)` and reads its integers from its plan row, so kernels of one data layout share
one call site in the entry.
"""
from __future__ import annotations

import hashlib
from dataclasses import replace

import sympy as sp

from ..calculus.formulas import index_vars
from ..plan.kernels import BUFFERS, KernelDef
from ..plan.optimizers import UpdateKernel, element_lines
from . import file_name
from .helpers import helpers_text, used
from .loops import IMAGE_NEST_LOOPS, Emitter
from .printer import index_text

NAME = "cpu"
BASE_CLASS = "CpuModel"

# the update's head: the squared norm over the loss's ranges, the finite check, the clip
_UPDATE_HEAD = '''\
lr = F(lr)                                # keep the update loops in the parameters' precision
norm2 = F(0.0)
for r in range(ranges.shape[0]):
    dp = grad[ranges[r, 0]:ranges[r, 1]]
    for i in range(dp.size):
        norm2 += dp[i] * dp[i]
if not (np.isfinite(value) and np.isfinite(norm2)):
    return                                # leave the parameters at their last finite values
scale = F(1.0)
if clip_norm > 0.0 and math.sqrt(norm2) > clip_norm:
    scale = F(clip_norm / math.sqrt(norm2))'''


def available() -> bool:
    return True


def kernel_text(k: KernelDef, name: str, split: bool = False) -> str:
    """The kernel's function: the three buffers, its data arrays, its plan row and a draw's
    entry arguments; integers from the row, then its views and body. `split`: nests over
    images run their outer loop over numba's threads where they can (`Emitter.splits`)."""
    signature = ", ".join([*BUFFERS, *k.data, "row", *k.draw_params])
    head = [f"{p} = row[{2 + i}]" for i, p in enumerate(k.ints)]
    if k.kind == "gemm":
        body = _gemm_lines(k)
    else:
        flat = k.flat
        views = [f"{t} = {st.base}[{st.offset}:{st.offset} + {' * '.join(str(d) for d in k.tensors[t].shape) or '1'}]"
                 for t, st in k.storage.items() if t in flat]
        emit = Emitter(k.tensors, k.dtype, k.batch_last, flat, unsigned=True, split_outer=split)
        emit.taken |= set(k.params) | set(k.tensors)
        body = views + emit.plan(_items(k))
    return "\n".join([f"def {name}({signature}):"] + ["    " + line for line in head + body])


def _items(k: KernelDef) -> list:
    return list(k.item) if isinstance(k.item, tuple) else [k.item]


def splits_loops(spec) -> bool:
    """Whether a model's loop kernels split their outer loops over numba's threads: a model
    with running statistics (batchnorm), whose batch cannot be split over threads
    (runtime/cpu.py); every other model splits its batch instead."""
    return bool(spec.model.stats)


def split_kernel(k, split: bool) -> bool:
    """Whether kernel `k` runs a loop over numba's threads (`prange`) in a model that splits
    its loops: a loop kernel with a nest that can."""
    if not split or isinstance(k, UpdateKernel) or k.kind != "loop":
        return False
    emit = Emitter(k.tensors, k.dtype, k.batch_last, k.flat, unsigned=True)
    return any(emit.splits(i) for i in _items(k) if hasattr(i, "ranges") and i.ranges)


def blocked(g) -> bool:
    """Whether a product may be skinny and large, as a convolution's is (a few filters by
    C·K² rows by the N·H'·W' positions of a batch of images): a side that is a product of
    sizes. Those go through `_gemm_blocks`; every other product is one BLAS call
    (`_blas_gemm`): the blocked helper costs ~0.3 s of numba's time per kernel."""
    return any(not (d.is_Symbol or d.is_Integer) for d in (sp.sympify(x) for x in (g.m, g.n, g.k)))


def thin(g) -> bool:
    """Whether a row-major product has a side of 1 that loops do better than a BLAS call, whose
    fixed cost is most of such a product's time (a layer of one output, and its adjoints):
    an outer product (k = 1), or dots along the matrix operand's stored rows (n = 1 with `a`
    not transposed, m = 1 with `b` transposed). The other two (n = 1 with `a` transposed,
    m = 1 with `b` not) would add a row of the matrix into the result at each step, a load
    and a store per multiply-add: 0.88 µs against BLAS's 0.39 for the lecture MLP's output
    layer, so they stay BLAS calls (`_thin_gemm`)."""
    one = lambda d: sp.sympify(d) == 1     # noqa: E731
    return one(g.k) or (one(g.n) and not g.a_t) or (one(g.m) and g.b_t)


def _gemm_lines(k: KernelDef) -> list[str]:
    """A comment with the product, then one BLAS call (`_blas_gemm`, leading dimensions
    written out) or a convolution's product in blocks (`_gemm_blocks`) on the operands'
    buffers and offsets."""
    g = k.gemm
    flipped = [x for x, t in ((g.out, g.out_t), (g.a, g.a_t), (g.b, g.b_t)) if t]
    note = f" ({', '.join(flipped)} stored transposed)" if flipped else ""

    def where(t):
        st = k.storage[t]
        return (st.base, str(st.offset)) if st.offset is not None else (t, "0")

    r = g.row_major()                   # BLAS writes row-major: a transposed out is outᵀ = bᵀ·aᵀ
    size = lambda e: index_text([sp.sympify(e)])    # noqa: E731
    m, n, k_ = size(r.m), size(r.n), size(r.k)
    beta = "1.0" if r.accumulate else "0.0"
    if blocked(r):
        call = f"_gemm_blocks({int(r.a_t)}, {int(r.b_t)}, {m}, {n}, {k_}, {', '.join(where(r.a))}, " \
               f"{', '.join(where(r.b))}, {', '.join(where(r.out))}, {beta})"
    else:                               # leading dimensions: the stored rows' lengths
        lda, ldb = (m if r.a_t else k_), (k_ if r.b_t else n)
        helper = "_thin_gemm" if thin(r) else "_blas_gemm"
        call = f"{helper}({int(r.a_t)}, {int(r.b_t)}, {m}, {n}, {k_}, {', '.join(where(r.a))}, {lda}, " \
               f"{', '.join(where(r.b))}, {ldb}, {', '.join(where(r.out))}, {n}, {beta})"
    return [f"# {g.out} {'+=' if g.accumulate else '='} {g.a} · {g.b}{note}", call]


def update_text(u: UpdateKernel, name: str) -> str:
    """The update's function: head, the rule's setup, then per range a loop over slices."""
    refs = {"p": "p[i]", "s1": "m1[i]", "s2": "m2[i]"}
    loop = ["for r in range(ranges.shape[0]):",
            "    lo, hi, decays = ranges[r, 0], ranges[r, 1], ranges[r, 2]"] + \
        ["    " + line for line in u.rule.range_setup] + [
            "    p, dp, m1, m2 = theta[lo:hi], grad[lo:hi], s1[lo:hi], s2[lo:hi]",
            "    for i in range(p.size):",
            "        g = dp[i] * scale"] + ["        " + line for line in element_lines(u.rule, refs)]
    lines = _UPDATE_HEAD.splitlines() + list(u.rule.setup) + loop
    # returns nothing: the entry calls it through its address as a function of no result
    return "\n".join([f"def {name}({', '.join(u.params)}):"] + ["    " + line for line in lines])


def kernel_file(env, version: str, name: str, what: str, text: str, dtype: str, masked_tails: bool = False,
                used_by: str | None = None, parallel: bool = False) -> str:
    """A kernel file: the function `text` and the helpers it calls (or those `used_by` calls);
    `parallel`: compiled by numba's parallel backend (its `prange` loops over threads)."""
    names = used(text if used_by is None else used_by, NAME, dtype)
    imports, helpers = helpers_text(NAME, dtype, names)
    return env.get_template("kernel.py.j2").render(version=version, name=name, what=what, imports=imports,
                                                   dtype=dtype, helpers=helpers, text=text,
                                                   masked_tails=masked_tails, parallel=parallel)


def masked_tails(k: KernelDef) -> bool:
    """Whether a loop kernel's loops should end in one masked vector iteration (the runtime's
    compiler.py): short image rows (14, 7 pixels) then vectorise whole. Only for nests over
    images (four or more loop indices: n, c, h, w, or im2col's six): on the matrices of a
    dense layer the masked loop cost more than it saved (the lecture MLP's step 10 % slower).
    Not for a nest with a loop over a small literal window (a max-pool's 2×2): the pool's
    vectorised loop reads every second element, and masked strided reads are slower than the
    scalar tail (0.10 -> 0.13 ms); its adjoint, looped along image rows, ends in the window's
    loop of two, which LLVM then runs as a masked vector iteration (0.083 -> 0.22 ms)."""
    if k.kind != "loop":
        return False
    item = k.item
    stages = item.stages if hasattr(item, "stages") else list(item) if isinstance(item, tuple) else [item]
    return all(len(s.ranges) >= IMAGE_NEST_LOOPS for s in stages) and not any(map(_over_windows, stages))


def _over_windows(s) -> bool:
    """Whether a stage loops over small literal windows: a loop of a literal count beside
    another loop in one index (`2·i + q`, q < 2)."""
    windows = {v for v, n in s.ranges if sp.sympify(n).is_Integer and n > 1}
    indices = [s.index] + [a.index for a in s.accesses]
    return any(len(index_vars(e)) > 1 and windows & set(index_vars(e)) for index in indices for e in index)


def helpers_file(env, version: str, dtype: str) -> str:
    """A kernel file with every scalar helper and no kernel (to test the helpers alone)."""
    from .helpers import TARGET_HELPERS
    text = " ".join(f"{h}(" for h in TARGET_HELPERS)
    return kernel_file(env, version, "helpers", "every scalar helper", "", dtype, used_by=text)


def entry_file(env, version: str, spec, names: dict) -> tuple[str, str]:
    """The entry function's file, named by a hash of its text. Data arguments get canonical
    names (d0, d1, …), so models with the same kinds of kernels and data share it."""
    # data tensors may be renamed away from reserved words (input `np` is tensor `np_2`)
    canonical = {spec.graph.values[d["name"]].name: f"d{i}" for i, d in enumerate(spec.data)}
    # a recurrence's step masks follow the data (`x_lengths=` makes them)
    canonical.update({m: f"d{len(spec.data) + i}" for i, m in enumerate(spec.masks)})
    branches = [replace(b, arrays=[canonical.get(a, a) for a in b.arrays]) for b in spec.plans.branches.values()]
    data_names = [f"d{i}" for i in range(len(spec.data) + len(spec.masks))]
    # arms whose kernels take the same arguments share a call site (a "form")
    forms: dict[tuple, int] = {}
    form_of = [forms.setdefault(b.roles(), len(forms)) for b in branches]
    quoted = lambda roles: "(" + ", ".join(f'"{r}"' for r in roles) + ")"    # noqa: E731
    template = env.get_template("entry.py.j2")
    context = dict(version=version, updates=[(i, names[k], args) for i, k, args in spec.updates],
                   data_names=data_names,
                   data_args="".join(f"{d}, " for d in data_names),
                   arms=[(names[b.kernel], quoted(b.roles())) for b in branches], form_of=form_of,
                   form_list=[(f, ["a" if r == "row" else r for r in roles]) for roles, f in forms.items()])
    digest = hashlib.sha256(template.render(name="entry", **context).encode()).hexdigest()[:12]
    name = f"entry_{digest}"
    return name, template.render(name=name, **context)


def render(spec, env, version: str) -> tuple[dict, dict, dict]:
    """(kernel files {name: text}, kernel names by kind, the module's target context)."""
    dtype = spec.dtype
    files, by_kind = {}, {}
    split = splits_loops(spec)
    parallel = {plan_name: split_kernel(k, split) for plan_name, k in spec.kernels.items()}
    # a kernel split over threads is another file than the same kernel in one thread
    names = {plan_name: file_name(NAME, "split_" if parallel[plan_name] else "", k)
             for plan_name, k in spec.kernels.items()}
    for plan_name, k in spec.kernels.items():
        name = names[plan_name]
        if isinstance(k, UpdateKernel):
            text, what = update_text(k, name), f"the {k.kind} update of a loss's parameters"
        else:
            text, what = kernel_text(k, name, parallel[plan_name]), f"one {k.kind} of the kernel plan"
        files[name] = kernel_file(env, version, name, what, text, dtype,
                                  not isinstance(k, UpdateKernel) and masked_tails(k), parallel=parallel[plan_name])
        by_kind.setdefault(k.kind if not isinstance(k, UpdateKernel) else "update", []).append(name)
    entry, files[entry] = entry_file(env, version, spec, names)
    by_kind["entry"] = [entry]
    return files, by_kind, {"entry_name": entry, "split_loops": any(parallel.values())}


def module_block(spec, target_context: dict, source_file: str) -> str:
    """The CPU module's `class Model`."""
    return f'''

class Model({BASE_CLASS}):
    """The compiled network on the CPU (dtype {spec.dtype}); arrays are named as in {source_file}.
    `Model(seed=0, threads=K)`; see the runtime's CpuModel for the API."""
    tables = TABLES
    kernel_dir = KERNEL_DIR
    entry_name = {target_context["entry_name"]!r}      # the entry function that runs the plans
''' + ("    split_loops = True      # its loops over images run in numba's threads (batchnorm)\n"
       if target_context["split_loops"] else "")
