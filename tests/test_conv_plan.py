"""What the kernel plan of a CNN is (rendered text only, nothing compiled): one GEMM per
convolution and per adjoint, no input gradient for the first layer, max-pool in one pass."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from nndsl.build import render
from nndsl.frontend import load_source

CNN = (Path(__file__).resolve().parents[1] / "benchmarks" / "models" / "cnn.nn").read_text()


@pytest.fixture(scope="module")
def rows() -> list[tuple[str, str]]:
    """The value plan's rows as (their notes, the text of the kernel they call)."""
    rendered = render(load_source(CNN, "cnn.nn"), "float32")
    entry = next(t for n, t in rendered.kernels.items() if n.startswith("entry_"))
    kernel_of = {str(i): k for i, k in enumerate(re.findall(r'^    \("(\w+)", \(', entry, flags=re.M))}
    text = rendered.module
    plan = text[text.index("def _plan_value_loss("):]
    plan = plan[:plan.index("], np.int64)")]
    out, notes = [], []
    for line in plan.splitlines():
        line = line.strip()
        if line.startswith("# ") and not line.startswith("# ----"):
            notes.append(line[2:])
        elif line.startswith("("):
            branch = line[1:].split(",")[0]
            out.append((" | ".join(notes), rendered.kernels[kernel_of[branch]]))
            notes = []
    return out


def count(rows, note: str, kernel: str = "") -> int:
    return sum(1 for n, k in rows if re.search(note, n) and re.search(kernel, k))


# (what, pattern in a row's notes, pattern in its kernel's text, expected count)
PLAN = [
    ("conv forward GEMMs", r"^c\d: W·col$", r"np\.dot", 2),
    ("conv ΔW GEMMs", r"^Δc\d\.W from c\d: W·col$", r"np\.dot", 2),
    ("Δcol GEMM, second layer only", r"^Δc2\.col from", r"np\.dot", 1),
    ("no gradient of the first layer's input", r"Δc1\.col|Δc1\.pad|Δx\b", "", 0),
    ("col2im: the scatter-add of Δcol, second layer only", r"^Δc2\.pad from c2: im2col", r"\+=", 1),
    ("max and arg-max in one pass per pool", r"first arg-max of each window \| p\d = max over each window", r"= top", 2),
    ("pool adjoints of tiling windows are plain writes, not zeroed first", r"^Δc\d = 0", "", 0),
    ("bias gradients summed in registers", r"Δc\d\.b from c\d: \+ b", r"_sum = F\(0\.0\)", 2),
]


@pytest.mark.parametrize("what,note,kernel,expected", PLAN, ids=[p[0] for p in PLAN])
def test_cnn_plan(rows, what, note, kernel, expected):
    assert count(rows, note, kernel) == expected, what
