"""The renderers are peers over one target-neutral plan: the same kernels, named by the same
hashes, the helpers written once, the optimiser rules written once."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import sympy as sp

from conftest import compile_source

from nndsl.build import render
from nndsl.calculus import functions as fn
from nndsl.calculus.formulas import N, Access, Stage, Tensor
from nndsl.frontend import load_source
from nndsl.plan.module_plan import module_plan
from nndsl.plan.optimizers import RULES
from nndsl.render import TARGETS, renderer
from nndsl.render import helpers as helpers_mod

MODEL = """model r
input x[1, 6, 5]
target y: class(3)
c = conv2d(x, 2, 3, pad=1, act=tanh)
d = dropout(c, 0.25)
p = maxpool(d, 2)
f = flatten(p)
o = dense(f, 3)
loss cross_entropy(o, y)
"""


@pytest.fixture(scope="module")
def plan():
    return module_plan(load_source(MODEL, "r.nn"), "float32")


def test_every_target_names_its_kernels_by_the_plans_hash(plan):
    from nndsl.render import file_name
    cpu = set(render(load_source(MODEL, "r.nn"), "float32", "cpu").kernels)
    cuda = set(render(load_source(MODEL, "r.nn"), "float32", "cuda").kernels)
    assert {file_name("cpu", "", k) for k in plan.kernels.values()} <= cpu
    assert {file_name("cuda", "cu_", k) for k in plan.kernels.values()} <= cuda
    assert {k.split("/")[0] for k in cpu if "/" in k} == {k.split("/")[0] for k in cuda if "/" in k}   # one runtime


def test_a_kernel_file_changes_its_name_with_its_renderer(plan, monkeypatch):
    """A build folder's file is never served to a renderer that would write it otherwise."""
    from nndsl import render as render_pkg
    k = next(iter(plan.kernels.values()))
    before = render_pkg.file_name("cpu", "", k)
    monkeypatch.setattr(render_pkg, "fingerprint", lambda target: "another renderer")
    assert render_pkg.file_name("cpu", "", k) != before


def test_a_kernels_name_depends_on_its_structure_not_on_the_users_names(plan):
    renamed = module_plan(load_source(MODEL.replace("c = ", "conv = ").replace("(c,", "(conv,")
                                      .replace("d = dropout", "drop = dropout").replace("(d,", "(drop,"), "r.nn"),
                          "float32")
    draws = lambda p: {k for k in p.kernels if k.startswith("draw_")}    # noqa: E731
    assert set(renamed.kernels) == set(plan.kernels) and draws(plan)


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_gemms_reach_each_renderer_as_structured_items(plan, target):
    from nndsl.render.module import environment
    from nndsl.resources import templates_dir
    files, _, _ = renderer(target).render(plan, environment(templates_dir()), "test")
    gemms = {n: t for n, t in files.items() if "gemm_" in n}
    assert gemms
    for text in gemms.values():
        assert not re.search(r"np\.dot\(", text)
        assert ("_blas_gemm(" in text or "_gemm_blocks(" in text) if target == "cpu" else ("return ctx.gemm(" in text)


@pytest.mark.parametrize("kind", sorted(RULES))
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_every_optimiser_rule_is_printed_by_every_target(kind, target):
    from nndsl.frontend.ir import Optimizer
    from nndsl.plan.optimizers import update_kernel
    args = {"lr": 0.1, "momentum": 0.9 if kind in ("momentum", "nesterov") else 0.0, "nesterov": kind == "nesterov",
            "eps": 1e-8, "rho": 0.9, "beta1": 0.9, "beta2": 0.999}
    u = update_kernel(Optimizer("sgd" if kind in ("momentum", "nesterov") else kind, args), "float64")
    assert u.kind == kind
    if target == "cpu":
        from nndsl.render.numba_cpu import update_text
        text = update_text(u, "update")
    else:
        from nndsl.render.numba_cuda import render_update
        text = render_update(u).text
    for line in RULES[kind].element:         # each element line, with the target's references
        assert re.sub(r"\b(p|s1|s2)\b", "X", line).split(" ")[0] in re.sub(r"\w+\[i\]", "X", text)


def test_a_primitives_helper_is_written_once_for_every_target(monkeypatch):
    monkeypatch.setitem(fn.PRIMITIVE_HELPERS, "_softsign", "def _softsign(x):\n    return x / (F(1.0) + abs(x))")
    for target, decorator in (("cpu", "@njit"), ("cuda", "@cuda.jit(device=True")):
        names = helpers_mod.used("y = _softsign(a)", target, "float32")
        _, text = helpers_mod.helpers_text(target, "float32", names)
        assert names == ["_softsign"] and text.startswith(decorator) and "return x / (F(1.0) + abs(x))" in text


# ---- the CPU's split loops: which nests may run their outer loop over numba's threads
_n, _c, _h, _w, _i, _j = sp.symbols("n c h w i j", integer=True)
_IMAGE = ((_n, 4), (_c, 3), (_h, 5), (_w, 5))


def _stage(index, ranges, reduce=None, accumulate=False, read=(_n, _c, _h, _w)):
    a = sp.Symbol("a")
    return Stage("y", index, a, (Access(a, "x", read),), ranges, reduce, accumulate)


SPLITS = [
    ("a map over images", _stage((_n, _c, _h, _w), _IMAGE), True),
    ("a channel's sum over the batch and positions: each channel in one thread",
     _stage((_c,), ((_c, 3), (_n, 4), (_h, 5), (_w, 5)), reduce="sum"), True),
    ("the same sum looped batch first: its output loop still goes outside",
     _stage((_c,), _IMAGE, reduce="sum"), True),
    ("a scatter-add over windows (col2im): each image adds into its own",
     _stage((_n, _c, _h + _i, _w + _j), _IMAGE + ((_i, 3), (_j, 3)), accumulate=True,
            read=(_n, _c, _h, _w, _i, _j)), True),
    ("a scatter-add that mixes images: rows of one output from several outer iterations",
     _stage((_c, _h + _n), _IMAGE, accumulate=True), False),
    ("a sum over everything (a loss)", _stage((), _IMAGE, reduce="sum"), False),
    ("a map over a matrix: too small a nest", _stage((_n, _c), ((_n, 4), (_c, 3))), False),
]


@pytest.mark.parametrize("what,stage,splits", SPLITS, ids=[s[0] for s in SPLITS])
def test_which_nests_split_their_outer_loop(what, stage, splits):
    from nndsl.render.loops import Emitter
    tensors = {"x": Tensor("x", (4, 3, 5, 5, 3, 3), "value", "x"), "y": Tensor("y", (4, 3, 8, 8), "value", "y")}
    emit = Emitter(tensors, "float32", unsigned=True, split_outer=True)
    assert emit.splits(stage) == splits
    lines = emit.plan([stage])
    assert any("prange(" in line for line in lines) == splits


_q, _r = sp.symbols("q r", integer=True)
_WINDOWS = _IMAGE[:2] + ((_i, 2), (_j, 2), (_q, 2), (_r, 2))
# a map or scatter at affine indices -> its loops, outermost first
ORDERS = [
    ("a max-pool's adjoint stores along image rows (y = 2i + q, x = 2j + r)",
     _stage((_n, _c, 2 * _i + _q, 2 * _j + _r), _WINDOWS, read=(_n, _c, _i, _j)), [_n, _c, _i, _q, _j, _r]),
    ("a scatter-add (col2im) loops in its read's order: its target's are not one per loop",
     _stage((_n, _c, _h + _i, _w + _j), _IMAGE + ((_i, 3), (_j, 3)), accumulate=True,
            read=(_c, _i, _j, _n, _h, _w)), [_c, _i, _j, _n, _h, _w]),
    ("a map whose target index is not affine in its loops: its read's order",
     _stage((_n, _c, _h * _w), _IMAGE, read=(_n, _w, _c, _h)), [_n, _w, _c, _h]),
]


@pytest.mark.parametrize("what,stage,order", ORDERS, ids=[o[0] for o in ORDERS])
def test_the_loop_order_of_a_map_at_affine_indices(what, stage, order):
    from nndsl.render.loops import Emitter
    tensors = {"x": Tensor("x", (4, 3, 5, 5, 3, 3), "value", "x"), "y": Tensor("y", (4, 3, 8, 8), "value", "y")}
    assert Emitter(tensors, "float32")._scatter_order(stage) == order


def test_a_nest_over_max_pool_windows_has_no_masked_tail():
    """Masked tails (`numba_cpu.masked_tails`) for nests over images, not for one that loops
    over a pool's 2×2 windows: the adjoint's innermost loop of two ran as a masked vector."""
    from nndsl.plan.kernels import KernelDef
    from nndsl.render.numba_cpu import masked_tails
    pool = _stage((_n, _c, 2 * _i + _q, 2 * _j + _r), _WINDOWS, read=(_n, _c, _i, _j))
    relu = _stage((_n, _c, _h, _w), _IMAGE)
    kernel = lambda s: KernelDef("loop_0", "loop", [], {}, {}, s, "float32")     # noqa: E731
    assert [masked_tails(kernel(s)) for s in (pool, relu)] == [False, True]


# (m, n, k, a_t, b_t) of a row-major product -> loops (`_thin_gemm`) or a BLAS call
THIN = [
    ("outer product", (N, 32, 1, True, True), True),
    ("matrix times vector", (N, 1, 32, False, True), True),
    ("matrix stored transposed times vector: a row added per step", (N, 1, 32, True, True), False),
    ("vector times matrix stored transposed", (1, 32, N, True, True), True),
    ("vector times matrix: a row added per step", (1, 32, N, True, False), False),
    ("no side of 1", (N, 32, 10, False, True), False),
    ("a side of 2", (N, 2, 10, False, True), False),
]


@pytest.mark.parametrize("what,gemm,thin", THIN, ids=[t[0] for t in THIN])
def test_which_products_are_loops_not_blas_calls(what, gemm, thin):
    from nndsl.plan.gemm import BlasGemm
    from nndsl.render.numba_cpu import thin as is_thin
    m, n, k, a_t, b_t = gemm
    assert is_thin(BlasGemm("c", "a", "b", a_t, b_t, False, m, n, k, False)) == thin


LECTURE = ("model m\ninput x[10]\ntarget y[1]\nh = dense(x, 32, act=tanh)\no = dense(h, 1)\n"
           "loss squared(o, y)\noptimizer adam(lr=1e-3)")


def test_a_layer_of_one_output_multiplies_in_loops():
    """Its size stays a literal 1 in the kernels (`size_symbol`), so its products and both
    adjoints are seen to be thin: the lecture MLP's output layer."""
    module = compile_source(LECTURE)
    folder = Path(module.Model.kernel_dir)
    entry = (folder / f"{module.Model.entry_name}.py").read_text()
    gemms = [folder / f"{name}.py" for name in re.findall(r'"(gemm_[0-9a-f]{12})"', entry)]
    calls = [next(line.split("(")[0].strip() for line in f.read_text().splitlines() if "_gemm(" in line
                  and not line.lstrip().startswith(("def", "@", "#"))) for f in gemms]
    assert sorted(calls) == ["_blas_gemm"] * 3 + ["_thin_gemm"] * 2


def test_the_bias_gradient_of_a_layer_of_one_output_sums_in_a_register():
    """Δb[j] = Σ_n Δo[n, j] with j < 1: its loop of one iteration goes outermost, so the sum
    over the batch runs in a register, not through `grad` in memory (`_reductions_outermost`)."""
    rendered = render(load_source(LECTURE, "m.nn"), "float32")
    loops = [t for t in rendered.kernels.values() if re.search(r"^def loop_", t, re.M)]
    register = r"for i0 in range\(1\):\n\s+v\d_sum = F\(0\.0\)\n\s+for i1 in range\(s0\):"
    assert sum(bool(re.search(register, t)) for t in loops) == 1
    assert not any(re.search(r"v\d\[i1\] \+= ", t) for t in loops)      # no sum through memory
