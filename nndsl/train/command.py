"""`nndsl train`: build a model, bind a data set to its inputs, train, evaluate, save."""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ..diagnostics import UsageError
from ..loader import import_module
from .splits import split


def build_and_import(path, out_dir=None, dtype="float32", compile=False, target="cpu"):
    """Build `path` (into `out_dir`, or a per-source cache folder) and import the module;
    with `compile`, also compile every kernel a training run needs into numba's cache."""
    from ..build import build_file, source_hash
    from ..frontend import read_source
    shared = out_dir is None
    if shared:      # one folder per source, one kernel folder for all: models share kernels
        key = source_hash(read_source(path), dtype, target)[:16]
        out_dir = Path(tempfile.gettempdir()) / "nndsl-build" / key
    result = build_file(path, out_dir, dtype=dtype, target=target, shared_kernels=shared,
                        compile=compile and target == "cpu", reuse=True)
    return import_module(result.path, result.module_name), result


def bind(module, x: np.ndarray, y: np.ndarray | None, notes: list | None = None) -> dict:
    """The data set's arrays under the model's input names.

    The first input takes the features (reshaped to its per-example shape; class indices for
    a `class(V)` input), the first target the labels; any other input without data gets fresh
    standard-normal noise per batch (`"normal"`, e.g. a GAN's z). What was read differently
    from how the data came (one-hot rows as class indices, labels of shape (N, 1)) is said in
    `notes`.
    """
    notes = [] if notes is None else notes
    inputs = [n for n, (_, _, is_target) in module.DATA.items() if not is_target]
    targets = [n for n, (_, _, is_target) in module.DATA.items() if is_target]
    first_shape, first_classes, _ = module.DATA[inputs[0]]
    if first_classes is not None:                 # class indices (an embedding's input)
        data = {inputs[0]: class_indices(x, first_shape, first_classes, inputs[0], "input", notes)}
    else:
        data = {inputs[0]: _reshape(x, first_shape, inputs[0])}
    for name in inputs[1:]:
        data[name] = "normal"
    if targets:
        if y is None:
            raise UsageError(f"the model needs target `{targets[0]}`, but the data set has no labels")
        shape, classes, _ = module.DATA[targets[0]]
        if classes is not None:
            data[targets[0]] = class_indices(y, shape, classes, targets[0], "target", notes)
        else:
            data[targets[0]] = _reshape(y.astype(np.float64), shape, targets[0])
    return data


def class_indices(a: np.ndarray, shape, classes: int, name: str, what: str, notes: list) -> np.ndarray:
    """The data as the class indices a `class(V)` input or target takes, `(N,)` or `(N, T)`:
    integers (or whole numbers stored as reals) as they are, with a trailing axis of 1
    dropped (labels of shape (N, 1)); one-hot rows (the `names` set's letters) as the index
    of their 1. Anything else is a usage error saying what the model needs."""
    decl = f"{what} `{name}` is class({classes})"
    need = (f"give integer class labels 0..{classes - 1} of shape (N,)" if not shape else
            f"give integer class indices 0..{classes - 1} of shape (N, {', '.join(map(str, shape))})")
    per_example = int(np.prod(a.shape[1:])) if a.ndim > 1 else 1
    fixed = int(np.prod([d for d in shape if not isinstance(d, str)]))
    free = any(isinstance(d, str) for d in shape)
    whole = a.dtype.kind in "iub" or bool(np.all(a == np.round(a)))
    binary = a.size > 0 and bool(np.isin(a, (0, 1)).all())
    rows = a.reshape((a.shape[0], -1, classes)) if a.ndim > 1 and per_example % classes == 0 else None
    onehot = binary and rows is not None and bool((rows.sum(axis=2) == 1).all())
    fits = per_example == fixed or (free and per_example % fixed == 0)
    if onehot and (not fits or classes > 2):
        a = rows.argmax(axis=2)
        notes.append(f"one-hot rows of {classes} read as the class indices of {what} `{name}`")
    elif not whole:
        sample = a.reshape(-1)[np.flatnonzero(a.reshape(-1) != np.round(a.reshape(-1)))[0]]
        raise UsageError(f"{decl}, but the data set's {'labels' if what == 'target' else 'features'} "
                         f"are real numbers (such as {sample:g}): {need}, or one-hot rows of {classes}")
    elif not fits:
        raise UsageError(f"{decl}, but the data set has {per_example} values per example "
                         f"(shape {_dims(a.shape[1:])}): {need}, or one-hot rows of {classes}")
    elif a.ndim == len(shape) + 2 and a.shape[-1] == 1:
        notes.append(f"labels of shape (N, {', '.join(map(str, a.shape[1:]))}) read as the class "
                     f"labels of {what} `{name}`, shape (N{''.join(', ' + str(d) for d in a.shape[1:-1])})")
    a = _reshape(a, shape, name) if shape or a.ndim > 1 else a
    a = a.astype(np.int64)
    if a.size and (a.min() < 0 or a.max() >= classes):
        raise UsageError(f"{decl}, but the data set has {'labels' if what == 'target' else 'indices'} "
                         f"{a.min()}..{a.max()}: {need}")
    return a


def _dims(shape) -> str:
    """`12 × 27`, `(T, 30)` as a user reads a shape: `[T, 30]`."""
    return " × ".join(map(str, shape)) if shape else "scalar"


def reshape_note(module, ds, bound) -> str | None:
    """`digits: 64 features per example reshaped to img[1, 8, 8]` when the first input's
    shape (as `bound` to the data: a free T takes its length) is not the data set's own
    (images fed to a CNN, rows read as a sequence), else None."""
    inputs = [n for n, (_, _, is_target) in module.DATA.items() if not is_target]
    shape = tuple(bound[inputs[0]].shape[1:])
    if shape == tuple(ds.x_train.shape[1:]) or module.DATA[inputs[0]][1] is not None:
        return None                # (class indices: `bind` says how it read them)
    have = ds.x_train.shape[1:]
    what = f"{have[0]} features" if len(have) == 1 else "examples of shape " + "×".join(map(str, have))
    # (N, H, W) arrays of an .npz and the flat features of digits/mnist alike
    return f"{ds.name}: {what} per example reshaped to {inputs[0]}[{', '.join(map(str, shape))}]"


def _reshape(a: np.ndarray, shape, name: str) -> np.ndarray:
    fixed = [s for s in shape if not isinstance(s, str)]
    per_example = int(np.prod(a.shape[1:])) if a.ndim > 1 else 1
    if all(not isinstance(s, str) for s in shape):
        if int(np.prod(shape)) != per_example:
            have = f" ({_dims(a.shape[1:])})" if a.ndim > 2 else ""
            raise UsageError(f"`{name}[{', '.join(map(str, shape))}]` takes {int(np.prod(shape))} values per "
                             f"example, the data set has {per_example}{have}")
        return a.reshape((a.shape[0],) + tuple(shape))
    step = max(int(np.prod(fixed)), 1)
    free = per_example // step
    if free * step != per_example:
        have = f" ({_dims(a.shape[1:])})" if a.ndim > 2 else ""
        raise UsageError(f"`{name}[{', '.join(map(str, shape))}]` takes {step} values per step, but the data "
                         f"set has {per_example}{have} per example, not a whole number of steps of {step}"
                         + (f": is the last axis {a.shape[-1]}?" if a.ndim > 2 else ""))
    return a.reshape((a.shape[0],) + tuple(free if isinstance(s, str) else s for s in shape))


def noise_filled(module, data: dict, rng) -> dict:
    """Replace "normal" placeholders by arrays of standard-normal noise."""
    n = next(len(v) for v in data.values() if not isinstance(v, str))
    return {k: rng.standard_normal((n,) + tuple(module.DATA[k][0])) if isinstance(v, str) else v
            for k, v in data.items()}


def report(m, ds, data: dict, split: str = "test") -> str:
    """One line of `Model.evaluate` on a split: each metric (accuracy in %, RMSE in the
    targets' units when `train` standardised them), then each loss."""
    values = m.evaluate(**data)
    metrics, losses = [], []
    for name, v in values.items():
        if name.startswith("accuracy"):
            metrics.append(f"{name} {v:.2%}")
        elif name.startswith("rmse"):
            shown = name.replace("rmse", "RMSE", 1)
            metrics.append(f"{shown} {v * ds.y_std:.4g} (standardised {v:.4f})" if "targets" in ds.standardised
                           else f"{shown} {v:.4g}")
        else:
            losses.append(f"loss {name} {v:.4f}" if len(m.tables.losses) > 1 else f"loss {v:.4f}")
    return f"{split} " + ", ".join(metrics + losses)


def validation_split(data: dict, fraction: float, seed: int, labels) -> tuple[dict, dict | None]:
    """(train, validation): `fraction` of the training rows held out, seeded (stratified by
    class labels when there are some); fraction 0: no validation."""
    if fraction == 0:
        return data, None
    n = next(len(v) for v in data.values() if not isinstance(v, str))
    if n < 2:
        raise UsageError(f"--val-fraction {fraction}: {n} training example(s) cannot spare a validation split")
    keep, val = split(n, seed, fraction, labels=labels)
    part = lambda rows: {k: v if isinstance(v, str) else v[rows] for k, v in data.items()}   # noqa: E731
    return part(keep), part(val)


def _class_labels(module, data: dict):
    """The first target's labels when it is a class(K) target of one label per example."""
    targets = [k for k, (shape, classes, is_target) in module.DATA.items() if is_target]
    if not targets or module.DATA[targets[0]][1] is None or targets[0] not in data:
        return None
    labels = data[targets[0]]
    return labels if labels.ndim == 1 else None


def train_command(args) -> int:
    from . import workers
    if args.every and not (args.checkpoint or args.resume):
        raise UsageError("--every K needs --checkpoint DIR (where to write every K batches)")
    if args.resume and not (Path(args.resume) / "checkpoint.npz").exists():
        raise UsageError(f"--resume {args.resume}: no checkpoint.npz there")   # before K ranks start
    if args.workers and args.workers > 1 and workers.launched_size() <= 1:
        return workers.launch(args.argv, args.workers)
    comm = workers.world()
    with workers.aborting(comm):
        return _train(args, comm)


def _model(module, args, target):
    """The module's Model for this run: the CPU's with its threads, the GPU's with its TF32
    choice (a machine without a GPU is the user's to know about: one line, no traceback)."""
    if target == "cpu":
        return module.Model(seed=args.seed, threads=getattr(args, "threads", "auto"))
    try:
        return module.Model(seed=args.seed, tf32=getattr(args, "tf32", False))
    except RuntimeError as exc:             # no GPU, or no CuPy: CudaModel says which
        raise UsageError(f"--target {target}: {exc}") from None


def _train(args, comm) -> int:
    from ..frontend import load_model, memory
    target = getattr(args, "target", "cpu")
    if getattr(args, "tf32", False) and target != "cuda":
        raise UsageError("--tf32 chooses the GPU's GEMMs: it needs --target cuda")
    if target != "cpu" and getattr(args, "threads", "auto") not in ("auto", 1):
        raise UsageError(f"--threads {args.threads} is the CPU module's: a --target {target} step runs on the GPU")
    from .datasets import load_dataset
    rank = comm.Get_rank() if comm is not None else 0
    say = print if rank == 0 else (lambda *a, **k: None)        # one voice: rank 0
    model_ir = load_model(args.file)
    memory.check_fits(model_ir, args.dtype, args.batch_size)
    inputs = [d.name for d in model_ir.data if not d.is_target]
    targets = [d.name for d in model_ir.data if d.is_target]
    out_dir = Path(args.out) if args.out else None
    t0 = time.perf_counter()
    # rank 0 first: it loads the data, writes the module and compiles its kernels (on all the
    # cores, the others wait); the others then read the files and load the kernels from
    # numba's cache instead of each compiling the same ones
    for turn in ((0, 1) if comm is not None else (0,)):
        if (rank == 0) == (turn == 0):
            ds = load_dataset(args.data, seed=0, standardize=getattr(args, "standardize", False),
                              x_name=inputs[0] if inputs else None, y_name=targets[0] if targets else None)
            module, result = build_and_import(args.file, out_dir, args.dtype,
                                              compile=comm is not None and rank == 0, target=target)
        if comm is not None:
            comm.Barrier()
    m = _model(module, args, target)
    if getattr(args, "lr", None) is not None:
        for name in list(m.lr):
            m.lr[name] = args.lr
    rng = np.random.default_rng(args.seed)
    notes: list = []
    train = bind(module, ds.x_train, ds.y_train, notes)
    # the validation rows come out of the training split (early stopping and the per-epoch
    # `val` watch them); the test split is evaluated once, at the end
    train, val = validation_split(train, args.val_fraction, args.seed, _class_labels(module, train))
    test = noise_filled(module, bind(module, ds.x_test, ds.y_test), rng)
    first = module.STEPS[module.LOSSES[0]].data
    val = noise_filled(module, val, rng) if val is not None and all(k in val for k in first) else None
    if args.patience is not None and val is None:
        raise UsageError(f"--patience {args.patience} watches the validation loss: it needs --val-fraction above 0")
    n_train = next(len(v) for v in train.values() if not isinstance(v, str))
    workers = f" on {comm.Get_size()} workers" if comm is not None else ""
    say(f"{model_ir.name}: {sum(p.size for p in m.params.values()):,} parameters; "
        f"{ds.name}: {n_train} train / {ds.n_train - n_train} validation / {ds.n_test} test examples"
        + (f" ({' and '.join(ds.standardised)} standardised)" if ds.standardised else "") + workers)
    note = reshape_note(module, ds, train)
    for line in notes + ([note] if note else []):
        say(f"{ds.name}: {line}" if not line.startswith(ds.name + ":") else line)
    checkpoint = Path(args.checkpoint or args.resume) / "checkpoint.npz" if (args.checkpoint or args.resume) else None
    resume = Path(args.resume) / "checkpoint.npz" if args.resume else None
    if resume is not None:
        say(f"resuming from {resume}")
    try:
        history = m.fit(epochs=args.epochs, batch_size=args.batch_size, verbose=not args.quiet,
                        validation={k: val[k] for k in first} if val is not None else None,
                        patience=args.patience, comm=comm, checkpoint=checkpoint, every=args.every,
                        resume=resume, **train)
    except ValueError as exc:
        # a checkpoint that is not this model's names its file; the rest is about the data
        # (the class is the module's runtime copy's: matched by name)
        if type(exc).__name__ == "SavedFileError":
            raise UsageError(str(exc)) from None
        raise UsageError(f"{ds.name}: {exc}") from None
    except KeyboardInterrupt:
        if rank != 0:
            return 130                 # every rank stopped at the same batch; rank 0 speaks
        if checkpoint is not None:
            say(f"continue with the same command and --resume {checkpoint.parent}")
        raise
    seconds = time.perf_counter() - t0
    if rank != 0:
        return 0
    print(_trained(history, seconds))
    print(report(m, ds, test))
    if ds.name == "names" and m.tables.sequence is not None:    # a language model: show it
        from .sequences import sample_names
        print("samples: " + ", ".join(sample_names(m, seed=args.seed)))
    if out_dir is not None:
        weights = out_dir / f"{model_ir.name}.npz"
        m.save(weights)
        print(f"saved {weights} and {result.path}")
        from .pictures import have_matplotlib, save_pictures
        if not have_matplotlib():
            print("nndsl: note: no pictures: they need matplotlib (pip install 'nndsl[plots]')",
                  file=sys.stderr)
        for png in save_pictures(model_ir, module, m, ds, test, history, out_dir):
            print(f"wrote {png}")
    return 0


def _trained(history, seconds: float) -> str:
    last = len(history)                 # the history holds every epoch, a checkpoint's included
    ran = last - history.first_epoch + 1
    what = (f"trained epochs {history.first_epoch}–{last} ({last} in all, resumed)" if history.first_epoch > 1
            else f"trained {ran} epoch{'s' if ran != 1 else ''}")
    if history.stopped_epoch is not None:
        what += f", stopped early: kept epoch {history.best_epoch}'s parameters"
    elif history.best_epoch is not None and history.best_epoch != last:
        what += f", kept epoch {history.best_epoch}'s parameters (the best validation loss)"
    return f"{what} in {seconds:.1f} s (build and compile included)"
