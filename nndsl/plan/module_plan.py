"""From a checked model to its module plan: everything a renderer needs, for any target.

Expands nodes and losses into formulas (`calculus/ops.py`), differentiates each loss
(`calculus/derive.py`), lays out memory (parameters in one flat vector, every intermediate
in one workspace whose offsets are affine in the batch size), fuses stages into loop nests
and GEMMs (`fuse.py`, `gemm.py`, `scan.py`), makes each a shared kernel (`kernels.py`) and
lists the calls of every plan (`forward`, `nodes`, and per loss its value and its step).
Sizes and offsets stay sympy expressions; the renderers print them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import sympy as sp

from ..calculus.derive import differentiate, needed_stages, relevant_stages
from ..calculus.formulas import N, Stage, Tensor, make_stage
from ..calculus.ops import Graph, expand_loss, expand_nodes
from ..frontend import ir
from .fuse import fuse, propagate_copies
from .gemm import argmax_then_max, is_gemm
from . import liveness
from .kernels import Call, KernelLibrary, Plans, Storage
from .optimizers import update_kernel
from .scan import aliased_views, overwritten_step_gradients, scan_calls, untransposed_step_operands, view_offset

_WORKSPACE_ROLES = {"value", "noise", "grad", "loss"}

# Per-example vectors at least this wide are stored batch-last, (K, N): OpenBLAS's sgemm
# writes a tall (256, N) result 10-40 % faster than a wide (N, 256) one, and elementwise
# loops then run the batch index innermost. Measured on whole steps: MNIST MLP 3-5 %,
# lecture MLP (K = 32) 8 % faster; K = 10 logits were 2 % slower, because the loss reduces
# over the features of each example (docs/performance.md).
BATCH_LAST_MIN_WIDTH = 32


@dataclass
class Calls:
    """The kernel calls of one plan: its forward (and loss) part and its gradient part (run
    when a gradient is asked for)."""
    name: str
    calls: list[Call]
    backward: list[Call]
    has_draws: bool = False


@dataclass
class LossPlan:
    name: str
    ident: str
    value: Calls                  # forward + loss (+ full gradient when want_grad)
    train: Calls | None           # forward + loss + gradient of the `wrt` params only (and the running
    # statistics' updates after it); None: same as value
    evaluate: Calls | None        # the loss as `forward` computes it; None: the value plan
    optimizer: ir.Optimizer
    ranges: list[tuple[int, int, int]]  # flat parameter ranges that `step` updates, and whether they decay
    data: list[str]                     # data arrays the kernels take
    loss_offset: object = 0             # where the loss value sits in the workspace (sympy)
    update_kernel: str = ""             # the shared optimiser update
    update_args: list[str] = field(default_factory=list)   # its hyperparameters
    update_id: int = 0                  # its arm in the entry's update dispatch


@dataclass
class ModulePlan:
    model: ir.ModelIR
    dtype: str
    params: list[dict]
    n_params: int
    data: list[dict]
    free_sizes: list[tuple[str, str, int]]       # (size, data name, axis)
    ws_size: object                              # workspace elements (sympy, affine in N)
    forward: Calls
    forward_inputs: list[str]                    # the inputs the outputs depend on
    nodes: Calls                                 # every node, each computed or given
    node_info: list[dict]                        # name, tensor, per-example shape, inputs, in order
    outputs: list[str]                           # the outputs' tensors
    losses: list[LossPlan]
    tensors: dict[str, Tensor] = field(default_factory=dict)
    storage: dict[str, Storage] = field(default_factory=dict)
    kernels: dict = field(default_factory=dict)  # name -> KernelDef or UpdateKernel: the distinct kernels
    plans: Plans | None = None                   # every entry's calls, and their branches
    updates: list = field(default_factory=list)  # (update id, kernel, hyperparameters)
    has_draws: bool = False
    masks: dict = field(default_factory=dict)    # step mask -> (free size, the input it masks)
    graph: Graph | None = None
    adjoints: dict = field(default_factory=dict)


def module_plan(model: ir.ModelIR, dtype: str = "float32") -> ModulePlan:
    g = Graph(model)
    expand_nodes(g)
    forward_stages = list(g.b.stages)
    loss_handles, adjoints = {}, {}
    for spec in model.losses:
        start = len(g.b.stages)
        loss_handles[spec.name] = expand_loss(g, spec)
        loss_stages = relevant_stages(forward_stages + g.b.stages[start:], loss_handles[spec.name].name,
                                      g.b.tensors)
        all_params = g.param_tensors([p.name for p in model.params])
        full = differentiate(g.b, loss_stages, loss_handles[spec.name], all_params)
        wrt = g.param_tensors(spec.wrt)
        partial = full if set(wrt) == set(all_params) else differentiate(
            g.b, loss_stages, loss_handles[spec.name], wrt)
        adjoints[spec.name] = (loss_stages, full, partial, wrt)

    # step GEMMs read transposed parameters from copies made once per pass (plan/scan.py);
    # the adjoints above were derived from, and are shown with, the stages as written
    copies: dict = {}
    forward_stages = untransposed_step_operands(forward_stages, g.b, copies)
    planned = {name: untransposed_step_operands(stages, g.b, copies) for name, (stages, *_) in adjoints.items()}

    tensors = g.b.tensors
    outputs = [g.values[o].name for o in model.outputs]
    # step masks of free sequence lengths are data arguments too (the Model makes them from
    # `x_lengths=`, all ones without); they follow the declared data
    masks = [ir.DataDecl(h.name, (str(size),)) for size, h in g.masks.items()]
    for d in masks:
        g.values.setdefault(d.name, g.masks[next(s for s in g.masks if g.masks[s].name == d.name)])

    layout = _param_layout(model, g)
    batch_last = _batch_last(tensors, outputs)

    def lowered(ws_offsets, ws_size, touches_only=False):
        return _lowered(model, dtype, g, tensors, outputs, masks, layout, batch_last, ws_offsets, ws_size,
                        forward_stages, loss_handles, adjoints, planned, touches_only)

    # lowered twice: tensor by tensor, to see which tensors each plan touches when (its calls
    # say no more); then with tensors that are never needed at once sharing memory
    # (`liveness.py`)
    first = lowered(*_workspace_layout(tensors), touches_only=True)
    return lowered(*_packed_workspace(first))


def _lowered(model, dtype, g, tensors, outputs, masks, layout, batch_last, ws_offsets, ws_size,
             forward_stages, loss_handles, adjoints, planned, touches_only=False) -> ModulePlan:
    """Every plan's kernel calls, with the workspace laid out at `ws_offsets` (`touches_only`:
    calls that say only the tensors they touch, see `KernelLibrary`)."""
    storage = _storage(tensors, layout, g, ws_offsets, batch_last)
    lib = KernelLibrary(tensors, storage, dtype, touches_only)

    fwd_stages = needed_stages(forward_stages, outputs, tensors)
    forward = _kernel("forward", inference(fwd_stages, tensors), [], lib, keep=set(outputs))
    forward_inputs = _data_of(model.inputs, fwd_stages, g)
    nodes, node_info = _nodes_kernel(model, g, lib)

    losses, evals = [], {}
    for spec in model.losses:
        _, full, partial, wrt = adjoints[spec.name]
        loss_stages = planned[spec.name]
        ident = g.b.tensors[loss_handles[spec.name].name].name
        keep = {ident}
        value = _kernel(f"value_{ident}", loss_stages, full.stages, lib, keep)
        # `step` alone updates the running statistics: after its gradient, in its own plan
        updates = running_updates(g, loss_stages)
        train = None if partial is full and not updates else \
            _kernel(f"train_{ident}", loss_stages, partial.stages + updates, lib, keep | {u.out for u in updates})
        if model.stats:      # the loss as `forward` computes (running statistics): validation
            evals[ident] = _kernel(f"eval_{ident}", inference(loss_stages, tensors), [], lib, keep)
        decays = _decays(model.optimizers[spec.name], layout)
        ranges = _merge([(layout[p]["offset"], layout[p]["offset"] + layout[p]["size"], decays[p]) for p in spec.wrt])
        data = _data_of(model.data, loss_stages, g)
        update = update_kernel(model.optimizers[spec.name], dtype)
        lib.kernels.setdefault(update.name, update)
        losses.append(LossPlan(spec.name, ident, value, train, evals.get(ident), model.optimizers[spec.name],
                               ranges, data,
                               loss_offset=ws_offsets[ident],
                               update_kernel=update.name, update_args=update.args))

    plans = Plans()
    plans.add("forward", forward.calls)
    plans.add("nodes", nodes.calls)
    updates: dict = {}
    for l in losses:
        for k in (l.value, l.train):
            if k is not None:
                plans.add(k.name, k.calls, k.backward)
        if l.evaluate is not None:
            plans.add(l.evaluate.name, l.evaluate.calls)
        key = (l.update_kernel, tuple(l.update_args))
        l.update_id = updates.setdefault(key, len(updates) + 1)
    has_draws = forward.has_draws or nodes.has_draws or any(l.value.has_draws for l in losses)

    return ModulePlan(
        model=model, dtype=dtype,
        params=[layout[p.name] for p in model.params + model.stats],
        n_params=sum(v["size"] for v in layout.values()),
        data=[_data_info(d) for d in model.data],
        masks={h.name: g.mask_info[h.name] for h in g.masks.values()},
        free_sizes=_free_sizes(model),
        ws_size=ws_size,
        forward=forward, forward_inputs=forward_inputs, nodes=nodes, node_info=node_info,
        outputs=outputs, losses=losses, kernels=lib.kernels, storage=storage,
        plans=plans, updates=[(i, k, list(args)) for (k, args), i in updates.items()], has_draws=has_draws,
        tensors=tensors, graph=g,
        adjoints=adjoints)


def inference(stages: list[Stage], tensors: dict[str, Tensor]) -> list[Stage]:
    """The stages as `forward` runs them: a batch statistic (a batchnorm's mean or variance,
    `attrs["batchstat"]`) is read from its running statistic instead of computed."""
    out = []
    for s in stages:
        running = s.attrs.get("batchstat") if s.attrs else None
        if running is None:
            out.append(s)
            continue
        stat = sp.IndexedBase(running)[s.index]
        out.append(make_stage(s.out, s.index, stat, tensors, note=f"{s.note} (running)"))
    return out


def running_updates(g: Graph, stages: list[Stage]) -> list[Stage]:
    """The running-statistics updates of the batchnorm layers a loss's stages compute."""
    outs = {s.out for s in stages}
    return [u for node, updates in g.stat_updates.items() if g.values[node].name in outs for u in updates]


def _data_of(decls, stages: list[Stage], g: Graph) -> list[str]:
    """The data arrays a plan takes: those its stages read, and for every size its loops run
    over (N, a free T) one array that gives it, read or not (`h - h` reads nothing, but its
    batch size and T are the input's)."""
    names = [d.name for d in decls if _uses(stages, g.values[d.name].name)]
    sizes = set().union(*[sp.sympify(n).free_symbols for s in stages for _, n in s.ranges])
    for size in sorted(sizes, key=str):        # N too: every array gives the batch size
        given = [d.name for d in decls if size == N or str(size) in map(str, d.shape)]
        if given and not set(given) & set(names):
            names.append(given[0])
    return [d.name for d in decls if d.name in names]


def _uses(stages: list[Stage], tensor: str) -> bool:
    return any(a.tensor == tensor for s in stages for a in s.accesses) or \
        any(s.attrs.get("labels") == tensor for s in stages)


def _merge(ranges):
    """Adjacent ranges of theta that decay alike, as one."""
    out = []
    for lo, hi, decays in sorted(ranges):
        if out and out[-1][1] == lo and out[-1][2] == decays:
            out[-1] = (out[-1][0], hi, decays)
        else:
            out.append((lo, hi, decays))
    return out


def _decays(optimizer: ir.Optimizer, layout: dict) -> dict[str, int]:
    """Which parameters take the optimiser's weight decay: `decay=all` every one, `weights`
    (the default) those with two or more axes — matrices, embeddings and convolution
    kernels, not biases, gains or shifts."""
    every = optimizer.args.get("decay", "weights") == "all"
    return {name: int(every or len(info["shape"]) >= 2) for name, info in layout.items()}


def _param_layout(model: ir.ModelIR, g: Graph) -> dict[str, dict]:
    layout, offset = {}, 0
    for p in model.params + model.stats:       # running statistics after every parameter
        size = 1
        for s in p.shape:
            size *= s
        init = p.init
        layout[p.name] = dict(name=p.name, ident=g.params[p.name].name, shape=tuple(p.shape),
                              offset=offset, size=size, init=init.kind, init_arg=init.arg,
                              fan_in=p.fan_in, fan_out=p.fan_out)
        offset += size
    return layout


def _packed_workspace(plan: ModulePlan):
    """The workspace laid out by liveness over every plan of `plan` (lowered tensor by
    tensor): ({tensor: offset}, size)."""
    tensors = plan.tensors
    workspace = {name for name, t in tensors.items() if t.role in _WORKSPACE_ROLES and not t.view}
    outputs = set(plan.outputs)
    nodes = {info["ident"] for info in plan.node_info}
    plans = [(liveness.touched(plan.forward.calls), outputs, set()),
             (liveness.touched(plan.nodes.calls), nodes, nodes)]
    for loss in plan.losses:
        for calls in (loss.value, loss.train, loss.evaluate):
            if calls is not None:
                plans.append((liveness.touched(calls.calls) + liveness.touched(calls.backward),
                              outputs | {l.ident for l in plan.losses}, set()))
    sizes = {name: sp.prod(tensors[name].shape) for name in workspace}
    return liveness.packed(sizes, liveness.intervals(plans, workspace))


def _batch_last(tensors: dict[str, Tensor], outputs: list[str]) -> set[str]:
    """Workspace tensors of shape (N, K), K ≥ BATCH_LAST_MIN_WIDTH, stored as (K, N); outputs
    handed to the user stay (N, K)."""
    return {t.name for t in tensors.values()
            if t.role in _WORKSPACE_ROLES and t.name not in outputs and len(t.shape) == 2 and not t.view
            and t.shape[0] == N and t.shape[1].is_Integer and int(t.shape[1]) >= BATCH_LAST_MIN_WIDTH}


def _workspace_layout(tensors: dict[str, Tensor]):
    offsets, total = {}, sp.Integer(0)
    for t in tensors.values():
        if t.role in _WORKSPACE_ROLES and not t.view:      # a step view owns no memory
            offsets[t.name] = total
            total = sp.expand(total + sp.prod(t.shape))
    return offsets, total


def _storage(tensors, layout, g: Graph, ws_offsets, batch_last: set[str]) -> dict[str, Storage]:
    """Every tensor's home: a slice of theta (parameters), grad (their gradients), the
    workspace (values, noise, adjoints), or a data argument (inputs, targets)."""
    param_of = {g.params[name].name: info for name, info in layout.items()}
    for stacked, members in g.stacked.items():       # gates stacked: members consecutive in theta
        infos = [layout[m] for m in members]
        assert all(a["offset"] + a["size"] == b["offset"] for a, b in zip(infos, infos[1:])), members
        param_of[stacked] = infos[0]
    grad_of = {}
    for t in tensors.values():
        if t.role == "pgrad":
            label = t.label[1:]                 # "Δh.W" -> "h.W"
            grad_of[t.name] = next(info for info in param_of.values() if info["name"] == label)
    out = {}
    for name, t in tensors.items():
        if t.role == "param":
            out[name] = Storage("theta", sp.Integer(param_of[name]["offset"]))
        elif t.role == "pgrad":
            out[name] = Storage("grad", sp.Integer(grad_of[name]["offset"]))
        elif name in ws_offsets:
            out[name] = Storage("ws", ws_offsets[name], name in batch_last)
        elif t.view:
            out[name] = Storage("ws", view_offset(t, tensors, ws_offsets))
        else:
            out[name] = Storage(name)           # data: an argument of the entry function
    return out


def _kernel(name: str, forward: list[Stage], backward: list[Stage], lib: KernelLibrary,
            keep: set[str]) -> Calls:
    """Copy propagation and loop fusion over the entry's stages, then one kernel call per
    fused group, GEMM or special stage."""
    # (the forward stages come first and are never rewritten: only gradients are)
    backward = unread_gradients_dropped(forward, backward, lib.tensors, keep)
    backward = overwritten_step_gradients(forward + backward, lib.tensors)[len(forward):]
    # step views alias their sequences: never a register, never copy-propagated away, unless
    # a sequence is only ever seen through one view (a gate's gradient Δo_t, written and read
    # within each step): that view is then an ordinary value of the step
    keep = keep | aliased_views(forward + backward, lib.tensors)
    # parameter gradients are results of the entry even where no stage reads them (the
    # zeroing of an unused parameter's gradient): never a register
    keep |= {t for t, x in lib.tensors.items() if x.role == "pgrad"}
    kept, renames = propagate_copies(forward + backward, lib.tensors, keep)
    in_backward = {id(s) for s in backward}
    stages_f = [s for original, s in kept if id(original) not in in_backward]
    stages_b = [s for original, s in kept if id(original) in in_backward]
    reads: dict[str, int] = {}
    for _, s in kept:
        for a in s.accesses:
            reads[a.tensor] = reads.get(a.tensor, 0) + 1
    gemm = lambda s: is_gemm(s, lib.tensors)          # noqa: E731
    order = lambda t, index: tuple(index[::-1]) if lib.storage[t].batch_last else tuple(index)  # noqa: E731
    plan = lambda stages: scan_calls(stages, lambda run: _paired(fuse(run, gemm, reads, keep, order)), lib.call)  # noqa: E731
    return Calls(name, plan(stages_f), plan(stages_b), has_draws=any(s.kind == "draw" for s in forward))


def unread_gradients_dropped(forward: list[Stage], backward: list[Stage], tensors: dict[str, Tensor],
                             keep: set[str]) -> list[Stage]:
    """The backward stages without those whose result nothing reads: a Δ that reaches no
    parameter (`where(h != 0, 3, 6)` passes no gradient to h, so Δ of the `where` has no
    reader; its stage wrote an array the plan had no storage for). Repeated until none is
    left; a parameter's gradient, a kept tensor and a view (its sequence is read through
    other views) always stay. Not `needed_stages` from the parameters' gradients: one pass
    backwards over a recurrence's cell misses what a step reads from the step after it."""
    stages = list(backward)
    viewed = {t.view[0] for t in tensors.values() if t.view is not None}
    while True:
        # (an accumulating stage reads its own result: that is no reader)
        read = {a.tensor for s in forward + stages for a in s.accesses if a.tensor != s.out}
        dead = [s for s in stages if s.out not in read and s.out not in keep and s.out not in viewed
                and tensors[s.out].role != "pgrad" and tensors[s.out].view is None]
        if not dead:
            return stages
        gone = {id(s) for s in dead}
        stages = [s for s in stages if id(s) not in gone]


def _paired(plan: list) -> list:
    """An arg-max followed by the max of the same windows becomes one item (one kernel that
    finds both in one pass over each window)."""
    out, k = [], 0
    while k < len(plan):
        nxt = plan[k + 1] if k + 1 < len(plan) else None
        if argmax_then_max(plan[k], nxt):
            out.append((plan[k], nxt))
            k += 2
        else:
            out.append(plan[k])
            k += 1
    return out


def _nodes_kernel(model: ir.ModelIR, g: Graph, lib: KernelLibrary) -> tuple[Calls, list[dict]]:
    """Every node in topological order, each either computed from its inputs or copied in
    from a given array (`given_mask[i]`): `forward` at any node, from any node — a VAE's
    decoder from a latent sample, a hidden layer of a trained MLP."""
    nodes = [n for n in model.nodes if n.op not in ("input", "target")]
    tensors = {n.name: g.values[n.name].name for n in nodes}
    keep = set(tensors.values())
    calls, draws, info = [], False, []
    for i, n in enumerate(nodes):
        a, b = g.node_stages[n.name]
        k = _kernel("node", inference(g.b.stages[a:b], lib.tensors), [], lib, keep)
        draws = draws or k.has_draws
        calls.append((i, k.calls))
        t = tensors[n.name]
        info.append(dict(name=n.name, ident=t, shape=tuple(n.shape), inputs=tuple(n.inputs)))
    return Calls("forward_nodes", calls, [], has_draws=draws), info


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
