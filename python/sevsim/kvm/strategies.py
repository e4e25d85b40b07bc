"""Cache-maintenance strategies for SEV guest memory: the code before and after each patch in seed
threads 1 and 2, behind one protocol, chosen by name.

Each strategy answers the places KVM must get dirty guest-key lines out of the caches before a page
goes back to the host (semantics.md 1.7):
- `unregister_region(kvm, vm, initiator)`: what `sev_mem_enc_unregister_region()` flushes before it
  unpins (the whole-cache strategies: the kernel's `sev_writeback_caches()`);
- `writeback_caches(kvm, vm, initiator)`: the whole-VM write-back of `sev_writeback_caches()`
  (newest kernels) or `wbinvd_on_all_cpus()` (older), also run by `sev_vm_destroy()` in older kernels;
- `reclaim(kvm, vm, initiator, pages, hva_mapped)`: `sev_guest_memory_reclaimed()`, the MMU-notifier
  hook run after the invalidated range was zapped and TLBs flushed (virt/kvm/kvm_main.c), before mm
  frees the pages; `pages` is an array of physical addresses, `hva_mapped` whether each page's
  userspace mapping still exists when the hook runs (an array, or one bool for all).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from .sev import Kvm, SevVm

PAGE = 4096


class CacheStrategy:
    """The protocol. Subclasses set `name`, `summary` and `models` (what kernel code they model)."""

    name = ""
    summary = ""
    models = ""
    #: whether sev_vm_destroy() itself flushes (before 7e00013bd339 it ran wbinvd_on_all_cpus())
    flush_on_destroy = False
    #: whether a correct implementation is expected to be safe on this host (None: always)
    needs_sme_coherent = False

    def writeback_caches(self, kvm: "Kvm", vm: "SevVm", initiator: int) -> None:
        raise NotImplementedError

    def unregister_region(self, kvm: "Kvm", vm: "SevVm", initiator: int) -> None:
        """sev_mem_enc_unregister_region(): sev_writeback_caches() before the unpin."""
        self.writeback_caches(kvm, vm, initiator)

    def reclaim(self, kvm: "Kvm", vm: "SevVm", initiator: int, pages: np.ndarray,
                hva_mapped: np.ndarray | bool = True) -> None:
        self.writeback_caches(kvm, vm, initiator)

    def page_flush_fallback(self, kvm: "Kvm", vm: "SevVm", initiator: int) -> None:
        """What sev_flush_encrypted_page() does when the VM_PAGE_FLUSH WRMSR faults: since 6.17
        sev_writeback_caches(), WBNOINVD on have_run_cpus (arch/x86/kvm/svm/sev.c). Strategies that
        model older kernels override it."""
        kvm.host.wbnoinvd_on_cpus(initiator, sorted(vm.have_run_cpus))

    def describe(self) -> str:
        return f"{self.name}: {self.summary} ({self.models})"


class WbinvdAll(CacheStrategy):
    name = "wbinvd_all"
    summary = "WBINVD on every CPU, at unregister, reclaim and destroy"
    models = ("Linux before 6.17: wbinvd_on_all_cpus() in sev_mem_enc_unregister_region(), sev_vm_destroy() "
              "and sev_guest_memory_reclaimed() (CVE-2022-0171 fix 683412ccf612)")
    flush_on_destroy = True

    def writeback_caches(self, kvm, vm, initiator):
        kvm.host.wbinvd_on_cpus(initiator, range(kvm.host.cpu_count))

    def page_flush_fallback(self, kvm, vm, initiator):
        # before a77896eea33d the fallback was wbinvd_on_all_cpus()
        self.writeback_caches(kvm, vm, initiator)


class WbnoinvdAll(CacheStrategy):
    name = "wbnoinvd_all"
    summary = "WBNOINVD on every CPU: writes back, keeps every cache's contents"
    models = ("'KVM: SEV: Prefer WBNOINVD over WBINVD for cache maintenance efficiency' (a77896eea33d) "
              "alone, with the destroy-time flush removed (7e00013bd339)")

    def writeback_caches(self, kvm, vm, initiator):
        kvm.host.wbnoinvd_on_cpus(initiator, range(kvm.host.cpu_count))

    def page_flush_fallback(self, kvm, vm, initiator):
        # a77896eea33d: sev_writeback_caches() = wbnoinvd_on_all_cpus(), before the have_run_cpus mask
        self.writeback_caches(kvm, vm, initiator)


class WbnoinvdRanCpus(CacheStrategy):
    name = "wbnoinvd_ran_cpus"
    summary = "WBNOINVD on the CPUs that ever ran the VM (have_run_cpus)"
    models = ("Linux 6.17+: sev_writeback_caches() = wbnoinvd_on_cpus_mask(sev->have_run_cpus) "
              "(6f38f8c57464, a77896eea33d; arch/x86/kvm/svm/sev.c)")

    def writeback_caches(self, kvm, vm, initiator):
        # KVM relies on the range being unmapped and TLB-flushed first: a CPU added to the mask
        # later cannot hold lines of it (semantics.md 1.7.2)
        kvm.host.wbnoinvd_on_cpus(initiator, sorted(vm.have_run_cpus))


class ClflushoptHva(CacheStrategy):
    name = "clflushopt_hva"
    summary = "CLFLUSHOPT each reclaimed page through its userspace mapping; skipped when the mapping is gone"
    models = ("AMD's proposal in 'KVM: gmem: protect kvm_mmu_invalidate_end()' (Aug 2023): flush the "
              "invalidated pages instead of WBINVD; needs a valid HVA, which invalidate_range_start() cannot "
              "guarantee")
    needs_sme_coherent = True  # a host-key CLFLUSH reaches guest-key lines only on SME_COHERENT parts

    def unregister_region(self, kvm, vm, initiator):
        # a per-page strategy flushes a page where it is freed: unpinning frees nothing (the pages
        # stay mapped and the guest's until the mm releases them, through reclaim())
        pass

    def reclaim(self, kvm, vm, initiator, pages, hva_mapped=True):
        pages = np.asarray(pages, dtype=np.uint64)
        if hva_mapped is not True:
            # no virtual address to flush through where the mapping is gone: those dirty lines stay
            # (the thread's warning)
            pages = pages[np.broadcast_to(np.asarray(hva_mapped, dtype=bool), pages.shape)]
        kvm.host.clflushopt_ranges(initiator, *kvm.runs(pages), key=0)


class ClflushoptPfn(ClflushoptHva):
    """As ClflushoptHva, but a reclaim needs no mapping: it flushes every page, by PFN."""

    name = "clflushopt_pfn"
    summary = "CLFLUSHOPT each reclaimed page through the direct map, by PFN (guest_memfd gives PFNs)"
    models = ("the guest_memfd/UPM answer in the same thread; what sev_gmem_invalidate() does for SNP: "
              "clflush_cache_range(__va(pfn), ...) (arch/x86/kvm/svm/sev.c)")

    def reclaim(self, kvm, vm, initiator, pages, hva_mapped=True):
        kvm.host.clflushopt_ranges(initiator, *kvm.runs(pages), key=0)


class VmPageFlush(CacheStrategy):
    name = "vm_page_flush"
    summary = "VM_PAGE_FLUSH (MSR 0xC001011E) of each page with the guest's ASID; WBNOINVD on ran CPUs on #GP"
    models = ("sev_flush_encrypted_page() (arch/x86/kvm/svm/sev.c), used upstream for the VMSA only, "
              "applied here to every reclaimed page")

    def unregister_region(self, kvm, vm, initiator):
        pass  # as ClflushoptHva: the pages are flushed where they are freed, in reclaim()

    def reclaim(self, kvm, vm, initiator, pages, hva_mapped=True):
        self._flush(kvm, vm, initiator, np.asarray(pages, dtype=np.uint64))

    def _flush(self, kvm, vm, initiator, pas):
        # one WRMSR per page, in one call into the engine
        if not kvm.host.vm_page_flush_pages(initiator, pas, vm.asid):
            # wrmsrq_safe() failed: WARN_ONCE and fall back (sev_flush_encrypted_page)
            self.page_flush_fallback(kvm, vm, initiator)


class NoFlush(CacheStrategy):
    name = "none"
    summary = "no cache maintenance at all (deliberately broken, for the oracle)"
    models = "no kernel: a policy that forgets the write-back"

    def writeback_caches(self, kvm, vm, initiator):
        pass

    def reclaim(self, kvm, vm, initiator, pages, hva_mapped=True):
        pass


STRATEGIES: dict[str, type[CacheStrategy]] = {
    s.name: s for s in (WbinvdAll, WbnoinvdAll, WbnoinvdRanCpus, ClflushoptHva, ClflushoptPfn, VmPageFlush, NoFlush)
}


def get_strategy(name: str) -> CacheStrategy:
    try:
        return STRATEGIES[name]()
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; valid: {', '.join(STRATEGIES)}") from None
