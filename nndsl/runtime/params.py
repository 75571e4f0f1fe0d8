"""Parameters: named views into one flat vector, their initial values, learning rates."""
import math

import numpy as np

from .checks import rate


class Params(dict):
    """Named views into the flat parameter vector; assigning copies into the view."""

    def __setitem__(self, name, value):
        if name not in self:
            raise KeyError(f"no parameter {name!r}; parameters: {', '.join(self)}")
        value = np.asarray(value)
        if value.shape != self[name].shape:
            raise ValueError(f"parameter {name!r} has shape {self[name].shape}, got {value.shape}")
        self[name][...] = value

    def _set_view(self, name, view):
        dict.__setitem__(self, name, view)


def named_views(tables, flat):
    """{parameter: its view of `flat`}, a vector laid out like theta."""
    return {name: flat[offset:offset + tables.parameter_count(name)].reshape(shape)
            for name, (offset, shape, *_rest) in tables.params.items()}


def initial_values(tables, name, rng):
    """A parameter's initial values (float64) by its `init`, drawn from `rng`."""
    _, shape, kind, arg, fan_in, fan_out = tables.params[name]
    if kind == "zeros":
        return np.zeros(shape)
    if kind == "ones":
        return np.ones(shape)
    if kind == "xavier":
        a = math.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-a, a, shape)
    if kind == "he":
        return rng.normal(0.0, math.sqrt(2.0 / fan_in), shape)
    if kind == "normal":
        return rng.normal(0.0, arg, shape)
    if kind == "uniform":
        return rng.uniform(-arg, arg, shape)
    raise ValueError(f"unknown init {kind!r}")


class LearningRates(dict):
    """`m.lr`: the learning rate of each named loss's optimiser; a new value must be a finite
    number >= 0 (0 freezes), and the names are fixed (they are the model's losses)."""

    def __init__(self, values, losses):
        super().__init__(values)
        self._losses = tuple(losses)

    def __setitem__(self, name, value):
        if name not in self._losses:
            raise KeyError(f"no loss {name!r} to set a learning rate for; losses: {', '.join(self._losses)}")
        # 0 is allowed: it freezes the loss's parameters (a step still computes the loss)
        dict.__setitem__(self, name, rate(value, f"lr[{name!r}]"))

    def update(self, *args, **kwargs):
        for name, value in dict(*args, **kwargs).items():
            self[name] = value

    def setdefault(self, name, value=None):
        if name not in self:
            self[name] = value
        return self[name]

    def _fixed(self, *args, **kwargs):
        raise TypeError("learning rates cannot be removed; set another value instead")

    __delitem__ = pop = popitem = clear = _fixed
