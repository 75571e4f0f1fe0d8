"""The export's one error: a one-line message, exit 1 on the command line."""
from __future__ import annotations


class ExportError(Exception):
    """A model or weights file that cannot be exported (the message is one line)."""
