"""The sevsim command line: `sevsim list [SCENARIO]`, `sevsim run SCENARIO [options]`,
`sevsim sweep SCENARIO [options]`, `sevsim report INPUT -o FILE.html`, `sevsim --version`.

Every error is one line on standard error, `sevsim: error: ...`, with exit status 2.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
import tomllib
from typing import Any

from . import Host, __version__
from .kvm import STRATEGIES, SevsimError
from .results import ResultTable, write_atomic


class CliError(Exception):
    """A command-line mistake: printed as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints usage + error and exits; sevsim says one line
        raise CliError(message)


class Progress:
    """Progress of a run on stderr: a tqdm bar on a terminal, a plain line per finished row
    otherwise (so that logs of long runs show where they are)."""

    def __init__(self, stream=sys.stderr, quiet: bool = False):
        self.stream = stream
        self.quiet = quiet
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self.bar = None

    def __call__(self, done: int, total: int, what: str, row: dict | None = None) -> None:
        if self.quiet:
            return
        if self.tty:
            if self.bar is None:
                from tqdm import tqdm

                self.bar = tqdm(total=total, file=self.stream, unit="run", leave=False, dynamic_ncols=True)
            self.bar.set_description(what)
            self.bar.n = done
            self.bar.refresh()
        elif row is not None:
            v = row.get("verdict", "")
            self.stream.write(f"sevsim: {done}/{total} {what}: {v}\n")
            self.stream.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def cmd_list(args) -> int:
    from . import scenarios

    if args.scenario:
        sc = scenarios.get(args.scenario)
        print(f"{sc.NAME}: {sc.SUMMARY}")
        print(f"Reproduces: {sc.SOURCE}\n")
        print("Parameters (--set NAME=VALUE, or [params] in --config FILE.toml):")
        width = max(len(n) for n in sc.PARAMS)
        for name, p in sc.PARAMS.items():
            default = "none" if p.default is None else str(p.default).lower() if isinstance(p.default, bool) \
                else str(p.default)
            print(f"  {name:<{width}}  = {default:<14} {p.help}")
            print(f"  {'':<{width}}    {'':<14} allowed: {p.allowed()}")
        print(f"\nDefault strategies: {', '.join(sc.DEFAULT_STRATEGIES)}")
        print("\nColumns:")
        width = max(len(c) for c in sc.LEGEND)
        for c, text in sc.LEGEND.items():
            print(f"  {c:<{width}}  {text}")
        return 0
    print("Scenarios (sevsim list SCENARIO for its parameters and columns):")
    for name, m in scenarios.SCENARIOS.items():
        print(f"  {name:<20} {m.SUMMARY}")
    print("\nCache strategies (--strategy a,b,... for sev-teardown, snp-notifier-storm):")
    for name, cls in STRATEGIES.items():
        print(f"  {name:<20} {cls.summary}")
    from .kvm.nested import POLICIES

    print("\nTLB policies (--strategy for nested-asid):")
    for name, cls in POLICIES.items():
        print(f"  {name:<20} {cls.summary}")
    print("\nPresets (--preset):")
    for name, desc in Host.presets():
        print(f"  {name:<20} {desc}")
    return 0


def plot(table: ResultTable, sc, path: str) -> None:
    """One panel per metric: the median per strategy, min-max error bars over repetitions,
    red for UNSAFE, a log axis where the values span decades."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
    except ImportError:
        raise SevsimError("--plot needs matplotlib: pip install 'sevsim[plot]'") from None
    fmt = os.path.splitext(path)[1].lstrip(".").lower() or "png"
    strategies = list(dict.fromkeys(table.column("strategy")))
    fig, axes = plt.subplots(1, len(sc.PLOTS), figsize=(4.2 * len(sc.PLOTS), 0.5 * len(strategies) + 2.2))
    for ax, (col, title) in zip(axes, sc.PLOTS):
        meds, lo, hi, colors = [], [], [], []
        for s in strategies:
            vals = [v for v in table.where(strategy=s).column(col) if isinstance(v, (int, float)) and
                    not (isinstance(v, float) and math.isnan(v))] or [0]
            vals.sort()
            m = vals[len(vals) // 2] if len(vals) % 2 else (vals[len(vals) // 2 - 1] + vals[len(vals) // 2]) / 2
            meds.append(m)
            lo.append(m - vals[0])
            hi.append(vals[-1] - m)
            unsafe = any(r.get("verdict") == "UNSAFE" for r in table.where(strategy=s).rows)
            colors.append("tab:red" if unsafe else "tab:blue")
        bars = ax.barh(strategies, meds, xerr=[lo, hi] if any(lo) or any(hi) else None, color=colors, capsize=3)
        ax.bar_label(bars, labels=[f"{m:,.0f}" if abs(m) >= 100 else f"{m:.3g}" for m in meds], fontsize=7, padding=3)
        ax.margins(x=0.25)
        pos = [m for m in meds if m > 0]
        if len(pos) >= 2 and max(pos) / min(pos) >= 100:
            ax.set_xscale("log")
            title += " [log]"
        ax.set_title(title, fontsize=9)
        ax.invert_yaxis()
        ax.tick_params(labelsize=8)
    fig.legend(handles=[Patch(color="tab:blue", label="SAFE"), Patch(color="tab:red", label="UNSAFE (violations)")],
               loc="lower center", ncol=2, fontsize=8, frameon=False)
    reps = max(len(table.where(strategy=s)) for s in strategies)
    fig.suptitle(table.title + (f"\nmedian of {reps} repetitions, bars min-max" if reps > 1 else ""), fontsize=9)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=120)
    plt.close(fig)
    write_atomic(path, buf.getvalue())


def _check_output(path: str | None, flag: str, formats: tuple[str, ...] = ()) -> None:
    """Fail before the run, not after it: the directory must exist and be writable."""
    if not path or path == "-":
        return
    d = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(d):
        raise CliError(f"{flag} {path}: no such directory {d}")
    if not os.access(d, os.W_OK):
        raise CliError(f"{flag} {path}: directory {d} is not writable")
    if os.path.isdir(path):
        raise CliError(f"{flag} {path}: is a directory")
    if formats:
        ext = os.path.splitext(path)[1].lstrip(".").lower()
        if ext not in formats:
            raise CliError(f"{flag}: use a file name ending in {', '.join('.' + f for f in formats)}, got {path!r}")


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(str(v))


def dump_config(scenario: str, strategies: list[str], seed: int, reps: int, baseline: str | None,
                params: dict[str, Any]) -> str:
    """The effective configuration as a TOML file that --config reads back."""
    lines = [f"# sevsim {__version__}: sevsim run --config FILE", f"scenario = {_toml_value(scenario)}",
             f"strategies = {_toml_value(strategies)}", f"seed = {seed}", f"reps = {reps}"]
    if baseline:
        lines.append(f"baseline = {_toml_value(baseline)}")
    lines.append("\n[params]")
    for k, v in params.items():
        lines.append(f"# {k} = none  (the preset's)" if v is None else f"{k} = {_toml_value(v)}")
    return "\n".join(lines) + "\n"


def read_config(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        raise CliError(f"--config {path}: no such file") from None
    except tomllib.TOMLDecodeError as e:
        raise CliError(f"--config {path}: not valid TOML ({e})") from None
    allowed = {"scenario", "strategies", "seed", "reps", "baseline", "params"}
    bad = sorted(set(doc) - allowed)
    if bad:
        raise CliError(f"--config {path}: unknown key {bad[0]!r}; allowed: {', '.join(sorted(allowed))}")
    if "params" in doc and not isinstance(doc["params"], dict):
        raise CliError(f"--config {path}: [params] must be a table")
    return doc


def cmd_run(args) -> int:
    from . import scenarios

    cfg = read_config(args.config) if args.config else {}
    name = args.scenario or cfg.get("scenario") or scenarios.DEFAULT
    sc = scenarios.get(name)
    params: dict[str, Any] = dict(cfg.get("params", {}))
    if args.preset:
        params["preset"] = args.preset
    if args.mutate:
        if "mutate" not in sc.PARAMS:
            raise CliError(f"--mutate: scenario {sc.NAME} has no named flushes to remove")
        params["mutate"] = True
    for item in args.set or []:
        if "=" not in item:
            raise CliError(f"--set takes NAME=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        params[k.strip().replace("-", "_")] = v.strip()
    strategies = scenarios.strategy_list(args.strategy if args.strategy is not None else cfg.get("strategies"), sc)
    seed = args.seed if args.seed is not None else cfg.get("seed", 0)
    reps = args.reps if args.reps is not None else cfg.get("reps", getattr(sc, "DEFAULT_REPS", 1))
    baseline = args.baseline or cfg.get("baseline")
    if baseline is not None and baseline not in strategies:
        raise CliError(f"--baseline {baseline!r} is not one of the strategies run: {', '.join(strategies)}")
    # every parameter checked, and every output path, before anything runs
    merged = scenarios.defaults(sc, params)
    for k, v in params.items():
        merged[k] = scenarios.coerce(sc, k, v)
    _check_output(args.json, "--json")
    _check_output(args.csv, "--csv")
    _check_output(args.violations, "--violations")
    _check_output(args.plot, "--plot", ("png", "svg", "pdf"))
    _check_output(args.dump_config, "--dump-config")
    if [args.json, args.csv, args.violations, args.dump_config].count("-") > 1:
        raise CliError("only one of --json, --csv, --violations and --dump-config can write to standard output")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise SevsimError("--plot needs matplotlib: pip install 'sevsim[plot]'") from None
    if args.dump_config:
        text = dump_config(sc.NAME, strategies, seed, reps, baseline, merged)
        if args.dump_config == "-":
            sys.stdout.write(text)
        else:
            write_atomic(args.dump_config, text)
        if not (args.json or args.csv or args.plot or args.violations):
            return 0

    to_stdout = "-" in (args.json, args.csv, args.violations)
    progress = Progress(quiet=args.quiet)
    try:
        table = scenarios.run(sc.NAME, strategies=strategies, seed=seed, reps=reps, progress=progress, **merged)
    finally:
        progress.close()

    # files: rendered in memory first, written only once everything rendered (no partial set)
    outputs: list[tuple[str, str | bytes]] = []
    if args.json:
        outputs.append((args.json, table.to_json()))
    if args.csv:
        outputs.append((args.csv, table.to_csv()))
    if args.violations:
        outputs.append((args.violations, table.violations_csv()))
    written = []
    try:
        if args.plot:
            plot(table, sc, args.plot)
            written.append(args.plot)
        for path, text in outputs:
            if path == "-":
                sys.stdout.write(text if isinstance(text, str) else text.decode())
            else:
                write_atomic(path, text)
                written.append(path)
    except BaseException:
        for path in written:
            try:
                os.unlink(path)
            except OSError:
                pass
        raise

    out = sys.stderr if to_stdout else sys.stdout
    shown = table.headline()
    kinds = [k for k in ("corruption", "dma", "isolation", "rmp", "tlb", "latent") if any(table.column(k))]
    if "violations" in shown:
        i = shown.index("violations")
        shown[i:i] = kinds
    print(table.format(shown, legend=reps == 1), file=out)
    if reps > 1:
        print(file=out)
        by = getattr(sc, "SUMMARY_BY", "strategy") if baseline is None else "strategy"
        print(table.summary(sc.METRICS, by=by, baseline=baseline).format_summary(), file=out)
    def label(r):
        return r["strategy"] + (f" without {r['mutation']}" if r.get("mutation") else "") + f" rep {r['rep']}"

    firsts = [(label(r), r["first_violation"]) for r in table.rows if r.get("verdict") == "UNSAFE"]
    if firsts:
        print("\nWhy UNSAFE (the first violation of each unsafe row; --violations FILE lists them all):", file=out)
        for what, text in firsts:
            print(f"  {what}: {text}", file=out)
    notes = [(label(r), r["notes"]) for r in table.rows if r.get("notes")]
    if notes:
        print("\nNotes:", file=out)
        for what, text in notes:
            print(f"  {what}: {text}", file=out)
    return 0


def cmd_sweep(args) -> int:
    from . import sweep

    # the grid, the executor and the output directory are checked before anything runs
    try:
        grid = sweep.make_grid(args.scenario, sets=args.set or [], strategies=args.strategy, seeds=args.seeds,
                               grid_file=args.grid)
        if args.scheduler and args.jobs is not None:
            raise CliError("--jobs is for the local pool; with --scheduler the cluster decides")
        sweep._pyarrow()
        sweep.check_out_dir(args.out)
        if args.scheduler:
            pool = sweep.DaskPool(args.scheduler)
            pool.connect()
        else:
            pool = sweep.LocalPool(args.jobs)
        result = sweep.sweep(grid, args.out, pool=pool, fmt=args.format, progress=not args.quiet)
    except sweep.GridError as e:
        raise CliError(str(e)) from None
    tables = result.summaries()
    for i, t in enumerate(tables):
        text = t.format_summary()
        # the legend once, under the last table
        print(text if i == len(tables) - 1 else text.split("\n\n")[0])
        print()
    if result.failed:
        print(f"{len(result.failed)} of {len(result.cells)} cells failed (recorded in {args.out}; a rerun retries "
              "them):")
        for r in result.failed:
            print(f"  {r['cell_id']} {r['strategy']} seed {r['seed']}: {r['error']}")
    print(f"{len(result.rows)} of {len(result.cells)} cells in {os.path.join(args.out, sweep.CELLS)} "
          f"({result.skipped} were already there); sevsim report {args.out} -o report.html")
    return 1 if result.failed else 0


def cmd_report(args) -> int:
    from . import report

    _check_output(args.output, "-o", ("html", "htm"))
    try:
        page = report.render(args.inputs)
    except report.ReportError as e:
        raise CliError(str(e)) from None
    write_atomic(args.output, page)
    print(f"sevsim: wrote {args.output}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="sevsim", description="Is a KVM host's cache/TLB/RMP maintenance policy for "
               "confidential VMs safe, and what does it cost?")
    p.add_argument("--version", action="version", version=f"sevsim {__version__}")
    sub = p.add_subparsers(dest="cmd", parser_class=Parser)
    ls = sub.add_parser("list", help="scenarios, strategies and presets; with a scenario, its parameters")
    ls.add_argument("scenario", nargs="?", help="a scenario: its parameters, defaults and columns")
    r = sub.add_parser("run", help="run a scenario and print its table")
    r.add_argument("scenario", nargs="?", default=None, help="scenario name (default: sev-teardown)")
    r.add_argument("--preset", help="host preset (default: the scenario's, epyc-9755-2s)")
    r.add_argument("--strategy", help="comma-separated strategies (default: the scenario's set)")
    r.add_argument("--seed", type=_int_arg("--seed", 0, 2**63 - 1), default=None, help="RNG seed (default 0)")
    r.add_argument("--reps", type=_int_arg("--reps", 1, 10_000), default=None,
                   help="repetitions (seed, seed+1, ...); with more than one, a summary per strategy")
    r.add_argument("--baseline", metavar="STRATEGY", help="with --reps: ratios of each strategy's medians to this one's")
    r.add_argument("--set", action="append", metavar="NAME=VALUE", help="a scenario parameter (repeatable)")
    r.add_argument("--config", metavar="FILE.toml", help="scenario, strategies, seed, reps and [params] from a file")
    r.add_argument("--dump-config", metavar="FILE", help="write the effective configuration as TOML ('-': stdout)")
    r.add_argument("--json", metavar="FILE", help="write the full table as JSON ('-': stdout)")
    r.add_argument("--csv", metavar="FILE", help="write the full table as CSV ('-': stdout)")
    r.add_argument("--violations", metavar="FILE", help="write every recorded violation as CSV ('-': stdout)")
    r.add_argument("--plot", metavar="FILE", help="write a comparison chart (.png/.svg/.pdf; needs matplotlib)")
    r.add_argument("--mutate", action="store_true",
                   help="TLB scenarios: one row per named flush of each policy, that flush removed")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    sw = sub.add_parser("sweep", help="run a scenario x parameter grid, one cell per strategy, combination "
                        "and seed, on a local pool or Dask; resumable")
    sw.add_argument("scenario", nargs="?", default=None, help="scenario name (or scenario = ... in --grid)")
    sw.add_argument("--set", action="append", metavar="NAME=V1[,V2...]",
                    help="a parameter axis: its values, comma-separated (repeatable)")
    sw.add_argument("--strategy", help="comma-separated strategies (default: the scenario's set)")
    sw.add_argument("--seeds", metavar="N-M", help="seeds: N, N-M or a comma-separated list of those (default 0)")
    sw.add_argument("--grid", metavar="FILE.toml", help="scenario, strategies, seeds and [params] (lists are axes)")
    sw.add_argument("--out", required=True, metavar="DIR", help="the results directory (created; reruns resume)")
    sw.add_argument("--format", choices=("parquet", "csv"), default="parquet", help="one file per cell")
    sw.add_argument("--jobs", type=_int_arg("--jobs", 1, 4096), default=None,
                    help="local worker processes (default: every core)")
    sw.add_argument("--scheduler", metavar="tcp://HOST:PORT", help="run the cells on this Dask scheduler")
    sw.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    rp = sub.add_parser("report", help="one static HTML page (tables and plots) from sweeps and runs")
    rp.add_argument("inputs", nargs="+", metavar="DIR-or-run.json",
                    help="sweep directories (sevsim sweep --out) and run files (sevsim run --json)")
    rp.add_argument("-o", "--output", required=True, metavar="FILE.html", help="the page to write")
    return p


def _int_arg(flag: str, lo: int, hi: int):
    def parse(text: str) -> int:
        try:
            v = int(text, 0)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} takes an integer in [{lo}, {hi}], got {text!r}") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"{flag} takes an integer in [{lo}, {hi}], got {v}")
        return v

    return parse


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.cmd is None:
            parser.print_help(sys.stderr)
            return 2
        return {"list": cmd_list, "run": cmd_run, "sweep": cmd_sweep, "report": cmd_report}[args.cmd](args)
    except BrokenPipeError:
        # the reader went away (sevsim run | head): no error line; silence the flush at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (CliError, ValueError, TypeError, OSError, SevsimError) as e:
        msg = " ".join(str(e).split())
        print(f"sevsim: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
