"""`fit`: the one training loop of every target.

The loop — epochs, shuffling, mini-batches and each rank's share of them, the `d_steps`
schedule of several losses, fresh noise inputs, progress, validation, checkpoints, Ctrl-C,
the stop at a non-finite loss — is written once here. A target supplies four hooks:

- `model._batches(data, width, sizes)`: a source whose `load(rows, noise)` puts the rows of
  the data set (and the batch's noise inputs) where the target's step reads them;
- `model._fit_step(name, batch, first, global_rows, sizes, comm)`: one step of a loss on
  that batch: (a loss handle, whether any data-parallel rank was interrupted);
- `model._fit_losses(handles)`: the losses of handles, as floats (the CPU's handles are
  floats; a GPU's are read back from the device in one copy, so it returns them in groups);
- `model.FIT_READ_EVERY`: batches between two reads of the losses.
"""
import json
import math
import time

import numpy as np

from . import saving
from .checks import check_finite, checked_arrays, count
from .files import write_atomically
from .progress import catch_signals, progress, progress_done, restore_signals


class History(list):
    """Per-epoch mean training loss (of the first loss); `.losses` holds every named loss,
    `.val` the validation loss; with `patience`, `.best_epoch` the epoch whose parameters
    the model kept and `.stopped_epoch` the epoch early stopping ended (None: it did not);
    `.first_epoch` the epoch this call began with (after `resume`, the checkpoint's: the
    entries before it are the checkpoint's history)."""

    def __init__(self, losses):
        super().__init__()
        self.losses = {name: [] for name in losses}
        self.val = []
        self.best_epoch = None
        self.stopped_epoch = None
        self.first_epoch = 1


class EarlyStopping:
    """`fit(patience=K)`: stop when the validation loss has not improved for K epochs, and
    keep the parameters of the best epoch."""

    def __init__(self, patience):
        self.patience = patience
        self.best, self.best_epoch, self.theta, self.wait = math.inf, None, None, 0

    def epoch(self, model, epoch, val):
        """After an epoch with validation loss `val`: whether to stop now."""
        if val < self.best:
            model._sync_host()
            self.best, self.best_epoch, self.theta, self.wait = val, epoch, model.theta.copy(), 0
        else:
            self.wait += 1
        return self.wait >= self.patience

    def restore(self, model):
        """The best epoch's parameters back into the model."""
        if self.theta is not None:
            model._sync_host()
            model.theta[...] = self.theta
            model._state_changed()

    def state(self):
        return {"__best__": np.array([self.best, -1 if self.best_epoch is None else self.best_epoch, self.wait]),
                **({"__best_theta__": self.theta} if self.theta is not None else {})}

    def load(self, f):
        if "__best__" in f.files:
            best, epoch, wait = (float(v) for v in f["__best__"])
            self.best, self.best_epoch, self.wait = best, None if epoch < 0 else int(epoch), int(wait)
            self.theta = np.array(f["__best_theta__"]) if "__best_theta__" in f.files else None


def options(tables, epochs, batch_size, shuffle, d_steps, data):
    """`fit`'s options checked, defaults from the `train` statement; the inputs given as
    "normal" (fresh standard-normal noise every batch, a GAN's z) and the names of the
    arrays to take from `data`."""
    train = tables.train
    # epochs=0 is allowed: an untrained model and an empty History
    epochs = train["epochs"] if epochs is None else count(epochs, "fit: epochs", minimum=0)
    batch_size = train["batch"] if batch_size is None else count(batch_size, "fit: batch_size")
    shuffle = train["shuffle"] if shuffle is None else bool(shuffle)
    d_steps = train["d_steps"] if d_steps is None else count(d_steps, "fit: d_steps")
    noise = [k for k, v in data.items() if isinstance(v, str)]
    for k in noise:
        if data[k] != "normal" or k not in tables.data or tables.data[k][2]:
            raise ValueError(f"{k!r}: expected an array, or \"normal\" for fresh noise in an input")
    needed = sorted({n for step in tables.steps.values() for n in step.data}, key=list(tables.data).index)
    return epochs, batch_size, shuffle, d_steps, noise, [k for k in needed if k not in noise]


def validation_arrays(tables, validation):
    """`fit(validation=...)`: a dict by name, or a tuple of arrays in the order of the first
    loss's data; checked once, before the first epoch."""
    if validation is None:
        return None
    names = list(tables.steps[tables.losses[0]].data)
    if isinstance(validation, (tuple, list)):
        if len(validation) != len(names):
            raise ValueError(f"fit: validation as a tuple needs {len(names)} arrays in the order "
                             f"({', '.join(names)}), got {len(validation)}; or pass a dict by name")
        validation = dict(zip(names, validation))
    if not isinstance(validation, dict):
        raise TypeError(f"fit: validation must be a dict of arrays by name ({', '.join(names)}) "
                        f"or a tuple of them in that order, got {type(validation).__name__}")
    arrays, _, _ = checked_arrays(tables, names, validation, "fit: validation")
    for k, a in zip(names, arrays):
        check_finite(f"validation {k}", a)
    return dict(zip(names, arrays))


def schedule(tables, d_steps):
    """The losses one batch steps, in order: `d_steps` steps of the first of several losses
    (a GAN's discriminator), then one of each other."""
    first, *others = tables.losses
    return [first] * (d_steps if others else 1) + others


def steps_done(epoch, b, n_batches):
    """Batches done since the start of training (checkpoints every K of them)."""
    return (epoch - 1) * n_batches + b + 1


def fit(model, epochs=None, batch_size=None, shuffle=None, validation=None, verbose=True, d_steps=None,
        comm=None, checkpoint=None, every=None, resume=None, patience=None, **data):
    tables = model.tables
    epochs, batch_size, shuffle, d_steps, noise, given = options(tables, epochs, batch_size, shuffle,
                                                                 d_steps, data)
    every = count(every, "fit: every", minimum=0) if every else 0
    validation = validation_arrays(tables, validation)
    stopping = None
    if patience is not None:
        if validation is None:
            raise ValueError("fit: patience needs validation= (the loss it watches)")
        stopping = EarlyStopping(count(patience, "fit: patience"))
    arrays, n_rows, sizes = model._arrays(given, {k: v for k, v in data.items() if k not in noise}, "fit")
    for k, a in zip(given, arrays):
        check_finite(k, a)               # once here, not per step
    lengths = [k for k in tables.lengths if k in data]      # batched with the data they describe
    data = dict(zip(given, arrays), **{k: np.asarray(data[k], np.int64) for k in lengths})
    model._given_masks = {}
    rank, ranks = (comm.Get_rank(), comm.Get_size()) if comm is not None else (0, 1)
    verbose = verbose and rank == 0
    history, at = History(tables.losses), None
    if resume is not None:
        at = load_checkpoint(model, resume, history, stopping)
    if comm is not None:
        model._broadcast_state(comm)
    width = min(batch_size, n_rows)
    batches = model._batches(data, width, sizes)
    # noise is drawn for the whole global batch on every rank (the generators agree), so an
    # example's noise does not depend on the number of ranks
    noise_buffers = {k: np.empty((width,) + tables.data[k][0], tables.dtype) for k in noise}
    order_of_steps = schedule(tables, d_steps)
    # a cosine schedule spans the steps from the model's first to the end of this run
    n_batches = -(-n_rows // batch_size)
    if at:                   # a checkpoint at an epoch's last batch: the next epoch is the first to run
        history.first_epoch = at["epoch"] + (at["batch"] >= n_batches)
    remaining = max(0, (epochs - (at["epoch"] if at else 1) + 1) * n_batches - (at["batch"] if at else 0))
    for name in tables.losses:
        model._total[name] = model._t[name] + remaining * order_of_steps.count(name)
    model._interrupted = False
    previous = catch_signals(model)
    try:
        for epoch in range(at["epoch"] if at else 1, epochs + 1):
            if at:
                order, first_batch, sums, counts = at["order"], at["batch"], at["sums"], at["counts"]
                at = None
            else:
                order = model._rng.permutation(n_rows) if shuffle else np.arange(n_rows)
                first_batch, sums, counts = 0, {n: 0.0 for n in tables.losses}, {n: 0 for n in tables.losses}
            pending = []

            def read_losses():
                values = model._fit_losses([p[0] for p in pending])
                for (_, epoch_, b_, name, rows_), L in zip(pending, values):
                    if not math.isfinite(L):
                        raise FloatingPointError(
                            f"loss {name!r} became {L} at epoch {epoch_}, step {b_}; "
                            "the parameters keep their last finite values "
                            "(try a smaller learning rate or clip_norm)")
                    sums[name] += L * rows_
                    counts[name] += rows_
                pending.clear()

            start = time.perf_counter()
            for b in range(first_batch, n_batches):
                lo = b * batch_size
                rows = order[lo:lo + batch_size]
                # this rank's share of the global batch: rows [a, z) of it
                a, z = len(rows) * rank // ranks, len(rows) * (rank + 1) // ranks
                fresh = {k: model._rng.standard_normal(out=buf[:len(rows)], dtype=tables.dtype)[a:z]
                         for k, buf in noise_buffers.items()}
                batch = batches.load(rows[a:z], fresh)
                stop = False
                for name in order_of_steps:
                    handle, stopped = model._fit_step(name, batch, a, len(rows), sizes, comm)
                    stop = stop or stopped
                    pending.append((handle, epoch, b + 1, name, len(rows)))
                    if model.FIT_READ_EVERY == 1:
                        read_losses()          # losses at hand: stop at the first non-finite one
                # single process: the flag itself; data-parallel: summed in the last Allreduce,
                # so every rank stops after the same batch
                stop = stop if comm is not None else model._interrupted
                # every K batches, or (every=0) at the end of each epoch
                due = steps_done(epoch, b, n_batches) % every == 0 if every else b + 1 == n_batches
                saving_now = checkpoint is not None and rank == 0 and (stop or due)
                if (b + 1 - first_batch) % model.FIT_READ_EVERY == 0 or saving_now or stop or b + 1 == n_batches:
                    read_losses()
                    if verbose:
                        done = min(lo + batch_size, n_rows)
                        progress(epoch, epochs, done, n_rows, sums[tables.losses[0]] / max(counts[tables.losses[0]], 1),
                                 (done - first_batch * batch_size) / (time.perf_counter() - start + 1e-12))
                if saving_now:
                    position = dict(epoch=epoch, batch=b + 1, order=order, sums=sums, counts=counts)
                    save_checkpoint(model, checkpoint, position, history, stopping)
                if stop:
                    exc = KeyboardInterrupt(f"interrupted at epoch {epoch}, batch {b + 1}"
                                            + (f"; checkpoint {checkpoint}" if checkpoint is not None else ""))
                    exc.all_ranks = True       # every rank stops here together: no MPI_Abort needed
                    raise exc
            for name in tables.losses:
                history.losses[name].append(sums[name] / max(counts[name], 1))
            history.append(history.losses[tables.losses[0]][-1])
            line = " ".join(f"{n} {history.losses[n][-1]:.4f}" for n in tables.losses)
            stop = False
            if validation is not None and rank == 0:
                # as `forward` computes it: noise off
                history.val.append(model._eval_loss(tables.losses[0], validation))
                line += f" val {history.val[-1]:.4f}"
                stop = stopping is not None and stopping.epoch(model, epoch, history.val[-1])
            if stopping is not None and comm is not None:     # rank 0 decides for every rank
                flag = np.array([stop], np.int64)
                comm.Bcast(flag, root=0)
                stop = bool(flag[0])
            if verbose:
                progress_done(f"epoch {epoch}/{epochs}: {line}")
            if stop:
                history.stopped_epoch = epoch
                if verbose:
                    progress_done(f"early stop: no better validation loss for {stopping.patience} epochs; "
                                  f"keeping epoch {stopping.best_epoch}'s parameters (val {stopping.best:.4f})")
                break
        if stopping is not None:
            if rank == 0:
                stopping.restore(model)
            if comm is not None:                               # every replica keeps rank 0's best
                model._sync_host()
                comm.Bcast(model.theta, root=0)
                model._state_changed()
            history.best_epoch = stopping.best_epoch
    finally:
        restore_signals(previous)
    return history


# -- checkpoints: a saved model plus where training stands -------------------------------
def save_checkpoint(model, path, at, history, stopping=None):
    tables = model.tables
    state = model._state_arrays()
    if stopping is not None:
        state.update(stopping.state())
    state["__rng__"] = np.array(json.dumps(model._rng.bit_generator.state))
    state["__position__"] = np.array([at["epoch"], at["batch"]], np.int64)
    state["__order__"] = at["order"]
    state["__val__"] = np.array(history.val, np.float64)
    state["__clip_norm__"] = np.array(float(model.clip_norm))
    for name in tables.losses:
        state[f"sum:{name}"] = np.array(at["sums"][name], np.float64)
        state[f"count:{name}"] = np.array(at["counts"][name], np.int64)
        state[f"history:{name}"] = np.array(history.losses[name], np.float64)
        state[f"lr:{name}"] = np.array(float(model.lr[name]))
    write_atomically(str(path), state, make_folder=True)


def load_checkpoint(model, path, history, stopping=None):
    """Restores the model (and early stopping's best so far) from a checkpoint and fills
    `history` with its finished epochs; returns the place to continue from."""
    tables = model.tables
    with saving.open_saved(path) as f:
        if "__position__" not in f:
            raise saving.SavedFileError(f"{path}: a saved model, not a training checkpoint")
        if str(f["__model__"]) != tables.name:
            raise saving.SavedFileError(f"{path}: a checkpoint of model {str(f['__model__'])!r}, not of {tables.name!r}")
        saving.restore(model, f, path, strict=True)
        model._rng.bit_generator.state = json.loads(str(f["__rng__"]))
        model.clip_norm = float(f["__clip_norm__"])
        for name in tables.losses:
            model.lr[name] = float(f[f"lr:{name}"])
            history.losses[name][:] = [float(v) for v in f[f"history:{name}"]]
        history[:] = history.losses[tables.losses[0]]
        history.val[:] = [float(v) for v in f["__val__"]]
        if stopping is not None:
            stopping.load(f)
        epoch, batch = (int(v) for v in f["__position__"])
        at = dict(epoch=epoch, batch=batch, order=np.array(f["__order__"]),
                  sums={n: float(f[f"sum:{n}"]) for n in tables.losses},
                  counts={n: int(f[f"count:{n}"]) for n in tables.losses})
    model._state_changed()
    return at
