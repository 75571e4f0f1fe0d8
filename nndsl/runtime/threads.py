"""Threads: how many BLAS threads a step's GEMMs use, and the pool of a threaded step."""
import ctypes
import glob
import os
import threading

# A threaded step splits a batch only into parts of at least this many rows.
MIN_ROWS_PER_THREAD = 8

_SETTER = []


def _blas_threads_setter():
    """OpenBLAS's `openblas_set_num_threads_local` in the library numba's BLAS calls go to
    (scipy's), or None. A thread of a threaded step multiplies with one BLAS thread: with
    OpenBLAS's own threads on top, two steps' threads compete for the cores and the pair ran
    slower than one step (1.55 against 1.31 ms, the LSTM benchmark)."""
    try:
        import scipy.linalg.cython_blas as blas
    except ImportError:
        return None
    root = os.path.dirname(os.path.dirname(os.path.abspath(blas.__file__)))    # .../scipy
    for path in sorted(glob.glob(os.path.join(root + ".libs", "*openblas*")) +
                       glob.glob(os.path.join(root, ".dylibs", "*openblas*"))):
        try:
            setter = getattr(ctypes.CDLL(path), "openblas_set_num_threads_local")
        except (OSError, AttributeError):
            continue
        setter.argtypes, setter.restype = [ctypes.c_int], ctypes.c_int
        return setter
    return None


_LOCK = threading.Lock()


def set_blas_threads(n):
    """Sets the calling thread's BLAS threads to `n`; returns the previous count (None when
    the BLAS offers no per-thread count, and for n None)."""
    if not _SETTER:
        with _LOCK:
            if not _SETTER:
                _SETTER.append(_blas_threads_setter())
    setter = _SETTER[0]
    return setter(n) if setter is not None and n is not None else None
