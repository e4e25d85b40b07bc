"""The sevsim command line: `sevsim list`, `sevsim run SCENARIO [options]`, `sevsim --version`."""

from __future__ import annotations

import argparse
import os
import sys
import time

from . import Host, __version__
from .kvm import STRATEGIES, SevsimError
from .results import ResultTable, write_atomic

# the columns a person wants on the terminal, per scenario (JSON/CSV get every column)
SUMMARY_COLUMNS = {
    "sev-teardown": ["strategy", "rep", "teardown_us", "teardown_cpu_us", "writebacks", "ipis", "nb_hit_before",
                     "nb_hit_after", "nb_tput_before", "nb_tput_after", "violations", "verdict"],
    "snp-notifier-storm": ["strategy", "rep", "events", "notifier_us_per_event", "writebacks", "guest_tput_quiet",
                           "guest_tput_storm", "nb_hit_quiet", "nb_hit_storm", "nb_tput_quiet", "nb_tput_storm",
                           "violations", "verdict"],
}


class Progress:
    """A one-line progress bar on stderr, shown only on a terminal and only once a run has taken
    more than a second."""

    def __init__(self, stream=sys.stderr):
        self.stream = stream
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self.start = time.monotonic()
        self.shown = False

    def __call__(self, done: int, total: int, what: str) -> None:
        if not self.tty or (time.monotonic() - self.start < 1.0 and done < total):
            return
        width = 30
        fill = int(width * done / max(total, 1))
        self.stream.write(f"\r[{'#' * fill}{'.' * (width - fill)}] {done}/{total} {what:<30.30}")
        self.stream.flush()
        self.shown = True

    def close(self) -> None:
        if self.shown:
            self.stream.write("\r" + " " * 72 + "\r")
            self.stream.flush()


def cmd_list(_args) -> int:
    from . import scenarios

    print("Scenarios:")
    for name, m in scenarios.SCENARIOS.items():
        print(f"  {name:<20} {m.SUMMARY}")
    print("\nStrategies (--strategy a,b,...):")
    for name, cls in STRATEGIES.items():
        print(f"  {name:<20} {cls.summary}")
    print("\nPresets (--preset):")
    for name, desc in Host.presets():
        print(f"  {name:<20} {desc}")
    return 0


def plot(table: ResultTable, scenario: str, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SevsimError("--plot needs matplotlib: pip install 'sevsim[plot]'") from None
    rows = table.rows
    labels = [f"{r['strategy']}" + (f"#{r['rep']}" if r.get("rep") else "") for r in rows]
    if scenario == "sev-teardown":
        panels = [("teardown_us", "teardown on the initiator (us)"), ("nb_hit_after", "neighbours' hit rate after"),
                  ("nb_tput_after", "neighbours' throughput after (acc/us)"), ("violations", "violations")]
    else:
        panels = [("notifier_us_per_event", "notifier cost per event (us)"),
                  ("guest_tput_storm", "guest throughput in the storm (acc/us)"),
                  ("nb_tput_storm", "neighbours' throughput in the storm (acc/us)"), ("violations", "violations")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4))
    for ax, (col, title) in zip(axes, panels):
        vals = [r.get(col, 0) for r in rows]
        colors = ["tab:red" if r.get("verdict") == "UNSAFE" else "tab:blue" for r in rows]
        ax.barh(labels, vals, color=colors)
        ax.set_title(title, fontsize=9)
        ax.invert_yaxis()
        ax.tick_params(labelsize=8)
    fig.suptitle(table.title, fontsize=9)
    fig.tight_layout()
    fmt = os.path.splitext(path)[1].lstrip(".").lower() or "png"
    if fmt not in ("png", "svg", "pdf"):
        raise SevsimError(f"--plot: use a .png, .svg or .pdf file name, got {path!r}")
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=120)
    plt.close(fig)
    write_atomic(path, buf.getvalue())


def cmd_run(args) -> int:
    from . import scenarios

    sc = scenarios.get(args.scenario)
    params = {}
    if args.preset:
        params["preset"] = args.preset
    for item in args.set or []:
        if "=" not in item:
            raise ValueError(f"--set takes NAME=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        params[k.strip().replace("-", "_")] = v.strip()
    strategies = None
    if args.strategy:
        strategies = [s.strip() for s in args.strategy.split(",") if s.strip()]
        bad = [s for s in strategies if s not in STRATEGIES]
        if bad:
            raise ValueError(f"unknown strategy {bad[0]!r}; valid: {', '.join(STRATEGIES)}")
    if args.preset and args.preset not in dict(Host.presets()):
        raise ValueError(f"unknown preset {args.preset!r}; valid: {', '.join(n for n, _ in Host.presets())}")
    for out in (args.json, args.csv, args.plot):
        if out and not os.path.isdir(os.path.dirname(os.path.abspath(out))):
            raise ValueError(f"cannot write {out}: no such directory")
    progress = Progress()
    try:
        table = scenarios.run(sc.NAME, strategies=strategies, seed=args.seed, reps=args.reps, progress=progress,
                              **params)
    finally:
        progress.close()
    print(table.format(SUMMARY_COLUMNS.get(sc.NAME)))
    unsafe = [r["strategy"] for r in table.rows if r.get("verdict") == "UNSAFE"]
    if unsafe:
        print(f"\nUNSAFE: {', '.join(dict.fromkeys(unsafe))} (violations = corruption/DMA/isolation/RMP events "
              f"recorded + dirty stale lines left in the caches)")
    if args.json:
        write_atomic(args.json, table.to_json())
    if args.csv:
        write_atomic(args.csv, table.to_csv())
    if args.plot:
        plot(table, sc.NAME, args.plot)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sevsim", description="Is a KVM host's cache/TLB/RMP maintenance policy for "
                                "confidential VMs safe, and what does it cost?")
    p.add_argument("--version", action="version", version=f"sevsim {__version__}")
    sub = p.add_subparsers(dest="cmd")
    sub.add_parser("list", help="scenarios, strategies and presets")
    r = sub.add_parser("run", help="run a scenario and print its table")
    r.add_argument("scenario", nargs="?", default="sev-teardown", help="scenario name (default: sev-teardown)")
    r.add_argument("--preset", help="host preset (default: the scenario's, epyc-9755-2s)")
    r.add_argument("--strategy", help="comma-separated strategies (default: the scenario's set)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--reps", type=int, default=1, help="repetitions (seed, seed+1, ...)")
    r.add_argument("--set", action="append", metavar="NAME=VALUE", help="a scenario parameter (repeatable)")
    r.add_argument("--json", metavar="FILE", help="write the full table as JSON")
    r.add_argument("--csv", metavar="FILE", help="write the full table as CSV")
    r.add_argument("--plot", metavar="FILE", help="write a comparison chart (.png/.svg; needs matplotlib)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.cmd is None:
        parser.print_help()
        return 2
    try:
        return cmd_list(args) if args.cmd == "list" else cmd_run(args)
    except (ValueError, TypeError, OSError, SevsimError) as e:
        print(f"sevsim: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
