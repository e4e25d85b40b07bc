"""Pieces the scenarios share: placing vCPUs and neighbours on the topology, neighbour tenants
with their own memory and workloads, and measuring what a phase did to them."""

from __future__ import annotations

import gc
import os
import pickle
from dataclasses import dataclass

import numpy as np

from .. import Host
from ..config import parse_size
from ..results import ResultTable
from ..kvm import ConfigError, Kvm
from ..workloads import Workload

LINE = 64


def can_fork() -> bool:
    return hasattr(os, "fork")


def setup_jobs() -> int:
    """How many forked teardowns run at once: SEVSIM_JOBS, else the CPUs this process may use
    (at most 4: each child may copy much of the engine's state as it writes)."""
    v = os.environ.get("SEVSIM_JOBS")
    if v:
        try:
            n = int(v)
        except ValueError:
            raise ConfigError(f"SEVSIM_JOBS = {v!r} is not a number of processes") from None
        if n < 1:
            raise ConfigError(f"SEVSIM_JOBS = {n}: needs at least 1")
        return n
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(4, cpus))


def shared_setup(prepare, finish, strategies=None, jobs: int | None = None):
    """A `run_one(strategy, seed, rep, **params)` for `run_grid` that calls `prepare(strategy,
    seed, **params)` once per seed and then, for each strategy, `finish(state, strategy, rep)` in
    a forked child on a copy-on-write copy of that state, so that no strategy sees another's
    teardown. For scenarios whose set-up does not depend on the strategy: the results equal
    `finish(prepare(...))` per strategy. An exception in the child is raised in the parent.
    Given the `strategies` in the order run_grid asks for them, up to `jobs` children run at once
    (setup_jobs()): each works on its own copy, so the rows are the same as one at a time."""
    cache: dict = {}
    pending: dict = {}  # strategy -> (pid, read end) of a child already forked for this seed
    order = list(strategies or [])
    jobs = setup_jobs() if jobs is None else jobs

    def fork(strategy, rep):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: tear down, send the result, leave without cleanup
            os.close(r)
            try:
                out = ("ok", finish(cache["state"], strategy, rep))
            except BaseException as e:  # noqa: BLE001 - handed to the parent
                out = ("error", e)
            try:
                data = pickle.dumps(out)
            except Exception as e:  # an unpicklable exception: its text
                data = pickle.dumps(("error", RuntimeError(f"{type(e).__name__}: {out[1]!r}")))
            with os.fdopen(w, "wb") as f:
                f.write(data)
            os._exit(0)
        os.close(w)
        pending[strategy] = (pid, r)

    def collect(strategy):
        pid, r = pending.pop(strategy)
        with os.fdopen(r, "rb") as f:
            data = f.read()
        os.waitpid(pid, 0)
        return data

    def abandon():
        for s in list(pending):
            pid, r = pending.pop(s)
            os.close(r)
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)

    def one(strategy, seed, rep, **params):
        if cache.get("seed") != seed:
            abandon()
            cache.clear()
            gc.collect()
            cache["state"] = prepare(strategy, seed, **params)
            cache["seed"] = seed
        ahead = order[order.index(strategy):] if strategy in order else [strategy]
        for s in ahead[:max(1, jobs)]:
            if s not in pending and (s == strategy or len(pending) < jobs):
                fork(s, rep)
        try:
            data = collect(strategy)
        except BaseException:
            abandon()
            raise
        if not data:
            abandon()
            raise RuntimeError(f"strategy {strategy}: the teardown's process died without a result")
        kind, value = pickle.loads(data)
        if kind == "error":
            abandon()
            raise value
        return value

    return one


def first_threads_by_ccd(host: Host) -> list[list[int]]:
    """For each CCD, the first SMT thread of each of its cores (one CPU per core)."""
    t = host.topology()
    cpu_core, core_ccd = t["cpu_core"], t["core_ccd"]
    out: list[list[int]] = [[] for _ in range(host.ccd_count)]
    seen = set()
    for cpu in range(host.cpu_count):
        core = int(cpu_core[cpu])
        if core in seen:
            continue
        seen.add(core)
        out[int(core_ccd[core])].append(cpu)
    return out


def place(host: Host, vm_vcpus: list[int], neighbours: int) -> tuple[list[list[int]], list[int]]:
    """Pin each VM's vCPUs to cores (one per core, CCD by CCD from CCD 0) and the neighbours to
    cores of the CCDs after them. ConfigError if they do not fit."""
    by_ccd = first_threads_by_ccd(host)
    cores = [c for ccd in by_ccd for c in ccd]
    need = sum(vm_vcpus)
    if need > len(cores):
        raise ConfigError(f"{need} vCPUs pinned one per core, but the host has {len(cores)} cores")
    vm_cpus, i = [], 0
    for n in vm_vcpus:
        vm_cpus.append(cores[i:i + n])
        i += n
    used_ccds = {ccd for ccd, cs in enumerate(by_ccd) for c in cs if c in set(cores[:need])}
    rest = [c for ccd, cs in enumerate(by_ccd) if ccd not in used_ccds for c in cs]
    if len(rest) < neighbours:
        rest = cores[need:]
    if neighbours > len(rest):
        raise ConfigError(f"{neighbours} neighbours do not fit on the {len(rest)} cores left after the VMs")
    # spread the neighbours over CCDs round-robin
    cpu_ccd = host.topology()["cpu_ccd"]
    by = {}
    for c in rest:
        by.setdefault(int(cpu_ccd[c]), []).append(c)
    order = [cs[j] for j in range(max(len(v) for v in by.values())) for cs in by.values() if j < len(cs)] if by else []
    return vm_cpus, order[:neighbours]


def housekeeping_cpu(host: Host, busy: list[int]) -> int:
    """A CPU for the host's own work (ioctls, notifier callbacks): the first thread of the last
    core nobody is pinned to, else the SMT sibling of the last busy core."""
    t = host.topology()
    busy_cores = {int(t["cpu_core"][c]) for c in busy}
    for cpu in range(host.core_count - 1, -1, -1):
        if int(t["cpu_core"][cpu]) not in busy_cores:
            return cpu
    return (host.core_count + max(busy_cores)) % host.cpu_count


@dataclass
class Neighbour:
    cpu: int
    base: int
    workload: Workload

    def run(self, host: Host, n: int, rng: np.random.Generator) -> None:
        off, write = self.workload.next(n, rng)
        host.access(self.cpu, off + np.uint64(self.base), write, 0)


def make_neighbours(kvm: Kvm, cpus: list[int], workload_factory) -> list[Neighbour]:
    out = []
    for cpu in cpus:
        w = workload_factory()
        pages = kvm.mem.alloc(max(1, w.footprint // 4096))
        if len(pages) > 1 and not np.all(np.diff(pages) == 4096):
            raise ConfigError("neighbour memory is not contiguous")  # pragma: no cover
        out.append(Neighbour(cpu, int(pages[0]), w))
    return out


PRIVATE = ("l1_hits", "l2_hits")


def snapshot(host: Host, cpus: list[int]) -> dict[str, np.ndarray]:
    c = host.counters
    idx = np.asarray(cpus, dtype=np.int64)
    snap = {k: c[k][idx].astype(np.int64) for k in ("accesses", "l1_hits", "l2_hits", "l3_hits", "access_cycles",
                                                      "ipi_cycles", "flush_cycles")}
    snap["clock"] = host.clocks[idx].astype(np.int64)
    return snap


def neighbour_stats(host: Host, before: dict, after: dict) -> dict[str, float]:
    """Hit rate (fraction served from the CPU's own L1/L2 or its CCD's L3), miss rate and
    throughput (accesses per simulated microsecond of the neighbours' time, handlers included)."""
    d = {k: after[k] - before[k] for k in before}
    acc = d["accesses"].sum()
    if acc == 0:
        return {"hit_rate": float("nan"), "private_hit_rate": float("nan"), "throughput": float("nan")}
    cyc = d["clock"].sum()
    return {
        "hit_rate": float((d["l1_hits"] + d["l2_hits"] + d["l3_hits"]).sum() / acc),
        "private_hit_rate": float((d["l1_hits"] + d["l2_hits"]).sum() / acc),
        # accesses per microsecond of each neighbour's own clock
        "throughput": float(acc / (cyc / (host.freq_ghz * 1e3))) if cyc else float("nan"),
    }


def group_stats(host: Host, before: dict, after: dict) -> dict[str, np.ndarray]:
    """Per CPU of a snapshot pair: accesses, misses (served beyond the CPU's own L1/L2 and its
    CCD's L3) and clock cycles."""
    d = {k: after[k] - before[k] for k in before}
    hits = d["l1_hits"] + d["l2_hits"] + d["l3_hits"]
    return {"accesses": d["accesses"], "misses": d["accesses"] - hits, "cycles": d["clock"]}


def warm_until_steady(host: Host, run_epoch, groups: dict[str, list[int]], *, min_epochs: int = 2,
                      max_epochs: int = 200, window: int = 2, hit_tol: float = 0.01,
                      tput_tol: float = 0.03) -> tuple[int, bool]:
    """Run `run_epoch()` until every group of CPUs (the guests' vCPUs, the neighbours...) is in
    its steady state: over two consecutive windows of `window` epochs, its hit rate moves by less
    than `hit_tol` and its throughput by less than `tput_tol` (relative). Returns the epochs run
    and whether steadiness was reached within `max_epochs`."""
    groups = {k: v for k, v in groups.items() if v}
    n = 0
    for _ in range(min_epochs):
        run_epoch()
        n += 1
    prev = None
    while n < max_epochs:
        s0 = {k: snapshot(host, cpus) for k, cpus in groups.items()}
        for _ in range(window):
            run_epoch()
            n += 1
        cur = {k: neighbour_stats(host, s0[k], snapshot(host, cpus)) for k, cpus in groups.items()}
        if prev is not None and all(
                abs(cur[k]["hit_rate"] - prev[k]["hit_rate"]) < hit_tol
                and abs(cur[k]["throughput"] - prev[k]["throughput"]) <= tput_tol * prev[k]["throughput"]
                for k in groups):
            return n, True
        prev = cur
    return n, False


def recovery(host: Host, nbs: list["Neighbour"], rng: np.random.Generator, base: dict[str, np.ndarray], *,
             window: int, max_windows: int = 64, tol: float = 0.01, trace: list | None = None) -> dict[str, float]:
    """The neighbours' damage after an event, independent of any measurement window: run them
    window by window until each is back to its steady miss rate (`base`, from `group_stats` over a
    quiet phase, within `tol`), and add up what they paid beyond their steady rates meanwhile:
    the extra misses and the extra cycles. Returns those sums (cycles summed over neighbours),
    the windows the slowest neighbour needed and whether all recovered within `max_windows`.
    With `trace` (a list), appends the hit rate of each window over the neighbours still recovering."""
    acc0 = np.maximum(base["accesses"], 1)
    miss_rate = base["misses"] / acc0
    cyc_per = base["cycles"] / acc0
    extra_miss = np.zeros(len(nbs))
    extra_cyc = np.zeros(len(nbs))
    done = np.zeros(len(nbs), dtype=bool)
    cpus = [nb.cpu for nb in nbs]
    windows = 0
    while not done.all() and windows < max_windows:
        s0 = snapshot(host, cpus)
        for i, nb in enumerate(nbs):
            if not done[i]:
                nb.run(host, window, rng)
        g = group_stats(host, s0, snapshot(host, cpus))
        windows += 1
        if trace is not None:
            ran = ~done
            trace.append(float(1 - g["misses"][ran].sum() / max(1, g["accesses"][ran].sum())))
        for i in np.nonzero(~done)[0]:
            a = g["accesses"][i]
            extra_miss[i] += g["misses"][i] - miss_rate[i] * a
            extra_cyc[i] += g["cycles"][i] - cyc_per[i] * a
            if g["misses"][i] / a <= miss_rate[i] + tol:
                done[i] = True
    return {"extra_misses": float(extra_miss.sum()), "extra_cycles": float(extra_cyc.sum()),
            "windows": windows, "recovered": bool(done.all())}


class Steps:
    """Which kernel step ran when each violation was recorded: `mark(name)` before each step; the
    violations recorded from then until the next mark belong to it."""

    def __init__(self, host: Host):
        self.host = host
        self.starts: list[int] = []
        self.names: list[str] = []

    def total(self) -> int:
        return int(sum(self.host.violation_counts().values()))

    def mark(self, name: str) -> None:
        self.starts.append(self.total())
        self.names.append(name)

    def of(self, index: np.ndarray) -> list[str]:
        """The step of each violation index."""
        if not self.names:
            return ["" for _ in index]
        at = np.searchsorted(np.asarray(self.starts), np.asarray(index), side="right") - 1
        return [self.names[i] if i >= 0 else "" for i in at]


_CAUSES = None


def violation_records(host: Host, steps: Steps) -> list[dict]:
    """Every recorded violation as a plain dict (kind, cause, cpu, pa, key, other_key, owner, cycle,
    step), in the order they were recorded."""
    global _CAUSES
    if _CAUSES is None:
        _CAUSES = Host.violation_causes()
    a = host.violations_array()
    n = len(a["cause"])
    if n == 0:
        return []
    names = steps.of(np.arange(n))
    out = []
    for i in range(n):
        cause, kind = _CAUSES[int(a["cause"][i])]
        out.append({"kind": kind, "cause": cause, "cpu": int(a["cpu"][i]), "pa": int(a["pa"][i]),
                    "key": int(a["key"][i]), "other_key": int(a["other_key"][i]), "owner": int(a["owner"][i]),
                    "cycle": int(a["cycle"][i]), "step": names[i]})
    return out


def first_violation(records: list[dict], safe: dict[str, int]) -> str:
    """The first violation of a run in words, or the latent hazard when nothing was recorded."""
    if records:
        v = records[0]
        return (f"{v['cause']} on CPU {v['cpu']} at pa {v['pa']:#x} (key {v['key']}, owner {v['owner']}), "
                f"cycle {v['cycle']}, in {v['step'] or 'setup'}")
    if safe["latent"]:
        return f"{safe['latent']} dirty lines under a stale or foreign key left in the caches (latent corruption)"
    return ""


def cycles_to_us(host: Host, cycles: float) -> float:
    return float(cycles) / (host.freq_ghz * 1e3)


def safety(host: Host) -> dict[str, int]:
    """Recorded violations by kind (RMP faults included: with SNP on, a host access the RMP refuses
    is a policy bug) plus the hazards still latent in the caches at the end. Every kind the engine
    records counts (the TLB kinds too), so a new oracle cannot go unreported."""
    kinds = host.violation_kinds()
    a = host.audit()
    latent = a["dirty_foreign_owner"] + a["dirty_stale_key"]
    out = {"corruption": kinds.get("corruption", 0), "dma": kinds.get("dma", 0),
           "isolation": kinds.get("isolation", 0), "rmp": kinds.get("rmp_fault", 0)}
    other = sum(v for k, v in kinds.items() if k not in ("corruption", "dma", "isolation", "rmp_fault"))
    out["tlb"] = other
    out["latent"] = latent
    out["violations"] = sum(out.values())
    return out


def cause_counts(host: Host) -> dict[str, int]:
    """Recorded violations by cause, one `v_CAUSE` column each (every cause, zeros included, so
    that every row has the same columns)."""
    counts = host.violation_counts()
    return {f"v_{cause}": int(counts.get(cause, 0)) for cause, _ in Host.violation_causes()}


def cause_legend() -> dict[str, str]:
    return {f"v_{cause}": f"recorded violations of cause {cause} (kind {kind})" for cause, kind in Host.violation_causes()}


def verdict(safe: dict[str, int]) -> str:
    return "SAFE" if safe["violations"] == 0 else "UNSAFE"


def strategy_notes(host: Host, kvm: Kvm, extra: list[str] = ()) -> str:
    """Why a row looks as it does, in words: what the strategy needs that the host lacks."""
    notes = list(extra)
    st = kvm.strategy
    if st.needs_sme_coherent and not host.features["sme_coherent"]:
        notes.append("needs SME_COHERENT: a host-key CLFLUSH does not reach guest-key lines here")
    if st.name == "vm_page_flush" and not host.features["vm_page_flush"]:
        notes.append("VM_PAGE_FLUSH unsupported: fell back to the kernel's whole-cache write-back")
    return "; ".join(notes)


def size(v, name: str) -> int:
    """A size parameter, ValueError naming it."""
    try:
        return parse_size(v)
    except ValueError as e:
        raise ValueError(f"parameter {name}: {e}") from None


def run_grid(title: str, run_one, *, strategies, seed, reps, progress, scenario: str, legend: dict[str, str],
             shown: list[str], **params) -> ResultTable:
    """One row per strategy x repetition (repetition r uses seed + r), with progress reports.
    `run_one` returns (row, violation records) or (row, records, time series); each row gets the whole configuration: every
    parameter, the seed and the sevsim version."""
    from .. import __version__

    table = ResultTable(title=title, legend=legend, params=list(params), shown=shown)
    total = len(strategies) * reps
    for rep in range(reps):
        for i, name in enumerate(strategies):
            if progress:
                progress(rep * len(strategies) + i, total, f"{name} rep {rep}")
            row, records, *series = run_one(name, seed + rep, rep, **params)
            gc.collect()  # a run's host is freed now, not at the next collection (policies hold cycles)
            if series:
                table.series.append({"strategy": row.get("strategy", name), "rep": rep, "seed": seed + rep,
                                     **series[0]})
            row.update({"scenario": scenario, **params, "sevsim_version": __version__})
            table.append(row, violations=[{"strategy": row.get("strategy", name), "mutation": row.get("mutation", ""),
                                           "rep": rep, "seed": seed + rep, **v} for v in records])
            if progress:
                progress(rep * len(strategies) + i + 1, total, f"{name} rep {rep}", row=row)
    return table
