"""KVM's SEV/SEV-ES/SNP host side, as far as cache maintenance is concerned: the ASID allocator,
the VM lifecycle and the MMU-notifier reclaim path. Names follow arch/x86/kvm/svm/sev.c and
virt/kvm/kvm_main.c so a kernel engineer can find each step; which flush runs where is the chosen
`CacheStrategy`'s business (strategies.py).

Guest memory is modelled per 4 KiB page: each VM has a guest-physical page table (GPA page ->
host physical page), so pages can be migrated or reclaimed one at a time, as AutoNUMA and KSM do.
A guest's accesses use its ASID as the encryption key (the key slot is indexed by the ASID,
semantics.md 1.1).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from .. import Host
from .strategies import CacheStrategy, get_strategy

PAGE = 4096
HUGE = 2 << 20


class SevsimError(Exception):
    """Base class of sevsim's own errors."""


class ConfigError(SevsimError, ValueError):
    """An impossible configuration (more vCPUs than CPUs, more memory than the host has, ...)."""


class AsidExhausted(SevsimError, RuntimeError):
    """sev_asid_new() found no free ASID and could not recycle one (-EBUSY)."""


class VmType(str, enum.Enum):
    SEV = "sev"
    SEV_ES = "sev-es"
    SNP = "snp"


class HostMemory:
    """The host's page allocator, as far as sevsim needs one: 4 KiB pages, the most recently freed
    first (a stack: the kernel's per-CPU free lists hand out the page freed last, free_unref_page()
    adding at the head of the pcp list and __rmqueue_pcplist() taking from it, mm/page_alloc.c),
    then never-used pages lowest address first. Deterministic, and O(pages in use): a 1.5 TiB host
    does not need a list of its 400 M free pages. Memory below `reserved` is the host kernel's own."""

    def __init__(self, host: Host, reserved: int = 64 << 20):
        if reserved >= host.memory:
            raise ConfigError(f"host memory {host.memory} bytes is too small (the host keeps {reserved} bytes)")
        self.first = reserved // PAGE
        self.end = host.memory // PAGE
        self.fresh = self.first  # lowest page never handed out
        self.freed = np.empty(1024, dtype=np.uint64)  # page numbers freed, the last freed on top
        self.nfreed = 0

    @property
    def top(self) -> int:
        """Free pages."""
        return self.nfreed + (self.end - self.fresh)

    @property
    def free(self) -> int:
        return self.top * PAGE

    def alloc(self, n: int) -> np.ndarray:
        """n pages (physical addresses): the most recently freed first, then fresh ones ascending."""
        if n > self.top:
            raise ConfigError(f"out of host memory: {n} pages asked, {self.top} free")
        k = min(n, self.nfreed)
        reused = self.freed[self.nfreed - k:self.nfreed][::-1]
        self.nfreed -= k
        fresh = np.arange(self.fresh, self.fresh + (n - k), dtype=np.uint64)
        self.fresh += n - k
        return np.concatenate([reused, fresh]) * np.uint64(PAGE)

    def release(self, pas: Iterable[int]) -> None:
        """Free pages (physical addresses); the first of them is handed out first again."""
        pas = np.asarray(list(pas) if not isinstance(pas, np.ndarray) else pas, dtype=np.uint64)
        n = len(pas)
        if self.nfreed + n > len(self.freed):
            grown = np.empty(max(2 * len(self.freed), self.nfreed + n), dtype=np.uint64)
            grown[:self.nfreed] = self.freed[:self.nfreed]
            self.freed = grown
        self.freed[self.nfreed:self.nfreed + n] = (pas // np.uint64(PAGE))[::-1]
        self.nfreed += n


@dataclass
class SevVm:
    name: str
    vm_type: VmType
    asid: int
    #: host physical address of each guest page (GPA page number -> PA)
    pages: np.ndarray
    #: pCPU each vCPU runs on (None: not running)
    vcpu_cpu: list[int | None]
    have_run_cpus: set[int] = field(default_factory=set)
    #: registered (pinned) encrypted regions as (guest page index, page count)
    regions: list[tuple[int, int]] = field(default_factory=list)
    #: SEV-ES/SNP: each vCPU's VMSA page (encrypted save area the CPU writes at every VMEXIT)
    vmsa: list[int] = field(default_factory=list)
    destroyed: bool = False
    #: per guest page: its NPT entry was zapped by an invalidation and not faulted in since
    npt_zapped: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    #: per guest page: the zap came with a NUMA migration whose copy the faulting vCPU pays
    migrating: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    def __post_init__(self):
        if len(self.npt_zapped) != len(self.pages):
            self.npt_zapped = np.zeros(len(self.pages), dtype=bool)
            self.migrating = np.zeros(len(self.pages), dtype=bool)

    @property
    def key(self) -> int:
        return self.asid

    @property
    def memory(self) -> int:
        return len(self.pages) * PAGE

    def pa_of(self, gpa: np.ndarray) -> np.ndarray:
        """Host physical addresses of guest physical addresses (vectorised)."""
        gpa = np.asarray(gpa, dtype=np.uint64)
        return self.pages[gpa // PAGE] + gpa % PAGE

    def running_cpus(self) -> list[int]:
        return sorted({c for c in self.vcpu_cpu if c is not None})


class Kvm:
    """KVM with the SEV module loaded, on one simulated host.

    `min_sev_asid`/`max_sev_asid`: CPUID 0x8000001F EDX/ECX (semantics.md 2.1): ASIDs
    [1, min_sev_asid - 1] are for SEV-ES/SNP, [min_sev_asid, max_sev_asid] for plain SEV.
    `recycle`: whether an exhausted ASID space is recycled (WBINVD on all CPUs + DF_FLUSH); if not,
    allocation fails with AsidExhausted.
    `initiator`: the CPU that runs ioctls and notifier callbacks unless told otherwise.
    `gmem_huge`: SNP guest_memfd backed by 2 MiB folios, so private memory gets 2 MiB RMP entries
    (out-of-tree hugetlb guest_memfd); by default 4 KiB folios, as upstream.
    """

    def __init__(self, host: Host, strategy: CacheStrategy | str = "wbnoinvd_ran_cpus", *,
                 min_sev_asid: int = 100, max_sev_asid: int = 1006, recycle: bool = True, initiator: int = 0,
                 reserved_memory: int | None = None, gmem_huge: bool = False):
        if not (1 <= min_sev_asid <= max_sev_asid + 1):
            raise ConfigError(f"need 1 <= min_sev_asid <= max_sev_asid + 1, got {min_sev_asid}, {max_sev_asid}")
        if max_sev_asid > 1023:
            # RMP entries hold the ASID in 10 bits (semantics.md 2.1)
            raise ConfigError(f"max_sev_asid = {max_sev_asid} exceeds 1023")
        if not 0 <= initiator < host.cpu_count:
            raise ConfigError(f"initiator CPU {initiator} is not one of the host's CPUs 0..{host.cpu_count - 1}")
        self.host = host
        self.strategy = get_strategy(strategy) if isinstance(strategy, str) else strategy
        self.min_sev_asid, self.max_sev_asid = min_sev_asid, max_sev_asid
        self.recycle = recycle
        self.initiator = initiator
        # guest_memfd with 2 MiB folios (out-of-tree hugetlb series); upstream hands out order-0
        # folios only: __kvm_gmem_get_pfn() sets *max_order = 0 (virt/kvm/guest_memfd.c)
        self.gmem_huge = gmem_huge
        if reserved_memory is None:
            # the host kernel's own memory: 64 MiB, or an eighth of a small host
            reserved_memory = min(64 << 20, host.memory // 8 // PAGE * PAGE)
        self.mem = HostMemory(host, reserved_memory)
        # sev_asid_bitmap / sev_reclaim_asid_bitmap
        self.asid_used: set[int] = set()
        self.asid_reclaim: set[int] = set()
        self.vms: list[SevVm] = []
        self.stats = {"asid_recycles": 0, "df_flush": 0, "notifier_calls": 0, "pages_reclaimed": 0,
                      "gmem_punches": 0, "npt_faults": 0, "pages_migrated": 0}

    # ---------------------------------------------------------------------------------------
    # ASIDs (sev_asid_new, sev_asid_free, __sev_recycle_asids, sev_flush_asids)

    def asid_range(self, vm_type: VmType) -> tuple[int, int]:
        if vm_type is VmType.SEV:
            return self.min_sev_asid, self.max_sev_asid
        return 1, self.min_sev_asid - 1

    def sev_flush_asids(self, initiator: int) -> None:
        """wbinvd_on_all_cpus() then DF_FLUSH, under down_write(&sev_deactivate_lock). SNP
        firmware requires WBINVD, not WBNOINVD, before DF_FLUSH (comment in sev_flush_asids())."""
        self.host.wbinvd_on_cpus(initiator, range(self.host.cpu_count))
        self.host.spend(initiator, self.host.cost["df_flush"])
        self.stats["df_flush"] += 1

    def _recycle_asids(self, lo: int, hi: int, initiator: int) -> bool:
        """__sev_recycle_asids(): only if an ASID of [lo, hi] waits, flush, and then free every
        waiting ASID, SEV and SEV-ES alike ("The flush process will flush all reclaimable SEV
        and SEV-ES ASIDs": bitmap_xor with the whole reclaim bitmap, arch/x86/kvm/svm/sev.c)."""
        if not any(lo <= a <= hi for a in self.asid_reclaim):
            return False
        self.sev_flush_asids(initiator)
        freed = set(self.asid_reclaim)
        self.asid_used -= freed
        self.asid_reclaim -= freed
        self.stats["asid_recycles"] += 1
        return True

    def sev_asid_new(self, vm_type: VmType, initiator: int | None = None) -> int:
        lo, hi = self.asid_range(vm_type)
        cpu = self.initiator if initiator is None else initiator
        for attempt in (0, 1):
            for a in range(lo, hi + 1):
                if a not in self.asid_used:
                    self.asid_used.add(a)
                    return a
            if attempt == 0 and not (self.recycle and self._recycle_asids(lo, hi, cpu)):
                break
        raise AsidExhausted(
            f"no free {vm_type.value} ASID in [{lo}, {hi}]"
            + ("" if self.recycle else " and recycling is disabled")
            + f" ({len(self.asid_reclaim)} freed ASIDs wait for WBINVD + DF_FLUSH)")

    def sev_asid_free(self, vm: SevVm) -> None:
        # the ASID stays marked used until a recycle has flushed it (semantics.md 2.3)
        self.asid_reclaim.add(vm.asid)

    # ---------------------------------------------------------------------------------------
    # VM lifecycle

    def sev_guest_init(self, name: str, vm_type: VmType | str, memory: int, vcpus: int,
                       initiator: int | None = None) -> SevVm:
        """KVM_SEV_INIT2: allocate an ASID, firmware ACTIVATE of a fresh key into its slot, then
        back `memory` bytes of guest RAM with host pages and register it as an encrypted region."""
        vm_type = VmType(vm_type)
        cpu = self.initiator if initiator is None else initiator
        if memory <= 0 or memory % PAGE:
            raise ConfigError(f"VM {name}: memory must be a positive multiple of 4 KiB, got {memory}")
        if vcpus < 1:
            raise ConfigError(f"VM {name}: needs at least one vCPU, got {vcpus}")
        if memory > self.mem.free:
            raise ConfigError(f"VM {name}: {memory} bytes of guest memory do not fit in the host's "
                              f"{self.mem.free} free bytes")
        asid = self.sev_asid_new(vm_type, cpu)
        # ACTIVATE gives the slot a new key: lines still cached under it are now stale
        self.host.activate(asid)
        self.host.spend(cpu, self.host.cost["psp_command"])
        vm = SevVm(name, vm_type, asid, self.mem.alloc(memory // PAGE), [None] * vcpus)
        self.vms.append(vm)
        if vm_type is VmType.SNP:
            # SNP private memory comes from guest_memfd, not from pinned userspace regions
            self._give_to_guest(vm, vm.pages, cpu)
            if self.host.snp_enabled:
                self.host.snp_set_asid(vm.asid)
                self.sev_gmem_prepare(vm, np.arange(len(vm.pages)), cpu)
        else:
            self.sev_mem_enc_register_region(vm, 0, len(vm.pages), cpu)
        if vm_type is not VmType.SEV:
            # __sev_launch_update_vmsa() (SEV-ES) flushes the VMSA before the firmware encrypts it
            # in place, always, SME_COHERENT or not (semantics.md 1.7 row 2). SNP's
            # snp_launch_update_vmsa() does not: sev_es_sync_vmsa(), rmp_make_private(), then
            # SNP_LAUNCH_UPDATE (arch/x86/kvm/svm/sev.c). sevsim's SNP before guest_memfd (SNP
            # not enabled on the host) keeps the SEV-ES flush.
            vm.vmsa = [int(pa) for pa in self.mem.alloc(vcpus)]
            flush_vmsa = not self.gmem_backed(vm)
            for v, pa in enumerate(vm.vmsa):
                if flush_vmsa:
                    self.host.clflushopt_range(cpu, pa, PAGE, key=0)
                self.host.set_owner(pa, PAGE, vm.asid)
                if vm_type is VmType.SNP and self.host.snp_enabled:
                    # LAUNCH_UPDATE_VMSA makes the VMSA a private 4 KiB page: a direct-map split
                    # where the region was not split yet. Its GPA here is synthetic, past the
                    # guest's memory; the firmware's marking it usable is modelled as validated.
                    gpa = vm.memory + v * PAGE
                    self.rmpupdate(pa, cpu, assigned=True, huge=False, asid=vm.asid, gpa=gpa)
                    self.host.pvalidate(cpu, vm.asid, pa, gpa)
        return vm

    def sev_mem_enc_register_region(self, vm: SevVm, first: int, count: int, initiator: int) -> None:
        """KVM_MEMORY_ENCRYPT_REG_REGION: pin the pages, flush host-key lines of them unless the CPU
        is SME_COHERENT (sev_clflush_pages()), and from here on they hold the guest's data."""
        self._give_to_guest(vm, vm.pages[first:first + count], initiator)
        vm.regions.append((first, count))

    def _give_to_guest(self, vm: SevVm, pages: np.ndarray, initiator: int) -> None:
        """Host pages become the guest's: sev_clflush_pages() first writes back host-key lines of
        them, except on SME_COHERENT CPUs where it returns at once (arch/x86/kvm/svm/sev.c)."""
        pa, size = self.runs(pages)
        if not self.host.features["sme_coherent"]:
            self.host.clflushopt_ranges(initiator, pa, size, key=0)
        self.host.set_owner_ranges(pa, size, vm.asid)

    def sev_mem_enc_unregister_region(self, vm: SevVm, region: int = 0, initiator: int | None = None) -> None:
        """KVM_MEMORY_ENCRYPT_UNREG_REGION: the strategy's unregister-time flush (the kernel's
        sev_writeback_caches(), "before releasing the pages back to the system", semantics.md
        1.7.4), then sev_unpin_memory(). Unpinning only drops KVM's reference: the pages stay
        mapped in the VMM's address space, holding the guest's data, until the mm releases them
        (munmap or exit, through the MMU notifier and its reclaim hook), which is when they go back
        to the host: see `sev_vm_destroy` and `mmu_notifier_invalidate`."""
        cpu = self.initiator if initiator is None else initiator
        if not 0 <= region < len(vm.regions):
            raise ValueError(f"VM {vm.name}: region = {region} is not one of its {len(vm.regions)} registered regions")
        first, count = vm.regions[region]
        self.strategy.unregister_region(self, vm, cpu)
        del vm.regions[region]  # unpin_user_pages(): the pin goes, the pages stay the VM's

    def _free_pages(self, pages: np.ndarray) -> None:
        """Pages go back to the host's allocator, owned by the host key again."""
        self.host.set_owner_ranges(*self.runs(pages), 0)
        self.mem.release(pages)

    def vcpu_run(self, vm: SevVm, vcpu: int, cpu: int, gpa: np.ndarray, write: np.ndarray | bool = False) -> dict:
        """The vCPU enters the guest on `cpu` (pre_sev_run() marks the CPU in have_run_cpus) and
        makes the given accesses to guest physical addresses, as private (C=1) accesses."""
        if vm.destroyed:
            raise SevsimError(f"VM {vm.name} is destroyed")
        if not 0 <= vcpu < len(vm.vcpu_cpu):
            raise ValueError(f"VM {vm.name} has vCPUs 0..{len(vm.vcpu_cpu) - 1}, not {vcpu}")
        gpa = np.asarray(gpa, dtype=np.uint64)
        if len(gpa) and int(gpa.max()) >= vm.memory:
            raise ValueError(f"VM {vm.name}: guest address {int(gpa.max()):#x} is beyond its {vm.memory} bytes")
        if not 0 <= cpu < self.host.cpu_count:
            raise ValueError(f"cpu = {cpu} is out of range: this host has CPUs 0..{self.host.cpu_count - 1}")
        # pre_sev_run(): cpumask_set_cpu(cpu, sev->have_run_cpus) (arch/x86/kvm/svm/sev.c)
        vm.have_run_cpus.add(cpu)
        vm.vcpu_cpu[vcpu] = cpu
        if vm.npt_zapped.any():
            gp = (gpa // np.uint64(PAGE)).astype(np.int64)
            hit = vm.npt_zapped[gp]
            if hit.any():
                self.kvm_tdp_page_fault(vm, cpu, np.unique(gp[hit]))
        st = self.host.access(cpu, vm.pa_of(gpa), write, vm.asid)
        if vm.vmsa:
            # the #VMEXIT saves guest state into the encrypted VMSA (APM 15.35, via semantics.md 1.5):
            # [assumed] 4 lines of it are written each time, under the guest key
            self.host.access(cpu, np.arange(vm.vmsa[vcpu], vm.vmsa[vcpu] + 4 * 64, 64, dtype=np.uint64), True, vm.asid)
        return st

    def kvm_tdp_page_fault(self, vm: SevVm, cpu: int, gpages: np.ndarray) -> None:
        """The vCPU on `cpu` touches guest pages whose NPT entries an invalidation zapped: one
        nested page fault each (#VMEXIT, kvm_mmu_page_fault() -> kvm_tdp_mmu_map(), VMRUN: the
        engine's npf_exit), and for HVA-backed memory the host side of the fault, hva_to_pfn() ->
        get_user_pages() -> handle_mm_fault() (kvm.host_fault). Where the zap was an AutoNUMA
        migration, the copy of the 4 KiB page is paid here too: NUMA balancing migrates in the
        faulting task's own hinting fault (do_numa_page() -> migrate_misplaced_folio(), mm/memory.c),
        and for a guest that task is the vCPU thread (kvm.migrate_gbps). Accounting note: sevsim
        moves the page at the invalidation and charges the copy at the fault, on the same vCPU."""
        n = len(gpages)
        kc = self.host.kvm_cost
        per_fault = self.host.npf_exit(cpu)  # charges the first fault
        extra = per_fault * (n - 1)
        moved = int(vm.migrating[gpages].sum())
        if not self.gmem_backed(vm):
            # the host's fault; for a migrated page the migration's end-to-end figure (unmap, copy,
            # remap: [GARG26]) already holds the PTE work, so it replaces host_fault there
            extra += kc["host_fault"] * (n - moved)
        # bytes / (GB/s) = ns; ns x GHz = cycles
        extra += moved * PAGE / kc["migrate_gbps"] * self.host.freq_ghz
        self.host.spend(cpu, int(round(extra)))
        vm.npt_zapped[gpages] = False
        vm.migrating[gpages] = False
        self.stats["npt_faults"] += n
        self.stats["pages_migrated"] += moved

    def vcpu_put(self, vm: SevVm, vcpu: int) -> None:
        """The vCPU stops running (the CPU stays in have_run_cpus: bits are never cleared)."""
        vm.vcpu_cpu[vcpu] = None

    def gmem_backed(self, vm: SevVm) -> bool:
        """Is the VM's private memory in guest_memfd (an SNP VM on a host with SNP enabled)? Then
        HVA-based MMU notifiers cannot reach it: only `kvm_gmem_punch_hole` frees it."""
        return vm.vm_type is VmType.SNP and self.host.snp_enabled

    def sev_guest_memory_reclaimed(self, vm: SevVm, initiator: int, pages: np.ndarray,
                                   hva_mapped: np.ndarray | bool = True) -> None:
        """kvm_arch_guest_memory_reclaimed() on SVM: the strategy's reclaim. It returns early for
        SNP guests backed by guest_memfd, whose private memory HVA-based notifiers cannot reach
        ("KVM: SEV: Avoid WBINVD for HVA-based MMU notifications for SNP", M. Roth, May 2024;
        sev_guest_memory_reclaimed() in arch/x86/kvm/svm/sev.c). The 2023 thread's SNP hosts,
        before guest_memfd, still paid the hook: sevsim models that when SNP is not enabled on the
        host."""
        if self.gmem_backed(vm):
            return
        self.strategy.reclaim(self, vm, initiator, pages, hva_mapped)

    def kvm_flush_remote_tlbs(self, vm: SevVm, initiator: int) -> None:
        """IPIs to the CPUs running the VM's vCPUs, which exit and flush at the next VMRUN
        (kvm_make_all_cpus_request(KVM_REQ_TLB_FLUSH) kicks only vCPUs in guest mode,
        virt/kvm/kvm_main.c; semantics.md 4.5)."""
        cpus = vm.running_cpus()
        if cpus:
            self.host.ipi_call(initiator, cpus)

    @staticmethod
    def _check_gpages(vm: SevVm, gpages: Sequence[int]) -> np.ndarray:
        """`gpages` as an array of distinct guest page numbers of `vm`, or a ValueError (a repeated
        page would be freed twice)."""
        g = np.asarray(gpages, dtype=np.int64)
        if g.ndim != 1:
            raise ValueError(f"gpages must be a sequence of guest page numbers, got shape {g.shape}")
        if g.size and (int(g.min()) < 0 or int(g.max()) >= len(vm.pages)):
            raise ValueError(f"VM {vm.name}: guest page numbers must be in 0..{len(vm.pages) - 1}, "
                             f"got {int(g.min())}..{int(g.max())}")
        if len(np.unique(g)) != len(g):
            raise ValueError("gpages must not repeat a page")
        return g

    def _check_free_pages(self, n: int) -> None:
        # a guest's replacement pages are allocated before its old ones are released
        if n > self.mem.top:
            raise ConfigError(f"out of host memory: {n} replacement pages asked, {self.mem.top} free")

    def _replace_pages(self, vm: SevVm, gpages: np.ndarray, initiator: int) -> np.ndarray:
        """The guest's pages at `gpages` go back to the host and it gets fresh ones (given to it as
        sev_clflush_pages() would); returns the old ones. Checked by the caller."""
        old = vm.pages[gpages].copy()
        self.host.set_owner_ranges(*self.runs(old), 0)
        self.stats["pages_reclaimed"] += len(old)
        new = self.mem.alloc(len(old))
        self.mem.release(old)  # after the allocation: the old pages are not handed back to the guest
        self._give_to_guest(vm, new, initiator)
        vm.pages[gpages] = new
        return old

    def mmu_notifier_invalidate(self, vm: SevVm, gpages: Sequence[int], initiator: int | None = None,
                                hva_mapped: Sequence[bool] | None = None, free: bool = True,
                                migrate: bool = False) -> np.ndarray:
        """kvm_mmu_notifier_invalidate_range_start() for guest pages `gpages` (GPA page numbers),
        in KVM's order: zap the mappings and flush remote TLBs, run the reclaim hook (every
        invalidation overlapping a memslot pays it, semantics.md 1.7.6). With `free` the pages then
        go back to the host (mm frees them after the callback returns: munmap, MADV_DONTNEED, a
        balloon) and the guest faults in fresh ones; without, the mapping is only changed (a NUMA
        hinting fault's PROT_NONE, a KSM scan) and the guest keeps its pages. Returns the physical
        pages freed (empty without `free`). For an SNP VM on an SNP-enabled host the private
        memory lives in guest_memfd, out of the notifiers' reach: the event only zaps and flushes
        TLBs, and frees nothing (free private memory with `kvm_gmem_punch_hole`). The zapped pages
        fault back in at the guest's next touch (`kvm_tdp_page_fault`); with `free` and `migrate`
        the freeing is a NUMA migration, whose copy that fault pays."""
        cpu = self.initiator if initiator is None else initiator
        # every argument is checked before anything changes
        gpages = self._check_gpages(vm, gpages)
        mapped = np.ones(len(gpages), dtype=bool) if hva_mapped is None else np.asarray(hva_mapped, dtype=bool).ravel()
        if len(mapped) != len(gpages):
            raise ValueError(f"hva_mapped has {len(mapped)} entries for {len(gpages)} pages")
        gmem = self.gmem_backed(vm)
        if free and not gmem:
            self._check_free_pages(int((~self._pinned(vm, gpages)).sum()))  # pinned pages stay
        self.stats["notifier_calls"] += 1
        self.kvm_flush_remote_tlbs(vm, cpu)
        if gmem:
            # guest_memfd memory is not in the HVA space: the event concerns the guest's shared
            # pages only, which sevsim does not model; the zap and TLB flush are paid, the reclaim
            # hook returns early and no private page changes hands
            return np.zeros(0, dtype=np.uint64)
        # kvm_unmap_gfn_range(): the NPT entries go; the guest faults them back in
        vm.npt_zapped[gpages] = True
        old = vm.pages[gpages].copy()
        self.sev_guest_memory_reclaimed(vm, cpu, old, mapped)
        pinned = self._pinned(vm, gpages)
        if pinned.any():
            # registered (pinned) SEV memory cannot move: migrate_pages() fails on pinned pages
            # (folio_maybe_dma_pinned()), and moving ciphertext would break it anyway (the
            # encryption is tweaked by the physical address, semantics.md 1.1). The notifier has
            # fired all the same (the 2023 thread's complaint); only unpinned pages are freed.
            gpages = gpages[~pinned]
            mapped = mapped[~pinned]
        if not free or len(gpages) == 0:
            return np.zeros(0, dtype=np.uint64)
        vm.migrating[gpages] = migrate
        return self._replace_pages(vm, gpages, cpu)

    @staticmethod
    def _pinned(vm: SevVm, gpages: np.ndarray) -> np.ndarray:
        """Which of `gpages` lie in a registered (pinned) region."""
        out = np.zeros(len(gpages), dtype=bool)
        for first, count in vm.regions:
            out |= (gpages >= first) & (gpages < first + count)
        return out

    def kvm_gmem_punch_hole(self, vm: SevVm, gpages: Sequence[int], initiator: int | None = None) -> np.ndarray:
        """fallocate(PUNCH_HOLE) on an SNP guest's guest_memfd for guest pages `gpages` (a discard,
        or the private half of a private->shared conversion), in KVM's order
        (virt/kvm/guest_memfd.c, kvm_gmem_punch_hole()): kvm_gmem_invalidate_begin() zaps the
        mappings and flushes remote TLBs; truncating the folios frees them, which runs
        kvm_arch_gmem_invalidate() -> sev_gmem_invalidate() (RMP back to shared, PSMASH for part of
        a 2 MiB entry, CLFLUSH through the direct map); the pages go back to the host. The guest
        later faults in fresh private pages (kvm_gmem_get_pfn() -> sev_gmem_prepare(), and the
        guest's PVALIDATE). No cache strategy is involved: this path always flushes by PFN.
        Returns the physical pages freed."""
        cpu = self.initiator if initiator is None else initiator
        if not self.gmem_backed(vm):
            raise ValueError(f"VM {vm.name}: only SNP guests on an SNP-enabled host have guest_memfd memory")
        gpages = self._check_gpages(vm, gpages)
        self._check_free_pages(len(gpages))
        self.stats["gmem_punches"] += 1
        self.kvm_flush_remote_tlbs(vm, cpu)
        vm.npt_zapped[gpages] = True  # kvm_gmem_invalidate_begin() zaps them
        self.sev_gmem_invalidate(vm, gpages, cpu)
        old = self._replace_pages(vm, gpages, cpu)
        self.sev_gmem_prepare(vm, gpages, cpu)
        return old

    def sev_vm_destroy(self, vm: SevVm, initiator: int | None = None) -> None:
        """VM teardown as at the VMM's exit: mmu_notifier release -> kvm_flush_shadow_all() runs the
        reclaim hook (newest kernels rely on it, 7e00013bd339) and the mm frees the pages nobody
        pins; kvm_destroy_vm() then frees the vCPUs (VMSA flush) and runs sev_vm_destroy(): older
        kernels WBINVD every CPU there, leftover regions are unpinned (their pages freed now),
        DEACTIVATE + DECOMMISSION, and the ASID goes to the reclaim bitmap (semantics.md 1.7.3)."""
        cpu = self.initiator if initiator is None else initiator
        for v in range(len(vm.vcpu_cpu)):
            self.vcpu_put(vm, v)
        # the mm goes first (mmu_notifier_release -> kvm_flush_shadow_all), then kvm_destroy_vm()
        # frees the vCPUs (kvm_destroy_vcpus) before the vm_destroy hook (arch/x86/kvm/x86.c,
        # kvm_arch_destroy_vm)
        if self.gmem_backed(vm):
            # SNP private memory lives in guest_memfd: freeing its folios runs sev_gmem_invalidate()
            self.sev_gmem_invalidate(vm, np.arange(len(vm.pages)), cpu)
        else:
            # HVA-backed memory (SEV, SEV-ES, and SNP before guest_memfd: see
            # sev_guest_memory_reclaimed): mmu_notifier_release runs the reclaim hook. An SNP VM
            # must not take the guest_memfd path here: sev_gmem_invalidate() does nothing at all on
            # a host without SNP (it returns unless cc_platform_has(CC_ATTR_HOST_SEV_SNP)).
            self.strategy.reclaim(self, vm, cpu, vm.pages, hva_mapped=True)
        # then the mm frees every page nobody pins (exit_mmap(): mmu_notifier_release() before
        # unmap_vmas(), mm/mmap.c); pages of regions still registered survive until the unpin below
        pinned = np.zeros(len(vm.pages), dtype=bool)
        for first, count in vm.regions:
            pinned[first:first + count] = True
        self._free_pages(vm.pages[~pinned])
        for v in range(len(vm.vmsa)):
            self.sev_free_vcpu(vm, v, cpu)
        if self.strategy.flush_on_destroy:
            self.host.wbinvd_on_cpus(cpu, range(self.host.cpu_count))
        # "if userspace was terminated before unregistering the memory regions then lets unpin all
        # the registered memory" (sev_vm_destroy()): the last reference goes, the pages are freed
        vm.regions.clear()
        self._free_pages(vm.pages[pinned])
        self.host.spend(cpu, 2 * self.host.cost["psp_command"])  # DEACTIVATE, DECOMMISSION
        self.sev_asid_free(vm)
        vm.destroyed = True
        self.vms.remove(vm)

    def sev_flush_encrypted_page(self, vm: SevVm, pa: int, initiator: int) -> None:
        """Flush one encrypted page before it is freed (arch/x86/kvm/svm/sev.c): on SME_COHERENT
        CPUs clflush_cache_range() through the kernel mapping, still needed for DMA (d45829b351ee);
        otherwise VM_PAGE_FLUSH with the guest's ASID, falling back, when the WRMSR faults, to
        sev_writeback_caches() (WBNOINVD on have_run_cpus since 6.17; the strategy's kernel's
        flush before: `page_flush_fallback`)."""
        if self.host.features["sme_coherent"]:
            self.host.clflushopt_range(initiator, pa, PAGE, key=0)
        elif not self.host.vm_page_flush(initiator, pa, vm.asid):
            self.strategy.page_flush_fallback(self, vm, initiator)

    def sev_free_vcpu(self, vm: SevVm, vcpu: int, initiator: int) -> None:
        """Free an SEV-ES/SNP vCPU: its VMSA page is flushed, then goes back to the host."""
        pa = vm.vmsa[vcpu]
        if vm.vm_type is VmType.SNP and self.host.snp_enabled:
            # sev_free_vcpu(): rmp_make_shared(vmsa) first (the page is leaked if that fails)
            self.rmpupdate(pa, initiator, assigned=False, huge=False)
        self.sev_flush_encrypted_page(vm, pa, initiator)
        self.host.set_owner(pa, PAGE, 0)
        self.mem.release([pa])

    def adjust_direct_map(self, pa: int, huge: bool, initiator: int) -> None:
        """Before every RMPUPDATE (arch/x86/virt/svm/sev.c, adjust_direct_map()): a 2 MiB RMP entry
        needs no split, since even 1 GiB mappings are checked as 2 MiB accesses; a 4 KiB one splits the
        direct map down to 4 KiB unless lookup_address() says it already is."""
        if not huge:
            self.host.set_memory_4k(initiator, self.host.direct_map_va(pa))

    def rmpupdate(self, pa: int, initiator: int, *, assigned: bool, huge: bool, asid: int = 0, gpa: int = 0) -> None:
        """rmpupdate(): adjust the direct map, then RMPUPDATE (Linux retries on FAIL_OVERLAP, which
        only concurrency produces there; here any failure is a bug in the policy)."""
        self.adjust_direct_map(pa, huge, initiator)
        code = self.host.rmpupdate(initiator, pa, assigned=assigned, huge=huge, asid=asid, gpa=gpa)
        if code:
            raise SevsimError(f"RMPUPDATE of {pa:#x} failed with code {code}")

    def sev_gmem_prepare(self, vm: SevVm, gpages: np.ndarray, initiator: int) -> None:
        """First touch of private guest_memfd pages (sev_gmem_prepare()), then the guest's
        PVALIDATE of what it accepts. Upstream guest_memfd folios are 4 KiB (max_order 0), so
        is_large_rmp_possible() never holds and every RMP entry is 4 KiB, splitting the direct map
        around each 2 MiB region it touches. With `gmem_huge` (2 MiB folios): 2 MiB entries where
        the pfn and gfn are 2 MiB aligned and the whole 2 MiB is the guest's, else 4 KiB."""
        pages = vm.pages[gpages]
        gpas = np.asarray(gpages, dtype=np.uint64) * np.uint64(PAGE)
        if not self.gmem_huge:
            self._prepare_4k(vm, pages, gpas, initiator)
            return
        # a 2 MiB entry starts at i when pa and gpa are 2 MiB aligned and the next 511 pages follow
        # it contiguously (gpa of the last = gpa + 2 MiB - 4 KiB); such starts cannot overlap (a page
        # inside a run is not 2 MiB aligned), so scanning for them is what the page walk finds
        n = len(pages)
        huge = np.zeros(n, dtype=bool)
        if n >= 512:
            breaks = np.concatenate([[0], np.cumsum(np.diff(pages) != PAGE)])  # breaks[j]: gaps before j
            i = np.arange(n - 511)
            huge[:n - 511] = ((pages[:n - 511] % HUGE == 0) & (gpas[:n - 511] % HUGE == 0)
                              & (breaks[i + 511] == breaks[i]) & (gpas[i + 511] == gpas[:n - 511] + (HUGE - PAGE)))
        # in order: each 2 MiB entry, and the 4 KiB pages between them as one batch
        k = 0
        for i in np.nonzero(huge)[0].tolist() + [n]:
            if i > k:
                self._prepare_4k(vm, pages[k:i], gpas[k:i], initiator)
            if i == n:
                break
            pa, gpa = int(pages[i]), int(gpas[i])
            self.rmpupdate(pa, initiator, assigned=True, huge=True, asid=vm.asid, gpa=gpa)
            code, _ = self.host.pvalidate(initiator, vm.asid, pa, gpa, huge=True)
            if code:
                raise SevsimError(f"PVALIDATE of {pa:#x} failed with code {code}")
            k = i + 512

    def _prepare_4k(self, vm: SevVm, pages: np.ndarray, gpas: np.ndarray, initiator: int) -> None:
        """4 KiB RMP entries for `pages` (at `gpas`), then their PVALIDATE: one engine call per run
        of pages in one 2 MiB region rather than four per page. The same charges and end state as
        page by page: a region's direct map splits at its first page (later pages find it split,
        at no cost), and the RMPUPDATEs and PVALIDATEs all run on `initiator`."""
        if len(pages) == 0:
            return
        regions = pages // np.uint64(HUGE)
        starts = np.concatenate([[0], np.nonzero(np.diff(regions))[0] + 1, [len(pages)]])
        for a, b in zip(starts[:-1], starts[1:]):
            pa, gpa = pages[a:b], gpas[a:b]
            self.adjust_direct_map(int(pa[0]), False, initiator)
            codes = self.host.rmpupdate_batch(initiator, pa, gpa, assigned=True, asid=vm.asid)
            if codes.any():
                k = int(np.nonzero(codes)[0][0])
                raise SevsimError(f"RMPUPDATE of {int(pa[k]):#x} failed with code {int(codes[k])}")
            codes, _ = self.host.pvalidate_batch(initiator, vm.asid, pa, gpa)
            if codes.any():
                k = int(np.nonzero(codes)[0][0])
                raise SevsimError(f"PVALIDATE of {int(pa[k]):#x} failed with code {int(codes[k])}")

    def sev_gmem_invalidate(self, vm: SevVm, gpages: np.ndarray, initiator: int) -> None:
        """guest_memfd frees SNP private folios (kvm_arch_gmem_invalidate -> sev_gmem_invalidate()
        in arch/x86/kvm/svm/sev.c): nothing on a host without SNP; else, for each page assigned in
        the RMP, make it shared again (PSMASH first when only part of a 2 MiB entry goes) and then
        clflush_cache_range(__va(pfn), size) through the direct map, one CPU, no IPI. A page the
        RMP does not show as assigned is skipped, flush included ("if (rc || !assigned) goto
        next_pfn"; semantics.md 1.7.7).

        Pages are handled as arrays, one 2 MiB region at a time in address order (the kernel's
        order): a huge entry wholly freed is one 2 MiB RMPUPDATE; a huge entry partly freed is a
        PSMASH, then 4 KiB RMPUPDATEs of the freed pages; 4 KiB entries get 4 KiB RMPUPDATEs of the
        assigned ones. The direct map splits at a region's first 4 KiB RMPUPDATE (later pages of it
        find it split, at no cost), so the charges and their order on `initiator` are those of the
        page-by-page loop."""
        if not self.host.snp_enabled:
            return
        freeing = np.unique(vm.pages[gpages])  # sorted, distinct physical addresses
        if len(freeing) == 0:
            return
        assigned, huge = self._rmp_assigned_huge(freeing)
        regions = freeing // np.uint64(HUGE)
        starts = np.concatenate([[0], np.nonzero(np.diff(regions))[0] + 1, [len(freeing)]])
        for a, b in zip(starts[:-1].tolist(), starts[1:].tolist()):
            if huge[a]:  # the whole region is one assigned 2 MiB entry
                base = int(regions[a]) * HUGE
                if b - a == 512:
                    self.rmpupdate(base, initiator, assigned=False, huge=True)
                    continue
                self.host.psmash(initiator, base)
                pas = freeing[a:b]
            else:
                pas = freeing[a:b][assigned[a:b]]
                if len(pas) == 0:
                    continue
            self.adjust_direct_map(int(pas[0]), False, initiator)
            codes = self.host.rmpupdate_batch(initiator, pas, np.zeros(len(pas), dtype=np.uint64), assigned=False)
            if codes.any():
                k = int(np.nonzero(codes)[0][0])
                raise SevsimError(f"RMPUPDATE of {int(pas[k]):#x} failed with code {int(codes[k])}")
        # every assigned page is flushed (a wholly freed huge entry's 512 pages are all in `freeing`)
        self.host.clflushopt_ranges(initiator, *self.runs(freeing[assigned]), key=0)

    def _rmp_assigned_huge(self, pas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per page of `pas`: is its RMP entry assigned, and is it a 2 MiB entry (bool arrays)."""
        e = self.host.rmp_entries(np.ascontiguousarray(pas, dtype=np.uint64))
        return e["assigned"], e["assigned"] & e["huge"]

    @staticmethod
    def runs(pages: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Contiguous runs of pages (physical addresses, in the given order) as two uint64 arrays,
        start addresses and sizes in bytes: what the engine's batch range calls take."""
        p = np.asarray(pages, dtype=np.uint64)
        if len(p) == 0:
            return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.uint64)
        starts = np.concatenate([[0], np.nonzero(np.diff(p) != PAGE)[0] + 1])
        ends = np.concatenate([starts[1:], [len(p)]])
        return p[starts].copy(), (ends - starts).astype(np.uint64) * np.uint64(PAGE)

    @classmethod
    def _runs(cls, pages: np.ndarray):
        """Contiguous runs of pages as a list of (pa, size)."""
        pa, size = cls.runs(pages)
        return [(int(a), int(n)) for a, n in zip(pa, size)]


class FolioMemory:
    """The host's page allocator as guest_memfd at host scale sees it: 2 MiB blocks (one byte of
    state each, so a 1.5 TiB host costs 768 KiB), per NUMA node, with fragmentation.

    * A block is free, used (the host kernel's, or handed out), or mixed: partly taken by unmovable
      allocations at start (a share `mixed_fraction` of blocks, at places a seeded RNG picks
      [assumed]), its other 4 KiB pages free ([assumed] half of them).
    * An order-9 request (a 2 MiB folio, `alloc_huge`) fails with probability
      p(u) = fail_half * u / (1 - u), u the node's utilisation ([assumed] shape: rare on an empty
      node, certain on a full one; `fail_half` is p at u = 1/2), and always when the node and the
      other nodes have no free block. Otherwise it takes the node's lowest free block (the buddy
      allocator's free lists hold whole blocks in no useful order; ascending is deterministic).
      Sean Christopherson's best-effort hugepage gmem ("a PMD-order folio first, __GFP_NOWARN,
      else order 0": snp-pagein.md 1.1) then falls back to order 0.
    * Order-0 pages (`alloc_order0`) come first from the free pages of mixed blocks, scattered: a
      run from one mixed block, then the next (the RNG's order), which is why a fallback chunk can
      cover several host 2 MiB regions; with no mixed page left, from a free block split for
      the per-CPU lists (rmqueue_bulk(), mm/page_alloc.c), whose pages then serve later order-0
      requests in ascending order: upstream's order-0 guest_memfd on a fresh host uses one host
      2 MiB region per 2 MiB of guest memory (snp-pagein.md 1.4 [INF]).
    """

    FREE, USED, MIXED = 0, 1, 2
    BLOCK = HUGE
    PER_BLOCK = HUGE // PAGE

    def __init__(self, memory: int, nodes: int, rng: np.random.Generator, *, reserved: int = 64 << 20,
                 mixed_fraction: float = 0.0, fail_half: float = 0.0):
        if not 0 <= mixed_fraction < 1:
            raise ConfigError(f"mixed_fraction = {mixed_fraction} must be in [0, 1)")
        if not 0 <= fail_half <= 1:
            raise ConfigError(f"fail_half = {fail_half} must be in [0, 1]")
        n = memory // self.BLOCK
        if n < nodes or nodes < 1:
            raise ConfigError(f"host memory {memory} bytes is too small for {nodes} nodes of 2 MiB blocks")
        self.rng = rng
        self.fail_half = fail_half
        self.nodes = nodes
        self.state = np.zeros(n, dtype=np.uint8)
        self.state[: -(-reserved // self.BLOCK)] = self.USED
        pick = (rng.random(n) < mixed_fraction) & (self.state == self.FREE)
        self.state[pick] = self.MIXED
        self.mixed_free = np.where(pick, self.PER_BLOCK // 2, 0).astype(np.int16)
        self.node_lo = np.array([n * k // nodes for k in range(nodes)] + [n], dtype=np.int64)
        self.cursor = [int(x) for x in self.node_lo[:-1]]  # lowest possibly-free block of each node
        self.free_blocks = [int(np.count_nonzero(self.state[self.node_lo[k]:self.node_lo[k + 1]] == self.FREE))
                            for k in range(nodes)]
        used = np.where(self.state == self.USED, self.PER_BLOCK, 0) + np.where(pick, self.PER_BLOCK - self.mixed_free, 0)
        self.used_pages = [int(used[self.node_lo[k]:self.node_lo[k + 1]].sum()) for k in range(nodes)]
        self.hi = [int(x) for x in self.node_lo[1:]]
        self.npages = [self.node_pages(k) for k in range(nodes)]
        mixed = np.nonzero(pick)[0]
        self.mixed_order = [mixed[(mixed >= self.node_lo[k]) & (mixed < self.node_lo[k + 1])] for k in range(nodes)]
        for k in range(nodes):
            rng.shuffle(self.mixed_order[k])
        self.mixed_pos = [0] * nodes
        self.pcp = [(-1, 0)] * nodes  # (block, next page in it) the per-CPU lists are served from
        self.huge_failures = 0
        self.huge_ok = 0

    def node_pages(self, node: int) -> int:
        return int(self.node_lo[node + 1] - self.node_lo[node]) * self.PER_BLOCK

    def utilisation(self, node: int) -> float:
        return self.used_pages[node] / self.npages[node]

    def _take_free_block(self, node: int) -> int | None:
        for k in (node, *range(self.nodes)):
            if self.free_blocks[k] == 0:
                continue
            hi = self.hi[k]
            c = self.cursor[k]
            st = self.state
            while c < hi and st[c] != 0:  # FREE
                c += 1
            self.cursor[k] = c + 1
            self.state[c] = self.USED
            self.free_blocks[k] -= 1
            self.used_pages[k] += self.PER_BLOCK
            return c
        return None

    def alloc_huge(self, node: int) -> int | None:
        """A 2 MiB folio's physical address, or None (the order-9 request failed)."""
        u = self.utilisation(node)
        p = 1.0 if u >= 1 else self.fail_half * u / (1.0 - u)
        if p > 0 and self.rng.random() < p:
            self.huge_failures += 1
            return None
        b = self._take_free_block(node)
        if b is None:
            self.huge_failures += 1
            return None
        self.huge_ok += 1
        return b * self.BLOCK

    def alloc_order0(self, node: int, n: int) -> np.ndarray:
        """n order-0 pages (physical addresses), module comment."""
        out: list[np.ndarray] = []
        need = n
        order, pos = self.mixed_order[node], self.mixed_pos[node]
        while need and pos < len(order):
            b = int(order[pos])
            f = int(self.mixed_free[b])
            k = min(f, need)
            first = self.PER_BLOCK - f
            out.append(np.arange(b * self.PER_BLOCK + first, b * self.PER_BLOCK + first + k, dtype=np.uint64))
            self.mixed_free[b] -= k
            need -= k
            self.used_pages[node] += k
            if self.mixed_free[b] == 0:
                self.state[b] = self.USED
                pos += 1
        self.mixed_pos[node] = pos
        while need:
            blk, nxt = self.pcp[node]
            if blk < 0 or nxt >= self.PER_BLOCK:
                b = self._take_free_block(node)
                if b is None:
                    raise ConfigError(f"out of host memory: {need} more pages wanted")
                self.used_pages[node] -= self.PER_BLOCK  # counted page by page below
                blk, nxt = b, 0
            k = min(self.PER_BLOCK - nxt, need)
            out.append(np.arange(blk * self.PER_BLOCK + nxt, blk * self.PER_BLOCK + nxt + k, dtype=np.uint64))
            self.used_pages[node] += k
            need -= k
            self.pcp[node] = (blk, nxt + k)
        return np.concatenate(out) * np.uint64(PAGE) if out else np.zeros(0, dtype=np.uint64)
