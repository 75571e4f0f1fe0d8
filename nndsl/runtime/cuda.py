"""The CUDA target: the plan's rows as numba.cuda kernel launches and cuBLAS GEMMs on one
stream, over device buffers that live as long as the model.

The kernel files' `prepare(ctx, arrays…, ints…)` binds one plan row to this model's
buffers and returns a launcher; a plan runs as the list of its launchers, built once per
batch shape. Parameters, gradients, optimiser state and the workspace stay on the device;
`params`, `grad`, `save` copy back when asked; `step` returns a lazy `DeviceLoss`. Under
NUMBA_ENABLE_CUDASIM=1 the module runs on numba's simulator and its GEMMs run in numpy
(for tests only)."""
import contextlib
import os

import numpy as np
from numba import cuda

from . import cuda_gemm
from .loader import load_kernel
from .model import Model, fresh_workspace

SIMULATED = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")
# threads per block of every launch (a power of two: block reductions halve it), and the most
# blocks of a launch (grid-stride loops cover the rest); tiny under the simulator, which runs
# every thread as a Python thread
TPB = 4 if SIMULATED else 256
MAX_BLOCKS = 2 if SIMULATED else 4096
# a reduction over at least this many elements runs as one block per output (block mode);
# the simulator's barriers are slow, so there tests ask for block mode by this variable
BLOCK_MIN = int(os.environ.get("NNDSL_CUDA_BLOCK_MIN", 1 << 62 if SIMULATED else 64))
# threads of the one block that runs a recurrence (render/numba_cuda.py, `render_scan`);
# NNDSL_CUDA_SCAN=0 launches a recurrence's rows one by one instead (to compare)
SCAN_THREADS = 4 if SIMULATED else 256
SCANS = os.environ.get("NNDSL_CUDA_SCAN", "1") not in ("", "0")
HISTORY = 4096         # device ring of step losses: a lazy loss stays readable this many steps


def on_device(a):
    """A device array (numba's, CuPy's, or the simulator's)."""
    return hasattr(a, "__cuda_array_interface__") or type(a).__name__ == "FakeCUDAArray"


def cuda_aware_mpi():
    """Whether to hand device buffers to MPI. mpi4py cannot tell whether the MPI library is
    CUDA-aware, and a library that is not would read device pointers as host memory: only
    where the user says so (NNDSL_CUDA_AWARE_MPI=1)."""
    return os.environ.get("NNDSL_CUDA_AWARE_MPI", "0") not in ("", "0")


class Context:
    """What the kernels' `prepare` functions bind to: the GEMM provider's `prepare`, the
    stream, the draws' key (step seed and first example, written before each run), the loss history,
    and launch sizes."""

    def __init__(self, stream, dtype, gemm):
        self.stream = stream
        self.gemm = gemm.prepare          # (a_t, b_t, m, n, k, a, oa, b, ob, c, oc, beta) -> launcher
        self.tpb = TPB
        self.scan_threads = SCAN_THREADS
        self.block_min = BLOCK_MIN
        self.draw_key = cuda.to_device(np.zeros(2, np.int64), stream=stream)
        self.history = cuda.device_array(HISTORY, dtype, stream=stream)
        self.counter = cuda.to_device(np.zeros(1, np.int64), stream=stream)    # steps whose loss is in history

    def set_draw_key(self, seed, first):
        self.draw_key.copy_to_device(np.array([seed, first], np.int64), stream=self.stream)

    @staticmethod
    def blocks(n):
        """Blocks for one thread per element (grid-stride beyond MAX_BLOCKS)."""
        return max(1, min((int(n) + TPB - 1) // TPB, MAX_BLOCKS))

    @staticmethod
    def grid_blocks(n):
        """Blocks for one block per element (grid-stride beyond MAX_BLOCKS)."""
        return max(1, min(int(n), MAX_BLOCKS))

    def zero(self, buf, offset, size):
        return self.launch(_fill, self.blocks(size), (buf[int(offset):int(offset) + int(size)], 0.0))

    def launch(self, kernel, blocks, args, threads=TPB):
        """A launcher of `kernel[blocks, threads]` on these arguments, bound once: on a device
        the kernel is specialised to their types (no type dispatch per launch)."""
        if not SIMULATED:
            kernel = kernel.specialize(*args)
        configured = kernel[blocks, threads, self.stream]
        return lambda: configured(*args)


@cuda.jit(cache=True)
def _fill(a, value):
    for i in range(cuda.grid(1), a.shape[0], cuda.gridsize(1)):
        a[i] = value


@cuda.jit(cache=True)
def _gather(src, rows, count, dst):
    # dst[r, :] = src[rows[r], :]: a shuffled batch gathered on the device
    width = src.shape[1]
    for i in range(cuda.grid(1), count * width, cuda.gridsize(1)):
        r = i // width
        dst[r, i - r * width] = src[rows[r], i - r * width]


@cuda.jit(cache=True)
def _pack(grad, ws, value_at, share, stop, local):
    # local = [grad·share ‖ loss·share ‖ stop]; a rank without rows (share 0) adds zeros
    n = local.shape[0] - 2
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        local[i] = grad[i] * share if share != 0.0 else 0.0
    if cuda.grid(1) == 0:
        local[n] = ws[value_at] * share if share != 0.0 else 0.0
        local[n + 1] = stop


@cuda.jit(cache=True)
def _unpack(summed, grad, ws, value_at):
    # the summed gradient where the update reads it, the global loss where its check reads it
    n = summed.shape[0] - 2
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        grad[i] = summed[i]
    if cuda.grid(1) == 0:
        ws[value_at] = summed[n]


class DeviceLoss:
    """The loss of a step, left on the device until asked for: `float(L)` waits for it."""

    __slots__ = ("_model", "_slot", "_value")

    def __init__(self, model, slot):
        self._model, self._slot, self._value = model, slot, None

    def __float__(self):
        if self._value is None:
            self._value = self._model._read_history([self._slot])[0]
        return self._value

    def __repr__(self):
        return repr(float(self))

    def __format__(self, spec):
        return format(float(self), spec)

    def __eq__(self, other):
        return float(self) == float(other)

    def __lt__(self, other):
        return float(self) < float(other)

    def __gt__(self, other):
        return float(self) > float(other)

    def __sub__(self, other):
        return float(self) - float(other)

    def __add__(self, other):
        return float(self) + float(other)

    __hash__ = None


class CudaModel(Model):
    """The compiled network on a CUDA GPU; arrays may be numpy arrays (copied to the device)
    or device arrays. `tf32=True`: float32 GEMMs on TF32 tensor cores (cuBLAS through
    nvmath-python; about 3 decimal digits less in each product, as JAX's default)."""

    kernel_dir = None        # the generated module's kernel folder
    branches = None          # plan branch -> (kernel file, kind, arrays it takes, integers, takes `training`)
    updates = None           # loss -> (update kernel file, its hyperparameters)
    scan = None              # (the recurrences' kernel file, the branches it runs, its arrays) or None
    FIT_READ_EVERY = 32      # `fit` reads the losses of this many batches in one copy

    def __init__(self, seed=0, threads=1, tf32=False):
        if threads not in (1, "auto"):
            raise ValueError(f"threads={threads!r}: a CUDA module steps on the GPU; threads=K is "
                             "the CPU module's (nndsl build --target cpu)")
        t = self.tables
        if SIMULATED:
            self._cp_stream = None
        else:
            if not cuda.is_available():
                raise RuntimeError(f"{t.name}: no CUDA GPU is available to numba.cuda (and "
                                   "NUMBA_ENABLE_CUDASIM is not set); build with --target cpu to "
                                   "run on the CPU")
            try:
                import cupy
            except ImportError:
                raise RuntimeError(f"{t.name}: the CUDA module needs CuPy for its GEMMs: "
                                   "pip install -e \".[cuda]\"") from None
            self._cp_stream = cupy.cuda.Stream(non_blocking=True)
        self._ready_dev = False
        super().__init__(seed)               # host initialisation: the CPU module's values
        self._stream = cuda.external_stream(self._cp_stream.ptr) if self._cp_stream is not None else cuda.stream()
        self._gemm = cuda_gemm.provider(SIMULATED, self._stream, t.dtype, tf32)
        self._ctx = Context(self._stream, t.dtype, self._gemm)
        s = self._stream
        self._d = {"theta": cuda.to_device(self.theta, stream=s), "grad": cuda.to_device(self._grad, stream=s)}
        self._d_state = {name: tuple(cuda.to_device(a, stream=s) for a in self._state[name]) for name in t.losses}
        self._d_t = {name: cuda.to_device(np.array([self._t[name], 0], np.int64), stream=s) for name in t.losses}
        self._d_ranges = {name: cuda.to_device(t.steps[name].ranges, stream=s) for name in t.losses}
        # each loss's learning rate and clip_norm on the device: a captured step reads them there
        self._d_knobs = {name: cuda.to_device(np.zeros(2), stream=s) for name in t.losses}
        self._knobs = {}
        self._programs, self._graphs = {}, {}    # a step shape's launches; its captured graph
        self.graphs = not SIMULATED              # replay steps as CUDA graphs where capture works
        self._red = cuda.to_device(np.zeros(1, t.dtype), stream=s)
        self._d_ws = cuda.device_array(1, t.dtype, stream=s)
        self._inputs = {}                    # (rows, sizes) -> device input buffers
        self._masked = set()                 # ids of step-mask buffers not all ones
        self._launches = {}                  # (plan, rows, sizes, training) -> [(node, launcher)]
        self._update_launch = {}
        self._slot = -1                      # the last step's slot (the device's counter, less one)
        self._host_params_stale = False      # the device moved on since the host copy
        self._host_params_dirty = False      # the host copy may have been written
        self.streamed = None                 # did the last fit stream its batches from the host?
        self.comm_path = None                # the last data-parallel fit's Allreduce: "device" or "host"
        self._ready_dev = True

    # -- host <-> device ---------------------------------------------------------------
    @property
    def params(self):
        """Named views of the parameters, copied from the device now; writes through
        `m.params[name] = value` (or into the views) reach the device before the next run."""
        self._sync_host()
        self._host_params_dirty = True
        return self._params

    @params.setter
    def params(self, value):
        self._params = value

    def _sync_host(self):
        if getattr(self, "_ready_dev", False) and self._host_params_stale:
            self._d["theta"].copy_to_host(self.theta, stream=self._stream)
            counts = {}
            for name in self.tables.losses:
                for d, h in zip(self._d_state[name], self._state[name]):
                    d.copy_to_host(h, stream=self._stream)
                counts[name] = self._d_t[name].copy_to_host(stream=self._stream)
            self._stream.synchronize()
            self._t.update({name: int(c[0]) for name, c in counts.items()})
            self._host_params_stale = False

    def _push_params(self):
        if self._host_params_dirty:
            self._d["theta"].copy_to_device(self.theta, stream=self._stream)
            self._host_params_dirty = False

    def _state_changed(self):
        """The host's parameters, optimiser state and step counts to the device."""
        if not getattr(self, "_ready_dev", False):
            return
        self._d["theta"].copy_to_device(self.theta, stream=self._stream)
        for name in self.tables.losses:
            for d, h in zip(self._d_state[name], self._state[name]):
                d.copy_to_device(h, stream=self._stream)
            self._d_t[name].copy_to_device(np.array([self._t[name], 0], np.int64), stream=self._stream)
        self._stream.synchronize()
        self._host_params_dirty = self._host_params_stale = False

    def _read_history(self, slots):
        host = self._ctx.history.copy_to_host(stream=self._stream)
        self._stream.synchronize()
        return [float(host[s % HISTORY]) for s in slots]

    def _stream_scope(self):
        return self._cp_stream if self._cp_stream is not None else contextlib.nullcontext()

    def synchronize(self):
        """Wait for every launched kernel (for timing)."""
        self._stream.synchronize()

    # -- buffers and launches ----------------------------------------------------------
    def _workspace(self, n_rows, sizes):
        """The host mirror of the workspace (forward from any node writes given nodes into it);
        the device workspace grows with it, and launches and graphs bound to the old one go."""
        ws = super()._workspace(n_rows, sizes)
        if getattr(self, "_ready_dev", False) and self._d_ws.size < ws.size:
            # NaN where NNDSL_POISON_WORKSPACE is set, as on the host (`fresh_workspace`)
            self._d_ws = cuda.to_device(fresh_workspace(ws.size, self.tables.dtype), stream=self._stream)
            for kept in (self._launches, self._update_launch, self._programs, self._graphs):
                kept.clear()
        return ws

    def _input_buffers(self, n_rows, sizes):
        t = self.tables
        key = (n_rows,) + tuple(sizes.values())
        bufs = self._inputs.get(key)
        if bufs is None:
            bufs = {}
            for k, (shape, classes, _) in t.data.items():
                dims = tuple(sizes.get(s, 1) if isinstance(s, str) else s for s in shape)
                bufs[k] = cuda.device_array((n_rows,) + dims, np.int64 if classes is not None else t.dtype,
                                            stream=self._stream)
            # step masks of free sequence lengths: all ones (every step counts) unless
            # `x_lengths=` was given; `_masked` names the buffers that hold a given mask
            for k, (size, _) in t.masks.items():
                bufs[k] = cuda.to_device(np.ones((n_rows, sizes.get(size, 1)), t.dtype), stream=self._stream)
            self._inputs[key] = bufs
        return bufs

    def _copy_masks(self, bufs, n_rows, given=None):
        """The step masks of this run into their device buffers: the masks `x_lengths=` made
        (or `given`), else ones again where a given mask was left."""
        if given is None:
            given, self._given_masks = self._given_masks, {}
        for k in self.tables.masks:
            m, buf = given.get(k), bufs[k]
            if m is not None and len(m) == n_rows:
                buf.copy_to_device(m, stream=self._stream)
                self._masked.add(id(buf))
            elif id(buf) in self._masked:
                buf.copy_to_device(np.ones(buf.shape, self.tables.dtype), stream=self._stream)
                self._masked.discard(id(buf))

    def _plan_launches(self, name, n_rows, sizes, training):
        """The plan's rows bound to this model's buffers: [(node, launcher)], built once per
        batch size (offsets, sizes, views and launch configurations included)."""
        key = (name, n_rows, tuple(sizes.values()), bool(training))
        out = self._launches.get(key)
        if out is not None:
            return out
        table, _, scans = self._plan_rows(name, n_rows, sizes)
        self._workspace(n_rows, sizes)
        inputs = self._input_buffers(n_rows, sizes)
        dev = dict(self._d, ws=self._d_ws, **inputs)
        whole = self._scan_launches(table, scans, dev)
        inside = {r for r0, r1 in scans if r0 in whole for r in range(r0 + 1, r1)}
        out = []
        for r, row in enumerate(table):
            if r in whole or r in inside:    # a recurrence: its first row launches all of its rows
                out.append((int(row[1]), whole.get(r)))
                continue
            kernel, kind, arrays, n_ints, takes_training = self.branches[int(row[0])]
            args = [dev[a] for a in arrays] + [int(v) for v in row[2:2 + n_ints]]
            if takes_training:
                args.append(bool(training))
            out.append((int(row[1]), load_kernel(self.kernel_dir, kernel, "prepare")(self._ctx, *args)))
        self._launches[key] = out
        return out

    def _scan_launches(self, table, scans, dev):
        """{first row: the launcher of the whole recurrence} for the recurrences (row ranges
        of `table`) that the module's scan kernel runs; the other rows of each launch nothing
        (None keeps the list aligned with the table's rows)."""
        if self.scan is None or not scans or not SCANS:
            return {}
        kernel, branches, arrays = self.scan
        branches = set(branches)
        ours = [(r0, r1) for r0, r1 in scans
                if set(table[r0:r1, 0].tolist()) <= branches and len(set(table[r0:r1, 1].tolist())) == 1]
        if not ours:
            return {}
        d_table = cuda.to_device(np.ascontiguousarray(table), stream=self._stream)
        prepare = load_kernel(self.kernel_dir, kernel, "prepare")
        return {r0: prepare(self._ctx, d_table, r0, r1, [dev[a] for a in arrays]) for r0, r1 in ours}

    def _copy_inputs(self, names, arrays, n_rows, sizes):
        bufs = self._input_buffers(n_rows, sizes)
        for k, a in zip(names, arrays):
            if a is not bufs[k]:
                bufs[k].copy_to_device(a, stream=self._stream)
        self._copy_masks(bufs, n_rows)

    # -- running a plan ----------------------------------------------------------------
    def _run(self, name, names, arrays, n_rows, sizes, seed, training, want_grad=True, loss=None,
             update=0, mask=None):
        """A plan on the device: returns (loss value, the host mirror of the workspace for
        plans whose nodes the caller reads)."""
        self._push_params()
        ws = self._workspace(n_rows, sizes)
        launches = self._plan_launches(name, n_rows, sizes, training)
        _, n_forward, value_at = self._table(name, n_rows, sizes)
        self._copy_inputs(names, arrays, n_rows, sizes)
        self._ctx.set_draw_key(self._seed(seed), 0)
        if mask is not None:                 # nodes the caller gave were written into the mirror
            self._d_ws.copy_to_device(ws, stream=self._stream)
        with self._stream_scope():
            for node, go in launches[:len(launches) if want_grad else n_forward]:
                if go is None or (node >= 0 and mask is not None and mask[node]):
                    continue
                go()
        value = 0.0
        if name in ("forward", "nodes"):
            self._d_ws.copy_to_host(ws, stream=self._stream)
        elif loss is not None:
            at = value_at[loss]
            value = self._d_ws[at:at + 1].copy_to_host(stream=self._stream)
            if want_grad:
                self._d["grad"].copy_to_host(self._grad, stream=self._stream)
        self._stream.synchronize()
        value = float(value[0]) if loss is not None and name not in ("forward", "nodes") else value
        return value, ws

    def _arrays(self, names, data, what):
        """Device arrays of the right dtype and shape are used as they are."""
        if data and all(k in data and on_device(data[k]) for k in names) and len(data) == len(names):
            arrays = [data[k] for k in names]
            n_rows = arrays[0].shape[0]
            sizes = {}
            for a, k in zip(arrays, names):
                for axis, s in enumerate(self.tables.data[k][0]):
                    if isinstance(s, str):
                        sizes[s] = a.shape[axis + 1]
            return arrays, n_rows, sizes
        return super()._arrays(names, data, what)

    def _device_step(self, name, n_rows, sizes, seed, sticky, first=0):
        """One step of loss `name` on inputs already in the device buffers: forward, loss,
        gradient, the update; returns the history slot of its loss. No synchronisation.

        What changes from step to step lives on the device (the batch in the input buffers,
        the draws' key, the learning rate, the step count, the history slot), so the step's
        launches are the same every time: the first step of a shape runs them, the second is
        captured as a CUDA graph and every later one replays it (one launch; `self.graphs`,
        off under the simulator, which cannot capture)."""
        self._push_params()
        self._sync_knobs(name)
        program = self._program(name, n_rows, sizes, sticky)
        self._ctx.set_draw_key(self._seed(seed), first)
        self._slot += 1
        graph = self._graphs.get(program.key)
        if graph is not None:
            graph.launch(self._cp_stream)
        elif self.graphs and program.runs >= 1 and self._cp_stream is not None:
            graph = self._graphs[program.key] = program.capture(self._cp_stream, self._gemm)
            if graph is None:
                self.graphs = False          # capture is not available here: launches from now on
                with self._stream_scope():
                    program.run()
            else:
                graph.launch(self._cp_stream)
        else:
            with self._stream_scope():
                program.run()
        self._host_params_stale = True
        return self._slot

    def _program(self, name, n_rows, sizes, sticky):
        """The launches of one step of loss `name` on batches of this shape, made once."""
        key = (name, n_rows, tuple(sizes.values()), sticky, self._total[name], float(self.clip_norm) > 0)
        program = self._programs.get(key)
        if program is None:
            plan = self.tables.steps[name].train_plan
            launches = [go for _, go in self._plan_launches(plan, n_rows, sizes, True) if go is not None]
            launches.append(self._update_launcher(name, plan, n_rows, sizes, sticky))
            program = self._programs[key] = StepProgram(key, launches)
        return program

    def _sync_knobs(self, name):
        """The loss's learning rate and clip_norm to the device when they changed."""
        knobs = (float(self.lr[name]), float(self.clip_norm))
        if self._knobs.get(name) != knobs:
            self._d_knobs[name].copy_to_device(np.array(knobs), stream=self._stream)
            self._knobs[name] = knobs

    def _update_launcher(self, name, plan, n_rows, sizes, sticky):
        """The optimiser update of loss `name` bound to this batch shape's workspace."""
        key = (name, plan, n_rows, tuple(sizes.values()), sticky, self._total[name])
        upd = self._update_launch.get(key)
        if upd is None:
            kernel, hyper = self.updates[name]
            s1, s2 = self._d_state[name]
            value_at = self._table(plan, n_rows, sizes)[2][name]
            upd = self._update_launch[key] = load_kernel(self.kernel_dir, kernel, "prepare")(
                self._ctx, self._d["theta"], self._d["grad"], s1, s2, self._d_ranges[name], self._d_ws,
                int(value_at), self._red, self._d_t[name], self._d_knobs[name], int(sticky),
                int(self._total[name]), hyper)
        return upd

    def step(self, name=None, seed=None, **data):
        """One optimiser update of the loss's parameters; returns the loss before the update
        as a DeviceLoss (no synchronisation until `float(L)`). A non-finite loss or gradient
        leaves the parameters and the step count unchanged."""
        name = self._loss_name(name)
        names = self.tables.steps[name].data
        arrays, n_rows, sizes = self._arrays(names, data, ("step", name))
        self._unseen_finite(names, arrays)     # host arrays, the first time `step` sees them
        self._workspace(n_rows, sizes)
        self._copy_inputs(names, arrays, n_rows, sizes)
        return DeviceLoss(self, self._device_step(name, n_rows, sizes, seed, sticky=0))

    def _step(self, name, seed, data, checked):
        return float(self.step(name, seed, **data))

    # -- fit's hooks -------------------------------------------------------------------
    def _batches(self, data, width, sizes):
        """The data set on the device (gathered there per batch) when it fits in half the
        free device memory; otherwise batches gathered on the host into one of two pinned
        buffers and copied while the previous batch trains. A fit also starts here: its stop
        at the first non-finite step is armed."""
        t = self.tables
        for name in t.losses:                # a fit stops at its first non-finite step
            self._d_t[name][1:2].copy_to_device(np.zeros(1, np.int64), stream=self._stream)
        # the step masks `x_lengths=` makes, gathered with the rows they describe
        full = {}
        for k, v in data.items():
            if k in t.lengths:
                full[t.lengths[k]] = _step_masks(t, k, v, sizes)
            else:
                full[k] = v
        self.streamed = not any(on_device(a) for a in full.values()) and not self._fits(full)
        return (_StreamedBatches if self.streamed else _DeviceBatches)(self, full, width, sizes)

    def _fit_step(self, name, batch, first, global_rows, sizes, comm):
        if comm is None:
            return self._device_step(name, batch.n_rows, sizes, None, sticky=1), False
        return self._device_shared_step(name, batch.n_rows, sizes, batch.n_rows / global_rows, comm, first)

    def _fit_losses(self, handles):
        return self._read_history(handles)

    @staticmethod
    def _fits(arrays):
        """Whether a data set may live on the device: at most half its free memory
        (NNDSL_CUDA_STREAM=1 streams every data set, for tests)."""
        if os.environ.get("NNDSL_CUDA_STREAM", "0") not in ("", "0"):
            return False
        if SIMULATED:
            return True
        free, _ = cuda.current_context().get_memory_info()
        return sum(a.nbytes for a in arrays.values()) <= free // 2

    # -- data-parallel steps -----------------------------------------------------------
    def _reduce_buffers(self):
        self.comm_path = "device" if cuda_aware_mpi() else "host"
        n = self.tables.n_params + 2
        self._d_reduce = tuple(cuda.device_array(n, self.tables.dtype, stream=self._stream) for _ in range(2))
        return super()._reduce_buffers()

    def _device_shared_step(self, name, n_rows, sizes, share, comm, first):
        """One data-parallel step of loss `name`: this rank's gradient over its `n_rows` rows,
        weighted by its `share` of the global batch, summed over the ranks by one Allreduce
        (of the device vector where the MPI is CUDA-aware, else through a host copy), then
        the same update on every rank. Returns (the history slot of the global loss, whether
        any rank was interrupted)."""
        self._push_params()
        t = self.tables
        plan = t.steps[name].train_plan
        rows = max(n_rows, 1)               # a rank without rows still updates, on a 1-row layout
        self._workspace(rows, sizes)
        value_at = int(self._table(plan, rows, sizes)[2][name])
        local, summed = self._d_reduce
        s, blocks = self._stream, self._ctx.blocks(local.shape[0])
        seed = self._seed(None)             # every rank draws the step's seed, rows or not
        with self._stream_scope():
            if n_rows:
                self._ctx.set_draw_key(seed, first)
                for _, go in self._plan_launches(plan, n_rows, sizes, True):
                    go()
            _pack[blocks, TPB, s](self._d["grad"], self._d_ws, value_at, float(share),
                                  1.0 if self._interrupted else 0.0, local)
        if self.comm_path == "device":
            s.synchronize()                 # MPI does not wait on CUDA streams
            comm.Allreduce(local, summed)
            stop = float(summed[t.n_params + 1:t.n_params + 2].copy_to_host()[0]) > 0
        else:
            local.copy_to_host(self._local, stream=s)
            s.synchronize()
            comm.Allreduce(self._local, self._summed)
            summed.copy_to_device(self._summed, stream=s)
            stop = bool(self._summed[t.n_params + 1] > 0)
        self._sync_knobs(name)
        upd = self._update_launcher(name, plan, rows, sizes, 1)
        self._slot += 1
        with self._stream_scope():
            _unpack[blocks, TPB, s](summed, self._d["grad"], self._d_ws, value_at)
            upd()
        self._host_params_stale = True
        if t.stats:                          # each rank's running statistics, averaged
            self._sync_host()
            self._average_stats(comm)
            self._state_changed()
        return self._slot, stop

    def load_batch(self, **data):
        """Copy a batch into the device input buffers (what a step on device arrays reads)."""
        names = [k for k in self.tables.data if k in data]
        arrays, n_rows, sizes = self._arrays(names, data, "load_batch")
        self._copy_inputs(names, arrays, n_rows, sizes)


class StepProgram:
    """One training step's launches on one batch shape, in order: the plan's rows, then the
    update. The same list runs eagerly or is captured as a graph."""

    def __init__(self, key, launches):
        self.key, self.launches, self.runs = key, launches, 0

    def run(self):
        for go in self.launches:
            go()
        self.runs += 1

    def capture(self, stream, gemm):
        """The launches captured on `stream` (CuPy's) as an executable graph, or None where
        capture fails (a GEMM provider that refuses to run while a stream captures). Nothing
        runs while capturing: the caller launches the graph."""
        import sys
        bind = getattr(gemm, "bind", None)
        try:
            stream.begin_capture()
            try:
                if bind:
                    bind(stream)             # cuBLAS on the capturing stream, its workspace set again
                for go in self.launches:
                    go()
            finally:
                graph = stream.end_capture()
        except Exception as exc:                                       # noqa: BLE001
            print(f"CUDA graph capture not available ({type(exc).__name__}: {exc}); launching kernel "
                  "by kernel", file=sys.stderr)
            return None
        return graph


def _step_masks(tables, key, lengths, sizes):
    from .checks import step_mask
    return step_mask(tables, key, lengths, len(lengths), sizes)


class _Batch:
    __slots__ = ("n_rows",)

    def __init__(self, n_rows):
        self.n_rows = n_rows


class _DeviceBatches:
    """The data set copied to the device once; each batch gathered there into the model's
    input buffers."""

    def __init__(self, model, data, width, sizes):
        s = model._stream
        self.model, self.sizes = model, sizes
        full = {k: (a if on_device(a) else cuda.to_device(a, stream=s)) for k, a in data.items()}
        self.data = {k: a.reshape((a.shape[0], int(np.prod(a.shape[1:])))) for k, a in full.items()}

    def load(self, rows, noise):
        m, s, count = self.model, self.model._stream, len(rows)
        m._workspace(count, self.sizes)
        bufs = m._input_buffers(count, self.sizes)
        m._copy_masks(bufs, count, given={})          # ones, unless gathered below
        if count:
            d_rows = cuda.to_device(np.ascontiguousarray(rows, np.int64), stream=s)
            for k, src in self.data.items():
                dst = bufs[k].reshape((count, src.shape[1]))
                _gather[m._ctx.blocks(count * src.shape[1]), TPB, s](src, d_rows, count, dst)
                if k in m.tables.masks:
                    m._masked.add(id(bufs[k]))
        for k, v in noise.items():
            bufs[k].copy_to_device(np.ascontiguousarray(v), stream=s)
        return _Batch(count)


class _StreamedBatches:
    """The data set left on the host: each batch gathered into one of two pinned buffers and
    copied asynchronously, an event guarding each buffer's reuse, so the copy of batch b+1
    overlaps the kernels of batch b."""

    def __init__(self, model, data, width, sizes):
        self.model, self.sizes = model, sizes
        self.data = {k: np.ascontiguousarray(a).reshape((a.shape[0], -1)) for k, a in data.items()}
        self.pinned = [{k: cuda.pinned_array((width, a.shape[1]), a.dtype) for k, a in self.data.items()}
                       for _ in range(2)]
        self.copied = [None, None]            # the event after each buffer's last copy
        self.half = 0

    def load(self, rows, noise):
        m, s, count = self.model, self.model._stream, len(rows)
        m._workspace(count, self.sizes)
        bufs = m._input_buffers(count, self.sizes)
        m._copy_masks(bufs, count, given={})
        self.half = half = 1 - self.half
        if self.copied[half] is not None:
            self.copied[half].synchronize()               # its last copy has left
        for k, src in self.data.items():
            host = np.take(src, rows, axis=0, out=self.pinned[half][k][:count], mode="clip")
            bufs[k].reshape((count, src.shape[1])).copy_to_device(host, stream=s)
            if k in m.tables.masks:
                m._masked.add(id(bufs[k]))
        self.copied[half] = cuda.event()
        self.copied[half].record(s)
        for k, v in noise.items():
            bufs[k].copy_to_device(np.ascontiguousarray(v), stream=s)
        return _Batch(count)


