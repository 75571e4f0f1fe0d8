"""The package's import graph: every module imports alone, and no module reaches itself
through imports (function-level imports count: a circle hidden in a function is still a
circle). Folders depend on each other in pipeline order only."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "nndsl"


def modules() -> dict[str, Path]:
    return {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): p
            for p in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str, path: Path) -> set[str]:
    """The nndsl modules `name` imports, anywhere in its text."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("nndsl")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("nndsl"):
                target = node.module
            else:
                continue
            for a in node.names:            # `from . import x` names a module
                out.add(f"{target}.{a.name}" if f"{target}.{a.name}" in MODULES else target)
    return {m for m in out if m in MODULES and m != name}


MODULES = modules()
GRAPH = {name: imports(name, path) for name, path in MODULES.items()}


def cycle_from(start: str):
    path, on_path, done = [], set(), set()

    def visit(m):
        if m in on_path:
            return path[path.index(m):] + [m]
        if m in done:
            return None
        on_path.add(m)
        path.append(m)
        for n in sorted(GRAPH[m]):
            found = visit(n)
            if found:
                return found
        on_path.discard(m)
        path.pop()
        done.add(m)
        return None
    return visit(start)


def test_no_module_imports_itself_through_others():
    circles = {tuple(c) for m in MODULES if (c := cycle_from(m))}
    assert not circles, [" -> ".join(c) for c in circles]


# what each stage folder may import (pipeline order: nothing flows backwards)
ALLOWED = {
    "frontend": {"frontend"},
    "calculus": {"frontend", "calculus"},
    "plan": {"frontend", "calculus", "plan"},
    "render": {"frontend", "calculus", "plan", "render"},
    "runtime": {"runtime"},                  # copied beside the kernels: it imports only itself
    "train": {"frontend", "train"},
    "export": {"frontend", "calculus", "export", "runtime"},   # the checked model, never the plan; the
    # PyTorch conversion is the runtime's (generated modules carry it)
}


@pytest.mark.parametrize("folder", sorted(ALLOWED))
def test_stages_import_in_pipeline_order(folder):
    top = {"diagnostics", "registry", "resources", "loader", "build", "cli", "__init__", "__main__"}
    for name, deps in GRAPH.items():
        parts = name.split(".")
        if len(parts) > 2 and parts[1] == folder:
            for dep in deps:
                where = dep.split(".")[1] if dep.count(".") else "__init__"
                assert where in ALLOWED[folder] or (where in top and folder != "runtime"), (name, dep)


# Each module is imported in a child forked from a process that has imported the third-party
# libraries but no nndsl module: no nndsl module helps another by having been imported first.
_ALONE = """
import importlib, os, sys, traceback
import jinja2, lark, numba, numpy, sympy
failed = []
for name in sys.argv[1:]:
    pid = os.fork()
    if pid == 0:
        try:
            importlib.import_module(name)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    if status:
        failed.append(name)
print(" ".join(failed))
"""


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork")
def test_every_module_imports_alone():
    names = [m for m in MODULES if m not in ("nndsl.__main__", "nndsl.runtime.cuda")]
    out = subprocess.run([sys.executable, "-c", _ALONE, *names], capture_output=True, text=True,
                         cwd=PACKAGE.parent, timeout=600)
    assert out.returncode == 0 and not out.stdout.strip(), (out.stdout, out.stderr[-3000:])
