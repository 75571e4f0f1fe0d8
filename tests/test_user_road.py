"""The user's road: every mistake a clear message (exit 1 or 2, never a traceback), data checked
once, files written with the user's umask, nothing from a file name reaching generated code."""
from __future__ import annotations

import io
import os
import stat
import sys
from pathlib import Path

import numpy as np
import pytest

from nndsl.build import build_file
from nndsl.cli import main
from nndsl.loader import import_module

ROOT = Path(__file__).resolve().parents[1]
LECTURE = str(ROOT / "examples" / "lecture_mlp.nn")
TINY = "model tiny\ninput x[3]\ntarget y[1]\no = dense(x, 1)\nloss squared(o, y)\ntrain epochs=1\n"


def run(argv, capsys):
    """(exit code, stderr) of the CLI; argparse's usage errors exit through SystemExit."""
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


# ------------------------------------------------------------------ the CLI's options
@pytest.mark.parametrize("options,message", [
    (["--batch-size", "0"], "--batch-size: must be at least 1, got 0"),
    (["--batch-size", "x"], "--batch-size: expected an integer, got 'x'"),
    (["--epochs", "-1"], "--epochs: must be at least 1, got -1"),
    (["--epochs", "0"], "--epochs: must be at least 1, got 0"),
    (["--lr", "0"], "--lr: must be a finite number > 0, got 0"),
    (["--lr=-1e-3"], "--lr: must be a finite number > 0, got -1e-3"),
    (["--lr", "nan"], "--lr: must be a finite number > 0"),
    (["--lr", "fast"], "--lr: expected a number, got 'fast'"),
    (["--seed", "-2"], "--seed: must be at least 0, got -2"),
])
def test_numeric_options_are_checked(options, message, capsys):
    code, err = run(["train", LECTURE, "--data", "diabetes", *options], capsys)
    assert code == 2 and message in err


@pytest.fixture
def npz(tmp_path):
    """Write arrays into an .npz file and return its path."""
    def write(**arrays):
        path = tmp_path / "data.npz"
        np.savez(path, **arrays)
        return str(path)
    return write


def _xy(n=20, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 3)), rng.standard_normal((n, 1))


@pytest.mark.parametrize("make,message", [
    (lambda npz, tmp: str(tmp), "is a directory; --data takes an .npz file or one of"),
    (lambda npz, tmp: npz(x=np.array(["a"] * 20), y=_xy()[1]), "`x` must be a numeric array"),
    (lambda npz, tmp: npz(x=_xy()[0] + 1j, y=_xy()[1]), "`x` must be a numeric array"),
    (lambda npz, tmp: npz(x=np.where(np.arange(20)[:, None] % 7 == 2, np.nan, _xy()[0]), y=_xy()[1]),
     "`x` has 3 of 20 rows holding NaN or inf (the first is row 2)"),
    (lambda npz, tmp: npz(x=_xy()[0], y=np.full((20, 1), np.inf)), "`y` has 20 of 20 rows holding NaN or inf"),
    (lambda npz, tmp: npz(x_train=_xy()[0], x_test=np.zeros((0, 3))), "`x_test` must hold at least one example"),
    (lambda npz, tmp: npz(x=_xy()[0], y=_xy()[1], o=_xy()[1]), None),   # extra keys are ignored
])
def test_bad_data_files_are_usage_errors(make, message, npz, tmp_path, capsys):
    path = make(npz, tmp_path)
    tiny = tmp_path / "tiny.nn"
    tiny.write_text(TINY)
    code, err = run(["train", str(tiny), "--data", path, "--quiet"], capsys)
    if message is None:
        assert code == 0, err
    else:
        assert code == 2 and message in err


def test_npz_keys_may_use_the_models_own_names(tmp_path, capsys):
    src = tmp_path / "own.nn"
    src.write_text("model own\ninput pixels[3]\ntarget label: class(2)\no = dense(pixels, 2)\n"
                   "loss cross_entropy(o, label)\ntrain epochs=1\n")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", pixels=rng.standard_normal((30, 3)), label=rng.integers(0, 2, 30))
    assert main(["train", str(src), "--data", str(tmp_path / "d.npz"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "test accuracy" in out and "standardised" not in out


def test_standardize_says_so(tmp_path, npz, capsys):
    x, y = _xy(40)
    path = npz(x=x * 100 + 5, y=y * 10)
    src = tmp_path / "tiny.nn"
    src.write_text(TINY)
    assert main(["train", str(src), "--data", path, "--quiet"]) == 0
    plain = capsys.readouterr().out
    assert main(["train", str(src), "--data", path, "--quiet", "--standardize"]) == 0
    scaled = capsys.readouterr().out
    assert "standardised" not in plain
    assert "(features and targets standardised)" in scaled and "(standardised " in scaled


def test_diverging_training_is_a_message_not_a_traceback(tmp_path, npz, capsys):
    src = tmp_path / "tiny.nn"
    src.write_text(TINY)
    code, err = run(["train", str(src), "--data", npz(x=_xy(40)[0], y=_xy(40)[1]), "--quiet",
                     "--lr", "1e30", "--epochs", "2", "--batch-size", "4"], capsys)
    assert code == 1 and "nndsl: error: loss 'loss' became" in err and "at epoch " in err


def test_a_closed_stdout_ends_quietly(monkeypatch, capsys):
    class Closed(io.StringIO):
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")
    monkeypatch.setattr(sys, "stdout", Closed())
    assert main(["grad", LECTURE]) == 141
    monkeypatch.undo()
    assert capsys.readouterr().err == ""


def test_out_without_matplotlib_says_so_once(tmp_path, monkeypatch, capsys):
    import nndsl.train.pictures as pictures
    monkeypatch.setattr(pictures, "have_matplotlib", lambda: False)
    monkeypatch.setattr(pictures, "save_pictures", lambda *a: [])
    src = tmp_path / "tiny.nn"
    src.write_text(TINY)
    np.savez(tmp_path / "d.npz", x=_xy()[0], y=_xy()[1])
    out = ROOT / "tests" / ".build" / "road_out"      # a fixed folder keeps numba's cache warm
    code, err = run(["train", str(src), "--data", str(tmp_path / "d.npz"), "--quiet",
                     "--out", str(out)], capsys)
    assert code == 0 and err.count("pip install 'nndsl[plots]'") == 1


# ---------------------------------------------------------------------------- memory
HUGE = "model huge\ninput x[10]\ntarget y[1]\nh = dense(x, 100000)\nh2 = dense(h, 100000)\n" \
       "o = dense(h2, 1)\nloss squared(o, y)\n"


def test_check_prints_the_memory_a_step_needs(tmp_path, capsys):
    src = tmp_path / "huge.nn"
    src.write_text(HUGE)
    assert main(["check", LECTURE]) == 0
    assert "a training step needs about" in capsys.readouterr().out
    assert main(["check", str(src)]) == 0
    out = capsys.readouterr().out
    assert "warning: that is more than half of this machine's" in out and "h2.W 100000x100000" in out


@pytest.mark.parametrize("command", ["build", "train"])
def test_build_and_train_refuse_what_does_not_fit(command, tmp_path, capsys):
    src = tmp_path / "huge.nn"
    src.write_text(HUGE)
    extra = ["-o", str(tmp_path)] if command == "build" else ["--data", "diabetes"]
    code, err = run([command, str(src), *extra], capsys)
    assert code == 1 and "more than this machine's" in err and "largest tensors: h2.W 100000x100000" in err
    assert not (tmp_path / "huge.py").exists()


# -------------------------------------------------------------- the module's API
def _with_nan(data, key, rows):
    a = data[key].copy()
    a[rows] = np.nan
    return {**data, key: a}


API_ERRORS = [
    # (call, exception type, words of the message)
    (lambda m, d: m.fit(batch_size=0, verbose=False, **d), ValueError, "batch_size: expected an integer >= 1, got 0"),
    (lambda m, d: m.fit(epochs=-1, verbose=False, **d), ValueError, "epochs: expected an integer >= 0, got -1"),
    (lambda m, d: m.fit(epochs=2.5, verbose=False, **d), TypeError, "epochs: expected an integer >= 0, got 2.5"),
    (lambda m, d: m.fit(d_steps=0, verbose=False, **d), ValueError, "d_steps: expected an integer >= 1"),
    (lambda m, d: m.lr.__setitem__("unknown", 0.1), KeyError, "no loss 'unknown'"),
    (lambda m, d: m.lr.__setitem__("loss", -1), ValueError, "lr['loss']: expected a finite number >= 0, got -1"),
    (lambda m, d: m.lr.__setitem__("loss", "fast"), TypeError, "lr['loss']: expected a number >= 0"),
    (lambda m, d: m.lr.update(loss=float("nan")), ValueError, "expected a finite number >= 0"),
    (lambda m, d: m.lr.pop("loss"), TypeError, "cannot be removed"),
    (lambda m, d: setattr(m, "lr", 0.1), TypeError, "lr: expected a dict"),
    (lambda m, d: type(m)(seed="a"), TypeError, "seed: expected an integer >= 0, got 'a'"),
    (lambda m, d: type(m)(seed=-1), ValueError, "seed: expected an integer >= 0, got -1"),
    (lambda m, d: m.loss(seed=1.5, **d), TypeError, "seed: expected an integer"),
    (lambda m, d: m.forward(outputs=3, x=d["x"]), TypeError, "outputs must be a node name or a non-empty list"),
    (lambda m, d: m.forward(outputs=[], x=d["x"]), TypeError, "outputs must be a node name"),
    (lambda m, d: m.fit(validation=[d["x"]], verbose=False, **d), ValueError,
     "validation as a tuple needs 2 arrays in the order (x, y), got 1"),
    (lambda m, d: m.fit(validation="val", verbose=False, **d), TypeError, "validation must be a dict"),
    (lambda m, d: m.fit(validation={"x": d["x"]}, verbose=False, **d), ValueError, "missing input 'y'"),
    (lambda m, d: m.fit(verbose=False, **_with_nan(d, "x", [3, 5])), ValueError,
     "'x': 2 of 10 rows hold NaN or inf (the first is row 3)"),
    (lambda m, d: m.fit(validation=(d["x"], d["y"] * np.inf), verbose=False, **d), ValueError,
     "'validation y': 10 of 10 rows hold NaN or inf (the first is row 0)"),
    (lambda m, d: m.step(**_with_nan(d, "y", [9])), ValueError, "'y': 1 of 10 rows hold NaN or inf (the first is row 9)"),
    (lambda m, d: m.save("/no/such/dir/w.npz"), FileNotFoundError, "cannot save to '/no/such/dir/w.npz'"),
]


@pytest.mark.parametrize("call,kind,message", API_ERRORS, ids=[str(i) for i in range(len(API_ERRORS))])
def test_module_api_mistakes(api, data, call, kind, message):
    m = api.Model(seed=0)
    before = m.theta.copy()
    with pytest.raises(kind) as info:
        call(m, data)
    assert message in str(info.value)
    assert np.array_equal(m.theta, before)               # nothing was half done


def test_accepted_forms(api, data):
    m = api.Model(seed=np.int64(1))
    m.lr["loss"] = 0.05
    m.lr["loss"] = 0                                       # 0 freezes the parameters
    assert len(m.fit(epochs=0, verbose=False, **data)) == 0    # 0 epochs: an empty History
    m.lr = {"loss": np.float32(0.02)}
    assert m.lr == {"loss": pytest.approx(0.02)}
    hist = m.fit(epochs=np.int64(2), validation=(data["x"], data["y"]), verbose=False, **data)
    assert len(hist) == 2 and len(hist.val) == 2
    assert m.forward(outputs=("o", "s"), x=data["x"])[0].shape == (10, 2)


def test_step_checks_an_array_once(api, data, monkeypatch):
    """`step` keeps its fast path: an array already checked is not scanned again."""
    m = api.Model(seed=0)
    calls = []
    runtime = sys.modules[type(m).__mro__[1].__module__.rsplit(".", 1)[0]]    # the module's runtime package
    real = runtime.checks.check_finite
    for part in (runtime.model, runtime.fit):
        monkeypatch.setattr(part, "check_finite", lambda name, a: (calls.append(name), real(name, a)))
    for _ in range(5):
        m.step(**data)
    assert calls == ["x", "y"]
    m.fit(epochs=3, batch_size=2, verbose=False, **data)       # fit: once per array, not per step
    assert calls == ["x", "y", "x", "y"]


def test_saved_weights_and_modules_get_the_umask(api, tmp_path):
    old = os.umask(0o022)
    try:
        api.Model(seed=0).save(tmp_path / "w.npz")
        build_file(LECTURE, tmp_path)
    finally:
        os.umask(old)
    for name in ("w.npz", "lecture_mlp.py"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o644, name


# --------------------------------------------------- names that reach generated code
HOSTILE = [
    'evil\nprint("INJECTED")\n#.nn',
    'quote"s and \'s.nn',
    'doc"""string""".nn',
    'brace{{ model.name }}{% if 1 %}.nn',
    'back\\slash \\N{bad}.nn',
    'ünïcödé 模型 \u2028 \x0b.nn',
]


@pytest.mark.parametrize("name", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_file_names_never_reach_generated_code(name, tmp_path, capfd):
    src = tmp_path / name
    src.write_text(Path(LECTURE).read_text())
    result = build_file(src, tmp_path / "out")
    text = result.path.read_text(encoding="utf-8")
    compile(text, str(result.path), "exec")                  # still valid Python
    module = import_module(result.path, f"hostile_{abs(hash(name))}")
    assert capfd.readouterr().out == ""                       # importing printed nothing
    assert module.MODEL_NAME == "lecture_mlp"
    assert text.splitlines()[0].startswith("# Generated by nndsl ")
    assert "INJECTED\")" not in text and '"""string' not in text


@pytest.mark.parametrize("name,message", [
    ("numpy", "would shadow the `numpy` package"),
    ("numba", "would shadow the `numba` package"),
    ("math", "would shadow the standard library's `math` module"),
    ("os", "standard library's `os`"),
    ("sys", "standard library's `sys`"),
    ("time", "standard library's `time`"),
])
def test_model_names_that_shadow_modules(name, message, tmp_path, capsys):
    src = tmp_path / "m.nn"
    src.write_text(f"model {name}\n" + TINY.split("\n", 1)[1])
    code, err = run(["check", str(src)], capsys)
    assert code == 1 and message in err and "1:7: error" in err and f"hint: choose another name, e.g. `{name}_model`" in err


def test_python_keywords_cannot_name_values(tmp_path, capsys):
    src = tmp_path / "m.nn"
    src.write_text("model kw\ninput x[3]\ntarget y[1]\nlambda = dense(x, 1)\nloss squared(lambda, y)\n")
    code, err = run(["check", str(src)], capsys)
    assert code == 1 and "`lambda` is a Python keyword and cannot name a value" in err


@pytest.mark.parametrize("content,kind,message", [
    (None, FileNotFoundError, "missing.npz"),
    (b"not a zip at all", ValueError, "not a saved nndsl model"),
    ("array", ValueError, "not a saved nndsl model (a single array)"),
    ("other", ValueError, "not a saved nndsl model"),
])
def test_load_refuses_what_is_not_a_saved_model(api, tmp_path, content, kind, message):
    path = tmp_path / ("missing.npz" if content is None else "w.npz")
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "array":
        with open(path, "wb") as f:
            np.save(f, np.zeros(3))
    elif content == "other":
        np.savez(path, theta=np.zeros(3))
    with pytest.raises(kind, match=message.replace("(", r"\(").replace(")", r"\)")):
        api.Model.load(path)


# ------------------------------------------------------------ the road of issue 23
BN_CLASSIFIER = ("model bn_road\ninput x[3]\ntarget label: class(2)\nh = dense(x, 4, bias=false)\n"
                 "b = batchnorm(h)\no = dense(b, 2)\nloss cross_entropy(o, label)\ntrain epochs=1 batch=8\n")


def test_train_help_names_the_sequence_sets(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and "names (first names" in out and "sine (noisy sines)" in out


@pytest.mark.parametrize("labels,note", [
    (lambda y: y.reshape(-1, 1), "labels of shape (N, 1) read as the class labels of target `label`, shape (N)"),
    (lambda y: np.eye(2)[y], "one-hot rows of 2 read as the class indices of target `label`"),
    (lambda y: y.reshape(-1, 1).astype(np.float64), "labels of shape (N, 1) read as the class labels"),
])
def test_class_labels_of_shape_n_1_or_one_hot_are_read_and_said(labels, note, tmp_path, capsys):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 40)
    np.savez(tmp_path / "d.npz", x=rng.standard_normal((40, 3)), y=labels(y))
    (tmp_path / "bn.nn").write_text(BN_CLASSIFIER)
    assert main(["train", str(tmp_path / "bn.nn"), "--data", str(tmp_path / "d.npz"), "--quiet",
                 "--threads", "2"]) == 0
    out = capsys.readouterr().out
    assert note in out and "test accuracy" in out


@pytest.mark.parametrize("y,message", [
    (np.linspace(0, 1, 40), "target `label` is class(2), but the data set's labels are real numbers (such as "),
    (np.tile([0, 1, 1], (40, 1)), "target `label` is class(2), but the data set has 3 values per example (shape 3)"),
    (np.arange(40) % 3, "target `label` is class(2), but the data set has labels 0..2"),
])
def test_labels_a_class_target_cannot_take(y, message, tmp_path, capsys):
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).standard_normal((40, 3)), y=y)
    (tmp_path / "bn.nn").write_text(BN_CLASSIFIER)
    code, err = run(["train", str(tmp_path / "bn.nn"), "--data", str(tmp_path / "d.npz"), "--quiet"], capsys)
    assert code == 2 and message in err and "give integer class labels 0..1 of shape (N,)" in err


@pytest.mark.parametrize("write,message", [
    (lambda p: p.write_text("1,2,3\n4,5,6\n"), "is not an .npz archive (the zip of arrays np.savez writes); "
                                               "make one with np.savez('data.npz', x=X, y=Y)"),
    (lambda p: np.save(open(p, "wb"), np.zeros((4, 3))), "is an .npy file (one array); --data takes an .npz "
                                                         "archive of named arrays: np.savez('data.npz', x=X, y=Y)"),
])
def test_files_that_are_not_npz_archives(write, message, tmp_path, capsys):
    path = tmp_path / "x.npz"
    write(path)
    tiny = tmp_path / "tiny.nn"
    tiny.write_text(TINY)
    code, err = run(["train", str(tiny), "--data", str(path), "--quiet"], capsys)
    assert code == 2 and message in err and "pickle" not in err


def test_a_vocabulary_mismatch_names_both_shapes(tmp_path, capsys):
    src = tmp_path / "lm.nn"
    src.write_text("model lm\ninput x[T, 30]\ntarget next[T]: class(30)\nh = rnn(x, 4)\no = dense(h, 30)\n"
                   "loss cross_entropy(o, next)\n")
    np.savez(tmp_path / "d.npz", x=np.zeros((10, 12, 27)), y=np.zeros((10, 12), np.int64))
    code, err = run(["train", str(src), "--data", str(tmp_path / "d.npz"), "--quiet"], capsys)
    assert code == 2 and ("`x[T, 30]` takes 30 values per step, but the data set has 324 (12 × 27) per example, "
                          "not a whole number of steps of 30: is the last axis 27?") in err


def test_a_gan_without_its_generator_as_an_output_says_why_there_is_no_picture(capsys, tmp_path):
    from types import SimpleNamespace

    from nndsl.frontend import load_source
    from nndsl.train import pictures
    from nndsl.train.splits import Dataset
    model = load_source("model g\ninput x[4, 4]\ninput z[2]\nnetwork gen(z) { return dense(z, 16, act=sigmoid) }\n"
                        "network dis(v) { return dense(flatten(v), 1) }\nfake = gen(z)\nimg = fake + 0\n"
                        "loss d = bce_logits(dis(x), 1) + bce_logits(dis(fake), 0) wrt dis\n"
                        "loss g = bce_logits(dis(fake), 1) wrt gen\n", "g.nn")
    module = SimpleNamespace(DATA={"x": ((4, 4), None, False), "z": ((2,), None, False)}, OUTPUTS=["x"])
    x = np.zeros((5, 4, 4))
    ds = Dataset("d", x, None, x, None, "regression", None, (4, 4))
    ctx = pictures._Context(model, module, None, ds, {"x": x, "z": np.zeros((5, 2))})
    assert pictures._samples(ctx, tmp_path) is None
    err = capsys.readouterr().err
    assert "no samples picture: no output of g is an image computed from the noise z alone" in err
    assert "declare the generator's images as one: `output img`" in err
