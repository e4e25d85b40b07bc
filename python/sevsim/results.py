"""Tidy result tables: one row per strategy x configuration x repetition."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from typing import Any, Iterable, Sequence


class ResultTable:
    """Rows of plain values (str, int, float, bool) with an ordered set of columns."""

    def __init__(self, rows: Iterable[dict[str, Any]] = (), *, title: str = "", columns: Sequence[str] | None = None):
        self.rows: list[dict[str, Any]] = [dict(r) for r in rows]
        self.title = title
        cols: list[str] = list(columns or [])
        for r in self.rows:
            for k in r:
                if k not in cols:
                    cols.append(k)
        self.columns = cols

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append(dict(row))
        for k in row:
            if k not in self.columns:
                self.columns.append(k)

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)

    def column(self, name: str) -> list[Any]:
        return [r.get(name) for r in self.rows]

    def where(self, **eq: Any) -> "ResultTable":
        return ResultTable([r for r in self.rows if all(r.get(k) == v for k, v in eq.items())],
                           title=self.title, columns=self.columns)

    def to_csv(self) -> str:
        out = io.StringIO()
        w = csv.DictWriter(out, fieldnames=self.columns, lineterminator="\n")
        w.writeheader()
        for r in self.rows:
            w.writerow(r)
        return out.getvalue()

    def to_json(self) -> str:
        return json.dumps({"title": self.title, "columns": self.columns, "rows": self.rows}, indent=1)

    def to_dataframe(self):
        """A pandas DataFrame (pandas is an optional dependency: pip install sevsim[pandas])."""
        import pandas as pd

        return pd.DataFrame(self.rows, columns=self.columns)

    def format(self, columns: Sequence[str] | None = None) -> str:
        """A readable fixed-width table."""
        cols = list(columns or self.columns)
        cells = [[_fmt(r.get(c)) for c in cols] for r in self.rows]
        widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(cols)]
        num = [all(_is_num(r.get(c)) for r in self.rows) for c in cols]
        lines = []
        if self.title:
            lines.append(self.title)
        lines.append("  ".join(c.rjust(w) if n else c.ljust(w) for c, w, n in zip(cols, widths, num)))
        lines.append("  ".join("-" * w for w in widths))
        for row in cells:
            lines.append("  ".join(v.rjust(w) if n else v.ljust(w) for v, w, n in zip(row, widths, num)))
        return "\n".join(lines)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if v != 0 and (abs(v) >= 1e6 or abs(v) < 1e-3):
            return f"{v:.3g}"
        return f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"
    return str(v)


def write_atomic(path: str, text: str | bytes) -> None:
    """Write a file so that it either appears whole or not at all."""
    d = os.path.dirname(os.path.abspath(path)) or "."
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".sevsim-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode() if isinstance(text, str) else text)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
