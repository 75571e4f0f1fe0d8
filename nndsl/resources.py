"""Where the grammar and the templates live, installed or from a source tree.

The user's card puts `grammar/` and `templates/` at the top level of the
repository; the wheel ships them inside the package (see pyproject.toml).
"""
from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def resource_dir(name: str) -> Path:
    for candidate in (_PACKAGE / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"nndsl installation is missing its {name}/ folder")


def grammar_path() -> Path:
    return resource_dir("grammar") / "nndsl.lark"


def templates_dir() -> Path:
    return resource_dir("templates")
