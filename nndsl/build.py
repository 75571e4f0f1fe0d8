"""`nndsl build`: check, derive, lower and render a model into DIR/NAME.py."""
from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

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


def source_hash(source: str, dtype: str, target: str) -> str:
    """Keys the generated file (and numba's cache) on source + compiler version + options."""
    text = f"{source}\0nndsl {__version__}\0dtype={dtype}\0target={target}"
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Rendered:
    """A module's text and the texts of the shared files it loads (name -> text; a name with a
    slash is a file of the runtime package)."""
    module: str
    kernels: dict[str, str]
    names: dict[str, list[str]] = field(default_factory=dict)   # kernel kind -> names


def render(model, dtype: str = "float32", target: str = "cpu", source_file: str | None = None,
           timings: dict | None = None, kernel_dir: str = KERNEL_DIR) -> Rendered:
    """check → plan → render: the module for `target` and the files it loads."""
    from .export.torch_weights import torch_table
    from .frontend.roles import metrics, sequence_model
    from .plan.module_plan import module_plan
    from .render import TARGETS, renderer
    from .render.module import environment, render_module, runtime_files
    if target not in TARGETS:
        raise UsageError(f"unknown target `{target}`; use --target {' or --target '.join(TARGETS)}")
    target_renderer = renderer(target)
    if not target_renderer.available():
        raise UsageError(f'--target {target} needs numba-cuda and CuPy: pip install -e ".[{target}]"')
    timings = {} if timings is None else timings
    t0 = time.perf_counter()
    plan = module_plan(model, dtype)
    timings["sympy"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    env = environment(templates_dir())
    files, names, target_context = target_renderer.render(plan, env, __version__)
    runtime, runtime_texts = runtime_files()
    text = render_module(env, plan, target_renderer, target_context, list(files), kernel_dir, runtime,
                         display_text(source_file or model.path), source_hash(model.source, dtype, target),
                         target, __version__, dict(torch_table=torch_table(model), metrics=tuple(metrics(model)),
                                                   sequence=sequence_model(model)))
    files.update({f"{runtime}/{name}": t for name, t in runtime_texts.items()})
    timings["render"] = time.perf_counter() - t0
    return Rendered(text, files, names)


def render_helpers(dtype: str) -> str:
    """A kernel file with every scalar helper and no kernel (to test the helpers alone)."""
    from .render.module import environment
    from .render.numba_cpu import helpers_file
    return helpers_file(environment(templates_dir()), __version__, dtype)


def write_rendered(rendered: Rendered, dest: Path, kernel_dir: Path | None = None) -> Path:
    """Write the module to `dest` and each kernel it loads into `kernel_dir` (by default
    `nndsl_kernels/` beside it). A kernel file that exists already is left alone: its name
    is a hash of its text, and an untouched file keeps numba's cache of it valid."""
    kernel_dir = dest.parent / KERNEL_DIR if kernel_dir is None else kernel_dir
    kernel_dir.mkdir(parents=True, exist_ok=True)
    for name, text in rendered.kernels.items():
        path = kernel_dir / (name if "/" in name else f"{name}.py")
        if not path.exists():
            path.parent.mkdir(exist_ok=True)
            _write_atomically(path, text)
    _write_atomically(dest, rendered.module)
    return dest


@functools.lru_cache(maxsize=None)
def generator_fingerprint() -> str:
    """A hash of every file that shapes what a build writes: the package's Python, its
    templates and its grammar (so a build folder is never reused by a changed nndsl, whatever
    its version says)."""
    from .resources import grammar_path
    package = Path(__file__).resolve().parent
    files = sorted(package.rglob("*.py")) + sorted(templates_dir().glob("*.j2")) + [grammar_path()]
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.relative_to(f.parents[1]).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return digest.hexdigest()


def _build_key(digest: str, path) -> str:
    """What a build's files depend on besides nndsl itself: the source and options (their
    `source_hash`, `digest`) and the source file's name (the module's header says it)."""
    return hashlib.sha256(f"{digest}\0{os.path.basename(str(path))}".encode()).hexdigest()


def _stamp_path(out: Path, key: str) -> Path:
    return out / f".nndsl-build-{key[:16]}.json"


def _reused(out: Path, key: str, kernel_dir: Path) -> BuildResult | None:
    """The result of the build that wrote OUT from the same source, options and nndsl (its
    stamp), if every file it wrote is still there; else None."""
    try:
        stamp = json.loads(_stamp_path(out, key).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(stamp, dict) or stamp.get("key") != key or stamp.get("generator") != generator_fingerprint():
        return None
    dest = out / f"{stamp['module']}.py"
    if not dest.exists() or not all((kernel_dir / f).exists() for f in stamp["files"]):
        return None
    return BuildResult(dest, stamp["module"], stamp["source_hash"], {}, kernels=stamp["kernels"])


def _write_stamp(out: Path, key: str, result: BuildResult, rendered: Rendered) -> None:
    stamp = dict(key=key, generator=generator_fingerprint(), module=result.module_name, source_hash=result.source_hash,
                 files=[name if "/" in name else f"{name}.py" for name in rendered.kernels], kernels=result.kernels)
    _write_atomically(_stamp_path(out, key), json.dumps(stamp))


def build_file(path: str | os.PathLike, out_dir: str | os.PathLike = ".", dtype: str = "float32",
               target: str = "cpu", compile: bool = False, shared_kernels: bool = False,
               ptx: str | None = None, reuse: bool = False) -> BuildResult:
    """Write OUT_DIR/NAME.py and its kernels; with `compile=True` also import it and compile;
    with `ptx` (cuda) also write every kernel's PTX for sm_90 there.
    `shared_kernels`: the kernels go to OUT_DIR/../nndsl_kernels, shared by every sibling
    folder (the per-source build folders of `nndsl train`).
    `reuse`: where a build of the same source with the same options and the same nndsl wrote
    OUT_DIR (its stamp there) and its files are all still there, return that build's result
    and write nothing (`nndsl train`: 0.7 s of sympy and rendering saved per run)."""
    from .frontend import load_model, read_source
    if ptx is not None and target != "cuda":
        raise UsageError("--ptx needs --target cuda")
    out = Path(out_dir)
    kernels_at = out.parent / KERNEL_DIR if shared_kernels else out / KERNEL_DIR
    if reuse and not compile and ptx is None:
        kept = _reused(out, _build_key(source_hash(read_source(path), dtype, target), path), kernels_at)
        if kept is not None:
            return kept
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    model = load_model(path)
    memory.check_fits(model, dtype)        # refuse before numpy's allocator fails at Model()
    timings["check"] = time.perf_counter() - t0
    kernel_dir = "../" + KERNEL_DIR if shared_kernels else KERNEL_DIR
    rendered = render(model, dtype, target, os.path.basename(str(path)), timings, kernel_dir=kernel_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create output directory {out}: {exc.strerror}") from None
    dest = write_rendered(rendered, out / f"{model.name}.py", kernels_at)
    result = BuildResult(dest, model.name, source_hash(model.source, dtype, target), timings,
                         kernels=rendered.names)
    _write_stamp(out, _build_key(result.source_hash, path), result, rendered)
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
        for loss, step in module.STEPS.items():
            m.step(loss, **{k: data[k] for k in step.data})
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


