"""Property tests: whatever the text, the front end answers with an AST (or a
checked model) or a CompileError -- never another exception.

Programs come from the grammar itself (`hypothesis.extra.lark.from_lark`) and
from random edits of valid programs, which exercise the error paths.
"""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.lark import from_lark
from lark.lexer import PatternStr

from nndsl.diagnostics import CompileError, render_all
from nndsl.frontend.parser import _lark, parse

try:                                       # parse + check once the checker exists
    from nndsl.frontend.checker import check as _check
except Exception:                          # noqa: BLE001 -- absent or unfinished: parse only
    _check = None


def front_end(source: str) -> None:
    program = parse(source, "<fuzz>")
    if _check is not None:
        _check(program)


def survives(source: str) -> None:
    try:
        front_end(source)
    except CompileError as exc:
        assert exc.diagnostics
        render_all(exc.diagnostics, source, "<fuzz>")      # and it renders


FUZZ = settings(max_examples=200, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# Terminal strategies that keep generated text lexable as intended: plausible
# names and valid numbers, spaces around words (a keyword glued to a name would
# lex as one name), and a few newline styles.
NAMES = ["x", "h", "y", "z", "o", "W", "b", "k", "i", "j", "K", "T", "H", "units", "dense",
         "relu", "adam", "sgd", "squared", "bce_logits", "xavier", "normal", "where", "exp",
         "tanh", "lr", "batch", "act", "inputs", "modelx", "d_loss", "generator"]
NUMBERS = ["0", "1", "3", "10", "784", "0.5", "1.0", ".5", "1e-3", "2e-4", "1E3"]


def _words():
    explicit = {
        "NAME": st.sampled_from(NAMES).map(lambda n: f" {n} "),
        "NUMBER": st.sampled_from(NUMBERS).map(lambda n: f" {n} "),
        "_NL": st.sampled_from(["\n", "\r\n", "\n\n", "\n\t", "  # note\n"]),
        "WS": st.sampled_from([" ", "\t"]),
        "COMMENT": st.just(""),
    }
    for t in _lark(cache=False).terminals:
        if isinstance(t.pattern, PatternStr) and t.pattern.value.isidentifier():
            explicit[t.name] = st.just(f" {t.pattern.value} ")
    return explicit


def _prefer_shallow(strategy, keep_uniform=("start", "_stmt"), bias=3):
    """from_lark picks each rule's alternatives uniformly; with the recursive
    expression rules that makes the expected program infinite, nearly every
    draw overruns and is thrown away, and 200 examples take a minute.  Weight
    each rule's shallowest alternatives `bias` times more (every alternative
    can still be drawn); statements stay uniform.  If Hypothesis' internals
    change, fall back to the plain strategy."""
    table = getattr(getattr(strategy, "wrapped_strategy", None), "nonterminal_strategies", None)
    if not table or not all(hasattr(s, "elements") for s in table.values()):
        return strategy
    options = {name: list(s.elements) for name, s in table.items()}
    depth: dict[str, float] = {}            # least derivation depth of each rule (a fixpoint)
    alt_depth = lambda alt: 1 + max((0 if sym.is_term else depth.get(sym.name, float("inf"))  # noqa: E731
                                     for sym in alt), default=0)
    while True:
        new = {name: min(map(alt_depth, alts)) for name, alts in options.items()}
        if new == depth:
            break
        depth = new
    for name, alts in options.items():
        if name not in keep_uniform:
            shallow = [a for a in alts if alt_depth(a) == depth[name]]
            table[name] = st.sampled_from(shallow * (bias * len(alts)) + alts)
    return strategy


# Whole programs are drawn statement by statement, a few at a time.
STATEMENT = _prefer_shallow(from_lark(_lark(cache=False), start="_stmt", explicit=_words()))
PROGRAM = st.lists(STATEMENT, min_size=1, max_size=4).map("\n".join)


@FUZZ
@given(PROGRAM)
def test_generated_programs(program):
    survives("model m\n" + program)
    survives(program)


VALID = [
    "model m\ninput x[784]\nh = dense(x, 128, act=relu)\no = dense(h, 10)\ntarget label: class(10)\n"
    "loss cross_entropy(o, label)\noptimizer adam(lr=1e-3)\ntrain batch=64 epochs=10\n",
    "model m\nlayer bilinear(x[i], z[j], units K) -> out[k:K] {\n    param W[k, i, j] init=xavier\n"
    "    out[k] = sum(i, j: W[k, i, j] * x[i] * z[j])\n}\n",
    "model m\nnetwork g(z) { h = dense(z, 128, act=relu); return dense(h, 784) }\n"
    "loss d_loss = bce_logits(g(x), 1) wrt g\noptimizer d_loss: adam(lr=2e-4, beta1=0.5)\n",
    "model m\nloss huber(o, y, delta=1.0) = where(abs(o - y) <= delta,\n    0.5 * (o - y)^2,\n"
    "    delta * (abs(o - y) - 0.5 * delta))\n",
]
PIECES = ["(", ")", "[", "]", "{", "}", ",", ";", ":", "=", "\n", "\r\n", "\t", " ", "#", "+", "**",
          "<=", "->", "model", "input", "return", "sum", "wrt", "units", "x", "1e", "3", "ä", "$", "\""]


@st.composite
def edited(draw):
    """A valid program with a few characters deleted, inserted or replaced."""
    text = draw(st.sampled_from(VALID))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(text)))
        cut = draw(st.integers(0, 3))
        text = text[:at] + draw(st.sampled_from(PIECES + [""])) + text[at + cut:]
    return text


@FUZZ
@given(edited())
def test_edited_programs(source):
    survives(source)


@FUZZ
@given(st.lists(st.sampled_from(PIECES), max_size=30).map("".join))
def test_token_soup(source):
    survives(source)
