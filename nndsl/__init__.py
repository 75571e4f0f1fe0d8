"""nndsl: a symbolic-to-code compiler for neural-network definitions."""
__version__ = "0.1.0"
