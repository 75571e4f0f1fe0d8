"""What the runtime needs to know of a checked model's data beyond their shapes: which node
predicts which target (the metrics `evaluate` reports), and whether the model is a sequence
model that `generate` can continue.

Both are plain data (strings, ints, bools) that the build writes into the generated module.
"""
from __future__ import annotations

from typing import Optional

from . import ir

# a loss term whose prediction is its first argument and whose target is its last
_CLASS_LOSSES = {"cross_entropy"}
_LOGIT_LOSSES = {"bce_logits"}
_REAL_LOSSES = {"squared", "gaussian_nll"}


def metrics(model: ir.ModelIR) -> list[tuple[str, str, str]]:
    """(metric, prediction node, target) per target a loss compares a prediction with:
    "accuracy" for a class target (the arg-max of the logits), "accuracy" for a real target
    in [0, 1] of `bce_logits` (logits above 0 against targets above ½), "rmse" for a real
    target of `squared`, `gaussian_nll` or a user loss. Named "accuracy"/"rmse", then
    "accuracy_TARGET" for a second target with the same metric."""
    targets = {d.name: d for d in model.targets}
    found, seen = [], set()
    for loss in model.losses:
        for term in loss.terms:
            names = [a for a in term.args if isinstance(a, str)]
            if len(names) < 2 or names[-1] not in targets or names[-1] in seen:
                continue
            target, prediction = targets[names[-1]], names[0]
            if term.fn in _CLASS_LOSSES and target.classes is not None:
                kind = "accuracy"
            elif term.fn in _LOGIT_LOSSES and target.classes is None:
                kind = "accuracy"
            elif (term.fn in _REAL_LOSSES or term.fn in model.user_losses) and target.classes is None:
                kind = "rmse"
            else:
                continue
            seen.add(target.name)
            found.append((kind, prediction, target.name))
    out, used = [], set()
    for kind, prediction, target in found:
        name = kind if kind not in used else f"{kind}_{target}"
        used.add(kind)
        out.append((name, prediction, target))
    return out


def sequence_model(model: ir.ModelIR) -> Optional[dict]:
    """A language model's parts, or None: a per-step class target `next[T]: class(V)` that a
    `cross_entropy(logits, next)` term reads, logits of shape (T, V), and an input of the
    same free length that takes the symbols back — class-valued (`input x[T]: class(V)`) or
    one-hot (`input x[T, V]`)."""
    nodes = {n.name: n for n in model.nodes}
    for loss in model.losses:
        for term in loss.terms:
            names = [a for a in term.args if isinstance(a, str)]
            if term.fn != "cross_entropy" or len(names) != 2:
                continue
            logits, target = nodes.get(names[0]), next((d for d in model.targets if d.name == names[1]), None)
            if logits is None or target is None or target.classes is None or len(target.shape) != 1:
                continue
            T, V = target.shape[0], target.classes
            if not isinstance(T, str) or tuple(logits.shape) != (T, V):
                continue
            for x in model.inputs:
                if getattr(x, "classes", None) == V and tuple(x.shape) == (T,):
                    return {"input": x.name, "onehot": False, "logits": logits.name, "classes": V}
                if getattr(x, "classes", None) is None and tuple(x.shape) == (T, V):
                    return {"input": x.name, "onehot": True, "logits": logits.name, "classes": V}
    return None
