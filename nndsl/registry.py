"""Tables filled by decorators: the formula of each layer and loss (calculus/ops.py), the
ONNX exporter of each node op and the PyTorch layout of each layer kind (export/)."""
from __future__ import annotations

from typing import Callable


def registrar(table: dict) -> Callable:
    """A decorator factory for `table`: `@under(*keys)` stores the function under each key
    and returns it unchanged (`under = registrar(TABLE)`)."""
    def under(*keys):
        def register(f):
            for key in keys:
                table[key] = f
            return f
        return register
    return under
