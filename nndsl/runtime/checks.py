"""Argument checks: every mistake a caller can make with arrays and options is a ValueError
or TypeError that names the argument and says what was expected."""
import math

import numpy as np


def rate(value, what):
    """A learning rate or another number >= 0."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{what}: expected a number >= 0, got {value!r}")
    if not (math.isfinite(float(value)) and float(value) >= 0):
        raise ValueError(f"{what}: expected a finite number >= 0, got {value!r}")
    return float(value)


def count(value, what, minimum=1):
    """An integer option (epochs, batch_size, ...): ints only, at least `minimum`."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{what}: expected an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{what}: expected an integer >= {minimum}, got {value}")
    return int(value)


def seed_value(seed, what="seed"):
    return None if seed is None else count(seed, what, minimum=0)


def check_finite(name, a):
    """ValueError naming the array, the count of rows with NaN or inf, and the first one.
    O(size) once per array: `fit` checks its arrays once, `step` only arrays it has not seen."""
    if not isinstance(a, np.ndarray) or a.dtype.kind != "f" or a.size == 0:
        return                               # a device array (a CUDA module's) would be copied back
    ok = np.isfinite(a.reshape(a.shape[0], -1)).all(axis=1)
    if not ok.all():
        bad = np.flatnonzero(~ok)
        raise ValueError(f"{name!r}: {len(bad)} of {a.shape[0]} rows hold NaN or inf "
                         f"(the first is row {bad[0]}); remove or impute them before training")


def _expected(shape):
    return "(N, " + ", ".join(map(str, shape)) + ")" if shape else "(N,)"


def label(what):
    """A call's name in messages: text, or (verb, loss name) formatted only when needed."""
    return what if isinstance(what, str) else f"{what[0]} {what[1]!r}"


def checked_arrays(tables, names, data, what):
    """The arrays `names` from `data`, converted to the kernels' dtypes and C order and checked
    against the model's declarations: (arrays, batch size, free sizes)."""
    what = label(what)
    unknown = sorted(set(data) - set(tables.data))
    if unknown:
        raise ValueError(f"{what}: unknown input {unknown[0]!r}; expected {', '.join(names)}")
    missing = [n for n in names if n not in data]
    if missing:
        raise ValueError(f"{what}: missing input {missing[0]!r}; expected {', '.join(names)}")
    arrays, n_rows, sizes = [], None, {}
    for name in names:
        shape, classes, _ = tables.data[name]
        a = np.asarray(data[name])
        expected = _expected(shape)
        if classes is not None:             # (N,), or (N, T) for per-step labels
            if a.ndim != len(shape) + 1 or not np.issubdtype(a.dtype, np.integer):
                raise ValueError(f"{name!r}: expected integer class labels of shape {expected}, "
                                 f"got {a.dtype} array of shape {a.shape}")
            if a.size and (a.min() < 0 or a.max() >= classes):
                raise ValueError(f"{name!r}: labels must lie in 0..{classes - 1}, "
                                 f"got values in {a.min()}..{a.max()}")
            a = np.ascontiguousarray(a, dtype=np.int64)
        elif a.ndim != len(shape) + 1 or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
            hint = " (use .reshape(-1, 1))" if shape == (1,) and a.ndim == 1 else ""
            raise ValueError(f"{name!r}: expected a numeric array of shape {expected}, "
                             f"got {a.dtype} array of shape {a.shape}{hint}")
        else:
            a = np.ascontiguousarray(a, dtype=tables.dtype)
        for axis, size in enumerate(shape):
            if isinstance(size, str):
                if sizes.setdefault(size, a.shape[axis + 1]) != a.shape[axis + 1]:
                    raise ValueError(f"{name!r}: size {size} is {sizes[size]} elsewhere, "
                                     f"got {a.shape[axis + 1]}")
            elif a.shape[axis + 1] != size:
                raise ValueError(f"{name!r}: expected shape {expected}, got {a.shape}")
        if n_rows is None:
            n_rows = a.shape[0]
        elif a.shape[0] != n_rows:
            raise ValueError(f"{name!r}: batch size {a.shape[0]} differs from {n_rows} in {names[0]!r}")
        arrays.append(a)
    if n_rows == 0:
        raise ValueError(f"{what}: empty batch")
    return arrays, n_rows, sizes


def ready_spec(tables, names):
    """What `ready_arrays` checks of each array: (name, rank, dtype, fixed sizes, free sizes,
    classes), made once per list of names."""
    out = []
    for name in names:
        shape, classes, _ = tables.data[name]
        fixed = tuple((axis + 1, size) for axis, size in enumerate(shape) if not isinstance(size, str))
        free = tuple((axis + 1, size) for axis, size in enumerate(shape) if isinstance(size, str))
        out.append((name, len(shape) + 1, np.dtype(np.int64 if classes is not None else tables.dtype), fixed, free,
                    classes))
    return tuple(out)


def ready_arrays(spec, data, labels=True):
    """The arrays as given when they already have the kernels' dtype, layout and shape (the
    common case in a training loop): (arrays, batch size, free sizes); None sends the call
    to `checked_arrays`. `spec`: the names' `ready_spec`; `labels`: whether class labels are
    checked to lie in range (not for rows of arrays `fit` checked whole)."""
    if len(data) != len(spec):
        return None
    arrays, n_rows, sizes = [], -1, {}
    for name, ndim, dtype, fixed, free, classes in spec:
        a = data.get(name)
        if type(a) is not np.ndarray or a.ndim != ndim or a.dtype != dtype or not a.flags.c_contiguous:
            return None
        shape = a.shape
        if n_rows < 0:
            n_rows = shape[0]
        if shape[0] != n_rows or n_rows == 0:
            return None
        for axis, size in fixed:
            if shape[axis] != size:
                return None
        for axis, size in free:
            if sizes.setdefault(size, shape[axis]) != shape[axis]:
                return None
        if labels and classes is not None and (a.min() < 0 or a.max() >= classes):
            return None
        arrays.append(a)
    return arrays, n_rows, sizes


def step_mask(tables, key, lengths, n_rows, sizes):
    """`x_lengths=`: the step mask of x's free length (1 before an example's length, 0 after)."""
    size, source = tables.masks[tables.lengths[key]]
    T = sizes.get(size)
    if T is None:
        raise ValueError(f"{key!r}: given without the sequence {source!r}")
    a = np.asarray(lengths)
    if a.shape != (n_rows,) or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{key!r}: expected integer lengths of shape ({n_rows},), one per example "
                         f"of {source!r}, got {a.dtype} array of shape {a.shape}")
    if a.min() < 1 or a.max() > T:
        bad = a[(a < 1) | (a > T)][0]
        raise ValueError(f"{key!r}: every length must lie in 1..{T} (the {size} of {source!r}), "
                         f"got {bad}")
    return (np.arange(T)[None, :] < a[:, None]).astype(tables.dtype)


def forward_outputs(tables, outputs):
    """`forward(outputs=...)`: a node name or a non-empty list of them."""
    if outputs is not None and not isinstance(outputs, str):
        if not isinstance(outputs, (list, tuple)) or not outputs or \
                not all(isinstance(o, str) for o in outputs):
            raise TypeError(f"forward: outputs must be a node name or a non-empty list of node "
                            f"names ({', '.join(tables.nodes)}), got {outputs!r}")
    names = list(tables.outputs) if outputs is None else [outputs] if isinstance(outputs, str) else list(outputs)
    for name in names:
        if name not in tables.nodes:
            raise ValueError(f"forward: no node {name!r} to return; nodes: {', '.join(tables.nodes)}")
    return names
