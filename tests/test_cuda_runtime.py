"""The CUDA runtime's pieces that need no GPU: the cuBLAS call each plan GEMM makes (against
a stand-in for nvmath's bindings that computes cublas<t>gemm's column-major product on host
memory), and a step's launches run eagerly and captured as a graph in the same order."""
from __future__ import annotations

import ctypes
import types

import numpy as np
import pytest

from nndsl.runtime import cuda_gemm

pytest.importorskip("numba_cuda")


class HostArray:
    """A numpy array seen as device memory: its address is its pointer."""

    def __init__(self, a):
        self.a = a
        self.device_ctypes_pointer = ctypes.c_void_p(a.ctypes.data)


class FakeCublas:
    """cublas<t>gemm's column-major semantics on host memory, and a record of the calls."""

    class Operation:
        N, T = 0, 1

    class PointerMode:
        DEVICE = 1

    class Math:
        TF32_TENSOR_OP_MATH = 3

    def __init__(self, dtype):
        self.dtype, self.calls = np.dtype(dtype), []

    def create(self):
        return 7

    def set_stream(self, handle, stream):
        self.calls.append(("set_stream", stream))

    def set_workspace(self, handle, ptr, size):
        self.calls.append(("set_workspace", size))

    def set_pointer_mode(self, handle, mode):
        self.calls.append(("pointer_mode", mode))

    def set_math_mode(self, handle, mode):
        self.calls.append(("math_mode", mode))

    def _matrix(self, ptr, rows, cols, ld):
        """A column-major rows×cols matrix with leading dimension ld at `ptr` (a view)."""
        count = ld * (cols - 1) + rows
        flat = np.ctypeslib.as_array((ctypes.c_byte * (count * self.dtype.itemsize)).from_address(ptr))
        flat = flat.view(self.dtype)
        return np.lib.stride_tricks.as_strided(flat, (rows, cols), (self.dtype.itemsize, ld * self.dtype.itemsize))

    def gemm(self, handle, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
        self.calls.append(("gemm", transa, transb, m, n, k))
        A = self._matrix(a, *((k, m) if transa else (m, k)), lda)
        B = self._matrix(b, *((n, k) if transb else (k, n)), ldb)
        C = self._matrix(c, m, n, ldc)
        scalar = lambda p: self._matrix(p, 1, 1, 1)[0, 0]          # noqa: E731
        C[...] = scalar(alpha) * ((A.T if transa else A) @ (B.T if transb else B)) + scalar(beta) * C

    sgemm = dgemm = gemm


class HostMemory:
    def device_array(self, n, dtype):
        return HostArray(np.zeros(n, dtype))

    def to_device(self, a):
        return HostArray(np.array(a))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("a_t,b_t", [(0, 0), (0, 1), (1, 0), (1, 1)])
@pytest.mark.parametrize("beta", [0, 1])
def test_every_gemm_orientation_is_the_cublas_call_it_should_be(dtype, a_t, b_t, beta):
    rng = np.random.default_rng(0)
    m, n, k = 3, 5, 4
    a = rng.standard_normal(m * k + 2).astype(dtype)           # blocks at offsets, as in the buffers
    b = rng.standard_normal(k * n + 3).astype(dtype)
    c = rng.standard_normal(m * n + 1).astype(dtype)
    A = a[2:].reshape((k, m)).T if a_t else a[2:].reshape((m, k))
    B = b[3:].reshape((n, k)).T if b_t else b[3:].reshape((k, n))
    expected = A @ B + (c[1:].reshape(m, n) if beta else 0)
    fake = FakeCublas(dtype)
    provider = cuda_gemm.Cublas(types.SimpleNamespace(handle=ctypes.c_void_p(11)), dtype, cublas=fake,
                                memory=HostMemory())
    go = provider.prepare(a_t, b_t, m, n, k, HostArray(a), 2, HostArray(b), 3, HostArray(c), 1, beta)
    go()
    np.testing.assert_allclose(c[1:].reshape(m, n), expected, rtol=1e-5 if dtype == "float32" else 1e-12)
    assert ("set_workspace", cuda_gemm.Cublas.WORKSPACE) in fake.calls and ("set_stream", 11) in fake.calls


def test_tf32_sets_cublas_math_mode_for_float32_only():
    for dtype, expected in (("float32", True), ("float64", False)):
        fake = FakeCublas(dtype)
        cuda_gemm.Cublas(0, dtype, tf32=True, cublas=fake, memory=HostMemory())
        assert (("math_mode", FakeCublas.Math.TF32_TENSOR_OP_MATH) in fake.calls) == expected


class FakeStream:
    """A stream that records what is launched while it captures."""

    def __init__(self, refuse=False):
        self.refuse, self.capturing, self.recorded = refuse, False, None

    def begin_capture(self):
        self.capturing, self.recorded = True, []

    def end_capture(self):
        self.capturing = False
        return types.SimpleNamespace(launches=self.recorded)


def test_a_captured_step_runs_the_eager_launches_in_their_order():
    from nndsl.runtime.cuda import StepProgram
    eager, stream = [], FakeStream()

    def launch(i):
        def go():
            if stream.capturing:
                if stream.refuse:
                    raise NotImplementedError("calling cuBLAS API during stream capture is unsupported")
                stream.recorded.append(i)
            else:
                eager.append(i)
        return go
    program = StepProgram("key", [launch(i) for i in range(6)])
    program.run()
    graph = program.capture(stream, gemm=None)
    assert graph.launches == eager == list(range(6)) and program.runs == 1
    stream.refuse = True
    assert program.capture(stream, gemm=None) is None          # a provider that refuses: no graph
