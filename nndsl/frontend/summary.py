"""`nndsl check`'s report: data, nodes, parameters, losses and optimizers of a model."""
from __future__ import annotations

from math import prod
from typing import Sequence

from . import ir, memory
from .exprs import format_expr
from .shapes import fmt_shape
from .signature import fmt_number


def summarize(model: ir.ModelIR) -> str:
    sections = [
        f"model {model.name}  ({model.path})",
        _section("data", _data_rows(model)),
        _section("nodes", _node_rows(model)),
        _section(f"parameters: {len(model.params)} tensors, {_count(model.params):,} values",
                 _param_rows(model)),
        _section(f"running statistics: {len(model.stats)} tensors, {_count(model.stats):,} values "
                 "(updated by step and fit, read by forward)", _param_rows(model, model.stats))
        if model.stats else "",
        _section("losses", [], _loss_lines(model)),
        _section("memory", [], memory.summary_lines(model)),
        _settings(model),
    ]
    return "\n\n".join(s for s in sections if s)


# ------------------------------------------------------------------ sections
def _section(title: str, rows: Sequence[Sequence[str]], lines: Sequence[str] = ()) -> str:
    body = list(_table(rows)) + list(lines)
    return "\n".join([title] + ["  " + line for line in body])


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    if not rows:
        return []
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def _data_rows(model: ir.ModelIR) -> list[list[str]]:
    rows = []
    for d in model.data:
        kind = "target" if d.is_target else "input"
        shape = fmt_shape(d.shape) if d.classes is None else \
            f"{fmt_shape(d.shape)}: class({d.classes})" if d.shape else f"class({d.classes})"
        rows.append([kind, d.name, shape])
    return rows


def _node_rows(model: ir.ModelIR) -> list[list[str]]:
    rows = []
    for n in model.nodes:
        if n.op in ("input", "target"):
            continue
        rows.append([n.name, fmt_shape(n.shape), _describe(n)])
    return rows


def _describe(n: ir.Node) -> str:
    if n.op == "expr":
        return "= " + format_expr(n.attrs["expr"])
    if n.op == "layer":
        sizes = ", ".join(f"{k}={v}" for k, v in n.attrs["sizes"].items())
        return f"{n.attrs['layer']}({', '.join([*n.inputs, sizes] if sizes else n.inputs)})"
    attrs = [f"{k}={fmt_number(v)}" for k, v in n.attrs.items() if k != "stats"]
    return f"{n.op}({', '.join([*n.inputs, *attrs])})"


def _param_rows(model: ir.ModelIR, params=None) -> list[list[str]]:
    rows = []
    for p in model.params if params is None else params:
        init = p.init.kind + (f"({fmt_number(p.init.arg)})" if p.init.arg is not None else "")
        rows.append([p.name, fmt_shape(p.shape), f"{prod(p.shape):,}", init])
    return rows


def _loss_lines(model: ir.ModelIR) -> list[str]:
    sizes = {p.name: prod(p.shape) for p in model.params}
    lines = []
    for loss in model.losses:
        lines.append(f"{loss.name} = {_format_terms(loss.terms)}")
        groups = ", ".join(_groups(loss.wrt))
        total = sum(sizes.get(w, 0) for w in loss.wrt)
        lines.append(f"  updates {groups}  ({len(loss.wrt)} tensors, {total:,} values)")
        opt = model.optimizers.get(loss.name)
        if opt is not None:
            args = ", ".join(f"{k}={fmt_number(v)}" for k, v in opt.args.items())
            lines.append(f"  optimizer {opt.kind}({args})")
    return lines


def _settings(model: ir.ModelIR) -> str:
    t = model.train
    train = (f"batch={t.batch} epochs={t.epochs} shuffle={fmt_number(t.shuffle)} "
             f"seed={t.seed}")
    if t.clip_norm is not None:
        train += f" clip_norm={fmt_number(t.clip_norm)}"
    if t.d_steps != 1:
        train += f" d_steps={t.d_steps}"
    init = model.default_init.kind + (f"({fmt_number(model.default_init.arg)})"
                                      if model.default_init.arg is not None else "")
    rows = [["outputs", ", ".join(model.outputs) or "-"], ["init", init], ["train", train]]
    return "\n".join(_table(rows))


# ------------------------------------------------------------------- helpers
def _count(params: Sequence[ir.Param]) -> int:
    return sum(prod(p.shape) for p in params)


def _groups(names: Sequence[str]) -> list[str]:
    """Parameter names grouped by owner: a network (`generator.*`) or a node (`h.*`)."""
    groups: dict[str, None] = {}
    for name in names:
        parts = name.split(".")
        groups[parts[0] + ".*" if len(parts) > 2 else ".".join(parts[:-1]) + ".*"] = None
    return list(groups) or ["nothing"]


def _format_terms(terms: Sequence[ir.LossTerm]) -> str:
    out = []
    for i, t in enumerate(terms):
        args = [a if isinstance(a, str) else fmt_number(a) for a in t.args]
        args += [f"{k}={fmt_number(v)}" for k, v in t.kwargs.items()]
        call = f"{t.fn}({', '.join(args)})"
        w = abs(t.weight)
        term = call if w == 1 else f"{fmt_number(w)} * {call}"
        if i == 0:
            out.append(term if t.weight >= 0 else f"-{term}")
        else:
            out.append(f"{'+' if t.weight >= 0 else '-'} {term}")
    return " ".join(out)
