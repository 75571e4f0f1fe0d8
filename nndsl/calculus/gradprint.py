"""`nndsl grad`: the derived gradients in index notation, the way a lecture writes them.

For the lecture's network (examples/lecture_mlp.nn):

    e[n] = ∂L/∂o[n] = (o[n] − y[n]) / N
    ∂L/∂h.W[k,d] = Σ_n e[n]·o.W[k]·(1 − h[n,k]²)·x[n,d]
    ∂L/∂o.W[k] = Σ_n e[n]·h[n,k]

`gradview` decides which lines there are and in which names (every symbol is a
user name or a quantity defined on an earlier line); `notation` prints one
display expression as text or LaTeX.  This module puts lines together.

For a new construct — a recurrent layer's BPTT recursion, a convolution — build
the display expressions with `sp.IndexedBase(label)[indices]` (indices may be
affine: `t + 1`, `i*s + p - pad`) and `sp.Sum(body, (v, 0, size - 1))`, and call

    format_equation(lhs, rhs, middle=None, latex=False, defined=(), order=None)

e.g. the recursion of an Elman layer h[n,t,k] = tanh(a[n,t,k]):

    n, t, k = symbols("n t k", integer=True); k2 = Symbol("k'", integer=True)
    Dh, e, h, U = (IndexedBase(c) for c in ("Δh", "e", "h", "h.U"))
    rhs = e[n, t, k] + Sum(Dh[n, t + 1, k2]·(1 - h[n, t + 1, k2]**2)·U[k2, k], (k2, 0, K - 1))
    format_equation(Dh[n, t, k], rhs, middle=h[n, t, k], defined={"Δh", "e"})

prints

    Δh[n,t,k] = ∂L/∂h[n,t,k] = e[n,t,k] + Σ_k' (1 − h[n,t+1,k']²)·h.U[k',k]·Δh[n,t+1,k']

(`latex=True` for LaTeX; `order` is a key function that orders a product's factors,
`defined` names the quantities the output defines, which LaTeX prints unbraced).
`notation.text(expr)` / `notation.latex(expr)` print a bare expression.
"""
from __future__ import annotations

import sympy as sp

from ..diagnostics import CompileError, Diagnostic, did_you_mean
from ..frontend import ir
from . import notation
from .gradview import Formula, LossFormulas, model_formulas


def format_gradients(model: ir.ModelIR, param: str | None = None, latex: bool = False) -> str:
    """Every loss's formulas, one per line; `param` keeps the lines one parameter needs."""
    check_param(model, param)
    return format_blocks(model_formulas(model, param), latex)


def format_blocks(blocks: list[LossFormulas], latex: bool = False) -> str:
    """`format_gradients` of formulas already derived (`model_formulas`): text and LaTeX of
    one derivation."""
    out = []
    for block in blocks:
        lines = format_block(block, latex)
        if not lines:
            continue
        if len(blocks) > 1:
            updates = sorted({p.rsplit(".", 1)[0] + ".*" for p in block.updates})   # as `nndsl check`
            out.append(f"# loss {block.loss} (updates {', '.join(updates)})")
        out.extend(lines)
        out.append("")
    return "\n".join(out).rstrip()


def check_param(model: ir.ModelIR, param: str | None) -> None:
    names = [p.name for p in model.params]
    if param is not None and param not in names:
        raise CompileError(Diagnostic(f"unknown parameter `{param}`", None,
                                      hint=did_you_mean(param, names) or "parameters: " + ", ".join(names)))


def format_block(block: LossFormulas, latex: bool) -> list[str]:
    return [format_formula(f, block, latex) for f in block.formulas]


def format_formula(f: Formula, block: LossFormulas, latex: bool) -> str:
    order = _order_key(block)
    if f.kind == "note" and f.note.startswith("("):            # a remark of its own
        return r"\text{" + f.note + "}" if latex else f.note
    if f.kind == "note":
        lhs = (notation.latex if latex else notation.text)(f.lhs, block.defined)
        if latex:
            sep = " " if f.note.startswith(("~", "=")) else ": "
            return lhs + r"\ \text{" + (sep + f.note).replace("~", r"$\sim$") + "}"
        return f"{lhs}: {f.note}" if not f.note.startswith(("~", "=")) else f"{lhs} {f.note}"
    if f.kind in ("param", "zero"):
        return format_equation(f.partial, f.rhs, partial=True, latex=latex, defined=block.defined, order=order)
    middle = f.partial if f.kind in ("signal", "delta") else None
    text = format_equation(f.lhs, f.rhs, middle=middle, latex=latex, defined=block.defined, order=order)
    if f.kind == "define" and f.note and not latex:
        text += f"   ({f.note})"
    return text


def format_equation(lhs, rhs, middle=None, partial=False, latex=False, defined=(), order=None) -> str:
    """`lhs = rhs`, `lhs = ∂L/∂middle = rhs`, or with `partial`, `∂L/∂lhs = rhs`."""
    printer = (notation.Latex if latex else notation.Text)(defined, order)
    left = partial_text(lhs, printer) if partial else printer(lhs)
    parts = [left] + ([partial_text(middle, printer)] if middle is not None else []) + [printer(rhs)]
    return " = ".join(parts)


def partial_text(access, printer=None) -> str:
    """∂L/∂h.W[k,d] (text) or \\frac{\\partial L}{\\partial W^{(h)}_{k,d}} (LaTeX)."""
    printer = printer or notation.Text()
    if isinstance(printer, notation.Latex):
        if isinstance(access, sp.Indexed):
            inner = printer.label(str(access.base.label)) + \
                "_{" + ",".join(printer.index_text(i) for i in access.indices) + "}"
        else:
            inner = printer.label(str(access))
        return r"\frac{\partial L}{\partial " + inner + "}"
    return "∂L/∂" + printer(access)


def _order_key(block: LossFormulas):
    """Backprop order inside a product: signals and deltas, then what lies nearer the loss."""
    rank = {label: pos for pos, label in enumerate(block.order)}
    signals = {str(f.lhs.base.label) if isinstance(f.lhs, sp.Indexed) else str(f.lhs)
               for f in block.formulas if f.kind in ("signal", "delta")}

    def key(factor):
        names = [str(i.base.label) for i in factor.atoms(sp.Indexed)] + \
            [s.name for s in factor.atoms(sp.Symbol) if not s.is_integer]   # not an index
        if any(n in signals for n in names):
            return (0, 0)
        if not names:
            return (1, 0)
        return (2, -max(rank.get(n, -1) for n in names))
    return key
