"""The CPU target: a plan runs as one call of the module's njit entry function, which calls
each row's kernel through its address (docs/architecture.md, "The kernel plan")."""
import math
import threading
import time
import weakref

import numpy as np

from .checks import count
from .compiler import addresses, function_address
from .loader import load_kernel_file
from .model import Model, aligned_zeros
from .threads import (CHUNK_BYTES, MIN_ROWS_PER_THREAD, CpuLoad, Tuner, available_cores, blas_threads_setter_address,
                      loop_threads_safe, machine_cores, max_loop_threads, set_blas_threads, use_blas_threads,
                      use_loop_threads)

_COMPILING = threading.Lock()


class CpuModel(Model):
    """The compiled network on the CPU.

    `threads="auto"` (the default): a training step runs in whichever way its own timings
    say is fastest on the cores this process may use, and says again when they change (a
    program that takes a core): one thread whose GEMMs use every core's BLAS thread, one
    thread of one BLAS thread, or the batch split over the cores (see `threads.Tuner`).
    `threads=K`: exactly K threads — `step` and `fit` split each batch into up to K parts of
    at least MIN_ROWS_PER_THREAD rows, compute their gradients in as many threads (each with
    one BLAS thread), and apply one update of the summed gradient; `threads=1` is one thread
    with one BLAS thread, the same bits on every run. Every way computes the same step up
    to rounding (docs/performance.md, "Threads").

    A model with running statistics (batchnorm) cannot split its batch: its statistics are
    the whole batch's. Its loop nests over images split their outer loop (channels, images)
    over numba's threads instead (`split_loops`): `threads=K` runs them in K threads, and
    "auto" chooses between one thread, those loops in every core and the BLAS threads."""

    kernel_dir = None        # the generated module's kernel folder
    entry_name = None        # its entry function's file there
    split_loops = False      # whether its loop kernels run loops over numba's threads

    def __init__(self, seed=0, threads="auto"):
        super().__init__(seed)
        t = self.tables
        self.threads = threads
        self._lanes, self._pool, self._tuners, self._chunk_grads = [], None, {}, []
        self._parts_in_numba = None      # whether a threaded step's parts run in numba's threads
        self._plans = {}
        self._entry = self._load_entry()
        # arrays a plan does not read still take their argument of `run`: an empty one
        self._absent = {k: np.zeros((0,) * (len(shape) + 1), np.int64 if classes is not None else t.dtype)
                        for k, (shape, classes, _) in t.data.items()}
        self._no_mask = np.zeros(max(len(t.nodes), 1), np.uint8)
        # every data argument of `run`, empty (step masks too): an update alone (`_update_only`)
        self._no_data = tuple(self._absent.values()) + (np.zeros((0, 0), t.dtype),) * len(t.masks)
        # what else uses the CPUs, for the tuners: sampled from now, so that the first round
        # already knows whether other programs keep the cores busy
        self._load = CpuLoad(time.perf_counter, machine_cores())

    def _load_entry(self):
        """The module of the entry function that runs this model's plans."""
        return load_kernel_file(self.kernel_dir, self.entry_name)

    # -- running a plan ----------------------------------------------------------------
    def _plan(self, name, names, n_rows, sizes, loss):
        """Everything a call of `run` needs that depends only on the plan, the batch size and
        the data given: made once per combination and kept, so a training step pays a dict
        lookup here."""
        if type(names) is not tuple:
            names = tuple(names)
        key = (name, names, n_rows, loss) + tuple(sizes.values())
        plan = self._plans.get(key)
        if plan is None:
            t = self.tables
            table, n_forward, value_at = self._table(name, n_rows, sizes)
            self._workspace(n_rows, sizes)
            # each data argument of `run`: its place in `arrays`, or the empty array it gets
            slots = [(names.index(k), None) if k in names else (-1, self._absent[k]) for k in t.data]
            which = loss or t.losses[0]
            # the last item: the kernels' addresses for the entry, by update (see `_call`), and
            # under "run" the entry's `run` itself, which a threaded step's `run_parts` calls
            plan = self._plans[key] = (table, len(table), n_forward, slots, value_at[loss] if loss else 0, self._ws,
                                       which, t.steps[which].ranges, {})
        return plan

    def _workspace_grown(self):
        self._plans.clear()               # the kept plans hold the old workspace

    def _run(self, name, names, arrays, n_rows, sizes, seed, training, want_grad=True, loss=None,
             update=0, mask=None, first=0, grad=None):
        if self.split_loops:
            use_loop_threads(self._loops)
        found, args = self._run_args(name, names, arrays, n_rows, sizes, seed, training, want_grad, loss,
                                     update, mask, first, grad)
        return self._call(found, update, args), args[2]

    def _run_args(self, name, names, arrays, n_rows, sizes, seed, training, want_grad=True, loss=None,
                  update=0, mask=None, first=0, grad=None):
        """(the plan's kernel addresses by update, the arguments of `run` after the addresses)."""
        table, n_plan_rows, n_forward, slots, value_at, ws, which, ranges, found = \
            self._plan(name, names, n_rows, sizes, loss)
        data = [arrays[i] if i >= 0 else absent for i, absent in slots]
        if self.tables.masks:
            given_masks, self._given_masks = self._given_masks, {}
            data += [given_masks[k] if given_masks.get(k) is not None and len(given_masks[k]) == n_rows
                     else np.ones((n_rows, sizes.get(size, 1)), self.tables.dtype)
                     for k, (size, _) in self.tables.masks.items()]
        s1, s2 = self._state[which]
        # data-parallel steps pass their own gradient vector and their rows' place in the
        # global batch (`first`, which keys the draws)
        return found, (self.theta, self._grad if grad is None else grad, ws, *data, table,
                       n_plan_rows if want_grad else n_forward, self._no_mask if mask is None else mask,
                       self._seed(seed), int(first), training, update, value_at, s1, s2, ranges,
                       self._t[which], float(self.lr[which]), float(self.clip_norm), self._total[which])

    def _call(self, found, update, args):
        """`run(*args)`, given the addresses of the kernels it calls. They are looked up (numba
        compiles the kernels or loads them from its cache) on a plan's first call with each
        update, and serve every later call: data arrays are always C-ordered and of the
        kernels' dtype, seeds below 2**63, and a read-only array is passed to a kernel
        exactly as a writeable one (numba's flag changes its typing, not its layout)."""
        at = found.get(update)
        return self._entry.run(self._addresses(found, update, args) if at is None else at, *args)

    def _addresses(self, found, update, args):
        at = found.get(update)
        if at is None:
            with _COMPILING:               # a threaded step's parts: one thread loads the kernels
                at = found[update] = addresses(self._entry, self.kernel_dir, args)
        return at

    # -- steps -------------------------------------------------------------------------
    def _step(self, name, seed, data, checked):
        step = self.tables.steps[name]
        arrays, n_rows, sizes = self._arrays(step.data, data, ("step", name), checked)
        if not checked:
            self._unseen_finite(step.data, arrays)
        self._t[name] += 1
        if self._threads == "auto":
            tuner = self._tuner(name, n_rows, sizes)
            way = tuner.way()
            start = time.perf_counter()
            L = self._step_way(name, step, arrays, n_rows, sizes, seed, *way)
            tuner.record(way, time.perf_counter() - start)
        else:
            parts = self._parts(self._threads, n_rows)          # K parts in K threads, or loops in K
            L = self._step_way(name, step, arrays, n_rows, sizes, seed, parts, 1,
                               parts if parts > 1 else self._threads)
        if not math.isfinite(L):
            self._t[name] -= 1
        return L

    def _step_way(self, name, step, arrays, n_rows, sizes, seed, parts, blas, threads=1):
        """A way (`threads.Tuner`) of running a step: the batch in `parts` parts over `threads`
        threads of one BLAS thread each, or whole in this thread with `blas` BLAS threads and
        (a model that splits its loops) `threads` threads of numba's for its loops."""
        if parts > 1:
            return self._threaded_step(name, step, arrays, n_rows, sizes, seed, parts, threads)
        self._loops = threads
        use_blas_threads(blas)
        return float(self._run(step.train_plan, step.data, arrays, n_rows, sizes, seed, True, loss=name,
                               update=step.update)[0])

    @property
    def _batch_splits(self):
        """Whether a batch may run in parts (over threads, or in chunks): not for a model with
        running statistics (each part would normalise with its own part's statistics) nor one
        whose loops run in numba's threads (its threads are for those loops)."""
        return not (self.tables.stats or self.split_loops)

    def _parts(self, threads, n_rows):
        """The parts a batch of `n_rows` splits into for `threads` threads: at least
        MIN_ROWS_PER_THREAD rows each, one where the batch does not split."""
        if not self._batch_splits:
            return 1
        return max(1, min(threads, n_rows // MIN_ROWS_PER_THREAD))

    def _chunks(self, rows, sizes):
        """How many chunks a thread's `rows` of a batch run in, one after another in one
        workspace, so that each chunk's tensors stay in the caches: halved while a chunk's
        workspace is over CHUNK_BYTES, the halves keep MIN_ROWS_PER_THREAD rows, and the
        chunks' gradient vectors (one each) take no more memory than the workspace they
        spare. The CNN benchmark's workspace is 0.42 MB a row; in one thread its batch of 64
        (27 MB) took 3.9-4.8 ms, in four chunks of 16 (6.8 MB) 2.6-2.8 ms."""
        if not self._batch_splits:
            return 1
        t = self.tables
        itemsize = np.dtype(t.dtype).itemsize
        ws = t.workspace_size(*t.size_args(rows, sizes)) * itemsize
        chunks = 1
        while rows // (2 * chunks) >= MIN_ROWS_PER_THREAD and ws / chunks > CHUNK_BYTES and \
                (2 * chunks - 1) * t.n_params * itemsize <= ws - ws / (2 * chunks):
            chunks *= 2
        return chunks

    def _tuner(self, name, n_rows, sizes):
        """The tuner of the steps of loss `name` on batches of this shape."""
        key = (name, n_rows) + tuple(sizes.values())
        tuner = self._tuners.get(key)
        if tuner is None:
            cores = available_cores()
            parts = self._parts(cores, n_rows)
            # the way that wakes OpenBLAS's threads goes first: they spin on for ~0.1 s after a
            # GEMM, the one-thread way is probed beside them unharmed, and the ways that need
            # every core wait until they sleep (`Tuner.SETTLE`); probed last, they slowed
            # whatever ran after the probe
            ways = ([(1, cores, 1)] if cores > 1 else []) + [(1, 1, 1)]
            one = self._chunks(n_rows, sizes)
            if one > 1:
                ways.append((one, 1, 1))            # the batch in chunks, one after another
            if parts > 1:
                ways.append((parts, 1, parts))
                chunks = self._chunks(n_rows // parts, sizes)
                if chunks > 1:
                    ways.append((parts * chunks, 1, parts))
            if self.split_loops and cores > 1 and loop_threads_safe():
                ways.append((1, 1, cores))          # its loops over the cores, GEMMs in one thread
            tuner = self._tuners[key] = Tuner(ways, time.perf_counter, self._load)
        return tuner

    def _update_only(self, name, sizes, L, grad):
        """One optimiser update of loss `name` with the gradient `grad` of a whole batch whose
        mean loss is L (the update's finite check reads it): the plan's rows are not run. The
        data-parallel and the threaded steps end so."""
        t = self.tables
        step = t.steps[name]
        table, _, _, _, value_at, ws, _, _, found = self._plan(step.train_plan, (), 1, sizes, name)
        ws[value_at] = L
        s1, s2 = self._state[name]
        self._call(found, step.update, (self.theta, grad, ws, *self._no_data, table, 0, self._no_mask, 0, 0, True,
                                        step.update, value_at, s1, s2, step.ranges, self._t[name],
                                        float(self.lr[name]), float(self.clip_norm), self._total[name]))

    # -- threaded steps ----------------------------------------------------------------
    def _threaded_step(self, name, step, arrays, n_rows, sizes, seed, parts, threads):
        """One step over `parts` contiguous parts of the batch in `threads` threads (a part a
        thread, or several one after another in the thread's workspace): part k's gradient
        (the mean over its rows) into its own gradient vector; their sum weighted by each
        part's share is the batch's mean gradient, and one update applies it. Every part
        draws its noise with the step's seed at its rows' place in the batch (`first`), as
        data-parallel ranks do, so the step is the one-thread step."""
        seed = self._seed(seed)
        threads = max(1, min(threads, parts))
        per_thread = parts // threads
        parts = threads * per_thread
        cuts = [n_rows * k // parts for k in range(parts + 1)]
        given = self._given_masks
        lanes = [self] + [self._lane(j) for j in range(1, threads)]
        grads = [lane._part_grad(c) for lane in lanes for c in range(per_thread)]

        def part_args(k):
            lane, a, z = lanes[k // per_thread], cuts[k], cuts[k + 1]
            lane._given_masks = {m: v[a:z] for m, v in given.items() if v is not None}
            return lane._run_args(step.train_plan, step.data, [x[a:z] for x in arrays], z - a, sizes, seed,
                                  True, loss=name, first=a, grad=grads[k])

        def thread(j):
            out = []
            for k in range(j * per_thread, (j + 1) * per_thread):
                found, args = part_args(k)
                out.append(float(lanes[j]._call(found, 0, args)))
            return out

        previous = set_blas_threads(1)
        try:
            if self._parts_in_numba is None:
                self._parts_in_numba = loop_threads_safe()
            if threads == 1:
                # chunks in this thread: no parallel region, whose start waits for numba's
                # workers (beside a busy core, spinning ones made the LSTM's chunked steps
                # 14 ms against 1.9)
                losses = thread(0)
            elif self._parts_in_numba and threads <= max_loop_threads():
                calls = [part_args(k) for k in range(parts)]
                found, args = calls[0]                 # the parts' arguments are of one type
                at = self._addresses(found, 0, args)
                use_loop_threads(threads)
                losses = self._entry.run_parts(blas_threads_setter_address(), self._run_address(found, at, args), at,
                                               per_thread, *self._by_part([args for _, args in calls])).tolist()
            else:
                others = [self._threads_pool(threads).submit(thread, j) for j in range(1, threads)]
                losses = thread(0) + [v for f in others for v in f.result()]
        finally:
            set_blas_threads(previous)
        shares = [(cuts[k + 1] - cuts[k]) / n_rows for k in range(parts)]
        self._grad *= shares[0]
        for grad, share in zip(grads[1:], shares[1:]):
            grad *= share                  # in place: the part's vector is rewritten next step
            self._grad += grad
        L = float(sum(v * w for v, w in zip(losses, shares)))
        self._update_only(name, sizes, L, self._grad)
        return L

    def _part_grad(self, c):
        """The gradient vector of this lane's part c in a threaded step (its first: `_grad`)."""
        if c == 0:
            return self._grad
        while len(self._chunk_grads) < c:
            self._chunk_grads.append(aligned_zeros(self.tables.n_params, self.tables.dtype))
        return self._chunk_grads[c - 1]

    def _run_address(self, found, at, args):
        """The address of the entry's `run` compiled for these arguments (a plan's parts'),
        which `run_parts` calls (numba compiles it, or loads it from its cache, once)."""
        address = found.get("run")
        if address is None:
            from numba import typeof
            with _COMPILING:
                address = found["run"] = function_address(self._entry.run,
                                                          tuple(typeof(a) for a in (at,) + tuple(args)))
        return address

    def _by_part(self, calls):
        """The arguments of the entry's `run_parts` from those of `run` for each part: a tuple
        of the parts' values for each of its PART_PARAMS (an array of integers), the first
        part's value for the others (the same in every part)."""
        entry, out = self._entry, []
        for name, values in zip(entry.PARAMS, zip(*calls)):
            if name == "update":
                continue                   # no part updates: the step updates once after them
            if name not in entry.PART_PARAMS:
                out.append(values[0])
            elif isinstance(values[0], np.ndarray):
                out.append(values)
            else:
                out.append(np.array(values, np.int64))
        return out

    def _lane(self, k):
        """The replica that computes part k ≥ 1 of a threaded step: it reads this model's
        parameters and owns its gradient vector, workspace and plans."""
        while len(self._lanes) < k:
            lane = object.__new__(type(self))
            lane.__dict__.update(self.__dict__)
            lane._grad = aligned_zeros(self.tables.n_params, self.tables.dtype)
            lane._ws = np.zeros(0, self.tables.dtype)
            lane._plans, lane._lanes, lane._chunk_grads = {}, [], []
            self._lanes.append(lane)
        lane = self._lanes[k - 1]
        lane.theta = self.theta                # `load` may have replaced the vector
        return lane

    def _threads_pool(self, threads):
        if self._pool is None or self._pool._max_workers < threads - 1:
            from concurrent.futures import ThreadPoolExecutor
            if self._pool is not None:
                self._pool.shutdown(wait=False)
            self._pool = ThreadPoolExecutor(threads - 1, thread_name_prefix=self.tables.name,
                                            initializer=set_blas_threads, initargs=(1,))
            weakref.finalize(self, self._pool.shutdown, False)    # its threads end with the model
        return self._pool

    @property
    def threads(self):
        """Threads a step computes its batch's gradient in: "auto", or K (`Model(threads=K)`)."""
        return self._threads

    @threads.setter
    def threads(self, value):
        self._threads = "auto" if value == "auto" else count(value, "threads")
        self._tuners = {}
        # numba's threads of split loops (`split_loops`) in runs that are not tuned steps
        # (forward, loss, grad): K, or the last step's way
        self._loops = 1 if value == "auto" else self._threads

    # -- fit's hooks -------------------------------------------------------------------
    def _batches(self, data, width, sizes):
        return _HostBatches(data, width)

    def _fit_step(self, name, batch, first, global_rows, sizes, comm):
        names = list(self.tables.steps[name].data) + [k for k in self.tables.lengths if k in batch]
        part = {k: batch[k] for k in names}
        if comm is None:
            return self._step(name, None, part, True), False
        return self._shared_step(name, part, first, global_rows, sizes, comm)

    @staticmethod
    def _fit_losses(handles):
        return handles

    # -- data-parallel steps -----------------------------------------------------------
    def _shared_step(self, name, batch, first, n_global, sizes, comm):
        """One data-parallel step of loss `name`: this rank's gradient over its rows (`first`
        is their place in the global batch of `n_global`), weighted by its share, summed over
        the ranks by one Allreduce, and the same update on every rank. Returns (the global
        batch's mean loss, whether any rank was interrupted)."""
        step = self.tables.steps[name]
        if self._threads == "auto":            # the ranks of one machine share its cores
            share = max(1, available_cores() // comm.Get_size())
            use_blas_threads(share)
            self._loops = share
        seed = self._seed(None)                # every rank draws the step's seed, rows or not
        n_local = len(next(iter(batch.values()))) if batch else 0
        local, summed = self._local, self._summed
        L, share = 0.0, 0.0                    # a rank without rows in this batch adds zeros
        if n_local:
            arrays, n_rows, sizes = self._arrays(step.data, batch, ("step", name), checked=True)
            L = self._run(step.train_plan, step.data, arrays, n_rows, sizes, seed, True, loss=name,
                          first=first, grad=local)[0]
            share = n_local / n_global         # the global mean: each local mean by its share
        self._pack(local, share, L, 1.0 if self._interrupted else 0.0)
        L, stop = self._allreduce(comm, local, summed)
        self._t[name] += 1
        self._update_only(name, sizes, L, summed)
        self._average_stats(comm)
        if not math.isfinite(L):
            self._t[name] -= 1
        return L, stop


class _HostBatches:
    """`fit`'s batches on the host: rows gathered into buffers allocated once, not per step,
    each on a cache line (`aligned_zeros`: the CNN benchmark's step 1 % faster from an
    aligned image batch than from one 16 bytes past a line)."""

    def __init__(self, data, width):
        self.data = data
        self.buffers = {k: aligned_zeros((width,) + v.shape[1:], v.dtype) for k, v in data.items()}

    def load(self, rows, noise):
        # mode="clip": the rows are a permutation, and numpy buffers `out` under "raise"
        batch = {k: np.take(v, rows, axis=0, out=self.buffers[k][:len(rows)], mode="clip")
                 for k, v in self.data.items()}
        batch.update(noise)
        return batch
