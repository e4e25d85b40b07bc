"""guest_memfd faults of the SNP page-in (virt/kvm/guest_memfd.c, arch/x86/kvm/svm/sev.c
sev_gmem_prepare(), arch/x86/kvm/mmu/mmu.c kvm_tdp_mmu_page_fault(); snp-pagein.md 1.2 G4-H7,
1.3), one driver step per 2 MiB guest chunk, its engine work batched.

The guest PVALIDATEs the chunk at 2 MiB: the GPA is not in the NPT, so a #NPF; KVM's private
fault asks guest_memfd for the pfn: kvm_gmem_get_folio() allocates (in the 2024 era a PMD-order
folio first, else order 0; upstream order 0 only), clears it through the direct map
(clear_highpage() per 4 KiB, "uptodate" tracking), and sev_gmem_prepare() makes it private:
rmp_make_private(pfn, gpa, PG_LEVEL_2M or 4K) -> rmpupdate() -> adjust_direct_map() (the policy,
directmap.py). Then, under mmu_lock for read, is_page_fault_stale() (retry if
mmu_invalidate_seq moved since the fault began: with the per-VM attribute updates running back
to back nearly every 2 MiB fault retries once, cheaply, the folio now existing [INF], Roth
<20231103000105.m3z4eijcxlxciyzd@amd.com>), and the SPTE is mapped.
* 2 MiB folio: one RMPUPDATE (2 MiB entry), one 2 MiB SPTE, PVALIDATE 2 MiB succeeds.
* order 0: 4 KiB RMP entries and SPTEs; PVALIDATE 2 MiB returns FAIL_SIZEMISMATCH and the guest
  issues 512 PVALIDATEs of 4 KiB (T. Lendacky, tianocore/edk2 PR #12774), the 511 after the
  first each taking its own #NPF with its own order-0 folio, clear and RMPUPDATE.
Host writes near the new private 4 KiB pages (clearing the next order-0 page of the same host
2 MiB region) are made as engine accesses, so a policy that leaves a large mapping there takes
the RMP fault the hardware would raise.
"""

from __future__ import annotations

import numpy as np

HUGE = 2 << 20
K4 = 4096
N4 = HUGE // K4


def fault_in_range(m, vm, tid: int, t: float, gpa: int, n: int):
    """The 2 MiB guest chunks [gpa, gpa + n * 2 MiB), one after another on thread `tid` from `t`.
    A generator for the driver; its value (StopIteration) is the time after the last chunk.
    The thread yields once before the range, so that its faults are computed when the driver
    has reached their time: by then every mmu_lock writer asked for before them (the attribute
    updates of the VM's other vCPUs, which a saturated slots_lock computes far ahead) is known,
    and a fault's read section waits for it (without the yield no fault ever met a writer).
    Chunks that get a 2 MiB folio then run in that step, their engine work in one batch (the
    engine's clears need no time order, membw.rs; gmem_lock is not strict). Before an order-0
    chunk the thread yields again: that path takes cpa_lock and the engine's cpa_free_at,
    resources granted in call order, so it must run in simulated-time order."""
    k = 0
    yield t
    fresh = True          # nothing computed since the last yield
    while k < n:
        if m.gmem_huge:
            pas = []
            while k + len(pas) < n:
                pa = m.mem.alloc_huge(m.node[tid])
                if pa is None:
                    break
                pas.append(pa)
            if pas:
                j = len(pas)
                g = np.array(range(gpa + k * HUGE, gpa + (k + j) * HUGE, HUGE), dtype=np.uint64)
                t = _huge_chunks(m, vm, tid, t, np.array(pas, dtype=np.uint64), g)
                fresh = False
                k += j
                if k == n:
                    break
        if not fresh:
            yield t
        t = fault_in_chunk(m, vm, tid, t, gpa + k * HUGE)
        fresh = False
        k += 1
    return t


def _huge_chunks(m, vm, tid: int, t: float, pa: np.ndarray, g: np.ndarray) -> float:
    host, c = m.host, m.c
    cpu, slow = m.cpu[tid], m.slow[tid]
    k = len(pa)
    # the #NPF and the folio allocation, fixed costs (snp.npf_exit, snp.alloc_2m), charged with
    # the clock move-up in one call; then the clear, which the engine times against the socket
    fixed = k * (m.npf_exit + m.alloc_2m)
    d = int(t) - host.cycles(cpu)
    host.spend(cpu, int(fixed) + (d if d > 0 else 0))
    clear = host.clear_page_list(cpu, pa, "2M")
    # adjust_direct_map() returns at once for a 2 MiB RMP entry (every policy)
    host.rmpupdate_batch(cpu, pa, g, assigned=True, huge=True, asid=vm.asid)
    code, _ = host.pvalidate_batch(cpu, vm.asid, pa, g, huge=True)
    if any(code.tolist()):
        raise RuntimeError(f"PVALIDATE 2 MiB of a 2 MiB private folio returned {code.tolist()}")
    per = (fixed + clear + k * m.rmpupdate) * slow / k     # each RMPUPDATE costs snp.rmpupdate
    pv = k * m.pvalidate_2m * slow
    x = t
    for _ in range(k):
        t0 = x
        _, lock_t = vm.gmem_lock.hold_for(x, c.gmem_filemap * slow)
        x = max(x + per, lock_t)
        x = _map(m, vm, tid, t0, x, 1) + pv / k
    m.ctr.huge_chunks += k
    m.ctr.rmpupdates += k
    m.ctr.pvalidates += k
    m.ctr.npf += k
    vm.huge_bytes += k * HUGE
    return x


def fault_in_chunk(m, vm, tid: int, t: float, gpa: int) -> float:
    """The order-0 path of the 2 MiB guest chunk at `gpa` (module comment). Per host 2 MiB region
    of its pages, in the kernel's order: the first page is cleared and made private
    (adjust_direct_map() splitting the region under on_demand), then the region's other pages are
    cleared, through whatever mapping the direct map has by then, and made private."""
    host, c = m.host, m.c
    cpu, slow = m.cpu[tid], m.slow[tid]
    t0 = t
    m.sync(cpu, t)
    e0 = host.cycles(cpu)
    pa = m.mem.alloc_order0(m.node[tid], N4)
    g = np.uint64(gpa) + np.arange(N4, dtype=np.uint64) * np.uint64(K4)
    host.spend(cpu, int(N4 * (m.npf_exit + m.alloc_4k)))  # 512 #NPFs, 512 order-0 folios
    regions, first = np.unique(pa >> np.uint64(21), return_index=True)
    m.ctr.order0_regions += len(regions)
    head = np.zeros(N4, dtype=bool)
    head[first] = True
    # clearing the first page of each region: a host write there, which faults if the region
    # already holds a private 4 KiB page and the write goes through a large mapping
    host.access(cpu, pa[head], True, 0)
    host.clear_page_list(cpu, pa[head], "4K")
    x = t + (host.cycles(cpu) - e0) * slow
    x = m.policy.adjust(m, tid, x, pa[head])
    m.sync(cpu, x)
    e1 = host.cycles(cpu)
    host.rmpupdate_batch(cpu, pa[head], g[head], assigned=True, huge=False, asid=vm.asid)
    rest = ~head
    if rest.any():
        # the next clears in each region write next to a private page
        second = np.zeros(N4, dtype=bool)
        idx = np.nonzero(rest)[0]
        _, f2 = np.unique(pa[idx] >> np.uint64(21), return_index=True)
        second[idx[f2]] = True
        host.access(cpu, pa[second], True, 0)
        host.clear_page_list(cpu, pa[rest], "4K")
        host.rmpupdate_batch(cpu, pa[rest], g[rest], assigned=True, huge=False, asid=vm.asid)
    x += (host.cycles(cpu) - e1) * slow
    _, lock_t = vm.gmem_lock.hold_for(t, N4 * c.gmem_filemap * slow)
    x = max(x, lock_t)
    x = _map(m, vm, tid, t0, x, N4)
    m.sync(cpu, x)
    e2 = host.cycles(cpu)
    # the 2 MiB PVALIDATE meets 4 KiB RMP entries: FAIL_SIZEMISMATCH (APM vol. 3 PVALIDATE), then
    # 512 of 4 KiB (the engine's 2 MiB form wants a 2 MiB-aligned host page: charged, not run)
    host.spend(cpu, int(m.pvalidate_2m))
    code, _ = host.pvalidate_batch(cpu, vm.asid, pa, g, huge=False)
    if code.any():
        raise RuntimeError(f"PVALIDATE 4 KiB failed with code {int(code[code != 0][0])}")
    x += (host.cycles(cpu) - e2) * slow
    m.ctr.fallback_chunks += 1
    m.ctr.rmpupdates += N4
    m.ctr.pvalidates += N4 + 1
    m.ctr.npf += N4
    return x


def _map(m, vm, tid: int, t_fault: float, x: float, n: int) -> float:
    """mmu_lock read, is_page_fault_stale(), map `n` SPTEs. A fault that began before the last
    MMU invalidation ended retries once (an extra #NPF round trip and gmem lookup)."""
    c, slow = m.c, m.slow[tid]
    if vm.inval_ends.moved(t_fault, x):
        m.ctr.npf_retries += 1
        m.ctr.npf += 1
        x += (m.npf_exit + c.gmem_filemap) * slow
    _, e = vm.mmu_lock.read_for(x, c.npf_map * slow)
    return e + (n - 1) * c.npf_map * slow
