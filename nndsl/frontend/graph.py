"""Building the node graph: data, layers, expressions, user layers and inlined networks.

Naming (see `ir.py`): a node of the k-th call of network NAME is `NAME.local`
(k = 1) or `NAME#k.local`; the call's value is the node named by the
assignment `fake = NAME(...)`, else `NAME.out` / `NAME#k.out`.  Parameters are
shared across the calls: `NAME.local.P` (`NAME.out.P` for the returned
layer).  A layer call nested in an expression, or an expression given as an
operand, becomes a node named after its owner: `h.1`, `h.2`, ...

Scoping: a network body sees its own arguments and locals, the consts and the
definitions, never the outer nodes (they must be passed as arguments).

Cascades are suppressed: a failed node is bound to POISON, and whatever uses
it fails silently.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

from ..diagnostics import Span, did_you_mean
from . import ast, ir
from .builtins import BUILTIN_LOSSES
from .context import DEFINITION_KINDS, Context, Failed
from .exprs import ExprLowering, Lowered
from .shapes import BUILTIN_LAYERS, BuiltinLayer, Operand, ShapeError
from .signature import ArgError, Bound, Number, bind
from .userlayers import instantiate


@dataclass(frozen=True)
class NodeRef:
    name: str
    shape: ir.Shape
    classes: Optional[int] = None

    def operand(self) -> Operand:
        return Operand(self.name, self.shape, self.classes)


@dataclass(frozen=True)
class ConstVal:
    value: Number


class _Poison:
    def __repr__(self):
        return "POISON"


POISON = _Poison()
Value = Union[NodeRef, ConstVal, _Poison]


@dataclass
class Frame:
    """Where a statement is checked: the top level, or one inlined network call."""
    values: dict[str, Value]
    node_prefix: str = ""               # "", "generator.", "generator#2."
    param_prefix: str = ""              # "", "generator."
    network: Optional[str] = None
    call_span: Optional[Span] = None


@dataclass
class Naming:
    """The names a new node (and its parameters) will get.  `direct`: the node is
    the value of an assignment, so a network call's result takes the name."""
    node: str
    param: str
    direct: bool = False
    _count: list = field(default_factory=lambda: [0])

    def sub(self) -> "Naming":
        self._count[0] += 1
        k = self._count[0]
        return Naming(f"{self.node}.{k}", f"{self.param}.{k}")


class GraphBuilder:
    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.nodes: dict[str, ir.Node] = {}         # in topological (creation) order
        self.params: dict[str, ir.Param] = {}
        self.stats: dict[str, ir.Param] = {}        # batchnorm running statistics (state)
        self.data: list[ir.DataDecl] = []
        self.top_frame = Frame({})
        self.call_counts: dict[str, int] = {}       # successful calls per network
        self.called: set[str] = set()               # networks called at all
        self.call_stack: list[str] = []

    # ------------------------------------------------------------------ data
    def data_decl(self, st: Union[ast.InputDecl, ast.TargetDecl]) -> None:
        is_target = isinstance(st, ast.TargetDecl)
        try:
            if st.classes is not None:
                classes = self.ctx.size(st.classes, "the class count")
                shape = self.dims(st.dims) if st.dims else ()      # per-step labels: (T,)
                if not is_target and len(shape) > 1:
                    raise ArgError(f"a class input holds one class index per example or per step, "
                                   f"but `{st.name}` declares {len(shape)} axes", st.span,
                                   f"declare `input {st.name}[T]: class(...)` or `input {st.name}: class(...)`")
            else:
                classes, shape = None, self.dims(st.dims)
        except ArgError as exc:
            self.ctx.report(exc)
            self.top_frame.values[st.name] = POISON
            return
        op = "target" if is_target else "input"
        attrs = {"classes": classes} if is_target or classes is not None else {}
        self.add_node(ir.Node(st.name, op, (), shape, attrs, {}, st.span))
        self.data.append(ir.DataDecl(st.name, shape, classes, is_target, st.span))
        self.top_frame.values[st.name] = NodeRef(st.name, shape, classes)

    def dims(self, exprs: tuple[ast.Expr, ...]) -> ir.Shape:
        """Declared axes; every bad one is reported, then ArgError.silent() is raised."""
        dims, ok = [], True
        for d in exprs:
            try:
                dims.append(self.dim(d))
            except ArgError as exc:
                self.ctx.report(exc)
                ok = False
        if not ok:
            raise ArgError.silent()
        return tuple(dims)

    def dim(self, expr: ast.Expr) -> ir.Dim:
        """A declared axis: a positive int, a const, or a free size name like `T`."""
        if isinstance(expr, ast.Name) and expr.id not in self.ctx.consts:
            top = self.ctx.top.get(expr.id)
            if top is None:
                return expr.id
            if top.kind != "const":
                raise ArgError(f"`{expr.id}` is a {top.kind}; an axis is a number, a const "
                               "or a free size name", expr.span)
        return self.ctx.size(expr, "an axis size")

    # ----------------------------------------------------------------- nodes
    def assign(self, st: ast.Assign, frame: Frame) -> None:
        naming = Naming(frame.node_prefix + st.name, frame.param_prefix + st.name, direct=True)
        try:
            ref = self.lower_value(st.value, frame, naming)
            if ref.name != naming.node:
                ref = self.alias(naming.node, ref, st.span)
            frame.values[st.name] = ref
        except Failed:
            frame.values[st.name] = POISON

    def alias(self, name: str, ref: NodeRef, span: Span) -> NodeRef:
        self.add_node(ir.Node(name, "expr", (ref.name,), ref.shape,
                              {"expr": ir.Ref(ref.name)}, {}, span))
        return NodeRef(name, ref.shape, ref.classes)

    def add_node(self, node: ir.Node) -> None:
        if node.name in self.nodes:
            raise self.ctx.fail(f"the name `{node.name}` clashes with a generated node name",
                                node.span, "rename it")
        self.nodes[node.name] = node

    def no_class_operands(self, ops, names, bound: Bound, e: ast.Call, what: str) -> None:
        """Class indices are numbers to `embed` (and labels to `cross_entropy`) only."""
        for op, name in zip(ops, names):
            if op.classes is not None:
                raise self.ctx.fail(f"{op.described()} and is not a number", bound.spans.get(name, e.span),
                                    f"embed class indices first: `{what}(embed({op.name}, DIM), ...)`")

    def add_param(self, p: ir.Param, frame: Frame, table: Optional[dict] = None) -> None:
        """A new parameter, or the one an earlier call of the same network made."""
        table = self.params if table is None else table
        old = table.get(p.name)
        if old is None:
            table[p.name] = p
        elif old.shape != p.shape:
            raise self.ctx.fail(
                f"network `{frame.network}` is called with operands of another shape: its "
                f"parameter `{p.name}` has shape {old.shape} from the first call but would "
                f"have shape {p.shape} here", frame.call_span or p.span,
                "the calls of a network share its parameters, so their operands must "
                "have the same shapes")

    def lower_value(self, e: ast.Expr, frame: Frame, naming: Naming) -> NodeRef:
        """The node holding the value of `e` (an existing one for a bare name)."""
        if isinstance(e, ast.Call):
            if e.func in BUILTIN_LAYERS:
                return self.builtin_layer(e, BUILTIN_LAYERS[e.func], frame, naming)
            if e.func in self.ctx.layer_defs:
                return self.user_layer(e, frame, naming)
            if e.func in self.ctx.network_defs:
                return self.inline(e, frame, naming)
        if isinstance(e, ast.Name):
            v = self.resolve(e, frame)
            if isinstance(v, NodeRef):
                return v
            if v is None:
                raise Failed()
        return self.expr_node(e, frame, naming)

    def operand(self, e: ast.Expr, frame: Frame, naming: Naming) -> Optional[NodeRef]:
        """An operand of a layer/network call: an existing node or a new one."""
        try:
            if isinstance(e, ast.Name) and isinstance(frame.values.get(e.id), NodeRef):
                return frame.values[e.id]
            return self.lower_value(e, frame, naming.sub())
        except Failed:
            return None

    def operands(self, bound: Bound, frame: Frame, naming: Naming) -> Optional[list[NodeRef]]:
        refs = [self.operand(expr, frame, naming) for _, expr in bound.tensors]
        return None if any(r is None for r in refs) else refs

    def expr_node(self, e: ast.Expr, frame: Frame, naming: Naming) -> NodeRef:
        lowered = _NodeExpr(self, frame, naming).lower(e)
        if lowered is None:
            raise Failed()
        refs = tuple(dict.fromkeys(_refs(lowered.expr)))
        shape = lowered.operand.shape
        self.add_node(ir.Node(naming.node, "expr", refs, shape, {"expr": lowered.expr}, {},
                              e.span))
        return NodeRef(naming.node, shape)

    # ------------------------------------------------------------------ names
    def resolve(self, e: ast.Name, frame: Frame) -> Optional[Value]:
        """What a name means here; None when it failed (reported unless poisoned)."""
        ctx = self.ctx
        v = frame.values.get(e.id)
        if v is not None:
            return None if v is POISON else v
        top = ctx.top.get(e.id)
        if e.id in ctx.consts or (top is not None and top.kind == "const"):
            try:
                return ConstVal(ctx.const_value(e))
            except ArgError as exc:
                ctx.report(exc)
                return None
        if top is None:
            ctx.error(f"undefined name `{e.id}`", e.span,
                      did_you_mean(e.id, [*frame.values, *ctx.consts]))
        elif top.kind in DEFINITION_KINDS:
            ctx.error(f"`{e.id}` is a {top.kind}, not a value", e.span,
                      f"call it: `{e.id}(...)`" if top.kind != "loss function" else
                      "loss functions are used in `loss` statements")
        elif frame.network is not None:
            ctx.error(f"`{e.id}` is not visible inside network `{frame.network}`", e.span,
                      "a network sees only its arguments and locals; pass it as an argument")
        elif ctx.stmt_index is not None and top.index >= ctx.stmt_index:
            ctx.error(f"`{e.id}` is used before its definition", e.span,
                      notes=[("defined here", top.span)])
        # else: defined earlier but failed, reported there
        return None

    # -------------------------------------------------------- built-in layers
    def builtin_layer(self, e: ast.Call, spec: BuiltinLayer, frame: Frame,
                      naming: Naming) -> NodeRef:
        ctx = self.ctx
        bound = bind(spec.signature, e.args, e.kwargs, e.span, ctx, e.func, ctx.errors)
        refs = self.operands(bound, frame, naming)
        if not bound.ok or refs is None:
            raise Failed()
        ops = [r.operand() for r in refs]
        if spec.name != "embed":
            self.no_class_operands(ops, [name for name, _ in bound.tensors], bound, e, spec.name)
        try:
            shape = spec.shape(ops, bound.values)
            params = spec.params(ops, bound.values)
        except ShapeError as exc:
            raise ctx.fail(exc.message, bound.spans.get(exc.arg, e.span), exc.hint)
        node_params, stats = {}, {}
        weight_init = bound.values.get("init") or ctx.default_init
        for ps in params:
            if ps.bias:
                init = ir.Init("zeros")
            elif ps.init is not None:        # its own start (gains: ones; an embedding: normal(1))
                init = bound.values.get("init") or ir.Init(*ps.init)
            else:
                init = weight_init
            qualified = f"{naming.param}.{ps.name}"
            p = ir.Param(qualified, ps.shape, init, ps.fan_in, ps.fan_out, e.span)
            if ps.trainable:
                self.add_param(p, frame)
                node_params[ps.name] = qualified
            else:                            # model state: no gradient, no optimiser, no `wrt`
                self.add_param(p, frame, self.stats)
                stats[ps.name] = qualified
        attrs = spec.attrs(bound.values)
        if stats:
            attrs["stats"] = stats
        self.add_node(ir.Node(naming.node, spec.name, tuple(r.name for r in refs), shape,
                              attrs, node_params, e.span))
        return NodeRef(naming.node, shape)

    # ------------------------------------------------------------ user layers
    def user_layer(self, e: ast.Call, frame: Frame, naming: Naming) -> NodeRef:
        ctx = self.ctx
        info = ctx.layers.get(e.func)
        if info is None:                      # its definition failed: reported there
            for a in e.args:
                self.operand(a, frame, naming)
            raise Failed()
        bound = bind(info.signature, e.args, e.kwargs, e.span, ctx, e.func, ctx.errors)
        refs = self.operands(bound, frame, naming)
        if not bound.ok or refs is None:
            raise Failed()
        operands = {name: r.operand() for (name, _), r in zip(bound.tensors, refs)}
        self.no_class_operands(list(operands.values()), list(operands), bound, e, e.func)
        sizes = {n: bound.values[n] for n in info.layer.size_args}
        try:
            inst = instantiate(info, operands, sizes, ctx.consts)
        except ShapeError as exc:
            raise ctx.fail(exc.message, bound.spans.get(exc.arg, e.span), exc.hint,
                           [*exc.notes, (f"layer `{e.func}` is defined here", info.layer.span)])
        node_params = {}
        for lp, ps in inst.params:
            qualified = f"{naming.param}.{lp.name}"
            self.add_param(ir.Param(qualified, ps.shape, lp.init or ctx.default_init,
                                    ps.fan_in, ps.fan_out, e.span), frame)
            node_params[lp.name] = qualified
        attrs = {"layer": e.func, "sizes": sizes, "index_sizes": dict(inst.index_sizes)}
        self.add_node(ir.Node(naming.node, "layer", tuple(r.name for r in refs), inst.shape,
                              attrs, node_params, e.span))
        return NodeRef(naming.node, inst.shape)

    # --------------------------------------------------------------- networks
    def inline(self, e: ast.Call, frame: Frame, naming: Naming) -> NodeRef:
        """Instantiate a network at a call: its nodes get the call's prefix."""
        ctx = self.ctx
        net = ctx.network_defs[e.func]
        self.called.add(e.func)
        refs = [self.operand(a, frame, naming) for a in e.args]
        if e.func in ctx.broken_networks:
            raise Failed()
        if e.func in self.call_stack:
            raise ctx.fail(f"network `{e.func}` calls itself", e.func_span,
                           "networks are inlined, so they cannot be recursive")
        if e.kwargs:
            raise ctx.fail(f"network `{e.func}` takes positional arguments only",
                           e.kwargs[0].span)
        if len(e.args) != len(net.params):
            n = len(net.params)
            raise ctx.fail(f"network `{e.func}` takes {n} argument{'s' if n != 1 else ''}, "
                           f"got {len(e.args)}", e.span,
                           f"usage: {e.func}({', '.join(p.id for p in net.params)})",
                           [("defined here", net.name_span)])
        if any(r is None for r in refs):
            raise Failed()
        k = self.call_counts.get(e.func, 0) + 1
        self.call_counts[e.func] = k
        prefix = f"{e.func}." if k == 1 else f"{e.func}#{k}."
        values: dict[str, Value] = {p.id: r for p, r in zip(net.params, refs)}
        inner = Frame(values, prefix, f"{e.func}.", e.func, e.span)
        out_name = naming.node if naming.direct else prefix + "out"
        return self.network_body(net, inner, Naming(out_name, f"{e.func}.out", naming.direct))

    def network_body(self, net: ast.NetworkDef, frame: Frame, out: Naming) -> NodeRef:
        """The body's nodes, then the node of its `return` (named by `out`)."""
        saved_index, self.ctx.stmt_index = self.ctx.stmt_index, None
        self.call_stack.append(net.name)
        failed, result = False, None
        try:
            for st in net.body:
                if isinstance(st, ast.Assign):
                    self.assign(st, frame)
                    failed |= frame.values[st.name] is POISON
                    continue
                try:
                    result = self.lower_value(st.value, frame, out)
                except Failed:
                    failed = True
                break
        finally:
            self.call_stack.pop()
            self.ctx.stmt_index = saved_index
        if failed or result is None:
            raise Failed()
        return result

    def dry_run_uncalled_networks(self) -> None:
        """Check the body of every network that no call instantiated, with unknown
        operands, so that its name and argument mistakes are still reported."""
        saved = (self.nodes, self.params, self.stats, dict(self.call_counts))
        for name, net in self.ctx.network_defs.items():
            if self.call_counts.get(name) or name in self.ctx.broken_networks:
                continue
            self.nodes, self.params, self.stats = {}, {}, {}
            frame = Frame({p.id: POISON for p in net.params}, f"{name}.", f"{name}.", name)
            try:
                self.network_body(net, frame, Naming(f"{name}.out", f"{name}.out"))
            except Failed:
                pass
        self.nodes, self.params, self.stats, self.call_counts = saved

    # ----------------------------------------------------------------- queries
    def param_dependencies(self, node_names: list[str]) -> set[str]:
        """The parameters that the given nodes depend on."""
        seen: set[str] = set()
        params: set[str] = set()
        stack = list(node_names)
        while stack:
            name = stack.pop()
            if name in seen or name not in self.nodes:
                continue
            seen.add(name)
            node = self.nodes[name]
            params.update(node.params.values())
            stack.extend(node.inputs)
        return params


class _NodeExpr(ExprLowering):
    """An expression over nodes: names are nodes or consts; layer and network
    calls inside it become nodes of their own."""
    track_shapes = True

    def __init__(self, graph: GraphBuilder, frame: Frame, naming: Naming):
        super().__init__(graph.ctx.errors, graph.ctx.consts, graph.ctx.user_specs)
        self.graph, self.frame, self.naming = graph, frame, naming

    def name(self, e):
        v = self.graph.resolve(e, self.frame)
        if isinstance(v, ConstVal):
            return self.const(v.value)
        if isinstance(v, NodeRef):
            if v.classes is not None:
                self.error(f"`{v.name}` holds class labels (class({v.classes})) and is not "
                           "a number", e.span, "class labels are used by cross_entropy only; "
                           f"to use class indices as numbers, embed them: embed({v.name}, DIM)")
                return None
            return Lowered(ir.Ref(v.name), Operand(v.name, v.shape))
        return None

    def call(self, e):
        ctx = self.graph.ctx
        if e.func in BUILTIN_LAYERS or e.func in ctx.layer_defs or e.func in ctx.network_defs:
            try:
                ref = self.graph.lower_value(e, self.frame, self.naming.sub())
            except Failed:
                return None
            return Lowered(ir.Ref(ref.name), Operand(ref.name, ref.shape))
        if e.func in BUILTIN_LOSSES or e.func in ctx.loss_specs:
            self.error(f"the loss `{e.func}` can only be used in a `loss` statement",
                       e.func_span)
            return None
        self.unknown_function(e, [*BUILTIN_LAYERS, *ctx.layer_defs, *ctx.network_defs],
                              "layer or function")
        return None


def _refs(e: ir.Expr) -> list[str]:
    if isinstance(e, ir.Ref):
        return [e.name]
    if isinstance(e, ir.Apply):
        return [r for a in e.args for r in _refs(a)]
    return []
