"""The runtime of a generated module: everything that is the same for every model.

`nndsl build` writes a module that holds only its model's own tables and plan functions,
and a `class Model(CpuModel)` (or `CudaModel`). This package is the rest — argument checks,
parameters, `fit`, save/load and checkpoints, threads, data-parallel steps — as ordinary,
importable Python. The build copies it beside the kernels as `nndsl_kernels/runtime_HASH/`
(named by a hash of its files), so a generated module imports only numpy and numba (and
the CUDA module its GEMM provider) and keeps working when nndsl is uninstalled.

Every module here imports only the standard library, numpy and numba, and each other
relatively. `cuda.py` alone imports numba.cuda.
"""
