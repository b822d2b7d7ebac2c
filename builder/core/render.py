"""Rendering result rows for people and programs: aligned tables, CSV, JSON.

Shared by the CLI, `diff` and the demo (none of them imports the CLI for it).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from decimal import Decimal
from typing import Any, Iterable, Sequence

FORMATS = ("table", "csv", "json")


def render(rows: Sequence[dict[str, Any]], fmt: str, columns: Sequence[str] | None = None) -> str:
    columns = list(columns if columns is not None else (rows[0].keys() if rows else []))
    if fmt == "json":
        return strict_json([{c: r.get(c) for c in columns} for r in rows], indent=2) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(columns)
        for r in rows:
            writer.writerow([_csv_cell(r.get(c)) for c in columns])
        return buf.getvalue()
    return render_table(rows, columns)


def strict_json(obj: Any, **kw: Any) -> str:
    """JSON any strict parser reads: NaN and infinities become null, integral
    decimals (DuckDB's HUGEINT, e.g. every sum() of integers) integers."""
    return json.dumps(json_safe(obj), allow_nan=False, default=str, **kw)


def json_safe(v: Any) -> Any:
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, Decimal):
        if not v.is_finite():
            return None
        return int(v) if v == v.to_integral_value() else float(v)
    if isinstance(v, dict):
        return {k: json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    if isinstance(v, bytes):
        return f"<{len(v)} bytes>"
    return v


def _csv_cell(value: Any) -> str:
    """CSV keeps every value whole: no truncation, floats that round-trip."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    if isinstance(value, (list, dict)):
        return json.dumps(value, default=str)
    return repr(value) if isinstance(value, float) else str(value)


# Control characters: C0 (ESC starts colour and window-title sequences, BEL rings),
# DEL and C1 (0x9b is a one-byte CSI). Stored text that holds them would drive the
# terminal that reads a table, and a newline or tab would break its rows: a table
# shows each escaped as Python writes it (\n, \t, \r, else \xNN). JSON escapes
# them itself; CSV keeps every value whole (programs read those two).
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_SHORT = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def visible(text: str) -> str:
    """TEXT with its control characters escaped, for a terminal."""
    return CONTROL.sub(lambda m: _SHORT.get(m[0]) or f"\\x{ord(m[0]):02x}", text)


def _cell(v: Any, width: int = 60) -> str:
    """A table cell: short floats, control characters escaped, long text cut
    (tables are for reading)."""
    if isinstance(v, float):
        text = f"{v:.6g}"
    elif isinstance(v, bytes):
        text = f"<{len(v)} bytes>"
    elif isinstance(v, (list, dict)):
        text = json.dumps(v, default=str)
    else:
        text = visible(str(v))
    return text if len(text) <= width else text[: width - 1] + "…"


def render_table(rows: Iterable[dict[str, Any]], columns: Sequence[str]) -> str:
    rows = list(rows)
    cells = [[("" if r.get(c) is None else _cell(r.get(c))) for c in columns] for r in rows]
    columns = [visible(str(c)) for c in columns]  # a column alias is text a query chose
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()
    out = [line(columns), line(["-" * w for w in widths])] + [line(r) for r in cells]
    return "\n".join(out) + "\n"
