"""Optimiser updates, written once as rules that every target prints.

An update first sums the squared gradient over its loss's parameter ranges: a non-finite
loss or gradient leaves the parameters at their last finite values, and `clip_norm > 0`
rescales the gradient to that norm. Then, for every element of those ranges, the rule's
`element` lines run with `g` the (clipped) gradient, `p` the parameter and `s1`, `s2` its
two slots of optimiser state (read and written in place); `setup` lines run once per
update, over `lr`, the step count `t` (1 at the first step), the steps of the run `total`
(a cosine schedule's length) and the hyperparameters; `range_setup` lines once per range,
over `decays` (whether the range's parameters take weight decay). A renderer substitutes
its own element references for `p`, `s1`, `s2` (`render/numba_cpu.py`: slices of one range
at a time, loops LLVM vectorises; `render/numba_cuda.py`: a grid-stride loop) and writes
the norm, the finite check and the clip around them.

Weight decay and learning-rate schedules are rewrites of a rule (`with_weight_decay`,
`with_schedule`), so every optimiser takes them, on every target.

Adding an optimiser: its rule here, its arguments and their ranges in
`frontend/builtins.py`, its reference formula in `tests/test_optimizers.py`.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Rule:
    hyper: tuple            # hyperparameter names, the update's arguments after `total`
    setup: tuple            # lines once per update
    element: tuple          # lines per element (`g`, `p`, `s1`, `s2`)
    range_setup: tuple = ()     # lines once per range (`decays`)


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
RULES["adamw"] = RULES["adam"]      # its weight decay is decoupled (`with_weight_decay`)


def with_weight_decay(rule: Rule, decoupled: bool) -> Rule:
    """L2 weight decay (PyTorch's `weight_decay=`: λ·p added to the gradient after clipping),
    or decoupled (AdamW: p scaled by 1 − lr·λ before the step), on the ranges that decay."""
    first = "p = p * (F(1.0) - lr * wd_r)" if decoupled else "g = g + wd_r * p"
    return Rule(rule.hyper + ("weight_decay",), rule.setup, (first,) + rule.element,
                rule.range_setup + ("wd_r = F(weight_decay) if decays != 0 else F(0.0)",))


# a schedule's factor of the learning rate at step t: (hyperparameters, line)
SCHEDULE_LINES = {
    "step": (("every", "gamma"), "lr = F(lr * gamma ** ((t - 1) // every))"),
    "exponential": (("gamma",), "lr = F(lr * gamma ** (t - 1))"),
    # over the run's `total` steps (fit sets it; 0: no schedule yet), as PyTorch's CosineAnnealingLR
    "cosine": ((), "lr = F(lr * 0.5 * (1.0 + math.cos(math.pi * min(t - 1, total) / total))) if total > 0 else lr"),
}


def with_schedule(rule: Rule, schedule: str, warmup: bool) -> Rule:
    """The rule at a scheduled learning rate (and a linear warm-up: lr·t/K for t < K)."""
    hyper, lines = SCHEDULE_LINES.get(schedule, ((), None))
    setup = ((lines,) if lines else ()) + (("lr = F(lr * t / warmup) if t < warmup else lr",) if warmup else ())
    return Rule(rule.hyper + tuple(hyper) + (("warmup",) if warmup else ()), setup + rule.setup, rule.element,
                rule.range_setup)

# the update's arguments before the hyperparameters
PARAMS = ("theta", "grad", "s1", "s2", "ranges", "value", "t", "lr", "clip_norm", "total")
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
    rule, values = RULES[kind], dict(optimizer.args)
    if values.get("weight_decay", 0.0) > 0:
        rule = with_weight_decay(rule, decoupled=kind == "adamw")
    schedule, schedule_args = values.get("schedule", ("none", ()))
    values.update(schedule_args)
    rule = with_schedule(rule, schedule, values.get("warmup", 0) > 0)
    text = "\n".join([dtype, kind, *PARAMS, *rule.hyper, *rule.setup, *rule.range_setup, *rule.element])
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    args = [repr(float(values[n])) for n in rule.hyper]
    return UpdateKernel(f"update_{kind}_{digest}", kind, rule, args, dtype)
