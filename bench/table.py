"""Aligned plain-text tables for the terminal."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

__all__ = ["PROXY_COLUMNS", "Column", "format_generic", "format_table", "format_value"]

Column = tuple[str, str, Callable[[object], str]]


def _fixed(digits: int, suffix: str = "") -> Callable[[object], str]:
    """A formatter for numbers with `digits` decimals; '-' for missing values."""

    def fmt(value: object) -> str:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return f"{value:,.{digits}f}{suffix}"
        return "-"

    return fmt


def _signed(digits: int) -> Callable[[object], str]:
    """A formatter that always shows the sign (for added latency)."""

    def fmt(value: object) -> str:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return f"{value:+.{digits}f}"
        return "-"

    return fmt


PROXY_COLUMNS: list[Column] = [
    ("target", "target", str),
    ("connections", "conns", str),
    ("rps", "req/s", _fixed(0)),
    ("cpu_us_per_req", "cpu us/req", _fixed(1)),
    ("p50_ms", "p50 ms", _fixed(3)),
    ("p99_ms", "p99 ms", _fixed(3)),
    ("x_direct", "/direct", _fixed(2, "x")),
    ("x_minimal", "/minimal", _fixed(2, "x")),
    ("x_nginx", "/nginx", _fixed(2, "x")),
    ("cpu_vs_nginx", "cpu eff/nginx", _fixed(2, "x")),
    ("added_p50_ms", "+p50 ms", _signed(3)),
    ("errors", "errors", str),
    ("other_cpu_pct", "other%", _fixed(0)),
]


def format_table(rows: Sequence[Mapping[str, object]], columns: Sequence[Column]) -> str:
    """Rows as an aligned table; a row with a `note` prints it after its first two cells."""
    header = [title for _, title, _ in columns]
    cells = [
        [fmt(row.get(key)) for key, _, fmt in columns] if "note" not in row else None
        for row in rows
    ]
    widths = [len(h) for h in header]
    for line in cells:
        if line is not None:
            widths = [max(w, len(c)) for w, c in zip(widths, line, strict=True)]
    for row in rows:
        if "note" in row:
            for i, (key, _, fmt) in enumerate(columns[:2]):
                widths[i] = max(widths[i], len(fmt(row.get(key))))

    def render(values: Sequence[str]) -> str:
        first = [values[0].ljust(widths[0])]
        rest = [v.rjust(w) for v, w in zip(values[1:], widths[1:], strict=False)]
        return "  ".join(first + rest).rstrip()

    out = [render(header), render(["-" * w for w in widths])]
    for row, line in zip(rows, cells, strict=True):
        if line is None:
            lead = [fmt(row.get(key)) for key, _, fmt in columns[:2]]
            out.append(render(lead) + "  " + str(row["note"]))
        else:
            out.append(render(line))
    return "\n".join(out)


def format_value(value: object) -> str:
    """A cell for a generic section table: numbers with sensible precision."""
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.3g}" if abs(value) < 0.01 else f"{value:.2f}"
    return str(value)


def format_generic(rows: Sequence[Mapping[str, object]]) -> str:
    """Rows of any shape (the union of their keys, in first-seen order) as a table."""
    keys: list[str] = []
    for row in rows:
        keys.extend(k for k in row if k not in keys and not isinstance(row[k], dict | list))
    return format_table(rows, [(k, k, format_value) for k in keys])
