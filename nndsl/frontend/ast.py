"""Abstract syntax tree of a `.nn` file.

One frozen dataclass per grammar construct, built by `nndsl.parser` from Lark's
parse tree.  Nodes carry their source `Span` and no behaviour: later stages
(`nndsl.checker`) give them meaning.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

from ..diagnostics import Span


# ----------------------------------------------------------------- expressions
@dataclass(frozen=True)
class Num:
    value: float
    is_int: bool          # written without '.', 'e' (usable as a size)
    span: Span


@dataclass(frozen=True)
class Bool:
    value: bool
    span: Span


@dataclass(frozen=True)
class Name:
    id: str
    span: Span


@dataclass(frozen=True)
class Index:
    """`x[i, j*2 + p]` inside a `layer` body (or a `param` declaration)."""
    name: str
    indices: tuple["Expr", ...]
    span: Span
    name_span: Span


@dataclass(frozen=True)
class KwArg:
    name: str
    value: "Expr"
    span: Span            # span of the whole `name=value`


@dataclass(frozen=True)
class Call:
    """`f(a, b, k=v)`: built-in layer, network, activation, user layer/loss."""
    func: str
    args: tuple["Expr", ...]
    kwargs: tuple[KwArg, ...]
    span: Span
    func_span: Span


@dataclass(frozen=True)
class BinOp:
    op: str               # one of + - * / ^ < <= > >= == !=   (`**` is stored as ^)
    left: "Expr"
    right: "Expr"
    span: Span


@dataclass(frozen=True)
class UnaryOp:
    op: str               # '-' (unary plus is dropped by the parser)
    operand: "Expr"
    span: Span


@dataclass(frozen=True)
class Sum:
    """`sum(i, j: body)` reduction in index notation."""
    indices: tuple[str, ...]
    body: "Expr"
    span: Span


Expr = Union[Num, Bool, Name, Index, Call, BinOp, UnaryOp, Sum]


# ------------------------------------------------------------------ statements
@dataclass(frozen=True)
class ModelDecl:
    name: str
    span: Span


@dataclass(frozen=True)
class InputDecl:
    """`input x[784]`, `input seq[T, 16]`: dims are Num or Name (const or free size);
    `input chars[T]: class(V)`, `input c: class(V)`: class indices (classes set)."""
    name: str
    dims: tuple[Expr, ...]
    span: Span
    name_span: Span
    classes: Optional[Expr] = None


@dataclass(frozen=True)
class TargetDecl:
    """`target y[1]` (dims set), `target label: class(10)` (classes set), or both:
    `target next[T]: class(V)` (a class label per step)."""
    name: str
    dims: Optional[tuple[Expr, ...]]
    classes: Optional[Expr]
    span: Span
    name_span: Span


@dataclass(frozen=True)
class ConstDecl:
    name: str
    value: Expr
    span: Span
    name_span: Span


@dataclass(frozen=True)
class Assign:
    """`NAME = CALL | EXPR` at top level or inside a `network`."""
    name: str
    value: Expr
    span: Span
    name_span: Span


@dataclass(frozen=True)
class OutputDecl:
    names: tuple[Name, ...]
    span: Span


@dataclass(frozen=True)
class FnParam:
    """A parameter of `activation`/`loss` definitions: `delta=1.0` has a default."""
    name: str
    default: Optional[Expr]
    span: Span


@dataclass(frozen=True)
class ActivationDef:
    name: str
    params: tuple[FnParam, ...]
    body: Expr
    span: Span
    name_span: Span


@dataclass(frozen=True)
class LossDef:
    name: str
    params: tuple[FnParam, ...]
    body: Expr
    span: Span
    name_span: Span


@dataclass(frozen=True)
class TensorArg:
    """`x[i]` in a layer signature: binds index `i` to x's size."""
    name: str
    indices: tuple[str, ...]
    span: Span


@dataclass(frozen=True)
class SizeArg:
    """`units K` in a layer signature (kind is the first word, e.g. 'units')."""
    kind: str
    name: str
    span: Span


@dataclass(frozen=True)
class OutIndex:
    """`k:K` in the output signature `-> out[k:K]` (size None for a bare `k`)."""
    name: str
    size: Optional[Expr]
    span: Span


@dataclass(frozen=True)
class ParamDecl:
    """`param W[k, i, j] init=xavier` inside a layer body (init: Name or Call).

    An index may carry a size, `param W[f, c, p:K]`: that binds a window index
    that no argument or output binds (a convolution's kernel offset)."""
    name: str
    indices: tuple[str, ...]
    init: Optional[Expr]
    span: Span
    name_span: Span
    index_sizes: tuple[Optional[Expr], ...] = ()     # one per index; None where not given


@dataclass(frozen=True)
class IndexAssign:
    """`out[k] = expr` (or a temporary `t[k] = ...`) inside a layer body."""
    target: str
    indices: tuple[str, ...]
    value: Expr
    span: Span
    name_span: Span


@dataclass(frozen=True)
class LayerDef:
    name: str
    args: tuple[Union[TensorArg, SizeArg], ...]
    out_name: str
    out_indices: tuple[OutIndex, ...]
    body: tuple[Union[ParamDecl, IndexAssign], ...]
    span: Span
    name_span: Span


@dataclass(frozen=True)
class Return:
    value: Expr
    span: Span


@dataclass(frozen=True)
class NetworkDef:
    name: str
    params: tuple[Name, ...]                 # the network's formal inputs
    body: tuple[Union[Assign, Return], ...]
    span: Span
    name_span: Span


@dataclass(frozen=True)
class LossStmt:
    """`loss EXPR` or `loss NAME = EXPR [wrt a, b]`.

    `value` is an expression whose leaves are loss calls (Call) combined with
    `+`, `-` and multiplication by numbers/consts.
    """
    name: Optional[str]
    value: Expr
    wrt: tuple[Name, ...]
    span: Span
    name_span: Optional[Span]


@dataclass(frozen=True)
class OptimizerStmt:
    """`optimizer adam(lr=1e-3)` or `optimizer d_loss: adam(...)` (a bare name is a call without args)."""
    loss: Optional[Name]
    call: Call
    span: Span


@dataclass(frozen=True)
class InitStmt:
    """`init xavier` / `init normal(0.1)`: value is a Name or a Call."""
    value: Expr
    span: Span


@dataclass(frozen=True)
class TrainStmt:
    """`train batch=64 epochs=10 ...`."""
    options: tuple[KwArg, ...]
    span: Span


Stmt = Union[ModelDecl, InputDecl, TargetDecl, ConstDecl, Assign, OutputDecl,
             ActivationDef, LossDef, LayerDef, NetworkDef, LossStmt,
             OptimizerStmt, InitStmt, TrainStmt]


@dataclass(frozen=True)
class Program:
    path: str
    source: str
    statements: tuple[Stmt, ...] = field(default_factory=tuple)
