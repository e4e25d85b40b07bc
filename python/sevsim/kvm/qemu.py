"""QEMU's side of a guest page-state change (accel/kvm/kvm-all.c kvm_convert_memory(), the
thread's SNP branch handling KVM_EXIT_VMGEXIT for a PSC; snp-pagein.md 1.2 H1, H3):

  KVM's PSC handler exits to userspace; the vCPU thread calls kvm_convert_memory(gpa, size,
  to_private): KVM_SET_MEMORY_ATTRIBUTES (kvm_main.py), then, for to-private,
  ram_block_discard_range() on the shared memfd: fallocate(FALLOC_FL_PUNCH_HOLE) ->
  shmem_fallocate() under the inode lock -> unmap_mapping_range() -> the MMU notifier's
  invalidate_range_start/end, each a KVM_MMU_LOCK write section (nothing mapped: no remote
  flush; SNP skips WBINVD here: "Avoid WBINVD for HVA-based MMU notifications for SNP"), then
  madvise(MADV_DONTNEED) with its own notifier pair; then back into KVM_RUN.
No BQL: kvm_arch_handle_exit() calls the VMGEXIT handler without bql_lock() (only the HLT, TPR and
debug cases take it), and kvm_cpu_exec() drops the BQL before the run loop (QEMU 195801d700c0, Jan
2024; Roth's QEMU SNP v3 34/49 <20240320083945.991426-35-michael.roth@amd.com>; the Jan 2024 AMD
branch itself was not found, assumed the same).
"""

from __future__ import annotations

from .kvm_main import kvm_mmu_lock_write, kvm_vm_set_mem_attributes


def psc_exit_to_userspace(m, tid: int, t: float) -> float:
    """The guest's VMGEXIT for a PSC, KVM's handler and the exit to QEMU: time after it."""
    c = m.c
    m.ctr.psc += 1
    return t + (m.world_switch + c.psc_exit + c.userspace_roundtrip / 2) * m.slow[tid]


def kvm_convert_memory(m, vm, tid: int, t: float, unit: int, nunits: int) -> float:
    """kvm_convert_memory(to_private) of the guest's 2 MiB units [unit, unit + nunits), requested
    at `t` (one call per contiguous run of the PSC: QEMU's next_contig_gpa_range(), Roth's QEMU SNP
    v3 34/49 <20240320083945.991426-35-michael.roth@amd.com>); returns when QEMU is back in
    KVM_RUN and the guest resumes."""
    c, slow = m.c, m.slow[tid]
    x = kvm_vm_set_mem_attributes(m, vm, tid, t, unit, nunits)
    x = ram_block_discard_range(m, vm, tid, x)
    # back into KVM_RUN; the VMRUN is in the world switch charged at the exit (tlb.world_switch is
    # the round trip, VMRUN to after #VMEXIT)
    return x + c.userspace_roundtrip / 2 * slow


def ram_block_discard_range(m, vm, tid: int, t: float) -> float:
    """QEMU's ram_block_discard_range() (system/physmem.c) on the memfd-backed RAM block:
    fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE) (need_fallocate: rb->fd != -1), then,
    the block using the host page size (need_madvise), madvise(MADV_DONTNEED) on QEMU's mapping.
    Each zaps the range in QEMU's page tables, so each runs the MMU notifier's
    invalidate_range_start/end: two KVM_MMU_LOCK write sections each."""
    c, slow = m.c, m.slow[tid]
    start = vm.shmem_lock.acquire(t)                                 # shmem_fallocate(): inode_lock()
    x = start + c.shmem_discard / 2 * slow
    x = kvm_mmu_lock_write(m, vm, x, c.mmu_write_section * slow)   # invalidate_range_start
    x += c.shmem_discard / 2 * slow
    x = kvm_mmu_lock_write(m, vm, x, c.mmu_write_section * slow, ends_invalidation=True)  # invalidate_range_end
    vm.shmem_lock.release(start, x)
    x += c.madvise_dontneed / 2 * slow                               # madvise(): mmap_lock for read
    x = kvm_mmu_lock_write(m, vm, x, c.mmu_write_section * slow)
    x += c.madvise_dontneed / 2 * slow
    return kvm_mmu_lock_write(m, vm, x, c.mmu_write_section * slow, ends_invalidation=True)
