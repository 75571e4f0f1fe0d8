"""Read, parse and check a `.nn` file: the front half of the pipeline."""
from __future__ import annotations

from pathlib import Path

from ..diagnostics import UsageError


def read_source(path: str | Path) -> str:
    """The file's text, or a one-line UsageError for anything that is not a UTF-8 text file."""
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{path}: no such file")
    if p.is_dir():
        raise UsageError(f"{path}: is a directory, expected a .nn file")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror}") from None
    if b"\x00" in data:
        raise UsageError(f"{path}: is a binary file, expected a UTF-8 .nn text file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: is not valid UTF-8 (byte {exc.start})") from None
    return text.removeprefix("\ufeff")


def parse_file(path: str | Path):
    from .parser import parse
    return parse(read_source(path), str(path))


def load_model(path: str | Path):
    """Parse and check a file into a `ModelIR` (raises CompileError / UsageError)."""
    from .checker import check
    return check(parse_file(path))


def load_source(source: str, path: str = "<string>"):
    from .checker import check
    from .parser import parse
    return check(parse(source, path))
