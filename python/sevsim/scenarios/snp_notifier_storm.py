"""snp-notifier-storm: AutoNUMA / KSM-like MMU-notifier invalidations at a given rate against SEV
and SNP guests while neighbours run.

Reproduces seed thread 2, "KVM: gmem: protect kvm_mmu_invalidate_end()" (Aug 2023), where AMD
reports that the WBINVD blasted on every notifier invalidation (the CVE-2022-0171 fix, 683412ccf612)
hurts SNP hosts under AutoNUMA, numad or KSM, and proposes CLFLUSHOPT of the affected pages: slower
for the guest, no noisy neighbour; but CLFLUSHOPT needs a virtual mapping that the HVA-based
notifiers cannot always guarantee, which guest_memfd solves by handing PFNs to flush through the
direct map. Each invalidation zaps the guest pages, flushes remote TLBs (IPIs to the running
vCPUs), runs the reclaim hook (the strategy), frees the old pages to the host, which reuses them,
and gives the guest new ones (a migration). A fraction of the invalidations race with an unmap, so
the userspace mapping is already gone when the hook runs.
Per strategy: the notifier's cost (per event, on the CPU running it), the guests' and neighbours'
throughput and hit rate during the storm against a quiet phase, and the safety verdict.

By default the host does not enable SNP and SNP guests are treated as the 2023 thread's hosts
treated them: their pages are HVA-mapped and pay the reclaim hook. With `snp=True` the host enables
SNP and an SNP guest's private memory lives in guest_memfd, where the notifiers cannot reach it:
its events only zap and flush TLBs, the hook returns early (sev_guest_memory_reclaimed(),
arch/x86/kvm/svm/sev.c), and private pages are freed only by guest_memfd hole punches
(`gmem_discards_per_epoch`), which run sev_gmem_invalidate(): RMP back to shared, CLFLUSH by PFN.
"""

from __future__ import annotations

import numpy as np

from .. import Host
from ..kvm import Kvm, VmType
from ..results import ResultTable  # noqa: F401 (the return type)
from ..workloads import make as make_workload
from . import common
from .common import size

NAME = "snp-notifier-storm"
SUMMARY = "MMU-notifier storms (AutoNUMA/KSM) against SEV and SNP guests: guest cost, neighbour cost, safety"
SOURCE = "KVM: gmem: protect kvm_mmu_invalidate_end() (Aug 2023), AMD's reply on WBINVD per invalidation"

PARAMS = {
    "preset": ("epyc-9755-2s", "host preset"),
    "memory": ("64GiB", "host memory"),
    "sme_coherent": (None, "override the preset's SME_COHERENT (None: the preset's)"),
    "vm_types": ("sev-es,snp", "comma-separated types of the guests, one VM each"),
    "vcpus": (4, "vCPUs per VM, each pinned to its own core"),
    "vm_memory": ("16MiB", "guest memory per VM"),
    "guest_workload": ("random", "the guests' workload (working-set, streaming, random, zipf[:A], trace:PATH)"),
    "neighbours": (16, "neighbour tenants, one core each, on other CCDs"),
    "neighbour_workload": ("working-set", "the neighbours' workload"),
    "neighbour_memory": ("512KiB", "each neighbour's footprint"),
    "epochs": (6, "measured epochs in each phase (quiet, storm)"),
    "epoch_accesses": (4_096, "accesses per vCPU and per neighbour in an epoch"),
    "events_per_epoch": (4, "notifier invalidations per epoch during the storm"),
    "pages_per_event": (8, "4 KiB guest pages per invalidation (a NUMA-balancing scan chunk)"),
    "free_fraction": (0.5, "fraction of invalidations that free the pages (the rest only change the mapping, "
                            "like a NUMA hinting scan)"),
    "unmapped_fraction": (0.25, "fraction of freeing invalidations whose userspace mapping is already gone"),
    "snp": (False, "enable SNP on the host: SNP guests' private memory then lives in guest_memfd, out of "
                   "the HVA notifiers' reach (their events only zap and flush TLBs), and goes through the RMP"),
    "gmem_huge": (False, "with snp: guest_memfd backed by 2 MiB folios (2 MiB RMP entries, out-of-tree "
                         "hugetlb guest_memfd); by default 4 KiB folios, as upstream"),
    "gmem_discards_per_epoch": (0, "with snp: guest_memfd hole punches of pages_per_event private pages of "
                                   "an SNP guest per storm epoch (sev_gmem_invalidate: RMP, CLFLUSH by PFN)"),
}
DEFAULT_STRATEGIES = ["wbinvd_all", "wbnoinvd_ran_cpus", "clflushopt_hva", "clflushopt_pfn", "none"]


def run(*, strategies, seed, reps, progress=None, **p) -> ResultTable:
    title = (f"{NAME}: {p['vm_types']} guests under {p['events_per_epoch']} invalidations/epoch "
             f"of {p['pages_per_event']} pages, {p['neighbours']} neighbours on {p['preset']}")
    return common.run_grid(title, run_one, strategies=strategies, seed=seed, reps=reps, progress=progress, **p)


def run_one(strategy: str, seed: int, rep: int, *, preset, memory, sme_coherent, vm_types, vcpus, vm_memory,
            guest_workload, neighbours, neighbour_workload, neighbour_memory, epochs, epoch_accesses,
            events_per_epoch, pages_per_event, free_fraction, unmapped_fraction, snp=False, gmem_huge=False,
            gmem_discards_per_epoch=0) -> dict:
    rng = np.random.default_rng(seed)
    types = [VmType(t.strip()) for t in str(vm_types).split(",") if t.strip()]
    if not types:
        raise ValueError("parameter vm_types: name at least one of sev, sev-es, snp")
    for name, v in (("free_fraction", free_fraction), ("unmapped_fraction", unmapped_fraction)):
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"parameter {name} must be in [0, 1], got {v}")
    if epochs < 1 or epoch_accesses < 1 or events_per_epoch < 0 or pages_per_event < 1:
        raise ValueError("epochs, epoch_accesses and pages_per_event must be positive, events_per_epoch >= 0")
    if gmem_discards_per_epoch < 0:
        raise ValueError(f"parameter gmem_discards_per_epoch must be >= 0, got {gmem_discards_per_epoch}")
    if gmem_discards_per_epoch and not (snp and VmType.SNP in types):
        raise ValueError("parameter gmem_discards_per_epoch needs snp=True and an snp guest in vm_types")
    host = Host.from_preset(preset, memory=memory, sme_coherent=sme_coherent)
    if snp:
        host.snp_enable()
    vm_mem = size(vm_memory, "vm_memory")
    nb_mem = size(neighbour_memory, "neighbour_memory")
    if pages_per_event > vm_mem // 4096:
        raise ValueError(f"pages_per_event = {pages_per_event} exceeds the {vm_mem // 4096} pages of a VM")
    vm_cpus, nb_cpus = common.place(host, [vcpus] * len(types), neighbours)
    all_vcpu_cpus = [c for cs in vm_cpus for c in cs]
    kvm = Kvm(host, strategy, initiator=common.housekeeping_cpu(host, all_vcpu_cpus + nb_cpus), gmem_huge=gmem_huge)
    nbs = common.make_neighbours(kvm, nb_cpus, lambda: make_workload(neighbour_workload, nb_mem))
    guests = [kvm.sev_guest_init(f"vm{i}-{t.value}", t, vm_mem, vcpus) for i, t in enumerate(types)]
    gw = {(i, v): make_workload(guest_workload, vm_mem) for i in range(len(guests)) for v in range(vcpus)}

    def epoch():
        for i, (vm, cpus) in enumerate(zip(guests, vm_cpus)):
            for v, cpu in enumerate(cpus):
                off, write = gw[(i, v)].next(epoch_accesses, rng)
                kvm.vcpu_run(vm, v, cpu, off, write)
        for nb in nbs:
            nb.run(host, epoch_accesses, rng)

    def phase(storm: bool):
        g0, n0 = common.snapshot(host, all_vcpu_cpus), common.snapshot(host, nb_cpus)
        i0 = int(host.clocks[kvm.initiator])
        events = 0
        for _ in range(epochs):
            epoch()
            if storm:
                for _ in range(events_per_epoch):
                    invalidate()
                    events += 1
                for _ in range(gmem_discards_per_epoch):
                    discard()
                    events += 1
        g1, n1 = common.snapshot(host, all_vcpu_cpus), common.snapshot(host, nb_cpus)
        return (common.neighbour_stats(host, g0, g1), common.neighbour_stats(host, n0, n1),
                int(host.clocks[kvm.initiator]) - i0, events, g0, g1)

    def invalidate():
        vm = guests[int(rng.integers(0, len(guests)))]
        gpages = rng.choice(len(vm.pages), size=pages_per_event, replace=False)
        free = bool(rng.random() < free_fraction)
        mapped = not (free and rng.random() < unmapped_fraction)
        freed = kvm.mmu_notifier_invalidate(vm, gpages, hva_mapped=[mapped] * len(gpages), free=free)
        # the host reuses freed pages at once: a line of each is written under the host key
        if len(freed):
            host.access(kvm.initiator, freed.astype(np.uint64), True, 0)

    def discard():
        snp_guests = [vm for vm in guests if kvm.gmem_backed(vm)]
        vm = snp_guests[int(rng.integers(0, len(snp_guests)))]
        gpages = rng.choice(len(vm.pages), size=pages_per_event, replace=False)
        freed = kvm.kvm_gmem_punch_hole(vm, gpages)
        host.access(kvm.initiator, freed.astype(np.uint64), True, 0)

    # warm-up: long enough for every neighbour to touch its whole footprint
    for _ in range(max(1, -(-nb_mem // 64 // epoch_accesses))):
        epoch()
    q_guest, q_nb, _, _, _, _ = phase(storm=False)
    w0 = host.counters
    s_guest, s_nb, notifier_cycles, events, g0, g1 = phase(storm=True)
    w1 = host.counters
    guest_span = float((g1["clock"] - g0["clock"]).max())
    safe = common.safety(host)
    d = {k: int(w1[k].sum() - w0[k].sum()) for k in ("writebacks", "ipis_sent", "wbinvd", "wbnoinvd", "clflush_lines")}
    return {
        "strategy": strategy,
        "preset": preset,
        "sme_coherent": bool(host.features["sme_coherent"]),
        "snp": bool(snp),
        "rep": rep,
        "seed": seed,
        "events": events,
        "events_per_s": events / (guest_span / (host.freq_ghz * 1e9)) if guest_span else float("nan"),
        "notifier_us_per_event": common.cycles_to_us(host, notifier_cycles / events) if events else 0.0,
        "writebacks": d["writebacks"],
        "ipis": d["ipis_sent"],
        "wbinvd": d["wbinvd"],
        "wbnoinvd": d["wbnoinvd"],
        "clflush_lines": d["clflush_lines"],
        "guest_tput_quiet": q_guest["throughput"],
        "guest_tput_storm": s_guest["throughput"],
        "guest_hit_quiet": q_guest["hit_rate"],
        "guest_hit_storm": s_guest["hit_rate"],
        "nb_tput_quiet": q_nb["throughput"],
        "nb_tput_storm": s_nb["throughput"],
        "nb_hit_quiet": q_nb["hit_rate"],
        "nb_hit_storm": s_nb["hit_rate"],
        "corruption": safe["corruption"],
        "rmp": safe["rmp"],
        "latent": safe["latent"],
        "violations": safe["violations"],
        "verdict": "SAFE" if safe["violations"] == 0 else "UNSAFE",
    }
