"""`sevsim report`: one static HTML page from sweeps (`sevsim sweep --out DIR`) and runs
(`sevsim run --json FILE`).

Per scenario: the headline (which strategies are safe, the cheapest safe one), the verdict table
(median [min-max] over seeds of the scenario's metrics, per strategy and configuration) and plots,
drawn with matplotlib and embedded as inline SVG, so that the page needs no network and no script:
cost per strategy with min-max error bars over seeds; how the cost scales with each swept numeric
parameter; the neighbours' hit rate window by window around a teardown and the per-CPU flush
timeline of its steps (sev-teardown's time series); and, where the data has the columns, flushes
per nested transition (`flushes_per_transition`) and GB/s per direct-map policy and guest count
(`pagein_gbps`).
"""

from __future__ import annotations

import html
import io
import json
import math
import os
import re
import statistics
from dataclasses import dataclass, field
from typing import Any, Sequence

from . import __version__
from .results import ResultTable, _column_format


class ReportError(ValueError):
    pass


# -- reading --------------------------------------------------------------------------------------

@dataclass
class Scenario:
    name: str
    rows: list[dict[str, Any]] = field(default_factory=list)     # finished runs
    failed: list[dict[str, Any]] = field(default_factory=list)   # failed sweep cells
    series: list[dict[str, Any]] = field(default_factory=list)   # time series, each with its row's configuration
    sources: list[str] = field(default_factory=list)
    declared: list[str] = field(default_factory=list)  # configuration columns a run JSON names ("params")

    @property
    def module(self):
        from . import scenarios

        return scenarios.SCENARIOS.get(self.name)

    @property
    def params(self) -> list[str]:
        m = self.module
        if m is not None:
            return [p for p in m.PARAMS if any(p in r for r in self.rows)]
        if self.declared:
            return [p for p in self.declared if any(p in r for r in self.rows)]
        skip = {"strategy", "rep", "seed", "scenario", "sevsim_version"}
        return [c for c in _columns(self.rows) if c not in skip and not _numeric(self.rows, c)]

    def varying(self) -> list[str]:
        return [p for p in self.params if len({_key(r.get(p)) for r in self.rows}) > 1]

    def config(self, r: dict[str, Any]) -> tuple:
        return tuple(r.get(p) for p in self.varying())

    def configs(self) -> list[tuple]:
        """The combinations of the swept parameters, in their natural order (sizes by bytes)."""
        return sorted(dict.fromkeys(self.config(r) for r in self.rows), key=self._order)

    def _order(self, cfg: tuple) -> tuple:
        key = []
        for v in cfg:
            n = v if isinstance(v, (int, float)) and not isinstance(v, bool) else _size_bytes(v)
            key.append((0, n, "") if n is not None else (1, 0, str(v)))
        return tuple(key)

    def strategies(self) -> list[str]:
        from .kvm import STRATEGIES

        seen = list(dict.fromkeys(r.get("strategy") for r in self.rows))
        order = {s: i for i, s in enumerate(STRATEGIES)}
        return sorted(seen, key=lambda s: order.get(s, len(order)))

    def label(self, config: tuple) -> str:
        return " ".join(f"{k}={v}" for k, v in zip(self.varying(), config)) or "all runs"


def _columns(rows):
    return list(dict.fromkeys(k for r in rows for k in r))


def _numeric(rows, col) -> bool:
    vals = [r.get(col) for r in rows if r.get(col) is not None]
    return bool(vals) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals)


def _key(v):
    return "nan" if isinstance(v, float) and math.isnan(v) else v


def _scenario_of(row: dict, doc_title: str = "") -> str:
    return row.get("scenario") or doc_title.split(":", 1)[0].strip() or "unknown"


def load(inputs: Sequence[str]) -> dict[str, Scenario]:
    """Sweep directories and run JSON files, by scenario."""
    from . import sweep

    out: dict[str, Scenario] = {}
    seen_cells: set[str] = set()

    def get(name: str, src: str) -> Scenario:
        sc = out.setdefault(name, Scenario(name))
        if src not in sc.sources:
            sc.sources.append(src)
        return sc

    for path in inputs:
        if os.path.isdir(path):
            if not os.path.isdir(os.path.join(path, sweep.CELLS)):
                raise ReportError(f"report {path}: not a sweep directory (no {sweep.CELLS}/ in it)")
            try:
                rows = sweep.load(path)
            except sweep.GridError as e:
                raise ReportError(str(e)) from None
            if not rows:
                raise ReportError(f"report {path}: no finished cell in it yet")
            for r in rows:
                if r.get("cell_id") in seen_cells:
                    continue
                seen_cells.add(r.get("cell_id"))
                sc = get(_scenario_of(r), path)
                if r.get("status") == "failed":
                    sc.failed.append(r)
                    continue
                text = r.pop("series", None)
                row = {k: v for k, v in r.items() if k not in sweep.META}
                sc.rows.append(row)
                if text:
                    sc.series.append({**row, **json.loads(text)})
        elif os.path.isfile(path):
            try:
                with open(path) as f:
                    doc = json.load(f)
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                raise ReportError(f"report {path}: not a sevsim run JSON file ({e})") from None
            if not isinstance(doc, dict) or not isinstance(doc.get("rows"), list):
                raise ReportError(f"report {path}: not a sevsim run JSON file (no \"rows\"; sevsim run --json FILE "
                                  "writes one)")
            rows = [r for r in doc["rows"] if isinstance(r, dict)]
            by_rep = {}
            for r in rows:
                sc = get(_scenario_of(r, doc.get("title", "")), path)
                sc.rows.append(r)
                sc.declared += [p for p in doc.get("params", []) if isinstance(p, str) and p not in sc.declared]
                by_rep[(r.get("strategy"), r.get("rep"))] = (sc, r)
            for s in doc.get("series", []):
                hit = by_rep.get((s.get("strategy"), s.get("rep")))
                if hit:
                    hit[0].series.append({**hit[1], **s})
        else:
            raise ReportError(f"report {path}: no such file or directory")
    return out


# -- numbers --------------------------------------------------------------------------------------

def _vals(rows, col) -> list[float]:
    return [float(v) for v in (r.get(col) for r in rows)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]


def _stats(rows, col):
    v = _vals(rows, col)
    if not v:
        return None
    return statistics.median(v), min(v), max(v)


def _fmt(x: float) -> str:
    if x is None:
        return "-"
    a = abs(x)
    if a == 0:
        return "0"
    if a >= 1e6:
        return f"{x:.3g}"
    if a >= 100:
        return f"{x:,.0f}"
    if a >= 1:
        return f"{x:.3g}" if a < 10 else f"{x:.1f}"
    return f"{x:.3g}"


def _size_bytes(v):
    from .config import parse_size

    try:
        return parse_size(v)
    except (ValueError, TypeError):
        return None


# -- plots ----------------------------------------------------------------------------------------

class Figures:
    """matplotlib figures as inline SVG, with ids unique on the page."""

    def __init__(self):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        self.plt = plt
        self.n = 0
        self.style = {"font.size": 8.5, "axes.titlesize": 9.5, "axes.titleweight": "bold", "axes.labelsize": 8.5,
                      "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3,
                      "legend.fontsize": 7.5, "legend.frameon": False, "svg.fonttype": "none",
                      "font.family": ["DejaVu Sans", "sans-serif"], "figure.dpi": 100}

    def figure(self, *a, **kw):
        with self.plt.rc_context(self.style):
            return self.plt.subplots(*a, **kw)

    def svg(self, fig) -> str:
        self.n += 1
        buf = io.StringIO()
        with self.plt.rc_context({**self.style, "svg.hashsalt": f"sevsim-fig-{self.n}"}):
            fig.savefig(buf, format="svg", metadata={"Date": None}, bbox_inches="tight")
        self.plt.close(fig)
        text = buf.getvalue()
        text = text[text.index("<svg"):]
        text = re.sub(r"\s*<metadata>.*?</metadata>", "", text, count=1, flags=re.S)  # RDF boilerplate
        # ids unique on the page: matplotlib numbers its groups from 1 in every figure
        pre = f"f{self.n}-"
        text = re.sub(r'(\sid="|href="#|url\(#)', lambda m: m.group(1) + pre, text)
        # responsive: the page scales it down to the column's width
        text = re.sub(r'<svg([^>]*?) width="([\d.]+)pt" height="([\d.]+)pt"',
                      lambda m: f'<svg{m.group(1)} width="{m.group(2)}pt" height="{m.group(3)}pt" '
                                f'class="plot" role="img" preserveAspectRatio="xMinYMin meet"', text, count=1)
        return text


PALETTE = ["#4269d0", "#efb118", "#3ca951", "#ff725c", "#6cc5b0", "#a463f2", "#ff8ab7", "#9c6b4e", "#97bbf5",
           "#9498a0"]
UNSAFE = "#c62828"


def _colors(names: Sequence[str]) -> dict[str, str]:
    return {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(names)}


def _unsafe(rows) -> bool:
    return any(r.get("verdict") == "UNSAFE" for r in rows)


def plot_costs(F: Figures, sc: Scenario, metrics: list[tuple[str, str]]) -> str | None:
    """Per metric a panel: per strategy the median over seeds with min-max error bars, one bar
    per configuration; hatched with a red edge where some seed was UNSAFE."""
    metrics = [(c, t) for c, t in metrics if _vals(sc.rows, c)]
    if not metrics:
        return None
    strategies, configs = sc.strategies(), sc.configs()[:6]
    ncol = min(len(metrics), 2)
    nrow = math.ceil(len(metrics) / ncol)
    h = max(2.4, 0.22 * len(strategies) * max(1, len(configs)) ** 0.7 + 1.1)
    fig, axes = F.figure(nrow, ncol, figsize=(5.6 * ncol, h * nrow), squeeze=False, layout="constrained")
    ccol = _colors([sc.label(c) for c in configs]) if len(configs) > 1 else None
    scol = _colors(strategies)
    width = 0.8 / len(configs)
    for ax, (col, title) in zip(axes.flat, metrics):
        pos_vals = []
        for j, cfg in enumerate(configs):
            ys, meds, lo, hi, colors, edges, hatches = [], [], [], [], [], [], []
            for i, s in enumerate(strategies):
                rows = [r for r in sc.rows if r.get("strategy") == s and sc.config(r) == cfg]
                st = _stats(rows, col)
                if st is None:
                    continue
                m, a, b = st
                ys.append(i + (j - (len(configs) - 1) / 2) * width)
                meds.append(m)
                lo.append(m - a)
                hi.append(b - m)
                bad = _unsafe(rows)
                colors.append(ccol[sc.label(cfg)] if ccol else scol[s])
                edges.append(UNSAFE if bad else "none")
                hatches.append("////" if bad else "")
                pos_vals += [v for v in (a, b, m) if v > 0]
            if not ys:
                continue
            bars = ax.barh(ys, meds, height=width * 0.9, xerr=[lo, hi], color=colors, edgecolor=edges,
                           linewidth=1.2, capsize=2.5, error_kw={"elinewidth": 0.9, "ecolor": "#333"},
                           label=sc.label(cfg) if ccol else None)
            for bar, hatch in zip(bars, hatches):
                bar.set_hatch(hatch)
            if len(configs) <= 2:
                ax.bar_label(bars, labels=[_fmt(m) for m in meds], fontsize=7, padding=3)
        ax.set_yticks(range(len(strategies)), strategies)
        ax.invert_yaxis()
        ax.grid(axis="y", visible=False)
        if len(pos_vals) >= 2 and max(pos_vals) / min(pos_vals) >= 100:
            ax.set_xscale("log")
            title += " (log)"
        ax.margins(x=0.18)
        ax.set_title(title, loc="left")
    for ax in list(axes.flat)[len(metrics):]:
        ax.set_visible(False)
    from matplotlib.patches import Patch

    handles = ([Patch(facecolor="white", edgecolor=UNSAFE, hatch="////", label="UNSAFE in some seed")]
               if _unsafe(sc.rows) else [])
    if ccol:
        handles = [Patch(color=c, label=l) for l, c in ccol.items()] + handles
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncol=min(4, len(handles)))
    return F.svg(fig)


def plot_scaling(F: Figures, sc: Scenario, metrics: list[tuple[str, str]]) -> list[tuple[str, str, str]]:
    """For each swept numeric parameter: each metric against it, a line per strategy (median,
    min-max error bars over seeds), a row of panels per value of the other swept parameters (up to 3)."""
    out = []
    mod = sc.module
    varying = sc.varying()
    metrics = [(c, t) for c, t in metrics if _vals(sc.rows, c)]
    if not metrics:
        return out
    from matplotlib.lines import Line2D

    for p in varying:
        kind = mod.PARAMS[p].kind if mod is not None and p in mod.PARAMS else ("int" if _numeric(sc.rows, p) else "")
        if kind not in ("int", "float", "size"):
            continue
        xval = (lambda v: _size_bytes(v)) if kind == "size" else (lambda v: v)
        xs = sorted({xval(r.get(p)) for r in sc.rows if xval(r.get(p)) is not None})
        if len(xs) < 2:
            continue
        others = [q for q in varying if q != p]
        panels = sorted(dict.fromkeys(tuple(r.get(q) for q in others) for r in sc.rows),
                        key=lambda t: sc._order(t))[:3]
        fig, axes = F.figure(len(panels), len(metrics), figsize=(4.3 * len(metrics) + 1.9, 2.9 * len(panels)),
                             squeeze=False, layout="constrained")
        scol = _colors(sc.strategies())
        for i, panel in enumerate(panels):
            for ax, (col, title) in zip(axes[i], metrics):
                for s in sc.strategies():
                    pts = []
                    for x in xs:
                        rows = [r for r in sc.rows if r.get("strategy") == s and xval(r.get(p)) == x
                                and tuple(r.get(q) for q in others) == panel]
                        st = _stats(rows, col)
                        if st:
                            pts.append((x, *st, _unsafe(rows)))
                    if not pts:
                        continue
                    x_, m, a, b, bad = zip(*pts)
                    ax.errorbar(x_, m, yerr=[[mm - aa for mm, aa in zip(m, a)], [bb - mm for mm, bb in zip(m, b)]],
                                color=scol[s], marker="o", ms=4, lw=1.4, capsize=2.5, label=s)
                    for xx, mm, u in zip(x_, m, bad):
                        if u:
                            ax.plot([xx], [mm], marker="x", color=UNSAFE, ms=7, mew=1.6, zorder=5)
                if kind == "size" or (min(xs) > 0 and max(xs) / min(xs) >= 16):
                    ax.set_xscale("log", base=2)
                ax.set_xticks(xs, [_size_label(x) for x in xs] if kind == "size" else [f"{x:g}" for x in xs])
                ax.minorticks_off()
                vals = [v for v in _vals(sc.rows, col) if v > 0]
                if vals and max(vals) / min(vals) >= 100:
                    ax.set_yscale("log")
                ax.set_xlabel(p)
                where = " ".join(f"{q}={v}" for q, v in zip(others, panel))
                ax.set_title(title + (f"\n{where}" if where else ""), loc="left")
        handles, labels = axes[0][0].get_legend_handles_labels()
        if _unsafe(sc.rows):
            handles.append(Line2D([], [], marker="x", color=UNSAFE, ls="none", ms=7, mew=1.6))
            labels.append("UNSAFE")
        fig.legend(handles, labels, loc="outside right center")
        out.append((p, f"{', '.join(t for _, t in metrics)} against {p}: median over seeds, bars min&ndash;max; "
                       "a red x where some seed was UNSAFE", F.svg(fig)))
    return out


def _size_label(n: int) -> str:
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return f"{n}B"


def plot_hit_series(F: Figures, sc: Scenario) -> str | None:
    """The neighbours' hit rate window by window: the last warm-up windows before the teardown,
    then the recovery windows; the median over seeds per window, a band min-max."""
    series = [s for s in sc.series if s.get("nb_hit_after")]
    if not series:
        return None
    configs = [c for c in sc.configs() if any(sc.config(s) == c for s in series)][:4]
    ncol = min(2, len(configs))
    nrow = math.ceil(len(configs) / ncol)
    fig, axes = F.figure(nrow, ncol, figsize=(4.6 * ncol + 1.9, 2.8 * nrow), squeeze=False, sharey=True,
                         layout="constrained")
    scol = _colors(sc.strategies())
    for ax, cfg in zip(axes.flat, configs):
        steady = []
        for s in sc.strategies():
            mine = [x for x in series if x.get("strategy") == s and sc.config(x) == cfg]
            if not mine:
                continue
            nb = max(len(x["nb_hit_before"]) for x in mine)
            na = max(len(x["nb_hit_after"]) for x in mine)
            xs, med, lo, hi = [], [], [], []
            for k in range(-nb, na):
                vals = [(x["nb_hit_before"][k] if k < 0 else x["nb_hit_after"][k])
                        for x in mine if (k < 0 and -k <= len(x["nb_hit_before"])) or (0 <= k < len(x["nb_hit_after"]))]
                vals = [v for v in vals if v is not None]
                if vals:
                    xs.append(k + (0 if k < 0 else 1))
                    med.append(100 * statistics.median(vals))
                    lo.append(100 * min(vals))
                    hi.append(100 * max(vals))
            # before and after apart: the teardown itself is not a window
            cut = sum(1 for x in xs if x < 0)
            for part in (slice(0, cut), slice(cut, None)):
                ax.plot(xs[part], med[part], color=scol[s], marker="o", ms=3, lw=1.4,
                        label=s if part.start == 0 else None)
                ax.fill_between(xs[part], lo[part], hi[part], color=scol[s], alpha=0.15, lw=0)
            if 0 < cut < len(xs):
                ax.plot(xs[cut - 1:cut + 1], med[cut - 1:cut + 1], color=scol[s], lw=0.8, ls=":")
            steady += [100 * x["nb_hit_steady"] for x in mine if x.get("nb_hit_steady") is not None]
        if steady:
            ax.axhline(statistics.median(steady), color="#555", ls="--", lw=0.9)
            ax.annotate("steady", (ax.get_xlim()[0], statistics.median(steady)), fontsize=7, color="#555",
                        xytext=(2, 3), textcoords="offset points")
        ax.axvline(0, color=UNSAFE, lw=1.2, alpha=0.7)
        ax.annotate("teardown", (0, 0.02), xycoords=("data", "axes fraction"), rotation=90, fontsize=7,
                    color=UNSAFE, xytext=(-9, 0), textcoords="offset points")
        ax.set_xlabel(f"window ({series[0]['nb_window_accesses']:,} accesses per neighbour)")
        ax.set_title(sc.label(cfg), loc="left")
    for ax in list(axes.flat)[len(configs):]:
        ax.set_visible(False)
    for row in axes:
        row[0].set_ylabel("neighbours' hit rate (%)")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center")
    return F.svg(fig)


def _step_short(name: str) -> str:
    verb, _, vm = name.partition(" ")
    short = {"vcpu_put": "put", "sev_mem_enc_unregister_region": "unregister", "sev_vm_destroy": "destroy"}
    return f"{short.get(verb, verb)} {vm}".strip()


def plot_flush_timeline(F: Figures, sc: Scenario) -> str | None:
    """Per strategy (first configuration, lowest seed): each CPU that flushed, its flush time in
    each teardown step, on the initiator's clock."""
    series = [s for s in sc.series if s.get("flush_steps")]
    if not series:
        return None
    cfg = sc.config(series[0])
    seed = min(s.get("seed", 0) for s in series if sc.config(s) == cfg)
    pick = {s["strategy"]: s for s in series if sc.config(s) == cfg and s.get("seed", 0) == seed}
    strategies = [s for s in sc.strategies() if s in pick]
    import numpy as np
    from matplotlib.colors import LogNorm

    top = max((max(map(max, s["flush_us"])) if s["flush_cpus"] else 0) for s in pick.values())
    ncol = min(len(strategies), 2)
    nrow = math.ceil(len(strategies) / ncol)
    fig, axes = F.figure(nrow, ncol, figsize=(5.0 * ncol + 1.2, 2.3 * nrow), squeeze=False, layout="constrained")
    norm = LogNorm(vmin=max(top / 1e3, 1e-3), vmax=max(top, 1e-3 * 1.01))
    mesh = None
    for ax, s in zip(axes.flat, strategies):
        x = pick[s]
        ax.grid(False)
        edges = [0.0] + list(x["flush_t_us"])
        total = sum(map(sum, x["flush_us"]))
        n = len(x["flush_cpus"])
        ax.set_title(f"{s}: {n} CPU{'s' if n != 1 else ''} flushed, {_fmt(total)} us in all", loc="left")
        if not x["flush_cpus"] or edges[-1] <= 0:
            ax.text(0.5, 0.5, "no CPU flushed", ha="center", va="center", transform=ax.transAxes, color="#555")
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        z = np.ma.masked_less_equal(np.asarray(x["flush_us"], dtype=float).T, 0)  # CPUs x steps
        n = len(x["flush_cpus"])
        mesh = ax.pcolormesh(np.asarray(edges), np.arange(n + 1), z, norm=norm, cmap="magma_r", shading="flat",
                             rasterized=n > 64)
        step = max(1, math.ceil(n / 6))
        ticks = list(range(0, n, step))
        ax.set_yticks([t + 0.5 for t in ticks], [str(x["flush_cpus"][t]) for t in ticks])
        ax.set_ylim(n, 0)
        ax.set_xlim(0, edges[-1])
        for e in edges[1:-1]:
            ax.axvline(e, color="#999", lw=0.6, ls=":")
        top_ax = ax.secondary_xaxis("top")
        mids = [((a + b) / 2, _step_short(name)) for a, b, name in zip(edges, edges[1:], x["flush_steps"])
                if b - a > 0.06 * edges[-1]]
        top_ax.set_xticks([m for m, _ in mids], [t for _, t in mids], fontsize=6.5, color="#555")
        top_ax.tick_params(length=0)
        ax.set_xlabel("initiator time (us)")
        ax.set_ylabel("CPU")
    for ax in list(axes.flat)[len(strategies):]:
        ax.set_visible(False)
    if mesh is not None:
        cb = fig.colorbar(mesh, ax=axes.ravel().tolist(), shrink=0.8, pad=0.01)
        cb.set_label("flush time in the step (us)")
    return F.svg(fig)


def plot_by_strategy(F: Figures, sc: Scenario, col: str, title: str) -> str | None:
    """`col` per strategy and configuration (e.g. flushes_per_transition)."""
    if not _vals(sc.rows, col):
        return None
    return plot_costs(F, sc, [(col, title)])


def plot_pagein(F: Figures, sc: Scenario) -> str | None:
    """GB/s per direct-map policy (lines) against the guest count."""
    col = "pagein_gbps"
    if not _vals(sc.rows, col):
        return None
    xcol = next((c for c in ("guests", "guest_count", "vms", "nr_guests") if _numeric(sc.rows, c)), None)
    hue = next((c for c in ("direct_map", "direct_map_policy", "dm_policy") if any(c in r for r in sc.rows)),
               "strategy")
    fig, ax = F.figure(figsize=(5.8, 3.2))
    names = list(dict.fromkeys(r.get(hue) for r in sc.rows))
    hc = _colors([str(n) for n in names])
    for n in names:
        rows = [r for r in sc.rows if r.get(hue) == n]
        if xcol:
            xs = sorted({r[xcol] for r in rows if r.get(xcol) is not None})
            pts = [(x, *_stats([r for r in rows if r.get(xcol) == x], col)) for x in xs
                   if _stats([r for r in rows if r.get(xcol) == x], col)]
        else:
            st = _stats(rows, col)
            pts = [(0, *st)] if st else []
        if not pts:
            continue
        x_, m, a, b = zip(*pts)
        ax.errorbar(x_, m, yerr=[[mm - aa for mm, aa in zip(m, a)], [bb - mm for mm, bb in zip(m, b)]],
                    marker="o", ms=4, lw=1.4, capsize=2.5, color=hc[str(n)], label=f"{hue}={n}")
    if xcol:
        xs = sorted({r[xcol] for r in sc.rows if isinstance(r.get(xcol), (int, float))})
        ax.set_xticks(xs, [f"{x:g}" for x in xs])
    ax.set_xlabel(xcol or "")
    ax.set_ylabel("page-in GB/s")
    ax.set_title("page-in throughput per direct-map policy", loc="left")
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return F.svg(fig)


# -- the page -------------------------------------------------------------------------------------

CSS = """
:root { --ink:#1d2330; --mute:#5b6475; --line:#e3e6ec; --safe:#1b7a3a; --unsafe:#c62828; --bg:#fafbfc; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--ink);
       font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
main { max-width: 1320px; margin: 0 auto; padding: 28px 28px 60px; }
header h1 { font-size: 24px; margin: 0 0 4px; }
header p { margin: 2px 0; color: var(--mute); }
nav { margin: 14px 0 8px; display:flex; gap:10px; flex-wrap:wrap; }
nav a { text-decoration:none; color:var(--ink); border:1px solid var(--line); background:#fff; border-radius:6px;
        padding:6px 10px; }
section.scenario { background:#fff; border:1px solid var(--line); border-radius:10px; padding:18px 22px 8px;
                   margin: 22px 0; box-shadow: 0 1px 2px rgba(0,0,0,.03); }
h2 { font-size: 19px; margin: 0 0 2px; }
h3 { font-size: 15px; margin: 22px 0 6px; }
.sub { color: var(--mute); margin: 0 0 10px; }
.headline { border-left: 4px solid #4269d0; background:#f3f6fd; padding: 8px 12px; margin: 10px 0 12px;
            border-radius: 0 6px 6px 0; }
.headline b { font-weight: 600; }
.config { color: var(--mute); font-size: 12.5px; }
.config code { background:#f2f3f6; padding:1px 4px; border-radius:3px; color: var(--ink); }
table { border-collapse: collapse; width: 100%; font-size: 12px; margin: 6px 0 4px; }
th, td { padding: 4px 6px; vertical-align: top; border-bottom: 1px solid var(--line); white-space: nowrap; }
th { text-align: left; font-weight: 600; white-space: normal; vertical-align: bottom; color: var(--mute); background:#f7f8fa; position: sticky; top: 0; }
th[title] { cursor: help; text-decoration: underline dotted #aab; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.num small { color: var(--mute); }
tbody tr:hover { background: #f6f8fc; }
.badge { display:inline-block; border-radius: 4px; padding: 1px 7px; font-weight: 600; font-size: 11.5px; }
.badge.safe { background:#e3f4e8; color: var(--safe); }
.badge.unsafe { background:#fde7e7; color: var(--unsafe); }
.scroll { overflow-x: auto; }
td.num small { font-size: 10.5px; }
p.why-head { margin: 10px 0 2px; font-weight: 600; font-size: 13px; }
ul.why { margin: 0 0 8px; padding-left: 20px; color: var(--mute); font-size: 12px; }
ul.why b { color: var(--ink); }
figure { margin: 8px 0 14px; }
figure svg.plot { max-width: 100%; height: auto; display:block; }
figcaption { color: var(--mute); font-size: 12px; margin-top: 2px; }
.failed td { color: var(--unsafe); white-space: normal; }
details summary { cursor: pointer; color: var(--mute); margin: 6px 0; }
footer { color: var(--mute); font-size: 12px; margin-top: 30px; }
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _verdict_table(sc: Scenario, metrics: list[str], legend: dict[str, str]) -> str:
    varying = sc.varying()
    head = [f'<th title="{_e(legend.get(p, "a swept parameter"))}">{_e(p)}</th>' for p in varying]
    head += ['<th>strategy</th>', '<th title="seeds run (repetitions)">seeds</th>',
             f'<th title="{_e(legend.get("verdict", ""))}">verdict</th>']
    head += [f'<th title="{_e(legend.get(m, ""))}">{_e(m).replace("_", "_<wbr>")}</th>' for m in metrics]
    body = []
    whys: dict[str, tuple] = {}
    for cfg in sc.configs():
        part = ResultTable([r for r in sc.rows if sc.config(r) == cfg])
        summ = {r["strategy"]: r for r in part.summary(metrics).rows}
        for s in sc.strategies():
            if s not in summ:
                continue
            r = summ[s]
            rows = [x for x in part.rows if x.get("strategy") == s]
            n_bad = sum(x.get("verdict") == "UNSAFE" for x in rows)
            if any("verdict" in x for x in rows):
                badge = (f'<span class="badge unsafe">UNSAFE {n_bad}/{len(rows)}</span>' if n_bad
                         else '<span class="badge safe">SAFE</span>')
            else:
                badge = "-"
            cells = [f"<td>{_e(v)}</td>" for v in cfg]
            cells += [f"<td><b>{_e(s)}</b></td>", f'<td class="num">{len(rows)}</td>', f"<td>{badge}</td>"]
            for m in metrics:
                med, lo, hi = r.get(m), r.get(f"{m}_min"), r.get(f"{m}_max")
                f = _column_format([med, lo, hi])
                text = _e(f(med))
                if lo is not None and hi is not None and lo != hi:
                    text += f"<br><small>{_e(f(lo))}&ndash;{_e(f(hi))}</small>"
                cells.append(f'<td class="num">{text}</td>')
            why = next((x for x in sorted(rows, key=lambda x: x.get("seed") or 0)
                        if x.get("verdict") == "UNSAFE" and x.get("first_violation")), None)
            if why is not None and s not in whys:
                whys[s] = (why.get("seed"), sc.label(cfg), why["first_violation"])
            body.append("<tr>" + "".join(cells) + "</tr>")
    notes = "".join(f"<li><b>{_e(s)}</b> ({_e(cfg)}, seed {_e(seed)}): {_e(text)}</li>"
                    for s, (seed, cfg, text) in whys.items())
    return (f'<div class="scroll"><table><thead><tr>{"".join(head)}</tr></thead><tbody>{"".join(body)}</tbody>'
            "</table></div><p class=\"config\">median over seeds, <small>min&ndash;max</small> under it where the "
            "seeds differ; hover a column name for its meaning and unit.</p>"
            + (f'<p class="why-head">Why UNSAFE: the first violation of each unsafe strategy</p>'
               f'<ul class="why">{notes}</ul>' if notes else ""))


def _headline(sc: Scenario, col: str | None, title: str) -> str:
    """Which strategies are SAFE in every run, and the cheapest of them on the first metric."""
    strategies = sc.strategies()
    safe = [s for s in strategies if not _unsafe([r for r in sc.rows if r.get("strategy") == s])]
    unsafe = [s for s in strategies if s not in safe]
    parts = []
    if any("verdict" in r for r in sc.rows):
        parts.append(f"<b>SAFE in every run:</b> {_e(', '.join(safe)) or 'none'}. "
                     f"<b>UNSAFE in some run:</b> {_e(', '.join(unsafe)) or 'none'}.")
    if col and safe:
        med = {s: _stats([r for r in sc.rows if r.get("strategy") == s], col) for s in safe}
        med = {s: v[0] for s, v in med.items() if v}
        if med:
            best = min(med, key=med.get)
            worst = max(med, key=med.get)
            text = f"Cheapest safe on {_e(title)}: <b>{_e(best)}</b> (median {_e(_fmt(med[best]))}"
            if worst != best and med[best] > 0:
                text += f", {med[worst] / med[best]:.1f}x less than {_e(worst)}'s {_e(_fmt(med[worst]))}"
            parts.append(text + ", over every configuration and seed).")
    return f'<p class="headline">{" ".join(parts)}</p>' if parts else ""


def _section(F: Figures, sc: Scenario, idx: int) -> str:
    mod = sc.module
    legend = dict(getattr(mod, "LEGEND", {}) or {})
    plots = list(getattr(mod, "PLOTS", []) or [])
    skip = set(sc.params) | {"seed", "rep", "strategy", "scenario", "sevsim_version"}
    metrics = [m for m in (getattr(mod, "METRICS", None) or [c for c, _ in plots]
                           or [c for c in _columns(sc.rows) if c not in skip and _numeric(sc.rows, c)])
               if _vals(sc.rows, m)]
    if not plots:
        plots = [(m, m) for m in metrics if m not in ("flushes_per_transition", "pagein_gbps")][:4]
    seeds = sorted({r.get("seed") for r in sc.rows if r.get("seed") is not None})
    varying = sc.varying()
    fixed = [p for p in sc.params if p not in varying]
    first = next(((c, t) for c, t in plots if _vals(sc.rows, c)), (None, ""))
    out = [f'<section class="scenario" id="s{idx}">',
           f"<h2>{_e(sc.name)}</h2>",
           f'<p class="sub">{_e(getattr(mod, "SUMMARY", ""))}'
           + (f'<br>Reproduces: {_e(mod.SOURCE)}' if getattr(mod, "SOURCE", "") else "") + "</p>",
           _headline(sc, first[0], first[1])]
    cfg_bits = [f"<code>{_e(p)}={_e(sc.rows[0].get(p))}</code>" for p in fixed]
    versions = sorted({str(r.get("sevsim_version")) for r in sc.rows if r.get("sevsim_version")})
    out.append(f'<p class="config">{len(sc.rows)} runs, {len(sc.strategies())} strategies, '
               f'{len(sc.configs())} configuration{"s" if len(sc.configs()) > 1 else ""}'
               + (f" (swept: {_e(', '.join(varying))})" if varying else "")
               + f", seeds {_e(_seed_text(seeds))}" + (f"; sevsim {_e(', '.join(versions))}" if versions else "")
               + "; from "
               + _e(", ".join(sc.sources)) + ".</p>")
    out.append(f'<details><summary>fixed parameters</summary><p class="config">{" ".join(cfg_bits)}</p></details>')
    out.append("<h3>Verdict and cost</h3>")
    out.append(_verdict_table(sc, metrics, legend))
    figs: list[tuple[str, str, str]] = []  # (heading, caption, svg)
    svg = plot_costs(F, sc, plots)
    if svg:
        figs.append(("Cost per strategy", "median over seeds, error bars min&ndash;max; hatched with a red edge "
                     "where some seed was UNSAFE", svg))
    for p, cap, svg in plot_scaling(F, sc, plots[:2]):
        figs.append((f"Scaling with {_e(p)}", cap, svg))
    svg = plot_hit_series(F, sc)
    if svg:
        figs.append(("Neighbours' hit rate around the teardown",
                     "window by window: the last warm-up windows before the teardown, then the recovery windows "
                     "until every neighbour is back to its steady miss rate (the windows of the neighbours still "
                     "recovering); median over seeds, band min&ndash;max; dashed: the steady rate", svg))
    svg = plot_flush_timeline(F, sc)
    if svg:
        figs.append(("Per-CPU flush timeline of the teardown",
                     "every CPU that flushed, its flush time in each kernel step (vcpu_put, unregister, destroy, per "
                     "VM) on the initiating CPU's clock; first configuration, lowest seed; a CPU's row is blank "
                     "where it did not flush", svg))
    svg = plot_by_strategy(F, sc, "flushes_per_transition", "flushes per nested transition")
    if svg:
        figs.append(("Flushes per nested transition", "median over seeds, error bars min&ndash;max", svg))
    svg = plot_pagein(F, sc)
    if svg:
        figs.append(("Page-in throughput", "GB/s per direct-map policy and guest count; median over seeds, "
                     "error bars min&ndash;max", svg))
    for head, cap, svg in figs:
        out.append(f"<h3>{head}</h3><figure>{svg}<figcaption>{cap}</figcaption></figure>")
    if sc.failed:
        out.append(f"<h3>Failed cells ({len(sc.failed)})</h3><table class=\"failed\"><thead><tr><th>strategy</th>"
                   + "".join(f"<th>{_e(p)}</th>" for p in varying)
                   + "<th>seed</th><th>error</th></tr></thead><tbody>")
        for r in sc.failed:
            out.append("<tr><td>" + _e(r.get("strategy")) + "</td>"
                       + "".join(f"<td>{_e(r.get(p))}</td>" for p in varying)
                       + f"<td>{_e(r.get('seed'))}</td><td>{_e(r.get('error'))}</td></tr>")
        out.append("</tbody></table>")
    out.append("</section>")
    return "\n".join(out)


def _seed_text(seeds: list) -> str:
    if not seeds:
        return "-"
    if seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{seeds[0]}-{seeds[-1]}" if len(seeds) > 1 else str(seeds[0])
    return ", ".join(map(str, seeds))


def render(inputs: Sequence[str]) -> str:
    """The page, as text: one self-contained HTML file."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ReportError("sevsim report needs matplotlib: pip install 'sevsim[plot]'") from None
    data = load(inputs)
    F = Figures()
    sections = [_section(F, sc, i) for i, sc in enumerate(data.values())]
    nav = "".join(
        f'<a href="#s{i}">{_e(sc.name)} &middot; {len(sc.rows)} runs'
        + (f' &middot; <span style="color:var(--unsafe)">{len(sc.failed)} failed</span>' if sc.failed else "")
        + "</a>" for i, sc in enumerate(data.values()))
    total = sum(len(sc.rows) for sc in data.values())
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>sevsim report: {_e(", ".join(data))}</title>
<style>{CSS}</style>
</head>
<body>
<main>
<header>
<h1>sevsim report</h1>
<p>Host-side cache, TLB and RMP maintenance for confidential VMs under KVM: is a policy safe, and what does it
cost? {total} simulated runs of {len(data)} scenario{"s" if len(data) != 1 else ""}.</p>
<p>Costs are simulated time; SAFE means no violation recorded and nothing latent in the caches at the end.</p>
</header>
<nav>{nav}</nav>
{"".join(sections)}
<footer>Made by sevsim {_e(__version__)} (<code>sevsim report {_e(" ".join(inputs))}</code>). Self-contained: the
plots are inline SVG, nothing is fetched.</footer>
</main>
</body>
</html>
"""
