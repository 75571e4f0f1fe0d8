"""Import a generated module from its file, so numba's cache lives beside it."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def import_module(path: Path, name: str):
    """Import a generated module from its file (numba caches beside it)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
