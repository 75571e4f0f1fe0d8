"""Pictures for `nndsl train --out DIR`: what the trained model does, as PNG files.

`save_pictures` looks at the model's structure and writes what fits it:

| file                      | when                                                     | shows |
|---------------------------|----------------------------------------------------------|-------|
| `NAME_reconstructions.png`| a loss compares a node with the first input (autoencoder) | test images, their corruption (denoising models: the model's own `mask_noise` / `gaussian_noise` / `dropout` at the input, same `p`/`std`), reconstructions |
| `NAME_samples.png`        | a `sample_normal` latent (VAE): decoded z ~ N(0, I); an output that depends only on noise inputs (GAN generator): G(z), z ~ N(0, I) | a grid of generated images |
| `NAME_latent.png`         | a 2-D `sample_normal` latent                              | the test set's `mu` coloured by label, and the decoded latent plane |
| `NAME_filters.png`        | a `conv2d` layer reads the first input (a CNN)           | the first such layer's filters `W[f, c]` (one tile per filter and input channel, each scaled to its own range) |
| `NAME_feature_maps.png`   | the same                                                 | one test image and that layer's feature maps for it (after its activation) |
| `NAME_losses.png`         | always (after at least one epoch)                        | every named loss per epoch, and the held-out loss |

Images need an image-shaped first input: the data set's `image_shape` ((8, 8)
digits, (28, 28) mnist), or an input declared `x[H, W]` / `x[1, H, W]`.
Reconstructions given as logits (the loss is `bce_logits`) pass through a sigmoid.

Nodes that are not outputs (a VAE's logits `xr`, its decoder fed with a chosen
z) come from the generated module itself: `m.forward(outputs=..., z=Z)`.

matplotlib is the optional `plots` extra: without it `save_pictures` writes
nothing and returns [].  It draws through the Agg canvas directly (no pyplot,
no global backend switch).
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

__all__ = ["save_pictures"]

NOISE_OPS = ("mask_noise", "gaussian_noise", "dropout")
N_STRIP = 10          # images per row of the reconstruction picture
N_SAMPLES = 64        # generated images (an 8 x 8 grid)
GRID = 15             # the decoded latent plane: GRID x GRID images


def have_matplotlib() -> bool:
    """Whether the `plots` extra is installed (`nndsl train --out` says so once if not)."""
    import importlib.util
    return importlib.util.find_spec("matplotlib") is not None


def save_pictures(model_ir, module, m, ds, test, history, out_dir) -> list[Path]:
    """Write the pictures that fit the model into `out_dir`; return their paths."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
        from matplotlib.figure import Figure  # noqa: F401
    except ImportError:
        return []
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ctx = _Context(model_ir, module, m, ds, test)
    written = []
    for draw in (_reconstructions, _samples, _latent, _filters, _feature_maps, _losses):
        path = draw(ctx, out, history) if draw is _losses else draw(ctx, out)
        if path is not None:
            written.append(path)
    return written


# ------------------------------------------------------------------ structure
class _Context:
    """The model's structure, as far as pictures care, and a way to get any node's value."""

    def __init__(self, model_ir, module, m, ds, test):
        self.ir, self.module, self.m, self.ds = model_ir, module, m, ds
        self.name = model_ir.name
        self.nodes = {n.name: n for n in model_ir.nodes}
        self.first = model_ir.inputs[0].name
        # train.bind fills every later input with fresh N(0, I) noise (a GAN's z)
        self.noise_inputs = [d.name for d in model_ir.inputs[1:]]
        self.inputs = {k: np.asarray(v) for k, v in test.items() if k in module.DATA and not module.DATA[k][2]}
        self.image_shape = _image_shape(model_ir.inputs[0].shape, ds)
        x = self.inputs[self.first]
        lo, hi = float(np.min(x)), float(np.max(x))
        self.vrange = (lo, hi if hi > lo else lo + 1.0)
        self.labels = ds.y_test if ds.y_test is not None and ds.task == "classification" else None
        self.rng = np.random.default_rng(0)

    def ancestors(self, name: str) -> set:
        """`name` and every node it is computed from."""
        seen, todo = set(), [name]
        while todo:
            n = todo.pop()
            if n not in seen:
                seen.add(n)
                todo.extend(self.nodes[n].inputs)
        return seen

    def size(self, name: str):
        shape = self.nodes[name].shape
        return int(np.prod(shape)) if all(isinstance(s, int) for s in shape) else None

    def rows(self, n: int) -> dict:
        """n rows of every input (test rows, repeated if there are fewer), for calls of forward."""
        idx = np.arange(n) % len(self.inputs[self.first])
        return {k: v[idx] for k, v in self.inputs.items()}

    def shown(self, n: int) -> dict:
        """n test rows to show: one of each class in turn when there are labels (bundled
        sets may be sorted by class), else the first n."""
        total = len(self.inputs[self.first])
        if self.labels is not None and len(self.labels) == total:
            groups = [list(np.flatnonzero(self.labels == c)) for c in np.unique(self.labels)]
            idx = [g[i] for i in range(max(map(len, groups))) for g in groups if i < len(g)][:n]
        else:
            idx = list(range(min(n, total)))
        return {k: v[np.asarray(idx)] for k, v in self.inputs.items()}

    def values(self, names, inputs: dict, at: dict | None = None) -> list:
        """The values of nodes `names` for a batch of `inputs`, with the nodes in `at` given."""
        res = self.m.forward(seed=0, outputs=list(names), **inputs, **(at or {}))
        res = res if isinstance(res, tuple) else (res,)
        return [np.asarray(r, dtype=np.float64) for r in res]

    # -- what the model is --------------------------------------------------
    def reconstruction(self):
        """(node, is_logits) for a loss term comparing a node with the first input, or None."""
        want = self.size(self.first)
        if want is None:
            return None
        for loss in self.ir.losses:
            for term in loss.terms:
                if self.first not in term.args:
                    continue
                for a in term.args:
                    if isinstance(a, str) and a != self.first and a in self.nodes \
                            and self.size(a) == want and self.first in self.ancestors(a):
                        return a, term.fn == "bce_logits"
        return None

    def corruption(self, recon: str) -> list:
        """The noise layers applied straight to the first input on the way to `recon`, in order."""
        on_path = self.ancestors(recon)
        chain, cur = [], self.first
        while True:
            nxt = [n for n in self.ir.nodes if n.name in on_path and n.op in NOISE_OPS and n.inputs == (cur,)]
            if not nxt:
                return chain
            chain.append(nxt[0])
            cur = nxt[0].name

    def first_conv(self):
        """The first `conv2d` that reads the first input directly, or None."""
        return next((n for n in self.ir.nodes if n.op == "conv2d" and n.inputs[0] == self.first), None)

    def latent(self):
        return next((n for n in self.ir.nodes if n.op == "sample_normal"), None)

    def generator_hint(self) -> str:
        """What to declare for a samples picture: the last image-sized node computed from the
        noise alone (a GAN's generator output), as an `output`."""
        want = self.size(self.first)
        found = [n.name for n in self.ir.nodes if n.op not in ("input", "target") and want is not None
                 and self.size(n.name) == want and self.first not in (a := self.ancestors(n.name))
                 and any(z in a for z in self.noise_inputs)]
        found = [n for n in found if "." not in n] or found     # a top-level name: `fake = generator(z)`
        if found:
            return f"declare the generator's images as one: `output {found[-1]}`"
        return f"declare an output of {want} values computed from them (the generator's images)"

    def generated(self) -> list:
        """Image-sized outputs computed from noise inputs alone (a GAN's generator)."""
        want = self.size(self.first)
        found = []
        if want is None:
            return found
        for o in self.module.OUTPUTS:
            anc = self.ancestors(o)
            if self.first not in anc and any(z in anc for z in self.noise_inputs) and self.size(o) == want:
                found.append(o)
        return found


def _image_shape(decl, ds):
    if not all(isinstance(d, int) for d in decl):
        return None
    size = int(np.prod(decl))
    shape = getattr(ds, "image_shape", None)
    if shape and int(np.prod(shape)) == size:
        return tuple(shape)
    dims = [d for d in decl if d != 1]
    if len(decl) >= 2 and len(dims) == 2:
        return tuple(dims)
    return None


def _note(text: str) -> None:
    print(f"nndsl: note: {text}", file=sys.stderr)


# ------------------------------------------------------------------ pictures
def _reconstructions(ctx: _Context, out: Path):
    found = ctx.reconstruction()
    if found is None or ctx.image_shape is None:
        return None
    recon, logits = found
    x = ctx.shown(N_STRIP)
    n = len(x[ctx.first])
    rows = [("test input", x[ctx.first])]
    chain = ctx.corruption(recon)
    if chain:
        noisy = x[ctx.first].astype(np.float64)
        for node in chain:
            noisy = _corrupt(node, noisy, ctx.rng)
        what = ", ".join(_describe(node) for node in chain)
        values = ctx.values([recon], {**x, ctx.first: noisy})
        rows.append((f"corrupted: {what}", noisy))
        rows.append(("reconstruction of the corrupted input", values[0]))
    values = ctx.values([recon], x)
    rows.append(("reconstruction" + (" of the clean input" if chain else ""), values[0]))
    if logits:
        rows = rows[:1] + [(t, _sigmoid(v)) if t.startswith("reconstruction") else (t, v) for t, v in rows[1:]]
    fig = _figure(width=max(6.0, 0.75 * n), height=0.95 * len(rows) + 0.7)
    for i, (title, images) in enumerate(rows):
        ax = fig.add_subplot(len(rows), 1, i + 1)
        _show_grid(ax, images, ctx.image_shape, ncols=n, vrange=ctx.vrange)
        ax.set_title(title, fontsize=9, loc="left")
    fig.suptitle(f"{ctx.name}: test images and reconstructions"
                 + (" (sigmoid of the logits)" if logits else ""), fontsize=11)
    return _save(fig, out / f"{ctx.name}_reconstructions.png")


def _samples(ctx: _Context, out: Path):
    if ctx.image_shape is None:
        return None
    z_node = ctx.latent()
    found = ctx.reconstruction()
    if z_node is not None and found is not None:
        recon, logits = found
        z = ctx.rng.standard_normal((N_SAMPLES,) + tuple(z_node.shape))
        values = ctx.values([recon], ctx.rows(N_SAMPLES), at={z_node.name: z})
        images = _sigmoid(values[0]) if logits else values[0]
        title = f"{ctx.name}: decoded samples, z ~ N(0, I) in the latent `{z_node.name}`"
        if logits:
            title += "\n(Bernoulli means: sigmoid of the decoder's logits)"
    else:
        generated = ctx.generated()
        if not generated:
            if ctx.noise_inputs:
                _note(f"no samples picture: no output of {ctx.name} is an image computed from the noise "
                      f"{', '.join(ctx.noise_inputs)} alone; " + ctx.generator_hint())
            return None
        batch = ctx.rows(N_SAMPLES)
        for z in ctx.noise_inputs:
            batch[z] = ctx.rng.standard_normal((N_SAMPLES,) + tuple(ctx.module.DATA[z][0]))
        values = ctx.values(generated[:1], batch)
        images = values[0]
        noise = ", ".join(ctx.noise_inputs)
        title = f"{ctx.name}: generated samples `{generated[0]}`, {noise} ~ N(0, I)"
    side = int(math.ceil(math.sqrt(len(images))))
    fig = _figure(width=6.4, height=6.9)
    ax = fig.add_subplot(1, 1, 1)
    _show_grid(ax, images, ctx.image_shape, ncols=side, vrange=ctx.vrange)
    fig.suptitle(title, fontsize=10)
    return _save(fig, out / f"{ctx.name}_samples.png")


def _latent(ctx: _Context, out: Path):
    z_node = ctx.latent()
    if z_node is None or tuple(z_node.shape) != (2,):
        return None
    mu_name = z_node.inputs[0]
    values = ctx.values([mu_name], ctx.inputs)
    mu = values[0].reshape(-1, 2)
    found = ctx.reconstruction()
    plane = None
    if found is not None and ctx.image_shape is not None:
        from scipy.special import ndtri  # scipy is a dependency of nndsl
        q = ndtri(np.linspace(0.5 / GRID, 1 - 0.5 / GRID, GRID))   # N(0, 1) quantiles
        z = np.array([(a, b) for b in q[::-1] for a in q])           # rows: z2 high to low
        dec = ctx.values([found[0]], ctx.rows(len(z)), at={z_node.name: z})
        plane = (_sigmoid(dec[0]) if found[1] else dec[0], q)
    fig = _figure(width=12.0 if plane else 6.6, height=5.8)
    ax = fig.add_subplot(1, 2 if plane else 1, 1)
    if ctx.labels is not None:
        import matplotlib as mpl
        classes = np.unique(ctx.labels)
        cmap = mpl.colormaps["tab10" if len(classes) <= 10 else "tab20"]
        for i, c in enumerate(classes):
            pick = ctx.labels == c
            ax.scatter(mu[pick, 0], mu[pick, 1], s=7, alpha=0.75, color=cmap(i % cmap.N), label=str(c), linewidths=0)
        ax.legend(title="label", markerscale=2.5, fontsize=8, title_fontsize=8, loc="best", framealpha=0.8)
    else:
        ax.scatter(mu[:, 0], mu[:, 1], s=7, alpha=0.75, linewidths=0)
    ax.set_xlabel(f"{mu_name}[0]")
    ax.set_ylabel(f"{mu_name}[1]")
    ax.set_title(f"test set: the code `{mu_name}` (mean of q(z|x))", fontsize=10)
    ax.grid(alpha=0.3)
    if plane:
        images, q = plane
        ax2 = fig.add_subplot(1, 2, 2)
        _show_grid(ax2, images, ctx.image_shape, ncols=GRID, vrange=ctx.vrange, pad=0)
        ax2.set_title(f"decoded latent plane: `{z_node.name}` on a {GRID}x{GRID} grid of N(0, 1) quantiles "
                      f"({q[0]:.1f}..{q[-1]:.1f})", fontsize=10)
        ax2.set_xlabel(f"{z_node.name}[0] →", fontsize=9)
        ax2.set_ylabel(f"{z_node.name}[1] →", fontsize=9)
    fig.suptitle(f"{ctx.name}: 2-D latent space", fontsize=11)
    return _save(fig, out / f"{ctx.name}_latent.png")


def _filters(ctx: _Context, out: Path):
    conv = ctx.first_conv()
    if conv is None:
        return None
    W = np.asarray(ctx.m.params[f"{conv.name}.W"], dtype=np.float64)      # (F, C, k, k)
    tiles = W.reshape((-1,) + W.shape[2:])
    # each filter on its own scale: the pattern matters, not the magnitude
    lo = tiles.min(axis=(1, 2), keepdims=True)
    hi = tiles.max(axis=(1, 2), keepdims=True)
    tiles = (tiles - lo) / np.where(hi > lo, hi - lo, 1.0)
    ncols = W.shape[1] if W.shape[1] > 1 else int(math.ceil(math.sqrt(len(tiles))))
    nrows = int(math.ceil(len(tiles) / ncols))
    fig = _figure(width=min(max(4.8, 1.0 + 0.8 * ncols), 9.0), height=min(1.4 + 0.8 * nrows, 9.4))
    ax = fig.add_subplot(1, 1, 1)
    _show_grid(ax, tiles, W.shape[2:], ncols=ncols, vrange=(0.0, 1.0))
    per = "one row per filter, one column per input channel" if W.shape[1] > 1 else "one tile per filter"
    fig.suptitle(f"{ctx.name}: {W.shape[0]} filters of `{conv.name}` "
                 f"({W.shape[2]}×{W.shape[3]})\n{per}; white = most positive", fontsize=9)
    return _save(fig, out / f"{ctx.name}_filters.png")


def _feature_maps(ctx: _Context, out: Path):
    conv = ctx.first_conv()
    if conv is None:
        return None
    batch = ctx.shown(1)
    maps = ctx.values([conv.name], batch)[0][0]                            # (F, H', W')
    image = np.asarray(batch[ctx.first], dtype=np.float64)[0]              # (C, H, W)
    ncols = int(math.ceil(math.sqrt(len(maps))))
    fig = _figure(width=9.0, height=4.6)
    ax_in = fig.add_subplot(1, 2, 1)
    _show_grid(ax_in, image[:1], image.shape[1:], ncols=1, vrange=ctx.vrange)
    label = f" (label {np.unique(ctx.labels)[0]})" if ctx.labels is not None else ""
    ax_in.set_title(f"input `{ctx.first}`{label}", fontsize=9)
    ax = fig.add_subplot(1, 2, 2)
    lo, hi = float(maps.min()), float(maps.max())
    _show_grid(ax, maps, maps.shape[1:], ncols=ncols, vrange=(lo, hi if hi > lo else lo + 1.0))
    act = conv.attrs.get("act", "identity")
    ax.set_title(f"`{conv.name}`: {len(maps)} feature maps {maps.shape[1]}×{maps.shape[2]} (after {act})",
                 fontsize=9)
    return _save(fig, out / f"{ctx.name}_feature_maps.png")


def _losses(ctx: _Context, out: Path, history):
    losses = getattr(history, "losses", None) or {ctx.module.LOSSES[0]: list(history)}
    n = max((len(v) for v in losses.values()), default=0)
    if n == 0:
        return None
    from matplotlib.ticker import MaxNLocator
    fig = _figure(width=7.0, height=4.4)
    ax = fig.add_subplot(1, 1, 1)
    marker = "o" if n <= 30 else None
    epochs = np.arange(1, n + 1)
    for name, values in losses.items():
        ax.plot(epochs[:len(values)], values, marker=marker, ms=4, label=f"{name} (training, mean over the epoch)")
    val = list(getattr(history, "val", []) or [])
    if val:
        first = next(iter(losses))
        ax.plot(epochs[:len(val)], val, marker=marker, ms=4, ls="--", color="k",
                label=f"{first} (held-out, after the epoch)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (mean per example)")
    ax.set_xlim(0.5, n + 0.5)
    if n <= 12:
        ax.set_xticks(epochs)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    ax.set_title(f"{ctx.name}: loss per epoch", fontsize=11)
    return _save(fig, out / f"{ctx.name}_losses.png")


# ------------------------------------------------------------------- helpers
def _corrupt(node, x, rng):
    if node.op == "mask_noise":
        return x * (rng.random(x.shape) >= float(node.attrs["p"]))
    if node.op == "gaussian_noise":
        return x + float(node.attrs["std"]) * rng.standard_normal(x.shape)
    p = float(node.attrs["p"])                                   # inverted dropout
    return x * (rng.random(x.shape) >= p) / (1.0 - p)


def _describe(node) -> str:
    if node.op == "gaussian_noise":
        return f"{node.op}(std={node.attrs['std']:g})"
    return f"{node.op}(p={node.attrs['p']:g})"


def _sigmoid(a):
    a = np.asarray(a, dtype=np.float64)
    return 0.5 * (1.0 + np.tanh(0.5 * a))


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=100)
    return path


def _show_grid(ax, images, shape, ncols: int, vrange, pad: int = 1) -> None:
    """Tile images (N, ...) of per-image `shape` into one picture with thin separators."""
    images = np.asarray(images, dtype=np.float64).reshape((-1,) + tuple(shape))
    scale = max(1, 24 // max(shape))           # small images (8 x 8) get thinner separators
    if scale > 1:
        images = images.repeat(scale, axis=1).repeat(scale, axis=2)
    n, (h, w) = len(images), images.shape[1:]
    nrows = int(math.ceil(n / ncols))
    canvas = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad), np.nan)
    for i, im in enumerate(images):
        r, c = divmod(i, ncols)
        canvas[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = im
    import matplotlib as mpl
    cmap = mpl.colormaps["gray"].with_extremes(bad="#8fa6bf")
    ax.imshow(np.ma.masked_invalid(canvas), cmap=cmap, vmin=vrange[0], vmax=vrange[1], interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
