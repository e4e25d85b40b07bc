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
throughput and hit rate during the storm against a quiet phase, the time the storm cost each party
beyond its quiet rate, and the safety verdict.

Registered SEV/SEV-ES memory is pinned (KVM_MEMORY_ENCRYPT_REG_REGION): the notifier fires on
it all the same, and pays the reclaim hook, but migrate_pages() cannot move a pinned page, so only
the SNP guests' memory (HVA-backed and unpinned without guest_memfd, as on the 2023 thread's hosts)
is ever migrated and freed; that is where a missed flush corrupts memory.

What a guest pays for an event: every invalidation zaps the NPT entries of its pages, so the next
touch of each takes a nested page fault (#VMEXIT, kvm_mmu_page_fault(), VMRUN: the profile's
npf_exit) and, for HVA-backed memory, the host's fault behind hva_to_pfn() (kvm.host_fault). A
freeing invalidation is an AutoNUMA migration, whose 4 KiB copy the faulting vCPU pays
(kvm.migrate_gbps: NUMA balancing migrates in the faulting task's hinting fault).

Warm-up: the guests first touch their whole memory, then guests and neighbours run epochs until
the hit rate and throughput of each party are steady; only then are the quiet and storm phases
measured, so that with no events the two agree within noise.

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
from ..kvm import ConfigError, Kvm, VmType
from ..results import ResultTable  # noqa: F401 (the return type)
from ..workloads import make as make_workload
from . import common
from .common import size
from .params import Bool, Choice, Float, Int, OptBool, Size, Text, check_preset, check_workload

NAME = "snp-notifier-storm"
SUMMARY = "MMU-notifier storms (AutoNUMA/KSM) against SEV and SNP guests: guest cost, neighbour cost, safety"
SOURCE = "KVM: gmem: protect kvm_mmu_invalidate_end() (Aug 2023), AMD's reply on WBINVD per invalidation"


def _check_types(v: str) -> str | None:
    types = [t.strip() for t in v.split(",") if t.strip()]
    bad = [t for t in types if t not in ("sev", "sev-es", "snp")]
    if not types or bad:
        return "name one or more of sev, sev-es, snp, comma-separated"
    return None


PARAMS = {
    "preset": Text("epyc-9755-2s", "host preset", check=check_preset),
    "scale": Choice("real", "real: real footprints on the preset's whole memory (an SEV-ES and an SNP guest of "
                            "64 GiB and 16 vCPUs, neighbours whose working sets fill their caches); small: the "
                            "scaled-down configuration (16 MiB guests of 4 vCPUs, 512 KiB neighbours, 64 GiB "
                            "host; the values in SMALL). Parameters given explicitly win over either",
                    ("real", "small")),
    "memory": Size("1.5TiB", "host memory (the preset's 1.5 TiB)", lo=64 << 20),
    "sme_coherent": OptBool("override the preset's SME_COHERENT (none: the preset's)"),
    "vm_types": Text("sev-es,snp", "comma-separated types of the guests, one VM each", check=_check_types),
    "vcpus": Int(16, "vCPUs per VM, each pinned to its own core", lo=1),
    "vm_memory": Size("64GiB", "guest memory per VM (a multiple of 4 KiB)", lo=4096),
    "guest_workload": Text("random", "the guests' workload (working-set, streaming, random, zipf[:A], trace:PATH)",
                           check=check_workload),
    "neighbours": Int(16, "neighbour tenants, one core each, on other CCDs", lo=0),
    "neighbour_workload": Text("working-set", "the neighbours' workload", check=check_workload),
    # 24 MiB swept over and over stays in a core's 1 MiB L2 and its CCD's 32 MiB victim L3 (one
    # neighbour per CCD by default): caches full of the neighbour's lines
    "neighbour_memory": Size("24MiB", "each neighbour's footprint (the default fills its L2 and its CCD's L3)", lo=64),
    "epochs": Int(6, "measured epochs in each phase (quiet, storm)", lo=1),
    "epoch_accesses": Int(49_152, "accesses per vCPU and per neighbour in an epoch (the default: an eighth of a "
                                  "neighbour's sweep)", lo=1),
    "max_warmup_epochs": Int(200, "warm-up epochs at most, while waiting for every party's steady state", lo=0),
    "events_per_epoch": Int(4, "notifier invalidations per epoch during the storm", lo=0),
    # NUMA balancing migrates a PMD-mapped THP as one 2 MiB folio (migrate_misplaced_folio(),
    # mm/migrate.c); guest RAM is commonly THP-backed. sevsim picks the pages at random in the VM
    "pages_per_event": Int(512, "4 KiB guest pages per invalidation (512: a 2 MiB THP folio's worth)", lo=1),
    "free_fraction": Float(0.5, "fraction of invalidations that migrate the pages (AutoNUMA: the old pages are "
                                "freed; pinned SEV memory cannot move); the rest only change the mapping, like a "
                                "NUMA hinting scan", 0.0, 1.0),
    "unmapped_fraction": Float(0.25, "fraction of freeing invalidations whose userspace mapping is already gone",
                               0.0, 1.0),
    "snp": Bool(False, "enable SNP on the host (needs a preset with SEV-SNP): SNP guests' private memory then "
                       "lives in guest_memfd, out of the HVA notifiers' reach (their events only zap and flush "
                       "TLBs), and goes through the RMP"),
    "gmem_huge": Bool(False, "with snp: guest_memfd backed by 2 MiB folios (2 MiB RMP entries, out-of-tree "
                             "hugetlb guest_memfd); by default 4 KiB folios, as upstream"),
    "gmem_discards_per_epoch": Int(0, "with snp: guest_memfd hole punches of pages_per_event private pages of "
                                      "an SNP guest per storm epoch (sev_gmem_invalidate: RMP, CLFLUSH by PFN)", lo=0),
}
DEFAULT_STRATEGIES = ["wbinvd_all", "wbnoinvd_ran_cpus", "clflushopt_hva", "clflushopt_pfn", "none"]

#: the scaled-down configuration (`scale=small`): what the defaults were before real footprints
SMALL = {"memory": "64GiB", "vcpus": 4, "vm_memory": "16MiB", "neighbour_memory": "512KiB", "epoch_accesses": 4_096,
         "pages_per_event": 8}

#: whether `run` shares the set-up (warm-up and quiet phase) between strategies (None: where the
#: OS can fork and more than one strategy runs)
SHARE_SETUP: bool | None = None

SUMMARY_COLUMNS = ["strategy", "rep", "events", "notifier_us_per_event", "writebacks", "guest_tput_quiet",
                   "guest_tput_storm", "guest_lost_us_per_event", "nb_hit_quiet", "nb_hit_storm",
                   "nb_lost_us_per_event", "violations", "verdict"]
METRICS = ["notifier_us_per_event", "writebacks", "guest_tput_storm", "guest_lost_us_per_event",
           "nb_tput_storm", "nb_lost_us_per_event", "violations"]
PLOTS = [("notifier_us_per_event", "notifier cost per event (us)"),
         ("guest_lost_us_per_event", "guests' time lost per event (us)"),
         ("nb_lost_us_per_event", "neighbours' time lost per event (us)"), ("violations", "violations")]

LEGEND = {
    "strategy": "the cache-maintenance strategy (sevsim list)",
    "rep": "repetition (seed = --seed + rep)",
    "seed": "the run's RNG seed",
    "events": "invalidations and guest_memfd discards in the storm phase",
    "events_per_s": "events per simulated second of the guests' time",
    "notifier_us_per_event": "simulated time per event on the CPU running the notifier (us)",
    "writebacks": "dirty lines written back during the storm",
    "ipis": "IPIs sent during the storm",
    "wbinvd": "WBINVD instructions executed during the storm",
    "wbnoinvd": "WBNOINVD instructions executed during the storm",
    "clflush_lines": "lines flushed with CLFLUSH/CLFLUSHOPT during the storm",
    "npt_faults": "nested page faults the guests took on zapped pages",
    "pages_migrated": "guest pages migrated (their copy paid by the faulting vCPU)",
    "guest_tput_quiet": "guests' throughput in the quiet phase (accesses per simulated us per vCPU)",
    "guest_tput_storm": "guests' throughput in the storm phase (accesses per simulated us per vCPU)",
    "guest_hit_quiet": "guests' hit rate in the quiet phase (own L1/L2 or CCD's L3)",
    "guest_hit_storm": "guests' hit rate in the storm phase",
    "guest_lost_us_per_event": "guests' time beyond their quiet rate during the storm, per event (us, summed over "
                               "vCPUs): faults, migrations, refills, IPI handlers",
    "nb_tput_quiet": "neighbours' throughput in the quiet phase (accesses per simulated us per neighbour)",
    "nb_tput_storm": "neighbours' throughput in the storm phase",
    "nb_hit_quiet": "neighbours' hit rate in the quiet phase",
    "nb_hit_storm": "neighbours' hit rate in the storm phase",
    "nb_lost_us_per_event": "neighbours' time beyond their quiet rate during the storm, per event (us, summed)",
    "warmup_epochs": "warm-up epochs run until every party was steady",
    "corruption": "corruption violations: a dirty line written back under a key not the page owner's, or a "
                  "read of another key's data",
    "dma": "DMA violations",
    "isolation": "isolation violations",
    "rmp": "RMP faults (with SNP on): a host access the RMP refuses",
    "tlb": "TLB violations: stale or foreign translations",
    "latent": "dirty lines under a stale or foreign key still in the caches at the end",
    "violations": "corruption + dma + isolation + rmp + tlb + latent: 0 means SAFE",
    "verdict": "SAFE: no violation and nothing latent; UNSAFE otherwise",
    "first_violation": "the first violation recorded: cause, CPU, address, cycle and the kernel step that ran",
    **common.cause_legend(),
    "notes": "why a row looks as it does",
}


def run(*, strategies, seed, reps, progress=None, share_setup: bool | None = None, **p) -> ResultTable:
    """`share_setup`: warm up and run the quiet phase once per repetition and run the storm on a
    forked copy for each strategy (the default where the OS can fork and several strategies run);
    the rows equal those of a fresh set-up per strategy (`share_setup=False`)."""
    title = (f"{NAME}: {p['vm_types']} guests under {p['events_per_epoch']} invalidations/epoch "
             f"of {p['pages_per_event']} pages, {p['neighbours']} neighbours on {p['preset']}")
    if share_setup is None:
        share_setup = SHARE_SETUP if SHARE_SETUP is not None else common.can_fork() and len(strategies) > 1
    one = common.shared_setup(prepare, finish, strategies) if share_setup else run_one
    return common.run_grid(title, one, strategies=strategies, seed=seed, reps=reps, progress=progress,
                           scenario=NAME, legend=LEGEND, shown=SUMMARY_COLUMNS, **p)


def _lost(host: Host, quiet: dict, storm: dict) -> float:
    """Cycles a group spent in the storm beyond its quiet-phase cycles per access, summed."""
    q = quiet["cycles"] / np.maximum(quiet["accesses"], 1)
    return float((storm["cycles"] - q * storm["accesses"]).sum())


def run_one(strategy: str, seed: int, rep: int, **p):
    """One strategy from scratch: the set-up and quiet phase, then the storm."""
    return finish(prepare(strategy, seed, **p), strategy, rep)


def prepare(strategy: str, seed: int, *, preset, memory, sme_coherent, vm_types, vcpus, vm_memory,
            guest_workload, neighbours, neighbour_workload, neighbour_memory, epochs, epoch_accesses,
            max_warmup_epochs, events_per_epoch, pages_per_event, free_fraction, unmapped_fraction, snp=False,
            gmem_huge=False, gmem_discards_per_epoch=0, scale="real") -> dict:
    """The host, the guests and the neighbours, warmed up until steady, and the quiet phase. None
    of it depends on the strategy (KVM consults it only in the notifier's reclaim hook), so `run`
    prepares once per seed and runs the storm on a copy for each strategy."""
    rng = np.random.default_rng(seed)
    types = [VmType(t.strip()) for t in str(vm_types).split(",") if t.strip()]
    if gmem_discards_per_epoch and not (snp and VmType.SNP in types):
        raise ConfigError("parameter gmem_discards_per_epoch needs snp=True and an snp guest in vm_types")
    host = Host.from_preset(preset, memory=memory, sme_coherent=sme_coherent)
    if VmType.SNP in types and not host.features["snp"]:
        raise ConfigError(f"parameter vm_types: 'snp' needs a preset with SEV-SNP; {preset} has none")
    if snp:
        host.snp_enable()
    vm_mem = size(vm_memory, "vm_memory")
    if vm_mem % 4096:
        raise ConfigError(f"parameter vm_memory: {vm_memory!r} is not a multiple of 4 KiB")
    nb_mem = size(neighbour_memory, "neighbour_memory")
    if pages_per_event > vm_mem // 4096:
        raise ConfigError(f"parameter pages_per_event: {pages_per_event} exceeds the {vm_mem // 4096} pages of a VM")
    vm_cpus, nb_cpus = common.place(host, [vcpus] * len(types), neighbours)
    all_vcpu_cpus = [c for cs in vm_cpus for c in cs]
    kvm = Kvm(host, strategy, initiator=common.housekeeping_cpu(host, all_vcpu_cpus + nb_cpus), gmem_huge=gmem_huge)
    steps = common.Steps(host)
    steps.mark("sev_guest_init")
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

    def groups():
        return common.snapshot(host, all_vcpu_cpus), common.snapshot(host, nb_cpus)

    def phase(storm: bool):
        (g0, n0), i0 = groups(), int(host.clocks[kvm.initiator])
        events = 0
        for _ in range(epochs):
            steps.mark("guests and neighbours run")
            epoch()
            if storm:
                for _ in range(events_per_epoch):
                    invalidate()
                    events += 1
                for _ in range(gmem_discards_per_epoch):
                    discard()
                    events += 1
        g1, n1 = groups()
        return {"guest": common.neighbour_stats(host, g0, g1), "nb": common.neighbour_stats(host, n0, n1),
                "guest_g": common.group_stats(host, g0, g1), "nb_g": common.group_stats(host, n0, n1),
                "notifier": int(host.clocks[kvm.initiator]) - i0, "events": events, "span": g1["clock"] - g0["clock"]}

    def invalidate():
        vm = guests[int(rng.integers(0, len(guests)))]
        gpages = rng.choice(len(vm.pages), size=pages_per_event, replace=False)
        free = bool(rng.random() < free_fraction)
        mapped = not (free and rng.random() < unmapped_fraction)
        steps.mark(f"mmu_notifier_invalidate {vm.name}")
        freed = kvm.mmu_notifier_invalidate(vm, gpages, hva_mapped=[mapped] * len(gpages), free=free, migrate=free)
        # the host reuses freed pages at once: a line of each is written under the host key
        if len(freed):
            steps.mark("host reuses the freed pages")
            host.access(kvm.initiator, freed.astype(np.uint64), True, 0)

    def discard():
        snp_guests = [vm for vm in guests if kvm.gmem_backed(vm)]
        vm = snp_guests[int(rng.integers(0, len(snp_guests)))]
        gpages = rng.choice(len(vm.pages), size=pages_per_event, replace=False)
        steps.mark(f"kvm_gmem_punch_hole {vm.name}")
        freed = kvm.kvm_gmem_punch_hole(vm, gpages)
        steps.mark("host reuses the freed pages")
        host.access(kvm.initiator, freed.astype(np.uint64), True, 0)

    # warm-up: the guests touch their memory (each vCPU its share: all of it, or, in a guest
    # larger than that, 1.25 times what fills the caches the vCPU runs on, its L2 and its part of
    # its CCD's L3, spread over the share), then every party runs until its hit rate and
    # throughput are steady
    steps.mark("warm-up")
    geo = host.caches
    per_ccd = max(1, host.core_count // host.ccd_count)
    fill = int(1.25 * (geo["l2"]["size"] + geo["l3"]["size"] // per_ccd) // 64)
    for vm, cpus in zip(guests, vm_cpus):
        n_lines = vm.memory // 64
        for v, cpu in enumerate(cpus):
            mine = (n_lines - v + len(cpus) - 1) // len(cpus)  # lines v, v + len(cpus), ...
            k = np.arange(mine, dtype=np.uint64) if mine <= fill else np.sort(
                rng.choice(mine, size=fill, replace=False)).astype(np.uint64)
            share = (k * np.uint64(len(cpus)) + np.uint64(v)) * np.uint64(64)
            kvm.vcpu_run(vm, v, cpu, share, rng.random(len(share)) < 0.3)
    # at least one whole sweep of a neighbour's working set first: during its first, cold sweep a
    # neighbour misses at a steady rate that is not its steady state
    first_sweep = -(-(nb_mem // 64) // epoch_accesses) if nbs and neighbour_workload == "working-set" else 2
    warm, steady = common.warm_until_steady(host, epoch, {"guests": all_vcpu_cpus, "neighbours": nb_cpus},
                                            min_epochs=max(2, first_sweep),
                                            max_epochs=max_warmup_epochs)
    quiet = phase(storm=False)
    return dict(locals())


def finish(ctx: dict, strategy: str, rep: int):
    """The storm with `strategy` on a prepared state (`prepare`); returns the row and records."""
    from ..kvm import get_strategy

    host, kvm, steps, phase, quiet, nbs, seed = (ctx[k] for k in ("host", "kvm", "steps", "phase", "quiet", "nbs",
                                                                  "seed"))
    warm, steady = ctx["warm"], ctx["steady"]
    kvm.strategy = get_strategy(strategy)
    w0, k0 = host.counters, dict(kvm.stats)
    storm = phase(storm=True)
    w1 = host.counters
    events = storm["events"]
    guest_span = float(storm["span"].max())
    safe = common.safety(host)
    records = common.violation_records(host, steps)
    d = {k: int(w1[k].sum() - w0[k].sum()) for k in ("writebacks", "ipis_sent", "wbinvd", "wbnoinvd", "clflush_lines")}
    per_event = (lambda cyc: common.cycles_to_us(host, cyc / events) if events else 0.0)
    notes = [] if steady else [f"not steady after {warm} warm-up epochs: the phases may differ by warming alone"]
    row = {
        "strategy": strategy,
        "rep": rep,
        "seed": seed,
        "sme_coherent_host": bool(host.features["sme_coherent"]),
        "events": events,
        "events_per_s": events / (guest_span / (host.freq_ghz * 1e9)) if guest_span else None,
        "notifier_us_per_event": per_event(storm["notifier"]),
        "writebacks": d["writebacks"],
        "ipis": d["ipis_sent"],
        "wbinvd": d["wbinvd"],
        "wbnoinvd": d["wbnoinvd"],
        "clflush_lines": d["clflush_lines"],
        "npt_faults": kvm.stats["npt_faults"] - k0["npt_faults"],
        "pages_migrated": kvm.stats["pages_migrated"] - k0["pages_migrated"],
        "warmup_epochs": warm,
        "guest_tput_quiet": quiet["guest"]["throughput"],
        "guest_tput_storm": storm["guest"]["throughput"],
        "guest_hit_quiet": quiet["guest"]["hit_rate"],
        "guest_hit_storm": storm["guest"]["hit_rate"],
        "guest_lost_us_per_event": per_event(_lost(host, quiet["guest_g"], storm["guest_g"])),
        "nb_tput_quiet": quiet["nb"]["throughput"] if nbs else None,
        "nb_tput_storm": storm["nb"]["throughput"] if nbs else None,
        "nb_hit_quiet": quiet["nb"]["hit_rate"] if nbs else None,
        "nb_hit_storm": storm["nb"]["hit_rate"] if nbs else None,
        "nb_lost_us_per_event": per_event(_lost(host, quiet["nb_g"], storm["nb_g"])) if nbs else None,
        **{k: safe[k] for k in ("corruption", "dma", "isolation", "rmp", "tlb", "latent", "violations")},
        **common.cause_counts(host),
        "verdict": common.verdict(safe),
        "first_violation": common.first_violation(records, safe),
        "notes": common.strategy_notes(host, kvm, notes),
    }
    return row, records
