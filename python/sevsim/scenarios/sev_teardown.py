"""sev-teardown: SEV VMs unregister their memory and are destroyed on a host whose neighbour tenants
keep cache-resident working sets.

Reproduces seed thread 1, "KVM: SEV: Prefer WBNOINVD over WBINVD for cache maintenance efficiency"
(Feb 2025; a77896eea33d, with 6f38f8c57464 "Flush cache only on CPUs running SEV guest" and
7e00013bd339 "Remove wbinvd in sev_vm_destroy()"). For each strategy it measures the teardown's
cost (simulated time on the initiating CPU, and CPU time summed over the host), the write-backs,
IPIs, what the neighbours' hit rate and throughput were before and after, and the safety verdict:
violations recorded during the run plus dirty stale lines still latent in the caches at the end.
"""

from __future__ import annotations

import numpy as np

from .. import Host
from ..kvm import Kvm, VmType
from ..results import ResultTable  # noqa: F401 (the return type)
from ..workloads import make as make_workload
from . import common
from .common import size

NAME = "sev-teardown"
SUMMARY = "SEV VMs torn down next to busy neighbours: teardown cost, neighbours' hit rate, corruption"
SOURCE = "KVM: SEV: Prefer WBNOINVD over WBINVD for cache maintenance efficiency (Feb 2025)"

PARAMS = {
    "preset": ("epyc-9755-2s", "host preset"),
    "memory": ("64GiB", "host memory (the VMs' footprints are scaled down from a real host's)"),
    "sme_coherent": (None, "override the preset's SME_COHERENT (None: the preset's)"),
    "vms": (2, "number of SEV VMs torn down"),
    "vm_type": ("sev-es", "sev, sev-es or snp"),
    "snp": (False, "enable SNP on the host: an snp VM's private memory then lives in guest_memfd and its "
                   "teardown goes through sev_gmem_invalidate (RMP back to shared, CLFLUSH by PFN), "
                   "not through the strategy"),
    "gmem_huge": (False, "with snp: guest_memfd backed by 2 MiB folios (2 MiB RMP entries, out-of-tree "
                         "hugetlb guest_memfd); by default 4 KiB folios, as upstream"),
    "vcpus": (4, "vCPUs per VM, each pinned to its own core"),
    "vm_memory": ("16MiB", "guest memory per VM"),
    "guest_accesses": (50_000, "accesses each vCPU makes before the teardown (30% writes)"),
    "vcpu_migrations": (0, "times each vCPU moves to another free core while it runs (have_run_cpus grows)"),
    "neighbours": (16, "neighbour tenants, one core each, on other CCDs"),
    "neighbour_workload": ("working-set", "working-set, streaming, random, zipf[:ALPHA] or trace:PATH"),
    "neighbour_memory": ("512KiB", "each neighbour's footprint"),
    "neighbour_accesses": (16_384, "accesses per neighbour per measured phase"),
    "reuse_fraction": (0.125, "fraction of the freed lines the host writes when it reuses the memory"),
    "min_sev_asid": (100, "CPUID 0x8000001F EDX: first plain-SEV ASID; ES/SNP use 1..min_sev_asid-1"),
    "max_sev_asid": (1006, "CPUID 0x8000001F ECX: last SEV ASID ([MEM] ~1006 on Genoa/Turin, unverified)"),
    "recycle_asids": (True, "recycle freed ASIDs (WBINVD on all CPUs + DF_FLUSH) when the range runs out"),
}
DEFAULT_STRATEGIES = ["wbinvd_all", "wbnoinvd_all", "wbnoinvd_ran_cpus", "clflushopt_hva", "clflushopt_pfn",
                      "vm_page_flush", "none"]


def run(*, strategies, seed, reps, progress=None, **p) -> ResultTable:
    title = (f"{NAME}: {p['vms']} x {p['vm_type']} VM ({p['vcpus']} vCPUs, {p['vm_memory']}) "
             f"torn down next to {p['neighbours']} neighbours on {p['preset']}")
    return common.run_grid(title, run_one, strategies=strategies, seed=seed, reps=reps, progress=progress, **p)


def run_one(strategy: str, seed: int, rep: int, *, preset, memory, sme_coherent, vms, vm_type, vcpus, vm_memory,
            guest_accesses, vcpu_migrations, neighbours, neighbour_workload, neighbour_memory, neighbour_accesses,
            reuse_fraction, min_sev_asid, max_sev_asid, recycle_asids, snp=False, gmem_huge=False) -> dict:
    rng = np.random.default_rng(seed)
    host = Host.from_preset(preset, memory=memory, sme_coherent=sme_coherent)
    if snp:
        host.snp_enable()
    vm_mem = size(vm_memory, "vm_memory")
    nb_mem = size(neighbour_memory, "neighbour_memory")
    if not 0.0 <= reuse_fraction <= 1.0:
        raise ValueError(f"parameter reuse_fraction must be in [0, 1], got {reuse_fraction}")
    vm_cpus, nb_cpus = common.place(host, [vcpus] * vms, neighbours)
    kvm = Kvm(host, strategy, initiator=common.housekeeping_cpu(host, [c for cs in vm_cpus for c in cs] + nb_cpus),
              min_sev_asid=min_sev_asid, max_sev_asid=max_sev_asid, recycle=recycle_asids, gmem_huge=gmem_huge)
    nbs = common.make_neighbours(kvm, nb_cpus, lambda: make_workload(neighbour_workload, nb_mem))
    guests = [kvm.sev_guest_init(f"vm{i}", VmType(vm_type), vm_mem, vcpus) for i in range(vms)]

    # the guests run and dirty their memory, moving between cores if asked; the neighbours warm up
    busy = {c for cs in vm_cpus for c in cs} | set(nb_cpus) | {kvm.initiator}
    spare = [c for ccd in common.first_threads_by_ccd(host) for c in ccd if c not in busy]
    if vcpu_migrations < 0:
        raise ValueError(f"parameter vcpu_migrations must be >= 0, got {vcpu_migrations}")
    if vcpu_migrations and not spare:
        raise ValueError("parameter vcpu_migrations: no free core to migrate vCPUs to")
    hop = 0
    for vm, cpus in zip(guests, vm_cpus):
        for v, home in enumerate(cpus):
            chunks = np.array_split(np.arange(guest_accesses), vcpu_migrations + 1)
            for k, chunk in enumerate(chunks):
                cpu = home if k == 0 else spare[hop % len(spare)]
                hop += k > 0
                gpa = rng.integers(0, vm.memory // 64, len(chunk), dtype=np.uint64) * np.uint64(64)
                kvm.vcpu_run(vm, v, cpu, gpa, rng.random(len(chunk)) < 0.3)
    for nb in nbs:
        nb.run(host, neighbour_accesses, rng)

    # a phase of neighbour work with no teardown: the baseline
    s0 = common.snapshot(host, nb_cpus)
    for nb in nbs:
        nb.run(host, neighbour_accesses, rng)
    s1 = common.snapshot(host, nb_cpus)
    before = common.neighbour_stats(host, s0, s1)

    # the teardown, from the initiating CPU
    clocks0 = host.clocks.astype(np.int64)
    c0 = host.counters
    init = kvm.initiator
    freed = []
    for vm in guests:
        for v in range(vcpus):
            kvm.vcpu_put(vm, v)
        freed.extend(int(pa) for pa in vm.pages)
        freed.extend(vm.vmsa)
        if vm.regions:  # SEV/SEV-ES pinned memory; SNP's is guest_memfd's, freed at destroy
            kvm.sev_mem_enc_unregister_region(vm, 0)
        kvm.sev_vm_destroy(vm)
    clocks1 = host.clocks.astype(np.int64)
    c1 = host.counters
    teardown_init = int(clocks1[init] - clocks0[init])
    teardown_total = int((clocks1 - clocks0).sum())

    # the host reuses the memory at once (the page allocator hands it out and it is written)
    if freed and reuse_fraction > 0:
        pages = np.array(freed, dtype=np.uint64)
        per_page = max(1, int(round(64 * reuse_fraction)))
        lines = (pages[:, None] + np.arange(per_page, dtype=np.uint64)[None, :] * np.uint64(64 * (64 // per_page)))
        host.access(init, lines.ravel(), True, 0)

    # the neighbours' next phase: what did the teardown leave them?
    s2 = common.snapshot(host, nb_cpus)
    for nb in nbs:
        nb.run(host, neighbour_accesses, rng)
    s3 = common.snapshot(host, nb_cpus)
    after = common.neighbour_stats(host, s2, s3)
    # neighbour CPU time taken by the teardown's IPIs and flushes
    nb_stolen = int((s2["clock"] - s1["clock"]).sum() - (s2["access_cycles"] - s1["access_cycles"]).sum())

    safe = common.safety(host)
    d = {k: int(c1[k].sum() - c0[k].sum()) for k in ("writebacks", "ipis_sent", "wbinvd", "wbnoinvd",
                                                        "clflush_lines", "vm_page_flush", "invalidations")}
    return {
        "strategy": strategy,
        "preset": preset,
        "sme_coherent": bool(host.features["sme_coherent"]),
        "snp": bool(snp),
        "rep": rep,
        "seed": seed,
        "teardown_us": common.cycles_to_us(host, teardown_init),
        "teardown_cpu_us": common.cycles_to_us(host, teardown_total),
        "writebacks": d["writebacks"],
        "ipis": d["ipis_sent"],
        "wbinvd": d["wbinvd"],
        "wbnoinvd": d["wbnoinvd"],
        "clflush_lines": d["clflush_lines"],
        "vm_page_flush": d["vm_page_flush"],
        "lines_invalidated": d["invalidations"],
        "nb_hit_before": before["hit_rate"],
        "nb_hit_after": after["hit_rate"],
        "nb_private_hit_after": after["private_hit_rate"],
        "nb_tput_before": before["throughput"],
        "nb_tput_after": after["throughput"],
        "nb_stolen_us": common.cycles_to_us(host, nb_stolen),
        "corruption": safe["corruption"],
        "rmp": safe["rmp"],
        "latent": safe["latent"],
        "violations": safe["violations"],
        "verdict": "SAFE" if safe["violations"] == 0 else "UNSAFE",
    }
