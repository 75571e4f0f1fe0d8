"""The per-step recursion of backpropagation through time, for `nndsl grad`.

A recurrent layer's cell is written once as index formulas over step views
(`recurrent.py`); its adjoint in `derive` runs backwards over the steps and
hoists the parameter gradients into sums over all steps.  For the printout the
cell's stages are read back in the lecture's indices: a step view of a sequence
becomes `h[n,t−1,k]` (the previous state), `i_h[n,t,k]` (a gate at step t), the
input projections `W·x_t + U·h_(t−1) + b` of gate g its pre-activation `a_g` (the
biases and W·x_t are added for all steps before the loop, U·h_(t−1) onto them per step),
and sympy differentiates those formulas for the recursion:

    Δh[n,t,k] = (∂L/∂h[n,t,k] from the layer above) + Σ_j U[j,k]·Δa[n,t+1,j]
    Δa[n,t,k] = (1 − h[n,t,k]²)·Δh[n,t,k]
    ∂L/∂U[k,j] = Σ_n Σ_t Δa[n,t,k]·h[n,t−1,j]

(an lstm adds ΔC and one Δa per gate; a gru's candidate reads r·(U_h·h)).
Every partial derivative is `sympy.diff` of the cell's formulas; nothing here
knows which layer it prints.
"""
from __future__ import annotations

import sympy as sp


T_ = sp.Symbol("t", integer=True)
n_, k_, j_, d_ = (sp.Symbol(c, integer=True) for c in "nkjd")
kp_ = sp.Symbol("k'", integer=True)


class Recurrence:
    """The display formulas of one recurrent node's cell, and their derivatives."""

    def __init__(self, view, node):
        self.view, self.node = view, node
        name = node.name
        self.gates = _gate_suffixes(node)
        self.H = int(node.attrs["hidden"])
        self.stages = [s for s in view.all_stages if s.attrs and getattr(s.attrs.get("scan"), "id", None) == name]
        self.proj = {s.out for s in self.stages if s.accumulate or view.tensors[s.out].label.startswith(name + ".Uh")}
        self.cell = [s for s in self.stages if s.out not in self.proj]
        self.accumulated = any(s.accumulate for s in self.stages)      # rnn, lstm: U·h is inside xW
        self.x = node.inputs[0]
        self.out = {}             # stage out -> display access at step t
        self.exprs = []           # (display access, display expression over a_g, values, states)
        self.pre = {}             # gate number -> (a_g access, its argument over §xW/§Uh)
        for s in self.cell:
            lhs = self._access(s.out, s.index)
            self.out[s.out] = lhs
        self.weights = {}         # a reduced value (a softmax's lse[n,t]) -> ∂value/∂a[n,t,k]
        for s in self.cell:
            body = s.expr.xreplace({a.symbol: self._access(a.tensor, a.index) for a in s.accesses})
            body = body.xreplace({m: 1 for m in body.atoms(sp.Indexed) if str(m.base.label).startswith("§mask")})
            body = self._pre_activations(body)
            if s.reduce == "logsumexp":         # rnn act=softmax: lse[n,t] = log Σ_k' exp(a[n,t,k'])
                lhs = self.out[s.out]
                self.weights[str(lhs.base.label)] = sp.exp(body - lhs)
                body = sp.log(sp.Sum(sp.exp(body.xreplace({k_: kp_})), (kp_, 0, self.H - 1)))
            elif s.reduce is not None:
                raise ValueError(f"{s.note}: a reduction in a recurrent cell")
            self.exprs.append((self.out[s.out], body))

    # -- reading the stages in the lecture's indices -------------------------------
    def _access(self, tensor: str, index):
        t = self.view.tensors[tensor]
        if t.role == "param":                      # stacked: the gate's own parameter
            off = sp.expand(index[0] - k_) if index[0] != k_ else 0
            g = int(off) // self.H if index[0].has(k_) else 0
            local = t.label.rpartition(".")[2].split("_")[0]
            return sp.IndexedBase(self.node.params[local + self.gates[g]])[k_]
        seq = self.view.tensors[t.view[0]]
        what = seq.label[len(self.node.name) + 1:]
        shift = t.view[1]
        if what in ("xW", "Uh"):
            g = int(sp.expand(index[1] - k_)) // self.H
            return sp.IndexedBase(f"§{what}")[g, n_, T_, k_]
        if what == "mask":
            return sp.IndexedBase("§mask")[n_, T_]
        if what in ("h", "C"):                     # slot 0 is the initial state: h[n,−1] = 0
            label = self.node.name if what == "h" else self.view.fresh_once(f"C_{self.node.name}")
            return sp.IndexedBase(label)[n_, T_ + shift - 1, k_]
        label = self.view.fresh_once(f"{what}_{self.node.name}")
        if what == "lse":                          # one value per example and step (a softmax's)
            return sp.IndexedBase(label)[n_, T_ + shift]
        return sp.IndexedBase(label)[n_, T_ + shift, k_]

    def _pre_activations(self, body):
        """Gate g's pre-activation `a_g` is the smallest part of a formula that holds all of
        its projections: the argument of tanh or σ (W·x_t + U·h_(t−1) + b; a gru's candidate
        W_h·x_t + r⊙(U_h·h_(t−1)) + b_h), and of any activation, a user's or identity."""
        gates: dict = {}
        for i in body.atoms(sp.Indexed):
            if str(i.base.label) in ("§xW", "§Uh"):
                gates.setdefault(int(i.indices[0]), set()).add(i)
        for g, proj in sorted(gates.items()):
            if g in self.pre:                       # read again (a softmax's h after its lse)
                body = body.xreplace({self.pre[g][1]: self.pre[g][0]})
                continue
            arg = body
            while True:
                inner = next((x for x in arg.args if all(x.has(p) for p in proj)), None)
                if inner is None:
                    break
                arg = inner
            suffix = self.gates[g].lstrip("_")
            label = self.view.fresh_once(f"a_{suffix}_{self.node.name}" if suffix else f"a_{self.node.name}")
            a = sp.IndexedBase(label)[n_, T_, k_]
            self.pre[g] = (a, arg)
            body = body.xreplace({arg: a})
        return body

    def param(self, local: str, g: int):
        return self.node.params[local + self.gates[g]]

    # -- the projections of a_g ------------------------------------------------------
    def projection(self, g: int, what: str):
        """b_g + W_g·x[n,t] or U_g·h[n,t−1] as display sums: recurrent.py adds the biases
        to xW before the loop, and for rnn and lstm U·h onto it at each step."""
        if what == "§xW":
            Wx = sp.Sum(sp.IndexedBase(self.param("W", g))[k_, d_] * sp.IndexedBase(self.x)[n_, T_, d_],
                        (d_, 0, self.view.size_of_input(self.node) - 1))
            b = sp.IndexedBase(self.param("b", g))[k_]
            return b + Wx + (self.projection(g, "§Uh") if self.accumulated else 0)
        return sp.Sum(sp.IndexedBase(self.param("U", g))[k_, j_] *
                      sp.IndexedBase(self.node.name)[n_, T_ - 1, j_], (j_, 0, self.H - 1))

    def coefficient(self, g: int, what: str):
        """∂a_g/∂(its W·x, U·h or b part), by sympy: b is inside xW, with W·x."""
        a, arg = self.pre[g]
        if what == "b" or (what == "U" and self.accumulated):
            what = "W"
        sym = sp.IndexedBase("§xW" if what == "W" else "§Uh")[g, n_, T_, k_]
        return sp.diff(arg, sym)

    def argument(self, g: int):
        """a_g's definition over the user's names."""
        a, arg = self.pre[g]
        subs = {i: self.projection(g, str(i.base.label)) for i in arg.atoms(sp.Indexed)
                if str(i.base.label) in ("§xW", "§Uh")}
        return a, arg.xreplace(subs)

    # -- the recursion -------------------------------------------------------------
    def deltas(self, above, named):
        """Δ of every cell value at step t: the states and gate pre-activations named
        (`named`: display label -> Δ label), the rest substituted. `above` is ∂L/∂h[n,t,k]
        from the layers above."""
        out = {}
        states = {str(lhs.base.label) for lhs, _ in self.exprs
                  if any(str(i.base.label) == str(lhs.base.label) and i.indices[1] == T_ - 1
                         for _, e in self.exprs for i in e.atoms(sp.Indexed))}

        def delta_of(label):                                  # the Δ symbol of a named value
            return sp.IndexedBase(named[label])

        def value_delta(label):
            if label in named:
                return delta_of(label)[n_, T_, k_]
            return out[label]

        h = self.node.name
        for lhs, _ in reversed(self.exprs):
            label = str(lhs.base.label)
            total = above if label == h else sp.Integer(0)
            for olhs, expr in self.exprs:
                olabel = str(olhs.base.label)
                here = sp.IndexedBase(label)[n_, T_, k_]
                prev = sp.IndexedBase(label)[n_, T_ - 1, k_]
                if len(lhs.indices) == 2:     # lse[n,t]: read by every unit k, Σ_k' of their Δ
                    if expr.has(lhs) and olabel != label:
                        d = _through_output(sp.diff(expr, lhs), expr, olhs) * value_delta(olabel)
                        total += sp.Sum(d.xreplace({k_: kp_}), (kp_, 0, self.H - 1))
                    continue
                if expr.has(here) and olabel != label:
                    total += sp.diff(expr, here) * value_delta(olabel)
                if label in states and expr.has(prev):    # read at step t + 1
                    total += (sp.diff(expr, prev) * value_delta(olabel)).xreplace({T_: T_ + 1})
            for g, (a, _) in sorted(self.pre.items()):         # read inside a pre-activation (a gru's r)
                arg = self.argument(g)[1]
                here = sp.IndexedBase(label)[n_, T_, k_]
                if arg.has(here):
                    d = sp.diff(arg, here).replace(lambda e: isinstance(e, sp.Sum) and e.function == 0,
                                                   lambda e: sp.Integer(0))
                    total += d * sp.IndexedBase(named[str(a.base.label)])[n_, T_, k_]
            if label == h:                                    # through U·h of step t + 1
                for g, (a, _) in sorted(self.pre.items()):
                    c = self.coefficient(g, "U").xreplace({T_: T_ + 1, k_: j_})
                    total += sp.Sum(sp.IndexedBase(self.param("U", g))[j_, k_] * c *
                                    sp.IndexedBase(named[str(a.base.label)])[n_, T_ + 1, j_], (j_, 0, self.H - 1))
            out[label] = total
        pre = {}
        for g, (a, _) in sorted(self.pre.items()):
            total = sp.Integer(0)
            for olhs, expr in self.exprs:
                olabel = str(olhs.base.label)
                if olabel in self.weights:    # log-sum-exp: ∂lse[n,t]/∂a[n,t,k] = exp(a − lse)
                    d = self.weights[olabel]
                    for vlhs, vexpr in self.exprs:             # = the softmax's value h
                        d = _through_output(d, vexpr, vlhs) if vexpr == d else d
                    total += d * value_delta(olabel)
                elif expr.has(a):
                    d = sp.diff(expr, a)
                    d = _through_output(d, expr, olhs)
                    total += d * value_delta(olabel)
            pre[str(a.base.label)] = total
        return out, pre, states


def _through_output(d, expr, out):
    """σ'(a) as i(1 − i), tanh'(a) as 1 − h²: sympy's derivative through the value itself."""
    if isinstance(expr, sp.Function) and len(expr.args) == 1:
        return d.xreplace({expr: out})
    return d


def _gate_suffixes(node):
    from .recurrent import GATES
    return GATES[node.op]
