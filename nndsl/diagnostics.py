"""Compiler diagnostics: `file:line:col: error: message`, the line, a caret, a hint.

Every user-facing mistake becomes a `Diagnostic`; stages raise `CompileError`
holding one or more of them, and the CLI renders them.  No stage prints.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence


@dataclass(frozen=True)
class Span:
    """1-based line and column of the first character, and of one past the last."""
    line: int
    col: int
    end_line: int
    end_col: int

    @staticmethod
    def point(line: int, col: int) -> "Span":
        return Span(line, col, line, col + 1)


@dataclass(frozen=True)
class Diagnostic:
    message: str
    span: Optional[Span]
    hint: Optional[str] = None
    severity: str = "error"
    notes: tuple[tuple[str, Optional[Span]], ...] = ()   # ("defined here", span)


class CompileError(Exception):
    """A bad model: one or more diagnostics, all ready to show to the user."""

    def __init__(self, diagnostics: Sequence[Diagnostic] | Diagnostic):
        if isinstance(diagnostics, Diagnostic):
            diagnostics = [diagnostics]
        self.diagnostics = list(diagnostics)
        super().__init__("; ".join(d.message for d in self.diagnostics))


class UsageError(Exception):
    """Bad command-line usage or an unreadable input file (exit code 2)."""


def did_you_mean(name: str, candidates: Iterable[str]) -> Optional[str]:
    """A hint naming the closest candidate, or None."""
    close = difflib.get_close_matches(name, sorted(set(candidates)), n=1, cutoff=0.6)
    return f"did you mean `{close[0]}`?" if close else None


def render(diag: Diagnostic, source: str, path: str) -> str:
    """The rustc/clang-style text of one diagnostic."""
    lines = source.splitlines()
    out = []
    if diag.span is None:
        out.append(f"{path}: {diag.severity}: {diag.message}")
    else:
        sp = diag.span
        out.append(f"{path}:{sp.line}:{sp.col}: {diag.severity}: {diag.message}")
        out.extend(_excerpt(lines, sp))
    for text, span in diag.notes:
        if span is None:
            out.append(f"  note: {text}")
        else:
            out.append(f"{path}:{span.line}:{span.col}: note: {text}")
            out.extend(_excerpt(lines, span))
    if diag.hint:
        out.append(f"  hint: {diag.hint}")
    return "\n".join(out)


def _excerpt(lines: list[str], sp: Span) -> list[str]:
    if not (1 <= sp.line <= len(lines)):
        return []
    text = lines[sp.line - 1].rstrip("\r\n")
    # Tabs are shown as single spaces so the caret stays under the column.
    shown = text.replace("\t", " ")
    end = sp.end_col if sp.end_line == sp.line else len(text) + 1
    width = max(1, min(end, len(text) + 1) - sp.col)
    gutter = f"{sp.line:>4} | "
    return [gutter + shown, " " * (len(gutter) + sp.col - 1) + "^" * width]


def render_all(diags: Sequence[Diagnostic], source: str, path: str) -> str:
    return "\n".join(render(d, source, path) for d in diags)
