"""Compiling the kernels an entry function calls, and finding their addresses.

Kernels not yet in numba's cache are compiled by this process and, when there are several
and the machine has a second core, by a helper process at the same time: the helper takes
them from the end of the list, this process from the start, and they meet in the middle.
The helper only fills numba's cache: this process then loads what the helper compiled, and
compiles anything the helper did not finish itself, so the result never depends on it.
(Numba compiles one function at a time per process, whatever the number of threads.)

`NNDSL_COMPILE_JOBS=1` turns the helper off; `=2` uses one on a single core too."""
import functools
import os
import pickle
import subprocess
import sys
import threading

from contextlib import contextmanager

import numpy as np
from numba import typeof, types
from numba.core.compiler_lock import global_compiler_lock

if __package__:
    from .loader import load_kernel
else:                                   # run as the helper process, a script beside loader.py
    from loader import load_kernel

_FEW = 6            # below this many kernels to compile, starting a helper (~0.5 s) does not pay


def compile_kernels(folder, jobs):
    """The address of each kernel `(name, signature)` of `jobs` (files in `folder`),
    compiled for that signature."""
    kernels = [load_kernel(folder, name) for name, _ in jobs]
    cold = [i for i, (k, (_, signature)) in enumerate(zip(kernels, jobs)) if not _cached(k, signature)]
    helper = None
    if len(cold) >= _FEW and _jobs() > 1 and sys.executable:
        try:
            helper = _Helper(folder, [(i, *jobs[i]) for i in reversed(cold)])
        except OSError:                        # no Python to start: compile everything here
            helper = None
    out = {}
    try:
        for i in cold:
            if helper is not None and helper.took(i):
                break                          # the helper has this one and those after it
            out[i] = _address(kernels[i], jobs[i][1])
        if helper is not None:
            helper.wait_for([i for i in cold if i not in out])
    finally:
        if helper is not None:
            helper.stop()
    return [out[i] if i in out else _address(k, signature) for i, (k, (_, signature)) in
            enumerate(zip(kernels, jobs))]


def _jobs():
    try:
        return int(os.environ["NNDSL_COMPILE_JOBS"])
    except (KeyError, ValueError):
        return min(os.cpu_count() or 1, 2)


# LLVM's loop vectoriser leaves the last iterations of a loop (trip count mod the vector width)
# to a scalar loop. An image row of 14 or 7 pixels is then mostly scalar: the CNN's im2col
# ran at 0.23 ns per element for rows of 14 against 0.12 for rows of 16. With AVX-512's
# masked loads and stores LLVM can run those iterations as one masked vector iteration
# instead (im2col 0.105 -> 0.05 ms, col2im 0.12 -> 0.06 ms; docs/performance.md,
# "Convolutions"). It is an LLVM option, so it is set only while numba compiles our kernels
# (under numba's compiler lock, which every compile holds), only where AVX-512 is, and only
# for kernel files that ask for it (`MASKED_TAILS = True`): a max-pool's loop over windows
# reads every second element, and masked strided reads made it slower (0.10 -> 0.13 ms).
_TAILS = "-prefer-predicate-over-epilogue"


@functools.lru_cache(maxsize=None)
def _masked_tails_pay():
    try:
        import llvmlite.binding as llvm
        return "+avx512f" in llvm.get_host_cpu_features().flatten().split(",")
    except Exception:                          # noqa: BLE001 - a guess: no option at all
        return False


@contextmanager
def _kernel_options(kernel):
    if not (_masked_tails_pay() and getattr(kernel, "py_func", None) is not None
            and kernel.py_func.__globals__.get("MASKED_TAILS")):
        yield
        return
    import llvmlite.binding as llvm
    with global_compiler_lock:
        llvm.set_option("", f"{_TAILS}=predicate-else-scalar-epilogue")
        try:
            yield
        finally:
            llvm.set_option("", f"{_TAILS}=scalar-epilogue")    # LLVM's default again


def _address(kernel, signature):
    with _kernel_options(kernel):
        address = function_address(kernel, signature)
    compiled = kernel.overloads[signature]
    if compiled.signature.return_type != types.none:    # the entry's call passes no result back
        raise TypeError(f"{kernel.__name__} returns {compiled.signature.return_type}; kernels return nothing")
    return address


def function_address(function, signature):
    """The address of numba function `function` compiled for `signature` (compiled, or loaded
    from numba's cache, on the first call), to be called in numba's calling convention."""
    function.compile(signature)
    compiled = function.overloads[signature]
    return compiled.library.get_pointer_to_function(compiled.fndesc.llvm_func_name)


def _cached(kernel, signature):
    """Whether numba's cache has an index for the kernel. A guess that only decides who
    compiles what: a wrong one costs time, never a wrong result."""
    if signature in kernel.overloads:
        return True
    try:
        return os.path.exists(kernel._cache._cache_file._index_path)
    except AttributeError:                     # another numba: assume nothing is cached
        return False


class _Helper:
    """A second process compiling `jobs` ((index, name, signature), in order) into the cache.
    It says `start I` and `done I` on its stdout."""

    def __init__(self, folder, jobs):
        self.started, self.done, self.ended = set(), set(), False
        self.changed = threading.Condition()
        self.process = subprocess.Popen([sys.executable, os.path.abspath(__file__)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            self.process.stdin.write(pickle.dumps((folder, jobs)))
            self.process.stdin.close()
        except OSError:                        # it died at once: no helper
            self.stop()
            raise
        threading.Thread(target=self._listen, daemon=True).start()

    def _listen(self):
        for line in self.process.stdout:
            what, _, i = line.decode().partition(" ")
            with self.changed:
                (self.started if what == "start" else self.done).add(int(i))
                self.changed.notify_all()
        with self.changed:
            self.ended = True
            self.changed.notify_all()

    def took(self, i):
        with self.changed:
            return i in self.started

    def wait_for(self, indices):
        with self.changed:
            self.changed.wait_for(lambda: self.ended or self.done.issuperset(indices))

    def stop(self):
        if self.process.poll() is None:
            self.process.kill()                # numba writes cache files whole (rename)
        self.process.wait()


def addresses(entry, folder, args):
    """The addresses of the kernels that `entry.run(addresses, *args)` runs (its plan's and its
    update's; 0 for the other arms), compiled for its arguments' types: numba compiles each
    kernel, or loads it from its cache, once per process. `entry` is the entry's module: its
    PARAMS name the arguments, its ARMS give each arm's kernel and what it is passed."""
    given = dict(zip(entry.PARAMS, args))
    kinds = {k: typeof(v) for k, v in given.items()}
    kinds.update(row=kinds["plan"].copy(ndim=1), value=kinds["ws"].dtype, float=types.float64)
    arms = set(given["plan"][:, 0].tolist())
    if given["update"]:
        arms.add(entry.N_PLAN_ARMS + given["update"] - 1)
    arms = sorted(arms)
    jobs = [(entry.ARMS[i][0], tuple(kinds[r] for r in entry.ARMS[i][1])) for i in arms]
    out = np.zeros(len(entry.ARMS), np.int64)
    out[arms] = compile_kernels(folder, jobs)
    return out


if __name__ == "__main__":
    folder, jobs = pickle.load(sys.stdin.buffer)
    for i, name, signature in jobs:
        print("start", i, flush=True)
        kernel = load_kernel(folder, name)
        with _kernel_options(kernel):
            kernel.compile(signature)
        print("done", i, flush=True)
