"""Plain-text tables for the CLI (stdlib only, so listing commands import nothing heavy)."""

from __future__ import annotations


def format_table(header: list[str], rows: list[list[str]], *, footer: list[str] | None = None) -> str:
    """Aligned text table: first column left-aligned, the others right-aligned.

    Example:
        >>> print(format_table(["name", "n"], [["a", "1"], ["bb", "22"]]))
        name   n
        ----  --
        a      1
        bb    22
    """
    every = [header] + rows + ([footer] if footer else [])
    widths = [max(len(r[c]) for r in every) for c in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(cell.ljust(w) if c == 0 else cell.rjust(w)
                         for c, (cell, w) in enumerate(zip(cells, widths, strict=True)))

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule] + [line(r) for r in rows] + ([rule, line(footer)] if footer else []))
