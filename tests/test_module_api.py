"""The generated module's API (LANGUAGE.md §7): shapes, calls, errors, persistence."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import API_MODEL, VAE_DIGITS, compile_source

CLASSIFIER = "model cls\ninput x[3]\ntarget label: class(4)\no = dense(x, 4)\nloss cross_entropy(o, label)\n"


def test_params_are_named_views_with_the_documented_shapes(api):
    m = api.Model(seed=0)
    assert {k: v.shape for k, v in m.params.items()} == {
        "h.W": (5, 4), "h.b": (5,), "o.W": (2, 5), "o.b": (2,)}
    assert np.all(m.params["h.b"] == 0) and np.any(m.params["h.W"] != 0)
    m.params["h.W"] = np.ones((5, 4))                  # assignment writes into the model
    assert np.all(m.theta[:20] == 1)


def test_same_seed_same_initial_parameters(api):
    a, b, c = api.Model(seed=3), api.Model(seed=3), api.Model(seed=4)
    assert np.array_equal(a.theta, b.theta) and not np.array_equal(a.theta, c.theta)


def test_forward_loss_grad_step(api, data):
    m = api.Model(seed=0)
    o, s = m.forward(x=data["x"])
    assert o.shape == (10, 2) and np.allclose(s, 1 / (1 + np.exp(-o)))
    L = m.loss(**data)
    assert L == pytest.approx(0.5 * np.sum((o - data["y"]) ** 2) / 10)
    L2, g = m.grad(**data)
    assert L2 == L and set(g) == set(m.params)
    before = m.theta.copy()
    assert m.step(**data) == pytest.approx(L)
    assert not np.array_equal(before, m.theta)
    assert m.loss(**data) < L


def test_fit_returns_per_epoch_losses_and_validation(api, data):
    m = api.Model(seed=0)
    hist = m.fit(epochs=4, batch_size=3, validation=data, verbose=False, **data)
    assert len(hist) == 4 and len(hist.val) == 4 and hist.losses["loss"] == list(hist)
    assert hist[-1] < hist[0]


def test_fit_prints_one_line_per_epoch(api, data, capsys):
    api.Model(seed=0).fit(epochs=2, **data)
    err = capsys.readouterr().err
    assert "epoch 1/2" in err and "epoch 2/2" in err


@pytest.mark.parametrize("call,message", [
    (lambda m, d: m.forward(), "missing input 'x'"),
    (lambda m, d: m.forward(x=d["x"], q=1), "unknown input 'q'"),
    (lambda m, d: m.forward(x=d["x"][:, :3]), "'x': expected shape (N, 4)"),
    (lambda m, d: m.loss(x=d["x"], y=d["y"][:, 0]), "use .reshape(-1, 1)" if False else "'y': expected a numeric array of shape (N, 2)"),
    (lambda m, d: m.loss(x=d["x"], y=d["y"][:5]), "batch size 5 differs"),
    (lambda m, d: m.loss(x=np.array([["a"] * 4]), y=d["y"][:1]), "'x': expected a numeric array"),
    (lambda m, d: m.loss(name="nope", **d), "unknown loss 'nope'"),
])
def test_bad_calls_name_the_input_and_the_expected_shape(api, data, call, message):
    with pytest.raises(ValueError, match=None) as err:
        call(api.Model(seed=0), data)
    assert message in str(err.value)


def test_class_labels_are_checked():
    module = compile_source(CLASSIFIER)
    m = module.Model(seed=0)
    x = np.zeros((3, 3))
    with pytest.raises(ValueError, match="labels must lie in 0..3"):
        m.loss(x=x, label=np.array([0, 1, 4]))
    with pytest.raises(ValueError, match="integer class labels"):
        m.loss(x=x, label=np.array([0.0, 1.0, 2.0]))


def test_save_load_round_trip_keeps_optimiser_state(api, data, tmp_path):
    m = api.Model(seed=0)
    for _ in range(3):
        m.step(**data)
    path = tmp_path / "w.npz"
    m.save(path)
    assert os.listdir(tmp_path) == ["w.npz"]          # written atomically, no temporary left
    m2 = api.Model.load(path)
    assert np.array_equal(m.theta, m2.theta)
    m.step(seed=1, **data)
    m2.step(seed=1, **data)
    assert np.array_equal(m.theta, m2.theta)           # Adam moments and step count came back


def test_loading_another_models_file_is_a_clear_error(data, tmp_path):
    other = compile_source(CLASSIFIER).Model(seed=0)
    other.save(tmp_path / "other.npz")
    with pytest.raises(ValueError, match="saved by model 'cls'"):
        compile_source(API_MODEL).Model.load(tmp_path / "other.npz")


def test_non_finite_loss_stops_fit_and_keeps_last_finite_parameters(data):
    module = compile_source(API_MODEL.replace("optimizer adam(lr=0.01)", "optimizer sgd(lr=1e30)"))
    m = module.Model(seed=0)
    with pytest.raises(FloatingPointError, match=r"at epoch \d+, step \d+"):
        m.fit(epochs=3, batch_size=2, verbose=False, **data)
    assert np.all(np.isfinite(m.theta))


def test_generated_module_runs_without_nndsl(api, data, tmp_path):
    """The module imports only numpy and numba."""
    folder = tmp_path / "fresh"                      # a copy of its own: no numba cache written by this process
    folder.mkdir()
    kernels = Path(api.KERNEL_DIR)
    (folder / "api.py").write_text(open(api.__file__).read().replace('"../nndsl_kernels"', '"nndsl_kernels"'))
    (folder / "nndsl_kernels").mkdir()
    for name in api.KERNELS:
        (folder / "nndsl_kernels" / f"{name}.py").write_text((kernels / f"{name}.py").read_text())
    shutil.copytree(kernels / api.RUNTIME, folder / "nndsl_kernels" / api.RUNTIME,
                    ignore=shutil.ignore_patterns("__pycache__"))
    code = ("import sys; sys.modules['nndsl'] = None; sys.path.insert(0, sys.argv[1]);"
            "import numpy as np, api; m = api.Model(seed=0);"
            "print(m.forward(x=np.zeros((2, 4)))[0].shape)")
    out = subprocess.run([sys.executable, "-c", code, folder], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "(2, 2)"
    for path in [folder / "api.py", *(folder / "nndsl_kernels").glob("**/*.py")]:
        source = path.read_text()
        imports = {line.split()[1] for line in source.splitlines() if line.startswith(("import ", "from "))}
        # the standard library, numpy and numba (llvmlite is numba's own code generator), the
        # runtime's own modules (relative, or by the name the module loads its package as)
        outside = {i for i in imports if i.split(".")[0] not in sys.stdlib_module_names
                   and not i.startswith(".") and not i.startswith(f"nndsl_{api.RUNTIME}")}
        assert {i.split(".")[0] for i in outside} <= {"numpy", "numba", "llvmlite"}, (path, outside)


# -- forward at any node, from any node -------------------------------------------------
def test_forward_returns_any_node(api, data):
    m = api.Model(seed=0)
    o, s = m.forward(x=data["x"])
    h, o2 = m.forward(outputs=["h", "o"], x=data["x"])
    np.testing.assert_allclose(h, np.tanh(data["x"] @ m.params["h.W"].T + m.params["h.b"]), rtol=1e-12)
    np.testing.assert_array_equal(o2, o)
    np.testing.assert_array_equal(m.forward(outputs="s", x=data["x"]), s)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_forward_from_a_given_node_runs_the_rest_of_the_network(dtype):
    """A VAE's decoder on latent codes; wide layers (batch-last storage) on both sides."""
    vae = compile_source(VAE_DIGITS, dtype)
    m = vae.Model(seed=1)
    x = np.random.default_rng(0).uniform(0, 1, (7, 64))
    mu = m.forward(x=x)
    xr_from_x = m.forward(outputs="xr", x=x)              # noise off: z = mu
    xr_from_z = m.forward(outputs="xr", z=mu)
    np.testing.assert_allclose(xr_from_z, xr_from_x, rtol=1e-12 if dtype == "float64" else 1e-5)
    samples = m.forward(outputs=("d", "xr"), z=np.random.default_rng(1).standard_normal((3, 2)))
    assert [a.shape for a in samples] == [(3, 64), (3, 64)] and all(a.flags.c_contiguous for a in samples)


@pytest.mark.parametrize("call,message", [
    (lambda m: m.forward(outputs="xr"), "depend on input 'x': give it, or a node between it and them"),
    (lambda m: m.forward(outputs="nope", z=np.zeros((2, 2))), "no node 'nope' to return; nodes: h, mu, logvar"),
    (lambda m: m.forward(outputs="xr", z=np.zeros((2, 3))), "node 'z': expected a numeric array of shape (N, 2)"),
    (lambda m: m.forward(outputs="xr", z=np.zeros((2, 2)), q=1), "unknown input 'q'"),
])
def test_bad_node_calls_are_clear_errors(call, message):
    with pytest.raises(ValueError) as err:
        call(compile_source(VAE_DIGITS).Model(seed=0))
    assert message in str(err.value)


def test_user_names_never_collide_with_generated_code():
    """Inputs, targets and nodes named like the module's own globals (np, math, theta, ws)."""
    mod = compile_source("""model names
input np[2]
target math[1]
theta = dense(np, 3, act=tanh)
ws = dense(theta, 1)
loss squared(ws, math)
""")
    m = mod.Model(seed=0)
    x, y = np.ones((4, 2)), np.ones((4, 1))
    assert np.isfinite(m.step(np=x, math=y))
    np.testing.assert_allclose(m.forward(outputs="theta", np=x), np.tanh(x @ m.params["theta.W"].T + m.params["theta.b"]))


def test_read_only_arrays_step_like_writeable_ones(api, data):
    """The kernels' addresses are looked up on a plan's first call and kept: read-only
    arrays (np.load with mmap_mode="r", say) are passed to the same kernels, uncopied."""
    frozen = {k: v.copy() for k, v in data.items()}
    for v in frozen.values():
        v.flags.writeable = False
    a, b = api.Model(seed=0), api.Model(seed=0)
    la = [a.step(**data), a.step(**frozen), a.step(**data), a.step(**frozen)]
    lb = [b.step(**data) for _ in range(4)]
    assert la == lb and np.array_equal(a.theta, b.theta)
