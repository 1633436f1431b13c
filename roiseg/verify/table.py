"""The one table printer of the parity reports: columns declared once, a header, a rule, a row per item."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence


@dataclass(frozen=True)
class Column:
    """One column: its ``title``, ``width`` (characters; 0: as wide as the cell), how a row's ``cell``
    text is made, left or right aligned, and the spaces before it (``gap``)."""

    title: str
    width: int
    cell: Callable[[dict[str, Any]], str]
    left: bool = False
    gap: int = 1


def _fit(text: str, col: Column) -> str:
    return text.ljust(col.width) if col.left else text.rjust(col.width)


def format_rows(columns: Sequence[Column], rows: Sequence[dict[str, Any] | str], footer: Sequence[str] = ()) -> str:
    """Header, a rule as long as the header, one line per row (a ``str`` row is printed as it is), the footer."""
    def line(cells: Sequence[str]) -> str:
        return "".join((" " * col.gap if i else "") + _fit(text, col) for i, (col, text) in enumerate(zip(columns, cells)))

    head = line([col.title for col in columns]).rstrip()
    out = [head, "-" * len(head)]
    out += [row if isinstance(row, str) else line([col.cell(row) for col in columns]) for row in rows]
    return "\n".join([*out, *footer])


def verdict(passed: bool) -> str:
    return "PASS" if passed else "FAIL"
