"""Checks for the options several model families share (``stem``, ``dropout``, class counts)."""

from __future__ import annotations

import numbers

STEMS = ("auto", "small", "standard")

# stem="auto" uses the small stem below this input size, the standard one from it on.
SMALL_STEM_BELOW = 128


def resolve_stem(stem: str, input_size: int, model: str) -> str:
    """``"small"`` or ``"standard"``; ``"auto"`` is small below 128 px and standard from 128 px.

    Raises:
        ValueError: ``stem`` is not one of ``"auto"``, ``"small"``, ``"standard"``.
    """
    if stem not in STEMS:
        valid = ", ".join(repr(s) for s in STEMS)
        raise ValueError(f"stem={stem!r} is not valid for model {model!r}; valid: {valid}")
    if stem == "auto":
        return "small" if input_size < SMALL_STEM_BELOW else "standard"
    return stem


def check_dropout(dropout: float, model: str) -> float:
    """``dropout`` as a float in [0, 1).

    Raises:
        ValueError: not a number in [0, 1).
    """
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout={dropout!r} is not valid for model {model!r}; expected a number in [0, 1)")
    return float(dropout)


def check_num_classes(num_classes: int) -> int:
    """``num_classes`` as an int >= 1.

    Raises:
        ValueError: not an integer >= 1.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 1:
        raise ValueError(f"num_classes={num_classes!r} is not valid; expected an integer >= 1")
    return int(num_classes)
