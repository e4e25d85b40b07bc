"""virt/kvm/kvm_main.c for the SNP page-in: KVM_SET_MEMORY_ATTRIBUTES, the per-VM serial section
every page-state change goes through (snp-pagein.md 1.2 H2, 1.5).

kvm_vm_set_mem_attributes() (6.8, the kvm-coco-queue of the thread):
  mutex_lock(&kvm->slots_lock);
  kvm_range_has_memory_attributes()      -- returns at the first gfn for shared -> private
  for each gfn: xa_reserve()             -- attr_per_gfn / 2 each [P5]
  kvm_handle_gfn_range(pre_set_range)    -- KVM_MMU_LOCK (write): kvm_mmu_invalidate_begin(),
                                            kvm_arch_pre_set_memory_attributes() -> kvm_unmap_gfn_range();
                                            flush_on_ret: kvm_flush_remote_tlbs() only if a present SPTE
                                            was zapped (never, for never-touched memory)
  for each gfn: xa_store()               -- attr_per_gfn / 2 each [P5]
  kvm_handle_gfn_range(post_set_range)   -- KVM_MMU_LOCK (write): kvm_arch_post_set_memory_attributes()
                                            (arch/x86/kvm/mmu/mmu.c: hugepage_clear_mixed() for 2 MiB
                                            pages inside the range; hugepage_has_attrs() for the 1 GiB page
                                            straddling it (and the next one if the range crosses into it),
                                            a walk from the GiB's start that stops at its first 2 MiB page
                                            without the attribute: per page walked, attr_1g_scan_step plus
                                            one DRAM miss for its xa_load's leaf node (8 leaf nodes per
                                            2 MiB: each step reads another, written by another vCPU's
                                            conversion [INF]), so it depends on how much of the GiB is
                                            private already),
                                            kvm_mmu_invalidate_end()
  mutex_unlock(&kvm->slots_lock);
If the range has the attributes already (RAM private from the start, QEMU 9.0's bd3bcf6962b6: the
upstream era), the call ends after kvm_range_has_memory_attributes(): attr_check_per_gfn per gfn.
The xarray walks reach kernel data through the direct map (the pre-split TLB tax: engine
direct_map_walks); a share `attr_memory_bound` of the per-gfn cost waits on DRAM and is inflated
by the socket's loaded-latency factor beta (membw.rs).
"""

from __future__ import annotations

import numpy as np

from ..sim import TimeMarks


def kvm_mmu_lock_write(m, vm, t: float, cycles: float, *, ends_invalidation: bool = False) -> float:
    """One KVM_MMU_LOCK write section of `cycles` requested at `t` (waits for readers admitted
    before it, writer-fair). If it is a kvm_mmu_invalidate_end() (the attribute update's
    post_set, the notifier's invalidate_range_end), its end moves mmu_invalidate_seq
    (virt/kvm/kvm_main.c, 6.8): recorded in vm.inval_ends. Returns its end."""
    _, e = vm.mmu_lock.hold_for(t, cycles)
    if ends_invalidation:
        vm.inval_ends.add(e)
    return e


class InvalidationEnds(TimeMarks):
    """When a VM's mmu_invalidate_seq moved: the ends of its invalidations, sorted (they are
    computed out of time order: a saturated slots_lock computes its holders' sections ahead).
    A fault retries if the sequence moved between its start and its check under mmu_lock
    (is_page_fault_stale() -> mmu_invalidate_retry_gfn(), arch/x86/kvm/mmu/mmu.c, 6.8): `moved`."""

    __slots__ = ()


def kvm_vm_set_mem_attributes(m, vm, tid: int, t: float, unit: int, nunits: int) -> float:
    """KVM_SET_MEMORY_ATTRIBUTES(PRIVATE) of the guest's 2 MiB units [unit, unit + nunits) from
    thread `tid`, requested at `t` (in time order: the caller's step starts here). Returns the
    time the ioctl returns."""
    c, host = m.c, m.host
    cpu, slow = m.cpu[tid], m.slow[tid]
    ngfn = nunits * GFNS_PER_UNIT
    start = vm.slots_lock.acquire(t)
    x = start + c.attr_ioctl * slow
    if m.private_at_start:
        # "Nothing to do if the entire range has the desired attributes" (kvm_vm_set_mem_attributes)
        x += ngfn * c.attr_check_per_gfn * slow
        vm.slots_lock.release(start, x)
        m.ctr.attr_noop_calls += 1
        return x
    # DRAM load is read at the request's time, the driver's present, whose windows hold the
    # traffic computed so far; at the grant time (up to ~27 ms ahead with a saturated slots_lock)
    # the windows would still be empty and beta always 1
    m.sync(cpu, t)
    beta = host.memory_factor(cpu)
    per_gfn = c.attr_per_gfn * (1.0 - c.attr_memory_bound + c.attr_memory_bound * beta) * slow
    # the kernel objects the call touches through the direct map (xarray nodes, slab, memslots):
    # one walk each at its leaf size (the engine's direct_map_walks() charge, computed here from
    # the leaf sizes, which change only when a split happens)
    x += m.kernel_walk_cycles(ngfn, beta) * slow
    x += ngfn * per_gfn / 2                       # xa_reserve loop
    x = kvm_mmu_lock_write(m, vm, x, c.mmu_write_section * slow)  # pre_set: invalidate_begin, zap
    x += ngfn * per_gfn / 2                       # xa_store loop
    steps = hugepage_1g_steps(vm.guest.accepted, unit, nunits)
    m.ctr.attr_1g_steps += steps
    # post_set: the mixed tracking with its 1 GiB walk, invalidate_end
    step = c.attr_1g_scan_step + c.mem_latency * beta
    x = kvm_mmu_lock_write(m, vm, x, (c.mmu_write_section + steps * step) * slow, ends_invalidation=True)
    vm.slots_lock.release(start, x)
    m.ctr.attr_gfns += ngfn
    return x


GFNS_PER_UNIT = 512
UNITS_PER_GIB = 512


def hugepage_1g_steps(private: np.ndarray, unit: int, nunits: int) -> int:
    """Steps of hugepage_has_attrs() at 1 GiB for a range of 2 MiB units just made private
    (`private` marks the guest's private units, the range's included): for the GiB holding the
    range's head, and the one holding its tail if different, the walk from the GiB's start up to
    and including its first 2 MiB page that is not private (all 512 if none)."""
    n = 0
    last = unit + nunits - 1
    for lo in {unit // UNITS_PER_GIB * UNITS_PER_GIB, last // UNITS_PER_GIB * UNITS_PER_GIB}:
        g = private[lo:lo + UNITS_PER_GIB]
        if len(g) < UNITS_PER_GIB:
            continue  # a GiB the memslot does not cover whole: no hugepage tracking at 1 GiB
        k = int(np.argmin(g))
        n += UNITS_PER_GIB if g[k] else k + 1
    return n
