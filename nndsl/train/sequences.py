"""Sequence data sets for `nndsl train --data names|sine`, and samples from a trained
character-level language model. Nothing is downloaded at run time.

`names`: the US Census 1990 first names (public domain) that the `names` package ships
(`pip install 'nndsl[text]'`), lower-cased, male and female lists merged without repeats.
Each name becomes a sequence over the 27 symbols `.abc…z` ('.' starts and ends a name and
pads it): input `x[T, 27]` is the one-hot of `.name..` (a model whose input is class-valued,
`input chars[T]: class(27)`, gets the letters' indices instead), target `next[T]: class(27)`
the symbol that follows each step (`name...`), T = the longest name + 1.

`sine`: a noisy sine forecast, generated from a fixed seed by
    s_t = sin(ω·t + φ) + 0.1·ε_t,  ω ~ U(0.5, 1.5), φ ~ U(0, 2π), ε_t ~ N(0, 1),  t = 0..32:
input `x[32, 1]` is s_0..s_31, target `y[1]` the next value s_32 (noisy; the noise floor
of the RMSE is 0.1). 2,000 sequences.
"""
from __future__ import annotations

import os

import numpy as np

from ..diagnostics import UsageError
from .splits import Dataset, split

SYMBOLS = "." + "abcdefghijklmnopqrstuvwxyz"


def load(name: str, seed: int, test_fraction: float):
    if name == "names":
        x, y = _names_sequences()
        task, n_classes = "classification", len(SYMBOLS)
    else:
        x, y = _sine(seed)
        task, n_classes = "regression", None
    train, test = split(len(x), seed, test_fraction, labels=None)
    return Dataset(name=name, x_train=x[train], y_train=y[train], x_test=x[test], y_test=y[test],
                   task=task, n_classes=n_classes, image_shape=None)


def _names_list() -> list[str]:
    try:
        import names
    except ImportError:
        raise UsageError("data set `names` needs the `names` package: pip install 'nndsl[text]'") from None
    folder = os.path.dirname(names.__file__)
    out = []
    for fname in ("dist.female.first", "dist.male.first"):
        with open(os.path.join(folder, fname)) as f:
            out += [line.split()[0].lower() for line in f if line.strip()]
    return sorted(set(n for n in out if n.isalpha()))


def _names_sequences():
    words = _names_list()
    T = max(len(w) for w in words) + 1
    ids = np.zeros((len(words), T + 1), np.int64)           # '.' = 0 pads
    for i, w in enumerate(words):
        ids[i, 1:len(w) + 1] = [SYMBOLS.index(c) for c in w]
    x = np.eye(len(SYMBOLS))[ids[:, :T]]                            # (N, T, 27); bound as x[T, 27]
    return x, ids[:, 1:]


def _sine(seed: int, n: int = 2000, T: int = 32):
    rng = np.random.default_rng(1234 + seed)
    omega = rng.uniform(0.5, 1.5, (n, 1))
    phi = rng.uniform(0, 2 * np.pi, (n, 1))
    t = np.arange(T + 1)
    s = np.sin(omega * t + phi) + 0.1 * rng.standard_normal((n, T + 1))
    return s[:, :T].copy(), s[:, T:].copy()


def sample_names(m, n: int = 12, seed: int = 0, max_len: int = 16) -> list[str]:
    """Names drawn letter by letter by the module's `generate`, from '.' to the next '.'
    (at least one letter)."""
    symbols = m.generate(max_len, n=n, seed=seed, stop=0, min_length=1)
    return ["".join(SYMBOLS[i] for i in row[1:]).split(".")[0].capitalize() for row in symbols]
