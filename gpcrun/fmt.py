"""Formatting for people. Everything else stores integer bytes and raw numbers."""
from __future__ import annotations


def human_bytes(n: int | None) -> str:
    if n is None:
        return "null"
    for unit, div in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= div:
            return f"{n / div:.2f} {unit}"
    return f"{n} B"


def table(rows: list[list[str]], header: list[str], align: str | None = None) -> str:
    """Plain-text table; align is a string of 'l'/'r' per column."""
    cols = len(header)
    align = align or "l" * cols
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(cols)]
    def fmt(r):
        return "  ".join(str(c).ljust(w) if a == "l" else str(c).rjust(w)
                         for c, w, a in zip(r, widths, align)).rstrip()
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])
