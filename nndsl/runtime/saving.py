"""Saved models: every parameter, optimiser slot and step count by name, so weights survive
edits of the model file (a comment, a new layer with `strict=False`, another dtype).

An .npz of format 2 holds `param:NAME` (the parameter, its own shape), `s1:LOSS:NAME` and
`s2:LOSS:NAME` (the optimiser's state for it under loss LOSS), `t:LOSS` (that optimiser's
step count), and `__format__`, `__model__`, `__hash__` (the source it was built from, for
information), `__noise__` (the draws' counter). Files of format 1 (one flat `theta`, valid
only for the same source) still load into the build that wrote them."""
import os

import numpy as np

from .params import named_views

FORMAT = 2
SLOTS = ("s1", "s2")


def state_arrays(model):
    """What `save` writes (and a checkpoint starts from)."""
    tables = model.tables
    out = {"__format__": np.array(FORMAT), "__model__": np.array(tables.name),
           "__hash__": np.array(tables.source_hash), "__noise__": np.array(str(model._lcg))}
    out.update({f"param:{name}": view for name, view in named_views(tables, model.theta).items()})
    for loss in tables.losses:
        for slot, vector in zip(SLOTS, model._state[loss]):
            out.update({f"{slot}:{loss}:{name}": view for name, view in named_views(tables, vector).items()})
        out[f"t:{loss}"] = np.array(model._t[loss])
    return out


class SavedFileError(ValueError):
    """A file that is not this model's saved state or checkpoint (one line, naming the file).
    A ValueError, so `except ValueError` keeps working."""


def open_saved(path):
    """The saved .npz at `path`, open (close it after use); ValueError if it is not one."""
    try:
        f = np.load(os.fspath(path))
    except OSError:
        raise
    except Exception as exc:           # a zip that is not .npz, a pickle, ...
        raise SavedFileError(f"{path}: not a saved nndsl model ({type(exc).__name__})") from None
    if not hasattr(f, "files"):
        raise SavedFileError(f"{path}: not a saved nndsl model (a single array)")
    if "__model__" not in f or ("theta" not in f and "__format__" not in f):
        f.close()
        raise SavedFileError(f"{path}: not a saved nndsl model")
    return f


def mismatch(tables, saved):
    """What differs between the model's parameters and `saved` ({name: array}), in words
    ('' when they match)."""
    missing = [n for n in tables.params if n not in saved]
    extra = [n for n in saved if n not in tables.params]
    reshaped = [f"{n} {tuple(saved[n].shape)} -> {tuple(tables.params[n][1])}" for n in tables.params
                if n in saved and tuple(saved[n].shape) != tuple(tables.params[n][1])]
    parts = [f"{what} {', '.join(names)}" for what, names in
             (("missing", missing), ("extra", extra), ("reshaped", reshaped)) if names]
    return "; ".join(parts)


def restore(model, f, path, strict=True):
    """The parameters, optimiser state, step counts and draw counter of `model` from the open
    saved file `f`, matched by name and shape and converted to the model's dtype. `strict`:
    every parameter must match (else ValueError saying which are missing, extra or reshaped);
    otherwise what matches is loaded and the rest keeps its values."""
    tables = model.tables
    if "__format__" not in f:
        return _restore_flat(model, f, path)
    saved = {k[len("param:"):]: f[k] for k in f.files if k.startswith("param:")}
    problems = mismatch(tables, saved)
    if problems and strict:
        other = str(f["__model__"])
        whose = f"saved by model {other!r}, whose parameters" if other != tables.name else "its parameters"
        raise SavedFileError(f"{path}: {whose} do not match this build of {tables.name!r}: {problems} "
                         f"(load(..., strict=False) loads those that match)")
    loaded = [name for name in tables.params if name in saved and not _reshaped(tables, saved, name)]
    for name, view in named_views(tables, model.theta).items():
        if name in loaded:
            view[...] = saved[name]
    for loss in tables.losses:
        if f"t:{loss}" not in f:
            continue
        for slot, vector in zip(SLOTS, model._state[loss]):
            for name, view in named_views(tables, vector).items():
                key = f"{slot}:{loss}:{name}"
                if name in loaded and key in f:
                    view[...] = f[key]
        model._t[loss] = int(f[f"t:{loss}"])
    if "__noise__" in f:
        model._lcg = int(str(f["__noise__"]))
    return loaded


def _reshaped(tables, saved, name):
    return tuple(saved[name].shape) != tuple(tables.params[name][1])


def _restore_flat(model, f, path):
    """Format 1: one flat theta, laid out by the source it was built from."""
    tables = model.tables
    if str(f["__model__"]) != tables.name or str(f["__hash__"]) != tables.source_hash:
        raise SavedFileError(f"{path}: saved by model {str(f['__model__'])!r} "
                         f"(hash {str(f['__hash__'])[:12]}), not by this build of "
                         f"{tables.name!r} (hash {tables.source_hash[:12]}); save it again "
                         "with the build that wrote it to keep its weights by name")
    model.theta[...] = f["theta"]
    model._lcg = int(str(f["__noise__"])) if "__noise__" in f else model._lcg
    for name in tables.losses:
        model._state[name][0][...] = f[f"s1:{name}"]
        model._state[name][1][...] = f[f"s2:{name}"]
        model._t[name] = int(f[f"t:{name}"])
    return list(tables.params)
