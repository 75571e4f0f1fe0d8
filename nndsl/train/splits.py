"""A data set split into train and test parts: what `--data` hands to `nndsl train`, and the
one seeded split every named set, sequence set and .npz file goes through."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..diagnostics import UsageError


@dataclass
class Dataset:
    name: str
    x_train: np.ndarray
    y_train: Optional[np.ndarray]
    x_test: np.ndarray
    y_test: Optional[np.ndarray]
    task: str                                   # "classification" | "regression"
    n_classes: Optional[int]
    image_shape: Optional[tuple[int, int]]      # (8, 8) digits, (28, 28) mnist
    y_mean: float = 0.0
    y_std: float = 1.0
    standardised: tuple[str, ...] = ()         # what was standardised: "features", "targets"

    @property
    def n_features(self) -> int:
        """Features per example (the product of the per-example shape)."""
        return int(np.prod(self.x_train.shape[1:], dtype=np.int64))

    @property
    def n_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def n_test(self) -> int:
        return int(self.x_test.shape[0])

    @property
    def has_targets(self) -> bool:
        return self.y_train is not None

    def __repr__(self) -> str:               # arrays are long; show their shapes
        def sh(a):
            return None if a is None else f"{a.dtype}{list(a.shape)}"
        return (f"Dataset(name={self.name!r}, task={self.task!r}, n_classes={self.n_classes}, "
                f"x_train={sh(self.x_train)}, y_train={sh(self.y_train)}, "
                f"x_test={sh(self.x_test)}, y_test={sh(self.y_test)}, "
                f"image_shape={self.image_shape}, y_mean={self.y_mean:.6g}, y_std={self.y_std:.6g})")


def split(n: int, seed: int, test_fraction: float,
           labels: Optional[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices in a fixed shuffled order (a sorted source such as mnist's must
    not give batches of one class); stratified by `labels` when given.

    Pure numpy, so the split depends only on (n, labels, seed, test_fraction)
    and not on the scikit-learn version.
    """
    rng = np.random.default_rng(seed)
    if n < 2:
        raise UsageError(f"cannot split {n} example(s) into train and test parts")
    test: list[np.ndarray] = []
    if labels is None:
        perm = rng.permutation(n)
        n_test = min(n - 1, max(1, int(round(n * test_fraction))))
        test.append(perm[:n_test])
    else:
        for c in np.unique(labels):
            members = np.flatnonzero(labels == c)
            perm = rng.permutation(members)
            n_test = int(round(len(members) * test_fraction))
            if len(members) >= 2:
                n_test = min(len(members) - 1, max(1, n_test))
            test.append(perm[:n_test])
    test_idx = np.sort(np.concatenate(test)) if test else np.zeros(0, dtype=np.int64)
    mask = np.ones(n, dtype=bool)
    mask[test_idx] = False
    train_idx = np.flatnonzero(mask)
    if len(train_idx) == 0 or len(test_idx) == 0:
        raise UsageError(f"cannot split {n} example(s) into train and test parts")
    return rng.permutation(train_idx), rng.permutation(test_idx)
