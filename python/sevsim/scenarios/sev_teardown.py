"""sev-teardown: SEV VMs unregister their memory and are destroyed on a host whose neighbour tenants
keep cache-resident working sets.

Reproduces seed thread 1, "KVM: SEV: Prefer WBNOINVD over WBINVD for cache maintenance efficiency"
(Feb 2025; a77896eea33d, with 6f38f8c57464 "Flush cache only on CPUs running SEV guest" and
7e00013bd339 "Remove wbinvd in sev_vm_destroy()"). For each strategy it measures the teardown's
cost (simulated time on the initiating CPU, and CPU time summed over the host), the write-backs,
IPIs, the damage to the neighbours and the safety verdict: violations recorded during the run plus
dirty stale lines still latent in the caches at the end.

The damage to the neighbours does not depend on a measurement window: after the teardown each
neighbour runs window by window until its miss rate is back to its steady rate before the
teardown, and the misses and time it paid beyond that rate meanwhile are added up
(`nb_extra_misses`, `nb_refill_us`), with the time the teardown's IPIs and flushes took from it
(`nb_stolen_us`). Every measured party is warmed up until its hit rate and throughput are steady.

Order of the teardown, as at the VMM's exit: the vCPUs stop, userspace unregisters the encrypted
regions (the unregister-time flush, then unpin: the pages stay the VM's), then the VM is destroyed
(the MMU notifier's release runs the reclaim hook and the mm frees the pages; the vCPUs' VMSAs are
flushed and freed; DEACTIVATE, DECOMMISSION, the ASID to the reclaim bitmap).
"""

from __future__ import annotations

import numpy as np

from .. import Host
from ..kvm import ConfigError, Kvm, VmType
from ..results import ResultTable  # noqa: F401 (the return type)
from ..workloads import make as make_workload
from . import common
from .common import size
from .params import Bool, Choice, Float, Int, OptBool, Size, Text, check_preset, check_workload

NAME = "sev-teardown"
SUMMARY = "SEV VMs torn down next to busy neighbours: teardown cost, neighbours' damage, corruption"
SOURCE = "KVM: SEV: Prefer WBNOINVD over WBINVD for cache maintenance efficiency (Feb 2025)"

PARAMS = {
    "preset": Text("epyc-9755-2s", "host preset", check=check_preset),
    "scale": Choice("real", "real: real footprints on the preset's whole memory (2 x 64 GiB VMs of 16 vCPUs, "
                            "neighbours whose working sets fill their caches); small: the scaled-down "
                            "configuration (16 MiB VMs of 4 vCPUs, 512 KiB neighbours, 64 GiB host) for quick "
                            "runs (the values in SMALL). Parameters given explicitly win over either", ("real", "small")),
    "memory": Size("1.5TiB", "host memory (the preset's 1.5 TiB)", lo=64 << 20),
    "sme_coherent": OptBool("override the preset's SME_COHERENT (none: the preset's)"),
    "vms": Int(2, "number of SEV VMs torn down", lo=1, hi=509),
    "vm_type": Choice("sev-es", "the VMs' type", ("sev", "sev-es", "snp")),
    "snp": Bool(False, "enable SNP on the host (needs a preset with SEV-SNP): an snp VM's private memory then "
                       "lives in guest_memfd and its teardown goes through sev_gmem_invalidate (RMP back to "
                       "shared, CLFLUSH by PFN), not through the strategy"),
    "gmem_huge": Bool(False, "with snp: guest_memfd backed by 2 MiB folios (2 MiB RMP entries, out-of-tree "
                             "hugetlb guest_memfd); by default 4 KiB folios, as upstream"),
    "vcpus": Int(16, "vCPUs per VM, each pinned to its own core", lo=1),
    "vm_memory": Size("64GiB", "guest memory per VM (a multiple of 4 KiB)", lo=4096),
    # 100,000 random lines over 64 GiB are 1.2x a vCPU's share of the caches it runs on on the
    # 9755 preset: its L2's 16,384 lines and an eighth of its CCD's 524,288-line L3
    "guest_accesses": Int(100_000, "accesses each vCPU makes before the teardown (uniform random over the VM, "
                                   "30% writes); the default fills the caches the vCPUs run on", lo=0),
    "vcpu_migrations": Int(0, "times each vCPU moves to another free core while it runs (have_run_cpus grows)", lo=0),
    "neighbours": Int(16, "neighbour tenants, one core each, on other CCDs", lo=0),
    "neighbour_workload": Text("working-set", "working-set, streaming, random, zipf[:ALPHA] or trace:PATH",
                               check=check_workload),
    # 24 MiB swept over and over stays in a core's 1 MiB L2 and its CCD's 32 MiB victim L3 (one
    # neighbour per CCD by default): caches full of the neighbour's lines, all hits when steady
    "neighbour_memory": Size("24MiB", "each neighbour's footprint (the default fills its L2 and its CCD's L3)", lo=64),
    "neighbour_accesses": Int(98_304, "accesses per neighbour in the baseline phase", lo=1),
    "reuse_memory": Size("1GiB", "how much of the freed memory the host reuses at once (the page allocator hands "
                                 "out the most recently freed pages first); all of it if less was freed", lo=0),
    "reuse_fraction": Float(0.125, "fraction of the lines of each reused page the host writes", 0.0, 1.0),
    "min_sev_asid": Int(100, "CPUID 0x8000001F EDX: first plain-SEV ASID; ES/SNP use 1..min_sev_asid-1", 1, 1024),
    "max_sev_asid": Int(1006, "CPUID 0x8000001F ECX: last SEV ASID ([MEM] ~1006 on Genoa/Turin, unverified)",
                        1, 1023),
    "recycle_asids": Bool(True, "recycle freed ASIDs (WBINVD on all CPUs + DF_FLUSH) when the range runs out"),
}
DEFAULT_STRATEGIES = ["wbinvd_all", "wbnoinvd_all", "wbnoinvd_ran_cpus", "clflushopt_hva", "clflushopt_pfn",
                      "vm_page_flush", "none"]

#: what the terminal shows, in this order (JSON/CSV get every column)
SUMMARY_COLUMNS = ["strategy", "rep", "teardown_us", "teardown_cpu_us", "writebacks", "ipis", "clflush_lines",
                   "vm_page_flush", "nb_hit_before", "nb_extra_misses", "nb_lost_us", "violations", "verdict"]
#: the metrics of a summary over repetitions
METRICS = ["teardown_us", "teardown_cpu_us", "writebacks", "ipis", "nb_extra_misses", "nb_lost_us", "violations"]
PLOTS = [("teardown_us", "teardown on the initiator (us)"), ("nb_lost_us", "neighbours' lost time (us)"),
         ("nb_extra_misses", "neighbours' extra misses"), ("violations", "violations")]

LEGEND = {
    "strategy": "the cache-maintenance strategy (sevsim list)",
    "rep": "repetition (seed = --seed + rep)",
    "seed": "the run's RNG seed",
    "teardown_us": "simulated time of the whole teardown on the initiating CPU, IPI waits included (us)",
    "teardown_cpu_us": "CPU time the teardown took summed over every CPU of the host: initiator, IPI handlers, "
                       "flushes on each target (us)",
    "writebacks": "dirty lines written back to memory during the teardown",
    "ipis": "IPIs sent during the teardown",
    "wbinvd": "WBINVD instructions executed (one per CPU flushed)",
    "wbnoinvd": "WBNOINVD instructions executed",
    "clflush_lines": "lines flushed with CLFLUSH/CLFLUSHOPT",
    "vm_page_flush": "pages flushed with VM_PAGE_FLUSH",
    "lines_invalidated": "cached lines invalidated (dropped) by the flushes",
    "nb_hit_before": "neighbours' steady hit rate before the teardown (served by their own L1/L2 or CCD's L3)",
    "nb_tput_before": "neighbours' steady throughput before the teardown (accesses per simulated us, summed)",
    "nb_extra_misses": "misses the neighbours paid beyond their steady miss rate until they were back to it",
    "nb_refill_us": "access time the neighbours lost refilling their caches until back to steady (us, summed)",
    "nb_stolen_us": "neighbours' CPU time taken by the teardown's IPI handlers and flushes (us, summed)",
    "nb_lost_us": "nb_stolen_us + nb_refill_us: all the time the teardown cost the neighbours (us)",
    "nb_recovery_windows": "windows of a quarter footprint the slowest neighbour needed to recover",
    "warmup_epochs": "warm-up epochs of the neighbours before the baseline (until steady)",
    "corruption": "corruption violations: a dirty line written back under a key not the page owner's, or a "
                  "read of another key's data",
    "dma": "DMA violations: a device access that met a dirty line it cannot see",
    "isolation": "isolation violations: a hit on a previous tenant's lines of a recycled ASID",
    "rmp": "RMP faults (with SNP on): a host access the RMP refuses",
    "tlb": "TLB violations: stale or foreign translations",
    "latent": "dirty lines under a stale or foreign key still in the caches at the end (corruption once written "
              "back)",
    "violations": "corruption + dma + isolation + rmp + tlb + latent: 0 means SAFE",
    "verdict": "SAFE: no violation and nothing latent; UNSAFE otherwise",
    "first_violation": "the first violation recorded: cause, CPU, address, cycle and the kernel step that ran",
    **common.cause_legend(),
    "notes": "why a row looks as it does (what the strategy needs that the host lacks, warm-up, recovery)",
}


#: whether `run` shares the set-up between strategies (None: where the OS can fork)
SHARE_SETUP: bool | None = None

#: the scaled-down configuration (`scale=small`): what the defaults were before real footprints
SMALL = {"memory": "64GiB", "vcpus": 4, "vm_memory": "16MiB", "guest_accesses": 50_000,
         "neighbour_memory": "512KiB", "neighbour_accesses": 16_384, "reuse_memory": "1GiB"}


def run(*, strategies, seed, reps, progress=None, share_setup: bool | None = None, **p) -> ResultTable:
    """`share_setup`: prepare the pre-teardown state once per repetition and tear down a forked
    copy of it for each strategy (the default where the OS can fork); the rows are the same as
    from a fresh set-up per strategy (`share_setup=False`), since nothing before the teardown
    depends on the strategy and everything is seeded."""
    if share_setup is None:
        share_setup = SHARE_SETUP if SHARE_SETUP is not None else common.can_fork() and len(strategies) > 1
    one = common.shared_setup(prepare, finish, strategies) if share_setup else run_one
    title = (f"{NAME}: {p['vms']} x {p['vm_type']} VM ({p['vcpus']} vCPUs, {p['vm_memory']}) "
             f"torn down next to {p['neighbours']} neighbours on {p['preset']}")
    return common.run_grid(title, one, strategies=strategies, seed=seed, reps=reps, progress=progress,
                           scenario=NAME, legend=LEGEND, shown=SUMMARY_COLUMNS, **p)


def run_one(strategy: str, seed: int, rep: int, **p):
    """One strategy from scratch: the set-up, then the teardown and what follows."""
    return finish(prepare(strategy, seed, **p), strategy, rep)


def prepare(strategy: str, seed: int, *, preset, memory, sme_coherent, vms, vm_type, vcpus, vm_memory,
            guest_accesses, vcpu_migrations, neighbours, neighbour_workload, neighbour_memory, neighbour_accesses,
            reuse_fraction, min_sev_asid, max_sev_asid, recycle_asids, snp=False, gmem_huge=False,
            reuse_memory="1GiB", scale="real") -> dict:
    """Everything before the teardown: the host, the VMs and the neighbours, run until steady.
    None of it depends on the strategy (KVM consults it only from the unregister on), so
    `run` prepares once per seed and tears down a copy for each strategy."""
    rng = np.random.default_rng(seed)
    host = Host.from_preset(preset, memory=memory, sme_coherent=sme_coherent)
    if vm_type == "snp" and not host.features["snp"]:
        raise ConfigError(f"parameter vm_type: 'snp' needs a preset with SEV-SNP; {preset} has none")
    if snp:
        host.snp_enable()
    vm_mem = size(vm_memory, "vm_memory")
    if vm_mem % 4096:
        raise ConfigError(f"parameter vm_memory: {vm_memory!r} is not a multiple of 4 KiB")
    nb_mem = size(neighbour_memory, "neighbour_memory")
    vm_cpus, nb_cpus = common.place(host, [vcpus] * vms, neighbours)
    kvm = Kvm(host, strategy, initiator=common.housekeeping_cpu(host, [c for cs in vm_cpus for c in cs] + nb_cpus),
              min_sev_asid=min_sev_asid, max_sev_asid=max_sev_asid, recycle=recycle_asids, gmem_huge=gmem_huge)
    steps = common.Steps(host)
    steps.mark("sev_guest_init")
    nbs = common.make_neighbours(kvm, nb_cpus, lambda: make_workload(neighbour_workload, nb_mem))
    guests = [kvm.sev_guest_init(f"vm{i}", VmType(vm_type), vm_mem, vcpus) for i in range(vms)]

    # the guests run and dirty their memory, moving between cores if asked
    busy = {c for cs in vm_cpus for c in cs} | set(nb_cpus) | {kvm.initiator}
    spare = [c for ccd in common.first_threads_by_ccd(host) for c in ccd if c not in busy]
    if vcpu_migrations > guest_accesses:
        # each move falls between two runs of accesses: more moves than accesses mean nothing
        raise ConfigError(f"parameter vcpu_migrations: {vcpu_migrations} moves for {guest_accesses} accesses per "
                          "vCPU; give at most guest_accesses")
    if vcpu_migrations and not spare:
        raise ConfigError("parameter vcpu_migrations: no free core to migrate vCPUs to")
    steps.mark("guests run")
    hop = 0
    for vm, cpus in zip(guests, vm_cpus):
        for v, home in enumerate(cpus):
            chunks = np.array_split(np.arange(guest_accesses), vcpu_migrations + 1)
            for k, chunk in enumerate(chunks):
                cpu = home if k == 0 else spare[hop % len(spare)]
                hop += k > 0
                gpa = rng.integers(0, vm.memory // 64, len(chunk), dtype=np.uint64) * np.uint64(64)
                kvm.vcpu_run(vm, v, cpu, gpa, rng.random(len(chunk)) < 0.3)

    # the neighbours warm up until their hit rate and throughput are steady, then a baseline phase
    steps.mark("neighbours run")
    nb_window = max(1, nb_mem // 64 // 4)  # a quarter of a footprint

    hit_before = []  # time series: the neighbours' hit rate per warm-up window (read-only snapshots)

    def nb_epoch():
        e0 = common.snapshot(host, nb_cpus)
        for nb in nbs:
            nb.run(host, nb_window, rng)
        if nbs:
            hit_before.append(common.neighbour_stats(host, e0, common.snapshot(host, nb_cpus))["hit_rate"])

    warm, steady = common.warm_until_steady(host, nb_epoch, {"neighbours": nb_cpus}, min_epochs=4)
    s0 = common.snapshot(host, nb_cpus)
    for nb in nbs:
        nb.run(host, neighbour_accesses, rng)
    s1 = common.snapshot(host, nb_cpus)
    before = common.neighbour_stats(host, s0, s1)
    base = common.group_stats(host, s0, s1)

    return dict(locals())


def finish(ctx: dict, strategy: str, rep: int):
    """The teardown with `strategy`, the host's reuse of the memory and the neighbours' recovery,
    on a prepared state (`prepare`); returns the row, the violation records and the time series."""
    from ..kvm import get_strategy

    host, kvm, steps, guests, nbs, rng = (ctx[k] for k in ("host", "kvm", "steps", "guests", "nbs", "rng"))
    nb_cpus, nb_window, hit_before, warm, steady = (ctx[k] for k in ("nb_cpus", "nb_window", "hit_before", "warm",
                                                                      "steady"))
    before, base, vcpus, reuse_memory, reuse_fraction, seed, s1 = (ctx[k] for k in (
        "before", "base", "vcpus", "reuse_memory", "reuse_fraction", "seed", "s1"))
    kvm.strategy = get_strategy(strategy)
    # the teardown, from the initiating CPU
    clocks0 = host.clocks.astype(np.int64)
    c0 = host.counters
    init = kvm.initiator
    n_freed = 0  # pages the teardown gives back to the host
    flush = {"steps": [], "t": [], "cycles": [c0["flush_cycles"].astype(np.int64)]}  # per-CPU flush timeline

    def flushed(step):
        flush["steps"].append(step)
        flush["t"].append(int(host.clocks[init]) - int(clocks0[init]))
        flush["cycles"].append(host.counters["flush_cycles"].astype(np.int64))

    for vm in guests:
        steps.mark(f"vcpu_put {vm.name}")
        for v in range(vcpus):
            kvm.vcpu_put(vm, v)
        flushed(f"vcpu_put {vm.name}")
        n_freed += len(vm.pages) + len(vm.vmsa)
        if vm.regions:  # SEV/SEV-ES pinned memory; SNP's is guest_memfd's, freed at destroy
            steps.mark(f"sev_mem_enc_unregister_region {vm.name}")
            kvm.sev_mem_enc_unregister_region(vm, 0)
            flushed(f"sev_mem_enc_unregister_region {vm.name}")
        steps.mark(f"sev_vm_destroy {vm.name}")
        kvm.sev_vm_destroy(vm)
        flushed(f"sev_vm_destroy {vm.name}")
    clocks1 = host.clocks.astype(np.int64)
    c1 = host.counters
    teardown_init = int(clocks1[init] - clocks0[init])
    teardown_total = int((clocks1 - clocks0).sum())

    # the host reuses the memory at once: the page allocator hands out the most recently freed
    # pages first (HostMemory, as the per-CPU free lists do) and they are written
    steps.mark("host reuses the freed memory")
    n_reuse = min(n_freed, size(reuse_memory, "reuse_memory") // 4096)
    pages = kvm.mem.alloc(n_reuse) if n_reuse else np.zeros(0, np.uint64)
    if len(pages) and reuse_fraction > 0:
        per_page = max(1, int(round(64 * reuse_fraction)))
        lines = (pages[:, None] + np.arange(per_page, dtype=np.uint64)[None, :] * np.uint64(64 * (64 // per_page)))
        host.access(init, lines.ravel(), True, 0)

    # the neighbours recover: what did the teardown cost them, whatever the window?
    s2 = common.snapshot(host, nb_cpus)
    steps.mark("neighbours recover")
    hit_after: list[float] = []
    rec = common.recovery(host, nbs, rng, base, window=nb_window, trace=hit_after) if nbs else None
    # neighbour CPU time taken by the teardown's IPIs and flushes
    nb_stolen = int((s2["clock"] - s1["clock"]).sum() - (s2["access_cycles"] - s1["access_cycles"]).sum())

    safe = common.safety(host)
    records = common.violation_records(host, steps)
    d = {k: int(c1[k].sum() - c0[k].sum()) for k in ("writebacks", "ipis_sent", "wbinvd", "wbnoinvd",
                                                        "clflush_lines", "vm_page_flush", "invalidations")}
    notes = []
    if nbs and not steady:
        notes.append(f"neighbours not steady after {warm} warm-up epochs")
    if rec and not rec["recovered"]:
        notes.append(f"neighbours not back to their steady miss rate after {rec['windows']} windows")
    nb_refill = rec["extra_cycles"] if rec else 0.0
    row = {
        "strategy": strategy,
        "rep": rep,
        "seed": seed,
        "sme_coherent_host": bool(host.features["sme_coherent"]),
        "teardown_us": common.cycles_to_us(host, teardown_init),
        "teardown_cpu_us": common.cycles_to_us(host, teardown_total),
        "writebacks": d["writebacks"],
        "ipis": d["ipis_sent"],
        "wbinvd": d["wbinvd"],
        "wbnoinvd": d["wbnoinvd"],
        "clflush_lines": d["clflush_lines"],
        "vm_page_flush": d["vm_page_flush"],
        "lines_invalidated": d["invalidations"],
        "warmup_epochs": warm,
        "nb_hit_before": before["hit_rate"] if nbs else None,
        "nb_tput_before": before["throughput"] if nbs else None,
        "nb_extra_misses": int(round(rec["extra_misses"])) if rec else None,
        "nb_refill_us": common.cycles_to_us(host, nb_refill) if rec else None,
        "nb_stolen_us": common.cycles_to_us(host, nb_stolen),
        "nb_lost_us": common.cycles_to_us(host, nb_stolen + nb_refill),
        "nb_recovery_windows": rec["windows"] if rec else None,
        **{k: safe[k] for k in ("corruption", "dma", "isolation", "rmp", "tlb", "latent", "violations")},
        **common.cause_counts(host),
        "verdict": common.verdict(safe),
        "first_violation": common.first_violation(records, safe),
        "notes": common.strategy_notes(host, kvm, notes),
    }
    per_step = np.diff(np.asarray(flush["cycles"]), axis=0)  # steps x CPUs
    cpus = np.nonzero(per_step.sum(axis=0))[0]
    series = {
        # the neighbours' hit rate per window of nb_window accesses each: the last 4 warm-up windows
        # before the teardown, their steady rate (the baseline phase), the windows of the recovery
        "nb_window_accesses": nb_window,
        "nb_hit_before": [round(x, 5) for x in hit_before[-4:]],  # the steadiness test's two windows of two
        "nb_hit_steady": round(before["hit_rate"], 5) if nbs else None,
        "nb_hit_after": [round(x, 5) for x in hit_after],
        # each teardown step: its end on the initiator's clock (us since the teardown began) and the
        # flush time of every CPU that flushed (us)
        "flush_steps": flush["steps"],
        "flush_t_us": [round(common.cycles_to_us(host, t), 3) for t in flush["t"]],
        "flush_cpus": [int(c) for c in cpus],
        "flush_us": [[round(common.cycles_to_us(host, x), 3) for x in step[cpus]] for step in per_step],
    }
    return row, records, series
