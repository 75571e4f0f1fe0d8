"""`.nn` source text -> `nndsl.ast.Program`.

Lark (LALR(1), contextual lexer, grammar in grammar/nndsl.lark) builds a parse
tree; `_ToAst` turns it into the AST dataclasses with 1-based spans.  Every
syntax error becomes a `CompileError` whose Diagnostic points at the offending
token.  The parser is purely syntactic: names, shapes and types are the
checker's business.
"""
from __future__ import annotations

import math
import os
import re
import threading
from functools import lru_cache
from typing import Iterable, Iterator, Optional, Sequence

from lark import Lark, Token, Transformer_NonRecursive, v_args
from lark.exceptions import (
    LarkError,
    UnexpectedCharacters,
    UnexpectedInput,
    UnexpectedToken,
    VisitError,
)
from lark.lexer import PatternStr

from ..diagnostics import CompileError, Diagnostic, Span, did_you_mean
from ..resources import grammar_path
from . import ast

# Words that may begin a top-level statement, and those that begin a statement
# inside a `layer`/`network` block (used for "did you mean" on misspellings).
STATEMENT_KEYWORDS = ("model", "input", "target", "const", "output", "activation",
                      "loss", "layer", "network", "optimizer", "init", "train")
BLOCK_KEYWORDS = ("param", "return")

_OPENERS = {"(": ")", "[": "]", "{": "}"}
_CLOSERS = {v: k for k, v in _OPENERS.items()}
_SEPARATORS = ("_NL", "SEMICOLON")
_COMPARISONS = {"<", "<=", ">", ">=", "==", "!="}
_OPERATORS = {"+", "-", "*", "/", "^", "**"} | _COMPARISONS
_VALID_NUMBER = re.compile(r"(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")

# The tokens one parse has produced (after the post-lexer), kept for error
# reports: bracket nesting, the start of the current statement, the EOF
# position.  Thread-local because the Lark object is shared.
_parse_log = threading.local()


# ------------------------------------------------------------------ public API
def parse(source: str, path: str) -> ast.Program:
    """Parse a whole `.nn` file; raises CompileError on any syntax error."""
    source = source.removeprefix("\ufeff")      # an invisible BOM must not shift line 1
    _parse_log.tokens = tokens = []
    try:
        tree = _lark().parse(source)
        statements = _ToAst().transform(tree)
    except UnexpectedInput as exc:
        raise CompileError(_diagnose(exc, source, tokens)) from None
    except VisitError as exc:           # a CompileError raised while building the AST
        if isinstance(exc.orig_exc, CompileError):
            raise exc.orig_exc from None
        raise
    except CompileError:
        raise
    except LarkError as exc:            # defensive: never a traceback for bad input
        raise CompileError(Diagnostic(f"syntax error: {exc}", None)) from None
    finally:
        _parse_log.tokens = None
    _check_model_statement(statements)
    return ast.Program(path=path, source=source, statements=statements)


@lru_cache(maxsize=None)
def _lark(cache: bool = True) -> Lark:
    """The parser, built once per process. Lark keeps its analysis of the grammar in a
    cache file (the grammar's and options' hash inside): building takes ~0.3 s, most of it
    checking the terminals' regexes for collisions, loading it ~0.03 s in every later
    `nndsl` process. A parser loaded from the cache has no `.grammar`: `cache=False` builds
    one that has (hypothesis draws programs from it)."""
    postlex = _PostLexer()
    parser = Lark(grammar_path().read_text(encoding="utf-8"), parser="lalr",
                  lexer="contextual", propagate_positions=True,
                  maybe_placeholders=False, postlex=postlex, cache=cache and _cache_file())
    postlex.keywords = {t.pattern.value: t.name for t in parser.terminals
                        if isinstance(t.pattern, PatternStr) and t.pattern.value.isidentifier()}
    return parser


def _cache_file() -> str | bool:
    """Where Lark keeps its analysis: a folder of the user's own (`$XDG_CACHE_HOME/nndsl`,
    mode 0700), never the shared temp folder, because Lark reads the file with pickle.
    False (no cache) where there is no such folder to be had."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    folder = os.path.join(base, "nndsl")
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        if os.stat(folder).st_uid != os.getuid() or not os.access(folder, os.W_OK):
            return False
    except (OSError, AttributeError):         # no home, or no getuid (Windows): no cache
        return False
    return os.path.join(folder, "grammar.lark-cache")


def keywords() -> frozenset[str]:
    """The reserved words of the language."""
    return frozenset(_lark().lexer_conf.postlex.keywords)


# ------------------------------------------------------------------ post-lexer
class _PostLexer:
    """Between Lark's lexer and parser: brackets, keywords, name/number checks."""

    # The contextual lexer only lexes what the parser state accepts; a newline
    # inside brackets is not accepted there, so it must always be lexable.
    always_accept = ("_NL",)

    def __init__(self) -> None:
        self.keywords: dict[str, str] = {}          # "model" -> "MODEL"

    def process(self, stream: Iterator[Token]) -> Iterator[Token]:
        log = getattr(_parse_log, "tokens", None)
        depth = 0                                   # open ( and [
        for tok in stream:
            kind = tok.type
            if kind == "_NL":
                if depth:       # newlines inside ( ) and [ ] do not end a statement
                    continue
            elif kind == "NAME":
                _check_name(tok)
                if tok.value in self.keywords:
                    # The contextual lexer lexes a keyword as NAME wherever the
                    # keyword itself is not expected: keywords are reserved.
                    tok = Token.new_borrow_pos(self.keywords[tok.value], tok.value, tok)
            elif kind == "NUMBER":
                _check_number(tok)
            elif tok.value in ("(", "["):
                depth += 1
            elif tok.value in (")", "]"):
                depth = max(0, depth - 1)
            if log is not None:
                log.append(tok)
            yield tok


def _check_name(tok: Token) -> None:
    if not tok.value.isascii():
        bad = next(c for c in tok.value if not c.isascii())
        raise CompileError(Diagnostic(
            f"`{tok.value}` is not a valid name: `{bad}` is not an ASCII letter, digit or `_`",
            _token_span(tok), hint="names are made of ASCII letters, digits and `_`"))


def _check_number(tok: Token) -> None:
    text = tok.value
    if not _VALID_NUMBER.fullmatch(text):
        if re.fullmatch(r"(\d+(\.\d*)?|\.\d+)[eE][+-]?", text):
            hint = "an exponent needs digits, e.g. `1e-3`"
        else:
            hint = "numbers look like `3`, `0.5`, `1e-3`; names cannot start with a digit"
        raise CompileError(Diagnostic(f"malformed number `{text}`", _token_span(tok), hint=hint))
    if math.isinf(float(text)):
        raise CompileError(Diagnostic(f"number `{text}` is too large", _token_span(tok)))


# ---------------------------------------------------------------- AST building
def _span(meta) -> Span:
    return Span(meta.line, meta.column, meta.end_line, meta.end_column)


def _token_span(tok: Token) -> Span:
    return Span(tok.line, tok.column, tok.end_line, tok.end_column)


def _name(tok: Token) -> ast.Name:
    return ast.Name(str(tok), _token_span(tok))


@v_args(meta=True)
class _ToAst(Transformer_NonRecursive):
    """One method per grammar rule (or alias), each returning an AST node.

    Non-recursive so that a long expression (`a + a + ... + a`, thousands of
    terms) cannot exhaust Python's recursion limit."""

    def start(self, meta, children):
        return tuple(children)

    # declarations
    def model_decl(self, meta, c):
        return ast.ModelDecl(str(c[0]), _span(meta))

    def input_decl(self, meta, c):
        return ast.InputDecl(str(c[0]), tuple(c[1:]), _span(meta), _token_span(c[0]))

    def input_class(self, meta, c):
        """`input c: class(V)`: one class index per example (an embedding's input)."""
        return ast.InputDecl(str(c[0]), (), _span(meta), _token_span(c[0]), c[1])

    def input_class_seq(self, meta, c):
        """`input chars[T]: class(V)`: one class index per step."""
        return ast.InputDecl(str(c[0]), tuple(c[1:-1]), _span(meta), _token_span(c[0]), c[-1])

    def target_decl(self, meta, c):
        return ast.TargetDecl(str(c[0]), tuple(c[1:]), None, _span(meta), _token_span(c[0]))

    def target_class(self, meta, c):
        return ast.TargetDecl(str(c[0]), None, c[1], _span(meta), _token_span(c[0]))

    def target_class_seq(self, meta, c):
        """`target next[T]: class(V)`: one class label per step."""
        return ast.TargetDecl(str(c[0]), tuple(c[1:-1]), c[-1], _span(meta), _token_span(c[0]))

    def const_decl(self, meta, c):
        return ast.ConstDecl(str(c[0]), c[1], _span(meta), _token_span(c[0]))

    def assign(self, meta, c):
        return ast.Assign(str(c[0]), c[1], _span(meta), _token_span(c[0]))

    def output_decl(self, meta, c):
        return ast.OutputDecl(tuple(_name(t) for t in c), _span(meta))

    # user math
    def activation_def(self, meta, c):
        head, body = c
        return ast.ActivationDef(head.func, _fn_params(head, "activation"), body,
                                 _span(meta), head.func_span)

    def loss_def(self, meta, c):
        head, body = c
        return ast.LossDef(head.func, _fn_params(head, "loss"), body, _span(meta), head.func_span)

    # losses and training
    def loss_stmt(self, meta, c):
        return ast.LossStmt(None, c[0], c[1] if len(c) > 1 else (), _span(meta), None)

    def named_loss(self, meta, c):
        return ast.LossStmt(str(c[0]), c[1], c[2] if len(c) > 2 else (), _span(meta),
                            _token_span(c[0]))

    def wrt(self, meta, c):
        return tuple(_name(t) for t in c)

    def optimizer_stmt(self, meta, c):
        loss = _name(c[0]) if len(c) == 2 else None
        return ast.OptimizerStmt(loss, _as_call(c[-1]), _span(meta))

    def init_stmt(self, meta, c):
        value = _name(c[0]) if isinstance(c[0], Token) else c[0]
        return ast.InitStmt(value, _span(meta))

    def train_stmt(self, meta, c):
        return ast.TrainStmt(_unique_kwargs(c), _span(meta))

    # layers
    def layer_def(self, meta, c):
        name, *rest = c
        body = rest.pop()
        at = next(i for i, x in enumerate(rest) if isinstance(x, Token))   # `-> out`
        out = rest[at]
        return ast.LayerDef(str(name), tuple(rest[:at]), str(out), tuple(rest[at + 1:]),
                            body, _span(meta), _token_span(name))

    def tensor_arg(self, meta, c):
        return ast.TensorArg(str(c[0]), tuple(map(str, c[1:])), _span(meta))

    def size_arg(self, meta, c):
        return ast.SizeArg(str(c[0]), str(c[1]), _span(meta))

    def out_index(self, meta, c):
        return ast.OutIndex(str(c[0]), c[1] if len(c) > 1 else None, _span(meta))

    def layer_body(self, meta, c):
        return tuple(c)

    def param_decl(self, meta, c):
        name = c[0]
        axes = [x for x in c[1:] if isinstance(x, ast.OutIndex)]
        indices = tuple(a.name for a in axes)
        sizes = tuple(a.size for a in axes)
        init = None
        for kw in _unique_kwargs([x for x in c[1:] if isinstance(x, ast.KwArg)]):
            if kw.name != "init":
                raise CompileError(Diagnostic(
                    f"unknown option `{kw.name}` for `param`", kw.span,
                    hint=did_you_mean(kw.name, ["init"]) or "the only option is `init=...`"))
            init = kw.value
        return ast.ParamDecl(str(name), indices, init, _span(meta), _token_span(name), sizes)

    def index_assign(self, meta, c):
        name, *indices, value = c
        return ast.IndexAssign(str(name), tuple(map(str, indices)), value, _span(meta),
                               _token_span(name))

    # networks
    def network_def(self, meta, c):
        name, *params, body = c
        return ast.NetworkDef(str(name), tuple(_name(t) for t in params), body, _span(meta),
                              _token_span(name))

    def network_body(self, meta, c):
        return tuple(c)

    def return_stmt(self, meta, c):
        return ast.Return(c[0], _span(meta))

    # expressions
    def _binop(op):                                   # noqa: N805 -- a method factory
        def build(self, meta, c):
            return ast.BinOp(op, c[0], c[1], _span(meta))
        return build

    lt, le, gt, ge, eq, ne = map(_binop, ("<", "<=", ">", ">=", "==", "!="))
    add, sub, mul, div = map(_binop, ("+", "-", "*", "/"))
    pow = _binop("^")                                 # `**` is the same operator
    del _binop

    def neg(self, meta, c):
        return ast.UnaryOp("-", c[0], _span(meta))

    def pos(self, meta, c):
        return c[0]                                   # unary plus changes nothing

    def number(self, meta, c):
        text = c[0].value
        return ast.Num(float(text), not any(ch in text for ch in ".eE"), _span(meta))

    def true(self, meta, c):
        return ast.Bool(True, _span(meta))

    def false(self, meta, c):
        return ast.Bool(False, _span(meta))

    def name(self, meta, c):
        return _name(c[0])

    def index(self, meta, c):
        return ast.Index(str(c[0]), tuple(c[1:]), _span(meta), _token_span(c[0]))

    def sum(self, meta, c):
        *indices, body = c
        return ast.Sum(tuple(map(str, indices)), body, _span(meta))

    def call(self, meta, c):
        func, *args = c
        kwargs = [a for a in args if isinstance(a, ast.KwArg)]
        if kwargs:
            first_kw = next(i for i, a in enumerate(args) if isinstance(a, ast.KwArg))
            late = [a for a in args[first_kw:] if not isinstance(a, ast.KwArg)]
            if late:
                raise CompileError(Diagnostic(
                    "positional argument after a keyword argument", late[0].span,
                    hint=f"put positional arguments first, e.g. `{func}(x, 3, {kwargs[0].name}=...)`",
                    notes=((f"keyword argument `{kwargs[0].name}` is here", kwargs[0].span),)))
        positional = tuple(a for a in args if not isinstance(a, ast.KwArg))
        return ast.Call(str(func), positional, _unique_kwargs(kwargs), _span(meta),
                        _token_span(func))

    def kwarg(self, meta, c):
        return ast.KwArg(str(c[0]), c[1], _span(meta))

    def kw_name(self, meta, c):
        return c[0]


def _as_call(node) -> ast.Call:
    """`adam` (bare, as in `optimizer adam`) is the call `adam()`."""
    if isinstance(node, Token):
        span = _token_span(node)
        return ast.Call(str(node), (), (), span, span)
    return node


def _unique_kwargs(kwargs: Sequence[ast.KwArg]) -> tuple[ast.KwArg, ...]:
    seen: dict[str, ast.KwArg] = {}
    for kw in kwargs:
        if kw.name in seen:
            raise CompileError(Diagnostic(
                f"`{kw.name}` is given twice", kw.span,
                notes=((f"first `{kw.name}=` is here", seen[kw.name].span),)))
        seen[kw.name] = kw
    return tuple(kwargs)


def _fn_params(head: ast.Call, what: str) -> tuple[ast.FnParam, ...]:
    """The parameters of `activation f(a)` / `loss f(o, y, delta=1.0)`, parsed as a call."""
    params: list[ast.FnParam] = []
    for arg in head.args:
        if not isinstance(arg, ast.Name):
            raise CompileError(Diagnostic(
                f"a parameter of `{what} {head.func}` must be a name", arg.span,
                hint=f"write `{what} {head.func}(a, b, c=1.0) = ...`"))
        params.append(ast.FnParam(arg.id, None, arg.span))
    for kw in head.kwargs:
        if kw.name in ("return", "init"):
            raise CompileError(Diagnostic(
                f"unexpected keyword `{kw.name}`", Span(kw.span.line, kw.span.col, kw.span.line,
                                                         kw.span.col + len(kw.name)),
                hint=f"`{kw.name}` is a reserved keyword and cannot be used as a name"))
        params.append(ast.FnParam(kw.name, kw.value, kw.span))
    seen: dict[str, ast.FnParam] = {}
    for p in params:
        if p.name in seen:
            raise CompileError(Diagnostic(
                f"duplicate parameter `{p.name}` in `{what} {head.func}`", p.span,
                notes=(("first defined here", seen[p.name].span),)))
        seen[p.name] = p
    return tuple(params)


def _check_model_statement(statements: tuple) -> None:
    if not statements:
        raise CompileError(Diagnostic("empty model: expected `model NAME`", Span.point(1, 1),
                                      hint="start the file with `model NAME`, e.g. `model mnist`"))
    models = [s for s in statements if isinstance(s, ast.ModelDecl)]
    first = statements[0]
    if not isinstance(first, ast.ModelDecl):
        notes = (("`model` comes too late, here", models[0].span),) if models else ()
        raise CompileError(Diagnostic(
            "expected `model NAME` as the first statement", first.span,
            hint="start the file with `model NAME`, e.g. `model mnist`", notes=notes))
    if len(models) > 1:
        raise CompileError(Diagnostic(
            "a second `model` statement", models[1].span,
            hint="a file defines exactly one model", notes=(("the model is named here", first.span),)))


# --------------------------------------------------------------- syntax errors
def _diagnose(exc: UnexpectedInput, source: str, tokens: list[Token]) -> Diagnostic:
    """The Diagnostic for a Lark error: where exactly, what was found, what was expected."""
    if isinstance(exc, UnexpectedCharacters):
        return _bad_character(exc, source)
    if isinstance(exc, UnexpectedToken):
        tok, accepts = exc.token, _accepts(exc)
    else:                                   # UnexpectedEOF: Earley only, kept for safety
        tok, accepts = Token("$END", ""), set(getattr(exc, "expected", ()))
    try:
        # A token that the contextual lexer's fallback produced never went
        # through the post-lexer: validate it here.
        if tok.type == "NAME":
            _check_name(tok)
        elif tok.type == "NUMBER":
            _check_number(tok)
    except CompileError as err:
        return err.diagnostics[0]

    before = tokens[:-1] if tokens and tokens[-1] is tok else list(tokens)
    still_open = _open_brackets(before)
    if tok.type == "$END":
        return _unexpected_eof(accepts, before, still_open)

    span = _token_span(tok) if tok.type != "_NL" else Span.point(tok.line, tok.column)
    found = _describe_token(tok)
    prev = before[-1] if before else None
    at_start = _starts_statement(before, len(before))        # is `tok` a statement's first token?
    prev_at_start = prev is not None and _starts_statement(before, len(before) - 1)

    if tok.value in _CLOSERS and tok.type != "NAME":
        want = _CLOSERS[tok.value]
        if not still_open:
            return Diagnostic(f"unmatched `{tok.value}`", span,
                              hint=f"there is no `{want}` for it to close")
        opener, _ = still_open[-1]
        if opener.value != want:
            return Diagnostic(
                f"mismatched `{tok.value}`", span,
                hint=f"expected `{_OPENERS[opener.value]}` to close the `{opener.value}` "
                     f"on line {opener.line}",
                notes=((f"`{opener.value}` opened here", _token_span(opener)),))

    if still_open:
        # A bracket left open swallows the following lines (newlines inside
        # brackets do not end a statement), so the parser trips over some later
        # token.  If nothing further on closes it, blame the bracket.
        opener, _ = still_open[-1]
        runaway = tok.line > opener.line and (opener.value != "{" or _is_keyword(tok)
                                              and tok.value in STATEMENT_KEYWORDS)
        close = _OPENERS[opener.value]
        if runaway and not _closed_later(source, tok.start_pos, close):
            return Diagnostic(
                f"unclosed `{opener.value}`", _token_span(opener),
                hint=f"add `{close}` to close it" + ("; a newline inside brackets does not "
                                                    "end a statement" if close != "}" else ""),
                notes=((f"reached {found} here without a closing `{close}`", span),))

    if _is_keyword(tok):
        if at_start and tok.value == "return":
            return Diagnostic("unexpected keyword `return`", span,
                              hint="`return` belongs inside a `network` block")
        if at_start and tok.value == "param":
            return Diagnostic("unexpected keyword `param`", span,
                              hint="`param` belongs inside a `layer` block")
        if "NAME" in accepts:
            return Diagnostic(f"unexpected keyword `{tok}`", span, hint=_reserved(tok.value))
    if prev is not None and tok.type == "EQUAL" and _is_keyword(prev):
        # `input = ...`: the keyword was taken as the start of a statement
        return Diagnostic(f"unexpected keyword `{prev}`", _token_span(prev),
                          hint=_reserved(prev.value))
    if prev is not None and prev.type == "NAME" and prev_at_start and tok.type != "EQUAL":
        # `optimiser adam()`: a misspelled statement keyword reads as a name
        suggestion = did_you_mean(prev.value, STATEMENT_KEYWORDS + BLOCK_KEYWORDS)
        if suggestion:
            return Diagnostic(f"unknown statement `{prev}`", _token_span(prev), hint=suggestion)
    hint = _expected_hint(accepts)
    if tok.value in _COMPARISONS and "NUMBER" not in accepts:
        hint = "comparisons do not chain: `a < b < c` is not allowed" + (f"; {hint}" if hint else "")
    return Diagnostic(f"unexpected {found}", span, hint=hint)


def _unexpected_eof(accepts: set[str], before: list[Token],
                    still_open: list[tuple[Token, Optional[Token]]]) -> Diagnostic:
    # Lark puts $END at the last token's start; point just after the last
    # real token instead, where the missing text would go.
    last = next((t for t in reversed(before) if t.type not in _SEPARATORS), None)
    span = Span.point(last.end_line, last.end_column) if last is not None else Span.point(1, 1)
    if not still_open:
        return Diagnostic("unexpected end of file", span, hint=_expected_hint(accepts))
    opener, first = still_open[-1]
    if opener.value == "{":
        block = f"`{first}` block" if first is not None and _is_keyword(first) else "block"
        return Diagnostic(f"unexpected end of file inside {block}, expected `}}`", span,
                          notes=((f"the {block} opens here", _token_span(opener)),))
    return Diagnostic(f"unexpected end of file: unclosed `{opener.value}`", span,
                      hint=f"expected `{_OPENERS[opener.value]}`",
                      notes=((f"`{opener.value}` opened here", _token_span(opener)),))


def _bad_character(exc: UnexpectedCharacters, source: str) -> Diagnostic:
    ch = source[exc.pos_in_stream]
    shown = f"`{ch}`" if ch.isprintable() and not ch.isspace() else f"U+{ord(ch):04X}"
    hint = None
    if ch in "\"'":
        hint = "the language has no strings"
    elif ch == "!":
        hint = "did you mean `!=`?"
    elif not ch.isascii():
        hint = "only ASCII characters are allowed outside comments"
    return Diagnostic(f"unexpected character {shown}", Span.point(exc.line, exc.column), hint=hint)


def _accepts(exc: UnexpectedToken) -> set[str]:
    """The terminals the parser would have taken instead (exact, via the interactive parser)."""
    try:
        return set(exc.interactive_parser.accepts())
    except Exception:                      # noqa: BLE001 -- fall back to Lark's coarser set
        return set(exc.expected)


def _open_brackets(tokens: Sequence[Token]) -> list[tuple[Token, Optional[Token]]]:
    """Brackets still open after `tokens`, innermost last, each with the first token
    of the statement it belongs to (`layer` for a layer body's `{`)."""
    stack: list[tuple[Token, Optional[Token]]] = []
    first: Optional[Token] = None
    for i, tok in enumerate(tokens):
        if _starts_statement(tokens, i):
            first = tok
        if tok.value in _OPENERS and tok.type not in ("NAME", "_NL"):
            stack.append((tok, first))
        elif tok.value in _CLOSERS and tok.type != "NAME" and stack:
            stack.pop()
    return stack


def _starts_statement(tokens: Sequence[Token], i: int) -> bool:
    """Whether tokens[i] (or a token following all of `tokens`, for i == len) begins a statement."""
    return i == 0 or tokens[i - 1].type in _SEPARATORS or tokens[i - 1].value == "{"


def _closed_later(source: str, pos: int, closer: str) -> bool:
    """Whether the first closing bracket after `pos` that closes something opened
    before `pos` is `closer` (a rough scan: brackets in comments are skipped)."""
    depth, i = 0, pos
    while i < len(source):
        ch = source[i]
        if ch == "#":
            i = source.find("\n", i)
            if i < 0:
                break
        elif ch in _OPENERS:
            depth += 1
        elif ch in _CLOSERS:
            depth -= 1
            if depth < 0:
                return ch == closer
        i += 1
    return False


def _is_keyword(tok: Token) -> bool:
    return _lark().lexer_conf.postlex.keywords.get(tok.value) == tok.type


def _reserved(word: str) -> str:
    return f"`{word}` is a reserved keyword and cannot be used as a name"


def _describe_token(tok: Token) -> str:
    if tok.type == "$END":
        return "end of file"
    if tok.type == "_NL":
        return "end of line"
    if tok.type == "NAME":
        return f"name `{tok}`"
    if tok.type == "NUMBER":
        return f"number `{tok}`"
    if _is_keyword(tok):
        return f"keyword `{tok}`"
    return f"`{tok}`"


@lru_cache(maxsize=None)
def _terminal_text() -> dict[str, str]:
    """Terminal name -> its literal text, for the terminals that are literals."""
    return {t.name: t.pattern.value for t in _lark().terminals if isinstance(t.pattern, PatternStr)}


def _expected_hint(accepts: Iterable[str]) -> Optional[str]:
    """`expected a name or `)``: the acceptable terminals in words, grouped."""
    text = _terminal_text()
    by_text = {v: k for k, v in text.items()}
    left = set(accepts)
    words: list[str] = []
    statement_starts = {by_text[k] for k in STATEMENT_KEYWORDS}
    if len(left & statement_starts) >= 5:
        words.append("a statement")
        left -= statement_starts | {"NAME", "_NL", "SEMICOLON", "$END"}
    if "NAME" in left:
        left -= {by_text["return"], by_text["init"]}     # only accepted as option names here
    if {"NAME", "NUMBER", "LPAR"} <= left:
        words.append("an expression")
        left -= {"NAME", "NUMBER"} | {by_text[t] for t in ("(", "-", "+", "true", "false", "sum")}
    tail: list[str] = []
    operators = {n for n in left if text.get(n) in _OPERATORS}
    if len(operators) >= 4:
        left -= operators
        tail.append("an operator")
    if "_NL" in left:
        tail += ["a newline", "`;`"] if "SEMICOLON" in left else ["a newline"]
        left -= {"_NL", "SEMICOLON", "$END"}
    special = {"NAME": "a name", "NUMBER": "a number", "$END": "end of file"}
    words += sorted(special.get(n) or f"`{text.get(n, n)}`" for n in left)
    words += tail
    if not words:
        return None
    if words == ["a newline", "`;`"]:
        return "expected a newline or `;` to end the statement"
    return "expected " + (words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1])
