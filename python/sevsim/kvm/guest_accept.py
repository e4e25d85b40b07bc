"""The SNP guest's lazy acceptance, as a stress workload faults its memory in (guest kernel 6.6/6.7
with Kirill Shutemov's parallel-acceptance fix 50e782a86c98; snp-pagein.md 1.1, 1.2 G1-G5).
Guest code, modelled because its ordering decides what the host sees.

* mm/page_alloc.c: a zone below its high watermark takes the first 4 MiB (MAX_ORDER) block off
  zone->unaccepted_pages (try_to_accept_memory_one()) and accepts it (accept_page()).
  The list was filled at boot by deferred struct-page init, which runs one thread per CPU of the
  node (deferred_page_init_max_threads(), mm/mm_init.c deferred_init_memmap()) through
  padata_do_multithreaded() (kernel/padata.c, 6.6): at most size / section threads, chunks of
  size / (4 * threads) rounded up to a memory section (the job's align and min_chunk are
  PAGES_PER_SECTION: 128 MiB on x86-64), each thread appending its chunk's blocks in ascending order
  (__free_unaccepted(): list_add_tail): the list interleaves those runs (`unaccepted_order`;
  the interleaving is random with a seeded RNG [assumed]).
* drivers/firmware/efi/unaccepted_memory.c accept_memory(): the range grows by one 2 MiB unit
  when its end is unit-aligned (the load_unaligned_zeropad() guard), so a 4 MiB block's range is
  three units; under unaccepted_memory_lock the range is checked against accepting_list, and a
  vCPU whose range overlaps one in flight drops the lock and retries (spinning, IRQs off) until
  it is gone (here: it blocks until that acceptance ends). Then each run of still-unaccepted
  units is accepted: snp_accept_memory() -> a PSC to private (2 MiB entries) -> pvalidate_pages().
* The stress workers then fault the accepted memory in, 4 KiB at a time (`guest_fault`), and
  their clears and write-backs load the socket's DRAM (`guest_clear_bytes`).
"""

from __future__ import annotations

import numpy as np

from .gmem import HUGE, fault_in_range
from .qemu import kvm_convert_memory, psc_exit_to_userspace

BLOCK = 4 << 20          # MAX_ORDER block
SECTION_BLOCKS = (128 << 20) // BLOCK   # PAGES_PER_SECTION (x86-64 SECTION_SIZE_BITS 27) in blocks
UNIT = HUGE              # the EFI unaccepted-memory unit (2 MiB)


def unaccepted_order(nblocks: int, nthreads: int, rng: np.random.Generator) -> np.ndarray:
    """zone->unaccepted_pages after deferred init (module comment): block numbers in list order."""
    # padata_do_multithreaded(): nworks = min(size / max(min_chunk, align), max_threads);
    # chunk_size = roundup(max(size / (nworks * 4), min_chunk), align), both a section
    nthreads = max(1, min(nthreads, nblocks // SECTION_BLOCKS))
    chunk = max(nblocks // (4 * nthreads), SECTION_BLOCKS)
    chunk = -(-chunk // SECTION_BLOCKS) * SECTION_BLOCKS
    chunks = -(-nblocks // chunk)
    # chunks handed to the threads in turn; each thread appends its chunks' blocks in order
    owner = np.arange(nblocks) // chunk % nthreads
    seq = np.zeros(nblocks, dtype=np.float64)
    for th in range(min(nthreads, chunks)):
        idx = np.nonzero(owner == th)[0]
        seq[idx] = np.arange(len(idx))
    key = seq + rng.random(nblocks)
    return np.argsort(key, kind="stable").astype(np.int64)


class GuestAcceptance:
    """One guest's acceptance state: the unaccepted list, the accepted units, the blocks in flight
    and who waits on them."""

    def __init__(self, memory: int, vcpus: int, rng: np.random.Generator):
        self.nblocks = -(-memory // BLOCK)
        self.nunits = -(-memory // UNIT)
        self.order = unaccepted_order(self.nblocks, vcpus, rng)
        self.pos = 0
        self.accepted = np.zeros(self.nunits, dtype=bool)
        # until[b + 1]: when block b's acceptance ends (inf while in flight and not yet known, 0 before it
        # is taken); sentinels at both ends
        self.until = np.zeros(self.nblocks + 2, dtype=np.float64)
        self.waiters: dict[int, list[int]] = {}

    def take(self) -> int | None:
        if self.pos >= self.nblocks:
            return None
        b = int(self.order[self.pos])
        self.pos += 1
        return b

    def blocker(self, b: int, now: float) -> tuple[int, float] | None:
        """An acceptance in flight at `now` whose range overlaps block b's (its neighbours: ranges
        are 3 units): (block, when it ends, inf if not known yet)."""
        u = self.until
        if u[b] > now:          # b - 1
            return b - 1, float(u[b])
        if u[b + 2] > now:      # b + 1
            return b + 1, float(u[b + 2])
        return None

    def runs(self, b: int) -> list[tuple[int, int]]:
        """Runs (first unit, count) of still-unaccepted units in block b's range (with the guard)."""
        lo, hi = 2 * b, min(2 * b + 3, self.nunits)
        out: list[tuple[int, int]] = []
        u = lo
        while u < hi:
            if self.accepted[u]:
                u += 1
                continue
            v = u
            while v < hi and not self.accepted[v]:
                v += 1
            out.append((u, v - u))
            u = v
        return out


def vcpu_thread(m, vm, tid: int, driver):
    """One vCPU of `vm` paging in until its guest has accepted all its memory."""
    c, g = m.c, vm.guest
    cpu = m.cpu[tid]
    t = 0.0
    while True:
        t += m.debt(tid)
        b = g.take()                                      # zone->lock: in time order
        if b is None:
            return
        t += c.guest_accept * m.slow[tid]
        while (w := g.blocker(b, t)) is not None:         # accepting_list overlap: wait for it
            m.ctr.neighbour_waits += 1
            if w[1] == np.inf:                            # its end is not computed yet: woken then
                g.waiters.setdefault(w[0], []).append(tid)
                yield None
                t = max(t, driver.now)
            else:
                t = w[1]
                yield t
        g.until[b + 1] = np.inf
        runs = g.runs(b)
        done_units = 0
        for u, n in runs:
            g.accepted[u:u + n] = True                    # bits cleared as accepted (this range is ours)
        for u, n in runs:
            # the slots_lock request follows the block's take (a step start, in time order) by the
            # few microseconds of the exit; not a step of its own
            t = psc_exit_to_userspace(m, tid, t)
            t = kvm_convert_memory(m, vm, tid, t, u, n)
            t = yield from fault_in_range(m, vm, tid, t, u * UNIT, n)
            done_units += n
        g.until[b + 1] = t                                # the acceptance ends: others see it at this time
        for w in g.waiters.pop(b, ()):
            driver.wake(w, t)
        if done_units:
            nbytes = done_units * UNIT
            # stress touches what was accepted: guest faults and clears, DRAM traffic
            m.sync(cpu, t)
            m.host.add_memory_traffic(cpu, int(nbytes * c.guest_clear_bytes))
            t_acc = t
            t += nbytes // 4096 * c.guest_fault * m.slow[tid]
            vm.accepted_bytes += nbytes
            vm.finish = max(vm.finish, t_acc)
        yield t
