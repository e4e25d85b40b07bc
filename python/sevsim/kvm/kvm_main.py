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
                                            straddling it, a walk that stops at its first 2 MiB page
                                            without the attribute), kvm_mmu_invalidate_end()
  mutex_unlock(&kvm->slots_lock);
The xarray walks reach kernel data through the direct map (the pre-split TLB tax: engine
direct_map_walks); a share `attr_memory_bound` of the per-gfn cost waits on DRAM and is inflated
by the socket's loaded-latency factor beta (membw.rs).
"""

from __future__ import annotations


def kvm_mmu_lock_write(m, vm, t: float, cycles: float) -> float:
    """One KVM_MMU_LOCK write section of `cycles` requested at `t` (waits for readers admitted
    before it, writer-fair); its end moves mmu_invalidate_seq. Returns its end."""
    _, e = vm.mmu_lock.hold_for(t, cycles)
    if e > vm.inval_end:
        vm.inval_end = e
    return e


def kvm_vm_set_mem_attributes(m, vm, tid: int, t: float, ngfn: int) -> float:
    """KVM_SET_MEMORY_ATTRIBUTES(PRIVATE) of `ngfn` gfns from thread `tid`, requested at `t`
    (in time order: the caller's step starts here). Returns the time the ioctl returns."""
    c, host = m.c, m.host
    cpu, slow = m.cpu[tid], m.slow[tid]
    start = vm.slots_lock.acquire(t)
    x = start + c.attr_ioctl * slow
    m.sync(cpu, x)
    beta = host.memory_factor(cpu)
    per_gfn = c.attr_per_gfn * (1.0 - c.attr_memory_bound + c.attr_memory_bound * beta) * slow
    # the kernel objects the call touches through the direct map (xarray nodes, slab, memslots):
    # one walk each at its leaf size (the engine's direct_map_walks() charge, computed here from
    # the leaf sizes, which change only when a split happens)
    x += m.kernel_walk_cycles(ngfn, beta) * slow
    x += ngfn * per_gfn / 2                       # xa_reserve loop
    x = kvm_mmu_lock_write(m, vm, x, c.mmu_write_section * slow)  # pre_set: invalidate_begin, zap
    x += ngfn * per_gfn / 2                       # xa_store loop
    x = kvm_mmu_lock_write(m, vm, x, c.mmu_write_section * slow)  # post_set, invalidate_end
    vm.slots_lock.release(start, x)
    m.ctr.attr_gfns += ngfn
    return x
