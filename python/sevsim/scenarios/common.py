"""Pieces the scenarios share: placing vCPUs and neighbours on the topology, neighbour tenants
with their own memory and workloads, and measuring what a phase did to them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import Host
from ..config import parse_size
from ..results import ResultTable
from ..kvm import ConfigError, Kvm
from ..workloads import Workload

LINE = 64


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


def cycles_to_us(host: Host, cycles: float) -> float:
    return float(cycles) / (host.freq_ghz * 1e3)


def safety(host: Host) -> dict[str, int]:
    """Recorded violations (RMP faults included: with SNP on, a host access the RMP refuses is a
    policy bug) plus the hazards still latent in the caches at the end."""
    kinds = host.violation_kinds()
    a = host.audit()
    latent = a["dirty_foreign_owner"] + a["dirty_stale_key"]
    return {
        "corruption": kinds["corruption"],
        "dma": kinds["dma"],
        "isolation": kinds["isolation"],
        "rmp": kinds["rmp_fault"],
        "latent": latent,
        "violations": kinds["corruption"] + kinds["dma"] + kinds["isolation"] + kinds["rmp_fault"] + latent,
    }


def size(v, name: str) -> int:
    """A size parameter, ValueError naming it."""
    try:
        return parse_size(v)
    except ValueError as e:
        raise ValueError(f"parameter {name}: {e}") from None


def run_grid(title: str, run_one, *, strategies, seed, reps, progress, **params) -> ResultTable:
    """One row per strategy x repetition (repetition r uses seed + r), with progress reports."""
    table = ResultTable(title=title)
    total = len(strategies) * reps
    for rep in range(reps):
        for i, name in enumerate(strategies):
            if progress:
                progress(rep * len(strategies) + i, total, f"{name} rep {rep}")
            table.append(run_one(name, seed + rep, rep, **params))
    if progress:
        progress(total, total, "done")
    return table
