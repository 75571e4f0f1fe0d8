"""The kernel plan: kernels are shared across layers and models, and their number does not
grow with depth. Read from the rendered modules' metadata, never from timings."""
from __future__ import annotations

import re

import pytest

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
    """The module's kernels and its entry function: the shared files it loads."""
    return set(render(load_source(source, "m.nn"), dtype).kernels)


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


def test_a_new_kind_of_layer_adds_kernels_and_keeps_the_others():
    relu = deep_mlp(3).replace("act=tanh", "act=relu")
    mixed = deep_mlp(3).replace("h1 = dense(h0, 64, act=tanh)", "h1 = dense(h0, 64, act=relu)")
    plain = lambda names: {n for n in names if not n.startswith("entry_")}    # noqa: E731
    assert plain(kernels(deep_mlp(3))) < plain(kernels(mixed))
    assert plain(kernels(relu)) < plain(kernels(mixed))


def test_dtypes_have_their_own_kernels():
    assert not kernels(deep_mlp(2), "float32") & kernels(deep_mlp(2), "float64")


def test_kernel_names_are_hashes_of_their_text():
    rendered = render(load_source(deep_mlp(2), "m.nn"), "float32")
    for name, text in rendered.kernels.items():
        assert re.fullmatch(r"(loop|gemm|draw|onehot|update_\w+|entry)_[0-9a-f]{12}", name)
        assert f"def {name}(" in text
    # the module names each kernel it loads, and nothing else
    module = rendered.module
    entry = next(n for n in rendered.kernels if n.startswith("entry_"))
    assert f'run = _kernel("{entry}")' in module
    assert set(re.findall(r'^(\w+) = _kernel\("(\w+)"\)$', rendered.kernels[entry], flags=re.M)) == \
        {(n, n) for n in rendered.kernels if n != entry}
