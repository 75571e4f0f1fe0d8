"""`Model`: the API of every generated module (docs/language.md §7), whatever its target.

A generated module subclasses a target's model (`CpuModel`, `CudaModel`) and sets `tables`
to its own `ModelTables`. This class holds what does not depend on the target — the
parameters and optimiser state (host copies), argument checks, `forward` from any node,
`loss`/`grad`/`step`, `fit`, save/load — and calls the target through a few methods:

- `_run(plan, names, arrays, n_rows, sizes, seed, training, want_grad, loss, update, mask)`:
  run a plan's rows (and an optimiser update); returns (the loss value, the host workspace,
  which holds the nodes a `forward` plan computed);
- `_step(name, seed, data, checked)`: one training step (`checked`: the data are rows of
  arrays `fit` checked whole, finite and with labels in range);
- `_batches`, `_fit_step`, `_fit_losses`, `FIT_READ_EVERY`: the hooks of `fit` (fit.py);
- `_sync_host()` / `_state_changed()`: bring the host copies up to date / tell the target
  that they changed (a GPU keeps its own).
"""
import math
import os

import numpy as np

from . import fit as fitting
from . import saving
from .checks import (check_finite, checked_arrays, count, forward_outputs, ready_arrays, ready_spec, seed_value,
                     step_mask)
from .files import write_atomically
from .params import LearningRates, Params, initial_values
from .torch_weights import from_torch, to_torch


class Model:
    """The compiled network (see its generated module's docstring for its inputs)."""

    tables = None            # the generated module's ModelTables
    FIT_READ_EVERY = 1       # `fit` reads each step's loss at once

    def __init__(self, seed=0):
        t = self.tables
        self.dtype = t.dtype
        self._rng = np.random.default_rng(seed_value(seed))
        # theta, its gradient and every loss's optimiser state: rows of one block, each on a
        # cache line's boundary (`aligned_rows`). The update reads and writes them all, and as
        # separate arrays it ran 2.3x slower in half of the processes here (the MNIST MLP's
        # 235k parameters: 0.20-0.23 ms against 0.085-0.099, which one block gave in every
        # process; the step 1.12 and 1.62 ms against 1.03-1.07)
        vectors = aligned_rows(2 + 2 * len(t.losses), t.n_params, t.dtype)
        self.theta, self._grad = vectors[0], vectors[1]
        self.params, self.stats = Params(), Params()
        for name, (offset, shape, *_rest) in t.params.items():
            view = self.theta[offset:offset + t.parameter_count(name)].reshape(shape)
            view[...] = initial_values(t, name, self._rng)
            (self.stats if name in t.stats else self.params)._set_view(name, view)
        self._lr = LearningRates({name: float(args["lr"]) for name, (_, args) in t.optimizers.items()}, t.losses)
        self._finite_seen = {}          # id -> array: arrays `step` has checked for NaN/inf
        self.clip_norm = t.train["clip_norm"] or 0.0
        self._state = {name: (vectors[2 + 2 * i], vectors[3 + 2 * i]) for i, name in enumerate(t.losses)}
        self._t = {name: 0 for name in t.losses}
        self._total = {name: 0 for name in t.losses}     # a cosine schedule's steps (fit sets them)
        self._ws = np.zeros(0, t.dtype)
        self._lcg = int(self._rng.integers(0, 2**63))
        self._given_masks = {}
        self._interrupted = False
        self._ready_specs = {}          # names -> what `ready_arrays` checks of them

    # -- options -----------------------------------------------------------------------
    @property
    def lr(self):
        """Learning rate per named loss; `m.lr[name] = value` changes it between steps."""
        return self._lr

    @lr.setter
    def lr(self, values):
        if not isinstance(values, dict):
            raise TypeError(f"lr: expected a dict of learning rates by loss name, got {values!r}")
        self._lr.update(values)

    @property
    def total_steps(self):
        """Per named loss, the steps a cosine schedule spans: `fit` sets it to the end of its
        run (counted from the model's first step); set it yourself when you call `step` in a
        loop of your own. 0: the schedule has not started (the rate stays `lr`)."""
        return self._total

    def _loss_name(self, name):
        if name is None:
            return self.tables.losses[0]
        if name not in self.tables.steps:
            raise ValueError(f"unknown loss {name!r}; losses: {', '.join(self.tables.losses)}")
        return name

    def _seed(self, seed):
        """The seed of a run's draws: `seed`, or the next of a 64-bit LCG seeded from the
        model's generator (cheap per step, reproducible per model)."""
        if seed is not None:
            return seed_value(seed) % 2**63     # an int64 for the kernels, whatever the seed
        self._lcg = (self._lcg * 6364136223846793005 + 1442695040888963407) % 2**64
        return self._lcg >> 33

    # -- arrays ------------------------------------------------------------------------
    def _arrays(self, names, data, what, checked=False):
        """(arrays, batch size, free sizes) of the inputs `names` from `data`; `x_lengths=`
        becomes the step mask of the next run (`_given_masks`). `checked`: rows of arrays
        `fit` checked whole, whose labels need no range check per batch (two reductions:
        3 µs of the iris model's 26 µs steps in `fit`)."""
        t = self.tables
        if type(names) is not tuple:
            names = tuple(names)
        lengths = t.lengths and {k: data[k] for k in t.lengths if k in data}
        if lengths:
            data = {k: v for k, v in data.items() if k not in t.lengths}
        spec = self._ready_specs.get(names)
        if spec is None:
            spec = self._ready_specs[names] = ready_spec(t, names)
        fast = ready_arrays(spec, data, labels=not checked)
        arrays, n_rows, sizes = fast if fast is not None else checked_arrays(t, names, data, what)
        if t.lengths:
            self._given_masks = {t.lengths[k]: step_mask(t, k, v, n_rows, sizes) for k, v in lengths.items()}
        return arrays, n_rows, sizes

    def _unseen_finite(self, names, arrays):
        """Check for NaN/inf the arrays not seen before (by identity; kept alive while
        remembered so an id is not reused): repeated calls with the same arrays stay O(1).
        An array changed in place after its first check is not checked again."""
        for name, a in zip(names, arrays):
            if a.dtype.kind == "f" and self._finite_seen.get(id(a)) is not a:
                check_finite(name, a)
                if len(self._finite_seen) >= 16:
                    self._finite_seen.clear()
                self._finite_seen[id(a)] = a

    def _table(self, name, n_rows, sizes):
        """(table, rows before the gradient, {loss: where its value sits}) of a plan."""
        table, n_forward, _ = self._plan_rows(name, n_rows, sizes)
        return table, n_forward, self.tables.value_at(*self.tables.size_args(n_rows, sizes))

    def _plan_rows(self, name, n_rows, sizes):
        """(table, rows before the gradient, the row ranges of its recurrences) of a plan."""
        fill, n_forward = self.tables.plans[name]
        table = fill(*self.tables.size_args(n_rows, sizes))
        if n_forward is None:                 # a recurrence's plan: its length depends on T
            return table
        return table, n_forward, ()

    def _workspace(self, n_rows, sizes):
        """The host workspace, grown to what a batch of `n_rows` needs."""
        need = self.tables.workspace_size(*self.tables.size_args(n_rows, sizes))
        if self._ws.size < need:
            self._ws = fresh_workspace(need, self.tables.dtype)
            self._workspace_grown()
        return self._ws

    def _workspace_grown(self):
        """The workspace was replaced: what a target kept bound to the old one goes."""

    # -- the API -----------------------------------------------------------------------
    def forward(self, seed=None, outputs=None, **data):
        """The declared outputs for a batch of the inputs they depend on; noise layers are off
        (`sample=true` layers still sample).

        `outputs` names any nodes (NODES) to return instead, and any node may be given
        instead of computed: for a VAE, `forward(outputs="xr", z=Z)` decodes the codes Z."""
        t = self.tables
        names = forward_outputs(t, outputs)
        if outputs is None and set(data) <= set(t.inputs) | set(t.lengths):
            inputs = list(t.forward_inputs)
            arrays, n_rows, sizes = self._arrays(inputs, data, "forward")
            _, ws = self._run("forward", inputs, arrays, n_rows, sizes, seed, False)
            outs = tuple(v.copy() for v in t.output_views(ws, *t.size_args(n_rows, sizes)))
            return outs[0] if len(outs) == 1 else outs
        outs = self._forward_nodes(names, data, seed)
        return outs[0] if len(outs) == 1 else outs

    def _forward_nodes(self, names, data, seed):
        """The nodes `names`, computing every node that `data` does not give."""
        t = self.tables
        lengths = {k: data[k] for k in t.lengths if k in data}
        data = {k: v for k, v in data.items() if k not in t.lengths}
        given = {k: v for k, v in data.items() if k in t.nodes}
        needed = self._needed_inputs(names, given)
        provided = [k for k in t.inputs if k in data]
        arrays, n_rows, sizes = checked_arrays(t, provided, {k: data[k] for k in data if k not in t.nodes},
                                               "forward")
        # x_lengths=: the step masks of the run below, as `_arrays` makes them
        self._given_masks = {t.lengths[k]: step_mask(t, k, v, n_rows, sizes) for k, v in lengths.items()}
        for k in needed:
            if k not in data:
                raise ValueError(f"forward: {', '.join(map(repr, names))} depend on input {k!r}: "
                                 f"give it, or a node between it and them")
        by_name = dict(zip(provided, arrays))
        for k, v in given.items():
            v = np.asarray(v)
            expected = (v.shape[0] if v.ndim else 0,) + t.nodes[k][0]
            if v.shape != expected or v.dtype.kind not in "biuf" or (n_rows is not None and v.shape[0] != n_rows):
                raise ValueError(f"node {k!r}: expected a numeric array of shape "
                                 f"({n_rows if n_rows is not None else 'N'}, {', '.join(map(str, t.nodes[k][0]))}), "
                                 f"got {v.dtype} array of shape {v.shape}")
            given[k] = np.ascontiguousarray(v, dtype=t.dtype)
            n_rows = v.shape[0]
        if not n_rows:
            raise ValueError("forward: empty batch")
        for k in t.inputs:                 # inputs no output needs: placeholders of the right shape
            if k not in by_name:
                shape = tuple(sizes.setdefault(s, 1) if isinstance(s, str) else s for s in t.data[k][0])
                by_name[k] = np.zeros((n_rows,) + shape, np.int64 if t.data[k][1] is not None else t.dtype)
        ws = self._workspace(n_rows, sizes)
        views = t.node_views(ws, *t.size_args(n_rows, sizes))
        for k, v in given.items():
            views[k][...] = v
        mask = np.array([k in given for k in t.nodes], np.uint8)
        self._run("nodes", list(t.inputs), [by_name[k] for k in t.inputs], n_rows, sizes, seed, False, mask=mask)
        return tuple(np.array(views[n], order="C") for n in names)   # copies out of the workspace

    def _needed_inputs(self, names, given):
        """The inputs that `names` depend on through nodes that are not given."""
        t = self.tables
        needed, stack, seen = [], list(names), set()
        while stack:
            k = stack.pop()
            if k in seen or k in given:
                continue
            seen.add(k)
            if k in t.nodes:
                stack += t.nodes[k][1]
            elif k in t.inputs:
                needed.append(k)
        return needed

    def loss(self, name=None, seed=None, **data):
        """The mean loss over the batch (float)."""
        name = self._loss_name(name)
        step = self.tables.steps[name]
        arrays, n_rows, sizes = self._arrays(step.data, data, ("loss", name))
        return float(self._run(step.value_plan, step.data, arrays, n_rows, sizes, seed, True, want_grad=False,
                               loss=name)[0])

    def grad(self, name=None, seed=None, **data):
        """(loss, {parameter name: gradient}) for a batch."""
        t = self.tables
        name = self._loss_name(name)
        step = t.steps[name]
        arrays, n_rows, sizes = self._arrays(step.data, data, ("grad", name))
        L = float(self._run(step.value_plan, step.data, arrays, n_rows, sizes, seed, True, loss=name)[0])
        return L, {p: self._grad[o:o + t.parameter_count(p)].reshape(s).copy()
                   for p, (o, s, *_r) in t.params.items() if p not in t.stats}

    def step(self, name=None, seed=None, **data):
        """One optimiser update of the loss's parameters; returns the loss before the update.

        Each array is checked for NaN/inf the first time `step` sees it (by identity)."""
        return self._step(self._loss_name(name), seed, data, False)

    def fit(self, epochs=None, batch_size=None, shuffle=None, validation=None, verbose=True,
            d_steps=None, comm=None, checkpoint=None, every=None, resume=None, patience=None, **data):
        """Mini-batch training over the arrays given by name; returns a History of per-epoch losses.

        With several losses (a GAN), each batch takes `d_steps` steps of the first
        loss, then one step of each other loss.

        `comm`: data-parallel training over an MPI communicator (mpi4py's COMM_WORLD, or any
        object with its Allreduce/Bcast/Get_rank/Get_size). Every rank passes the same arrays
        and the global `batch_size`; rank 0's parameters, optimiser state and generator are
        broadcast, each rank computes the gradient of its share of every global batch, one
        Allreduce per step sums them, and every rank applies the same update. Validation and
        progress come from rank 0 (docs/scaling.md).

        `checkpoint=PATH, every=K`: write PATH (atomically, from rank 0) every K batches (0:
        every epoch) and when interrupted: parameters, optimiser state, generators and the place in the data.
        `resume=PATH` continues from such a checkpoint as if never stopped. SIGINT finishes
        the batch, writes the checkpoint if asked, and raises KeyboardInterrupt.

        `validation`: a dict by name or a tuple in the order of the first loss's data; its loss
        is computed as `forward` computes (noise off) after every epoch. `patience=K`: stop when
        it has not improved for K epochs and keep the best epoch's parameters.
        """
        return fitting.fit(self, epochs=epochs, batch_size=batch_size, shuffle=shuffle, validation=validation,
                           verbose=verbose, d_steps=d_steps, comm=comm, checkpoint=checkpoint, every=every,
                           resume=resume, patience=patience, **data)

    def evaluate(self, batch_size=256, **data):
        """The losses and metrics of a data set, computed as `forward` computes them (noise
        off): {loss name: its mean, then per target "accuracy" (a class target: the arg-max of
        its logits; a `bce_logits` target: logits above 0 against targets above ½) or "rmse"
        (a real target)}. In batches of `batch_size` examples; an input may be "normal"."""
        t = self.tables
        batch_size = count(batch_size, "evaluate: batch_size")
        noise = [k for k, v in data.items() if isinstance(v, str)]
        for k in noise:
            if data[k] != "normal" or k not in t.data or t.data[k][2]:
                raise ValueError(f"{k!r}: expected an array, or \"normal\" for fresh noise in an input")
        names = [k for k in t.data if k in data and k not in noise]
        arrays, n_rows, sizes = checked_arrays(t, names, {k: data[k] for k in names}, "evaluate")
        arrays = dict(zip(names, arrays))
        lengths = {k: np.asarray(data[k]) for k in t.lengths if k in data}
        sums: dict = {}
        for lo in range(0, n_rows, batch_size):
            rows, n = slice(lo, lo + batch_size), min(batch_size, n_rows - lo)
            part = {k: a[rows] for k, a in arrays.items()} | {k: v[rows] for k, v in lengths.items()}
            part.update({k: self._rng.standard_normal((n,) + t.data[k][0]).astype(t.dtype) for k in noise})
            for name, step in t.steps.items():
                if all(k in part for k in step.data):
                    given = {k: part[k] for k in step.data} | {k: part[k] for k in lengths}
                    sums[name] = sums.get(name, 0.0) + self._eval_loss(name, given) * n
            for metric, prediction, target in t.metrics:
                if target in part:
                    inputs = {k: part[k] for k in t.inputs if k in part} | {k: part[k] for k in lengths}
                    value, weight = _metric(metric, self.forward(outputs=prediction, **inputs), part[target],
                                            _valid_steps(t, part, lengths, target))
                    total, seen = sums.get(metric, (0.0, 0))
                    sums[metric] = (total + value, seen + weight)
        out = {k: v / n_rows for k, v in sums.items() if not isinstance(v, tuple)}
        for metric, (total, seen) in ((k, v) for k, v in sums.items() if isinstance(v, tuple)):
            out[metric] = total / max(seen, 1) if metric.startswith("accuracy") else float(np.sqrt(total / max(seen, 1)))
        return out

    def _eval_loss(self, name, data):
        """Loss `name` as `forward` computes: noise off, running statistics."""
        step = self.tables.steps[name]
        arrays, n_rows, sizes = self._arrays(step.data, data, ("evaluate", name))
        return float(self._run(step.eval_plan or step.value_plan, step.data, arrays, n_rows, sizes, 0, False,
                               want_grad=False, loss=name)[0])

    def generate(self, steps, start=None, n=1, temperature=1.0, seed=None, stop=None, min_length=0):
        """Continue sequences of a language model (an input of symbols whose per-step class
        target is the next symbol): each step runs `forward` on the sequences so far and
        draws the next symbol from the last step's softmax at `temperature` (0: the most
        likely one). `start`: symbols to begin with — (L,) for `n` copies of one sequence,
        or (n, L) — by default one symbol 0 each; `stop`: a symbol that ends a sequence (it is
        not drawn before `min_length` symbols); `seed`: the draws' generator (default: the
        model's). Returns the symbols, (n, L + steps) int64 (fewer steps when every sequence
        stopped; a stopped sequence repeats `stop`)."""
        seq = self.tables.sequence
        if seq is None:
            raise TypeError(f"{self.tables.name} is not a sequence model to generate from: it needs an "
                            "input of symbols and a per-step class target of the same symbols")
        steps, V = count(steps, "generate: steps", minimum=0), seq["classes"]
        rng = self._rng if seed is None else np.random.default_rng(seed_value(seed, "generate: seed"))
        if temperature is None or not float(temperature) >= 0:
            raise ValueError(f"generate: temperature must be a number >= 0, got {temperature!r}")
        symbols = np.zeros((count(n, "generate: n"), 1), np.int64) if start is None else np.array(start, np.int64)
        if symbols.ndim == 1:
            symbols = np.tile(symbols, (count(n, "generate: n"), 1))
        if symbols.ndim != 2 or symbols.shape[1] == 0 or symbols.min() < 0 or symbols.max() >= V:
            raise ValueError(f"generate: start must be symbols in 0..{V - 1}, shaped (L,) or (n, L) with L >= 1")
        done = np.zeros(len(symbols), bool)           # (a start may hold `stop`: names start and end with '.')
        for _ in range(steps):
            x = np.eye(V, dtype=self.tables.dtype)[symbols] if seq["onehot"] else symbols
            logits = self.forward(outputs=seq["logits"], **{seq["input"]: x})[:, -1].astype(np.float64)
            if stop is not None and symbols.shape[1] < min_length + 1:
                logits[:, stop] = -np.inf
            if temperature == 0:
                nxt = np.argmax(logits, axis=1)
            else:
                p = np.exp((logits - logits.max(axis=1, keepdims=True)) / float(temperature))
                p /= p.sum(axis=1, keepdims=True)
                nxt = (p.cumsum(axis=1) > rng.random((len(p), 1))).argmax(axis=1)
            if stop is not None:
                nxt[done] = stop
                done |= nxt == stop
            symbols = np.concatenate([symbols, nxt[:, None]], axis=1)
            if stop is not None and done.all():
                break
        return symbols

    # -- persistence -------------------------------------------------------------------
    def _sync_host(self):
        """Bring the host copies of parameters and optimiser state up to date."""

    def _state_changed(self):
        """The host copies of parameters and optimiser state were replaced."""

    def _state_arrays(self):
        self._sync_host()
        return saving.state_arrays(self)

    def save(self, path):
        """Parameters, optimiser state and step counts by name, written atomically."""
        write_atomically(str(path), self._state_arrays())

    @classmethod
    def load(cls, path, seed=0, strict=True):
        """A model with the weights of `path` (a file `save` wrote), matched by parameter name
        and shape: comments and formatting changes of the model file do not matter, nor the
        dtype. `strict=False` loads the parameters that match and keeps the others' initial
        values (fine-tuning a changed model)."""
        with saving.open_saved(path) as f:
            m = cls(seed)
            saving.restore(m, f, path, strict=strict)
        m._state_changed()
        return m

    # -- PyTorch ------------------------------------------------------------------------
    def state_dict(self):
        """The parameters under PyTorch's names and layouts ({key: ndarray}; `torch.nn`'s
        Linear, Conv2d, RNN/LSTM/GRU, Embedding, LayerNorm, BatchNorm with its running
        statistics — docs/export.md): load it into the equivalent torch model with
        `net.load_state_dict({k: torch.from_numpy(v) ...})`."""
        self._sync_host()
        return to_torch({**self.params, **self.stats}, self.tables.torch_table)

    def load_torch(self, state_dict):
        """The parameters from a PyTorch `state_dict` of the equivalent torch model (tensors or
        arrays); a missing, extra or reshaped key is a one-line error naming it."""
        for name, value in from_torch(state_dict, self.tables.torch_table).items():
            (self.stats if name in self.tables.stats else self.params)[name] = value
        self._state_changed()

    # -- data-parallel training --------------------------------------------------------
    def _broadcast_state(self, comm):
        """Rank 0's parameters, optimiser state, step counts and generators to every rank:
        the replicas start equal, and shuffle and draw alike from then on."""
        import json
        t = self.tables
        self._sync_host()
        comm.Bcast(self.theta, root=0)
        for name in t.losses:
            comm.Bcast(self._state[name][0], root=0)
            comm.Bcast(self._state[name][1], root=0)
        ints = np.array([self._lcg] + [self._t[n] for n in t.losses], np.uint64)
        comm.Bcast(ints, root=0)
        self._lcg = int(ints[0])
        self._t = {n: int(v) for n, v in zip(t.losses, ints[1:])}
        rng = np.frombuffer(json.dumps(self._rng.bit_generator.state).encode().ljust(1024), np.uint8).copy()
        comm.Bcast(rng, root=0)
        self._rng.bit_generator.state = json.loads(rng.tobytes().decode())
        self._state_changed()
        self._local, self._summed = self._reduce_buffers()

    def _reduce_buffers(self):
        """The local and the summed `[gradient ‖ loss·share ‖ stop flag]` (N_PARAMS + 2):
        one Allreduce carries all three, and the update reads the sum in place (no copy)."""
        rows = aligned_rows(2, self.tables.n_params + 2, self.tables.dtype)
        return rows[0], rows[1]

    def _pack(self, local, share, value, stop):
        """Weight the local gradient and loss by this rank's share; 0 clears a rank without rows."""
        n = self.tables.n_params
        if share:
            local[:n] *= share
        else:
            local[:n] = 0.0                    # not 0·(last gradient): 0·inf would be NaN
        local[n] = value * share
        local[n + 1] = stop

    def _average_stats(self, comm):
        """Running statistics averaged over the ranks after a data-parallel step (each rank
        updated them with its own share of the batch): the replicas stay equal."""
        t = self.tables
        if not t.stats:
            return
        lo = min(t.params[name][0] for name in t.stats)
        mine = self.theta[lo:].copy()
        comm.Allreduce(mine, self.theta[lo:])
        self.theta[lo:] /= comm.Get_size()

    def _allreduce(self, comm, local, summed):
        """Sum over the ranks; (the global batch's mean loss, whether any rank was interrupted)."""
        n = self.tables.n_params
        comm.Allreduce(local, summed)
        return float(summed[n]), bool(summed[n + 1] > 0)


CACHE_LINE = 64


def aligned_rows(rows, n, dtype):
    """A (rows, n) array of zeros whose rows each start on a cache line's boundary: its rows
    are C-contiguous vectors, CACHE_LINE bytes apart or a multiple. The optimiser's update
    loop over four such vectors vectorises with 64-byte loads and stores, and where the
    vectors sat at 4-40 bytes past a boundary (numpy's allocation, rows of n numbers) each
    of those split across two cache lines: the update of the LSTM benchmark's 20,801
    parameters took 17-18 us, aligned 6.3-7.2."""
    itemsize = np.dtype(dtype).itemsize
    if CACHE_LINE % itemsize:
        return np.zeros((rows, n), dtype)          # no such numbers in a model: rows as they come
    per_line = CACHE_LINE // itemsize
    stride = -(-max(n, 1) // per_line) * per_line
    raw = np.zeros(rows * stride + per_line, dtype)
    skip = (-raw.ctypes.data % CACHE_LINE) // itemsize
    return raw[skip:skip + rows * stride].reshape(rows, stride)[:, :n]


def aligned_zeros(shape, dtype):
    """A C-contiguous array of zeros of `shape` that starts on a cache line (`aligned_rows`)."""
    shape = tuple(shape) if isinstance(shape, tuple) else (int(shape),)
    return aligned_rows(1, math.prod(shape), dtype)[0].reshape(shape)


def fresh_workspace(size, dtype):
    """A new workspace of `size` elements: zeros, or NaN where NNDSL_POISON_WORKSPACE is set.
    Tensors that are never needed at once share the workspace's memory (the plan's
    `liveness.py`), which is sound only because no kernel reads what its plan has not
    written before; the tests check that with NaN in every element a plan finds there."""
    ws = aligned_zeros(size, dtype)
    if os.environ.get("NNDSL_POISON_WORKSPACE"):
        ws[...] = np.nan
    return ws


def _valid_steps(tables, part, lengths, target):
    """A per-step target's (N, T) mask of the steps within each example's length, or None."""
    shape = tables.data[target][0]
    if not lengths or not shape or not isinstance(shape[0], str):
        return None
    for key, lens in lengths.items():
        size, _ = tables.masks[tables.lengths[key]]
        if size == shape[0]:
            return np.arange(part[target].shape[1])[None, :] < lens[:, None]
    return None


def _metric(kind, prediction, target, valid):
    """(sum, count) of a batch's metric: correct predictions, or squared errors."""
    if kind.startswith("accuracy"):
        if np.issubdtype(np.asarray(target).dtype, np.integer):
            hits = np.argmax(prediction, axis=-1) == target
        else:
            hits = (prediction > 0) == (target > 0.5)
        hits = hits if valid is None else hits[valid]
        return float(np.sum(hits)), int(np.size(hits))
    errors = (prediction - target) ** 2
    errors = errors if valid is None else errors[valid]
    return float(np.sum(errors)), int(np.size(errors))
