"""The semantic checker: `ast.Program` -> `ir.ModelIR`, or a CompileError holding
every independent problem found.

The passes, in order:
  1. names      collect the top-level names: duplicates, reserved built-in names
                (`context.Context.collect`);
  2. settings   consts in source order, then `init` and `train`;
  3. definitions  user activations, losses and layers, each checked on its own
                (`userfns`, `userlayers`), and the structure of every `network`;
  4. graph      data, nodes and losses in source order; network calls are
                inlined where they occur (`graph.GraphBuilder`,
                `objectives.LossChecker`); networks no call instantiated get a
                dry run so the mistakes in them are still reported;
  5. training   each loss's `wrt`, the optimizers, the outputs (`objectives`).

Scoping: data, consts and nodes must be defined before they are used;
`activation`, `loss`, `layer` and `network` definitions may be used anywhere.

The modules around it: `signature` (binding a call's arguments), `shapes`
(the built-in layers: one registry entry each), `builtins` (functions,
activations, losses, optimizers, initialisers, train options), `exprs`
(expression lowering), `userfns`, `userlayers`, `graph`, `objectives`.
"""
from __future__ import annotations

from typing import Sequence

from ..diagnostics import CompileError, Diagnostic, Span
from . import ast, ir
from .builtins import TRAIN, FunctionSpec
from .context import Context
from .graph import GraphBuilder
from .objectives import LossChecker, optimizers, outputs
from .signature import ArgError, bind
from .userfns import check_user_fn, find_cycles, fn_defaults, not_callable_names
from .userlayers import check_layer


def check(program: ast.Program) -> ir.ModelIR:
    """Check a parsed program and build its typed IR (raises CompileError)."""
    ctx = Context(program)
    model = ctx.collect(program.statements)
    _settings(ctx)
    _definitions(ctx)
    graph = GraphBuilder(ctx)
    loss_checker = LossChecker(ctx, graph)
    for i, st in enumerate(program.statements):
        if i in ctx.skip:
            continue
        ctx.stmt_index = i
        if isinstance(st, (ast.InputDecl, ast.TargetDecl)):
            graph.data_decl(st)
        elif isinstance(st, ast.Assign):
            graph.assign(st, graph.top_frame)
        elif isinstance(st, ast.LossStmt):
            loss_checker.loss_stmt(st)
    ctx.stmt_index = None
    graph.dry_run_uncalled_networks()
    losses = loss_checker.finish(model)
    opts = optimizers(ctx, losses)
    outs = outputs(ctx, graph, losses)
    if ctx.errors:
        err = CompileError(_sorted_unique(ctx.errors))
        err.source = program.source
        raise err
    return ir.ModelIR(
        name=model.name if model else "model", path=program.path, source=program.source,
        data=tuple(graph.data), nodes=tuple(graph.nodes.values()),
        params=tuple(graph.params.values()), stats=tuple(graph.stats.values()),
        losses=tuple(losses), optimizers=opts,
        outputs=outs, activations=dict(ctx.activations), user_losses=dict(ctx.user_losses),
        layers={name: info.layer for name, info in ctx.layers.items()},
        consts=dict(ctx.consts), default_init=ctx.default_init, train=ctx.train)


# ------------------------------------------------------------------ settings
def _settings(ctx: Context) -> None:
    """Consts (in source order: a const may use the earlier ones), `init`, `train`."""
    for i, st in enumerate(ctx.program.statements):
        if isinstance(st, ast.ConstDecl) and i not in ctx.skip:
            ctx.stmt_index = i
            try:
                ctx.consts[st.name] = ctx.number(st.value)
            except ArgError as exc:
                ctx.report(exc)
    ctx.stmt_index = None
    inits = ctx.statements(ast.InitStmt)
    for st in inits[1:]:
        ctx.error("the default initialiser is set twice", st.span,
                  notes=[("first set here", inits[0].span)])
    if inits:
        try:
            ctx.default_init = ctx.init(inits[0].value)
        except ArgError as exc:
            ctx.report(exc)
    trains = ctx.statements(ast.TrainStmt)
    if trains:          # several `train` statements add up; an option given twice is an error
        options = [kw for st in trains for kw in st.options]
        bound = bind(TRAIN, (), options, trains[0].span, ctx, "train", ctx.errors)
        if bound.ok:
            ctx.train = ir.TrainConfig(**bound.values)


# --------------------------------------------------------------- definitions
def _definitions(ctx: Context) -> None:
    acts = ctx.statements(ast.ActivationDef)
    loss_defs = ctx.statements(ast.LossDef)
    # Signatures first, so that bodies and calls anywhere can check arity.
    quiet: list[Diagnostic] = []          # their problems are reported by the full check
    for d in acts:
        ctx.user_specs[d.name] = _spec(d, ctx, quiet)
    for d in loss_defs:
        ctx.loss_specs[d.name] = _spec(d, ctx, quiet)
    ctx.layer_defs = {d.name: d for d in ctx.statements(ast.LayerDef)}
    ctx.network_defs = {d.name: d for d in ctx.statements(ast.NetworkDef)}
    forbidden = not_callable_names(list(ctx.network_defs), list(ctx.layer_defs),
                                   list(ctx.loss_specs))
    _user_functions(ctx, acts, loss_defs, forbidden)
    for d in ctx.layer_defs.values():
        info = check_layer(d, ctx.consts, ctx.user_specs, forbidden, ctx, ctx.errors)
        if info is not None:
            ctx.layers[d.name] = info
    for d in ctx.network_defs.values():
        if not _network_structure(ctx, d):
            ctx.broken_networks.add(d.name)


def _spec(d, ctx: Context, errors: list[Diagnostic]) -> FunctionSpec:
    return FunctionSpec(tuple(p.name for p in d.params), fn_defaults(d, ctx.consts, errors))


def _user_functions(ctx: Context, acts: Sequence[ast.ActivationDef],
                    loss_defs: Sequence[ast.LossDef], forbidden: dict[str, str]) -> None:
    calls = {}
    for d in acts:
        fn, calls[d.name] = check_user_fn(d, ctx.consts, ctx.user_specs, forbidden, ctx.errors)
        if fn is not None:
            ctx.activations[d.name] = fn
    for cycle in find_cycles(calls):
        d = next(a for a in acts if a.name == cycle[0])
        path = " -> ".join(f"`{c}`" for c in cycle)
        ctx.error(f"activation `{d.name}` is recursive: {path}", d.name_span,
                  "activations are closed formulas; recursion is not allowed")
        for name in cycle:
            ctx.activations.pop(name, None)
    for d in loss_defs:
        fn, _ = check_user_fn(d, ctx.consts, ctx.user_specs, forbidden, ctx.errors)
        if fn is not None:
            ctx.user_losses[d.name] = fn


def _network_structure(ctx: Context, net: ast.NetworkDef) -> bool:
    """Unique arguments and locals, one `return`, last.  False if broken."""
    n_before = len(ctx.errors)
    local: dict[str, Span] = {}
    for p in net.params:
        if p.id in local:
            ctx.error(f"argument `{p.id}` of network `{net.name}` is declared twice", p.span,
                      notes=[("first declared here", local[p.id])])
        local[p.id] = p.span
    for st in net.body:
        if not isinstance(st, ast.Assign) or not ctx.not_reserved(st.name, st.name_span):
            continue
        if st.name in local:
            ctx.error(f"`{st.name}` is already defined in network `{net.name}`", st.name_span,
                      notes=[("previous definition here", local[st.name])])
        local[st.name] = st.name_span
    _network_return(ctx, net, local)
    return len(ctx.errors) == n_before


def _network_return(ctx: Context, net: ast.NetworkDef, local: dict[str, Span]) -> None:
    returns = [st for st in net.body if isinstance(st, ast.Return)]
    if not returns:
        ctx.error(f"network `{net.name}` has no `return`", net.name_span,
                  "end its body with `return EXPR`")
        return
    for st in returns[1:]:
        ctx.error(f"network `{net.name}` returns twice", st.span,
                  notes=[("first return here", returns[0].span)])
    if len(returns) == 1 and net.body[-1] is not returns[0]:
        ctx.error("statements after `return` are never used", net.body[-1].span,
                  "`return` must be the last statement of a network")
    if "out" in local and not isinstance(returns[0].value, ast.Name):
        ctx.error(f"network `{net.name}` has a local named `out`, the name of its returned "
                  "value", local["out"], "rename the local, or `return out`")


# ------------------------------------------------------------------- helpers
def _sorted_unique(diags: Sequence[Diagnostic]) -> list[Diagnostic]:
    """Diagnostics once each (a network called twice repeats its own), by position."""
    unique = list(dict.fromkeys(diags))
    return sorted(unique, key=lambda d: (d.span.line, d.span.col) if d.span else (1 << 30, 0))

