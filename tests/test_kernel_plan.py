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
    return set(render(load_source(source, "m.nn"), dtype).kernels)


def entry_branches(source: str) -> int:
    """Call sites in the module's one entry function."""
    text = render(load_source(source, "m.nn"), "float32").module
    entry = text[text.index("def run("):text.index("# ---------------------------------------------------------------- the plans")]
    return len(re.findall(r"^\s+(?:el)?if b == \d+:$", entry, flags=re.M))


@pytest.mark.parametrize("depth", [2, 8, 24])
def test_distinct_kernels_do_not_grow_with_depth(depth):
    assert kernels(deep_mlp(depth)) == kernels(deep_mlp(3))
    assert entry_branches(deep_mlp(depth)) == entry_branches(deep_mlp(3))


@pytest.mark.parametrize("other", [
    deep_mlp(5, width=128, name="wider"),               # other sizes, same kinds of layers
    deep_mlp(7, width=48, name="narrower"),
])
def test_models_with_the_same_kinds_of_layers_name_the_same_kernels(other):
    assert kernels(other) == kernels(deep_mlp(3))


def test_a_new_kind_of_layer_adds_kernels_and_keeps_the_others():
    relu = deep_mlp(3).replace("act=tanh", "act=relu")
    mixed = deep_mlp(3).replace("h1 = dense(h0, 64, act=tanh)", "h1 = dense(h0, 64, act=relu)")
    assert kernels(deep_mlp(3)) < kernels(mixed)
    assert kernels(relu) < kernels(mixed)


def test_dtypes_have_their_own_kernels():
    assert not kernels(deep_mlp(2), "float32") & kernels(deep_mlp(2), "float64")


def test_kernel_names_are_hashes_of_their_text():
    rendered = render(load_source(deep_mlp(2), "m.nn"), "float32")
    for name, text in rendered.kernels.items():
        assert re.fullmatch(r"(loop|gemm|draw|onehot|update_\w+)_[0-9a-f]{12}", name)
        assert f"def {name}(" in text
    # the module names each kernel it loads, and nothing else
    module = rendered.module
    assert set(re.findall(r'^(\w+) = _kernel\("(\w+)"\)$', module, flags=re.M)) == \
        {(n, n) for n in rendered.kernels}
