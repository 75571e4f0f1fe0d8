"""nndsl parameters <-> a PyTorch `state_dict`, through the plain-data table that
`nndsl/export/torch_weights.py` makes (its format is described there).

numpy and the table only: no torch import (a tensor is read with
`np.asarray(t.detach().cpu())`, duck-typed), so a generated module offers
`Model.state_dict()` and `Model.load_torch(sd)` without nndsl or torch installed.
"""
import numpy as np

TABLE_FORMAT = 1


class TorchWeightsError(ValueError):
    """A state_dict or parameter set that does not fit the table (one line)."""


def _array(value) -> np.ndarray:
    if hasattr(value, "detach"):           # a torch tensor, without importing torch
        value = value.detach()
        if hasattr(value, "cpu"):
            value = value.cpu()
        if hasattr(value, "numpy"):
            value = value.numpy()
    return np.asarray(value)


def _inverse(perm):
    return [int(i) for i in np.argsort(perm)]


def _names(names, limit=6) -> str:
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _check_keys(given, wanted, what: str) -> None:
    missing = [k for k in wanted if k not in given]
    extra = [k for k in given if k not in wanted]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {_names(missing)}")
        if extra:
            parts.append(f"unexpected {_names(extra)}")
        raise TorchWeightsError(f"{what}: {'; '.join(parts)}")


def to_torch(params, table) -> dict:
    """{state_dict key: ndarray} from nndsl parameters {name: array} (any array-likes)."""
    wanted = [p for e in table["entries"] if e["mode"] == "copy" for p in e["parts"]]
    _check_keys(params, wanted, f"parameters of model {table['model']!r}")
    out = {}
    for e in table["entries"]:
        shape = tuple(e["shape"])
        if e["mode"] == "skip":
            out[e["key"]] = np.zeros(shape, e.get("dtype", "float64"))
            continue
        if e["mode"] == "add":
            dtype = _array(params[e["parts"][0]]).dtype if e["parts"] else np.float64
            out[e["key"]] = np.zeros(shape, dtype)
            continue
        pieces = []
        for name, pshape in zip(e["parts"], e["part_shapes"]):
            a = _array(params[name])
            if a.shape != tuple(pshape):
                raise TorchWeightsError(f"parameter {name}: expected shape {tuple(pshape)}, got {a.shape}")
            pieces.append(np.transpose(a, e["perm"]) if e["perm"] is not None else a)
        value = pieces[0] if len(pieces) == 1 else np.concatenate(pieces, axis=e["axis"])
        out[e["key"]] = np.ascontiguousarray(value.reshape(shape))
    return out


def from_torch(state_dict, table) -> dict:
    """{nndsl parameter: ndarray} from a state_dict (torch tensors or arrays); every key of
    the table must be there, no other, each of the table's shape."""
    _check_keys(state_dict, [e["key"] for e in table["entries"]], f"state_dict for model {table['model']!r}")
    values = {}
    for e in table["entries"]:
        a = _array(state_dict[e["key"]])
        if a.shape != tuple(e["shape"]):
            raise TorchWeightsError(f"state_dict[{e['key']!r}]: expected shape {tuple(e['shape'])}, got {a.shape}")
        if a.dtype.kind not in "fiu":
            raise TorchWeightsError(f"state_dict[{e['key']!r}]: expected real numbers, got {a.dtype}")
        values[e["key"]] = a
    out = {}
    for e in sorted(table["entries"], key=lambda e: e["mode"] != "copy"):   # copies first
        if e["mode"] == "skip":
            continue
        a = values[e["key"]]
        axis = e["axis"]
        for lo, hi in e.get("zero") or ():
            block = np.take(a, range(lo, hi), axis=axis)
            if np.any(block != 0):
                raise TorchWeightsError(
                    f"state_dict[{e['key']!r}]: entries {lo}:{hi} must be 0 ({e.get('why', 'no nndsl counterpart')})")
        start = 0
        for name, pshape in zip(e["parts"], e["part_shapes"]):
            shown = tuple(pshape[i] for i in e["perm"]) if e["perm"] is not None else tuple(pshape)
            size = shown[axis] if shown else 1
            piece = np.take(a, range(start, start + size), axis=axis) if len(e["parts"]) > 1 else a
            start += size
            piece = piece.reshape(shown)
            if e["perm"] is not None:
                piece = np.transpose(piece, _inverse(e["perm"]))
            if e["mode"] == "copy":
                out[name] = np.array(piece, order="C")
            else:
                out[name] = out[name] + piece
    return out
