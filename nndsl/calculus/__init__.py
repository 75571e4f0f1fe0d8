"""The calculus: layers as index formulas (the prelude), reverse mode by sympy, the gradient printer."""
