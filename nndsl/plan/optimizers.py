"""Optimiser updates, written once as rules that every target prints.

An update first sums the squared gradient over its loss's parameter ranges: a non-finite
loss or gradient leaves the parameters at their last finite values, and `clip_norm > 0`
rescales the gradient to that norm. Then, for every element of those ranges, the rule's
`element` lines run with `g` the (clipped) gradient, `p` the parameter and `s1`, `s2` its
two slots of optimiser state (read and written in place); `setup` lines run once per
update, over `lr`, the step count `t` and the hyperparameters. A renderer substitutes its
own element references for `p`, `s1`, `s2` (`render/numba_cpu.py`: slices of one range at a
time, loops LLVM vectorises; `render/numba_cuda.py`: a grid-stride loop) and writes the
norm, the finite check and the clip around them.

Adding an optimiser: its rule here, its arguments and their ranges in
`frontend/builtins.py`, its reference formula in `tests/test_optimizers.py`.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Rule:
    hyper: tuple            # hyperparameter names, the update's arguments after clip_norm
    setup: tuple            # lines once per update
    element: tuple          # lines per element (`g`, `p`, `s1`, `s2`)


RULES = {
    "sgd": Rule((), (), ("p -= lr * g",)),
    # heavy-ball momentum; Nesterov's step looks ahead along the new velocity
    "momentum": Rule(("momentum",), ("mu = F(momentum)",),
                     ("s1 = mu * s1 + g if t > 1 else g",
                      "p -= lr * s1")),
    "nesterov": Rule(("momentum",), ("mu = F(momentum)",),
                     ("s1 = mu * s1 + g if t > 1 else g",
                      "p -= lr * (g + mu * s1)")),
    "adagrad": Rule(("eps",), ("e = F(eps)",),
                    ("s1 += g * g",
                     "p -= lr * g / (math.sqrt(s1) + e)")),
    "rmsprop": Rule(("rho", "eps"), ("r_, e = F(rho), F(eps)",),
                    ("s1 = r_ * s1 + (F(1.0) - r_) * g * g",
                     "p -= lr * g / (math.sqrt(s1) + e)")),
    "adam": Rule(("beta1", "beta2", "eps"),
                 ("b1, b2, e = F(beta1), F(beta2), F(eps)",
                  "step_size = F(lr / (1.0 - beta1 ** t))",
                  "inv_root_correction = F(1.0 / math.sqrt(1.0 - beta2 ** t))"),
                 ("s1 = b1 * s1 + (F(1.0) - b1) * g",
                  "s2 = b2 * s2 + (F(1.0) - b2) * g * g",
                  "p -= step_size * s1 / (math.sqrt(s2) * inv_root_correction + e)")),
}

# the update's arguments before the hyperparameters
PARAMS = ("theta", "grad", "s1", "s2", "ranges", "value", "t", "lr", "clip_norm")
_ELEMENT = re.compile(r"\b(p|s1|s2)\b")


def element_lines(rule: Rule, refs: dict) -> list[str]:
    """The rule's element lines with `p`, `s1`, `s2` replaced by `refs` (e.g. `theta[i]`)."""
    return [_ELEMENT.sub(lambda m: refs[m.group(1)], line) for line in rule.element]


@dataclass
class UpdateKernel:
    """One shared optimiser update: a rule for a dtype, and the hyperparameters to pass it."""
    name: str
    kind: str
    rule: Rule
    args: list[str]              # the hyperparameter values, as argument texts
    dtype: str

    @property
    def params(self) -> list[str]:
        return [*PARAMS, *self.rule.hyper]


def optimizer_kind(optimizer) -> str:
    """`sgd(momentum=…, nesterov=…)` is three rules."""
    kind = optimizer.kind
    if kind == "sgd" and optimizer.args.get("momentum", 0.0) > 0:
        kind = "nesterov" if optimizer.args.get("nesterov") else "momentum"
    return kind


def update_kernel(optimizer, dtype: str) -> UpdateKernel:
    """The shared update kernel for an `ir.Optimizer`, and the hyperparameters to pass it."""
    kind = optimizer_kind(optimizer)
    rule = RULES[kind]
    text = "\n".join([dtype, kind, *rule.hyper, *rule.setup, *rule.element])
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    args = [repr(float(optimizer.args[n])) for n in rule.hyper]
    return UpdateKernel(f"update_{kind}_{digest}", kind, rule, args, dtype)
