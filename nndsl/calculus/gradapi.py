"""`nndsl.gradients(path)` and `nndsl.check(path)`: the CLI's `grad` and `check` as objects.

    >>> g = nndsl.gradients("examples/lecture_mlp.nn")
    >>> g["o.W"].text
    '∂L/∂o.W[k] = Σ_n e[n]·h[n,k]'
    >>> g["o.W"].expr            # the right-hand side as sympy (Indexed, Sum)
    >>> g                        # in Jupyter: every line rendered as LaTeX

Each line of `nndsl grad` is a `Gradient` (`.kind` is param, signal, delta,
define, note or zero); indexing by a parameter name gives its line, by a
defined name (`"e"`, `"p"`, `"Δh"`) the definition.  With several named
losses, `g.losses["d_loss"]["discriminator.h.W"]`.  A recurrent layer's lines are
its BPTT recursion: `g["h"].expr` is the state's update h[n,t,k] (a note in the
printout), `g["a_h"]`, `g["Δh"]`, `g["Δa_h"]` the pre-activation and the per-step
deltas, `g["h.U"].expr` the sum over the steps.
"""
from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

from ..diagnostics import CompileError, render_all
from .gradprint import check_param, format_formula
from .gradview import Formula, LossFormulas, model_formulas


@dataclass(frozen=True)
class Gradient:
    loss: str
    kind: str              # param | zero | signal | delta | define | note
    name: str              # the parameter ("h.W") or the defined quantity ("e", "p", "Δh")
    lhs: sp.Expr           # display access of the left-hand side
    expr: sp.Expr | None   # the right-hand side (sympy); for a note the formula it states
                           # (a recurrent state h[n,t,k]), else None
    text: str
    latex: str

    def _repr_latex_(self) -> str:
        return f"$\\displaystyle {self.latex}$" if self.kind != "note" else None

    def __str__(self) -> str:
        return self.text


class LossGradients:
    """The lines of one loss, indexable by parameter or defined name."""

    def __init__(self, block: LossFormulas):
        self.name = block.loss
        self.updates = list(block.updates)
        self.lines = [_gradient(block, f) for f in block.formulas]

    def __getitem__(self, key: str) -> Gradient:
        for g in self.lines:
            if g.name == key and g.kind in ("param", "zero"):
                return g
        for g in self.lines:                      # a state's update before a remark on it
            if g.name == key and g.expr is not None:
                return g
        for g in self.lines:
            if g.name == key:
                return g
        raise KeyError(f"{key!r}: no such parameter or defined quantity in loss {self.name!r}")

    def __iter__(self):
        return iter(self.lines)

    def __len__(self) -> int:
        return len(self.lines)

    @property
    def params(self) -> dict[str, Gradient]:
        return {g.name: g for g in self.lines if g.kind in ("param", "zero")}

    @property
    def text(self) -> str:
        return "\n".join(g.text for g in self.lines)

    @property
    def latex(self) -> str:
        return "\\begin{aligned}\n" + " \\\\\n".join(
            g.latex.replace(" = ", " &= ", 1) for g in self.lines if g.kind != "note") + "\n\\end{aligned}"

    def _repr_latex_(self) -> str:
        return f"$$ {self.latex} $$"

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"<gradients of loss {self.name}: {', '.join(self.params)}>"


class Gradients:
    """Every loss of a model; a single-loss model indexes like its loss."""

    def __init__(self, blocks: list[LossFormulas]):
        self.losses = {b.loss: LossGradients(b) for b in blocks}

    def __getitem__(self, key: str) -> Gradient:
        if len(self.losses) == 1:
            return next(iter(self.losses.values()))[key]
        hits = [lg[key] for lg in self.losses.values() if key in lg.params]
        if len(hits) == 1:
            return hits[0]
        raise KeyError(f"{key!r}: ambiguous or unknown; use .losses[NAME][{key!r}]")

    def __iter__(self):
        for lg in self.losses.values():
            yield from lg

    @property
    def text(self) -> str:
        if len(self.losses) == 1:
            return next(iter(self.losses.values())).text
        return "\n\n".join(f"# loss {name}\n{lg.text}" for name, lg in self.losses.items())

    @property
    def latex(self) -> str:
        return "\n".join(lg.latex for lg in self.losses.values())

    def _repr_latex_(self) -> str:
        return "\n".join(lg._repr_latex_() for lg in self.losses.values())

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return "\n".join(repr(lg) for lg in self.losses.values())


def _gradient(block: LossFormulas, f: Formula) -> Gradient:
    if f.kind in ("param", "zero"):
        name = _label(f.lhs)
    else:
        name = _label(f.lhs)
    return Gradient(block.loss, f.kind, name, f.lhs, f.rhs if f.rhs is not None else f.value,
                    format_formula(f, block, latex=False), format_formula(f, block, latex=True))


def _label(access) -> str:
    return str(access.base.label) if isinstance(access, sp.Indexed) else str(access)


class ModelSummary:
    """`nndsl check`'s summary of a checked model; `.model` is the checked IR."""

    def __init__(self, model):
        from ..frontend.summary import summarize
        self.model = model
        self.text = summarize(model)

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return self.text

    def _repr_pretty_(self, p, cycle) -> None:
        p.text(self.text)

    def _repr_html_(self) -> str:
        import html
        return f"<pre>{html.escape(self.text)}</pre>"


def load(path):
    """The checked model, or the CompileError the CLI would render (its text attached)."""
    from ..frontend import load_model, read_source
    try:
        return load_model(path)
    except CompileError as exc:
        source = getattr(exc, "source", None) or read_source(path)
        exc.source, exc.path = source, str(path)
        exc.rendered = render_all(exc.diagnostics, source, str(path))
        if hasattr(exc, "add_note"):
            exc.add_note(exc.rendered)
        raise


def gradients(path, param: str | None = None) -> Gradients:
    model = load(path)
    check_param(model, param)
    return Gradients(model_formulas(model, param))


def check(path) -> ModelSummary:
    return ModelSummary(load(path))
