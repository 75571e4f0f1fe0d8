"""The generated module's runtime (`nndsl/runtime/`) as ordinary Python: argument checks, the
`d_steps` schedule, checkpoint positions, save/load, validation, threads, data-parallel
steps — on a model whose plans run in numpy (tests/fake_model.py), no numba compile."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import fake_model as F
from nndsl.runtime import fit as fitting
from nndsl.runtime import saving
from nndsl.runtime.checks import count, rate, step_mask
from nndsl.runtime.tables import ModelTables


@pytest.fixture
def m():
    return F.FakeModel(seed=0)


@pytest.fixture
def d():
    return F.data()


def reference_grad(theta, x, y):
    """The fake model's gradient, by hand."""
    e = (x @ theta[:3] + theta[3] - y[:, 0]) / len(x)
    return np.concatenate([e @ x, [e.sum()]])


# -- the API over the fake plans --------------------------------------------------------
def test_loss_grad_step_and_forward(m, d):
    L, g = m.grad(**d)
    assert L == m.loss(**d)
    np.testing.assert_allclose(np.concatenate([g["o.W"].ravel(), g["o.b"]]), reference_grad(m.theta, d["x"], d["y"]))
    before = m.theta.copy()
    assert m.step(**d) == L and m._t["loss"] == 1
    np.testing.assert_allclose(m.theta, before - 0.1 * reference_grad(before, d["x"], d["y"]))
    np.testing.assert_allclose(m.forward(x=d["x"])[:, 0], d["x"] @ m.theta[:3] + m.theta[3])
    np.testing.assert_allclose(m.forward(outputs="o", x=d["x"]), m.forward(x=d["x"]))


BAD_CALLS = [  # (call, data changes, error, message)
    ("loss", {"z": np.zeros((10, 3))}, ValueError, "unknown input 'z'"),
    ("loss", {"y": None}, ValueError, "missing input 'y'"),
    ("loss", {"x": np.zeros((10, 4))}, ValueError, r"'x': expected shape \(N, 3\), got \(10, 4\)"),
    ("loss", {"y": np.zeros(10)}, ValueError, r"use \.reshape\(-1, 1\)"),
    ("loss", {"x": np.zeros((9, 3))}, ValueError, "batch size 10 differs from 9"),
    ("loss", {"x": np.array([["a"] * 3] * 10)}, ValueError, "expected a numeric array"),
    ("loss", {"x": np.zeros((0, 3)), "y": np.zeros((0, 1))}, ValueError, "empty batch"),
    ("step", {"x": np.full((10, 3), np.nan)}, ValueError, "'x': 10 of 10 rows hold NaN or inf"),
    ("forward", {"q": np.zeros((2, 3))}, ValueError, "unknown input 'q'"),
    ("grad", {"name": "other"}, ValueError, "unknown loss 'other'; losses: loss"),
]


@pytest.mark.parametrize("call,change,error,message", BAD_CALLS, ids=[f"{c[0]}:{c[3][:20]}" for c in BAD_CALLS])
def test_bad_calls_name_the_argument(m, d, call, change, error, message):
    args = {k: v for k, v in dict(d, **change).items() if v is not None}
    if call == "forward":
        args.pop("y")
    with pytest.raises(error, match=message):
        getattr(m, call)(**args)


OPTION_CHECKS = [  # (check, value, error, message)
    (lambda v: count(v, "fit: epochs", minimum=0), -1, ValueError, "expected an integer >= 0, got -1"),
    (lambda v: count(v, "fit: batch_size"), 2.5, TypeError, "expected an integer >= 1, got 2.5"),
    (lambda v: count(v, "threads"), True, TypeError, "expected an integer >= 1, got True"),
    (lambda v: rate(v, "lr['loss']"), float("nan"), ValueError, "a finite number >= 0"),
    (lambda v: rate(v, "lr['loss']"), "fast", TypeError, "expected a number >= 0"),
]


@pytest.mark.parametrize("check,value,error,message", OPTION_CHECKS)
def test_option_checks(check, value, error, message):
    with pytest.raises(error, match=message):
        check(value)


def test_learning_rates_are_fixed_names_with_valid_values(m):
    m.lr["loss"] = 0.5
    assert m.lr == {"loss": 0.5}
    with pytest.raises(KeyError, match="no loss 'other'"):
        m.lr["other"] = 0.1
    with pytest.raises(TypeError, match="cannot be removed"):
        del m.lr["loss"]
    with pytest.raises(ValueError, match="finite number"):
        m.lr = {"loss": -1}


def test_step_masks_from_lengths():
    t = F.tables()
    t = ModelTables(**{k: getattr(t, k) for k in t.__dataclass_fields__ if k != "lengths"} | {"masks": {"x_mask": ("T", "x")}})
    assert t.lengths == {"x_lengths": "x_mask"}
    np.testing.assert_array_equal(step_mask(t, "x_lengths", np.array([1, 3]), 2, {"T": 3}), [[1, 0, 0], [1, 1, 1]])
    for lengths, message in (([0, 3], r"in 1\.\.3"), ([1.0, 2.0], "integer lengths"), ([1], r"shape \(2,\)")):
        with pytest.raises(ValueError, match=message):
            step_mask(t, "x_lengths", np.array(lengths), 2, {"T": 3})
    with pytest.raises(ValueError, match="given without the sequence 'x'"):
        step_mask(t, "x_lengths", np.array([1, 2]), 2, {})


# -- fit ----------------------------------------------------------------------------------
@pytest.mark.parametrize("losses,d_steps,expected", [
    (("loss",), 3, ["loss"]),
    (("d", "g"), 1, ["d", "g"]),
    (("d", "g"), 3, ["d", "d", "d", "g"]),
    (("d", "g", "e"), 2, ["d", "d", "g", "e"]),
])
def test_d_steps_schedule(losses, d_steps, expected):
    class T:
        pass
    t = T()
    t.losses = losses
    assert fitting.schedule(t, d_steps) == expected


def test_fit_is_its_steps_in_a_seeded_order(d):
    a, b = F.FakeModel(seed=0), F.FakeModel(seed=0)
    h = a.fit(epochs=2, batch_size=4, verbose=False, **d)
    for epoch in range(2):
        order = b._rng.permutation(10)
        losses = [b.step(x=d["x"][order[i:i + 4]], y=d["y"][order[i:i + 4]]) for i in range(0, 10, 4)]
        assert h[epoch] == pytest.approx(sum(L * len(order[i:i + 4]) for L, i in zip(losses, range(0, 10, 4))) / 10)
    np.testing.assert_array_equal(a.theta, b.theta)
    assert len(h.losses["loss"]) == 2 and h.val == []


def test_fit_defaults_come_from_the_train_statement(d):
    model = F.model_class(epochs=3, batch=5)(seed=0)
    h = model.fit(verbose=False, **d)
    assert len(h) == 3 and model._t["loss"] == 3 * 2


@pytest.mark.parametrize("validation", ["dict", "tuple"])
def test_validation_as_dict_or_tuple(m, d, validation):
    held = F.data(n=4, seed=1)
    given = held if validation == "dict" else (held["x"], held["y"])
    h = m.fit(epochs=2, batch_size=4, verbose=False, validation=given, **d)
    assert len(h.val) == 2 and h.val[-1] == m.loss(seed=0, **held)


@pytest.mark.parametrize("validation,error,message", [
    ((np.zeros((2, 3)),), ValueError, r"needs 2 arrays in the order \(x, y\), got 1"),
    ("held", TypeError, "validation must be a dict"),
    ({"x": np.zeros((2, 3)), "y": np.full((2, 1), np.inf)}, ValueError, "'validation y': 2 of 2 rows"),
])
def test_bad_validation(m, d, validation, error, message):
    with pytest.raises(error, match=message):
        m.fit(epochs=1, verbose=False, validation=validation, **d)


def test_non_finite_loss_stops_fit_with_epoch_and_step(d):
    m = F.model_class(optimizer=("sgd", {"lr": 1e200}))(seed=0)
    with pytest.raises(FloatingPointError, match=r"loss 'loss' became (inf|nan) at epoch \d+, step \d+"):
        m.fit(epochs=5, batch_size=2, verbose=False, **d)
    assert np.isfinite(m.theta).all()


def test_noise_inputs_must_be_inputs_and_normal(m, d):
    with pytest.raises(ValueError, match="\"normal\" for fresh noise"):
        m.fit(epochs=1, verbose=False, x=d["x"], y="normal")


@pytest.mark.parametrize("every,batches", [(0, [3, 6]), (2, [2, 4, 6]), (4, [4])])
def test_checkpoints_every_k_batches(tmp_path, d, monkeypatch, every, batches):
    seen = []
    real = fitting.save_checkpoint
    monkeypatch.setattr(fitting, "save_checkpoint", lambda model, path, at, history, stopping: (
        seen.append((at["epoch"] - 1) * 3 + at["batch"]), real(model, path, at, history, stopping)))
    F.FakeModel(seed=0).fit(epochs=2, batch_size=4, verbose=False, checkpoint=tmp_path / "c.npz", every=every, **d)
    assert seen == batches


@pytest.mark.parametrize("stop_after", [1, 2, 4])
def test_resume_equals_an_uninterrupted_fit(tmp_path, d, monkeypatch, stop_after):
    whole = F.FakeModel(seed=0)
    hw = whole.fit(epochs=3, batch_size=4, verbose=False, validation=F.data(4, 1), **d)
    # interrupted after batch `stop_after` (SIGINT: the batch finishes, a checkpoint is written)
    part = F.FakeModel(seed=0)
    real = part._fit_step
    calls = [0]

    def interrupting(*args):
        calls[0] += 1
        part._interrupted = calls[0] >= stop_after
        return real(*args)
    part._fit_step = interrupting
    path = tmp_path / "ck.npz"
    with pytest.raises(KeyboardInterrupt, match=f"batch {(stop_after - 1) % 3 + 1}"):
        part.fit(epochs=3, batch_size=4, verbose=False, validation=F.data(4, 1), checkpoint=path, **d)
    resumed = F.FakeModel(seed=7)
    hr = resumed.fit(epochs=3, batch_size=4, verbose=False, validation=F.data(4, 1), resume=path, **d)
    np.testing.assert_array_equal(resumed.theta, whole.theta)
    assert list(hr) == list(hw) and hr.val == hw.val


def test_resume_refuses_a_saved_model_and_another_models_checkpoint(tmp_path, m, d):
    m.save(tmp_path / "w.npz")
    with pytest.raises(ValueError, match="a saved model, not a training checkpoint"):
        m.fit(epochs=1, verbose=False, resume=tmp_path / "w.npz", **d)
    m.fit(epochs=1, verbose=False, checkpoint=tmp_path / "c.npz", **d)
    with np.load(tmp_path / "c.npz") as f:
        other = dict(f)
    other["__model__"] = np.array("other")
    np.savez(tmp_path / "o.npz", **other)
    with pytest.raises(ValueError, match="a checkpoint of model 'other', not of 'fake'"):
        m.fit(epochs=1, verbose=False, resume=tmp_path / "o.npz", **d)


# -- save and load ------------------------------------------------------------------------
def test_save_load_round_trip(tmp_path, m, d):
    for _ in range(3):
        m.step(**d)
    m.save(tmp_path / "w.npz")
    m2 = F.FakeModel.load(tmp_path / "w.npz")
    np.testing.assert_array_equal(m2.theta, m.theta)
    assert m2._t == m._t and m2._lcg == m._lcg
    assert m.step(seed=1, **d) == m2.step(seed=1, **d)


def test_saved_file_holds_every_parameter_by_name(tmp_path, m):
    m.save(tmp_path / "w.npz")
    with np.load(tmp_path / "w.npz") as f:
        assert f["param:o.W"].shape == (1, 3) and f["param:o.b"].shape == (1,)
        assert int(f["__format__"]) == saving.FORMAT and "theta" not in f


def _edited(tmp_path, m, change):
    """A saved file of `m` with its parameters changed by `change` (a dict of edits)."""
    m.save(tmp_path / "w.npz")
    with np.load(tmp_path / "w.npz") as f:
        arrays = dict(f)
    for key, value in change.items():
        if value is None:
            arrays.pop(key)
        else:
            arrays[key] = value
    np.savez(tmp_path / "e.npz", **arrays)
    return tmp_path / "e.npz"


@pytest.mark.parametrize("change,message", [
    ({"param:o.b": None}, "missing o.b"),
    ({"param:h.W": np.zeros((2, 2))}, "extra h.W"),
    ({"param:o.W": np.zeros((1, 4))}, r"reshaped o.W \(1, 4\) -> \(1, 3\)"),
    ({"__model__": np.array("cls"), "param:o.b": None}, "saved by model 'cls', whose parameters do not match"),
])
def test_load_names_what_does_not_match(tmp_path, m, change, message):
    path = _edited(tmp_path, m, change)
    with pytest.raises(ValueError, match=message):
        F.FakeModel.load(path)


def test_load_not_strict_keeps_what_does_not_match(tmp_path, m):
    path = _edited(tmp_path, m, {"param:o.W": np.zeros((1, 4)), "param:o.b": np.array([5.0])})
    fresh = F.FakeModel(seed=3)
    m2 = F.FakeModel.load(path, seed=3, strict=False)
    np.testing.assert_array_equal(m2.params["o.W"], fresh.params["o.W"])
    assert m2.params["o.b"][0] == 5.0


def test_load_converts_the_dtype(tmp_path, m, d):
    m.step(**d)
    m.save(tmp_path / "w.npz")
    m32 = F.model_class(dtype=np.float32).load(tmp_path / "w.npz")
    assert m32.theta.dtype == np.float32
    np.testing.assert_allclose(m32.theta, m.theta, rtol=1e-6)


def test_files_of_the_first_format_load_into_their_build(tmp_path, m):
    flat = {"theta": m.theta, "__model__": np.array("fake"), "__hash__": np.array("0" * 64),
            "__noise__": np.array(str(m._lcg)), "s1:loss": m.theta * 0, "s2:loss": m.theta * 0, "t:loss": np.array(4)}
    np.savez(tmp_path / "old.npz", **flat)
    assert F.FakeModel.load(tmp_path / "old.npz")._t["loss"] == 4
    np.savez(tmp_path / "other.npz", **dict(flat, __hash__=np.array("1" * 64)))
    with pytest.raises(ValueError, match="not by this build of 'fake'"):
        F.FakeModel.load(tmp_path / "other.npz")


@pytest.mark.parametrize("content,message", [
    (b"not a zip", r"not a saved nndsl model \("),
    ("array", r"a single array"),
    ("other", r"not a saved nndsl model$"),
])
def test_load_refuses_what_is_not_a_saved_model(tmp_path, content, message):
    path = tmp_path / "w.npz"
    if content == "array":
        np.save(path, np.zeros(3))
        path = tmp_path / "w.npz.npy"
    elif content == "other":
        np.savez(path, a=np.zeros(2))
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        F.FakeModel.load(path)


def test_save_is_atomic_and_names_the_users_path(tmp_path, m):
    with pytest.raises(OSError, match=r"cannot save to '.*missing/w.npz'"):
        m.save(tmp_path / "missing" / "w.npz")
    m.save(tmp_path / "w.npz")
    assert [p.name for p in tmp_path.iterdir()] == ["w.npz"]


# -- threads and data-parallel steps -----------------------------------------------------
def test_a_threaded_step_is_the_one_thread_step(d):
    one, two = F.FakeModel(seed=0), F.FakeModel(seed=0, threads=2)
    data = F.data(n=20)
    for _ in range(3):
        assert two.step(**data) == pytest.approx(one.step(**data), rel=1e-14)
    np.testing.assert_allclose(two.theta, one.theta, rtol=1e-13)
    assert len(two._lanes) == 1 and two._pool is not None


class OneRank:
    """An mpi4py-like communicator of one rank."""

    def Get_rank(self):
        return 0

    def Get_size(self):
        return 1

    def Bcast(self, buf, root=0):
        pass

    def Allreduce(self, send, recv):
        recv[...] = send


def test_data_parallel_fit_over_one_rank_is_fit(d):
    a, b = F.FakeModel(seed=0), F.FakeModel(seed=0)
    ha = a.fit(epochs=2, batch_size=4, verbose=False, **d)
    hb = b.fit(epochs=2, batch_size=4, verbose=False, comm=OneRank(), **d)
    np.testing.assert_allclose(b.theta, a.theta, rtol=1e-13)
    assert hb == pytest.approx(ha, rel=1e-13)


def test_the_generator_state_survives_a_broadcast(m):
    state = json.dumps(m._rng.bit_generator.state)
    m._broadcast_state(OneRank())
    assert json.dumps(m._rng.bit_generator.state) == state


# -- threads="auto": the tuner ---------------------------------------------------------
class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def run_tuner(tuner, clock, speed, steps):
    """`steps` steps, each taking speed[way] seconds; the ways they ran."""
    ways = []
    for _ in range(steps):
        way = tuner.way()
        tuner.record(way, speed[way])
        clock.now += speed[way]
        ways.append(way)
    return ways


def test_the_tuner_keeps_the_fastest_way_and_moves_when_a_core_gets_busy():
    from nndsl.runtime.threads import Tuner
    clock = Clock()
    tuner = Tuner([(1, 1), (2, 1), (1, 2)], clock)                # the BLAS threads last: no settling
    speed = {(1, 2): 1.0e-3, (1, 1): 3.6e-3, (2, 1): 0.7e-3}       # seconds per step
    ways = run_tuner(tuner, clock, speed, 400)                    # past the BLAS threads' settling
    assert tuner.choice == (2, 1) and ways[-5:] == [(2, 1)] * 5
    speed[(2, 1)] = 9.0e-3                                        # another program takes a core
    ways = run_tuner(tuner, clock, speed, 120)
    assert tuner.choice == (1, 2) and ways[-5:] == [(1, 2)] * 5
    assert ways.count((2, 1)) <= Tuner.RECENT + 1                 # noticed within a few steps
    # one thread runs while the split batch's threads settle, then is probed: a way twice as
    # slow as the steps before is dropped after one step
    settling = math.ceil(Tuner.PARTS_SETTLE / speed[(1, 1)])
    assert ways.count((1, 1)) <= settling + 1


def test_the_fastest_one_thread_way_runs_while_other_threads_settle():
    """The batch in chunks in one thread (the CNN: 2.4 ms against 3.4 whole) is what runs while
    OpenBLAS's threads settle once it has been probed, not the whole batch."""
    from nndsl.runtime.threads import Tuner
    clock = Clock()
    tuner = Tuner([(1, 2, 1), (1, 1, 1), (8, 1, 1), (2, 1, 2)], clock)          # the runtime's order
    speed = {(1, 2, 1): 3.4e-3, (1, 1, 1): 3.4e-3, (8, 1, 1): 2.4e-3, (2, 1, 2): 2.0e-3}
    ways = run_tuner(tuner, clock, speed, 200)
    waiting = ways[ways.index((8, 1, 1)) + Tuner.PROBE_STEPS + 1:ways.index((2, 1, 2))]
    assert waiting and set(waiting) == {(8, 1, 1)} and tuner.quiet == (8, 1, 1)
    assert tuner.choice == (2, 1, 2)


def test_a_way_probed_first_that_is_twice_as_slow_as_the_steps_before_is_dropped_after_one_step():
    """A core gets busy: the split batch slows, and the BLAS threads' way, probed first, runs
    3x slower than the steps before the probe; one probe step of it is enough."""
    from nndsl.runtime.threads import Tuner
    clock = Clock()
    tuner = Tuner([(1, 2), (1, 1), (2, 1)], clock)                # the runtime's order
    speed = {(1, 2): 1.6e-3, (1, 1): 1.8e-3, (2, 1): 1.0e-3}
    run_tuner(tuner, clock, speed, 400)
    assert tuner.choice == (2, 1)
    speed = {(1, 2): 9.0e-3, (1, 1): 1.8e-3, (2, 1): 2.7e-3}      # beside a busy core
    ways = run_tuner(tuner, clock, speed, 300)
    assert tuner.choice == (1, 1) and ways[-5:] == [(1, 1)] * 5
    assert ways.count((1, 2)) == 1


def test_slow_steps_of_one_thread_do_not_start_a_probe_before_the_while_is_up():
    """One thread of one BLAS thread is every way's fallback when a core is taken: its slow
    steps are not a reason to probe the other ways again (beside a busy core they cost)."""
    from nndsl.runtime.threads import Tuner
    clock = Clock()
    tuner = Tuner([(1, 2), (1, 1), (2, 1)], clock)
    speed = {(1, 2): 4.0e-3, (1, 1): 1.8e-3, (2, 1): 2.7e-3}
    run_tuner(tuner, clock, speed, 400)
    assert tuner.choice == (1, 1)
    speed[(1, 1)] = 3.0e-3                                        # erratic beside the busy core
    ways = run_tuner(tuner, clock, speed, int((tuner.next_probe - clock.now) / 3.0e-3) - 1)
    assert set(ways) == {(1, 1)}


def test_a_way_that_needs_every_core_is_probed_once_blas_threads_stop_spinning():
    """OpenBLAS's threads spin ~0.1 s after the last step that used them; a split batch beside
    them is slow (the LSTM: 1.8 ms against 0.95). A probe of a way that needs every core waits
    for them, running one-thread steps meanwhile; the split way is chosen, and its steps right
    after the probe of the BLAS threads (probed last) do not count as a slowdown."""
    from nndsl.runtime.threads import Tuner
    clock = Clock()
    tuner = Tuner([(1, 1), (2, 1), (1, 2)], clock)
    spun = {"at": None}

    def speed(way):
        if way[1] > 1:
            return 1.6e-3
        disturbed = way[0] > 1 and spun["at"] is not None and clock.now - spun["at"] < 0.1
        return {(1, 1): 1.7e-3, (2, 1): 1.9e-3 if disturbed else 0.95e-3}[way]
    probes = []
    for _ in range(3000):                                         # ~3 s: the first probes and two more
        way = tuner.way()
        seconds = speed(way)
        if tuner.todo and way == tuner.todo[0] and way[0] > 1 and spun["at"] is not None:
            probes.append(clock.now - spun["at"])
        clock.now += seconds
        tuner.record(way, seconds)
        if way[1] > 1:
            spun["at"] = clock.now
    assert tuner.choice == (2, 1)
    assert all(after >= Tuner.SETTLE for after in probes)


def test_blas_threads_are_probed_once_the_parts_threads_stop_spinning():
    """numba's OpenMP workers spin ~10 ms after a split step; a BLAS-threaded step beside them
    took 3-12 ms against 0.8 (the MNIST MLP). Here the BLAS threads are slow at first, so the
    split batch is chosen; once they are the fastest, the next round's probe of them waits
    for the parts' threads (one-thread steps meanwhile) and finds it, and their steps right
    after the split batch's probe do not count as a slowdown."""
    from nndsl.runtime.threads import Tuner
    clock = Clock()
    tuner = Tuner([(1, 2), (1, 1), (2, 1)], clock)                # the runtime's order
    parted = {"at": None}

    def speed(way):
        if way[1] > 1:
            beside = parted["at"] is not None and clock.now - parted["at"] < 0.01
            return 8e-3 if beside else (1.5e-3 if clock.now < 1.0 else 0.8e-3)
        return {(1, 1): 1.6e-3, (2, 1): 1.0e-3}[way]
    probes, chosen = [], []
    for _ in range(6000):                                         # ~6 s: the first probes and two more
        way = tuner.way()
        if tuner.todo and way == tuner.todo[0] and way[1] > 1 and parted["at"] is not None:
            probes.append(clock.now - parted["at"])
        seconds = speed(way)
        clock.now += seconds
        tuner.record(way, seconds)
        if way[0] > 1:
            parted["at"] = clock.now
        chosen.append(tuner.choice)
    assert chosen[600] == (2, 1)                                   # while the BLAS threads were slow
    assert tuner.choice == (1, 2) and not tuner.slowed
    assert probes and all(after >= Tuner.PARTS_SETTLE for after in probes)


def test_a_way_dropped_after_a_lucky_step_and_a_slow_one_does_not_win():
    """Beside a busy core the split batch's probe ran 1.55 ms, then 5.4 (dropped: twice the
    best); scored by its lucky step it beat one thread's 1.75 ms and ran at 5 ms until the
    tuner noticed."""
    from nndsl.runtime.threads import Tuner
    clock = Clock()
    tuner = Tuner([(1, 2), (1, 1), (2, 1)], clock)
    split = iter([3.0e-3] + [1.55e-3, 5.4e-3] * 1000)         # its first run warms up
    speed = {(1, 2): lambda: 9.0e-3, (1, 1): lambda: 1.75e-3, (2, 1): lambda: next(split)}
    for _ in range(400):
        way = tuner.way()
        seconds = speed[way]()
        clock.now += seconds
        tuner.record(way, seconds)
    assert tuner.choice == (1, 1) and tuner.best[(2, 1)] == [1.55e-3, 5.4e-3]


def test_a_busy_core_from_the_start_costs_one_step_of_blas_threads():
    """The first round has no steps to compare with: one thread goes first (its first run
    warms up the kernels for every one-thread way), so the BLAS threads' way, 50 ms a step
    beside the busy core, runs once, not a warm-up and three probes."""
    from nndsl.runtime.threads import Tuner
    clock = Clock()
    tuner = Tuner([(1, 2), (1, 1), (2, 1)], clock)                # the runtime's order
    speed = {(1, 2): 50e-3, (1, 1): 1.6e-3, (2, 1): 2.7e-3}
    ways = run_tuner(tuner, clock, speed, 300)
    assert ways[:5] == [(1, 1)] * 4 + [(1, 2)] and ways.count((1, 2)) == 1
    assert tuner.choice == (1, 1)


def test_the_tuner_looks_again_after_a_while_and_waits_longer_each_time_it_stands():
    from nndsl.runtime.threads import Tuner
    clock = Clock()
    tuner = Tuner([(1, 2), (1, 1)], clock)
    speed = {(1, 2): 0.5, (1, 1): 1.0}                            # slow steps: the waits pass quickly
    run_tuner(tuner, clock, speed, 12)
    waits = [tuner.wait]
    for _ in range(4):
        run_tuner(tuner, clock, speed, int(tuner.wait / 0.5) + 6)
        waits.append(tuner.wait)
    assert waits == sorted(waits) and waits[-1] <= Tuner.LAST_WAIT and waits[-1] > waits[0]
    speed[(1, 1)] = 0.2                                           # the other way got faster
    run_tuner(tuner, clock, speed, int(tuner.wait / 0.5) + 10)
    assert tuner.choice == (1, 1) and tuner.wait < waits[-1]           # a change starts the waits over


def test_a_way_that_probes_well_then_slows_is_not_trusted_for_a_while():
    """BLAS threads beside a busy core: fast for a few steps, then 3x slower. The tuner must
    leave that way and not take it back at the next probe, where it looks fast again."""
    from nndsl.runtime.threads import Tuner
    clock = Clock()
    tuner = Tuner([(1, 1), (1, 2)], clock)
    run = {"n": 0}

    def speed(way):                     # (1, 2) degrades after 4 steps in a row
        if way == (1, 1):
            run["n"] = 0
            return 1.0e-3
        run["n"] += 1
        return 0.6e-3 if run["n"] <= 4 else 1.8e-3
    ways = []
    for _ in range(400):
        way = tuner.way()
        seconds = speed(way)
        tuner.record(way, seconds)
        clock.now += seconds
        ways.append(way)
    assert tuner.choice == (1, 1)
    assert ways[-200:].count((1, 2)) <= 2 * Tuner.PROBE_STEPS      # at most the probes' steps


def test_a_passing_hiccup_of_the_blas_threads_is_not_distrusted():
    """A few BLAS-threaded steps at 1.7x (the machine, not a busy core): the tuner probes
    again and keeps the BLAS threads; it had kept the split batch, 1.2x slower, for a minute."""
    from nndsl.runtime.threads import Tuner
    clock = Clock()
    tuner = Tuner([(1, 2), (1, 1), (2, 1)], clock)
    speed = {(1, 2): 1.0e-3, (1, 1): 1.6e-3, (2, 1): 1.2e-3}
    run_tuner(tuner, clock, speed, 600)
    assert tuner.choice == (1, 2)
    speed[(1, 2)] = 1.7e-3
    run_tuner(tuner, clock, speed, Tuner.RECENT)
    speed[(1, 2)] = 1.0e-3
    run_tuner(tuner, clock, speed, 3000)                          # past the next probe (2 s)
    assert tuner.choice == (1, 2) and not tuner.slowed


class FakeLoad:
    """A `CpuLoad`'s answers: whether other programs crowd the machine, and how long this
    process's other threads spin after the step that woke them."""

    def __init__(self, clock, crowded=False, spin=0.0):
        self.clock, self.is_crowded, self.spin = clock, crowded, spin

    def tick(self, now):
        pass

    def crowded(self):
        return self.is_crowded

    def threads_idle(self, woken):
        return self.clock.now - woken >= self.spin


@pytest.mark.parametrize("crowded, probed", [
    (True, {(1, 1, 1), (4, 1, 1)}),                   # other programs keep the other core busy
    (False, {(1, 2, 1), (1, 1, 1), (4, 1, 1), (2, 1, 2)}),
    (None, {(1, 2, 1), (1, 1, 1), (4, 1, 1), (2, 1, 2)}),      # cannot tell: every way, as without a load
])
def test_a_crowded_machine_probes_only_the_ways_of_one_thread(crowded, probed):
    """Beside a busy core one probe step of the BLAS threads took 58 ms against 1.6 (the MNIST
    MLP) and the split batch's 7-12 ms against 2.3 (the CNN): where the load says other
    programs keep the other cores busy, a round does not try them."""
    from nndsl.runtime.threads import Tuner
    clock = Clock()
    load = FakeLoad(clock, crowded)
    tuner = Tuner([(1, 2, 1), (1, 1, 1), (4, 1, 1), (2, 1, 2)], clock, load)
    speed = {(1, 2, 1): 50e-3, (1, 1, 1): 1.6e-3, (4, 1, 1): 1.4e-3, (2, 1, 2): 2.7e-3}
    ways = run_tuner(tuner, clock, speed, 3000)                  # ~4 s: the first rounds
    assert set(ways) == probed and tuner.choice == (4, 1, 1)
    # the other program ends: the next round tries every way again
    load.is_crowded = False
    speed = {(1, 2, 1): 1.0e-3, (1, 1, 1): 1.6e-3, (4, 1, 1): 1.4e-3, (2, 1, 2): 0.8e-3}
    run_tuner(tuner, clock, speed, int((tuner.next_probe - clock.now) / 1.4e-3) + 400)
    assert tuner.choice == (2, 1, 2)


def test_settling_ends_when_this_process_other_threads_stop_spinning():
    """OpenBLAS's threads spin ~0.1 s after their last GEMM here, 2^28 cycles of the TSC: a
    fixed wait must cover slower clocks. Where the load measures this process's other
    threads, a way that needs every core is probed as soon as they are idle."""
    from nndsl.runtime.threads import Tuner
    clock = Clock()
    tuner = Tuner([(1, 2), (1, 1), (2, 1)], clock, FakeLoad(clock, spin=0.03))
    spun, waits = None, []
    for _ in range(3000):
        way = tuner.way()
        if way[0] > 1 and spun is not None:                       # the first step beside them since
            waits.append(clock.now - spun)
            spun = None
        seconds = {(1, 2): 1.0e-3, (1, 1): 1.6e-3, (2, 1): 0.9e-3}[way]
        clock.now += seconds
        tuner.record(way, seconds)
        if way[1] > 1:
            spun = clock.now
    assert waits and all(0.03 <= after < 0.03 + 2e-3 for after in waits)
    assert tuner.choice == (2, 1)


def run_timed(tuner, clock, speed, until):
    """Steps until the clock reads `until`, each taking speed(way) seconds at its start; the
    choice after each step (None while a round probes)."""
    chosen = []
    while clock.now < until:
        way = tuner.way()
        seconds = speed(way)
        clock.now += seconds
        tuner.record(way, seconds)
        chosen.append(tuner.choice if not tuner.todo else None)
    return chosen


@pytest.mark.parametrize("idle, chosen_at_0_8_s", [(True, (1, 2)), (False, (1, 1))])
def test_a_first_round_on_an_idle_machine_looks_again_soon(idle, chosen_at_0_8_s):
    """A hiccup of the VM during the first round's probes of the BLAS threads (2.0 ms against
    1.0, one start in six) had the default run one thread (1.6 ms) until the next round, 2 s
    later. Where the load says the machine is idle, the second round comes at RECHECK;
    where it cannot tell, at FIRST_WAIT as before."""
    from nndsl.runtime.threads import Tuner
    clock = Clock()
    tuner = Tuner([(1, 2), (1, 1), (2, 1)], clock, FakeLoad(clock, crowded=False if idle else None))

    def speed(way):
        if way == (1, 2):
            return 2.0e-3 if clock.now < 0.05 else 1.0e-3         # the hiccup
        return {(1, 1): 1.6e-3, (2, 1): 2.5e-3}[way]
    chosen = run_timed(tuner, clock, speed, 0.8)
    assert (1, 1) in chosen                                       # the first round's choice
    assert tuner.choice == chosen_at_0_8_s


@pytest.mark.parametrize("hiccup, chosen_at_3_s, rounds", [
    # the steady BLAS-threaded steps slow down, a round starts in the hiccup and its probes
    # of every way are slow, the split batch's least: it is checked after RECHECK, and the
    # BLAS threads come back (the MNIST MLP ran the split batch at 1.2x for 2 s)
    ({(1, 2): 3.5e-3, (1, 1): 1.9e-3, (2, 1): 1.7e-3}, (1, 2), 4),
    # a round that keeps its choice, or moves to a faster way, is not checked
    ({(1, 2): 1.7e-3, (1, 1): 1.6e-3, (2, 1): 0.9e-3}, (2, 1), 3),
])
def test_a_round_that_moved_to_a_slower_way_looks_again_soon(hiccup, chosen_at_3_s, rounds):
    from nndsl.runtime.threads import Tuner
    clock = Clock()
    tuner = Tuner([(1, 2), (1, 1), (2, 1)], clock, FakeLoad(clock))
    normal = {(1, 2): 1.0e-3, (1, 1): 1.6e-3, (2, 1): 1.2e-3}
    run_timed(tuner, clock, normal.get, 1.5)                      # two rounds: the BLAS threads
    assert tuner.choice == (1, 2)
    hiccup_at = clock.now
    chosen = run_timed(tuner, clock, lambda way: (hiccup if clock.now < hiccup_at + 0.15 else normal)[way], 3.0)
    ends = [c for c, after in zip(chosen, chosen[1:]) if c is None and after is not None]
    assert (tuner.choice, len(ends)) == (chosen_at_3_s, rounds - 2)


def load_with(clock, cores=2, **fakes):
    from nndsl.runtime.threads import CpuLoad
    cpu = {"machine": 0.0, "mine": 0.0, "threads": 0.0}
    cpu.update(fakes)
    load = CpuLoad(clock, cores, machine=lambda: cpu["machine"], mine=lambda: cpu["mine"],
                   threads=lambda: cpu["threads"])
    return load, cpu


@pytest.mark.parametrize("cores, ours, machine, others, crowded", [
    (2, 1.0, 1.0, 0.0, False),          # only this process: a core of its own work
    (2, 2.0, 2.0, 0.0, False),          # its two threads
    (2, 1.0, 1.4, 0.4, False),          # another program at 40 % of a core
    (2, 1.2, 1.9, 0.7, True),           # a spinning program beside our two threads
    (2, 1.0, 2.0, 1.0, True),
    (16, 1.0, 15.8, 14.8, True),
    (16, 1.0, 15.0, 14.0, False),       # a core left for a second thread
    (16, 1.0, 8.0, 7.0, False),
    (None, 1.0, 2.0, 1.0, None),        # this process may not use every core: cannot tell
])
def test_the_load_is_the_machines_busy_time_less_this_process(cores, ours, machine, others, crowded):
    clock = Clock()
    load, cpu = load_with(clock, cores)
    for _ in range(20):                                           # a second, in steps of 50 ms
        clock.now += 0.05
        cpu["mine"] += ours * 0.05
        cpu["machine"] += machine * 0.05
        load.tick(clock.now)
    assert load.others() == pytest.approx(others)
    assert load.crowded() is crowded


def test_the_load_cannot_tell_without_proc_or_time():
    clock = Clock()
    load, cpu = load_with(clock)
    clock.now += 0.01
    assert load.others() is None and load.crowded() is None          # too short a while
    load, cpu = load_with(clock, machine=None)
    clock.now += 1.0
    assert load.others() is None and load.crowded() is None          # no /proc/stat


def test_other_threads_are_idle_once_their_cpu_time_stops_growing():
    clock = Clock()
    load, cpu = load_with(clock)
    woken, seen = 0.0, []
    for _ in range(30):                                           # a spin of 0.1 s after the step
        clock.now += 0.005
        cpu["threads"] += 0.005 if clock.now <= 0.1 else 0.0
        seen.append((round(clock.now, 3), load.threads_idle(woken)))
    first_idle = min(t for t, idle in seen if idle)
    assert all(not idle for t, idle in seen if t <= 0.1)
    assert 0.1 < first_idle <= 0.1 + 2 * load.IDLE_WINDOW
    assert all(idle for t, idle in seen if t >= first_idle)
    clock.now += 0.005
    assert not load.threads_idle(clock.now)                       # woken again: judged afresh


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="the machine's busy time is Linux's /proc/stat")
def test_the_readings_count_this_process_and_its_ended_children():
    """The machine's busy time includes ours; ours includes a child's once it has ended (a
    cold first step compiles in a helper process, whose CPU is not another program's)."""
    from nndsl.runtime.threads import _machine_busy_seconds, _own_busy_seconds, _other_threads_seconds
    machine, mine, threads = _machine_busy_seconds(), _own_busy_seconds(), _other_threads_seconds()
    end = time.process_time() + 0.3
    while time.process_time() < end:                             # 0.3 s of this thread's CPU
        pass
    assert _machine_busy_seconds() - machine >= 0.8 * (_own_busy_seconds() - mine) >= 0.2
    assert _other_threads_seconds() - threads < 0.1               # it was this thread's, not another's
    mine = _own_busy_seconds()
    subprocess.run([sys.executable, "-c", "import time\nend = time.process_time() + 0.3\n"
                                          "while time.process_time() < end: pass"], check=True)
    assert _own_busy_seconds() - mine >= 0.25


def test_a_model_that_splits_its_loops_tunes_them_as_a_way(monkeypatch):
    """A model whose loops run over numba's threads (batchnorm's) never splits its batch; "auto"
    tries its loops over the cores as one more way, and `threads=K` runs them in K threads."""
    import nndsl.runtime.cpu as cpu
    seen = []
    monkeypatch.setattr(cpu, "available_cores", lambda: 2)
    monkeypatch.setattr(cpu, "loop_threads_safe", lambda: True)
    monkeypatch.setattr(cpu, "use_loop_threads", seen.append)
    monkeypatch.setattr(cpu.Tuner, "SETTLE", 0.0)        # no OpenBLAS threads to wait for here
    monkeypatch.setattr(cpu, "machine_cores", lambda: None)    # the tests' other workers do not crowd it
    Split = type("Split", (F.FakeModel,), {"split_loops": True})
    data = F.data(n=32)
    auto = Split(seed=0)
    for _ in range(12):
        auto.step(**data)
    (tuner,) = auto._tuners.values()
    assert tuner.ways == [(1, 2, 1), (1, 1, 1), (1, 1, 2)] and set(seen) == {1, 2}
    fixed = Split(seed=0, threads=2)
    fixed.step(**data)
    assert seen[-1] == 2 and fixed._lanes == []
    fixed.forward(x=data["x"])
    assert seen[-1] == 2                             # forward runs its loops as the steps do


def test_auto_threads_step_like_one_thread(d):
    data = F.data(n=32)
    auto, one = F.FakeModel(seed=0), F.FakeModel(seed=0, threads=1)
    assert auto.threads == "auto" and one.threads == 1
    for _ in range(12):
        assert auto.step(**data) == pytest.approx(one.step(**data), rel=1e-12)
    np.testing.assert_allclose(auto.theta, one.theta, rtol=1e-12)
    with pytest.raises(TypeError, match="threads: expected an integer >= 1"):
        F.FakeModel(threads="many")


# -- early stopping -------------------------------------------------------------------
def against(d):
    """A validation set that training makes worse: the targets turned around."""
    return {"x": d["x"], "y": -d["y"]}


def test_patience_stops_and_keeps_the_best_epochs_parameters(d):
    m = F.FakeModel(seed=0)
    h = m.fit(epochs=20, batch_size=4, verbose=False, validation=against(d), patience=2, **d)
    best = int(np.argmin(h.val)) + 1
    assert h.best_epoch == best and h.stopped_epoch == best + 2 and len(h) == best + 2
    again = F.FakeModel(seed=0)
    again.fit(epochs=best, batch_size=4, verbose=False, **d)
    np.testing.assert_array_equal(m.theta, again.theta)


def test_patience_needs_validation(m, d):
    with pytest.raises(ValueError, match="patience needs validation="):
        m.fit(epochs=2, verbose=False, patience=3, **d)
    with pytest.raises(ValueError, match="expected an integer >= 1"):
        m.fit(epochs=2, verbose=False, patience=0, validation=d, **d)


def test_early_stopping_resumes_from_a_checkpoint(tmp_path, d):
    whole = F.FakeModel(seed=0)
    hw = whole.fit(epochs=20, batch_size=4, verbose=False, validation=against(d), patience=3, **d)
    part = F.FakeModel(seed=0)
    part.fit(epochs=hw.best_epoch + 1, batch_size=4, verbose=False, validation=against(d), patience=3,
             checkpoint=tmp_path / "c.npz", **d)
    resumed = F.FakeModel(seed=0)
    hr = resumed.fit(epochs=20, batch_size=4, verbose=False, validation=against(d), patience=3,
                     resume=tmp_path / "c.npz", **d)
    assert (hr.best_epoch, hr.stopped_epoch, hr.val) == (hw.best_epoch, hw.stopped_epoch, hw.val)
    np.testing.assert_array_equal(resumed.theta, whole.theta)


@pytest.mark.parametrize("rows, n, dtype", [
    (4, 20801, np.float32),       # the LSTM benchmark's parameters: rows 83,204 bytes long
    (6, 235146, np.float32),      # the MNIST MLP's, a GAN's two losses
    (4, 7, np.float64),
    (1, 0, np.float32),           # a model without parameters
    (1, 422416, np.float32),      # a workspace
])
def test_vectors_start_on_cache_lines(rows, n, dtype):
    """The optimiser's update vectorises over theta, the gradient and its two moments with
    64-byte loads and stores: each vector starts on a cache line (the LSTM's update 17-18 us
    at 4-40 bytes past one, 6-7 us on it)."""
    from nndsl.runtime.model import CACHE_LINE, aligned_rows, fresh_workspace
    block = aligned_rows(rows, n, dtype)
    assert block.shape == (rows, n) and block.dtype == dtype and not block.any()
    for row in block:
        assert row.flags.c_contiguous and row.ctypes.data % CACHE_LINE == 0
    if rows > 1:
        assert block.strides[0] % CACHE_LINE == 0 and block.strides[0] >= n * np.dtype(dtype).itemsize
    ws = fresh_workspace(n, dtype)
    assert ws.shape == (n,) and ws.flags.c_contiguous and ws.ctypes.data % CACHE_LINE == 0


def test_a_models_vectors_and_workspace_start_on_cache_lines():
    from conftest import compile_source, random_data
    from nndsl.runtime.model import CACHE_LINE
    module = compile_source("model aligned\ninput x[5]\ntarget y[1]\nh = dense(x, 3, act=tanh)\no = dense(h, 1)\n"
                            "loss squared(o, y)\noptimizer adam(lr=0.01)\n", "float32")
    m = module.Model(seed=0, threads=1)
    m.step(**random_data(module, n=4, seed=1))
    vectors = [m.theta, m._grad, m._ws, *m._state[module.LOSSES[0]]]
    assert all(v.flags.c_contiguous and v.ctypes.data % CACHE_LINE == 0 for v in vectors)


def test_fits_batch_buffers_start_on_cache_lines():
    from nndsl.runtime.cpu import _HostBatches
    from nndsl.runtime.model import CACHE_LINE
    data = {"x": np.arange(150, dtype=np.float32).reshape(10, 3, 5), "label": np.arange(10, dtype=np.int64)}
    batches = _HostBatches(data, 4)
    batch = batches.load(np.array([7, 2, 9]), {})
    for k, v in data.items():
        assert batches.buffers[k].shape == (4,) + v.shape[1:] and batches.buffers[k].ctypes.data % CACHE_LINE == 0
        np.testing.assert_array_equal(batch[k], v[[7, 2, 9]])
