"""The docs cannot rot: every block tagged `nn` in docs/*.md is a whole model that parses and
checks, and the reference lists the parser's real keywords."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from nndsl.frontend import load_source
from nndsl.frontend.parser import keywords

DOCS = Path(__file__).resolve().parents[1] / "docs"


def nn_blocks():
    for page in sorted(DOCS.glob("*.md")):
        text = page.read_text(encoding="utf-8")
        for match in re.finditer(r"^```nn\n(.*?)^```", text, re.M | re.S):
            line = text.count("\n", 0, match.start()) + 1
            yield pytest.param(match.group(1), id=f"{page.name}:{line}")


BLOCKS = list(nn_blocks())


def test_the_reference_has_an_example_per_section():
    assert len([b for b in BLOCKS if b.id.startswith("language.md")]) >= 6


@pytest.mark.parametrize("source", BLOCKS)
def test_every_nn_block_parses_and_checks(source):
    model = load_source(source, "docs.nn")               # raises CompileError on any mistake
    assert model.name and model.losses


def test_the_keyword_list_is_the_parsers():
    text = (DOCS / "language.md").read_text(encoding="utf-8")
    listed = re.search(r"Keywords\s*\((.*?)\)", text, re.S).group(1).replace("`", "").split()
    assert sorted(listed) == sorted(keywords())
