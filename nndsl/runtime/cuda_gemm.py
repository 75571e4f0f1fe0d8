"""GEMMs on the device: each plan GEMM is one call `out (m×n) [+]= op(a)·op(b)` on row-major
blocks of the model's device buffers (the plan's `BlasGemm`), bound once by `prepare` and
run by the returned launcher.

Providers:
- `Cublas` (nvmath-python's cuBLAS bindings): works under CUDA stream capture, so a whole
  training step can be one graph (CuPy's cuBLAS wrappers refuse to run while a stream
  captures: cupy issue #6290). Its workspace is allocated once and set again after every
  `set_stream` (cuBLAS resets it there); alpha and beta live on the device.
- `Cupy`: `xp.matmul` on views of the buffers; eager launches only.
- `Reference`: numpy on the host arrays of numba's simulator (tests without a GPU).

cuBLAS is column-major: a row-major (r×s) block is its (s×r) transpose there, so row-major
out = op(a)·op(b) is column-major outᵀ = op(b)ᵀ·op(a)ᵀ — the same call the CPU's `_blas_gemm` makes.
"""
import numpy as np


def column_major(a_t, b_t, m, n, k):
    """The cuBLAS call of row-major out (m×n) = op(a)·op(b): (transa, transb, m, n, k, lda, ldb,
    ldc) of cublas<t>gemm(A=b, B=a); `a_t`: a is stored (k×m), `b_t`: b is stored (n×k)."""
    return (1 if b_t else 0, 1 if a_t else 0, n, m, k, max(k if b_t else n, 1), max(m if a_t else k, 1),
            max(n, 1))


class Reference:
    """numpy on the simulator's host arrays: what the CPU's `_blas_gemm` computes."""

    name = "reference"

    def __init__(self, stream, dtype, tf32=False):
        self.dtype = dtype

    def prepare(self, a_t, b_t, m, n, k, a, oa, b, ob, c, oc, beta):
        def block(buf, offset, rows, cols, transposed):
            host = getattr(buf, "_ary", buf).reshape(-1)
            view = host[offset:offset + rows * cols]
            return view.reshape(cols, rows).T if transposed else view.reshape(rows, cols)
        A, B, C = block(a, oa, m, k, a_t), block(b, ob, k, n, b_t), block(c, oc, m, n, False)

        def go():
            if beta:
                C[...] += A @ B
            else:
                np.matmul(A, B, out=C)
        return go


class Cupy:
    """CuPy's matmul on views of the device buffers (cuBLAS inside; not under stream capture)."""

    name = "cupy"

    def __init__(self, stream, dtype, tf32=False):
        import cupy
        self.xp = cupy

    def prepare(self, a_t, b_t, m, n, k, a, oa, b, ob, c, oc, beta):
        xp = self.xp

        def block(buf, offset, rows, cols, transposed):
            view = xp.asarray(buf).reshape(-1)[offset:offset + rows * cols]
            return view.reshape(cols, rows).T if transposed else view.reshape(rows, cols)
        A, B, C = block(a, oa, m, k, a_t), block(b, ob, k, n, b_t), block(c, oc, m, n, False)
        if beta:
            return lambda: xp.add(C, xp.matmul(A, B), out=C)
        return lambda: xp.matmul(A, B, out=C)


class Cublas:
    """nvmath-python's cuBLAS bindings on the model's stream: one cublas<s|d>gemm per GEMM,
    with device pointers computed once; capture-safe."""

    name = "cublas"
    WORKSPACE = 32 << 20        # bytes: cuBLAS's recommended size for Hopper

    def __init__(self, stream, dtype, tf32=False, cublas=None, memory=None):
        if cublas is None:
            from nvmath.bindings import cublas
        if memory is None:
            from numba import cuda as memory
        self.cublas, self.dtype = cublas, np.dtype(dtype)
        self.handle = cublas.create()
        self.workspace = memory.device_array(self.WORKSPACE, np.uint8)
        self.scalars = memory.to_device(np.array([1.0, 0.0, 1.0], self.dtype))   # alpha, beta = 0, beta = 1
        self.bind(stream)
        cublas.set_pointer_mode(self.handle, cublas.PointerMode.DEVICE)
        if tf32 and self.dtype == np.float32:
            cublas.set_math_mode(self.handle, cublas.Math.TF32_TENSOR_OP_MATH)
        self.gemm = cublas.sgemm if self.dtype == np.float32 else cublas.dgemm

    def bind(self, stream):
        """Run on `stream` (a capturing one too); cuBLAS forgets the workspace at set_stream."""
        handle = getattr(stream, "handle", stream)
        self.cublas.set_stream(self.handle, int(getattr(handle, "value", handle) or 0))
        self.cublas.set_workspace(self.handle, _pointer(self.workspace, 0, 1), self.WORKSPACE)

    def prepare(self, a_t, b_t, m, n, k, a, oa, b, ob, c, oc, beta):
        transa, transb, cm, cn, ck, lda, ldb, ldc = column_major(a_t, b_t, m, n, k)
        size = self.dtype.itemsize
        alpha = _pointer(self.scalars, 0, size)
        beta_ = _pointer(self.scalars, 2 if beta else 1, size)
        args = (self.handle, transa, transb, cm, cn, ck, alpha, _pointer(b, ob, size), lda,
                _pointer(a, oa, size), ldb, beta_, _pointer(c, oc, size), ldc)
        gemm = self.gemm
        return lambda: gemm(*args)


def _pointer(buf, offset, itemsize):
    return int(buf.device_ctypes_pointer.value) + int(offset) * itemsize


def provider(simulated, stream, dtype, tf32=False):
    """The simulator's reference; on a device nvmath's cuBLAS (capture-safe) when installed,
    else CuPy's."""
    if simulated:
        return Reference(stream, dtype, tf32)
    try:
        return Cublas(stream, dtype, tf32)
    except Exception:                  # noqa: BLE001  (not installed, or no cuBLAS it can load)
        return Cupy(stream, dtype, tf32)
