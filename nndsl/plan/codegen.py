"""From a checked model to the data the module template renders.

Expands nodes and losses into formulas (`nndsl.ops`), differentiates each
loss (`nndsl.derive`), lays out memory (parameters in one flat vector, every
intermediate in one workspace whose offsets are affine in the batch size), and
lowers every stage to Numba source lines (`nndsl.lower`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import sympy as sp

from ..calculus.derive import differentiate, relevant_stages
from ..calculus.formulas import N, Stage, Tensor
from ..calculus.ops import Graph, expand_loss, expand_nodes
from ..frontend import ir
from ..render.printer import index_text
from .fuse import Group, fuse, propagate_copies
from .lower import Emitter, as_gemm

_WORKSPACE_ROLES = {"value", "noise", "grad", "loss"}

# Per-example vectors at least this wide are stored batch-last, (K, N): OpenBLAS's sgemm
# writes a tall (256, N) result 10-40 % faster than a wide (N, 256) one, and elementwise
# loops then run the batch index innermost. Measured on whole steps: MNIST MLP 3-5 %,
# lecture MLP (K = 32) 8 % faster; K = 10 logits were 2 % slower, because the loss reduces
# over the features of each example (docs/performance.md).
BATCH_LAST_MIN_WIDTH = 32


@dataclass
class Kernel:
    """One njit function body: its views, its stage lines, what it returns."""
    name: str
    views: list[str]
    lines: list[str]              # forward and loss stages
    backward: list[str]           # gradient stages (run when want_grad)
    has_draws: bool = False


@dataclass
class LossSpec:
    name: str
    ident: str
    value: Kernel                 # forward + loss (+ full gradient when want_grad)
    train: Kernel | None          # forward + loss + gradient of the `wrt` params only; None: same as value
    optimizer: ir.Optimizer
    ranges: list[tuple[int, int]]       # flat parameter ranges that `step` updates
    data: list[str]                     # data arrays the kernels take


@dataclass
class ModuleSpec:
    model: ir.ModelIR
    dtype: str
    params: list[dict]
    n_params: int
    data: list[dict]
    free_sizes: list[tuple[str, str, int]]       # (size, data name, axis)
    ws_size: str
    forward: Kernel
    forward_inputs: list[str]                    # the inputs the outputs depend on
    nodes: Kernel                                # every node, each computed or given
    node_info: list[dict]                        # name, ident, per-example shape, in order
    outputs: list[str]
    losses: list[LossSpec]
    tensors: dict[str, Tensor] = field(default_factory=dict)
    graph: Graph | None = None
    adjoints: dict = field(default_factory=dict)


def generate(model: ir.ModelIR, dtype: str = "float32") -> ModuleSpec:
    g = Graph(model)
    expand_nodes(g)
    forward_stages = list(g.b.stages)
    loss_handles, adjoints = {}, {}
    for spec in model.losses:
        start = len(g.b.stages)
        loss_handles[spec.name] = expand_loss(g, spec)
        loss_stages = relevant_stages(forward_stages + g.b.stages[start:], loss_handles[spec.name].name)
        all_params = [g.params[p.name].name for p in model.params]
        full = differentiate(g.b, loss_stages, loss_handles[spec.name], all_params)
        wrt = [g.params[p].name for p in spec.wrt]
        partial = full if set(wrt) == set(all_params) else differentiate(
            g.b, loss_stages, loss_handles[spec.name], wrt)
        adjoints[spec.name] = (loss_stages, full, partial, wrt)

    tensors = g.b.tensors
    outputs = [g.values[o].name for o in model.outputs]
    layout = _param_layout(model, g)
    ws_offsets, ws_size = _workspace_layout(tensors)
    batch_last = _batch_last(tensors, outputs)
    emit = Emitter(tensors, dtype, batch_last)
    views = _Views(tensors, layout, ws_offsets, g, batch_last)

    fwd_stages = relevant_stages_multi(forward_stages, outputs)
    forward = _kernel("forward", fwd_stages, [], emit, views, keep=set(outputs))
    forward_inputs = [d.name for d in model.inputs if _uses(fwd_stages, g.values[d.name].name)]
    nodes, node_info = _nodes_kernel(model, g, emit, views)

    losses = []
    for spec in model.losses:
        loss_stages, full, partial, wrt = adjoints[spec.name]
        ident = g.b.tensors[loss_handles[spec.name].name].name
        keep = {ident}
        value = _kernel(f"value_{ident}", loss_stages, full.stages, emit, views, keep)
        train = None if partial is full else _kernel(f"train_{ident}", loss_stages, partial.stages, emit, views, keep)
        ranges = _merge([(layout[p]["offset"], layout[p]["offset"] + layout[p]["size"]) for p in spec.wrt])
        data = [d.name for d in model.data if _uses(loss_stages, g.values[d.name].name)]
        losses.append(LossSpec(spec.name, ident, value, train, model.optimizers[spec.name], ranges, data))

    return ModuleSpec(
        model=model, dtype=dtype,
        params=[layout[p.name] for p in model.params],
        n_params=sum(v["size"] for v in layout.values()),
        data=[_data_info(d) for d in model.data],
        free_sizes=_free_sizes(model),
        ws_size=index_text([ws_size]),
        forward=forward, forward_inputs=forward_inputs, nodes=nodes, node_info=node_info,
        outputs=outputs, losses=losses,
        tensors=tensors, graph=g,
        adjoints=adjoints)


def relevant_stages_multi(stages: list[Stage], targets: list[str]) -> list[Stage]:
    keep = set()
    for t in targets:
        keep |= {id(s) for s in relevant_stages(stages, t)}
    return [s for s in stages if id(s) in keep]


def _uses(stages: list[Stage], tensor: str) -> bool:
    return any(a.tensor == tensor for s in stages for a in s.accesses) or \
        any(s.attrs.get("labels") == tensor for s in stages)


def _merge(ranges):
    out = []
    for lo, hi in sorted(ranges):
        if out and out[-1][1] == lo:
            out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out


def _param_layout(model: ir.ModelIR, g: Graph) -> dict[str, dict]:
    layout, offset = {}, 0
    for p in model.params:
        size = 1
        for s in p.shape:
            size *= s
        init = p.init
        layout[p.name] = dict(name=p.name, ident=g.params[p.name].name, shape=tuple(p.shape),
                              offset=offset, size=size, init=init.kind, init_arg=init.arg,
                              fan_in=p.fan_in, fan_out=p.fan_out)
        offset += size
    return layout


def _batch_last(tensors: dict[str, Tensor], outputs: list[str]) -> set[str]:
    """Workspace tensors of shape (N, K), K ≥ BATCH_LAST_MIN_WIDTH, stored as (K, N); outputs
    handed to the user stay (N, K)."""
    return {t.name for t in tensors.values()
            if t.role in _WORKSPACE_ROLES and t.name not in outputs and len(t.shape) == 2
            and t.shape[0] == N and t.shape[1].is_Integer and int(t.shape[1]) >= BATCH_LAST_MIN_WIDTH}


def _workspace_layout(tensors: dict[str, Tensor]):
    offsets, total = {}, sp.Integer(0)
    for t in tensors.values():
        if t.role in _WORKSPACE_ROLES:
            offsets[t.name] = total
            total = sp.expand(total + sp.prod(t.shape))
    return offsets, total


class _Views:
    """The line that makes a named array view of a tensor inside a kernel."""

    def __init__(self, tensors, layout, ws_offsets, g: Graph, batch_last: set[str]):
        self.tensors, self.ws_offsets, self.batch_last = tensors, ws_offsets, batch_last
        self.param_of = {g.params[name].name: info for name, info in layout.items()}

    def line(self, name: str) -> str | None:
        t = self.tensors[name]
        shape = "(" + ", ".join(index_text([s]) for s in t.shape) + ("," if len(t.shape) == 1 else "") + ")"
        if t.role == "param":
            info = self.param_of[name]
            return f"{name} = theta[{info['offset']}:{info['offset'] + info['size']}].reshape({shape})"
        if t.role == "pgrad":
            info = self.param_of[self._param_for_grad(name)]
            return f"{name} = grad[{info['offset']}:{info['offset'] + info['size']}].reshape({shape})"
        if name in self.ws_offsets:
            lo = self.ws_offsets[name]
            hi = sp.expand(lo + sp.prod(t.shape))
            if name in self.batch_last:             # an (N, K) view of (K, N) storage
                stored = "(" + ", ".join(index_text([s]) for s in t.shape[::-1]) + ")"
                return f"{name} = ws[{index_text([lo])}:{index_text([hi])}].reshape({stored}).T"
            return f"{name} = ws[{index_text([lo])}:{index_text([hi])}].reshape({shape})"
        return None                                  # data: a kernel argument

    def _param_for_grad(self, grad_name: str) -> str:
        label = self.tensors[grad_name].label[1:]     # "Δh.W" -> "h.W"
        return next(n for n, info in self.param_of.items() if info["name"] == label)


def _kernel(name: str, forward: list[Stage], backward: list[Stage], emit: Emitter, views: _Views,
            keep: set[str]) -> Kernel:
    """Copy propagation and loop fusion over the kernel's stages, then its source lines."""
    kept, renames = propagate_copies(forward + backward, emit.tensors, keep)
    in_backward = {id(s) for s in backward}
    stages_f = [s for original, s in kept if id(original) not in in_backward]
    stages_b = [s for original, s in kept if id(original) in in_backward]
    reads: dict[str, int] = {}
    for _, s in kept:
        for a in s.accesses:
            reads[a.tensor] = reads.get(a.tensor, 0) + 1
    gemm = lambda s: as_gemm(s, emit.tensors) is not None          # noqa: E731
    fwd_plan = fuse(stages_f, gemm, reads, keep, emit.memory_order)
    back_plan = fuse(stages_b, gemm, reads, keep, emit.memory_order)
    scalars = set().union(*[g.scalars for g in fwd_plan + back_plan if isinstance(g, Group)])
    used = []
    for _, s in kept:
        for t in [s.out] + [a.tensor for a in s.accesses]:
            if t not in used and t not in scalars:
                used.append(t)
    view_lines = [v for v in (views.line(t) for t in used) if v]
    view_lines = _noted(view_lines)
    return Kernel(name, view_lines, emit.plan(fwd_plan), emit.plan(back_plan),
                  has_draws=any(s.kind == "draw" for s in forward))


def _nodes_kernel(model: ir.ModelIR, g: Graph, emit: Emitter, views: _Views) -> tuple[Kernel, list[dict]]:
    """One kernel over every node in topological order, each one either computed from its
    inputs or copied from a given array (`given_mask[i]`): `forward` at any node, from any
    node — a VAE's decoder from a latent sample, a hidden layer of a trained MLP."""
    nodes = [n for n in model.nodes if n.op not in ("input", "target")]
    tensors = {n.name: g.values[n.name].name for n in nodes}
    keep = set(tensors.values())
    view_lines, lines, draws = [], [], False
    for i, n in enumerate(nodes):
        a, b = g.node_stages[n.name]
        k = _kernel("node", g.b.stages[a:b], [], emit, views, keep)
        view_lines += [v for v in k.views if v not in view_lines and not v.startswith("#")]
        draws = draws or k.has_draws
        lines += [f"# {n.name}", f"if given_mask[{i}]:", f"    {tensors[n.name]}[...] = given[{i}]", "else:"]
        lines += ["    " + line for line in k.lines] or ["    pass"]
    view_lines = _noted(view_lines)
    info = [dict(name=n.name, ident=tensors[n.name], shape=tuple(n.shape), inputs=tuple(n.inputs)) for n in nodes]
    return Kernel("forward_nodes", view_lines, lines, [], has_draws=draws), info


def _noted(view_lines: list[str]) -> list[str]:
    """The views, headed by a note on `.T` views when the kernel has batch-last tensors."""
    if any(v.endswith(".T") for v in view_lines):
        return ["# `.reshape((K, N)).T`: an (N, K) view of batch-last storage (docs/performance.md)"] + view_lines
    return view_lines


def _data_info(d: ir.DataDecl) -> dict:
    return dict(name=d.name, shape=tuple(d.shape), classes=d.classes, is_target=d.is_target,
                dtype="int" if d.classes else "float")


def _free_sizes(model: ir.ModelIR) -> list[tuple[str, str, int]]:
    seen, out = set(), []
    for d in model.data:
        for axis, s in enumerate(d.shape):
            if isinstance(s, str) and s not in seen:
                seen.add(s)
                out.append((s, d.name, axis + 1))
    return out
