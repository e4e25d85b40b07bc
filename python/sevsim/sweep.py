"""Sweeps: a scenario x parameter grid run cell by cell, on a local process pool or on Dask.

A grid is a scenario, strategies, parameter axes (each a list of values; a single value is a fixed
parameter) and seeds. A cell is one (strategy, parameter combination, seed), run as
``scenarios.run(scenario, strategies=[strategy], seed=seed, reps=1, **params)``; its identity is a
stable hash of the scenario, the strategy, every parameter (defaults included, sizes in bytes), the
seed and the sevsim version (`Cell.id`).

Results: ``DIR/cells/ID.parquet`` (or ``.csv``), one file per finished cell with the whole
configuration of the cell, written by the driver atomically (a temporary file, then ``os.replace``),
so that a cell is either there whole or not at all and never twice: together the files are one
Parquet dataset (``pyarrow.dataset.dataset(DIR + "/cells")``, ``pandas.read_parquet``). A failing
cell is recorded too (``status`` "failed" and its ``error``) and does not stop the others. A rerun
of the same grid skips the cells that succeeded and retries the failed ones; killing the driver or
a worker loses at most the cells that were running.

Workers only compute (they need sevsim installed, not the output directory): the driver writes.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import io
import itertools
import json
import multiprocessing
import os
import socket
import sys
import time
import tomllib
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from . import __version__
from .results import ResultTable, write_atomic

CELLS = "cells"
FORMATS = ("parquet", "csv")
#: attempts of a cell whose worker process died before it is recorded as failed
MAX_ATTEMPTS = 3
#: columns the sweep adds to a scenario's row (not results: they differ from worker to worker)
META = ("cell_id", "status", "error", "elapsed_s", "worker", "attempt")


class GridError(ValueError):
    """A mistake in a grid (command line or TOML file): one line naming the argument and value."""


# -- the grid -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Cell:
    scenario: str
    strategy: str
    params: tuple[tuple[str, Any], ...]  # every parameter of the scenario, in its PARAMS order
    seed: int

    @property
    def id(self) -> str:
        from . import scenarios

        sc = scenarios.get(self.scenario)
        canon = {k: _canonical(sc.PARAMS[k], v) for k, v in self.params}
        doc = {"scenario": self.scenario, "strategy": self.strategy, "params": canon, "seed": self.seed,
               "sevsim_version": __version__}
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:24]

    def spec(self) -> dict[str, Any]:
        """What a worker needs: plain values only (picklable, no module references)."""
        return {"scenario": self.scenario, "strategy": self.strategy, "params": dict(self.params),
                "seed": self.seed, "cell_id": self.id, "sevsim_version": __version__}

    def label(self, varying: Sequence[str] = ()) -> str:
        p = dict(self.params)
        return " ".join([self.scenario, self.strategy] + [f"{k}={p[k]}" for k in varying] + [f"seed={self.seed}"])


def _canonical(param, v: Any) -> Any:
    if param.kind == "size" and v is not None:
        from .config import parse_size

        return parse_size(v)
    return v


@dataclass
class Grid:
    scenario: str
    strategies: list[str]
    #: parameter -> its values (parsed); one value: fixed
    axes: dict[str, list[Any]] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0])

    def cells(self) -> list[Cell]:
        from . import scenarios

        sc = scenarios.get(self.scenario)
        names = list(self.axes)
        out, seen = [], set()
        for combo in itertools.product(*(self.axes[n] for n in names)):
            merged = scenarios.defaults(sc, dict(zip(names, combo)))
            merged.update(zip(names, combo))
            params = tuple(merged.items())
            for seed in self.seeds:
                for s in self.strategies:
                    c = Cell(self.scenario, s, params, seed)
                    if c.id not in seen:
                        seen.add(c.id)
                        out.append(c)
        return out

    def varying(self) -> list[str]:
        return [k for k, v in self.axes.items() if len(v) > 1]

    def to_toml(self) -> str:
        """The grid as a file that `sevsim sweep --grid FILE` reads back."""
        from .cli import _toml_value

        lines = [f"# sevsim {__version__}: sevsim sweep --grid FILE --out DIR",
                 f"scenario = {_toml_value(self.scenario)}", f"strategies = {_toml_value(self.strategies)}",
                 f"seeds = {_toml_value(self.seeds)}", "", "[params]"]
        for k, vals in self.axes.items():
            vals = [v for v in vals if v is not None]
            if vals:
                lines.append(f"{k} = {_toml_value(vals if len(vals) > 1 else vals[0])}")
        return "\n".join(lines) + "\n"


def parse_seeds(text: Any, flag: str = "--seeds") -> list[int]:
    """"0-9", "3", "0,2,5-7" (or, from a TOML file, an integer or a list of integers)."""
    allowed = "use N, N-M or a comma-separated list of those, seeds in [0, 2**63)"
    if isinstance(text, bool):
        raise GridError(f"{flag} {text!r} is not allowed; {allowed}")
    if isinstance(text, int):
        text = str(text)
    if isinstance(text, list):
        if not all(isinstance(x, int) and not isinstance(x, bool) for x in text):
            raise GridError(f"{flag} {text!r} is not allowed; {allowed}")
        text = ",".join(map(str, text))
    if not isinstance(text, str):
        raise GridError(f"{flag} {text!r} is not allowed; {allowed}")
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part:
                a, b = (int(x) for x in part.split("-", 1))
                if b < a:
                    raise ValueError
                if b - a >= 1_000_000:
                    raise GridError(f"{flag} {part!r}: at most 1000000 seeds")
                out.extend(range(a, b + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise GridError(f"{flag} {part!r} is not allowed; {allowed}") from None
    if not out or any(not 0 <= s < 2**63 for s in out):
        raise GridError(f"{flag} {text!r} is not allowed; {allowed}")
    return list(dict.fromkeys(out))


def _axis(sc, name: str, values: list[Any], where: str) -> list[Any]:
    from . import scenarios

    if name not in sc.PARAMS:
        raise GridError(f"{where}: scenario {sc.NAME} has no parameter {name!r}; valid: {', '.join(sc.PARAMS)}")
    if not values:
        raise GridError(f"{where}: parameter {name}: give at least one value")
    try:
        return list(dict.fromkeys(scenarios.coerce(sc, name, v) for v in values))
    except ValueError as e:
        raise GridError(f"{where}: {e}") from None


def read_grid_file(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        raise GridError(f"--grid {path}: no such file") from None
    except IsADirectoryError:
        raise GridError(f"--grid {path}: is a directory") from None
    except tomllib.TOMLDecodeError as e:
        raise GridError(f"--grid {path}: not valid TOML ({e})") from None
    allowed = {"scenario", "strategies", "seeds", "params"}
    bad = sorted(set(doc) - allowed)
    if bad:
        raise GridError(f"--grid {path}: unknown key {bad[0]!r}; allowed: {', '.join(sorted(allowed))}")
    if "params" in doc and not isinstance(doc["params"], dict):
        raise GridError(f"--grid {path}: [params] must be a table")
    return doc


def make_grid(scenario: str | None, *, sets: Sequence[str] = (), strategies: str | None = None,
              seeds: str | None = None, grid_file: str | None = None) -> Grid:
    """The grid of a command line: a TOML file (optional) and --set NAME=V1,V2 / --strategy /
    --seeds over it. Every value is checked here, before anything runs."""
    from . import scenarios

    doc = read_grid_file(grid_file) if grid_file else {}
    where = f"--grid {grid_file}" if grid_file else "sweep"
    name = scenario or doc.get("scenario")
    if not name:
        raise GridError("sweep: name a scenario (sevsim sweep SCENARIO, or scenario = ... in --grid FILE); "
                        f"valid: {', '.join(scenarios.SCENARIOS)}")
    try:
        sc = scenarios.get(name)
    except ValueError as e:
        raise GridError(f"sweep: {e}") from None
    axes: dict[str, list[Any]] = {}
    for k, v in doc.get("params", {}).items():
        axes[k] = _axis(sc, k, v if isinstance(v, list) else [v], f"{where} [params]")
    given: set[str] = set()
    for item in sets:
        if "=" not in item:
            raise GridError(f"--set takes NAME=VALUE[,VALUE...], got {item!r}")
        k, v = item.split("=", 1)
        k = k.strip().replace("-", "_")
        if k in given:
            raise GridError(f"--set {k}: given twice; list its values once, comma-separated")
        given.add(k)
        axes[k] = _axis(sc, k, [x.strip() for x in v.split(",")], f"--set {item}")
    strat = strategies if strategies is not None else doc.get("strategies")
    try:
        strat_list = scenarios.strategy_list(strat, sc)
    except ValueError as e:
        raise GridError(f"--strategy {strat!r}: {e}" if strategies is not None else f"{where} strategies: {e}") from None
    if seeds is not None:
        seed_list = parse_seeds(seeds)
    else:
        seed_list = parse_seeds(doc["seeds"], f"{where} seeds") if "seeds" in doc else [0]
    return Grid(sc.NAME, strat_list, axes, seed_list)


# -- running a cell (in a worker) -----------------------------------------------------------------

def run_cell(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one cell and return its row: the scenario's row (the whole configuration included), its
    time series as JSON and the sweep's columns. An exception in the scenario is the cell's result
    (status "failed", error), not the worker's."""
    from . import scenarios

    t0 = time.perf_counter()
    out: dict[str, Any] = {"scenario": spec["scenario"], "strategy": spec["strategy"], "seed": spec["seed"],
                           **spec["params"], "sevsim_version": spec["sevsim_version"]}
    try:
        if __version__ != spec["sevsim_version"]:
            raise RuntimeError(f"this worker runs sevsim {__version__}, the sweep sevsim {spec['sevsim_version']}")
        table = scenarios.run(spec["scenario"], strategies=[spec["strategy"]], seed=spec["seed"], reps=1,
                              **spec["params"])
        out.update(table.rows[0])
        series = getattr(table, "series", None)
        out["series"] = json.dumps(series[0], separators=(",", ":")) if series else None
        out["status"], out["error"] = "ok", None
    except Exception as e:  # the cell failed; the sweep goes on
        out["status"], out["error"] = "failed", " ".join(f"{type(e).__name__}: {e}".split())
    out["cell_id"] = spec["cell_id"]
    out["elapsed_s"] = round(time.perf_counter() - t0, 4)
    out["worker"] = f"{socket.gethostname()}:{os.getpid()}"
    return out


def failed_row(cell: Cell, error: str) -> dict[str, Any]:
    spec = cell.spec()
    return {"scenario": cell.scenario, "strategy": cell.strategy, "seed": cell.seed, **spec["params"],
            "sevsim_version": __version__, "status": "failed", "error": error, "cell_id": cell.id,
            "elapsed_s": None, "worker": None}


# -- the dataset ----------------------------------------------------------------------------------

def _pyarrow():
    try:
        import pyarrow  # noqa: F401
        import pyarrow.csv  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise GridError("sevsim sweep needs pyarrow: pip install 'sevsim[sweep]'") from None
    return pyarrow


def write_cell(out_dir: str, row: dict[str, Any], fmt: str = "parquet") -> str:
    """One cell's row as DIR/cells/ID.FMT, atomically: it appears whole or not at all."""
    pa = _pyarrow()
    table = pa.Table.from_pylist([row])
    buf = io.BytesIO()
    if fmt == "parquet":
        pa.parquet.write_table(table, buf)
    else:
        pa.csv.write_csv(table, buf)
    path = os.path.join(out_dir, CELLS, f"{row['cell_id']}.{fmt}")
    write_atomic(path, buf.getvalue())
    return path


def _cell_files(out_dir: str) -> dict[str, str]:
    d = os.path.join(out_dir, CELLS)
    if not os.path.isdir(d):
        return {}
    out = {}
    for name in sorted(os.listdir(d)):
        stem, _, ext = name.partition(".")
        if ext in FORMATS and not name.startswith("."):
            out.setdefault(stem, os.path.join(d, name))
    return out


def _read_file(path: str):
    pa = _pyarrow()
    if path.endswith(".parquet"):
        return pa.parquet.read_table(path)
    return pa.csv.read_csv(path)


def load(out_dir: str) -> list[dict[str, Any]]:
    """Every recorded cell of a sweep directory, one row each (ok and failed), in cell-id order."""
    pa = _pyarrow()
    files = _cell_files(out_dir)
    if not files:
        return []
    tables = [_read_file(p) for p in files.values()]
    return pa.concat_tables(tables, promote_options="permissive").to_pylist()


def statuses(out_dir: str) -> dict[str, str]:
    """cell id -> "ok" or "failed", for every recorded cell."""
    out = {}
    for cid, path in _cell_files(out_dir).items():
        t = _read_file(path)
        out[cid] = t.column("status")[0].as_py() if "status" in t.column_names else "ok"
    return out


def check_out_dir(path: str, flag: str = "--out") -> None:
    """Create the directory (and its cells/) or fail with one line, before anything runs."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise GridError(f"{flag} {path}: exists and is not a directory")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(path) and not os.path.isdir(parent):
        raise GridError(f"{flag} {path}: no such directory {parent}")
    try:
        os.makedirs(os.path.join(path, CELLS), exist_ok=True)
    except OSError as e:
        raise GridError(f"{flag} {path}: cannot create it ({e.strerror})") from None
    if not os.access(os.path.join(path, CELLS), os.W_OK):
        raise GridError(f"{flag} {path}: not writable")


# -- executors ------------------------------------------------------------------------------------

def _exit_with_driver(driver: int) -> None:
    """A local worker's initializer: exit when the driver is gone (a SIGKILLed driver cannot stop
    its pool, and a worker blocked on the pool's pipes would otherwise outlive it)."""
    import threading

    def watch():
        while os.getppid() == driver:
            time.sleep(0.2)
        os._exit(1)

    threading.Thread(target=watch, name="sevsim-driver-watch", daemon=True).start()


class LocalPool:
    """A local process pool (spawned processes); a worker that dies takes the pool with it, so
    the cells it was running are resubmitted to a new pool (up to MAX_ATTEMPTS)."""

    def __init__(self, jobs: int | None = None):
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        self.jobs = jobs or cores
        self.name = f"local pool of {self.jobs} processes"

    def run(self, cells: list[Cell], on_row: Callable[[dict], None], on_tick: Callable[[int], None]) -> None:
        attempts: Counter = Counter()
        todo = list(cells)
        ctx = multiprocessing.get_context("spawn")
        while todo:
            ex = cf.ProcessPoolExecutor(max_workers=min(self.jobs, len(todo)), mp_context=ctx,
                                     initializer=_exit_with_driver, initargs=(os.getpid(),))
            try:
                futs = {}
                for c in todo:
                    attempts[c.id] += 1
                    futs[ex.submit(run_cell, c.spec())] = c
                todo = []
                waiting = set(futs)
                while waiting:
                    done, waiting = cf.wait(waiting, timeout=0.5, return_when=cf.FIRST_COMPLETED)
                    for f in done:
                        c = futs[f]
                        try:
                            row = f.result()
                        except cf.process.BrokenProcessPool as e:
                            if attempts[c.id] >= MAX_ATTEMPTS:
                                on_row(failed_row(c, f"worker process died {attempts[c.id]} times running it "
                                                     f"({type(e).__name__}: {e})"))
                            else:
                                todo.append(c)
                            continue
                        row["attempt"] = attempts[c.id]
                        on_row(row)
                    on_tick(min(self.jobs, sum(1 for f in waiting if f.running())))
                if todo:
                    sys.stderr.write(f"sevsim: a worker process died; {len(todo)} unfinished cells resubmitted "
                                     "to a new pool\n")
                    sys.stderr.flush()
            finally:
                ex.shutdown(wait=True, cancel_futures=True)


class DaskPool:
    """Cells as tasks of a Dask distributed scheduler; the scheduler reschedules the tasks of a
    worker that dies (distributed.scheduler.allowed-failures), then the cell is recorded as failed."""

    def __init__(self, address: str):
        try:
            import distributed  # noqa: F401
        except ImportError:
            raise GridError("--scheduler needs dask and distributed: pip install 'sevsim[sweep]'") from None
        self.address = address
        self.name = f"Dask scheduler {address}"
        self.client = None

    def connect(self):
        """Connect now (before anything runs): GridError if the scheduler cannot be reached."""
        import dask
        import distributed

        if self.client is None:
            try:  # the connect timeout is dask's: DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT=30s
                self.client = distributed.Client(self.address,
                                                 timeout=dask.config.get("distributed.comm.timeouts.connect"))
            except (OSError, TimeoutError, ValueError) as e:
                raise GridError(f"--scheduler {self.address}: cannot connect "
                                f"({' '.join(str(e).split()) or type(e).__name__})") from None
            workers = self.client.scheduler_info().get("workers", {})
            threads = sum(w.get("nthreads", 0) for w in workers.values())
            self.name = f"Dask scheduler {self.address} ({len(workers)} workers, {threads} threads)"
        return self.client

    def run(self, cells: list[Cell], on_row: Callable[[dict], None], on_tick: Callable[[int], None]) -> None:
        import distributed

        client = self.connect()
        self.client = None
        try:
            tag = uuid.uuid4().hex[:8]
            futs = {client.submit(run_cell, c.spec(), key=f"sevsim-cell-{c.id[:12]}-{tag}", pure=False): c
                    for c in cells}
            waiting = set(futs)
            while waiting:
                try:
                    done, waiting = distributed.wait(waiting, timeout=0.5, return_when="FIRST_COMPLETED")
                except TimeoutError:
                    done = set()
                for f in done:
                    c = futs[f]
                    if f.status == "finished":
                        row = f.result()
                        row["attempt"] = 1
                        on_row(row)
                    else:
                        exc = f.exception()
                        on_row(failed_row(c, " ".join(f"{type(exc).__name__}: {exc}".split())))
                    f.release()
                keys = {f.key for f in waiting}
                on_tick(sum(1 for ks in client.processing().values() for k in ks if k in keys))
        finally:
            client.close()


# -- progress -------------------------------------------------------------------------------------

class SweepProgress:
    """Cells done, running, failed and an ETA: a tqdm bar on a terminal, a plain line per finished
    cell otherwise."""

    def __init__(self, total: int, skipped: int, varying: Sequence[str], stream=sys.stderr, quiet: bool = False):
        self.total, self.skipped, self.varying = total, skipped, list(varying)
        self.stream, self.quiet = stream, quiet
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self.done = self.failed = self.running = 0
        self.t0 = time.monotonic()
        self.bar = None
        if quiet:
            return
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=skipped, file=stream, unit="cell", dynamic_ncols=True)
            self._postfix()

    def _postfix(self):
        if self.bar is not None:
            self.bar.set_postfix_str(f"{self.running} running, {self.failed} failed", refresh=True)

    def eta(self) -> str:
        from tqdm import tqdm

        ran = self.done  # cells finished by this run (skipped ones took no time)
        left = self.total - self.skipped - ran
        if ran == 0:
            return "?"
        return tqdm.format_interval((time.monotonic() - self.t0) / ran * left)

    def tick(self, running: int) -> None:
        if running != self.running:
            self.running = running
            self._postfix()

    def row(self, row: dict, label: str) -> None:
        self.done += 1
        self.failed += row.get("status") == "failed"
        self.running = max(0, self.running - 1)  # until the next tick says
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.update(1)
            self._postfix()
            return
        what = row.get("verdict") if row.get("status") == "ok" else f"FAILED: {row.get('error')}"
        self.stream.write(f"sevsim: {self.skipped + self.done}/{self.total} cells, {self.running} running, "
                          f"{self.failed} failed, ETA {self.eta()}: {label}: {what}\n")
        self.stream.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# -- the sweep ------------------------------------------------------------------------------------

@dataclass
class SweepResult:
    grid: Grid
    cells: list[Cell]
    skipped: int
    rows: list[dict[str, Any]]  # every cell of the grid that is recorded, in grid order

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r.get("status") == "failed"]

    def table(self) -> ResultTable:
        from . import scenarios

        sc = scenarios.get(self.grid.scenario)
        ok = [{k: v for k, v in r.items() if k != "series"} for r in self.rows if r.get("status") == "ok"]
        return ResultTable(ok, title=self.grid.scenario, legend=sc.LEGEND, params=list(sc.PARAMS),
                           shown=sc.SUMMARY_COLUMNS)

    def summaries(self) -> list[ResultTable]:
        """Per combination of the varying parameters: ResultTable.summary over the seeds."""
        from . import scenarios

        sc = scenarios.get(self.grid.scenario)
        table = self.table()
        varying = self.grid.varying()
        out = []
        combos = dict.fromkeys(tuple(r.get(k) for k in varying) for r in table.rows)
        for combo in combos:
            part = table.where(**dict(zip(varying, combo)))
            part.title = " ".join([self.grid.scenario] + [f"{k}={v}" for k, v in zip(varying, combo)]
                                  + [f"seeds {_seed_text(self.grid.seeds)}"])
            out.append(part.summary([m for m in sc.METRICS if m in part.columns]))
        return out


def _seed_text(seeds: list[int]) -> str:
    if seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{seeds[0]}-{seeds[-1]}" if len(seeds) > 1 else str(seeds[0])
    return ",".join(map(str, seeds))


def sweep(grid: Grid, out_dir: str, *, pool: LocalPool | DaskPool | None = None, fmt: str = "parquet",
          progress: SweepProgress | None | bool = None, stream=sys.stderr) -> SweepResult:
    """Run every cell of `grid` not yet finished in `out_dir` and return the grid's rows."""
    if fmt not in FORMATS:
        raise GridError(f"--format {fmt!r} is not allowed; use {' or '.join(FORMATS)}")
    _pyarrow()
    check_out_dir(out_dir)
    pool = pool or LocalPool()
    cells = grid.cells()
    write_atomic(os.path.join(out_dir, f"grid-{hashlib.sha256(grid.to_toml().encode()).hexdigest()[:12]}.toml"),
                 grid.to_toml())
    have = statuses(out_dir)
    todo = [c for c in cells if have.get(c.id) != "ok"]
    skipped = len(cells) - len(todo)
    varying = grid.varying()
    labels = {c.id: c.label(varying) for c in todo}
    if progress is not False and not getattr(progress, "quiet", False):
        retry = sum(1 for c in todo if c.id in have)
        stream.write(f"sevsim: sweep {grid.scenario}: {len(cells)} cells, {skipped} already done"
                     + (f", {retry} failed before and retried" if retry else "")
                     + f"; {len(todo)} to run on a {pool.name}\n")
        stream.flush()
    if progress is None or progress is True:
        progress = SweepProgress(len(cells), skipped, varying, stream=stream)
    elif progress is False:
        progress = SweepProgress(len(cells), skipped, varying, stream=stream, quiet=True)

    def on_row(row: dict) -> None:
        write_cell(out_dir, row, fmt)
        progress.row(row, labels.get(row["cell_id"], row["cell_id"]))

    try:
        if todo:
            pool.run(todo, on_row, progress.tick)
    finally:
        progress.close()
    ids = {c.id for c in cells}
    by_id = {r["cell_id"]: r for r in load(out_dir) if r.get("cell_id") in ids}
    rows = [by_id[c.id] for c in cells if c.id in by_id]
    return SweepResult(grid, cells, skipped, rows)
