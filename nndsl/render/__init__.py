"""Renderers: the target-neutral module plan (`nndsl/plan/`) printed for one target.

A renderer module has `NAME`, `BASE_CLASS` (its model class in `nndsl/runtime/`),
`available()`, `render(plan, env, version)` -> (kernel files, names by kind, module context)
and `module_block(plan, context, source_file)` -> the text of the module's `class Model`.
"""
from __future__ import annotations

import functools
import hashlib
import importlib
from pathlib import Path

# target -> its renderer's module (the runtime's model class is `nndsl/runtime/<target>.py`)
TARGETS = {"cpu": "numba_cpu", "cuda": "numba_cuda"}


def renderer(target: str):
    return importlib.import_module(f".{TARGETS[target]}", __name__)


@functools.lru_cache(maxsize=None)
def fingerprint(target: str) -> str:
    """A hash of everything that shapes a target's kernel files besides the plan: its
    renderer, the shared render modules and the templates. A kernel file is named by the
    plan kernel's hash and this, so a file in a build folder is never served to a build
    whose renderer would have written it differently."""
    here = Path(__file__).resolve().parent
    sources = [here / f"{TARGETS[target]}.py", *(here / f"{m}.py" for m in ("loops", "helpers", "printer")),
               *sorted((here.parents[1] / "templates").glob("*.j2"))]
    from ..resources import templates_dir
    sources += sorted(Path(templates_dir()).glob("*.j2"))
    text = "\0".join(p.read_text(encoding="utf-8") for p in dict.fromkeys(sources) if p.exists())
    return hashlib.sha256(f"{target}\0{text}".encode()).hexdigest()


def file_name(target: str, prefix: str, kernel) -> str:
    """The file of a plan kernel (or update) for a target: `PREFIX KIND_HASH`, the hash of the
    plan kernel's own (its structure) and the target's fingerprint."""
    kind = kernel.name.rsplit("_", 1)[0]
    digest = hashlib.sha256(f"{kernel.name}\0{fingerprint(target)}".encode()).hexdigest()[:12]
    return f"{prefix}{kind}_{digest}"
