"""`nndsl build`: check, derive, lower and render a model into DIR/NAME.py."""
from __future__ import annotations

import hashlib
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import jinja2

from . import __version__
from .diagnostics import UsageError
from .frontend import memory
from .resources import templates_dir


@dataclass
class BuildResult:
    path: Path
    module_name: str
    source_hash: str
    timings: dict[str, float] = field(default_factory=dict)
    kernels: dict[str, list[str]] = field(default_factory=dict)   # kind -> kernel names
    compiled: dict[str, float] = field(default_factory=dict)      # kernel -> numba seconds
    ptx: list = field(default_factory=list)                       # --ptx: the files written


# Shared kernels live in this folder beside the modules that load them.
KERNEL_DIR = "nndsl_kernels"
_HELPERS = {"_tanh": (), "_sigmoid": ("_tanh",), "_exp": ("_pow2",), "_softplus": ("_exp",), "_pow2": (),
            "_draw_key": ("_mix",), "_uniform": ("_mix",), "_normal": ("_uniform",), "_mix": (), "_gemm": ()}


def _helpers_used(text: str) -> set[str]:
    """The scalar helpers a kernel's text calls, with the helpers they call."""
    used = {h for h in _HELPERS if f"{h}(" in text}
    while True:
        more = used | {d for h in used for d in _HELPERS[h]}
        if more == used:
            return used
        used = more


def source_hash(source: str, dtype: str, target: str) -> str:
    """Keys the generated file (and numba's cache) on source + compiler version + options."""
    text = f"{source}\0nndsl {__version__}\0dtype={dtype}\0target={target}"
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Rendered:
    """A module's text and the texts of the shared kernels it loads (name -> text)."""
    module: str
    kernels: dict[str, str]
    names: dict[str, list[str]] = field(default_factory=dict)   # kernel kind -> names


def render(model, dtype: str = "float32", target: str = "cpu", source_file: str | None = None,
           timings: dict | None = None, kernel_dir: str = KERNEL_DIR) -> Rendered:
    from .plan.codegen import generate
    if target not in ("cpu", "cuda"):
        raise UsageError(f"unknown target `{target}`; use --target cpu or --target cuda")
    if target == "cuda" and not cuda_available():
        raise UsageError('--target cuda needs numba-cuda and CuPy: pip install -e ".[cuda]"')
    timings = {} if timings is None else timings
    t0 = time.perf_counter()
    spec = generate(model, dtype)
    timings["sympy"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    env = _environment()
    if target == "cuda":                 # a second renderer of the same plan
        from .render.numba_cuda import render_cuda
        context = _context(spec, source_file or model.path, target)
        context["kernel_dir"] = kernel_dir
        text, kernels, names = render_cuda(spec, env, context, __version__)
        timings["render"] = time.perf_counter() - t0
        return Rendered(text, kernels, names)
    kernel_template = env.get_template("kernel.py.j2")
    kernels, names = {}, {}
    for name, k in spec.kernels.items():
        kernels[name] = kernel_template.render(version=__version__, k=k, dtype=dtype, uses=_helpers_used(k.text))
        names.setdefault(k.kind, []).append(name)
    call_name, kernels[call_name] = _render_named(env, "indirect.py.j2", "icall")
    compiler_name, kernels[compiler_name] = _render_named(env, "compiler.py.j2", "compile")
    entry_name, kernels[entry_name] = _render_entry(env, spec, call_name, compiler_name)
    names["entry"] = [entry_name]
    context = _context(spec, source_file or model.path, target)
    context.update(kernel_dir=kernel_dir, entry_name=entry_name, shared_names=[call_name, compiler_name])
    text = env.get_template("module.py.j2").render(**context)
    timings["render"] = time.perf_counter() - t0
    return Rendered(text, kernels, names)


def _render_entry(env, spec, call: str, compiler: str) -> tuple[str, str]:
    """The entry function's file, named by a hash of its text. Data arguments get canonical
    names (d0, d1, …), so models with the same kinds of kernels and data share it."""
    from dataclasses import replace
    # data tensors may be renamed away from reserved words (input `np` is tensor `np_2`)
    canonical = {spec.graph.values[d["name"]].name: f"d{i}" for i, d in enumerate(spec.data)}
    # a recurrence's step masks follow the data (`x_lengths=` makes them)
    canonical.update({m: f"d{len(spec.data) + i}" for i, m in enumerate(spec.masks)})
    branches = [replace(b, arrays=[canonical.get(a, a) for a in b.arrays]) for b in spec.plans.branches.values()]
    data_names = [f"d{i}" for i in range(len(spec.data) + len(spec.masks))]
    # arms whose kernels take the same arguments share a call site (a "form")
    forms: dict[tuple, int] = {}
    form_of = [forms.setdefault(b.roles(), len(forms)) for b in branches]
    quoted = lambda roles: "(" + ", ".join(f'"{r}"' for r in roles) + ")"    # noqa: E731
    return _render_named(env, "entry.py.j2", "entry", updates=spec.updates, call=call, compiler=compiler,
                         data_names=data_names,
                         data_args="".join(f"{d}, " for d in data_names),
                         arms=[(b.kernel, quoted(b.roles())) for b in branches], form_of=form_of,
                         form_list=[(f, ["a" if r == "row" else r for r in roles]) for roles, f in forms.items()])


def _render_named(env, template_name: str, prefix: str, **context) -> tuple[str, str]:
    """(name, text) of a shared file named `PREFIX_HASH`, the hash of its text."""
    template = env.get_template(template_name)
    digest = hashlib.sha256(template.render(name=prefix, version=__version__, **context).encode()).hexdigest()[:12]
    name = f"{prefix}_{digest}"
    return name, template.render(name=name, version=__version__, **context)


def render_helpers(dtype: str) -> str:
    """A kernel file with every scalar helper and no kernel (to test the helpers alone)."""
    return _environment().get_template("kernel.py.j2").render(
        version=__version__, k=None, dtype=dtype, uses=set(_HELPERS))


def cuda_available() -> bool:
    """numba-cuda (the `cuda` extra) is installed: `numba.cuda` and its NVVM for --ptx."""
    import importlib.util
    return importlib.util.find_spec("numba_cuda") is not None


def write_rendered(rendered: Rendered, dest: Path, kernel_dir: Path | None = None) -> Path:
    """Write the module to `dest` and each kernel it loads into `kernel_dir` (by default
    `nndsl_kernels/` beside it). A kernel file that exists already is left alone: its name
    is a hash of its text, and an untouched file keeps numba's cache of it valid."""
    kernel_dir = dest.parent / KERNEL_DIR if kernel_dir is None else kernel_dir
    kernel_dir.mkdir(parents=True, exist_ok=True)
    for name, text in rendered.kernels.items():
        path = kernel_dir / f"{name}.py"
        if not path.exists():
            _write_atomically(path, text)
    _write_atomically(dest, rendered.module)
    return dest


def build_file(path: str | os.PathLike, out_dir: str | os.PathLike = ".", dtype: str = "float32",
               target: str = "cpu", compile: bool = False, shared_kernels: bool = False,
               ptx: str | None = None) -> BuildResult:
    """Write OUT_DIR/NAME.py and its kernels; with `compile=True` also import it and compile;
    with `ptx` (cuda) also write every kernel's PTX for sm_90 there.
    `shared_kernels`: the kernels go to OUT_DIR/../nndsl_kernels, shared by every sibling
    folder (the per-source build folders of `nndsl train`)."""
    from .frontend import load_model
    if ptx is not None and target != "cuda":
        raise UsageError("--ptx needs --target cuda")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    model = load_model(path)
    memory.check_fits(model, dtype)        # refuse before numpy's allocator fails at Model()
    timings["check"] = time.perf_counter() - t0
    kernel_dir = "../" + KERNEL_DIR if shared_kernels else KERNEL_DIR
    rendered = render(model, dtype, target, os.path.basename(str(path)), timings, kernel_dir=kernel_dir)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create output directory {out}: {exc.strerror}") from None
    dest = write_rendered(rendered, out / f"{model.name}.py", out.parent / KERNEL_DIR if shared_kernels else None)
    result = BuildResult(dest, model.name, source_hash(model.source, dtype, target), timings,
                         kernels=rendered.names)
    if ptx is not None:
        from .render.numba_cuda import write_ptx
        t0 = time.perf_counter()
        result.ptx = write_ptx(dest.parent / KERNEL_DIR, list(rendered.kernels), ptx)
        timings["ptx"] = time.perf_counter() - t0
    if compile:
        t0 = time.perf_counter()
        result.compiled = warm_up(dest, model.name)
        timings["numba"] = time.perf_counter() - t0
    return result


def warm_up(path: Path, name: str) -> dict[str, float]:
    """Import the module and run forward and every step once on a tiny batch: numba compiles
    (or loads from its cache) everything a training run needs. Returns numba's seconds per
    function it compiled (kernels and the entry; loads from the cache are not compiles)."""
    import numpy as np
    from numba.core import event

    from .loader import import_module
    module = import_module(path, name)
    rng = np.random.default_rng(0)
    data = {}
    for key, (shape, classes, _) in module.DATA.items():
        shape = tuple(2 if isinstance(s, str) else s for s in shape)
        data[key] = rng.integers(0, classes, 2) if classes else rng.uniform(0, 1, (2,) + shape)
    m = module.Model(seed=0)
    with event.install_recorder("numba:compile") as rec:
        m.forward(**{k: v for k, v in data.items() if not module.DATA[k][2]})
        for loss, (_, _, names, *_) in module._KERNELS.items():
            m.step(loss, **{k: data[k] for k in names})
    return _exclusive_times(rec.buffer)


def _exclusive_times(buffer) -> dict[str, float]:
    """Seconds per compiled function, less the compiles it started (its callees)."""
    stack, out = [], {}
    for ts, ev in buffer:
        name = ev.data["dispatcher"].py_func.__name__
        if ev.is_start:
            stack.append([name, ts, 0.0])
            continue
        name, start, inner = stack.pop()
        out[name] = out.get(name, 0.0) + (ts - start) - inner
        if stack:
            stack[-1][2] += ts - start
    return out


def _write_atomically(dest: Path, text: str) -> None:
    # numba's cache is keyed on the file's path and mtime: rewrite only when the text changed,
    # so an unchanged rebuild keeps the compiled kernels warm.
    if dest.exists() and dest.read_text(encoding="utf-8", errors="replace") == text:
        return
    try:
        fd, tmp = tempfile.mkstemp(dir=dest.parent, suffix=".py.tmp")
    except OSError as exc:
        raise UsageError(f"cannot write {dest}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, user_file_mode())      # mkstemp makes 0600; give it the user's umask
        os.replace(tmp, dest)
    except OSError as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise UsageError(f"cannot write {dest}: {exc.strerror}") from None


def user_file_mode() -> int:
    """0666 less the process umask: the mode `open()` would give a new file."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def display_text(text: str) -> str:
    """User text (a file name) made safe for a comment or a docstring of the generated module:
    letters, digits and a few punctuation marks stay, everything else (newlines, quotes,
    backslashes, braces, control characters) becomes `?`, so it can end neither the comment
    nor the docstring, and holds no escape sequence."""
    return "".join(c if (c.isalnum() or c in " ._-+,()[]@=~/") and c.isprintable() else "?"
                   for c in text)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(templates_dir())),
                             keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    env.filters["pyshape"] = lambda s: "(" + ", ".join(repr(x) for x in s) + ("," if len(s) == 1 else "") + ")"
    env.filters["dict"] = lambda d: "{" + ", ".join(f"{k!r}: {v!r}" for k, v in d.items()) + "}"
    env.filters["pylist"] = lambda rs: "[" + ", ".join(f"[{a}, {b}]" for a, b in rs) + "]"
    return env


def _context(spec, source_file: str, target: str) -> dict:
    model = spec.model
    size_names = ["N"] + [s for s, _, _ in spec.free_sizes]
    train = model.train
    return dict(
        # the file name is user text: comments and docstrings get a sanitised form
        version=__version__, source_file=display_text(source_file), dtype=spec.dtype, target=target,
        source_hash=source_hash(model.source, spec.dtype, target),
        model=model, params=spec.params, n_params=spec.n_params, data=spec.data,
        free_sizes=spec.free_sizes, ws_size=spec.ws_size, forward=spec.forward,
        outputs=spec.outputs, losses=spec.losses,
        output_names=repr(list(model.outputs)), loss_names=repr([l.name for l in spec.losses]),
        data_names=[d["name"] for d in spec.data],
        forward_inputs=spec.forward_inputs,
        input_args="".join(f"{n}, " for n in spec.forward_inputs),
        inputs=[d.name for d in model.inputs], nodes=spec.nodes, node_info=spec.node_info,
        all_input_args="".join(f"{d.name}, " for d in model.inputs),
        size_args=", ".join(size_names), masks=spec.masks,
        # a free size that no array of the call fixes (an input no loss reads) is 1, as for the
        # placeholders of `forward` and the step masks
        size_call=", ".join(["n_rows"] + [f"sizes.get({s!r}, 1)" for s, _, _ in spec.free_sizes]),
        kernel_names=list(spec.kernels), output_views=spec.output_views,
        plans=list(spec.plans.plans.values()), width=spec.plans.width,
        branches=list(spec.plans.branches.values()), updates=spec.updates, has_draws=spec.has_draws,
        train=repr(dict(batch=train.batch, epochs=train.epochs, shuffle=train.shuffle,
                        clip_norm=train.clip_norm, seed=train.seed, d_steps=train.d_steps)),
    )
