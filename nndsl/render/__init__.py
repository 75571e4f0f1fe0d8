"""Renderers: the target-neutral module plan (`nndsl/plan/`) printed for one target.

A renderer module has `NAME`, `BASE_CLASS` (its model class in `nndsl/runtime/`),
`available()`, `render(plan, env, version)` -> (kernel files, names by kind, module context)
and `module_block(plan, context, source_file)` -> the text of the module's `class Model`.
"""
from __future__ import annotations

import importlib

# target -> its renderer's module (the runtime's model class is `nndsl/runtime/<target>.py`)
TARGETS = {"cpu": "numba_cpu", "cuda": "numba_cuda"}


def renderer(target: str):
    return importlib.import_module(f".{TARGETS[target]}", __name__)
