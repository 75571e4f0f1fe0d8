"""`Model(threads=K)`: each batch's gradient computed in K parts in K threads, then one update
of their share-weighted sum: the one-thread step, up to the rounding of that sum."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nndsl.runtime.threads import loop_threads_safe, max_loop_threads

from conftest import BATCHNORM, GAN, SMALL_LSTM, compile_example, compile_source, random_data

# (name, module, extra arguments of every step): an MLP, noise drawn per example
# (dropout: each part draws at its rows' place in the batch), a recurrence with per-example
# lengths, two losses with their own parameters (a GAN), and batchnorm, whose batch is not
# split: its loops over images run in numba's threads instead
CASES = {
    "mlp": (lambda: compile_example("digits_mlp"), {}),
    "dropout": (lambda: compile_example("dropout_mlp"), {}),
    "lstm-lengths": (lambda: compile_source(SMALL_LSTM), {"x_lengths": np.arange(20) % 4 + 1}),
    "gan": (lambda: compile_source(GAN), {}),
    "batchnorm-loops": (lambda: compile_source(BATCHNORM), {}),
}


# where the parts run: numba's threads (OpenMP/TBB), or Python's (any other threading layer)
PARTS_IN = {"numba": True, "python": False}


def _case(case, parts_in, seed):
    """(module, 20 rows of data, extra arguments of every step) of a case of CASES."""
    make, extra = CASES[case]
    module = make()
    if PARTS_IN[parts_in] and not loop_threads_safe():
        pytest.skip("numba's threading layer here is neither OpenMP nor TBB")
    data = random_data(module, n=20, seed=seed)
    if "x" in data and data["x"].ndim == 3:
        data["x"] = np.random.default_rng(seed).standard_normal((20, 4, 3))
    return module, data, extra


def _same_steps(module, data, extra, one, other, step):
    """Three steps of every loss: `step(name, data)` of `other` as `one.step` does them."""
    for _ in range(3):
        for name in module.LOSSES:
            d = {k: data[k] for k in module.STEPS[name].data}
            d.update(extra)
            assert one.step(name, **d) == pytest.approx(step(name, d), rel=1e-12)
    np.testing.assert_allclose(other.theta, one.theta, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("parts_in", sorted(PARTS_IN))
@pytest.mark.parametrize("case", sorted(CASES))
def test_threaded_steps_equal_one_threads(case, parts_in):
    module, data, extra = _case(case, parts_in, seed=3)
    one, two = module.Model(seed=0), module.Model(seed=0, threads=2)
    two._parts_in_numba = PARTS_IN[parts_in]
    _same_steps(module, data, extra, one, two, lambda name, d: two.step(name, **d))


def _runtime(m):
    """The module of the generated module's own copy of runtime/cpu.py (its names to patch)."""
    import sys
    return sys.modules[next(c for c in type(m).__mro__ if c.__name__ == "CpuModel").__module__]


def _step_in(m, way, name, data):
    """One step of loss `name` run `way` (parts, BLAS threads, threads), as the tuner runs it."""
    step = m.tables.steps[name]
    arrays, n_rows, sizes = m._arrays(step.data, data, ("step", name))
    m._t[name] += 1
    return m._step_way(name, step, arrays, n_rows, sizes, None, *way)


# (parts, BLAS threads, threads): chunks of the batch one after another in a thread's workspace
CHUNKED = {"3 chunks in one thread (6, 7, 7 rows)": (3, 1, 1), "2 threads of 2 chunks": (4, 1, 2)}


@pytest.mark.parametrize("way", sorted(CHUNKED))
@pytest.mark.parametrize("parts_in", sorted(PARTS_IN))
@pytest.mark.parametrize("case", sorted(set(CASES) - {"batchnorm-loops"}))
def test_chunked_steps_equal_one_threads(case, parts_in, way):
    module, data, extra = _case(case, parts_in, seed=5)
    one, chunked = module.Model(seed=0, threads=1), module.Model(seed=0)
    chunked._parts_in_numba = PARTS_IN[parts_in]
    _same_steps(module, data, extra, one, chunked, lambda name, d: _step_in(chunked, CHUNKED[way], name, d))
    assert len(chunked._lanes) == CHUNKED[way][2] - 1            # a lane (workspace) a thread



@pytest.mark.parametrize("parts_in", sorted(PARTS_IN))
def test_a_threaded_step_clips_by_the_whole_gradients_norm(parts_in):
    """The clip scales by the norm of the whole batch's gradient, not of a part's."""
    module, data, extra = _case("mlp", parts_in, seed=7)
    one, two = module.Model(seed=0), module.Model(seed=0, threads=2)
    one.clip_norm = two.clip_norm = 1e-3                        # every step clips
    two._parts_in_numba = PARTS_IN[parts_in]
    _same_steps(module, data, extra, one, two, lambda name, d: two.step(name, **d))


@pytest.mark.parametrize("parts_in", sorted(PARTS_IN))
@pytest.mark.parametrize("case", ["mlp", "gan"])
def test_a_threaded_step_with_a_nan_updates_nothing(case, parts_in):
    """An output layer's parameter of NaN: the loss is NaN, and the update, sliced over the
    threads or not, leaves every parameter as it was (as one thread's does)."""
    module, data, extra = _case(case, parts_in, seed=9)
    two = module.Model(seed=0, threads=2)
    two._parts_in_numba = PARTS_IN[parts_in]
    last = list(two.params)[-1]                 # the output layer's: every loss's output is NaN
    two.params[last] = np.full(two.params[last].shape, np.nan)
    for name in module.LOSSES:
        before = two.theta.copy()
        d = {k: data[k] for k in module.STEPS[name].data}
        two.step(name, **d)
        np.testing.assert_array_equal(two.theta, before)


# |a| as sqrt(a²): its derivative a/|a| is 0/0 = NaN where a = 0, so an input row of zeros
# gives a finite loss with NaN in the first layer's gradient alone (8 parameters of 200)
ROOT = """model root
input x[4]
target y[64]
activation root(a) = sqrt(a * a)
h = dense(x, 2, act=root, bias=false)
o = dense(h, 64)
loss squared(o, y)
"""


@pytest.mark.parametrize("parts_in", sorted(PARTS_IN))
def test_a_nan_in_one_threads_slice_of_the_gradient_updates_nothing(parts_in):
    """A NaN in one layer's gradient with a finite loss: no parameter moves, in one thread or
    two (an update split over threads by slices of the parameters must not update the
    slices without the NaN: tried, and kept out for 1.5 % of the LSTM's step)."""
    module = compile_source(ROOT)
    if PARTS_IN[parts_in] and not loop_threads_safe():
        pytest.skip("numba's threading layer here is neither OpenMP nor TBB")
    x = np.random.default_rng(0).standard_normal((16, 4))
    x[3] = 0.0
    data = {"x": x, "y": np.ones((16, 64))}
    for threads in (1, 2):
        m = module.Model(seed=0, threads=threads)
        m._parts_in_numba = PARTS_IN[parts_in]
        before = m.theta.copy()
        _, grads = m.grad(**data)
        assert np.isnan(grads["h.W"]).any() and np.isfinite(m.loss(**data))
        assert np.isfinite(m.step(**data))
        np.testing.assert_array_equal(m.theta, before)

# a model whose workspace (2,630 elements a row) dwarfs its 1,619 parameters
CONV = """model chunky
input x[1, 8, 8]
target y: class(3)
c = conv2d(x, 8, 3, pad=1, act=relu)
o = dense(flatten(c), 3)
loss cross_entropy(o, y)
"""
# (model, CHUNK_BYTES, rows of a thread) -> chunks: halved while over CHUNK_BYTES, down to 8
# rows each, while the chunks' gradient vectors take less memory than the workspace they spare
CHUNKS = [
    ("a small workspace", "conv", 1 << 40, 64, 1),
    ("a large one: halved down to 8 rows", "conv", 0, 64, 8),
    ("halves of 10 rows", "conv", 0, 20, 2),
    ("15 rows cannot halve", "conv", 0, 15, 1),
    ("9,610 parameters against 397 elements a row: two chunks", "mlp", 0, 64, 2),
]


@pytest.mark.parametrize("what,model,limit,rows,chunks", CHUNKS, ids=[c[0] for c in CHUNKS])
def test_how_many_chunks_a_thread_runs(what, model, limit, rows, chunks, monkeypatch):
    m = (compile_source(CONV) if model == "conv" else compile_example("digits_mlp")).Model(seed=0)
    monkeypatch.setattr(_runtime(m), "CHUNK_BYTES", limit)
    assert m._chunks(rows, {}) == chunks
    assert compile_source(BATCHNORM).Model(seed=0)._chunks(rows, {}) == 1     # one batch's statistics


def test_auto_tries_chunks_where_the_workspace_is_large(monkeypatch):
    m = compile_source(CONV).Model(seed=0)
    runtime = _runtime(m)
    monkeypatch.setattr(runtime, "available_cores", lambda: 2)
    plain = m._tuner("loss", 64, {}).ways
    monkeypatch.setattr(runtime, "CHUNK_BYTES", 0)
    m._tuners.clear()
    assert plain == [(1, 2, 1), (1, 1, 1), (2, 1, 2)]
    assert m._tuner("loss", 64, {}).ways == [(1, 2, 1), (1, 1, 1), (8, 1, 1), (2, 1, 2), (8, 1, 2)]


def test_only_a_model_that_cannot_split_its_batch_splits_its_loops():
    """Batchnorm's model runs the outer loops of its nests over images in numba's threads
    (`prange`, its own kernel files); a model that splits its batch keeps one-thread loops."""
    bn, mlp = compile_source(BATCHNORM), compile_example("digits_mlp")
    assert bn.Model.split_loops and not mlp.Model.split_loops
    split = sorted(Path(bn.Model.kernel_dir).glob("split_loop_*.py"))
    assert split and all("prange(" in f.read_text() and "parallel=True" in f.read_text() for f in split)
    # (the folder is shared with other models: the MLP's kernels are those its entry calls)
    entry = (Path(mlp.Model.kernel_dir) / f"{mlp.Model.entry_name}.py").read_text()
    assert "loop_" in entry and "split_loop_" not in entry
    m = bn.Model(seed=0, threads=2)
    m.step(**random_data(bn, n=20, seed=1))
    assert m._lanes == []                            # the batch was not split


def test_fit_with_threads_trains_as_one_thread():
    module = compile_example("digits_mlp")
    data = random_data(module, n=48, seed=1)
    h1 = module.Model(seed=0).fit(epochs=2, batch_size=24, verbose=False, **data)
    h2 = module.Model(seed=0, threads=2).fit(epochs=2, batch_size=24, verbose=False, **data)
    np.testing.assert_allclose(h2, h1, rtol=1e-12)


def test_a_batch_too_small_to_split_runs_in_one_thread():
    module = compile_example("digits_mlp")
    data = random_data(module, n=10, seed=2)        # under two parts of 8 rows
    m = module.Model(seed=0, threads=2)
    m.step(**data)
    assert m._lanes == []


@pytest.mark.parametrize("threads, error", [(0, ValueError), (-1, ValueError), ("2", TypeError), (1.5, TypeError)])
def test_threads_must_be_a_positive_count(threads, error):
    module = compile_example("digits_mlp")
    with pytest.raises(error, match="threads"):
        module.Model(seed=0, threads=threads)
    m = module.Model(seed=0)
    with pytest.raises(error, match="threads"):
        m.threads = threads


@pytest.mark.parametrize("n, threads, rows", [(17, 2, [8, 9]), (25, 2, [12, 13]), (17, 4, [8, 9])])
def test_unequal_parts_in_numbas_threads(n, threads, rows):
    """Parts of different sizes (their own plan tables and workspaces) in one call of the
    entry's `run_parts`; the pool of Python threads is never started. (More parts than numba
    has threads go to Python's: the next test.)"""
    if not loop_threads_safe() or len(rows) > max_loop_threads():
        pytest.skip("numba's threads here cannot take the parts (not OpenMP/TBB, or fewer threads)")
    module = compile_example("digits_mlp")
    data = random_data(module, n=n, seed=4)
    one, many = module.Model(seed=0), module.Model(seed=0, threads=threads)
    for _ in range(2):
        assert many.step(**data) == pytest.approx(one.step(**data), rel=1e-12)
    np.testing.assert_allclose(many.theta, one.theta, rtol=1e-10, atol=1e-13)
    assert [len(lane._ws) > 0 for lane in many._lanes] == [True] * (len(rows) - 1)
    assert many._parts(threads, n) == len(rows) and many._pool is None


def test_more_threads_than_numbas_run_in_pythons(monkeypatch):
    """NUMBA_NUM_THREADS below the threads asked for would run their parts one after another:
    Python's threads take them then."""
    module = compile_example("digits_mlp")
    m = module.Model(seed=0, threads=2)
    monkeypatch.setattr(_runtime(m), "max_loop_threads", lambda: 1)
    m.step(**random_data(module, n=20, seed=1))
    assert m._pool is not None


def test_the_threads_end_with_the_model():
    """The pool of Python threads (the parts' threads where numba's layer is not OpenMP/TBB)."""
    import gc
    module = compile_example("digits_mlp")
    m = module.Model(seed=0, threads=2)
    m._parts_in_numba = False
    m.step(**random_data(module, n=20, seed=1))
    workers = list(m._pool._threads)
    assert workers and all(t.is_alive() for t in workers)
    del m
    gc.collect()
    for t in workers:
        t.join(timeout=5)
        assert not t.is_alive()
