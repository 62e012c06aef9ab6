"""Small assertions shared by the test modules (importable as ``helpers``; see pyproject's pythonpath)."""

from __future__ import annotations


def single_line(exc: BaseException) -> str:
    """The exception's message, asserting it is one non-empty line (the CLI prints it as is)."""
    text = str(exc)
    assert text and "\n" not in text, f"message should be one non-empty line: {text!r}"
    return text
