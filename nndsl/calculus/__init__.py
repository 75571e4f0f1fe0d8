"""The calculus: layers as index formulas (the prelude), reverse mode by sympy, the gradient printer.

The prelude is two modules: `ops.py` (dense, convolutions, pools, expressions, losses) and
`recurrent.py` (rnn, lstm, gru, written over `ops`'s graph); each registers its layers in
`ops.LAYER_FORMULAS` when imported, and importing this package imports both.
"""
from . import recurrent  # noqa: F401  (registers rnn, lstm and gru beside ops's layers)
