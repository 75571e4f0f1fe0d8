"""Losses, the parameters each updates (`wrt`), optimizers and outputs.

`loss EXPR` is a weighted sum of loss calls (`0.5 * a(...) + b(...) - c(...)`,
weights are numbers or consts).  A loss argument that is a node name stays a
name, a number stays a float (it broadcasts), anything else becomes a node:
a network call's result node (`discriminator.out`), or a node named
`_LOSS.t.a` (term t, argument a) holding the layer call or expression.
A loss without `wrt` updates every parameter it depends on.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

from ..diagnostics import Span, did_you_mean
from . import ast, ir
from .builtins import DEFAULT_OPTIMIZER, BUILTIN_LOSSES, OPTIMIZERS, LossForm, same_shape
from .context import Context, Failed
from .graph import GraphBuilder, Naming, NodeRef
from .shapes import BUILTIN_LAYERS, Operand, ShapeError
from .signature import TENSOR, Arg, RealKind, Signature, bind


@dataclass
class _PendingLoss:
    stmt: ast.LossStmt
    name: str
    terms: list[ir.LossTerm] = field(default_factory=list)
    complete: bool = True          # every term checked (else skip dependency checks)


class LossChecker:
    def __init__(self, ctx: Context, graph: GraphBuilder):
        self.ctx, self.graph = ctx, graph
        self.pending: list[_PendingLoss] = []

    # ------------------------------------------------------------ statements
    def loss_stmt(self, st: ast.LossStmt) -> None:
        name = st.name or "loss"
        prev = next((p for p in self.pending if p.name == name), None)
        if prev is not None:
            if st.name is None:
                self.ctx.error("a model can have only one unnamed loss", st.span,
                               "name the losses: `loss NAME = ...`",
                               [("the other unnamed loss", prev.stmt.span)])
            else:
                self.ctx.error(f"loss `{name}` is already defined", st.name_span or st.span,
                               notes=[("previous definition here", prev.stmt.span)])
            return
        pending = _PendingLoss(st, name)
        self.pending.append(pending)
        n_before = len(self.ctx.errors)
        for t, (weight, call) in enumerate(self.weighted_calls(st.value, 1.0)):
            try:
                pending.terms.append(self.term(weight, call, name, t))
            except Failed:
                pending.complete = False
        pending.complete &= len(self.ctx.errors) == n_before

    def weighted_calls(self, e: ast.Expr, weight: float) -> list[tuple[float, ast.Call]]:
        """A loss expression as a weighted sum of loss calls."""
        if isinstance(e, ast.Call):
            return [(weight, e)]
        if isinstance(e, ast.UnaryOp) and e.op == "-":
            return self.weighted_calls(e.operand, -weight)
        if isinstance(e, ast.BinOp) and e.op in ("+", "-"):
            sign = 1.0 if e.op == "+" else -1.0
            return (self.weighted_calls(e.left, weight) +
                    self.weighted_calls(e.right, sign * weight))
        if isinstance(e, ast.BinOp) and e.op in ("*", "/"):
            left, right = self.ctx.try_number(e.left), self.ctx.try_number(e.right)
            if e.op == "*" and left is not None:
                return self.weighted_calls(e.right, weight * left)
            if e.op == "*" and right is not None:
                return self.weighted_calls(e.left, weight * right)
            if e.op == "/" and right:
                return self.weighted_calls(e.left, weight / right)
        self.ctx.error("a loss must be a weighted sum of loss calls", e.span,
                       "e.g. `loss 0.5 * squared(o, y) + kl_normal(mu, logvar)`; put other "
                       "arithmetic in a user `loss` function")
        return []

    def form(self, call: ast.Call) -> LossForm:
        """The signature and operand check of a built-in or user loss."""
        ctx = self.ctx
        if call.func in BUILTIN_LOSSES:
            return BUILTIN_LOSSES[call.func].select(len(call.args), [k.name for k in call.kwargs])
        spec = ctx.loss_specs.get(call.func)
        if spec is None:
            hint = did_you_mean(call.func, [*BUILTIN_LOSSES, *ctx.loss_specs])
            if hint is None and (call.func in BUILTIN_LAYERS or call.func in ctx.top):
                hint = f"`{call.func}` is not a loss; losses: {', '.join(BUILTIN_LOSSES)}"
            raise ctx.fail(f"unknown loss `{call.func}`", call.func_span, hint)
        if call.func not in ctx.user_losses:
            raise Failed()                    # its definition failed: reported there
        # Parameters without a default are the operands; the others are reals.
        args = [Arg(p, TENSOR) if p not in spec.defaults else
                Arg(p, RealKind(), spec.defaults[p]) for p in spec.params]
        fn = call.func
        return LossForm(Signature(tuple(args)), lambda ops, kw, names: same_shape(fn, ops, names))

    def term(self, weight: float, call: ast.Call, loss: str, t: int) -> ir.LossTerm:
        ctx = self.ctx
        form = self.form(call)
        bound = bind(form.signature, call.args, call.kwargs, call.span, ctx, call.func,
                     ctx.errors)
        args: list[Union[str, float]] = []
        ops: list[Operand] = []
        ok = bound.ok
        for a, (_, expr) in enumerate(bound.tensors):
            is_node_name = isinstance(expr, ast.Name) and expr.id not in ctx.consts
            number = None if is_node_name else ctx.try_number(expr)
            if number is not None:
                args.append(number)
                ops.append(Operand("", (), what="number"))
                continue
            naming = Naming(f"_{loss}.{t}.{a}", f"_{loss}.{t}.{a}")
            try:
                ref = self.graph.lower_value(expr, self.graph.top_frame, naming)
            except Failed:
                ok = False
                continue
            args.append(ref.name)
            ops.append(ref.operand())
        if not ok:
            raise Failed()
        try:
            form.check(ops, bound.values, form.operands)
        except ShapeError as exc:
            raise ctx.fail(exc.message, bound.spans.get(exc.arg, call.span), exc.hint)
        kwargs = {k: float(v) for k, v in bound.values.items()}
        return ir.LossTerm(weight, call.func, tuple(args), kwargs, call.span)

    # ------------------------------------------------------------------ wrt
    def finish(self, model: Optional[ast.ModelDecl]) -> list[ir.Loss]:
        """The losses with the parameters each updates."""
        if not self.pending:
            self.ctx.error("the model has no loss", model.span if model else None,
                           "add one, e.g. `loss squared(o, y)`")
        losses = []
        for p in self.pending:
            deps = self.graph.param_dependencies(
                [a for t in p.terms for a in t.args if isinstance(a, str)])
            if p.stmt.wrt:
                wrt = self.wrt(p, deps)
            else:
                wrt = [q for q in self.graph.params if q in deps]
                if not wrt and p.complete:
                    self.ctx.error(f"loss `{p.name}` does not depend on any parameter",
                                   p.stmt.span,
                                   "a loss must reach at least one layer with parameters")
            losses.append(ir.Loss(p.name, tuple(p.terms), tuple(wrt), p.stmt.span))
        return losses

    def wrt(self, p: _PendingLoss, deps: set[str]) -> list[str]:
        chosen: dict[str, None] = {}
        for w in p.stmt.wrt:
            found = self.wrt_params(w)
            if found is None:
                continue
            params, what = found
            if not params:
                never = w.id in self.ctx.network_defs and not self.graph.call_counts.get(w.id)
                self.ctx.error(f"{what} has no parameters"
                               f"{' (it is never called)' if never else ''}", w.span,
                               "wrt names networks or layers with parameters")
            elif p.complete and not deps.intersection(params):
                self.ctx.error(f"loss `{p.name}` does not depend on {what}", w.span)
            chosen.update(dict.fromkeys(params))
        return list(chosen)

    def wrt_params(self, w: ast.Name) -> Optional[tuple[list[str], str]]:
        """The parameters a `wrt` name stands for, and how to call it in messages;
        None if it is unknown (reported) or failed earlier (silent)."""
        ctx, graph = self.ctx, self.graph
        if w.id in ctx.network_defs:
            if w.id in graph.called and not graph.call_counts.get(w.id):
                return None                   # its calls failed: reported there
            return [q for q in graph.params if q.startswith(w.id + ".")], f"network `{w.id}`"
        if w.id in graph.nodes and "." not in w.id:
            return list(graph.nodes[w.id].params.values()), f"`{w.id}`"
        if w.id in ctx.top and ctx.top[w.id].kind == "node":
            return None                       # a failed node: reported there
        with_params = [n for n, node in graph.nodes.items() if node.params and "." not in n]
        ctx.error(f"`wrt {w.id}`: no network or layer named `{w.id}`", w.span,
                  did_you_mean(w.id, [*ctx.network_defs, *with_params]) or
                  "wrt names networks or layers with parameters")
        return None


# ------------------------------------------------------------------ optimizers
def default_optimizer(kind: str = DEFAULT_OPTIMIZER) -> ir.Optimizer:
    return ir.Optimizer(kind, {a.name: a.default for a in OPTIMIZERS[kind].args})


def optimizers(ctx: Context, losses: Sequence[ir.Loss]) -> dict[str, ir.Optimizer]:
    """Every loss's optimizer: its own (`optimizer LOSS: ...`), the global one, or adam()."""
    default = default_optimizer()
    per_loss: dict[str, tuple[ir.Optimizer, Span]] = {}
    global_span = None
    names = [loss.name for loss in losses]
    for st in ctx.statements(ast.OptimizerStmt):
        opt = optimizer(ctx, st.call)
        if st.loss is None:
            if global_span is not None:
                ctx.error("the optimizer is set twice", st.span,
                          "use `optimizer LOSS: ...` to give one loss its own",
                          [("first set here", global_span)])
                continue
            global_span = st.span
            default = opt or default
        elif st.loss.id not in names:
            ctx.error(f"optimizer for unknown loss `{st.loss.id}`", st.loss.span,
                      did_you_mean(st.loss.id, names) or
                      (f"losses: {', '.join(names)}" if names else None))
        elif st.loss.id in per_loss:
            ctx.error(f"the optimizer of loss `{st.loss.id}` is set twice", st.span,
                      notes=[("first set here", per_loss[st.loss.id][1])])
        elif opt is not None:
            per_loss[st.loss.id] = (opt, st.span)
    return {n: per_loss[n][0] if n in per_loss else default for n in names}


def optimizer(ctx: Context, call: ast.Call) -> Optional[ir.Optimizer]:
    sig = OPTIMIZERS.get(call.func)
    if sig is None:
        ctx.error(f"unknown optimizer `{call.func}`", call.func_span,
                  did_you_mean(call.func, OPTIMIZERS) or f"optimizers: {', '.join(OPTIMIZERS)}")
        return None
    bound = bind(sig, call.args, call.kwargs, call.span, ctx, call.func, ctx.errors)
    return ir.Optimizer(call.func, dict(bound.values)) if bound.ok else None


# --------------------------------------------------------------------- outputs
def outputs(ctx: Context, graph: GraphBuilder, losses: Sequence[ir.Loss]) -> tuple[str, ...]:
    """`output a, b`, or by default the first node argument of the first loss term."""
    decls = ctx.statements(ast.OutputDecl)
    for st in decls[1:]:
        ctx.error("`output` is given twice", st.span,
                  "list every output in one statement: `output a, b`",
                  [("first given here", decls[0].span)])
    if decls:
        names = []
        for n in decls[0].names:
            v = graph.top_frame.values.get(n.id)
            if v is None:
                ctx.error(f"unknown output `{n.id}`", n.span,
                          did_you_mean(n.id, graph.top_frame.values) or
                          "outputs are names of nodes defined at the top level")
            elif isinstance(v, NodeRef):      # (a failed node is POISON: reported)
                names.append(v.name)
        return tuple(dict.fromkeys(names))
    for loss in losses[:1]:
        for t in loss.terms[:1]:
            first = next((a for a in t.args if isinstance(a, str)), None)
            if first is not None:
                return (first,)
    return ()
