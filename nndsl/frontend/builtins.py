"""Built-in names other than layers: expression functions, activations, losses,
optimizers, initialisers and `train` options -- each a table, one row per name.

(The built-in layers live in `frontend/shapes.py`, `BUILTIN_LAYERS`.)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional, Sequence

from .shapes import BUILTIN_LAYERS, Operand, ShapeError
from .signature import BOOL, POSITIVE_INT, REQUIRED, TENSOR, Arg, ChoiceKind, FormKind, IntKind, RealKind, Signature


# ------------------------------------------------------ expression functions
@dataclass(frozen=True)
class FunctionSpec:
    """An elementwise function usable in expressions: parameter names and the
    defaults of the optional ones (filled in by the checker, so the IR always
    carries every argument)."""
    params: tuple[str, ...]
    defaults: Mapping[str, float] = field(default_factory=dict)

    @property
    def required(self) -> int:
        return len(self.params) - len(self.defaults)


_UNARY = ("exp", "log", "sqrt", "abs", "tanh", "sigmoid", "softplus", "relu", "elu",
          "swish", "sin", "cos")
FUNCTIONS: dict[str, FunctionSpec] = {name: FunctionSpec(("a",)) for name in _UNARY}
FUNCTIONS["leaky_relu"] = FunctionSpec(("a", "alpha"), {"alpha": 0.01})
FUNCTIONS["min"] = FunctionSpec(("a", "b"))
FUNCTIONS["max"] = FunctionSpec(("a", "b"))
FUNCTIONS["where"] = FunctionSpec(("cond", "a", "b"))

ARITHMETIC = ("+", "-", "*", "/", "^")
COMPARISONS = ("<", "<=", ">", ">=", "==", "!=")

# Names usable as `act=` (leaky_relu uses alpha = 0.01 there).
ACTIVATIONS = ("identity", "sigmoid", "tanh", "relu", "leaky_relu", "elu", "softplus",
               "swish", "softmax")


# ------------------------------------------------------------------- losses
LossCheck = Callable[[Sequence[Operand], Mapping[str, float], Sequence[str]], None]


@dataclass(frozen=True)
class LossForm:
    """One way to call a loss: tensor operands, then scalar keyword arguments.
    `check` validates the operands (numbers are Operands with name "")."""
    signature: Signature
    check: LossCheck

    @property
    def operands(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.signature.args if a.kind.is_tensor)

    @property
    def options(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.signature.args if not a.kind.is_tensor)


@dataclass(frozen=True)
class BuiltinLoss:
    name: str
    forms: tuple[LossForm, ...]
    doc: str = ""

    def select(self, n_args: int, kwargs: Sequence[str]) -> LossForm:
        """The form matching the number of positional operands and the keywords
        given (the first form when none does, for its error messages)."""
        for form in self.forms:
            if len(form.operands) == n_args and set(kwargs) <= set(form.options):
                return form
        for form in self.forms:
            if kwargs and set(kwargs) <= set(form.options):
                return form
        return self.forms[0]

    def usage(self) -> str:
        return " or ".join(f.signature.usage(self.name) for f in self.forms)


def _no_class_labels(loss: str, ops: Sequence[Operand], args: Sequence[str]) -> None:
    for op, arg in zip(ops, args):
        if op.classes is not None:
            raise ShapeError(f"{op.described()}; only `cross_entropy` takes class labels",
                             arg, f"use cross_entropy(logits, {op.name})")


def same_shape(loss: str, ops: Sequence[Operand], args: Sequence[str]) -> None:
    """Operands of an elementwise loss: one shape; numbers and scalars broadcast."""
    _no_class_labels(loss, ops, args)
    shaped = [(op, arg) for op, arg in zip(ops, args) if op.shape]
    for op, arg in shaped[1:]:
        first = shaped[0][0]
        if op.shape != first.shape:
            raise ShapeError(f"`{loss}` expects operands of the same shape, but "
                             f"{first.described()} and {op.described()}", arg,
                             "a target must have the shape of the prediction")


def _elementwise(loss: str) -> LossCheck:
    return lambda ops, kw, args: same_shape(loss, ops, args)


def _cross_entropy(ops, kw, args):
    o, label = ops
    if o.classes is not None or len(o.shape) not in (1, 2):
        raise ShapeError(f"`cross_entropy` expects logits of shape (K,) or (T, K), but "
                         f"{o.described()}", "o")
    if label.classes is None:
        raise ShapeError(
            f"`cross_entropy` expects class labels, but {label.described()}", "label",
            "declare the labels as `target NAME: class(K)`, or use bce_logits/squared "
            "for real-valued targets")
    if tuple(o.shape[:-1]) != tuple(label.shape):      # per-step logits need per-step labels
        raise ShapeError(f"`cross_entropy` expects one label per row of logits, but {o.label} has "
                         f"shape {tuple(o.shape)} and {label.label} shape {tuple(label.shape)}", "label",
                         "declare per-step labels as `target NAME[T]: class(K)`")
    if o.shape[-1] != label.classes:
        raise ShapeError(f"`cross_entropy` class count mismatch: {o.label} has "
                         f"{o.shape[-1]} logits but {label.label} has {label.classes} "
                         f"classes (class({label.classes}))", "o",
                         f"give {o.label} {label.classes} units")


def _sig(*operands: str, **options: Arg) -> Signature:
    return Signature(tuple(Arg(o, TENSOR) for o in operands) + tuple(options.values()))


BUILTIN_LOSSES: dict[str, BuiltinLoss] = {spec.name: spec for spec in (
    BuiltinLoss("squared", (LossForm(_sig("o", "y"), _elementwise("squared")),),
             "1/2 sum_k (o_k - y_k)^2"),
    BuiltinLoss("cross_entropy", (LossForm(_sig("o", "label"), _cross_entropy),),
             "softmax cross-entropy on logits"),
    BuiltinLoss("bce_logits", (LossForm(_sig("o", "y"), _elementwise("bce_logits")),),
             "Bernoulli likelihood on logits"),
    BuiltinLoss("gaussian_nll", (
        LossForm(_sig("mu", "logvar", "y"), _elementwise("gaussian_nll")),
        # The fixed-precision form: selected by `beta=` or by two operands (beta = 1).
        LossForm(_sig("mu", "y", beta=Arg("beta", RealKind(lo=0.0, lo_open=True), 1.0)),
                 _elementwise("gaussian_nll")),
    ), "Gaussian negative log-likelihood"),
    BuiltinLoss("kl_normal", (LossForm(_sig("mu", "logvar"), _elementwise("kl_normal")),),
             "KL(N(mu, exp(logvar)) || N(0, I))"),
)}


# --------------------------------------------------------------- optimizers
_LR = lambda default: Arg("lr", RealKind(lo=0.0, lo_open=True), default)   # noqa: E731
_EPS = lambda default: Arg("eps", RealKind(lo=0.0, lo_open=True), default)  # noqa: E731
_DECAY = RealKind(lo=0.0, hi=1.0, hi_open=True)

# learning-rate schedules, by optimizer step t = 1, 2, …: the rate is lr·factor(t)
SCHEDULES: dict[str, Signature] = {
    "none": Signature(()),
    "step": Signature((Arg("every", POSITIVE_INT, REQUIRED), Arg("gamma", RealKind(lo=0.0, lo_open=True), 0.1))),
    "exponential": Signature((Arg("gamma", RealKind(lo=0.0, lo_open=True), REQUIRED),)),
    "cosine": Signature(()),
}
_WEIGHT_DECAY = lambda default: Arg("weight_decay", RealKind(lo=0.0), default)   # noqa: E731
# every optimiser's weight decay (L2, or decoupled for adamw) and schedule
_KIT = (Arg("decay", ChoiceKind(("weights", "all")), "weights", shown="weights"),
        Arg("schedule", FormKind(SCHEDULES, "a schedule"), ("none", ()), shown="none"),
        Arg("warmup", IntKind(lo=0), 0))
_ADAM = (Arg("beta1", _DECAY, 0.9), Arg("beta2", _DECAY, 0.999), _EPS(1e-8))

OPTIMIZERS: dict[str, Signature] = {
    "sgd": Signature((_LR(0.01), Arg("momentum", _DECAY, 0.0), Arg("nesterov", BOOL, False),
                      _WEIGHT_DECAY(0.0), *_KIT)),
    "adagrad": Signature((_LR(0.01), _EPS(1e-10), _WEIGHT_DECAY(0.0), *_KIT)),
    "rmsprop": Signature((_LR(0.001), Arg("rho", _DECAY, 0.9), _EPS(1e-8), _WEIGHT_DECAY(0.0), *_KIT)),
    "adam": Signature((_LR(0.001), *_ADAM, _WEIGHT_DECAY(0.0), *_KIT)),
    # Adam with decoupled weight decay (Loshchilov & Hutter), PyTorch's AdamW defaults
    "adamw": Signature((_LR(0.001), *_ADAM, _WEIGHT_DECAY(0.01), *_KIT)),
}
DEFAULT_OPTIMIZER = "adam"


# ------------------------------------------------------------- initialisers
_POSITIVE = RealKind(lo=0.0, lo_open=True)
INITS: dict[str, Signature] = {
    "xavier": Signature(()),
    "he": Signature(()),
    "zeros": Signature(()),
    "ones": Signature(()),
    "normal": Signature((Arg("std", _POSITIVE),)),
    "uniform": Signature((Arg("a", _POSITIVE),)),
}
DEFAULT_INIT = "xavier"   # also after relu layers: `he` only when the user writes `init he`


# ----------------------------------------------------------- train options
TRAIN = Signature((
    Arg("batch", POSITIVE_INT, 64),
    Arg("epochs", POSITIVE_INT, 10),
    Arg("shuffle", BOOL, True),
    Arg("clip_norm", _POSITIVE, None),
    Arg("seed", IntKind(lo=0), 0),
    Arg("d_steps", POSITIVE_INT, 1),
))


# ----------------------------------------------------------- reserved names
RESERVED: frozenset[str] = frozenset(
    set(BUILTIN_LAYERS) | set(FUNCTIONS) | set(ACTIVATIONS) | set(BUILTIN_LOSSES) | {"sum"})


def reserved_kind(name: str) -> Optional[str]:
    """What a reserved name is, for messages: 'layer', 'function', ..."""
    if name in BUILTIN_LAYERS:
        return "layer"
    if name in BUILTIN_LOSSES:
        return "loss"
    if name in FUNCTIONS or name == "sum":
        return "function"
    if name in ACTIVATIONS:
        return "activation"
    return None

