"""The checked, typed model: what `nndsl.checker` produces and every later stage reads.

Sizes are resolved (consts substituted), every name is resolved to a node, a
parameter or a user definition, network calls are inlined, and every node knows
its per-example shape (the batch dimension is implicit and leading).

Node ops and their `attrs` (all defaults filled in by the checker):

| op             | inputs          | attrs                                             |
|----------------|-----------------|---------------------------------------------------|
| input          | ()              | {}                                                |
| target         | ()              | {"classes": int or None}                          |
| dense          | (x,)            | {"units", "act", "bias"}                          |
| conv2d         | (x,)            | {"filters", "kernel", "stride", "pad", "act", "bias"} |
| maxpool/avgpool| (x,)            | {"size", "stride"}                                |
| flatten        | (x,)            | {}                                                |
| rnn            | (x,)            | {"hidden", "act", "return": "all"/"last"}         |
| lstm/gru       | (x,)            | {"hidden", "return"}                              |
| dropout        | (x,)            | {"p"}                                             |
| gaussian_noise | (x,)            | {"std"}                                           |
| mask_noise     | (x,)            | {"p"}                                             |
| sample_normal  | (mu, logvar)    | {"sample": bool}                                  |
| concat         | (a, b, ...)     | {}                                                |
| expr           | referenced nodes| {"expr": Expr over Ref(node)}                     |
| layer          | tensor args     | {"layer": name, "sizes": {size arg: int}}         |
| embed          | (x,)            | {"dim"}; x holds class indices                    |
| layernorm      | (x,)            | {"eps"}                                           |
| batchnorm      | (x,)            | {"momentum", "eps", "stats": {"running_mean": qualified, "running_var": qualified}} |

An `input` with `attrs["classes"]` holds class indices (`input chars[T]: class(V)`).
A batchnorm's running statistics are `ModelIR.stats`: state, not parameters (no gradient,
no optimiser; `step`/`fit` update them, `forward` reads them).

`act` is a built-in activation name (identity sigmoid tanh relu leaky_relu elu
softplus swish softmax) or the name of a user activation.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional, Union

from ..diagnostics import Span

Dim = Union[int, str]          # str: a free size such as "T", fixed per call
Shape = tuple[Dim, ...]


# ---------------------------------------------------------------- expressions
@dataclass(frozen=True)
class Ref:
    """A node's value (in `expr` nodes), or a parameter of a user activation/loss."""
    name: str


@dataclass(frozen=True)
class Const:
    value: float


@dataclass(frozen=True)
class Apply:
    """fn: + - * / ^ neg < <= > >= == != or a function name
    (exp log sqrt abs tanh sigmoid softplus relu leaky_relu elu swish sin cos
    min max where, or a user activation)."""
    fn: str
    args: tuple["Expr", ...]


@dataclass(frozen=True)
class IVar:
    """An index variable inside a user layer body."""
    name: str


@dataclass(frozen=True)
class Access:
    """`x[i, 2*j + p]` inside a user layer: tensor is a layer-local name
    (a tensor argument, a param, or an earlier assigned temporary)."""
    tensor: str
    indices: tuple["Expr", ...]   # affine expressions of IVar and Const


@dataclass(frozen=True)
class SumOver:
    indices: tuple[str, ...]
    body: "Expr"


Expr = Union[Ref, Const, Apply, IVar, Access, SumOver]


# ---------------------------------------------------------------------- graph
@dataclass(frozen=True)
class Init:
    kind: str                      # xavier | he | normal | uniform | zeros | ones
    arg: Optional[float] = None    # std for normal, a for uniform


@dataclass(frozen=True)
class Param:
    name: str                      # qualified: "h.W", "generator.h.W"
    shape: tuple[int, ...]
    init: Init
    fan_in: int
    fan_out: int
    span: Optional[Span] = None


@dataclass(frozen=True)
class Node:
    name: str                      # unique: "h", "generator.h", "generator#2.h"
    op: str
    inputs: tuple[str, ...]
    shape: Shape                   # per example
    attrs: Mapping[str, object] = field(default_factory=dict)
    params: Mapping[str, str] = field(default_factory=dict)   # "W" -> "h.W"
    span: Optional[Span] = None


@dataclass(frozen=True)
class DataDecl:
    name: str
    shape: Shape                   # per example; () for class labels
    classes: Optional[int] = None  # targets (and inputs) declared `class(K)`
    is_target: bool = False
    span: Optional[Span] = None


# ----------------------------------------------------------- user definitions
@dataclass(frozen=True)
class UserFn:
    """A user `activation` or `loss`: an elementwise expression of its params."""
    name: str
    params: tuple[str, ...]
    defaults: Mapping[str, float]
    body: Expr                     # Ref(param) leaves
    span: Optional[Span] = None


@dataclass(frozen=True)
class LayerParam:
    name: str
    indices: tuple[str, ...]
    init: Optional[Init]           # None: the model's default init


@dataclass(frozen=True)
class LayerAssign:
    target: str                    # the output name or a temporary
    indices: tuple[str, ...]
    value: Expr                    # Access / IVar / SumOver / Apply / Const


@dataclass(frozen=True)
class UserLayer:
    name: str
    tensor_args: tuple[tuple[str, tuple[str, ...]], ...]   # ("x", ("i",))
    size_args: tuple[str, ...]                             # ("K",)
    out_name: str
    out_indices: tuple[tuple[str, str], ...]               # (("k", "K"),)
    params: tuple[LayerParam, ...]
    body: tuple[LayerAssign, ...]
    span: Optional[Span] = None


# --------------------------------------------------------------- optimisation
@dataclass(frozen=True)
class LossTerm:
    weight: float
    fn: str                            # built-in loss or user loss name
    args: tuple[Union[str, float], ...]  # node names, or a scalar that broadcasts
    kwargs: Mapping[str, float] = field(default_factory=dict)
    span: Optional[Span] = None


@dataclass(frozen=True)
class Loss:
    name: str                          # "loss" for an unnamed loss
    terms: tuple[LossTerm, ...]
    wrt: tuple[str, ...]               # qualified parameter names it updates
    span: Optional[Span] = None


@dataclass(frozen=True)
class Optimizer:
    kind: str                          # sgd | adagrad | rmsprop | adam | adamw
    # every argument, defaults filled: numbers, `nesterov` a bool, `decay` "weights" | "all",
    # `schedule` (name, ((argument, value), ...)) as in builtins.SCHEDULES
    args: Mapping[str, Union[float, bool, str, tuple]]


@dataclass(frozen=True)
class TrainConfig:
    batch: int = 64
    epochs: int = 10
    shuffle: bool = True
    clip_norm: Optional[float] = None
    seed: int = 0
    d_steps: int = 1                   # GAN: steps of the first named loss per step of the others


@dataclass(frozen=True)
class ModelIR:
    name: str
    path: str
    source: str
    data: tuple[DataDecl, ...]         # inputs then targets, in source order
    nodes: tuple[Node, ...]            # topological order; data are nodes too (op input/target)
    params: tuple[Param, ...]
    losses: tuple[Loss, ...]
    optimizers: Mapping[str, Optimizer]  # loss name -> optimizer (every loss has one)
    outputs: tuple[str, ...]           # node names `forward` returns
    activations: Mapping[str, UserFn] = field(default_factory=dict)
    user_losses: Mapping[str, UserFn] = field(default_factory=dict)
    layers: Mapping[str, UserLayer] = field(default_factory=dict)
    consts: Mapping[str, float] = field(default_factory=dict)
    default_init: Init = Init("xavier")
    train: TrainConfig = TrainConfig()
    # running statistics of batchnorm layers (`NODE.running_mean`, `NODE.running_var`):
    # model state beside the parameters, never differentiated nor updated by an optimiser
    stats: tuple[Param, ...] = ()

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def sequence_input(self, size: str) -> Optional[str]:
        """The input whose steps a free size counts (its `NAME_lengths=` gives each example's
        length): the first input with that size first, over steps of features (x[T, K]) or
        of class indices (chars[T]: class(V)); None when no input is a sequence over it."""
        return next((d.name for d in self.inputs if d.shape and d.shape[0] == size
                     and (len(d.shape) >= 2 or d.classes is not None)), None)

    def ancestors(self, names) -> set[str]:
        """The nodes `names` are computed from, themselves included."""
        by_name = {nd.name: nd for nd in self.nodes}
        seen, todo = set(), list(names)
        while todo:
            name = todo.pop()
            if name in seen or name not in by_name:
                continue
            seen.add(name)
            todo.extend(by_name[name].inputs)
        return seen

    @property
    def inputs(self) -> tuple[DataDecl, ...]:
        return tuple(d for d in self.data if not d.is_target)

    @property
    def targets(self) -> tuple[DataDecl, ...]:
        return tuple(d for d in self.data if d.is_target)
