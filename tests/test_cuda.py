"""The CUDA target (issue 12): the same kernel plan rendered for numba.cuda.

Without a GPU every check runs on numba's CUDA simulator, in a subprocess per model
(NUMBA_ENABLE_CUDASIM must be set before numba.cuda is imported, and must not reach the
CPU tests in this process); on a machine with a GPU (NNDSL_CUDA_DEVICE=1, or a GPU that
numba sees) the same checks run on the device. Sizes are tiny: the simulator runs every
thread as a Python thread.
"""
from __future__ import annotations

import atexit
import json
import os
import re
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from nndsl.cli import main

pytest.importorskip("numba_cuda", reason='the CUDA target needs the extra: pip install -e ".[cuda]"')

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
WORKER = ROOT / "tests" / "cuda_worker.py"
BUILD = ROOT / "tests" / ".build" / "cuda"
sys.path.insert(0, str(ROOT / "tests"))
from conftest import BATCHNORM, EMBED_LN, GAN, VAE_DIGITS  # noqa: E402
from cuda_worker import MARK  # noqa: E402


def _on_device() -> bool:
    if os.environ.get("NNDSL_CUDA_DEVICE"):
        return os.environ["NNDSL_CUDA_DEVICE"] == "1"
    probe = "from numba import cuda; print(int(cuda.is_available()))"
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env)
    return out.stdout.strip() == "1"


DEVICE = _on_device()


class _Server:
    """This test process's `cuda_worker.py serve`: started at the first check, it runs every
    check of the process one after another (restarted if a check kills it)."""

    proc = None
    log = None

    @classmethod
    def ask(cls, request: dict, timeout: float = 900) -> dict:
        if cls.proc is None or cls.proc.poll() is not None:
            env = dict(os.environ)
            if DEVICE:
                env.pop("NUMBA_ENABLE_CUDASIM", None)
            else:
                env["NUMBA_ENABLE_CUDASIM"] = "1"
            BUILD.mkdir(parents=True, exist_ok=True)
            cls.log = tempfile.TemporaryFile("w+")
            cls.proc = subprocess.Popen([sys.executable, str(WORKER), "serve"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=cls.log, text=True, env=env)
            atexit.register(cls.proc.kill)
        cls.proc.stdin.write(json.dumps(request) + "\n")
        cls.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([cls.proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            line = cls.proc.stdout.readline()
            if not line:                                        # the server died
                break
            if line.startswith(MARK):
                return json.loads(line[len(MARK):])
        cls.proc.kill()
        cls.log.seek(0)
        raise AssertionError("cuda_worker.py serve gave no answer:\n" + cls.log.read()[-3000:])


def _worker(mode: str, source: str, name: str, extra_env: dict | None = None, dtype="float64") -> dict:
    folder = BUILD / ("device" if DEVICE else "sim") / name
    folder.mkdir(parents=True, exist_ok=True)
    r = _Server.ask({"mode": mode, "source": source, "folder": str(folder), "dtype": dtype,
                     "env": extra_env or {}})
    assert "error" not in r, r["error"][-3000:]
    return r


def _example(name: str) -> str:
    return (EXAMPLES / f"{name}.nn").read_text()


# (name, source, environment, dtype, relative tolerance): loss, gradient, three steps,
# forward and forward at a node of the CUDA module equal the CPU module's
EQUAL = [
    ("lecture_mlp", _example("lecture_mlp"), {}, "float64", 1e-8),
    ("digits_mlp", _example("digits_mlp"), {}, "float64", 1e-8),
    ("gan", GAN, {}, "float64", 1e-8),                             # two losses, `wrt` confinement
    ("user_conv", _example("user_conv"), {}, "float64", 1e-8),     # windows, scatter-add adjoint
    ("iris_softmax", _example("iris_softmax"), {}, "float64", 1e-8),
    # every eligible reduction as one block per output (shared-memory tree reductions)
    ("lecture_mlp_blocks", _example("lecture_mlp"), {"NNDSL_CUDA_BLOCK_MIN": "1"}, "float64", 1e-8),
    # weight decay (weights only), a warm-up and a schedule: the rule's rewrites on the device
    ("adamw_schedule", _example("lecture_mlp").replace("optimizer sgd(lr=0.01)",
                                                       "optimizer adamw(lr=0.01, schedule=step(every=2, gamma=0.5), warmup=2)"),
     {}, "float64", 1e-8),
    ("sgd_l2_cosine", _example("digits_mlp").replace("optimizer adam(lr=2e-3)",
                                                     "optimizer sgd(lr=0.05, momentum=0.9, weight_decay=0.01, "
                                                     "decay=all, schedule=cosine)"), {}, "float64", 1e-8),
    # the training kit: a gather and its scatter-add into E (a thread per feature, the
    # examples in a loop: no two threads add into one element), a layer norm; batchnorm of a
    # vector, an image and a sequence (running statistics updated by the step plan)
    ("embed_layernorm", EMBED_LN, {}, "float64", 1e-8),
    ("batchnorm", BATCHNORM, {}, "float64", 1e-8),
    # float32: CPU helpers (rational tanh, Cephes exp) against CUDA's libdevice; Adam
    # divides by sqrt(v), which amplifies the last bits of tiny gradients
    ("digits_mlp_f32", _example("digits_mlp"), {}, "float32", 1e-4),
    # every fresh workspace NaN, host and device: the tensors that share memory by liveness
    # (plan/liveness.py) are sound on the device too, a recurrence's scan kernel included
    ("lstm_poisoned", _example("lstm"), {"NNDSL_POISON_WORKSPACE": "1"}, "float64", 1e-8),
    ("user_conv_poisoned", _example("user_conv"), {"NNDSL_POISON_WORKSPACE": "1"}, "float64", 1e-8),
    # zero weights before a softmax: h3.W's gradient is zero by symmetry, 3e-20 on the CPU and
    # 0 on the device, and Adam moves it by lr·g/eps; the parameters compare as one vector
    # (cuda_worker.rel_whole; random model 5075)
    ("zero_init_softmax", "model m5075\ninput s1[T, 3]\ntarget y6[T, 2]\n"
     "h2 = dense(s1, 5, act=sigmoid, init=xavier)\nh3 = dense(h2, 5, act=softmax, bias=false)\n"
     "mu4 = dense(h3, 2)\nlv5 = dense(h3, 2)\nloss gaussian_nll(mu4, lv5, y6)\ninit zeros\noutput h3, lv5\n",
     {}, "float64", 1e-8),
]


@pytest.mark.parametrize("name,source,env,dtype,tol", EQUAL, ids=[r[0] for r in EQUAL])
def test_cuda_module_equals_cpu_module(name, source, env, dtype, tol):
    r = _worker("equal", source, name, env, dtype)
    for key in ("loss", "grad", "steps", "params", "forward", "node"):
        assert r[key] <= tol, (key, r)
    assert r["untouched"], r


# Stochastic layers draw the CPU's counter-based noise on the device too: for a seed, the
# loss and gradient of the CUDA module are the CPU module's.
STOCHASTIC = [
    ("dropout_mlp", _example("dropout_mlp")),
    ("vae_digits", VAE_DIGITS),
    ("denoising_autoencoder", _example("denoising_autoencoder")),
]


@pytest.mark.parametrize("name,source", STOCHASTIC, ids=[r[0] for r in STOCHASTIC])
def test_cuda_draws_the_cpu_modules_noise(name, source):
    r = _worker("stochastic", source, name)
    assert r["loss"] <= 1e-10 and r["grad"] <= 1e-10, r
    assert r["reproducible"] and r["varies"], r


# every other example: equality (a model that draws noise draws the same on both targets)
COVERED = {r[0] for r in EQUAL} | {r[0] for r in STOCHASTIC}
EVERY = [p.stem for p in sorted(EXAMPLES.glob("*.nn")) if p.stem not in COVERED]
# The simulator runs every kernel thread's arithmetic in Python, and a recurrence's work grows
# with the square of its width: these two examples run narrower there (27 and 12 s of the
# suite at their own widths, 7 and 4 s so); the same kernels of other sizes. Their kernels as
# written compile for sm_90 (`test_ptx_for_every_kernel_of_every_example`).
NARROWER = {"mnist_lstm": ("lstm(img, 64,", "lstm(img, 16,"), "names_lm": ("gru(x, 128)", "gru(x, 24)")}


def _on_the_simulator(name: str) -> str:
    source = _example(name)
    if name in NARROWER and not DEVICE:
        written, narrower = NARROWER[name]
        assert written in source, name
        source = source.replace(written, narrower)
    return source


@pytest.mark.parametrize("name", EVERY)
def test_cuda_module_of_every_example(name):
    r = _worker("auto", _on_the_simulator(name), "every_" + name)
    for key in ("loss", "grad", "steps", "params", "forward", "node", "lengths"):
        assert r.get(key, 0.0) <= 1e-8, (key, r)
    assert r["untouched"], r


@pytest.mark.parametrize("name", ["rnn", "lstm", "gru"])
def test_a_recurrence_is_one_launch_whatever_its_length(name):
    """Each recurrence of the step plan runs as one launch of the scan kernel (one block,
    a barrier between rows): the rows grow with T, the launches do not; the module still
    equals the CPU module."""
    r = _worker("scan", _example(name), "scan_" + name)
    assert r["scan"] and r["rows"][1] > r["rows"][0] and r["launches"][0] == r["launches"][1], r
    for key in ("loss", "grad", "steps", "params", "forward", "node"):
        assert r[key] <= 1e-8, (key, r)


@pytest.mark.parametrize("path", ["host", "device"])
def test_cuda_fit_over_two_mpi_ranks(path):
    """fit(comm=...) on the CUDA module: 2 ranks equal one process, replicas bit-identical;
    the gradient reaches MPI through a host copy, or as device buffers where the MPI is
    CUDA-aware (NNDSL_CUDA_AWARE_MPI=1; the simulator's device memory is host memory)."""
    pytest.importorskip("mpi4py")
    from test_mpi import mpiexec
    folder = BUILD / ("device" if DEVICE else "sim") / f"mpi_{path}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.nn").write_text(_example("digits_mlp"))
    env = dict(os.environ, NNDSL_CUDA_AWARE_MPI="1" if path == "device" else "0")
    if DEVICE:
        env.pop("NUMBA_ENABLE_CUDASIM", None)
    else:
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    out = subprocess.run([mpiexec(), "-n", "2", sys.executable, str(WORKER), "mpi", str(folder / "model.nn"),
                          str(folder)], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["ranks"] == 2 and r["path"] == path and r["replicas_equal"], r
    assert r["rel"] <= 1e-12, r


PTX_SHARDS = 4        # the kernels split over several tests, so test workers share them
PTX_SOURCES = {"embed_layernorm": EMBED_LN, "batchnorm": BATCHNORM}


@pytest.fixture(scope="module")
def every_cuda_kernel(tmp_path_factory):
    """Every example built for the CUDA target in both dtypes: (kernel folder, kernel names)."""
    from nndsl.build import KERNEL_DIR, build_file
    folder = tmp_path_factory.mktemp("ptx_build")
    built = []
    # the examples, and models of layers no example has yet (batchnorm, layernorm)
    extra = folder / "sources"
    extra.mkdir()
    for name, source in PTX_SOURCES.items():
        (extra / f"{name}.nn").write_text(source)
    paths = sorted(EXAMPLES.glob("*.nn")) + sorted(extra.glob("*.nn"))
    for path in paths:
        for dtype in ("float32", "float64"):
            build_file(path, folder, dtype=dtype, target="cuda")
            built.append(f"{path.stem}:{dtype}")
    assert len(built) == 2 * len(paths)
    kernels = {p.stem: p.read_text() for p in sorted((folder / KERNEL_DIR).glob("cu_*.py"))}
    single = {_as_float32(t) for t in kernels.values() if "F = np.float32" in t}
    # a float64 kernel whose text is a float32 kernel's but for the dtype (186 of 198) is the
    # same code with wider numbers: that kernel's PTX stands for both
    doubles = {n for n, t in kernels.items() if "F = np.float64" in t}
    twins = {n for n in doubles if _as_float32(kernels[n]) in single}
    assert 0 < len(twins) < len(doubles)          # some float64 kernels still compile themselves
    return folder / KERNEL_DIR, sorted(set(kernels) - twins)


def _as_float32(text: str) -> str:
    """A CUDA kernel file's text, its name and dtype (and dtype's fast-math choice) made
    float32's, and every float literal written as `F(literal)` (a float64 kernel prints `1.0`
    where a float32 one prints `F(1.0)`; with F = np.float64 the two are the same number)."""
    lines = [ln for ln in text.splitlines() if not ln.startswith("# nndsl") and "import float32, uint32" not in ln]
    text = "\n".join(lines).replace("float64", "float32").replace("FASTMATH = False", "FASTMATH = True")
    return _LITERAL.sub(r"F(\1)", text)


_LITERAL = re.compile(r"(?<!F\()(?<![\w.])(\d+\.\d+(?:e[-+]?\d+)?)(?![\w.])")


@pytest.mark.parametrize("shard", range(PTX_SHARDS))
def test_ptx_for_every_kernel_of_every_example(shard, every_cuda_kernel, tmp_path):
    """Every kernel of every example compiles for sm_90 (NVVM from the extra, no GPU
    needed). Kernels are shared by content, so the union is compiled once (a float64
    kernel that differs from a float32 one only in the dtype, through that one)."""
    kernel_dir, every = every_cuda_kernel
    names = every[shard::PTX_SHARDS]
    code = ("import sys; sys.path.insert(0, %r)\n"
            "from nndsl.render.numba_cuda import write_ptx\n"
            "print(len(write_ptx(%r, %r, %r)))") % (str(ROOT), str(kernel_dir), names, str(tmp_path / "ptx"))
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=1500)
    assert out.returncode == 0, out.stderr[-3000:]
    ptx = list((tmp_path / "ptx").glob("*.ptx"))
    assert len(ptx) >= len([n for n in names if not n.startswith("cu_gemm")])
    assert all(".target sm_90" in p.read_text() for p in ptx)


def test_ptx_option_writes_files(tmp_path, capsys):
    assert main(["build", str(EXAMPLES / "lecture_mlp.nn"), "--target", "cuda", "-o", str(tmp_path / "m"),
                 "--ptx", str(tmp_path / "ptx")]) == 0
    assert "PTX files (sm_90)" in capsys.readouterr().out
    assert list((tmp_path / "ptx").glob("cu_loop_*._thread.ptx"))


def test_cuda_target_without_the_extra(monkeypatch, capsys, tmp_path):
    from nndsl.render import numba_cuda
    monkeypatch.setattr(numba_cuda, "available", lambda: False)
    assert main(["build", str(EXAMPLES / "lecture_mlp.nn"), "--target", "cuda", "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'pip install -e ".[cuda]"' in err[0]


def test_cuda_module_imports_without_a_gpu_and_fails_at_model(tmp_path):
    """Import works anywhere; Model(...) names the problem when there is neither a GPU nor
    the simulator."""
    if DEVICE:
        pytest.skip("a GPU is present")
    assert main(["build", str(EXAMPLES / "lecture_mlp.nn"), "--target", "cuda", "-o", str(tmp_path)]) == 0
    code = ("import sys; sys.path.insert(0, %r); import lecture_mlp as m\n"
            "try:\n    m.Model(0)\nexcept RuntimeError as e:\n    print('ERR', e)\n") % str(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ERR lecture_mlp: no CUDA GPU" in out.stdout


def test_nndsl_train_on_the_cuda_target_is_the_cpu_run(tmp_path):
    """`nndsl train --target cuda` on the simulator trains, reports and saves as the CPU run
    does (the same data, splits and shuffles: the same test figures)."""
    def train(target, env):
        out = subprocess.run([sys.executable, "-m", "nndsl", "train", str(EXAMPLES / "iris_softmax.nn"),
                              "--data", "iris", "--epochs", "1", "--quiet", "--threads", "1" if target == "cpu" else "auto",
                              "--target", target, "--out", str(tmp_path / target)],
                             capture_output=True, text=True, env=env, timeout=600)
        assert out.returncode == 0, out.stderr[-2000:]
        return [line for line in out.stdout.splitlines() if line.startswith("test accuracy")]
    sim = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    assert train("cuda", sim) == train("cpu", os.environ) != []
    assert (tmp_path / "cuda" / "iris_softmax.npz").exists()
    if not DEVICE:                       # without the simulator: one line, exit 2
        env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
        out = subprocess.run([sys.executable, "-m", "nndsl", "train", str(EXAMPLES / "iris_softmax.nn"),
                              "--data", "iris", "--target", "cuda", "--quiet", "--out", str(tmp_path / "none")],
                             capture_output=True, text=True, env=env, timeout=600)
        assert out.returncode == 2 and out.stderr.count("\n") == 1 and "no CUDA GPU" in out.stderr, out.stderr


# (name, source, environment): fit equals the CPU module's fit (same shuffles), the
# non-finite guard, the lazy loss of `step`
FIT = [
    ("lecture_mlp", _example("lecture_mlp"), {}),                            # data on the device
    ("lecture_mlp_streamed", _example("lecture_mlp"), {"NNDSL_CUDA_STREAM": "1"}),   # pinned buffers
    ("rnn_streamed", _example("rnn"), {"NNDSL_CUDA_STREAM": "1"}),           # a free length T
]


@pytest.mark.parametrize("name,source,env", FIT, ids=[r[0] for r in FIT])
def test_fit_nonfinite_guard_and_lazy_step(name, source, env):
    r = _worker("fit", source, "fit_" + name, env)
    assert r["fit_ok"] and r["lazy_float"] and r["nan_refused"] and r["guard"], r
    assert r["streamed"] == ("NNDSL_CUDA_STREAM" in env), r


@pytest.mark.parametrize("env", [{}, {"NNDSL_CUDA_STREAM": "1"}], ids=["on_device", "streamed"])
def test_fit_checkpoints_and_resumes_on_the_device(env):
    """The one `fit` of both targets: checkpoint=, resume= on the CUDA module."""
    r = _worker("checkpoints", _example("dropout_mlp"), "checkpoints", env)
    assert r["epochs"] == 2 and r["resumed"] <= 1e-12 and r["cpu"] <= 1e-8, r


def test_fit_with_fresh_noise_inputs_on_the_device():
    """fit(z="normal") on the CUDA module draws what the CPU module draws."""
    r = _worker("noise_inputs", GAN, "noise_inputs")
    assert r["noise"] == ["z"] and r["history"] <= 1e-8 and r["params"] <= 1e-8, r
