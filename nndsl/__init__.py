"""nndsl: a symbolic-to-code compiler for neural-network definitions.

From Python (imports stay lazy, so `import nndsl` is cheap):

    nndsl.check("model.nn")        # the checked model's summary (str, Jupyter display)
    nndsl.gradients("model.nn")    # `nndsl grad` as objects: .expr (sympy), .text, .latex

A bad model raises the same `nndsl.diagnostics.CompileError` the CLI renders.
"""
__version__ = "0.1.0"


def gradients(path, param=None):
    """Per loss and parameter, the derived gradient: `.expr` (sympy), `.text`, `.latex`."""
    from .calculus.gradapi import gradients as _gradients
    return _gradients(path, param)


def check(path):
    """The checked model's summary, as `nndsl check` prints it (`.model` is the IR)."""
    from .calculus.gradapi import check as _check
    return _check(path)
