"""Tidy result tables: one row per strategy x configuration x repetition.

A row holds plain values (str, int, float, bool, None). A table also carries a legend (what each
column means, with its unit), the names of the configuration columns (every scenario parameter,
so that a row read alone says how it was made) and the violations recorded by its runs.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import os
import statistics
import tempfile
from typing import Any, Iterable, Sequence


class ResultTable:
    """Rows of plain values with an ordered set of columns, a legend and the runs' violations."""

    def __init__(self, rows: Iterable[dict[str, Any]] = (), *, title: str = "", columns: Sequence[str] | None = None,
                 legend: dict[str, str] | None = None, params: Sequence[str] = (),
                 violations: Iterable[dict[str, Any]] = (), shown: Sequence[str] = (),
                 series: Iterable[dict[str, Any]] = ()):
        self.rows: list[dict[str, Any]] = [dict(r) for r in rows]
        self.title = title
        self.legend: dict[str, str] = dict(legend or {})
        #: the configuration columns (scenario parameters)
        self.params: list[str] = list(params)
        #: every violation recorded by the runs, with the strategy, rep and kernel step of each
        self.violations: list[dict[str, Any]] = [dict(v) for v in violations]
        #: the columns a person reads first (the terminal's, repr's)
        self.shown: list[str] = list(shown)
        #: time series of the runs that record them, one dict per run with its strategy, rep and seed
        #: (sev-teardown: the neighbours' hit rate per window around the teardown, per-CPU flushes)
        self.series: list[dict[str, Any]] = [dict(s) for s in series]
        cols: list[str] = list(columns or [])
        for r in self.rows:
            for k in r:
                if k not in cols:
                    cols.append(k)
        self.columns = cols

    def append(self, row: dict[str, Any], violations: Iterable[dict[str, Any]] = ()) -> None:
        self.rows.append(dict(row))
        for k in row:
            if k not in self.columns:
                self.columns.append(k)
        self.violations.extend(dict(v) for v in violations)

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)

    def column(self, name: str) -> list[Any]:
        return [r.get(name) for r in self.rows]

    def where(self, **eq: Any) -> "ResultTable":
        keep = [r for r in self.rows if all(r.get(k) == v for k, v in eq.items())]
        vkeys = {k: v for k, v in eq.items() if k in ("strategy", "rep", "seed")}
        return ResultTable(keep, title=self.title, columns=self.columns, legend=self.legend, params=self.params,
                           shown=self.shown, violations=[v for v in self.violations if all(v.get(k) == x for k, x in vkeys.items())],
                           series=[v for v in self.series if all(v.get(k) == x for k, x in vkeys.items())])

    def varying(self, columns: Sequence[str]) -> list[str]:
        """Those of `columns` whose value is not the same in every row."""
        return [c for c in columns if len({_key(r.get(c)) for r in self.rows}) > 1]

    # -- files ---------------------------------------------------------------------------------

    def to_csv(self) -> str:
        out = io.StringIO()
        w = csv.DictWriter(out, fieldnames=self.columns, lineterminator="\n")
        w.writeheader()
        for r in self.rows:
            w.writerow({k: ("" if v is None or (isinstance(v, float) and math.isnan(v)) else v) for k, v in r.items()})
        return out.getvalue()

    def to_json(self) -> str:
        """JSON with NaN and infinities as null (JSON has no NaN)."""
        doc = {"title": self.title, "columns": self.columns, "legend": self.legend, "params": self.params,
               "rows": [{k: _json_value(v) for k, v in r.items()} for r in self.rows]}
        if self.series:
            doc["series"] = [_json_tree(s) for s in self.series]
        return json.dumps(doc, indent=1, allow_nan=False)

    def violations_csv(self) -> str:
        """Every recorded violation, one line each."""
        cols = ["strategy", "rep", "seed", "step", "kind", "cause", "cpu", "pa", "key", "other_key", "owner", "cycle"]
        out = io.StringIO()
        w = csv.DictWriter(out, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for v in self.violations:
            w.writerow(v)
        return out.getvalue()

    def to_dataframe(self):
        """A pandas DataFrame (pandas is an optional dependency: pip install sevsim[pandas])."""
        import pandas as pd

        return pd.DataFrame(self.rows, columns=self.columns)

    # -- reading -------------------------------------------------------------------------------

    def summary(self, metrics: Sequence[str], *, by: str = "strategy", baseline: str | None = None) -> "ResultTable":
        """One row per value of `by` (strategy): for each metric the median over its rows
        (repetitions), `METRIC_min` and `METRIC_max`, and, with `baseline`, `METRIC_x`: the ratio of
        the median to the baseline strategy's (None where the baseline's is 0). Verdict: UNSAFE if
        any repetition was. `format_summary()` prints it compactly."""
        groups: dict[Any, list[dict]] = {}
        for r in self.rows:
            groups.setdefault(r.get(by), []).append(r)
        if baseline is not None and baseline not in groups:
            raise ValueError(f"baseline {baseline!r} is not one of the table's {by} values: "
                             f"{', '.join(map(str, groups))}")
        med = {g: {m: _median([r.get(m) for r in rs]) for m in metrics} for g, rs in groups.items()}
        reps = max(len(v) for v in groups.values()) if groups else 0
        out = ResultTable(title=f"{self.title}: median [min-max] of {reps} repetitions"
                                + ("" if baseline is None else f", x = ratio of the medians to {baseline}'s"),
                          legend=self.legend)
        out.metrics = list(metrics)
        out.baseline = baseline
        out.by = by
        for g, rs in groups.items():
            row: dict[str, Any] = {by: g, "reps": len(rs)}
            for m in metrics:
                vals = [v for v in (r.get(m) for r in rs) if _is_num(v) and not math.isnan(v)]
                row[m] = med[g][m]
                row[f"{m}_min"] = min(vals) if vals else None
                row[f"{m}_max"] = max(vals) if vals else None
                if baseline is not None:
                    b = med[baseline][m]
                    row[f"{m}_x"] = (med[g][m] / b) if _is_num(b) and b and _is_num(med[g][m]) else None
            if any("verdict" in r for r in rs):
                row["verdict"] = "UNSAFE" if any(r.get("verdict") == "UNSAFE" for r in rs) else "SAFE"
            out.append(row)
        return out

    def format_summary(self) -> str:
        """A summary() table with one cell per metric: "median [min-max] x ratio"."""
        metrics = getattr(self, "metrics", [])
        cells = []
        for r in self.rows:
            by = getattr(self, "by", "strategy")
            row = {by: r.get(by), "reps": r.get("reps")}
            for m in metrics:
                f = _column_format([r.get(m), r.get(f"{m}_min"), r.get(f"{m}_max")])
                text = f(r.get(m))
                if r.get(f"{m}_min") != r.get(f"{m}_max"):
                    text += f" [{f(r.get(f'{m}_min'))}-{f(r.get(f'{m}_max'))}]"
                if getattr(self, "baseline", None) is not None:
                    x = r.get(f"{m}_x")
                    text += f" {x:.2f}x" if x is not None else " -"
                row[m] = text
            row["verdict"] = r.get("verdict")
            cells.append(row)
        return ResultTable(cells, title=self.title, legend=self.legend).format(legend=True)

    def format(self, columns: Sequence[str] | None = None, *, legend: bool = False) -> str:
        """A readable fixed-width table: one number format per column; with `legend`, what each
        shown column means under it."""
        cols = [c for c in (columns or self.columns) if c in self.columns]
        fmts = {c: _column_format([r.get(c) for r in self.rows]) for c in cols}
        cells = [[fmts[c](r.get(c)) for c in cols] for r in self.rows]
        widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(cols)]
        num = [all(_is_num(r.get(c)) or r.get(c) is None for r in self.rows) for c in cols]
        lines = []
        if self.title:
            lines.append(self.title)
        lines.append("  ".join(c.rjust(w) if n else c.ljust(w) for c, w, n in zip(cols, widths, num)))
        lines.append("  ".join("-" * w for w in widths))
        for row in cells:
            lines.append("  ".join(v.rjust(w) if n else v.ljust(w) for v, w, n in zip(row, widths, num)).rstrip())
        if legend:
            shown = [c for c in cols if c in self.legend]
            if shown:
                lines.append("")
                width = max(len(c) for c in shown)
                for c in shown:
                    lines.append(f"  {c.ljust(width)}  {self.legend[c]}")
        return "\n".join(lines)

    def headline(self) -> list[str]:
        """The columns to show a person: the scenario's chosen ones (or all but the configuration),
        with the configuration columns that vary from row to row after the strategy and rep."""
        base = [c for c in (self.shown or [c for c in self.columns if c not in self.params]) if c in self.columns]
        varying = [c for c in self.varying(self.params) if c not in base]
        return base[:2] + varying + base[2:]

    def __repr__(self) -> str:
        return (f"<ResultTable {self.title!r}: {len(self.rows)} rows x {len(self.columns)} columns>\n"
                + self.format(self.headline()))

    def _repr_html_(self) -> str:
        cols = self.headline()
        fmts = {c: _column_format([r.get(c) for r in self.rows]) for c in cols}
        head = "".join(f'<th title="{html.escape(self.legend.get(c, ""))}">{html.escape(c)}</th>' for c in cols)
        body = "".join(
            "<tr>" + "".join(
                f'<td style="{_cell_style(c, r.get(c))}">{html.escape(fmts[c](r.get(c)))}</td>' for c in cols) + "</tr>"
            for r in self.rows)
        return (f"<div><b>{html.escape(self.title)}</b><table><thead><tr>{head}</tr></thead>"
                f"<tbody>{body}</tbody></table></div>")


def _cell_style(col: str, v: Any) -> str:
    if col == "verdict":
        return "color:#b00020;font-weight:bold" if v == "UNSAFE" else "color:#1b5e20"
    return "text-align:right" if _is_num(v) else ""


def _key(v: Any) -> Any:
    return "nan" if isinstance(v, float) and math.isnan(v) else v


def _median(vals: list[Any]) -> Any:
    nums = [v for v in vals if _is_num(v) and not math.isnan(v)]
    if nums:
        return statistics.median(nums)
    return vals[0] if vals else None


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _json_value(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _json_tree(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _json_tree(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_tree(x) for x in v]
    return _json_value(v)


def _column_format(vals: list[Any]):
    """One format for a column: integers as integers; floats with the decimals the column's
    largest magnitude needs (3 significant digits or more), the same for every row."""
    nums = [abs(v) for v in vals if isinstance(v, float) and math.isfinite(v)]
    if not nums:
        return _fmt
    top = max(nums)
    if top >= 1e7 or (0 < top < 1e-3):
        return lambda v: f"{v:.3e}" if isinstance(v, float) and math.isfinite(v) else _fmt(v)
    if top >= 100:
        decimals = 1
    elif top >= 1:
        decimals = 3
    else:
        decimals = 4
    return lambda v: f"{v:.{decimals}f}" if isinstance(v, float) and math.isfinite(v) else _fmt(v)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
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
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # as open() would make it, not mkstemp's 0600
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode() if isinstance(text, str) else text)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
