"""The kernel plan: kernels are shared across layers and models, and their number does not
grow with depth. Read from the rendered modules' metadata, never from timings."""
from __future__ import annotations

import platform
import re

import numpy as np
import pytest

from conftest import compile_source
from nndsl.build import render
from nndsl.frontend import load_source


def deep_mlp(depth: int, width: int = 64, name: str = "deep") -> str:
    lines = [f"model {name}", "input x[32]", "target label: class(10)"]
    prev = "x"
    for i in range(depth):
        lines.append(f"h{i} = dense({prev}, {width}, act=tanh)")
        prev = f"h{i}"
    lines += [f"o = dense({prev}, 10)", "loss cross_entropy(o, label)"]
    return "\n".join(lines) + "\n"


def kernels(source: str, dtype: str = "float32") -> set[str]:
    """The module's kernels and its entry function: the shared files it loads (the runtime
    package aside, which is the same for every model)."""
    return {n for n in render(load_source(source, "m.nn"), dtype).kernels if "/" not in n}


@pytest.mark.parametrize("depth", [2, 8, 24])
def test_distinct_kernels_do_not_grow_with_depth(depth):
    # the same kernels, and the same entry: nothing for numba to compile for a deeper network
    assert kernels(deep_mlp(depth)) == kernels(deep_mlp(3))


@pytest.mark.parametrize("other", [
    deep_mlp(5, width=128, name="wider"),               # other sizes, same kinds of layers
    deep_mlp(7, width=48, name="narrower"),
])
def test_models_with_the_same_kinds_of_layers_name_the_same_kernels(other):
    assert kernels(other) == kernels(deep_mlp(3))


def normalised(depth: int, width: int, name: str = "norm") -> str:
    """A stack of dense → layernorm → batchnorm blocks (an embedding in front)."""
    lines = [f"model {name}", "input chars: class(12)", "target label: class(10)", f"x = embed(chars, {width})"]
    prev = "x"
    for i in range(depth):
        lines += [f"h{i} = layernorm(dense({prev}, {width}, bias=false))", f"b{i} = batchnorm(h{i}, momentum=0.05)"]
        prev = f"b{i}"
    lines += [f"o = dense({prev}, 10)", "loss cross_entropy(o, label)"]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("depth,width", [(5, 64), (2, 128), (3, 40)])
def test_normalisations_share_their_kernels_across_depth_and_width(depth, width):
    # a normalisation's count (1/K, N) is a size argument, not a number in the kernel's text
    assert kernels(normalised(depth, width)) == kernels(normalised(2, 64))


def test_a_new_kind_of_layer_adds_kernels_and_keeps_the_others():
    relu = deep_mlp(3).replace("act=tanh", "act=relu")
    mixed = deep_mlp(3).replace("h1 = dense(h0, 64, act=tanh)", "h1 = dense(h0, 64, act=relu)")
    plain = lambda names: {n for n in names if not n.startswith("entry_")}    # noqa: E731
    assert plain(kernels(deep_mlp(3))) < plain(kernels(mixed))
    assert plain(kernels(relu)) < plain(kernels(mixed))


def test_dtypes_have_their_own_kernels():
    assert not kernels(deep_mlp(2), "float32") & kernels(deep_mlp(2), "float64")


def test_kernel_names_are_hashes_of_what_they_compute():
    rendered = render(load_source(deep_mlp(2), "m.nn"), "float32")
    runtime = {n for n in rendered.kernels if "/" in n}
    assert {n.split("/")[0] for n in runtime} == {re.search(r"RUNTIME = '(\w+)'", rendered.module)[1]}
    assert re.fullmatch(r"runtime_[0-9a-f]{12}", next(iter(runtime)).split("/")[0])
    for name, text in rendered.kernels.items():
        if name not in runtime:
            assert re.fullmatch(r"(loop|gemm|draw|onehot|update_\w+|entry)_[0-9a-f]{12}", name)
            assert f"def {name}(" in text or name.startswith("entry_")
    # the module names each kernel it loads, and its entry, which needs no other file
    module = rendered.module
    entry = next(n for n in rendered.kernels if n.startswith("entry_"))
    assert f"entry_name = {entry!r}" in module
    listed = set(re.findall(r"'(\w+)'", re.search(r"^KERNELS = \[(.*?)\]", module, flags=re.M | re.S)[1]))
    assert listed == set(rendered.kernels) - runtime
    text = rendered.kernels[entry]
    assert "_kernel(" not in text and "import_module" not in text
    # its table of arms names every kernel, which it calls through their addresses
    assert set(re.findall(r'^    \("(\w+)", \(', text, flags=re.M)) == listed - {entry}


def test_kernels_of_one_signature_share_a_call_site():
    """The entry calls kernels through their addresses; kernels with the same arguments (the
    buffers, the data arrays they read, the plan's row) share one call site."""
    rendered = render(load_source(deep_mlp(8), "m.nn"), "float32")
    entry = next(t for n, t in rendered.kernels.items() if n.startswith("entry_"))
    arms = re.findall(r'^    \("(?:loop|gemm|draw|onehot)_\w+", (\(.*\))\),$', entry, flags=re.M)
    sites = re.findall(r"^        (?:if|elif) form == \d+:$", entry, flags=re.M)
    assert len(arms) > 10 and len(sites) == len(set(arms)) <= 3


_COLD_STEP = """
import json, sys
import numpy as np
from numba.core import event
sys.path.insert(0, sys.argv[1])
import deep
m = deep.Model(seed=0)
rng = np.random.default_rng(0)
with event.install_recorder("numba:compile") as rec:
    loss = m.step(x=rng.standard_normal((8, 32)), label=rng.integers(0, 10, 8))
here = {ev.data["dispatcher"].py_func.__name__ for _, ev in rec.buffer if ev.is_start}
print(json.dumps([loss, len(deep.KERNELS), sorted(n for n in here if n.startswith(("loop", "gemm")))]))
"""


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_helper_process_compiles_kernels_alongside(jobs, tmp_path):
    """From an empty numba cache, with NNDSL_COMPILE_JOBS=2 a helper process compiles kernels
    from the far end of the list while this one compiles from the near end: this process
    compiles only some of them, the step is the same as this suite's, and a second process,
    which loads every kernel from the cache, computes the same bits. With =1 this process
    compiles them all."""
    import json
    import os
    import subprocess
    import sys

    from nndsl.build import write_rendered
    write_rendered(render(load_source(deep_mlp(3), "deep.nn"), "float64"), tmp_path / "deep.py")
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"), NNDSL_COMPILE_JOBS=jobs)
    if jobs == "2":      # numba's default optimisation: at the suite's -O0 it declines to cache a few kernels
        env["NUMBA_OPT"] = "3"
    out = subprocess.run([sys.executable, "-c", _COLD_STEP, str(tmp_path)], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    loss, n_files, compiled_here = json.loads(out.stdout)
    n_kernels = len([f for f in os.listdir(tmp_path / "nndsl_kernels") if f.startswith(("loop", "gemm"))])
    if jobs == "1":
        assert len(compiled_here) == n_kernels
        return
    assert 0 < len(compiled_here) < n_kernels
    # a second process loads every kernel from the cache, and computes the same bits
    again = subprocess.run([sys.executable, "-c", _COLD_STEP, str(tmp_path)], env=env, capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    warm_loss, _, warm_compiled = json.loads(again.stdout)
    assert warm_compiled == [] and warm_loss == loss
    here = compile_source(deep_mlp(3)).Model(seed=0)      # this process, kernels from the suite's cache
    rng = np.random.default_rng(0)
    assert loss == pytest.approx(here.step(x=rng.standard_normal((8, 32)), label=rng.integers(0, 10, 8)),
                                 rel=1e-12)


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86's MXCSR")
def test_the_entry_flushes_denormals_and_restores_the_callers_mode():
    """Inside a step a float32 product below the smallest normal number is zero (operations
    on denormals cost ~100 cycles each: an LSTM over 256 steps ran 9× slower with them);
    after it, numpy in the same thread computes the denormal again."""
    module = compile_source("model tiny\ninput x[1]\ntarget y[1]\no = dense(x, 1, bias=false)\n"
                            "loss squared(o, y)\n", "float32")
    m = module.Model(seed=0)
    m.params["o.W"][:] = 1e-20
    tiny = np.float32(1e-20)
    assert m.forward(x=np.array([[tiny]]))[0, 0] == 0.0
    assert tiny * tiny > 0.0                        # 1e-40, as before the step
    m.step(x=np.array([[tiny]]), y=np.array([[0.0]]))
    assert tiny * tiny > 0.0


def _block_stage(index, sizes):
    import sympy as sp
    from nndsl.calculus.formulas import Stage
    n, k = sp.symbols("n k", integer=True)
    index = tuple(sp.sympify(e, locals={"n": n, "k": k}) for e in index)
    return Stage("d", index, sp.Integer(0), (), ((n, sizes[0]), (k, sizes[1])))


@pytest.mark.parametrize("a, b, disjoint", [
    (("n", "k"), ("n", "k + 64"), True),          # two gates' blocks of Δ(W·x + U·h)
    (("n", "k + 192"), ("n", "k + 128"), True),
    (("n", "k"), ("n", "k + 32"), False),         # overlapping blocks
    (("n", "k"), ("n", "k"), False),
])
def test_maps_writing_blocks_of_one_target_share_a_nest_only_when_disjoint(a, b, disjoint):
    from nndsl.plan.fuse import blocks, disjoint as are_disjoint
    sa, sb = _block_stage(a, (4, 64)), _block_stage(b, (4, 64))
    assert blocks(sa) is not None and blocks(sb) is not None
    assert are_disjoint(sa, sb) is disjoint


@pytest.mark.parametrize("index", [("n", "2*k"), ("n", "n + k"), ("k", "k")])
def test_a_target_index_that_is_not_a_block_is_not_one(index):
    from nndsl.plan.fuse import blocks
    assert blocks(_block_stage(index, (4, 64))) is None
