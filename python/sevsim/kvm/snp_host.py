"""An SNP host paging in guests at scale: the engine host with SNP on, the kernel era, the
direct-map policy, the host allocator (FolioMemory), the global cpa_lock, the vCPU placement,
and the per-VM state the page-in path uses. The steps themselves live in the modules named after
the kernel code they model: kvm_main.py (KVM_SET_MEMORY_ATTRIBUTES), qemu.py (the userspace side
of a page-state change), gmem.py (guest_memfd faults and sev_gmem_prepare), directmap.py
(adjust_direct_map and its policies), guest_accept.py (the guest's lazy acceptance).

Time: each vCPU thread has its own clock (cycles, a float); the engine's per-CPU clocks are moved
up to it before engine work whose cost depends on time (DRAM windows, cpa_lock), and a step's
engine cost is read as the change of that CPU's engine clock, times the thread's slow-down
(sim/sched.py). Software costs are in the preset's [kvm] section, in ns (snp-pagein.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np

from .. import Host
from ..sim import Lock, place_threads
from .kvm_main import InvalidationEnds
from .sev import ConfigError, FolioMemory

#: the two kernel eras (snp-pagein.md 1.1, 1.4): guest_memfd folio order and how flush_tlb_all() flushes
ERAS = {
    # the thread's (Jan 2024): best-effort 2 MiB gmem folios (kvm-coco-queue + Sean's hugepage patch), IPI flushes
    # guest_memfd RAM starts shared: QEMU made it private at start only in 9.0 (bd3bcf6962b6, posted as Roth's QEMU
    # SNP v3 15/49 <20240320083945.991426-16-michael.roth@amd.com>, after the thread), so every acceptance converts
    "2024": {"gmem_huge": True, "flush": "ipi", "private_at_start": False},
    # today's upstream: order-0 guest_memfd (__kvm_gmem_get_pfn(): *max_order = 0, virt/kvm/guest_memfd.c),
    # INVLPGB kernel flushes (lore 20250226030129.530345-5-riel@surriel.com, 6.15), and RAM private from the start
    # (QEMU bd3bcf6962b6): a PSC to private finds the attributes set and KVM returns early
    "upstream": {"gmem_huge": False, "flush": "invlpgb", "private_at_start": True},
}


@dataclass(frozen=True)
class PageinCosts:
    """The page-in path's software costs in cycles (the preset's [kvm] `_ns` keys times the clock)
    and its dimensionless assumptions; each key's source is in the profile."""
    attr_per_gfn: float
    attr_ioctl: float
    attr_1g_scan_step: float
    attr_check_per_gfn: float
    mmu_write_section: float
    attr_memory_bound: float
    attr_dm_pages_per_4m: float
    psc_exit: float
    userspace_roundtrip: float
    shmem_discard: float
    madvise_dontneed: float
    gmem_filemap: float
    npf_map: float
    guest_fault: float
    guest_accept: float
    guest_clear_bytes: float
    smt_pair_yield: float
    host_background: float
    thp_fail_half: float
    host_mixed: float
    #: the preset's DRAM latency (latency.memory, cycles): the cold leaf node of each 1 GiB step
    mem_latency: float = 0.0

    @classmethod
    def assumable(cls) -> set[str]:
        """The names an `assume` override may set (the profile's kvm keys; the memory latency is
        the engine preset's)."""
        return {f.name for f in fields(cls)} - {"mem_latency"}

    @classmethod
    def from_host(cls, host: Host, overrides: dict[str, float] | None = None) -> "PageinCosts":
        k = dict(host.kvm_cost)
        names = cls.assumable()
        for key in overrides or {}:
            base = key[:-3] if key.endswith("_ns") else key
            if base not in names:
                raise ConfigError(f"assume: {key!r} is not a page-in parameter; valid: {', '.join(sorted(names))}")
            if key == base and base + "_ns" in k:
                # a bare name would be read as cycles where the profile gives nanoseconds
                raise ConfigError(f"assume: {key!r} is a time in the profile ({base}_ns = {k[base + '_ns']}): "
                                  f"give it in ns as {base}_ns=VALUE")
            k.pop(base + "_ns", None)
            k.pop(base, None)
        k.update(overrides or {})
        out = {}
        for f in fields(cls):
            if f.name == "mem_latency":
                out[f.name] = float(host.cost["latency_memory"])
                continue
            if f.name + "_ns" in k:
                out[f.name] = float(k[f.name + "_ns"]) * host.freq_ghz
            elif f.name in k:
                out[f.name] = float(k[f.name])
            else:
                raise ConfigError(f"preset {host.preset!r} has no kvm.{f.name}_ns or kvm.{f.name} in its profile: "
                                  "the SNP page-in path needs it (see epyc-9754-2s)")
        return cls(**out)


@dataclass
class Counters:
    psc: int = 0
    attr_gfns: int = 0
    attr_noop_calls: int = 0     # conversions that found the range private already (returned early)
    attr_1g_steps: int = 0       # hugepage_has_attrs() steps at 1 GiB
    npf: int = 0
    npf_retries: int = 0
    huge_chunks: int = 0
    fallback_chunks: int = 0
    order0_regions: int = 0      # host 2 MiB regions holding each fallback chunk's pages, summed over chunks
    splits: int = 0
    flushes: int = 0
    neighbour_waits: int = 0
    rmpupdates: int = 0
    pvalidates: int = 0


@dataclass
class PageinVm:
    """One SNP guest: its ASID, vCPU threads, per-VM locks and the guest-side acceptance state."""
    index: int
    asid: int
    memory: int
    threads: np.ndarray                      # thread ids of its vCPUs
    slots_lock: Lock = field(default_factory=lambda: Lock("slots_lock"))
    mmu_lock: Lock = field(default_factory=lambda: Lock("mmu_lock", "rw"))
    shmem_lock: Lock = field(default_factory=lambda: Lock("shmem_inode"))
    # not strict: a thread's 2 MiB faults run in one driver step, asked for ahead of the driver's clock
    # (gmem.fault_in_range); a few-100-ns section may then overlap one asked for earlier [assumed harmless]
    gmem_lock: Lock = field(default_factory=lambda: Lock("gmem_i_pages", strict=False))
    inval_ends: InvalidationEnds = field(default_factory=InvalidationEnds)  # when mmu_invalidate_seq moved
    accepted_bytes: int = 0
    huge_bytes: int = 0
    finish: float = 0.0
    guest: object = None                     # guest_accept.GuestAcceptance

    def locks(self) -> dict[str, Lock]:
        return {name: getattr(self, name) for name in LOCK_NAMES}


LOCK_NAMES = ("slots_lock", "mmu_lock", "shmem_lock", "gmem_lock")


class SnpPageinHost:
    def __init__(self, host: Host, *, era: str, policy, vm_vcpus: list[int], vm_memory: list[int], seed: int,
                 overrides: dict[str, float] | None = None):
        from .directmap import get_policy

        if era not in ERAS:
            raise ConfigError(f"era = {era!r} is not a kernel era; use one of {', '.join(ERAS)}")
        self.host = host
        self.era = era
        self.gmem_huge = ERAS[era]["gmem_huge"]
        self.flush = ERAS[era]["flush"]
        self.private_at_start = ERAS[era]["private_at_start"]
        self.c = PageinCosts.from_host(host, overrides)
        self.rng = np.random.default_rng(seed)
        host.snp_enable()
        self.policy = get_policy(policy) if isinstance(policy, str) else policy
        self.policy.at_boot(self)
        self.mem = FolioMemory(host.memory, host.socket_count, self.rng, mixed_fraction=self.c.host_mixed,
                               fail_half=self.c.thp_fail_half)
        # strict (as every Lock): its holder runs the engine's split, which waits on the engine's cpa_free_at
        self.cpa_lock = Lock("cpa_lock")
        self.engine_cpa_free = 0  # the engine's own cpa_free_at, as far as our calls moved it
        self.ctr = Counters()
        self.freq = host.freq_ghz
        topo = host.topology()
        n = int(sum(vm_vcpus))
        core_socket = np.zeros(host.core_count, dtype=np.int64)
        core_socket[topo["cpu_core"]] = topo["cpu_socket"]
        self.placement = place_threads(n, topo["cpu_core"], core_socket, smt_pair_yield=self.c.smt_pair_yield,
                                       background=self.c.host_background)
        self.cpu = [int(c) for c in self.placement.cpu]
        self.slow = [float(s) for s in self.placement.slow]
        self.node = [int(topo["cpu_socket"][c]) for c in self.cpu]
        host.set_cpu_idle([int(c) for c in self.placement.idle_cpus], True)
        # what one IPI-flushed host TLB costs a vCPU: the interrupt exits the guest, the handler
        # flushes, the vCPU re-enters (kflush.rs): charged to each vCPU thread at its next step
        tlb, snp = preset_section(host, "tlb"), preset_section(host, "snp")
        self.victim_cycles = (host.cost["ipi_handler"] + float(tlb["flush"]) + float(tlb["world_switch"])
                              if self.flush == "ipi" else 0.0)
        self.world_switch = float(tlb["world_switch"])
        self.alloc_4k = float(snp["alloc_4k"])
        self.split_fill = float(snp["split_fill"])
        self.npf_exit = float(snp["npf_exit"])
        self.pvalidate_2m = float(snp["pvalidate_2m"])
        self.alloc_2m, self.rmpupdate = float(snp["alloc_2m"]), float(snp["rmpupdate"])
        self.dm_walk_4k, self.walk_native = float(snp["dm_walk_4k"]), float(tlb["walk_native"])
        self._walk_key = -1
        # kernel data the attribute update reaches through the direct map: pages spread over memory
        self.kernel_data = (self.rng.integers(0, host.memory // PAGE_4K, size=max(1, int(self.c.attr_dm_pages_per_4m)))
                            .astype(np.uint64) * np.uint64(PAGE_4K))
        self.vms: list[PageinVm] = []
        tid = 0
        for i, (nv, mem) in enumerate(zip(vm_vcpus, vm_memory)):
            asid = i + 1
            host.snp_set_asid(asid)
            vm = PageinVm(i, asid, mem, np.arange(tid, tid + nv))
            tid += nv
            gt, npt = host.create_table("guest"), host.create_table("npt")
            ctx = host.create_context("svm", gt, nested=npt, tag=asid, key=asid, vm=asid)
            for t in vm.threads:
                host.vmrun(self.cpu[t], ctx)  # every vCPU runs its guest: flush IPIs make it exit
            self.vms.append(vm)
        self.seen_flushes = [0] * n

    def kernel_walk_cycles(self, ngfn: int, beta: float) -> float:
        """Direct-map walks of the kernel data an attribute call on `ngfn` gfns reaches, beyond
        what attr_per_gfn already holds: a 4 KiB leaf costs snp.dm_walk_4k times beta where a large
        one costs tlb.walk_native (membw.rs); the difference is charged."""
        if self._walk_key != self.ctr.splits:
            sizes = self.host.direct_map_leaf_sizes(self.kernel_data)
            self._small = np.cumsum(sizes == PAGE_4K)
            self._walk_key = self.ctr.splits
        k = max(1, min(len(self.kernel_data), round(self.c.attr_dm_pages_per_4m * ngfn / 1024)))
        n4 = int(self._small[k - 1])
        # attr_per_gfn (Merwick's measurement of the per-gfn loop, on a host with a large-page
        # direct map [assumed]) already pays a walk at a large leaf: only a 4 KiB leaf's extra is added
        return n4 * max(0.0, self.dm_walk_4k * beta - self.walk_native)

    # ---- time helpers
    def sync(self, cpu: int, t: float) -> None:
        """Move `cpu`'s engine clock up to `t`."""
        d = int(t) - self.host.cycles(cpu)
        if d > 0:
            self.host.spend(cpu, d)

    def debt(self, tid: int) -> float:
        """Cycles thread `tid` lost to global flushes since its last step (IPI victims)."""
        n = self.ctr.flushes - self.seen_flushes[tid]
        if n == 0:
            return 0.0
        self.seen_flushes[tid] = self.ctr.flushes
        # what the engine charged this thread's CPU for them (kflush.rs), so that the thread's
        # clock and its CPU's engine clock stay together
        return n * self.victim_cycles

    def us(self, cycles: float) -> float:
        return cycles / (self.freq * 1e3)


PAGE_4K = 4096
def preset_section(host: Host, section: str) -> dict:
    """The host's [tlb] or [snp] costs as configured (preset plus overrides, or a custom profile)."""
    if section not in ("tlb", "snp"):
        raise ValueError(f"section = {section!r}: use 'tlb' or 'snp'")
    return host.tlb_cost if section == "tlb" else host.snp_cost


def run_pagein(host: Host, *, era: str, policy: str, vm_vcpus: list[int], vm_memory: list[int], seed: int,
               overrides: dict[str, float] | None = None) -> dict:
    """Page in every guest's whole memory at once, each vCPU a thread of the discrete-event driver
    (guest_accept.vcpu_thread); returns the rates, counts and lock statistics."""
    from ..sim import Driver
    from .guest_accept import GuestAcceptance, vcpu_thread

    m = SnpPageinHost(host, era=era, policy=policy, vm_vcpus=vm_vcpus, vm_memory=vm_memory, seed=seed,
                      overrides=overrides)
    d = Driver()
    d.on_advance(m.cpa_lock.forget_before)
    for vm in m.vms:
        vm.guest = GuestAcceptance(vm.memory, len(vm.threads), m.rng)
        for lk in (*vm.locks().values(), vm.inval_ends):
            d.on_advance(lk.forget_before)
    for vm in m.vms:
        for tid in vm.threads:
            d.spawn(int(tid), vcpu_thread(m, vm, int(tid), d))
    d.run()
    return summarise(m, d)


def summarise(m: SnpPageinHost, d) -> dict:
    per_vm = []
    for vm in m.vms:
        secs = vm.finish / (m.freq * 1e9)
        per_vm.append(vm.accepted_bytes / secs / 1e9 if secs > 0 else 0.0)
    locks: dict[str, dict] = {"cpa_lock": m.cpa_lock.stats(m.freq)}
    for name in LOCK_NAMES:
        agg = {"acquisitions": 0, "contended": 0, "wait_us": 0.0, "hold_us": 0.0}
        for vm in m.vms:
            for k, v in vm.locks()[name].stats(m.freq).items():
                agg[k] += v
        locks[name] = agg
    drops = m.cpa_lock.forced_drops + sum(lk.forced_drops for vm in m.vms for lk in vm.locks().values())
    viol = m.host.violation_counts()
    rmp = sum(v for k, v in viol.items() if k.startswith("rmp"))
    total = sum(vm.accepted_bytes for vm in m.vms)
    return {"pagein_gbps": float(sum(per_vm)), "per_vm_gbps": per_vm, "paged_bytes": int(total),
            "huge_fraction": float(sum(vm.huge_bytes for vm in m.vms) / total) if total else 0.0,
            "sim_seconds": max(vm.finish for vm in m.vms) / (m.freq * 1e9), "events": d.steps,
            "counters": dict(vars(m.ctr)), "locks": locks, "lock_history_drops": int(drops), "rmp_faults": int(rmp), "violations": viol,
            "dm_leaves": m.host.direct_map_leaves, "host_utilisation": [m.mem.utilisation(k) for k in range(m.mem.nodes)]}
