"""Reading a trained model's parameters: `read_params(model_ir, source)`.

`source` is a file written by the generated module's `Model.save`, a live `Model`, or a
dict {name: array}. A saved file is an .npz holding either

* per-parameter arrays `param:NAME` (format 2, `__format__` = 2): matched by name and shape,
  so weights survive edits of the model file that keep them (a comment, a new output), or
* `theta` (format 1): the flat parameter vector, the parameters concatenated in
  `model.params` order, each C-ordered — valid only for the source that wrote it, so its
  `__hash__` must be a build of this source,

plus `__model__` (the model's name, which must be this model's), and optimiser state and
step counts, which are not read here.
"""
from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping
from math import prod

import numpy as np

from ..diagnostics import UsageError
from .errors import ExportError

PARAM_PREFIX = "param:"


def _names(names, limit=6) -> str:
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def source_hashes(model) -> set[str]:
    """Every source hash a build of this model's text can carry (dtype, target)."""
    from ..build import source_hash
    return {source_hash(model.source, d, t) for d in ("float32", "float64") for t in ("cpu", "cuda")}


def read_params(model, source) -> dict[str, np.ndarray]:
    """{parameter name: array of its shape} in `model.params` order (then the running
    statistics, `model.stats`), from a saved file (a
    path), a generated module's `Model` (anything with `.params`) or a dict {name: array}.
    A file of another model, or one whose names or shapes differ from the model's:
    `ExportError`, one line."""
    if isinstance(source, Mapping):
        return _checked(model, dict(source), "parameters")
    if hasattr(source, "params") and not isinstance(source, (str, bytes, os.PathLike)):
        return _from_model_object(model, source)
    path = os.fspath(source)
    if not os.path.exists(path):
        raise UsageError(f"{path}: no such file")
    if os.path.isdir(path):
        raise UsageError(f"{path}: a folder, not a weights file")
    try:
        f = np.load(path, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise ExportError(f"{path}: not a weights file saved by an nndsl model ({type(exc).__name__})") from None
    if not hasattr(f, "files"):
        raise ExportError(f"{path}: not a weights file saved by an nndsl model (a single array)")
    with f:
        files = set(f.files)
        by_name = [k for k in f.files if k.startswith(PARAM_PREFIX)]
        if not by_name and "theta" not in files:
            raise ExportError(f"{path}: not a weights file saved by an nndsl model (no `theta`, no `param:` arrays)")
        _check_model_name(model, path, f, files)
        try:
            if by_name:
                arrays = {k[len(PARAM_PREFIX):]: f[k] for k in by_name}
                return _checked(model, arrays, path)
            _check_source(model, path, f, files)
            return _split_theta(model, f["theta"], path)
        except ValueError as exc:          # a damaged member
            if isinstance(exc, ExportError):
                raise
            raise ExportError(f"{path}: unreadable ({exc})") from None


def _check_model_name(model, path, f, files) -> None:
    if "__model__" in files:
        saved = str(f["__model__"])
        if saved != model.name:
            raise ExportError(f"{path}: weights of model {saved!r}, not of {model.name!r} ({model.path})")


def _check_source(model, path, f, files) -> None:
    """A flat theta is laid out by the source that wrote it."""
    if "__hash__" in files:
        saved = str(f["__hash__"])
        if saved not in source_hashes(model):
            raise ExportError(f"{path}: saved by a build of {model.name!r} from another source "
                              f"(hash {saved[:12]}): {model.path} changed since, or another nndsl version built it")


def _state(model):
    """The parameters and the running statistics (model state, after them in theta)."""
    return tuple(model.params) + tuple(getattr(model, "stats", ()))


def _split_theta(model, theta, path) -> dict[str, np.ndarray]:
    theta = np.asarray(theta)
    sizes = [prod(p.shape) for p in _state(model)]
    if theta.ndim != 1 or theta.size != sum(sizes):
        raise ExportError(f"{path}: `theta` holds {theta.size} numbers, the parameters of "
                          f"{model.name!r} are {sum(sizes)}")
    _check_real(theta, "theta", path)
    out, offset = {}, 0
    for p, size in zip(_state(model), sizes):
        out[p.name] = np.array(theta[offset:offset + size].reshape(p.shape), order="C")
        offset += size
    return out


def _check_real(a, name, path) -> None:
    if a.dtype.kind != "f":
        raise ExportError(f"{path}: {name} holds {a.dtype} numbers, not floats")


def _checked(model, arrays: dict, path) -> dict[str, np.ndarray]:
    wanted = {p.name: tuple(p.shape) for p in _state(model)}
    missing = [n for n in wanted if n not in arrays]
    extra = [n for n in arrays if n not in wanted]
    reshaped = [f"{n} {tuple(np.shape(arrays[n]))} (the model's is {wanted[n]})" for n in wanted
                if n in arrays and tuple(np.shape(arrays[n])) != wanted[n]]
    problems = []
    if missing:
        problems.append(f"missing {_names(missing)}")
    if extra:
        problems.append(f"not in the model {_names(extra)}")
    if reshaped:
        problems.append(f"reshaped {_names(reshaped, 3)}")
    if problems:
        raise ExportError(f"{path}: parameters do not fit {model.name!r}: {'; '.join(problems)}")
    out = {}
    for n in wanted:
        a = np.asarray(arrays[n])
        _check_real(a, n, path)
        out[n] = np.array(a, order="C")
    return out


def _from_model_object(model, m) -> dict[str, np.ndarray]:
    """A live Model: its parameters by name (the module's `tables.name`, or MODEL_NAME of a
    module of before the runtime package, must be this model's)."""
    import sys
    tables = getattr(m, "tables", None)
    name = getattr(tables, "name", None) or getattr(sys.modules.get(type(m).__module__), "MODEL_NAME", None)
    what = f"Model of {type(m).__module__}"
    if name is not None and name != model.name:
        raise ExportError(f"{what}: weights of model {name!r}, not of {model.name!r} ({model.path})")
    arrays = {k: np.asarray(v) for k, v in {**dict(m.params), **dict(getattr(m, "stats", {}))}.items()}
    return _checked(model, arrays, what)
