"""Shared fixtures: compile a `.nn` source to an imported module once per session."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

# LLVM's -O1 compiles the generated kernels faster than numba's default -O3, and the tests
# check what the code computes, not how fast: every process of the suite (and the
# subprocesses it starts) runs at -O1, except tests/test_optimised.py, which checks that
# the optimised build computes the same. Not -O0: a kernel that calls an inlined helper
# (`_exp`, `_gemm_blocks`) keeps a dead load of the helper's dispatcher there, a "dynamic global"
# that numba refuses to cache, so every process compiled those kernels again (a warm start
# of the LeNet example: 4.2 s at -O0, 1.1 s at -O1; cold 7.2 and 7.6 s). Set before numba is
# imported.
os.environ.setdefault("NUMBA_OPT", "1")
# The test workers already keep every core busy: a module's helper compile process would
# only compete with them (tests/test_kernel_plan.py runs it on purpose).
os.environ.setdefault("NNDSL_COMPILE_JOBS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from nndsl.build import render, write_rendered
from nndsl.frontend import load_source
from nndsl.loader import import_module

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
# Generated modules live under tests/.build, keyed by source + dtype, so that numba's
# on-disk cache (cache=True) makes a second run of the suite start warm.
BUILD = ROOT / "tests" / ".build"

_modules: dict = {}


def pytest_addoption(parser):
    group = parser.getgroup("random models", "the random-model tester (tests/test_random_models.py)")
    group.addoption("--random-models", type=int, default=None, metavar="N",
                    help="check N random models (a hunt) instead of the suite's fixed seeds")
    group.addoption("--random-mutants", type=int, default=None, metavar="N",
                    help="check N mutants (default: the fixed seeds, or N/4 with --random-models)")
    group.addoption("--random-seed", type=int, default=0, metavar="S", help="the first seed of a hunt")
    group.addoption("--random-cuda-every", type=int, default=25, metavar="K",
                    help="in a hunt, every K-th model on the CUDA simulator too (0: none)")
    group.addoption("--random-save", default=None, metavar="DIR",
                    help="where failing models are saved (default tests/.random_failures)")

# A small GAN shared by the gradient and the generative tests (one compiled module).
GAN = """model gan
input x[4]
input z[2]
network generator(z) { h = dense(z, 5, act=relu); return dense(h, 4, act=sigmoid) }
network discriminator(v) { h = dense(v, 5, act=leaky_relu); return dense(h, 1) }
fake = generator(z)
loss d_loss = bce_logits(discriminator(x), 1) + bce_logits(discriminator(fake), 0) wrt discriminator
loss g_loss = bce_logits(discriminator(fake), 1) wrt generator
"""

# A small VAE for the 8x8 digits with a 2-D latent (the latent picture) and 64-wide layers
# (batch-last storage), shared by the generative and the module-API tests.
VAE_DIGITS = """model vae_digits
input x[64]
h      = dense(x, 64, act=relu)
mu     = dense(h, 2)
logvar = dense(h, 2)
z      = sample_normal(mu, logvar)
d      = dense(z, 64, act=relu)
xr     = dense(d, 64)
loss bce_logits(xr, x) + kl_normal(mu, logvar)
output mu
optimizer adam(lr=3e-3)
train batch=32 epochs=8 seed=0
"""

# A small LSTM regression over a free length T (the optimised-build and the threads tests).
SMALL_LSTM = """model small_lstm
input x[T, 3]
target y[2]
h = lstm(x, 4, return=last)
o = dense(h, 2)
loss squared(o, y)
optimizer adam(lr=0.01)
"""

# A small two-output model: the module-API, user-road and fuzz tests share its compiled module
# through the `api` and `data` fixtures below.
API_MODEL = """model api
input x[4]
target y[2]
h = dense(x, 5, act=tanh)
o = dense(h, 2)
s = sigmoid(o)
loss squared(o, y)
output o, s
optimizer adam(lr=0.01)
train batch=4 epochs=3
"""


# The training kit's layers, shared by the PyTorch parity and the training-kit tests: an
# embedding of per-step class indices with a layer norm, and batchnorm of a vector, an image
# and a sequence.
EMBED_LN = """model parity_embed
input chars[T]: class(7)
target next[T]: class(7)
e = embed(chars, 5)
h = layernorm(e, eps=1e-3)
o = dense(h, 7)
loss cross_entropy(o, next)
optimizer adam(lr=0.01)
"""
BATCHNORM = """model parity_bn
input x[6]
input img[2, 5, 4]
input seq[T, 3]
target y[2]
target ys[T, 2]
h = dense(x, 5, bias=false)           # a bias before batchnorm has no gradient (zero up to rounding)
b = batchnorm(h, momentum=0.2)
c = conv2d(img, 3, 3, pad=1, bias=false)
d = batchnorm(c, eps=1e-3)
f = concat(tanh(b), flatten(d))
o = dense(f, 2)
s = batchnorm(seq)
q = dense(s, 2)
loss squared(o, y) + squared(q, ys)
output o, q
optimizer sgd(lr=0.1)
"""


def compile_source(source: str, dtype: str = "float64"):
    """Check, render and import a model given as text (memoised per session)."""
    key = hashlib.sha256(f"{dtype}\0{source}".encode()).hexdigest()[:16]
    if key not in _modules:
        model = load_source(source, f"{key}.nn")
        folder = BUILD / key
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{model.name}.py"
        # every test module loads its kernels from one shared folder: a kernel that one
        # model compiled is served from numba's cache to every other model that needs it
        write_rendered(render(model, dtype, kernel_dir="../nndsl_kernels"), path, BUILD / "nndsl_kernels")
        _modules[key] = import_module(path, f"nndsl_test_{model.name}_{key}")
    return _modules[key]


def compile_example(name: str, dtype: str = "float64"):
    return compile_source((EXAMPLES / f"{name}.nn").read_text(), dtype)


def random_data(module, n: int = 5, seed: int = 0, overrides: dict | None = None) -> dict:
    """A batch for every input and target of a module: normal inputs, targets in (0, 1),
    class labels uniform over the classes."""
    rng = np.random.default_rng(seed)
    data = {}
    for name, (shape, classes, is_target) in module.DATA.items():
        shape = tuple(3 if isinstance(s, str) else s for s in shape)
        if classes is not None:
            data[name] = rng.integers(0, classes, (n,) + shape)   # (n,), or (n, T) per step
        elif is_target:
            data[name] = rng.uniform(0.05, 0.95, (n,) + shape)
        else:
            data[name] = rng.standard_normal((n,) + shape)
    data.update(overrides or {})
    return data


@pytest.fixture(scope="session")
def compile():
    return compile_source


@pytest.fixture(scope="module")
def api():
    return compile_source(API_MODEL)


@pytest.fixture
def data(api):
    return random_data(api, n=10)
