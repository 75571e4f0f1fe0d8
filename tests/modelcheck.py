"""What the random-model tester (tests/test_random_models.py) checks of one model (issue 26).

`check_model(source)` builds a valid model and checks, each failure a `Finding` with its kind:

- `refused`: the checker or the build refuses a model the generator made valid;
- `crash`: an exception building, importing or running the module;
- `gradient`: a float64 parameter gradient that disagrees with central differences (at a
  random point, every parameter perturbed so that no bias sits at zero and no unit on a
  kink; with `NAME_lengths=` too for a free sequence length). A disagreement must repeat
  at a second random point: a point within ε of a kink is a convention, not a bug;
- `loss`: `loss` differs from `grad`'s loss, a non-finite loss, a step that is not finite
  or moves a parameter outside its loss's `wrt`;
- `forward`: `forward` not deterministic (noise is off there), or not finite;
- `float32`: the float32 module's loss and gradient far from float64's;
- `grad-print`: `nndsl grad` (text and LaTeX) fails, or a printed ∂L/∂P line evaluated
  with the module's values (every Σ summed, every Δ and definition substituted by its
  line) differs from the module's gradient;
- `cuda`: the CUDA module on numba's simulator differs from the CPU module.

`check_mutant(source)` runs `nndsl check` on an invalid model and requires one-line
`file:line:col: error:` diagnostics with the source line and a caret, exit 1 or 2, never a
traceback; a mutant that is still valid must build and take a gradient step.
"""
from __future__ import annotations

import contextlib
import io
import math
import re
import sys
import tempfile
import traceback
from pathlib import Path

import numpy as np
import sympy as sp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from conftest import compile_source, random_data  # noqa: E402
from gradcheck import direction_errors  # noqa: E402

from nndsl.calculus import functions as fn  # noqa: E402
from nndsl.calculus.notation import indicator  # noqa: E402
from nndsl.diagnostics import CompileError, render_all  # noqa: E402


class Finding(AssertionError):
    def __init__(self, kind: str, message: str):
        super().__init__(f"[{kind}] {message}")
        self.kind, self.message = kind, message


class _Skip(Exception):
    """A printed line the evaluator does not sum (a scatter's window form, a noise)."""


def _crash(what: str):
    return Finding("crash", f"{what}:\n{traceback.format_exc(limit=-6)}")


# ------------------------------------------------------------------ the module's side
def loss_data(module, name: str, data: dict) -> dict:
    """The arrays a loss takes (and the lengths of its sequences)."""
    kernels = getattr(module, "_KERNELS", None)
    names = set(kernels[name][2]) if kernels else set(data)
    lengths = getattr(module, "LENGTHS", {})
    masks = getattr(module, "MASKS", {})
    keep = {k for k in data if k in names}
    keep |= {k for k, m in lengths.items() if k in data and masks[m][1] in names}
    return {k: data[k] for k in keep}


def batch(module, n: int = 3, seed: int = 0, lengths: bool = False) -> dict:
    data = random_data(module, n, seed)
    if lengths:
        rng = np.random.default_rng(seed + 7)
        for key in getattr(module, "LENGTHS", {}):
            data[key] = rng.integers(1, 4, n)          # free sizes are 3 in random_data
            data[key][0] = 3
    return data


def perturbed(module, seed: int):
    """A Model at a random point: every parameter moved, so biases are not zero (running
    statistics, after the parameters in theta, keep their values: a variance stays > 0)."""
    m = module.Model(seed=1)
    rng = np.random.default_rng(seed)
    stats = {k: v.copy() for k, v in getattr(m, "stats", {}).items()}
    m.theta[:] = m.theta + rng.normal(0.0, 0.4, m.theta.shape)
    for k, v in stats.items():
        m.stats[k] = v
    return m


def gradient_errors(m, data: dict, loss: str, noise_seed: int = 0, eps: float = 1e-6, rtol: float = 1e-4,
                    atol: float = 1e-7, directions: int = 2) -> list[str]:
    """∂L/∂p·v against (L(p + εv) − L(p − εv)) / 2ε for every parameter p."""
    L, grads = m.grad(name=loss, seed=noise_seed, **data)
    if not np.isfinite(L):
        raise Finding("loss", f"loss {loss!r} is not finite at the test point: {L}")
    L2 = m.loss(name=loss, seed=noise_seed, **data)
    if not L2 == pytest_approx(L):
        raise Finding("loss", f"loss {loss!r}: loss() = {L2!r} but grad() gives {L!r}")
    if set(grads) != set(m.params):
        raise Finding("gradient", f"grad() keys {sorted(grads)} are not the parameters {sorted(m.params)}")
    return direction_errors(m, grads, data, loss, noise_seed, eps, rtol, atol, directions)


def pytest_approx(x, rel=1e-10):
    class _Approx:
        def __eq__(self, other):
            return other == x or abs(other - x) <= rel * max(abs(x), 1e-300)
    return _Approx()


# ------------------------------------------------------------------ nndsl grad, evaluated
_FUNCS = {
    "exp": math.exp, "log": math.log, "tanh": math.tanh, "sin": math.sin, "cos": math.cos,
    "sqrt": math.sqrt, "sigmoid": lambda x: 1 / (1 + math.exp(-x)) if x > -700 else 0.0,
    "step": lambda x: 1.0 if x > 0 else 0.0, "sign": lambda x: (x > 0) - (x < 0), "absolute": abs,
    "maximum": lambda a, b: a if a >= b else b, "minimum": lambda a, b: a if a <= b else b,
    "relu": lambda x: x if x > 0 else 0.0, "elu": lambda x: x if x > 0 else math.expm1(x),
    "softplus": lambda x: max(x, 0.0) + math.log1p(math.exp(-abs(x))),
    "leaky_relu": lambda x, a=0.01: x if x > 0 else a * x,
    "ge": lambda a, b: 1.0 if a >= b else 0.0, "eq": lambda a, b: 1.0 if a == b else 0.0,
}


class FormulaEval:
    """Evaluates `nndsl grad`'s display expressions with the module's numbers: node values,
    parameters and data from arrays (a read outside an array is 0: zero padding, h[n,−1]),
    every defined quantity (e, p, Δh, a_h, a recurrent state) by its own line."""

    def __init__(self, lines: dict, arrays: dict, sizes: dict, steps: dict, notes=()):
        self.notes = set(notes)     # labels a line states in words (a noise, an arg-max)
        self.lines = lines          # label -> (lhs indices, rhs)
        self.arrays = arrays        # label -> (array, shown axes)
        self.sizes = sizes          # N, T
        self.steps = steps          # label of a per-step line -> its number of steps
        self.memo: dict = {}

    def value(self, label: str, idx: tuple) -> float:
        key = (label, idx)
        if key in self.memo:
            return self.memo[key]
        if key in self.memo.setdefault("__busy", set()):
            raise _Skip(f"{label}{list(idx)} depends on itself")
        self.memo["__busy"].add(key)
        try:
            out = self._value(label, idx)
        finally:
            self.memo["__busy"].discard(key)
        self.memo[key] = out
        return out

    def _value(self, label, idx):
        arr = self.arrays.get(label)
        line = self.lines.get(label)
        if arr is not None and (line is None or len(idx) in (sum(arr[1]), arr[0].ndim)):
            a, shown = arr
            if len(idx) == a.ndim:               # every axis printed (a recurrence's h.W[k,d])
                full = tuple(idx)
            elif len(idx) == sum(shown):
                it = iter(idx)
                full = tuple(next(it) if keep else 0 for keep in shown)
            else:
                raise _Skip(f"{label} read with {len(idx)} indices")
            if any(i < 0 or i >= s for i, s in zip(full, a.shape)):
                return 0.0                                     # zero padding, h[n,−1]
            return float(a[full])
        if line is None:
            if label in self.notes:
                raise _Skip(f"{label} is stated in words")
            raise Finding("grad-print", f"`{label}` in a printed line is neither a node, a parameter, "
                                        f"an input nor defined by a line of the printout")
        lhs, rhs = line
        if len(lhs) != len(idx):
            raise _Skip(f"{label} read with {len(idx)} indices, defined with {len(lhs)}")
        env = {}
        for e, i in zip(lhs, idx):
            if isinstance(e, sp.Symbol):
                env[e.name] = i
            elif e.is_Integer:
                if int(e) != i:
                    return 0.0
            else:
                raise _Skip(f"{label} is defined in a window form")
        if label in self.steps and len(idx) >= 2 and "t" in env and not 0 <= env["t"] < self.steps[label]:
            return 0.0                           # the initial state, a Δ past the last step
        node = self.arrays.get(label[1:]) if label.startswith("Δ") else None
        if node is not None and len(idx) == sum(node[1]):
            shape = [n for n, keep in zip(node[0].shape, node[1]) if keep]
            if any(not 0 <= i < n for i, n in zip(idx, shape)):
                return 0.0                       # "a delta read outside its map is zero"
        return self(rhs, env)

    def __call__(self, e, env):
        if isinstance(e, sp.Sum):
            (var, lo, hi), rest = e.limits[0], e.limits[1:]
            inner = sp.Sum(e.function, *rest) if rest else e.function
            lo, hi = round(self(lo, env)), round(self(hi, env))
            return math.fsum(self(inner, {**env, var.name: v}) for v in range(lo, hi + 1))
        if isinstance(e, sp.Indexed):
            return self.value(str(e.base.label), tuple(round(self(i, env)) for i in e.indices))
        if isinstance(e, sp.Symbol):
            if e.name in env:
                return env[e.name]
            if e.name in self.sizes:
                return self.sizes[e.name]
            if e.is_integer:                         # an index no Σ and no left-hand side binds
                raise Finding("grad-print", f"the index {e.name} is free in a printed line")
            return self.value(e.name, ())
        if e.is_Number:
            return float(e)
        if e.is_Add:
            return math.fsum(self(a, env) for a in e.args)
        if e.is_Mul:
            out = 1.0
            for a in e.args:
                out *= self(a, env)
            return out
        if e.is_Pow:
            b, x = self(e.base, env), self(e.exp, env)
            return b ** x
        if isinstance(e, indicator):
            return 1.0 if round(self(e.args[0], env)) == round(self(e.args[1], env)) else 0.0
        args = [self(a, env) for a in e.args]
        if hasattr(type(e), "op"):                            # where(lhs OP rhs, a, b)
            lhs, rhs, a, b = args
            ok = {"<": lhs < rhs, "<=": lhs <= rhs, ">": lhs > rhs, ">=": lhs >= rhs,
                  "==": lhs == rhs, "!=": lhs != rhs}[type(e).op]
            return a if ok else b
        name = type(e).__name__
        if name not in _FUNCS:
            raise _Skip(f"no numeric value for {name}")
        return _FUNCS[name](*args)


# the internal names test_gradprint.py keeps out of the examples' printouts, and a
# recurrence's step-major copy, a padded copy, an im2col matrix
# (not its `.z[`/`.a[`: a user's network may have a node `a`; `internal_names` checks every
# dotted name against the model's)
INTERNAL = re.compile(r"per_example|onehot|\blse\b|\.lse|\.noise|\.sum\d|#\d|1\.0·|\*\*|\bloss\."
                      r"|x_steps|\.pad\b|\.col\b|\.zc\b|§")


def internal_names(text: str, model_ir) -> None:
    """No internal name in the printout: every dotted name is a parameter or a node."""
    hit = INTERNAL.search(text)
    if hit:
        raise Finding("grad-print", f"an internal name in the printout: {hit.group()!r}\n{text}")
    known = {p.name for p in model_ir.params} | {n.name for n in model_ir.nodes}
    known |= {m.group(1) for m in re.finditer(r"^([^\[\n]+?)\[[^\]\n]*\] = ", text, re.M)}   # defined by a line
    formulas = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    for name in re.findall(r"[A-Za-z_][\w]*(?:\([\w, ]+\))?(?:\.[A-Za-z_]\w*)+", formulas):
        plain = re.sub(r"\([\w, ]+\)", "", name)
        if plain not in known and name not in known:
            raise Finding("grad-print", f"`{name}` in the printout is neither a parameter nor a node\n{text}")


def _shown(shape: tuple) -> list[bool]:
    """The axes `nndsl grad` prints: all for rank ≥ 3, else those of size ≠ 1."""
    return [True] * len(shape) if len(shape) >= 3 else [s != 1 for s in shape]


@contextlib.contextmanager
def batch_statistics(m, model_ir, inputs: dict):
    """`forward` normalises with the running statistics, a training step (whose gradient the
    printed lines describe) with the batch's: for the time being, each batchnorm layer's
    running statistics are its batch's, set layer by layer in order (a layer's input depends
    on the statistics of the layers before it)."""
    saved = {k: np.array(v) for k, v in m.stats.items()}
    try:
        for node in model_ir.nodes:
            if node.op == "batchnorm":
                source = node.inputs[0]
                x = np.asarray(inputs[source] if source in inputs else
                               m.forward(outputs=[source], **inputs), float)
                channel = 1 if x.ndim == 4 else x.ndim - 1      # an image's channel, or the feature
                over = tuple(a for a in range(x.ndim) if a != channel)
                m.stats[f"{node.name}.running_mean"] = x.mean(axis=over)
                m.stats[f"{node.name}.running_var"] = x.var(axis=over)
        yield
    finally:
        for k, v in saved.items():
            m.stats[k] = v


def check_printed_gradients(path: Path, model_ir, module, m, data: dict) -> dict:
    """`nndsl grad` prints (text and LaTeX), and every ∂L/∂P line it prints as sums,
    evaluated with this model's numbers, equals the module's gradient."""
    # what `nndsl grad` and `nndsl grad --latex` print (cli._cmd_grad: format_gradients, that
    # is format_blocks of model_formulas), and nndsl.gradients, from one derivation
    from nndsl.calculus.gradapi import Gradients
    from nndsl.calculus.gradprint import format_blocks
    from nndsl.calculus.gradview import model_formulas
    try:
        blocks = model_formulas(model_ir)
        printed = format_blocks(blocks, False)
        format_blocks(blocks, True)
        g = Gradients(blocks)                          # every line in text and in LaTeX
    except Exception:                                  # noqa: BLE001 -- a traceback is the finding
        raise _crash("nndsl grad") from None
    lines = lambda text: [x for x in text.splitlines() if x and not x.startswith("# ")]   # noqa: E731
    if lines(printed) != lines(g.text):
        raise Finding("grad-print", f"nndsl grad prints\n{printed}\nbut nndsl.gradients gives\n{g.text}")
    g.latex                                            # noqa: B018 -- renders
    internal_names(g.text, model_ir)
    stats = {"evaluated": 0, "skipped": 0}
    inputs = {k: v for k, v in data.items() if k in module.INPUTS}
    nodes = list(module.NODES)
    with batch_statistics(m, model_ir, inputs):
        values = dict(zip(nodes, m.forward(outputs=nodes, **inputs) if len(nodes) > 1 else
                          [m.forward(outputs=nodes, **inputs)]))
    sizes = {"N": len(next(iter(data.values())))}
    free = {s for d in module.DATA.values() for s in d[0] if isinstance(s, str)}
    sizes.update({s: 3 for s in free})
    from nndsl.calculus.gradnames import _network_calls
    calls = _network_calls(model_ir)

    def label(node):                 # gradnames.Names.node_label: `net(x).a` for a second call
        head, dot, rest = node.partition(".")
        base = head.split("#")[0]
        return f"{base}({calls[base][head]}).{rest}" if dot and len(calls.get(base, ())) > 1 else node

    arrays = {}
    for k, v in values.items():
        arrays[label(k)] = (v, _shown(v.shape))
    for k, v in data.items():
        if k in module.DATA:
            v = np.asarray(v, float)
            arrays[k] = (v, _shown(v.shape))
    for k, v in m.params.items():
        arrays[k] = (np.asarray(v, float), _shown(v.shape))
    # per-step lines of each recurrent node: their number of steps
    recurrent = {n.name: n for n in model_ir.nodes if n.op in ("rnn", "lstm", "gru")}
    shapes = {n.name: n.shape for n in model_ir.nodes} | {d.name: d.shape for d in model_ir.data}

    def steps_of(label):
        base = label.lstrip("Δ")
        for r in sorted(recurrent, key=len, reverse=True):
            if base == r or base.endswith("_" + r):
                t = shapes[recurrent[r].inputs[0]][0]
                return sizes.get(t, 3) if isinstance(t, str) else int(t)
        return None

    for loss_name, block in g.losses.items():
        want = m.grad(name=loss_name, **loss_data(module, loss_name, data))[1]
        lines = {}
        for x in block:
            if x.expr is None or x.kind in ("param", "zero"):
                continue
            lhs = tuple(x.lhs.indices) if isinstance(x.lhs, sp.Indexed) else ()
            if x.name in lines and lines[x.name] != (lhs, x.expr):
                raise Finding("grad-print", f"`{x.name}` is defined twice, differently:\n{block.text}")
            lines[x.name] = (lhs, x.expr)
        steps = {k: s for k in lines if (s := steps_of(k)) is not None}
        notes = {x.name for x in block if x.kind == "note" and x.expr is None}
        ev = FormulaEval(lines, {k: v for k, v in arrays.items()}, sizes, steps, notes)
        for pname, line in block.params.items():
            grad = np.asarray(want[pname], float)
            if line.kind == "zero":
                if np.any(grad != 0):
                    raise Finding("grad-print", f"{line.text}, but the module's gradient is not zero")
                stats["evaluated"] += 1
                continue
            lhs = tuple(line.lhs.indices) if isinstance(line.lhs, sp.Indexed) else ()
            got = np.zeros(grad.shape)
            try:
                for pos in np.ndindex(grad.shape):
                    shown = [i for i, keep in zip(pos, _shown(grad.shape)) if keep]
                    shown = list(pos) if len(lhs) == grad.ndim else shown
                    env = {}
                    for e, i in zip(lhs, shown):
                        if isinstance(e, sp.Symbol):
                            env[e.name] = i
                    got[pos] = ev(line.expr, env)
            except _Skip as why:
                stats["skipped"] += 1
                stats.setdefault("why", []).append(f"{pname}: {why}")
                continue
            except (OverflowError, ValueError, ZeroDivisionError):
                stats["skipped"] += 1
                continue
            scale = max(float(np.max(np.abs(grad))), 1e-12) if grad.size else 1.0
            if not np.allclose(got, grad, rtol=1e-6, atol=1e-12 + 1e-8 * scale):
                raise Finding("grad-print", f"loss {loss_name}: the printed line\n  {line.text}\n"
                                            f"evaluates to {got.ravel()[:6]} but the module's gradient is "
                                            f"{grad.ravel()[:6]}")
            stats["evaluated"] += 1
    return stats


# ------------------------------------------------------------------ one model
def check_model(source: str, name: str = "model", *, float32: bool = True, formulas: bool = True,
                cuda: bool = False, steps: bool = True, workdir: Path | None = None) -> dict:
    """Every check of one valid model; raises a Finding. Returns what was checked."""
    from nndsl.frontend import load_source
    report = {"checks": []}
    try:
        model_ir = load_source(source, f"{name}.nn")
    except CompileError as exc:
        raise Finding("refused", render_all(exc.diagnostics, source, f"{name}.nn")) from None
    try:
        module = compile_source(source)
    except CompileError as exc:
        raise Finding("refused", "build: " + render_all(exc.diagnostics, source, f"{name}.nn")) from None
    except Exception:                            # noqa: BLE001
        raise _crash("build and import") from None
    has_lengths = bool(getattr(module, "LENGTHS", {}))
    noisy = any(n.op in ("dropout", "gaussian_noise", "mask_noise", "sample_normal") for n in model_ir.nodes)

    # gradients against central differences (every loss; with lengths too)
    try:
        for lengths in ([False, True] if has_lengths else [False]):
            data = batch(module, lengths=lengths)
            for loss in module.LOSSES:
                d = loss_data(module, loss, data)
                errors = gradient_errors(perturbed(module, 11), d, loss)
                if errors and gradient_errors(perturbed(module, 12), d, loss):
                    raise Finding("gradient", "\n".join(errors) + (" (with lengths)" if lengths else ""))
                if errors:
                    report["kink-retries"] = report.get("kink-retries", 0) + 1
        report["checks"].append("gradient")

        # forward: deterministic (noise off) and finite
        data = batch(module)
        m = perturbed(module, 11)
        inputs = {k: v for k, v in data.items() if k in module.INPUTS}
        # noise is off in forward, but for sample_normal(..., sample=true): the same seed
        sampled = any(n.op == "sample_normal" and n.attrs.get("sample") for n in model_ir.nodes)
        if sampled:
            inputs["seed"] = 5
        a, b = m.forward(**inputs), m.forward(**inputs)
        a, b = (a if isinstance(a, tuple) else (a,)), (b if isinstance(b, tuple) else (b,))
        if not all(np.array_equal(x, y) for x, y in zip(a, b)):
            raise Finding("forward", "forward is not deterministic")
        nodes = list(module.NODES)
        every = m.forward(outputs=nodes, **inputs)
        inputs.pop("seed", None)
        every = every if isinstance(every, tuple) else (every,)
        if not all(np.all(np.isfinite(x)) for x in every):
            raise Finding("forward", "forward gives non-finite values")
        n = len(next(iter(data.values())))
        for node, x in zip(nodes, every):             # free sizes are 3 in the batch
            want = (n,) + tuple(3 if isinstance(d, str) else d for d in module.NODES[node][0])
            if x.shape != want:
                raise Finding("forward", f"forward gives node {node!r} the shape {x.shape}, not {want}")
        report["checks"].append("forward")

        # steps: finite, and only the loss's `wrt` parameters move
        wrt = {l.name: set(l.wrt) for l in model_ir.losses}
        for loss in module.LOSSES if steps else ():
            m = perturbed(module, 11)
            m.lr[loss] = 1e-4                # the update runs, and a steep random point does not diverge
            before = {k: v.copy() for k, v in m.params.items()}
            d = loss_data(module, loss, data)
            for _ in range(2):
                L = m.step(name=loss, **d)
                if not np.isfinite(L):
                    raise Finding("loss", f"step of {loss!r} gave a non-finite loss {L}")
            moved = [k for k in before if not np.array_equal(before[k], m.params[k]) and k not in wrt[loss]]
            if moved:
                raise Finding("loss", f"a step of {loss!r} moved {moved}, outside its wrt {sorted(wrt[loss])}")
        report["checks"] += ["steps"] if steps else []
    except Finding:
        raise
    except Exception:                            # noqa: BLE001
        raise _crash("running the module") from None

    if float32:
        try:
            m32mod = compile_source(source, "float32")
        except Exception:                        # noqa: BLE001
            raise _crash("float32 build") from None
        m64 = perturbed(module, 11)
        m32 = m32mod.Model(seed=1)
        m32.theta[:] = m64.theta
        data = batch(module)
        for loss in module.LOSSES:
            d = loss_data(module, loss, data)
            L64, g64 = m64.grad(name=loss, **d)
            L32, g32 = m32.grad(name=loss, **d)
            if not abs(L32 - L64) <= 1e-4 * abs(L64) + 1e-5:
                raise Finding("float32", f"loss {loss!r}: float32 {L32!r}, float64 {L64!r}")
            f64 = np.concatenate([np.ravel(g64[k]) for k in sorted(g64)])
            f32 = np.concatenate([np.ravel(g32[k]) for k in sorted(g64)]).astype(float)
            if not np.linalg.norm(f32 - f64) <= 2e-3 * np.linalg.norm(f64) + 1e-5:
                raise Finding("float32", f"loss {loss!r}: gradient relative error "
                                         f"{np.linalg.norm(f32 - f64) / max(np.linalg.norm(f64), 1e-30):.3g}")
        report["checks"].append("float32")

    if formulas:
        with tempfile.TemporaryDirectory() if workdir is None else contextlib.nullcontext(workdir) as tmp:
            path = Path(tmp) / f"{name}.nn"
            path.write_text(source)
            try:
                m = perturbed(module, 11)
                data = batch(module)
                if noisy:
                    check_printed_gradients_text_only(path)     # through the command line
                    report["formulas"] = "printed (noise: not evaluated)"
                else:
                    report["formulas"] = check_printed_gradients(path, model_ir, module, m, data)
            except Finding:
                raise
            except Exception:                    # noqa: BLE001
                raise _crash("nndsl grad") from None
        report["checks"].append("grad-print")

    if cuda:
        from test_cuda import _worker          # the suite's simulator server (one per test worker)
        try:
            r = _worker("auto", source, f"random_{name}")
        except AssertionError as exc:
            raise Finding("cuda", f"the CUDA module on the simulator failed: {exc}") from None
        if r["mode"] == "stochastic":          # its own noise: its own central difference
            first = module.LOSSES[0]
            d = loss_data(module, first, batch(module, n=4))
            m = module.Model(seed=0)
            varies = m.loss(first, seed=7, **d) != m.loss(first, seed=8, **d)    # noise the loss reads
            if not (r["directional"] < 1e-5 and r["reproducible"] and r["varies"] == varies):
                raise Finding("cuda", f"the CUDA module's gradient or noise on the simulator: {r}")
        else:
            bad = {k: r[k] for k in ("loss", "grad", "steps", "params", "forward", "node", "lengths")
                   if r.get(k, 0.0) > 1e-8}
            if bad or not r.get("untouched", True):
                raise Finding("cuda", f"the CUDA module on the simulator differs from the CPU module: {r}")
        report["checks"].append("cuda")
    return report


def check_printed_gradients_text_only(path: Path) -> None:
    from nndsl.cli import main
    for args in (["grad", str(path)], ["grad", str(path), "--latex"]):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(args)
        if code != 0:
            raise Finding("grad-print", f"nndsl {' '.join(args)} exited {code}: {err.getvalue()[-2000:]}")


# ------------------------------------------------------------------ one mutant
_DIAG = re.compile(r"^(?P<path>.+?):(?P<line>\d+):(?P<col>\d+): error: \S.*$")


def check_mutant(source: str, name: str = "mutant", workdir: Path | None = None) -> str:
    """`nndsl check` on a mutated model: located one-line diagnostics, or a valid model that
    builds. Returns "diagnostic" or "valid"; raises a Finding."""
    from nndsl.cli import main
    with tempfile.TemporaryDirectory() if workdir is None else contextlib.nullcontext(workdir) as tmp:
        path = Path(tmp) / f"{name}.nn"
        path.write_text(source)
        out, err = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main(["check", str(path)])
        except BaseException:                    # noqa: BLE001 -- a traceback is the finding
            raise _crash("nndsl check") from None
        text = err.getvalue()
        if "Traceback" in text or "Traceback" in out.getvalue():
            raise Finding("crash", f"nndsl check printed a traceback:\n{text}")
        if code == 0:
            try:
                module = compile_source(source)
                m = module.Model(seed=0)
                data = batch(module)
                for loss in module.LOSSES:
                    L = m.step(name=loss, **loss_data(module, loss, data))
                    if not np.isfinite(L):
                        raise Finding("loss", f"the valid mutant's step gave {L}")
            except Finding:
                raise
            except CompileError as exc:
                raise Finding("refused", "checks, but the build refuses it: " +
                              render_all(exc.diagnostics, source, path.name)) from None
            except Exception:                    # noqa: BLE001
                raise _crash("building a valid mutant") from None
            return "valid"
        if code not in (1, 2):
            raise Finding("diagnostic", f"nndsl check exited {code}:\n{text}")
        lines = text.rstrip("\n").splitlines()
        if code == 2:
            if len(lines) != 1 or not lines[0].startswith("nndsl: error: "):
                raise Finding("diagnostic", f"a usage error is not one line:\n{text}")
            return "diagnostic"
        first = _DIAG.match(lines[0]) if lines else None
        if first is None or first.group("path") != str(path):
            raise Finding("diagnostic", f"the first line is not `{path}:LINE:COL: error: ...`:\n{text}")
        line_no = int(first.group("line"))
        src_lines = source.splitlines()
        if not 1 <= line_no <= len(src_lines) + 1:
            raise Finding("diagnostic", f"line {line_no} is outside the file:\n{text}")
        if line_no <= len(src_lines) and (len(lines) < 3 or not re.match(r"^\s*\d+ \| ", lines[1])
                                          or not re.match(r"^\s*\^+$", lines[2])):
            raise Finding("diagnostic", f"no source line and caret under the message:\n{text}")
        if not re.match(r"^\d+ errors? in ", lines[-1]):
            raise Finding("diagnostic", f"no closing count line:\n{text}")
        return "diagnostic"
