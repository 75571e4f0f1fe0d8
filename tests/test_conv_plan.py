"""What the kernel plan of a CNN is (rendered text only, nothing compiled): one GEMM per
convolution and per adjoint, no input gradient for the first layer, max-pool in one pass."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from nndsl.build import render_module
from nndsl.frontend import load_source

CNN = (Path(__file__).resolve().parents[1] / "benchmarks" / "models" / "cnn.nn").read_text()


@pytest.fixture(scope="module")
def value_kernel() -> str:
    text = render_module(load_source(CNN, "cnn.nn"), "float32")
    start = text.index("def value_loss(")
    return text[start:text.index("\n\n\n", start)]


# (what, pattern in the value kernel (forward + backward), expected count)
PLAN = [
    ("conv forward GEMMs", r"np\.dot\(c\d_W\.reshape\(\(\d+, \d+\)\), c\d_col", 2),
    ("conv ΔW GEMMs", r"np\.dot\(d_c\d_zc\.reshape\(.*\), c\d_col\.reshape\(.*\)\.T, d_c\d_W", 2),
    ("Δcol GEMM, second layer only", r"np\.dot\(c\d_W\.reshape\(.*\)\.T, d_c\d_zc", 1),
    ("no gradient of the first layer's input", r"d_c1_col|d_c1_pad|d_x\b", 0),
    ("col2im: the scatter-add of Δcol, second layer only", r"d_c2_pad\[.*\] \+= d_c2_col", 1),
    ("max and arg-max in one pass per pool", r"p\d\[n, c, i, j\] = top", 2),
    ("pool adjoints of tiling windows are plain writes, not zeroed first",
     r"d_c\d\[n, c, 2\*i \+ p, 2\*j \+ q\] = d_p\d", 2),
    ("no zeroing of a pool's input gradient", r"d_c\d\[i0, i1, i2, i3\] = F\(0\.0\)", 0),
    ("bias gradients summed in registers", r"d_c\d_b\[i1\] = d_c\d_b_sum", 2),
]


@pytest.mark.parametrize("what,pattern,count", PLAN, ids=[p[0] for p in PLAN])
def test_cnn_plan(value_kernel, what, pattern, count):
    assert len(re.findall(pattern, value_kernel)) == count, what
