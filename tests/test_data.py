"""The bundled data sets (`nndsl.train.datasets`): shapes, dtypes, splits, .npz files, errors."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("mlxtend")

from nndsl.train.datasets import Dataset, dataset_names, load_dataset  # noqa: E402
from nndsl.diagnostics import UsageError  # noqa: E402

# name, examples, features, task, classes, image shape
SETS = [
    ("digits", 1797, 64, "classification", 10, (8, 8)),
    ("mnist", 5000, 784, "classification", 10, (28, 28)),
    ("iris", 150, 4, "classification", 3, None),
    ("wine", 178, 13, "classification", 3, None),
    ("breast_cancer", 569, 30, "classification", 2, None),
    ("diabetes", 442, 10, "regression", None, None),
]
IDS = [row[0] for row in SETS]


SEQUENCE_SETS = ["names", "sine"]          # nndsl/train/sequences.py


def test_names_are_the_table():
    assert dataset_names() == sorted(IDS + SEQUENCE_SETS)


def test_sequence_sets():
    pytest.importorskip("names")
    d = load_dataset("names")
    T = d.y_train.shape[1]
    assert d.x_train.shape[1:] == (T, 27) and d.n_classes == 27 and d.y_train.dtype == np.int64
    x = d.x_train
    assert np.all(x.sum(axis=2) == 1) and np.all(x[:, 0, 0] == 1)        # one-hot, '.' first
    assert np.all(np.argmax(x[:, 1:], axis=2) == d.y_train[:, :-1])       # the next symbol
    s = load_dataset("sine")
    assert s.x_train.shape[1:] == (32,) and s.y_train.shape[1:] == (1,) and s.task == "regression"


@pytest.mark.parametrize("name,n,f,task,k,image", SETS, ids=IDS)
def test_shapes_and_dtypes(name, n, f, task, k, image):
    d = load_dataset(name)
    assert isinstance(d, Dataset)
    assert d.name == name and d.task == task and d.n_classes == k and d.image_shape == image
    assert d.x_train.dtype == np.float64 and d.x_test.dtype == np.float64
    assert d.x_train.shape[1:] == (f,) and d.x_test.shape[1:] == (f,)
    assert d.x_train.shape[0] + d.x_test.shape[0] == n
    assert d.n_features == f and d.n_train + d.n_test == n
    # a 20% test part (rounded per class)
    assert abs(d.n_test - 0.2 * n) <= (k or 1)
    assert np.isfinite(d.x_train).all() and np.isfinite(d.x_test).all()
    if task == "classification":
        assert d.y_train.dtype == np.int64 and d.y_test.dtype == np.int64
        assert d.y_train.shape == (d.n_train,) and d.y_test.shape == (d.n_test,)
        assert set(np.unique(d.y_train)) == set(range(k))
        assert set(np.unique(d.y_test)) == set(range(k))
        assert (d.y_mean, d.y_std) == (0.0, 1.0)
    else:
        assert d.y_train.dtype == np.float64
        assert d.y_train.shape == (d.n_train, 1) and d.y_test.shape == (d.n_test, 1)
        # standardised with the training statistics; the originals are recoverable
        assert abs(d.y_train.mean()) < 1e-9 and abs(d.y_train.std() - 1.0) < 1e-9
        assert d.y_std > 1.0 and d.y_mean > 0.0
        raw = np.concatenate([d.y_train, d.y_test]) * d.y_std + d.y_mean
        assert raw.min() >= 25 and raw.max() <= 346          # diabetes progression range


@pytest.mark.parametrize("name", [s[0] for s in SETS if s[5] is not None])
def test_images_scaled_to_unit_interval(name):
    d = load_dataset(name)
    for x in (d.x_train, d.x_test):
        assert x.min() == 0.0 and x.max() == 1.0


@pytest.mark.parametrize("name", [s[0] for s in SETS if s[5] is None])
def test_tabular_features_standardised_with_train_stats(name):
    d = load_dataset(name)
    assert np.allclose(d.x_train.mean(axis=0), 0.0, atol=1e-9)
    assert np.allclose(d.x_train.std(axis=0), 1.0, atol=1e-9)
    assert not np.allclose(d.x_test.mean(axis=0), 0.0, atol=1e-9)   # test stats are not used


@pytest.mark.parametrize("name", IDS)
def test_split_is_deterministic_and_disjoint(name):
    a, b = load_dataset(name), load_dataset(name)
    for field in ("x_train", "y_train", "x_test", "y_test"):
        assert np.array_equal(getattr(a, field), getattr(b, field))
    # disjoint: no training row appears in the test part (rows are unique in these sets
    # up to duplicates already present in the source, which we count the same way)
    rows = lambda x: {r.tobytes() for r in x}                        # noqa: E731
    all_rows = rows(np.concatenate([a.x_train, a.x_test]))
    assert len(rows(a.x_train) & rows(a.x_test)) <= a.n_train + a.n_test - len(all_rows)


def test_split_depends_on_seed():
    a, b = load_dataset("iris", seed=0), load_dataset("iris", seed=1)
    assert not np.array_equal(a.x_test, b.x_test)
    assert a.n_test == b.n_test


def test_split_is_stratified():
    d = load_dataset("breast_cancer")
    assert abs(d.y_train.mean() - d.y_test.mean()) < 0.01
    d = load_dataset("digits")
    assert np.bincount(d.y_test).min() >= 35 and np.bincount(d.y_test).max() <= 37


def test_test_fraction():
    d = load_dataset("digits", test_fraction=0.5)
    assert abs(d.n_test - 1797 / 2) <= 10
    with pytest.raises(UsageError):
        load_dataset("digits", test_fraction=1.5)


def test_the_loader_does_not_alias_cached_arrays():
    a = load_dataset("wine")
    a.x_train[:] = 0.0
    assert load_dataset("wine").x_train.std() > 0.5


# ---------------------------------------------------------------------- npz
def test_npz_round_trip_with_split_keys(tmp_path):
    d = load_dataset("iris")
    path = tmp_path / "iris.npz"
    np.savez(path, x_train=d.x_train, y_train=d.y_train, x_test=d.x_test, y_test=d.y_test)
    e = load_dataset(str(path))
    assert e.name == "iris" and e.task == "classification" and e.n_classes == 3
    for field in ("x_train", "y_train", "x_test", "y_test"):
        assert np.array_equal(getattr(d, field), getattr(e, field))
        assert getattr(d, field).dtype == getattr(e, field).dtype


def test_npz_x_y_is_split_like_a_named_set(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 3)).astype(np.float32)
    y = np.repeat(np.arange(4), 25).astype(np.int32)
    path = tmp_path / "mine.npz"
    np.savez(path, x=x, y=y)
    a, b = load_dataset(str(path)), load_dataset(path)
    assert a.x_train.dtype == np.float64 and a.y_train.dtype == np.int64
    assert a.n_train == 80 and a.n_test == 20 and a.n_classes == 4
    assert np.array_equal(np.bincount(a.y_test), [5, 5, 5, 5])
    assert np.array_equal(a.x_test, b.x_test)
    rows = {r.tobytes() for r in a.x_train}
    assert not any(r.tobytes() in rows for r in a.x_test)


def test_npz_real_targets_and_no_targets(tmp_path):
    x = np.arange(40.0).reshape(20, 2)
    np.savez(tmp_path / "reg.npz", x=x, y=x.sum(axis=1))
    d = load_dataset(str(tmp_path / "reg.npz"))
    assert d.task == "regression" and d.n_classes is None
    assert d.y_train.shape == (d.n_train, 1) and d.y_train.dtype == np.float64
    np.savez(tmp_path / "ae.npz", x_train=x[:15], x_test=x[15:])
    d = load_dataset(str(tmp_path / "ae.npz"))
    assert d.y_train is None and d.y_test is None and d.n_train == 15
    np.savez(tmp_path / "img.npz", x=np.zeros((10, 1, 4, 4)))
    d = load_dataset(str(tmp_path / "img.npz"))
    assert d.x_train.shape[1:] == (1, 4, 4) and d.n_features == 16


@pytest.mark.parametrize("arrays,needle", [
    ({"a": np.zeros(3)}, "keys found: a"),
    ({"x_train": np.zeros((4, 2)), "x_test": np.zeros((2, 2)), "y_train": np.zeros(4)}, "y_test"),
    ({"x": np.zeros((4, 2)), "y": np.zeros(5)}, "4 examples"),
    ({"x_train": np.zeros((4, 2)), "x_test": np.zeros((2, 3))}, "per-example shape"),
])
def test_npz_bad_contents(tmp_path, arrays, needle):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(UsageError, match=needle.replace("(", r"\(")):
        load_dataset(str(path))


def test_npz_missing_or_corrupt(tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        load_dataset(str(tmp_path / "nope.npz"))
    bad = tmp_path / "junk.npz"
    bad.write_bytes(b"this is not a zip file")
    with pytest.raises(UsageError, match="is not an .npz archive"):
        load_dataset(str(bad))
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"PK\x03\x04 and then nothing a zip holds")
    with pytest.raises(UsageError, match="cannot read as an .npz archive"):
        load_dataset(str(broken))


# ------------------------------------------------------------------- errors
@pytest.mark.parametrize("typo,suggestion", [
    ("digts", "digits"),
    ("minst", "mnist"),
    ("breast-cancr", "breast_cancer"),
    ("diabetis", "diabetes"),
])
def test_unknown_name_suggests_and_lists(typo, suggestion):
    with pytest.raises(UsageError) as err:
        load_dataset(typo)
    msg = str(err.value)
    assert f"did you mean `{suggestion}`?" in msg
    for name in IDS:
        assert name in msg
    assert "Traceback" not in msg


def test_unknown_name_without_close_match_still_lists():
    with pytest.raises(UsageError) as err:
        load_dataset("imagenet")
    assert "did you mean" not in str(err.value) and "digits" in str(err.value)


def test_names_are_case_and_dash_insensitive():
    assert load_dataset("Breast-Cancer").name == "breast_cancer"


@pytest.mark.parametrize("name, loader", [("digits", "load_digits"), ("iris", "load_iris"),
                                          ("wine", "load_wine"), ("breast_cancer", "load_breast_cancer")])
def test_sklearns_files_read_as_its_loaders_read_them(name, loader):
    """Read without importing scikit-learn (1.7 s of a short `nndsl train`): the same arrays."""
    from sklearn import datasets as skd
    from nndsl.train.datasets import _sklearn_file
    bunch = getattr(skd, loader)()
    x, y = _sklearn_file(name)
    assert np.array_equal(x, bunch.data) and np.array_equal(y, bunch.target)


def test_missing_optional_dependency(monkeypatch):
    import builtins
    import nndsl.train.datasets as data

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("sklearn") or name.startswith("mlxtend"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    import importlib.util
    real_find = importlib.util.find_spec
    data._raw.cache_clear()
    monkeypatch.setattr(builtins, "__import__", fake_import)
    # (not installed: its files are not found either)
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("sklearn") else real_find(name, *a))
    try:
        for name in ("iris", "mnist"):
            with pytest.raises(UsageError, match=r"pip install 'nndsl\[data\]'"):
                load_dataset(name)
    finally:
        monkeypatch.undo()
        data._raw.cache_clear()


@pytest.mark.parametrize("labels", [None, np.repeat(np.arange(3), [50, 30, 7])])
def test_split_indices_partition_the_examples(labels):
    from nndsl.train.splits import split as _split
    tr, te = _split(87, 0, 0.2, labels)
    assert len(np.intersect1d(tr, te)) == 0
    assert np.array_equal(np.union1d(tr, te), np.arange(87))
    tr2, te2 = _split(87, 0, 0.2, labels)
    assert np.array_equal(tr, tr2) and np.array_equal(te, te2)
    if labels is not None:                      # every class is in both parts
        assert set(labels[tr]) == set(labels[te]) == {0, 1, 2}
