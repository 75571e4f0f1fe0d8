"""The derived gradients of a model as lecture formulas: which lines, in which names.

`model_formulas(model)` expands the model (`ops`), differentiates every loss
(`derive`) and reads the adjoint stages back as `Formula`s: display expressions
(see `notation`) over the user's names only.  Per loss, in the order printed:

- quantities the formulas use that the user did not name, each defined once
  (`p[n,k] = exp(o[n,k]) / Σ_k' exp(o[n,k'])`, a pre-activation `a_h`, a noise);
- the error signals `e[n] = ∂L/∂o[n]`, one per loss operand;
- the layer deltas `Δh[n,k] = ∂L/∂h[n,k]` a long formula stops at;
- `∂L/∂P[...]` for every parameter `P` the loss updates.

Intermediate adjoints are substituted by their definitions until only forward
quantities and the named signals remain (`Σ_n e[n]·o.W[k]·(1 − h[n,k]²)·x[n,d]`).
Before display each formula is simplified (exact numbers, common factors) and
known patterns are named as a lecture names them: the softmax of a
cross-entropy is `p`, its one-hot is `𝟙[k = label[n]]`, a reparameterised
sample's noise is `(z − mu)·exp(−logvar/2)`, `step(pre-activation)` of a relu
layer is `step(h)`.  Axes of size 1 are dropped for vectors and matrices
(`o.W[k]` for a 1×K weight, as the lecture's `v[k]`); tensors of higher rank
keep every axis (`q.W[0,i,j]`).  Index letters are the user's (`W[f,c,p]` of a
user layer) or the lecture's (`W[k,d]` of a dense layer).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import sympy as sp

from ..frontend import ir
from . import functions as fn
from . import sums
from .derive import differentiate, relevant_stages
from .formulas import N, Stage, index_vars, indirect
from .gradnames import Lecture, Names, declared_letters, is_steps
from .notation import exact_numbers, indicator
from .ops import Graph, expand_loss, expand_nodes

_MAX_INLINE = 12            # beyond this many factors a formula stops at the layer's Δ


@dataclass
class Formula:
    """One printed line: `lhs = [middle =] rhs`.

    kind: "define" (a quantity the output names), "signal" (e = ∂L/∂operand),
    "delta" (Δh = ∂L/∂h), "param" (∂L/∂P), "zero" (the loss does not reach P),
    "note" (a line of words: a noise's distribution; `rhs` is None).
    `partial` is the display access of ∂L/∂· (None for definitions)."""
    kind: str
    lhs: sp.Expr                      # display access: e[n], p[n,k], h.W[k,d]
    rhs: sp.Expr | None
    partial: sp.Expr | None = None
    note: str = ""
    sizes: dict = field(default_factory=dict)       # summation index -> size, for checks
    raw: sp.Expr | None = None        # the derivation before naming and simplifying (internal names)
    ready: bool = False               # already in display names (a recurrence's lines)
    value: sp.Expr | None = None      # the formula a note states in words (a recurrent state's update)


@dataclass
class LossFormulas:
    loss: str
    updates: list[str]                # parameter names the loss updates
    formulas: list[Formula]
    defined: set[str]                 # names the output itself defines (e, p, Δh, a_h)
    int_labels: set[str]              # class-label tensors (integer valued)
    order: list[str] = field(default_factory=list)    # display labels, forward order
    # for checking the display against the derivation (tests): display label -> (tensor,
    # shown axes); tensor -> (index, value) of every forward formula with a plain index
    tensor_of: dict = field(default_factory=dict)
    forward: dict = field(default_factory=dict)


def model_formulas(model: ir.ModelIR, param: str | None = None) -> list[LossFormulas]:
    # convolutions as the direct window sum (the lecture's formula), not their im2col GEMMs:
    # the same function of W and x, so derive gives the same gradients in the window form
    g = Graph(model, conv_form="direct")
    expand_nodes(g)
    forward = list(g.b.stages)
    out = []
    for loss in model.losses:
        start = len(g.b.stages)
        handle = expand_loss(g, loss)
        stages = relevant_stages(forward + g.b.stages[start:], handle.name, g.b.tensors)
        wrt = g.param_tensors(loss.wrt)           # a recurrence's gates: their stacked tensor
        adjoint = differentiate(g.b, stages, handle, wrt)
        view = _View(model, g, loss, stages, adjoint)
        out.append(view.formulas(param))
    return out


# ---------------------------------------------------------------- the view
class _View:
    def __init__(self, model, g: Graph, loss: ir.Loss, stages: list[Stage], adjoint):
        self.model, self.g, self.loss = model, g, loss
        self.tensors = g.b.tensors
        seen = {s.out for s in stages} | {a.tensor for s in stages for a in s.accesses}
        self.names = Names(model, g, used={n for n, h in g.values.items() if h.name in seen})
        # the lecture's reading of the lowering: a dense layer's N·T-rows view of a sequence
        # is the sequence itself, h[n,t,d]; a step mask is 1 (every sequence runs all its
        # steps: the module's default without `x_lengths=`, the recursion's reading too)
        user = {n.name for n in model.nodes} | {d.name for d in model.data} | set(model.consts)
        lecture = Lecture(self.tensors, set(g.mask_info), user)
        stages = [lecture(s) for s in stages]
        adjoint_stages = [lecture(s) for s in adjoint.stages]
        self.forward = {s.out: s for s in stages if s.kind == "formula" and not s.accumulate}
        self.special = {s.out: s for s in stages if s.kind != "formula"}
        self.order = {}
        for pos, s in enumerate(stages):
            self.order.setdefault(s.out, pos)
            for a in s.accesses:
                self.order.setdefault(a.tensor, pos)
        self.defs: dict[str, list[tuple[tuple, sp.Expr]]] = {}
        self.def_ranges: dict[str, list[dict]] = {}
        self.def_stages: dict[str, list[Stage]] = {}
        for s in adjoint_stages:
            if s.kind == "formula" and s.expr != 0:
                self.defs.setdefault(s.out, []).append((s.index, sums.as_sum(s)))
                self.def_ranges.setdefault(s.out, []).append(dict(s.ranges))
                self.def_stages.setdefault(s.out, []).append(s)
        # zero-padded copies of a convolution's input: xp[n,c,h+pad,w+pad] = x[n,c,h,w]
        self.pads: dict[str, tuple[str, tuple]] = {}
        for s in stages:
            if s.attrs and s.attrs.get("view") == "pad":
                a = s.accesses[0]
                self.pads[s.out] = (a.tensor, tuple(e - i for e, i in zip(s.index, a.index)))
        self.padded_noted: set[str] = set()
        self.all_stages = g.b.stages
        self.once: dict[str, str] = {}
        self.recurrences_done = False
        self.gathered = False
        self.gathered_noted: set[str] = set()
        self.adjoint_of = adjoint.adjoint_of
        self.raw_mode = False       # inlining the derivation as derived, in internal names
        self.signals: dict[str, tuple[str, str]] = {}      # grad tensor -> (e, operand node)
        # names the output defines must not be the user's: an autoencoder's layer may be `e`
        self.taken = {n.name for n in model.nodes} | {d.name for d in model.data} | \
            {p.name for p in model.params} | set(model.consts) | {"N", "L"}
        self.taken |= {self.names.node_label(n.name) for n in model.nodes}
        self.user_names = set(self.taken)          # index letters avoid them too (`d` of a decoder)
        letter = next(x for x in ("e", "δ", "err", "err_") if x not in self.taken)
        letters = (self.fresh_label(letter) for _ in itertools.count())
        for node in [a for t in loss.terms for a in t.args if isinstance(a, str)]:
            grad = self.adjoint_of.get(g.values[node].name)
            if grad in self.defs and grad not in self.signals:
                self.signals[grad] = (next(letters), node)
        self.original: dict = {}
        self.fresh = (sp.Symbol(f"{c}{k}", integer=True) for k in itertools.count() for c in "jmpq")
        self.aux: dict[str, str] = {}               # internal tensor -> its defined label
        self.softmax: dict[str, str] = {}           # logits tensor -> label of its softmax (p)
        self.noise_names: dict[str, str] = {}       # noise tensor -> m, ε
        self.pending: list[Formula] = []            # definitions waiting for the line that uses them

    def fresh_once(self, base: str) -> str:
        """`fresh_label(base)`, the same label each time it is asked for the same base."""
        if base not in self.once:
            self.once[base] = self.fresh_label(base)
        return self.once[base]

    def size_of_input(self, node) -> object:
        return self.g.values[node.inputs[0]].shape[-1]

    def fresh_label(self, base: str) -> str:
        """`base`, or `base2`, `base3`, ...: the first name neither the user nor this output took."""
        label = next(x for x in itertools.chain([base], (f"{base}{k}" for k in itertools.count(2)))
                     if x not in self.taken)
        self.taken.add(label)
        return label

    # -- reading adjoint stages back --------------------------------------------
    def _inline(self, expr: sp.Expr, stop_at_values: bool, keep=()) -> sp.Expr:
        for _ in range(64):
            changed = False
            for ind in sorted(expr.atoms(sp.Indexed), key=str):
                name = str(ind.base.label)
                # into a recurrence: W·Δa in the printout's names (not in the raw derivation)
                if name in self.step_copies and name not in keep and not self.raw_mode:
                    expr = expr.xreplace({ind: self._into_recurrence(name, ind.indices)})
                    changed = True
                    continue
                if name not in self.defs or name in self.signals or name in keep:
                    continue
                if stop_at_values and self._is_node_value(name):
                    continue
                new = self._definition(name, ind.indices)
                if new == ind:
                    continue
                expr = expr.xreplace({ind: new})
                changed = True
            if not changed:
                break
        return expr

    @property
    def step_copies(self) -> dict:
        """Δ of a recurrent node's step-major copy of its input -> the node."""
        if not hasattr(self, "_step_copies"):
            nodes = {n.name for n in self.model.nodes if n.op in ("rnn", "lstm", "gru")}
            self._step_copies = {self.adjoint_of[t.name]: t.label[:-len(".x_steps")]
                                 for t in self.tensors.values() if t.label.endswith(".x_steps")
                                 and t.label[:-len(".x_steps")] in nodes and t.name in self.adjoint_of}
        return self._step_copies

    def recurrences(self) -> dict:
        """Every recurrent node's cell read back in the lecture's indices (`gradrecur`)."""
        if not hasattr(self, "_recurrences"):
            from .gradrecur import Recurrence
            self._recurrences = {n.name: Recurrence(self, n) for n in self.model.nodes
                                 if n.op in ("rnn", "lstm", "gru")}
        return self._recurrences

    def _into_recurrence(self, name: str, indices) -> sp.Expr:
        """Δx_steps[t,n,d] of a recurrent node reading x: Σ_g Σ_j W_g[j,d]·Δa_g[n,t,j], whose
        lines the recursion prints (emitted here if no line printed them yet)."""
        from .gradrecur import j_, k_
        if not self.recurrences_done:
            self.recurrences_done = True
            self.pending += self._recurrence_lines(self._shown)
        up = self.recurrences()[self.step_copies[name]]
        t, n, d = indices
        j = next(self.fresh)
        self.original[j] = j_
        total = sp.Integer(0)
        for g, (a, _) in sorted(up.pre.items()):
            c = up.coefficient(g, "W").xreplace({k_: j})
            delta = sp.IndexedBase(self.fresh_once("Δ" + str(a.base.label)))[n, t, j]
            total += sp.Sum(sp.IndexedBase(up.param("W", g))[j, d] * c * delta, (j, 0, up.H - 1))
        return total

    def _is_node_value(self, grad_name: str) -> bool:
        t = self.tensors[grad_name]
        return t.role == "grad" and t.label[1:] in self.g.values

    def _definition(self, name: str, indices) -> sp.Expr:
        total = sp.Integer(0)
        for (index, body), sizes in zip(self.defs[name], self.def_ranges[name]):
            if not all(isinstance(i, sp.Symbol) or i.is_Integer for i in index):
                gathered = None if self._tiles(name) else self._gather(name, index, body, sizes, indices)
                if gathered is None:
                    return sp.IndexedBase(name)[indices]        # a scatter: keep it named
                total += gathered
                continue
            renames = {}
            for v in sums.sum_vars(body):
                renames[v] = next(self.fresh)
                self.original[renames[v]] = v
            body = body.xreplace(renames)
            subst = {i: v for i, v in zip(index, indices) if isinstance(i, sp.Symbol)}
            total += body.xreplace(subst)
        return self._unpad(total)

    def _tiles(self, name: str) -> bool:
        """A scatter whose windows tile its target (a pool with stride = size): each element
        is written once, so its line reads `Δx[n,c,2·i+p,2·j+q] = ...`."""
        from .derive import _tiles
        return len(self.defs[name]) == 1 and _tiles(self.def_stages[name][0], self.tensors[name])

    def _gather(self, name, index, body, sizes, indices, dry=False):
        """A scatter-add `Δx[n,c,i+p,j+q] += body` read as a gather at `indices` (n,c,h,w):
        the window position whose index has coefficient 1 and that only Δ maps read is solved
        for (`i = h − p`; a Δ map reads zero outside its range), the others stay summed.
        None where some position has no such index (a stride > 1: windows that tile or
        overlap irregularly keep their scatter form)."""
        plan = []
        used = [v for e in index if isinstance(e, sp.Symbol) for v in [e]]
        for pos, e in enumerate(index):
            e = sp.sympify(e)
            if isinstance(e, sp.Symbol) or e.is_Integer:
                continue
            if indirect(e):        # an embedding's row x[n,t]: 𝟙[x[n,t] = v], n and t summed
                vs = index_vars(e)
                if any(v in used for v in vs):
                    return None
                plan.append((pos, e, None, vs))
                used += vs
                continue
            vs = [v for v in e.free_symbols if v in sizes]
            grads = {r: sp.Dummy() for r in body.atoms(sp.Indexed)
                     if self.tensors.get(str(r.base.label)) is not None
                     and self.tensors[str(r.base.label)].role == "grad"}
            outside = body.xreplace(grads).free_symbols
            # solved for, v is bounded only by the Δ it indexes (read as zero outside its map):
            # a window offset that indexes no Δ (an avgpool's p in 2·i + p) stays summed
            in_grads = set().union(*[r.free_symbols for r in grads]) if grads else set()
            ok = [v for v in vs if e.coeff(v) == 1 and v not in outside and v in in_grads
                and not any(v in sp.sympify(o).free_symbols for q, o in enumerate(index) if q != pos)
                and all(c.is_Integer for c in (e.coeff(u) for u in vs))]
            if any(v in used for v in vs):
                return None
            if not ok:            # a stride > 1: the windows that hold this element, 𝟙[2·i+p−1 = h]
                if dry:
                    return None
                plan.append((pos, e, None, vs))
                used += vs
                continue
            v = max(ok, key=lambda v: (int(sizes[v]) if sp.sympify(sizes[v]).is_Integer else 0, str(v)))
            plan.append((pos, e, v, [u for u in vs if u != v]))
            used += vs
        if dry:
            return plan
        self.gathered = True
        renames = {}
        for v in sums.sum_vars(body):
            renames[v] = next(self.fresh)
            self.original[renames[v]] = v
        for _, _, _, others in plan:
            for u in others:
                renames[u] = next(self.fresh)
                self.original[renames[u]] = u
        body = body.xreplace(renames)
        subst = {i: v for i, v in zip(index, indices) if isinstance(i, sp.Symbol)}
        conds = []
        for pos, e, v, others in plan:
            if v is None:
                target = sp.sympify(indices[pos])
                free = sorted(target.free_symbols, key=str)
                shift = target - free[0] if len(free) == 1 and target.coeff(free[0]) == 1 else 0
                conds.append(indicator(sp.expand(e.xreplace(renames) - shift), target - shift))
            else:
                subst[v] = indices[pos] - (e - v).xreplace(renames)
        body = sp.Mul(*conds, body.xreplace(subst))
        for _, _, _, others in plan:
            for u in others:
                body = sums.sum_over(body, renames[u], sizes[u])
        grads = sorted({str(r.base.label) for r in body.atoms(sp.Indexed)
                        if self.tensors.get(str(r.base.label)) is not None
                        and self.tensors[str(r.base.label)].role == "grad"})
        windows = any(not indirect(e) for _, e, _, _ in plan)
        if grads and windows and not self.gathered_noted:
            self.gathered_noted.add(name)
            self.pending.append(Formula("note", sp.Symbol("Δ"), None,
                                        note="(a delta read outside its map is zero: no window output is there)"))
        return body

    def _unpad(self, expr: sp.Expr) -> sp.Expr:
        """A read of a zero-padded copy is a read of the input at the offset: x[n,c,i+p−1,j+q−1]."""
        subs = {}
        for ind in expr.atoms(sp.Indexed):
            name = str(ind.base.label)
            if name in self.pads:
                src, offset = self.pads[name]
                subs[ind] = sp.IndexedBase(src)[tuple(i - o for i, o in zip(ind.indices, offset))]
                if src not in self.padded_noted:
                    self.padded_noted.add(src)
                    label = self.tensor_label(src)
                    self.pending.append(Formula("note", sp.Symbol(label), None,
                                                note=f"({label} is zero outside the image: zero padding)"))
        return expr.xreplace(subs) if subs else expr

    def _restore_names(self, expr: sp.Expr, taken_outside=()) -> sp.Expr:
        """Give each summation index back its natural name where that name is free there."""
        for fresh, orig in self.original.items():
            for s in list(expr.atoms(sp.Sum)):
                if any(lim[0] == fresh for lim in s.limits):
                    taken = {x.name for x in s.free_symbols if isinstance(x, sp.Symbol)}
                    outer = {x.name for x in expr.free_symbols if isinstance(x, sp.Symbol)} | set(taken_outside)
                    name = orig.name.rstrip("'")
                    while name in taken or name in outer or sums.bound_inside(s, name, fresh) \
                            or sums.bound_around(expr, s, name):
                        name = name + "'"
                    expr = expr.xreplace({s: s.xreplace({fresh: sp.Symbol(name, integer=True)})})
        return expr

    # -- index letters ------------------------------------------------------------
    def index_of(self, tensor: str) -> tuple:
        """The lecture's index letters for a tensor (the user's for user-layer parameters)."""
        t = self.tensors[tensor]
        if t.role in ("pgrad", "grad"):
            forward = next((k for k, v in self.adjoint_of.items() if v == tensor), None)
            if forward is not None:
                return self.index_of(forward)
        letters = declared_letters(self.model, t.label, t.role, len(t.shape))
        if not letters and t.role != "param" and len(t.shape) == 4 and t.shape[0] == N and \
                not {"c", "i", "j"} & self.user_names:
            letters = ("c", "i", "j")                       # an image: channel, row, column
        if not letters and t.role != "param" and len(t.shape) in (2, 3) and t.shape[0] == N and \
                is_steps(t.shape[1]) and not {"t", "k"} & self.user_names:
            letters = ("t", "k")[:len(t.shape) - 1]          # a sequence: step, feature
        pool = iter(x for x in "kdijlmrsuvw" if x not in letters and x not in self.user_names)
        out = []
        shown = self.shown_axes(tensor)
        for pos, size in enumerate(t.shape):
            if not shown[pos] or size == 1:
                out.append(sp.Integer(0))
            elif pos == 0 and size == N:
                out.append(sp.Symbol("n", integer=True))
            elif letters and pos - (len(t.shape) - len(letters)) >= 0:
                out.append(sp.Symbol(letters[pos - (len(t.shape) - len(letters))], integer=True))
            else:
                out.append(sp.Symbol(next(pool), integer=True))
        return tuple(out)

    def shown_axes(self, tensor: str) -> list[bool]:
        shape = self.tensors[tensor].shape
        if len(shape) >= 3:
            return [True] * len(shape)
        return [size != 1 for size in shape]

    # -- rewriting into the user's names ----------------------------------------
    def display(self, expr: sp.Expr, taken=()) -> sp.Expr:
        expr = exact_numbers(expr)
        expr = self._named_patterns(expr)
        expr = self._restore_names(expr, taken)
        expr = sums.merge_where(expr)
        expr = sums.drop_zero_sums(expr, self._forward_value)
        expr = sums.merge_equal_sums(expr)
        expr = sums.simplify(expr)
        expr = self._relabel(expr)
        return expr

    def _forward_value(self, ind: sp.Indexed):
        """A forward tensor's formula at `ind` (internal names), or None for a leaf (an input,
        a parameter, a Δ): what `sums.is_zero_sum` writes out."""
        s = self.forward.get(str(ind.base.label))
        if s is None or not s.plain or s.reduce not in (None, "sum") or self.tensors[s.out].role != "value":
            return None
        if not all(isinstance(i, sp.Symbol) for i in s.index):
            return None                 # a stage of some positions only (a scan's first state)
        subst = {i: v for i, v in zip(s.index, ind.indices) if isinstance(i, sp.Symbol)}
        body = sums.as_forward(s)
        renames = {v: next(self.fresh) for v in sums.sum_vars(body)}
        return body.xreplace(renames).xreplace(subst)

    def _named_patterns(self, expr: sp.Expr) -> sp.Expr:
        # one-hot of class labels -> 𝟙[k = label[n]], and Σ_k 𝟙[k = label[n]] -> 1
        for ind in list(expr.atoms(sp.Indexed)):
            s = self.special.get(str(ind.base.label))
            if s is not None and s.kind == "onehot":
                labels = sp.IndexedBase(s.attrs["labels"])[ind.indices[:-1]]     # [n] or [n,t]
                expr = expr.xreplace({ind: indicator(ind.indices[-1], labels)})
        expr = expr.replace(lambda e: isinstance(e, sp.Sum), sums.sum_of_indicator)
        # a max's adjoint goes to the stored first arg-max: 𝟙[2·p+q = argmax_p[n,c,i,j]]
        expr = expr.replace(lambda e: isinstance(e, fn.eq), lambda e: indicator(*e.args))
        # exp(o[n,k] − lse[n]) with lse = log Σ_k exp(o) -> p[n,k] = softmax(o)
        for e in list(expr.atoms(sp.exp)):
            replaced = self._softmax(e)
            if replaced is not None:
                expr = expr.xreplace({e: replaced})
        # noise, through forward values where a formula gives it, else named
        for ind in list(expr.atoms(sp.Indexed)):
            s = self.special.get(str(ind.base.label))
            if s is not None and s.kind == "draw":
                expr = expr.xreplace({ind: self._noise(ind)})
        # step(pre-activation) of a relu-type layer is step(the layer's value); F -> value
        expr = self._through_values(expr)
        # (defined in the order they are computed: mean, xc, var, rstd of a normalisation)
        for ind in sorted(expr.atoms(sp.Indexed), key=lambda i: (self.order.get(str(i.base.label), 1 << 30), str(i))):
            name = str(ind.base.label)
            if name in self.tensors and name not in self.defs and not name.startswith("d_") \
                    and self.names.label(name) is None and name not in self.aux:
                self._define_aux(name)
        return expr

    def _softmax(self, e: sp.exp):
        for term in sp.Add.make_args(e.args[0]):
            if not (term.is_Mul and term.args[0] == -1 and isinstance(term.args[1], sp.Indexed)):
                continue
            lse = term.args[1]
            s = self.forward.get(str(lse.base.label))
            if s is None or s.reduce != "logsumexp":
                continue
            logits = sp.expand(e.args[0] + lse)
            if not isinstance(logits, sp.Indexed):
                continue
            name = str(logits.base.label)
            value = self._softmax_node(name, str(lse.base.label))
            if value is not None:                  # `act=softmax`: the node itself is p
                return sp.IndexedBase(value)[logits.indices]
            if name not in self.softmax:
                self._define_softmax(name, s)
            return sp.IndexedBase(self.softmax[name])[logits.indices]
        return None

    def _softmax_node(self, logits: str, lse: str) -> str | None:
        """The node whose value is exp(logits − lse) (a layer with `act=softmax`), if any."""
        for s in self.forward.values():
            if s.reduce is None and isinstance(s.expr, sp.exp) and self.names.label(s.out) and \
                    sorted(a.tensor for a in s.accesses) == sorted((logits, lse)):
                return s.out
        return None

    def _define_softmax(self, logits: str, lse_stage: Stage):
        label = self.fresh_label("p")
        self.softmax[logits] = label
        index = self.index_of(logits)            # [n,k], or [n,t,k] per step
        k = index[-1]                            # 0 for a softmax over one unit (axis not shown)
        j = sp.Symbol((k.name if isinstance(k, sp.Symbol) else "k") + "'", integer=True)
        size = self.tensors[logits].shape[-1]
        base = sp.IndexedBase(logits)
        rhs = sp.exp(base[index]) / sp.Sum(sp.exp(base[index[:-1] + (j,)]), (j, 0, size - 1))
        lhs = sp.IndexedBase(label)[index]
        self.pending.append(Formula("define", lhs, rhs, note=f"{label} = softmax({self.names.label(logits)})"))

    def _noise(self, ind: sp.Indexed) -> sp.Expr:
        name = str(ind.base.label)
        # z = mu + exp(logvar/2)·ε  gives  ε = (z − mu)·exp(−logvar/2)
        for s in self.forward.values():
            sym = next((a.symbol for a in s.accesses if a.tensor == name), None)
            if sym is None or s.reduce is not None or not self.names.label(s.out):
                continue
            coeff = sp.diff(s.expr, sym)
            rest = sp.expand(s.expr - coeff * sym)
            if sp.diff(coeff, sym) == 0 and coeff.has(sp.exp) and all(
                    a.index == s.index for a in s.accesses):
                back = {a.symbol: sp.IndexedBase(a.tensor)[ind.indices] for a in s.accesses}
                back[sp.Symbol("__out")] = sp.IndexedBase(s.out)[ind.indices]
                return ((sp.Symbol("__out") - rest) / coeff).xreplace(back)
        if name not in self.noise_names:
            s = self.special[name]
            letter = "ε" if s.attrs.get("dist") == "normal" else "m"
            label = self.fresh_label(letter)
            self.noise_names[name] = label
            owner = self.names.label(next((x.out for x in self.forward.values()
                                           if any(a.tensor == name for a in x.accesses)), name)) or name
            keep = _keep(s)
            value = "1" if float(s.attrs.get("scale", 1.0)) == 1.0 else f"1/{keep}"
            kind = "dropout mask" if value != "1" else "masking noise"
            what = ("~ N(0, 1), the noise of " + owner) if letter == "ε" else \
                f"{value} with probability {keep}, else 0 (the {kind} of {owner})"
            lhs = sp.IndexedBase(label)[self.index_of(name)]
            self.pending.append(Formula("note", lhs, None, note=what))
        return sp.IndexedBase("__noise_" + self.noise_names[name])[ind.indices]

    def _through_values(self, expr: sp.Expr) -> sp.Expr:
        for s in self.forward.values():
            label = self.names.label(s.out)
            if label is None or s.reduce is not None or s.expr.is_Atom:
                continue
            wild = {v: sp.Wild(f"w_{v}") for v, _ in s.ranges}
            body = s.expr.xreplace({a.symbol: sp.IndexedBase(a.tensor)[a.index] for a in s.accesses})
            value = sp.IndexedBase(s.out)[s.index]
            pattern, target = body.xreplace(wild), value.xreplace(wild)
            kinks = (fn.relu, fn.leaky_relu, fn.elu)
            if isinstance(body, kinks):
                inner = body.args[0].xreplace(wild)
                expr = expr.replace(fn.step(inner), fn.step(target))
            if not isinstance(body, sp.Indexed):
                expr = expr.replace(pattern, target)
        return expr

    def _define_aux(self, name: str):
        """An internal forward tensor the formulas need: named and defined once."""
        t = self.tensors[name]
        node, _, part = t.label.rpartition(".")
        node_label = self.names.node_label(node) if node else t.label
        label = self.fresh_label(f"{part.rstrip('0123456789') or 'a'}_{node_label}")
        self.aux[name] = label
        s = self.forward.get(name)
        if s is None:
            return
        index = self.index_of(name)
        if s.reduce == "argmax":
            subst = {i: v for i, v in zip(s.index, index) if isinstance(i, sp.Symbol)}
            window = self._relabel(sums.as_sum_body(s).xreplace(subst))
            from .notation import text
            what = ", ".join(str(v) for v in s.reduce_vars)
            self.pending.append(Formula("note", sp.IndexedBase(name)[index], None, note=(
                f"the position {text(s.reduced_position)} of the first maximum of {text(window)} "
                f"over {what} (ties: the first)")))
            return
        # a read of a zero-padded copy is the input at the offset (not a tensor of its own)
        body = self._unpad(self._inline_internal(_forward_at(s, index)))
        body = body.replace(lambda e: isinstance(e, fn.rsqrt), lambda e: 1 / sp.sqrt(e.args[0]))
        rhs = self._named_patterns(body)
        self.pending.append(Formula("define", sp.IndexedBase(name)[index], rhs))

    def _inline_internal(self, expr: sp.Expr) -> sp.Expr:
        """Internal forward tensors inside a definition by their own formulas (`a_h = Σ_d W·x + b`)."""
        for _ in range(16):
            internal = [i for i in expr.atoms(sp.Indexed) if str(i.base.label) in self.forward
                        and self.names.label(str(i.base.label)) is None
                        and self.forward[str(i.base.label)].plain
                        and not self.forward[str(i.base.label)].attrs.get("named")]
            if not internal:
                return expr
            for ind in internal:
                expr = expr.xreplace({ind: _forward_at(self.forward[str(ind.base.label)], ind.indices)})
        return expr

    def _relabel(self, expr: sp.Expr) -> sp.Expr:
        subs = {}
        for ind in expr.atoms(sp.Indexed):
            subs[ind] = self.access(str(ind.base.label), ind.indices)
        return expr.xreplace(subs)

    def access(self, tensor: str, indices) -> sp.Expr:
        """A display access: the tensor's printed label with its shown indices."""
        if tensor.startswith("__noise_"):
            label, shown = tensor[len("__noise_"):], [True] * len(indices)
        elif tensor in self.tensors:
            label = self.tensor_label(tensor)
            shown = self.shown_axes(tensor)
        else:                                            # a quantity this view defined (p)
            label, shown = tensor, [True] * len(indices)
        kept = [i for i, keep in zip(indices, shown) if keep]
        return sp.IndexedBase(label)[tuple(kept)] if kept else sp.Symbol(label)

    def tensor_label(self, tensor: str) -> str:
        if tensor in self.signals:
            return self.signals[tensor][0]
        if tensor in self.aux:
            return self.aux[tensor]
        if tensor in self.noise_names:
            return self.noise_names[tensor]
        t = self.tensors[tensor]
        if t.role in ("grad", "pgrad"):
            forward = next((k for k, v in self.adjoint_of.items() if v == tensor), None)
            return "Δ" + (self.tensor_label(forward) if forward else t.label[1:])
        return self.names.label(tensor) or t.label

    # -- the lines ------------------------------------------------------------------
    def formulas(self, only: str | None) -> LossFormulas:
        lines: list[Formula] = []
        shown: set[str] = set()
        self._shown = shown

        def emit(f: Formula):
            lines.extend(self.pending)
            self.pending.clear()
            lines.append(f)

        for grad, (sig, node) in self.signals.items():
            index = self.index_of(grad)
            defn = self._inline(self._definition(grad, index), True)
            deltas = self._deltas_used(defn, shown)
            rhs = self.display(defn, _names(index))
            lines.extend(self.pending)
            self.pending.clear()
            lines.extend(deltas)
            emit(Formula("signal", self.access(grad, index), rhs,
                         partial=self.access(self.g.values[node].name, index)))
        for prm in self.model.params:
            if prm.name not in self.loss.wrt or (only is not None and prm.name != only):
                continue
            tensor = self.g.params[prm.name].name
            grad = self.adjoint_of.get(tensor)
            index = self.index_of(tensor)
            partial = self.access(tensor, index)
            owner = next((n for n in self.model.nodes if n.op in ("rnn", "lstm", "gru")
                          and prm.name in n.params.values()), None)
            if owner is not None:
                if True:
                    # summed over the steps (BPTT): the per-step recursion, once per model
                    if not self.recurrences_done:
                        self.recurrences_done = True
                        for f in self._recurrence_lines(shown):
                            emit(f)
                    emit(self.bptt[prm.name])
                    continue
            if grad not in self.defs:
                emit(Formula("zero", self.access(tensor, index), sp.Integer(0), partial=partial))
                continue
            # a Δ already printed is used again (a layer's W and b stop at the same Δ)
            self.gathered = False
            expr = self._inline(self._definition(grad, index), False, keep=shown)
            scatters = [i for i in expr.atoms(sp.Indexed) if str(i.base.label) in self.defs
                        and str(i.base.label) not in self.signals and str(i.base.label) not in shown]
            # through a convolution's input (a gathered window) or a pool's scatter: stop at Δ
            if sums.factor_count(expr) > _MAX_INLINE or self.gathered or scatters:
                expr = self._inline(self._definition(grad, index), True)
                for f in self._deltas_used(expr, shown):
                    lines.extend(self.pending)
                    self.pending.clear()
                    lines.append(f)
            emit(Formula("param", self.access(tensor, index), self.display(expr, _names(index)),
                         partial=partial, raw=self._inline_everything(grad, index)))
        lines.extend(self.pending)
        lines = [self._finish(f) for f in lines]
        if only is not None:
            lines = _needed(lines)
        defined = {str(_label_of(f.lhs)) for f in lines if f.kind in ("define", "signal", "delta", "note")}
        ints = {self.names.label(t.name) or t.label for t in self.tensors.values() if t.dtype == "int"}
        updates = [p.name for p in self.model.params if p.name in self.loss.wrt]
        order = sorted(self.order, key=self.order.get)
        order = [self.tensor_label(t) if t in self.tensors else t for t in order]
        tensor_of = {self.tensor_label(t): (t, self.shown_axes(t)) for t in self.order   # this loss's
                     if self.tensors[t].role not in ("grad", "pgrad")}
        forward = {t: (s.index, sums.as_forward(s)) for t, s in self.forward.items() if s.plain}
        for t, s in self.special.items():
            if s.kind == "onehot":
                forward[t] = (s.index, indicator(s.index[-1], sp.IndexedBase(s.attrs["labels"])[s.index[:-1]]))
        return LossFormulas(self.loss.name, updates, lines, defined, ints, order, tensor_of, forward)

    def _inline_everything(self, grad: str, index) -> sp.Expr:
        saved, self.signals, self.raw_mode = self.signals, {}, True
        try:
            return self._inline(self._definition(grad, index), False)
        finally:
            self.signals, self.raw_mode = saved, False

    def _finish(self, f: Formula) -> Formula:
        """Definitions were collected over internal names: relabel their two sides."""
        if f.kind in ("define", "note") and not f.ready:
            index = f.lhs.indices if isinstance(f.lhs, sp.Indexed) else ()
            name = str(_label_of(f.lhs))
            if name in self.tensors:
                f.lhs = self.access(name, index)
            if f.rhs is not None:
                f.rhs = sums.simplify(self._relabel(exact_numbers(self._restore_names(f.rhs, _names(index)))))
        f.sizes = sums.sum_sizes(f.rhs) if f.rhs is not None else {}
        return f

    def _recurrence_lines(self, shown: set) -> list[Formula]:
        """Every recurrent node's BPTT recursion (top layer first: a layer's Δh reads the
        Δa of the layer above) and its parameters' lines into `self.bptt`."""
        from .gradrecur import T_, d_, j_, k_, n_
        from .notation import text
        nodes = [n for n in self.model.nodes if n.op in ("rnn", "lstm", "gru")]
        recs = self.recurrences()
        named = {}
        for r in recs.values():
            for lhs, _ in r.exprs:
                label = str(lhs.base.label)
                if label == r.node.name or label.startswith("C_"):
                    named[label] = self.fresh_once("Δ" + label)
            for g, (a, _) in r.pre.items():
                named[str(a.base.label)] = self.fresh_once("Δ" + str(a.base.label))
        lines, self.bptt = [], {}
        tidy = lambda e: sums.simplify(exact_numbers(e))                       # noqa: E731
        for node in reversed(nodes):
            r = recs[node.name]
            consumers = [m for m in self.model.nodes if node.name in m.inputs]
            above = sp.Integer(0)
            for m in consumers:
                if m.name in recs:              # the layer above's W·x[t]: Σ_g Σ_j W_g[j,k]·Δa_g[n,t,j]
                    up = recs[m.name]
                    for g, (a, _) in sorted(up.pre.items()):
                        c = up.coefficient(g, "W").xreplace({k_: j_})
                        above += sp.Sum(sp.IndexedBase(up.param("W", g))[j_, k_] * c *
                                        sp.IndexedBase(named[str(a.base.label)])[n_, T_, j_], (j_, 0, up.H - 1))
            value = self.g.values[node.name].name
            grad = self.adjoint_of.get(value)
            operands = {a for t in self.loss.terms for a in t.args if isinstance(a, str)}
            if grad in self.defs and (any(m.name not in recs for m in consumers) or node.name in operands):
                last = node.attrs.get("return", "all") != "all"
                index = (n_, k_) if last else (n_, T_, k_)
                # a recurrent consumer's part is its Σ_j W·Δa above, not its step-major copy's Δ
                copies = {self.adjoint_of.get(t.name) for t in self.tensors.values()
                          if t.label in {f"{m.name}.x_steps" for m in consumers if m.name in recs}}
                expr = self._inline(self._definition(grad, index), True, keep=copies)
                expr = expr.xreplace({i: sp.Integer(0) for i in expr.atoms(sp.Indexed)
                                      if str(i.base.label) in copies})
                lines += self._deltas_used(expr, shown)
                shown_expr = self.display(expr, {"n", "t", "k"})
                lines += self.pending
                self.pending.clear()
                if last:
                    steps = self.g.values[node.inputs[0]].shape[1]
                    shown_expr = indicator(T_, steps - 1) * shown_expr
                above += shown_expr
            h = node.name
            steps = self.g.values[node.inputs[0]].shape[1]
            last = f"; {h}[n,k] = {text(sp.IndexedBase(h)[n_, steps - 1, k_])}" if node.attrs.get("return", "all") != "all" else ""
            lines.append(Formula("note", sp.Symbol(h), None, note=(
                f"({h}[n,−1,k] = 0, the initial state; a Δ at step {text(steps)} is 0{last}; "
                "every sequence runs all its steps)"), ready=True))
            for g, (a, _) in sorted(r.pre.items()):
                lhs, rhs = r.argument(g)
                lines.append(Formula("define", lhs, tidy(rhs), ready=True))
            for lhs, expr in r.exprs:
                if str(lhs.base.label) == h:
                    lines.append(Formula("note", lhs, None, note=f"= {text(expr)}, the state after step t", ready=True,
                                         value=tidy(expr)))
                else:
                    lines.append(Formula("define", lhs, tidy(expr), ready=True))
            values, pre, states = r.deltas(above, named)
            for lhs, _ in reversed(r.exprs):
                label = str(lhs.base.label)
                if label in named:
                    lines.append(Formula("delta", sp.IndexedBase(named[label])[n_, T_, k_], tidy(values[label]),
                                         partial=lhs))
            for a_label, expr in pre.items():
                a = sp.IndexedBase(a_label)[n_, T_, k_]
                lines.append(Formula("delta", sp.IndexedBase(named[a_label])[n_, T_, k_], tidy(expr), partial=a))
            steps = self.g.values[node.inputs[0]].shape[1]
            for g, (a, _) in sorted(r.pre.items()):
                Da = sp.IndexedBase(named[str(a.base.label)])[n_, T_, k_]
                parts = {"W": (r.coefficient(g, "W") * Da * sp.IndexedBase(r.x)[n_, T_, d_], (k_, d_)),
                         "U": (r.coefficient(g, "U") * Da * sp.IndexedBase(h)[n_, T_ - 1, j_], (k_, j_)),
                         "b": (r.coefficient(g, "b") * Da, (k_,))}
                for local, (body, index) in parts.items():
                    pname = r.param(local, g)
                    rhs = sp.Sum(body, (T_, 0, steps - 1), (n_, 0, N - 1))
                    lhs = sp.IndexedBase(pname)[index]
                    self.bptt[pname] = Formula("param", lhs, tidy(rhs), partial=lhs)
        return lines

    def _tile_line(self, name: str, shown: set) -> list[Formula]:
        """`Δc[n,c,2·i+p,2·j+q] = 𝟙[2·p+q = argmax_p[n,c,i,j]]·Δp[n,c,i,j]`: a pool's windows
        tile its input, so its adjoint is written once per element, in the window's indices."""
        (index, body), = self.defs[name]
        node = next(k for k, v in self.adjoint_of.items() if v == name)
        want = self.index_of(name)
        letters = {}
        pool = iter(x for x in "pqrsuv" if x not in self.user_names)
        for e, w in zip(index, want):
            if isinstance(e, sp.Symbol):
                letters[e] = w
        for v in sorted(set().union(*[sp.sympify(e).free_symbols for e in index]) - set(letters), key=str):
            taken = {str(x) for x in letters.values()}
            letters[v] = v if v.name not in taken and v.name not in self.user_names else \
                sp.Symbol(next(x for x in pool if x not in taken), integer=True)
        for v in sums.sum_vars(body):
            letters[v] = next(self.fresh)
            self.original[letters[v]] = v
        lhs = tuple(sp.sympify(e).xreplace(letters) for e in index)
        rhs = self._inline(self._unpad(body.xreplace(letters)), True)
        lines = self._deltas_used(rhs, shown)
        rhs = self.display(rhs, _names(lhs) | {str(x) for e in lhs for x in sp.sympify(e).free_symbols})
        lines += self.pending
        self.pending.clear()
        lines.append(Formula("delta", self.access(name, lhs), rhs, partial=self.access(node, lhs)))
        return lines

    def _deltas_used(self, expr, shown: set) -> list[Formula]:
        """Definition lines of the layer adjoints (Δh) a formula stopped at, innermost last."""
        lines = []
        for ind in sorted(expr.atoms(sp.Indexed), key=str):
            name = str(ind.base.label)
            if name in shown or name not in self.defs or name in self.signals:
                continue
            shown.add(name)
            index = self.index_of(name)
            if self._tiles(name):
                lines += self._tile_line(name, shown)
                continue
            defn = self._inline(self._definition(name, index), True)
            lines += self._deltas_used(defn, shown)
            node = next(k for k, v in self.adjoint_of.items() if v == name)
            rhs = self.display(defn, _names(index))
            lines += self.pending
            self.pending.clear()
            lines.append(Formula("delta", self.access(name, index), rhs,
                                 partial=self.access(node, index)))
        return lines


# ------------------------------------------------------------------ helpers
def _forward_at(s: Stage, indices) -> sp.Expr:
    """A forward stage's value at `indices`, its Σ indices renamed apart from the free ones
    there (a conv's Σ_c over input channels read at output channel `c`: Σ_c' W[c,c',p,q]·…)."""
    value = sums.as_forward(s)
    taken = {x for i in indices for x in sp.sympify(i).free_symbols} | {v for v, _ in s.ranges}
    for v in s.reduce_vars:
        if any(x.name == v.name for x in taken if x != v) or v in {x for i in indices
                                                                   for x in sp.sympify(i).free_symbols}:
            new = sp.Symbol(v.name + "'", integer=True)
            while any(x.name == new.name for x in taken):
                new = sp.Symbol(new.name + "'", integer=True)
            taken.add(new)
            value = value.xreplace({v: new})
    return value.xreplace({i: v for i, v in zip(s.index, indices) if isinstance(i, sp.Symbol)})


def _needed(lines: list[Formula]) -> list[Formula]:
    """The parameter lines and, transitively, the definitions they use (`--param`)."""
    def used(f):
        names = set() if f.rhs is None else \
            {str(i.base.label) for i in f.rhs.atoms(sp.Indexed)} | {str(x) for x in f.rhs.free_symbols}
        return names
    need = set().union(*[used(f) for f in lines if f.kind in ("param", "zero")])
    keep = []
    for f in reversed(lines):
        if f.kind in ("param", "zero") or _label_of(f.lhs) in need:
            keep.append(f)
            need |= used(f)
    return keep[::-1]


def _names(index) -> set[str]:
    return {str(i) for i in index if isinstance(i, sp.Symbol)}


def _label_of(access) -> str:
    return str(access.base.label) if isinstance(access, sp.Indexed) else str(access)


def _keep(s: Stage) -> str:
    return _num(1 - float(s.attrs.get("p", 0.0)))


def _num(x: float) -> str:
    return f"{x:.4g}"
