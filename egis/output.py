"""Plain-text tables and JSON for CLI output (no dependencies: this is read by humans and jq)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from enum import Enum
from typing import Any

from pydantic import BaseModel


def plain(value: Any) -> Any:
    """Make a value JSON-serializable without losing exactness (Decimals become strings)."""
    if isinstance(value, BaseModel):
        return plain(value.model_dump(mode="python"))
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(v) for v in value]
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    return value


def to_json(value: Any) -> str:
    return json.dumps(plain(value), indent=2, sort_keys=False)


def cell(value: Any, missing: str = "-") -> str:
    """One value as a table cell or inside a sentence: plain decimals (60000, never 6E+4)."""
    value = plain(value)
    if value is None:
        return missing
    if isinstance(value, str) and "T" in value and value[:4].isdigit() and len(value) > 19:
        return value[:19].replace("T", " ")
    return str(value)


def table(rows: Iterable[Mapping[str, Any]], columns: Sequence[str], *, title: str | None = None) -> str:
    """Render rows as an aligned text table with the given columns."""
    cells = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    lines = []
    if title:
        lines.append(title)
    lines.append("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)))
    lines.append("  ".join("-" * w for w in widths))
    lines.extend("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells)
    if not cells:
        lines.append("(none)")
    return "\n".join(lines)
