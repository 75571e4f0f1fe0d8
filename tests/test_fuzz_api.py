"""Fuzzing the user's entry points: random option values and random arrays (shapes, dtypes,
NaN, empty) into `nndsl train` and the module's fit/step/forward end in success or a clear
error -- a documented exception type with a message, exit 1 or 2 without a traceback -- and
leave no partial files. Few examples and one small compiled model keep it fast."""
from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nndsl.cli import main

ROOT = Path(__file__).resolve().parents[1]
# A fixed folder: the built module keeps numba's cache warm from one example to the next.
FOLDER = ROOT / "tests" / ".build" / "fuzz"
TINY = "model fuzz_tiny\ninput x[3]\ntarget y[1]\no = dense(x, 1)\nloss squared(o, y)\ntrain epochs=1 batch=8\n"
CLEAR = (ValueError, TypeError, KeyError, FloatingPointError)
FUZZ = settings(max_examples=25, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

DTYPES = st.sampled_from([np.float64, np.float32, np.float16, np.int64, np.int8, np.bool_,
                          np.complex128, np.str_, object])


@st.composite
def arrays(draw, rows=st.integers(0, 12), width=st.sampled_from([None, 0, 1, 2, 3, 4])):
    """An array of a random dtype and shape, maybe with NaN/inf in it."""
    n, w, dtype = draw(rows), draw(width), draw(DTYPES)
    shape = (n,) if w is None else (n, w)
    values = np.random.default_rng(draw(st.integers(0, 2**16))).standard_normal(shape)
    if draw(st.booleans()) and values.size:
        values.flat[draw(st.integers(0, values.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    if dtype is np.str_ or dtype is object:
        return values.astype(str).astype(dtype)
    with np.errstate(invalid="ignore"):
        return values.astype(dtype)


@st.composite
def pairs(draw, width=3):
    """(x, y): mostly a well-formed set of `width` features (so that runs get as far as
    training), sometimes arbitrary arrays; NaN and inf sometimes."""
    n = draw(st.integers(0, 30))
    if draw(st.integers(0, 4)) == 0:
        return draw(arrays()), draw(arrays())
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    x, y = rng.standard_normal((n, width)), rng.standard_normal((n, 1) if draw(st.booleans()) else (n,))
    if n and draw(st.integers(0, 7)) == 0:
        x[draw(st.integers(0, n - 1)), 0] = np.nan
    return x.astype(draw(st.sampled_from([np.float64, np.float32]))), y


OPTION = st.one_of(st.none(), st.integers(-3, 40), st.floats(allow_nan=True), st.text(max_size=3),
                   st.booleans())


# ----------------------------------------------------------------- module API
@FUZZ
@given(xy=pairs(width=4), epochs=OPTION, batch_size=OPTION, seed=OPTION,
       call=st.sampled_from(["fit", "step", "forward", "loss"]))
def test_module_api_answers_clearly(api, xy, epochs, batch_size, seed, call):
    x, y = xy
    if y.ndim == 2 and y.shape[1:] == (1,) and x.ndim == 2 and x.shape[1:] == (4,):
        y = np.repeat(y, 2, axis=1)          # the API model's y[2]
    try:
        m = api.Model(seed=seed if isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0 else 0)
        if call == "fit":
            hist = m.fit(x=x, y=y, epochs=epochs, batch_size=batch_size, verbose=False)
            assert all(np.isfinite(hist))
        elif call == "step":
            assert np.isfinite(m.step(x=x, y=y, seed=seed))
        elif call == "forward":
            assert np.all(np.isfinite(m.forward(outputs="o", x=x, seed=seed)) | ~np.isfinite(x).all())
        else:
            m.loss(x=x, y=y, seed=seed)
    except CLEAR as exc:
        assert str(exc), type(exc)


# ---------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def tiny():
    FOLDER.mkdir(parents=True, exist_ok=True)
    path = FOLDER / "fuzz_tiny.nn"
    path.write_text(TINY)
    return path


NUMBER_TEXT = st.one_of(st.integers(-2, 30).map(str), st.integers(1, 4).map(str),
                        st.sampled_from(["0.5", "1e-3", "nan", "inf", "", "x", "-0"]))


@FUZZ
@given(xy=pairs(),
       options=st.lists(st.tuples(st.sampled_from(["--epochs", "--batch-size", "--lr", "--seed"]), NUMBER_TEXT),
                        max_size=3),
       flags=st.lists(st.sampled_from(["--standardize", "--quiet"]), unique=True))
def test_train_answers_clearly(tiny, xy, options, flags, capsys):
    x, y = xy
    data = FOLDER / "data.npz"
    np.savez(data, x=x, y=y)
    argv = ["train", str(tiny), "--data", str(data), "--out", str(FOLDER / "out"), *flags]
    for key, value in options:
        argv.append(f"{key}={value}")
    try:
        code = main(argv)
    except SystemExit as exit_:            # argparse's usage errors
        code = exit_.code
    err = capsys.readouterr().err
    assert code in (0, 1, 2), (argv, err)
    assert "Traceback" not in err and (code == 0 or "error:" in err)
    assert not glob.glob(str(FOLDER / "out" / "*.tmp"))    # no partial files left behind
