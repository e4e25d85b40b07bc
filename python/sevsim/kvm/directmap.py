"""The host direct map around private pages: what rmpupdate() does to it before making a page
private, as three policies (the scenario's strategies).

SNP checks a host write at the page size of the translation it used (APM vol. 2, 15.36.10 RMP
checks): a write through a 2 MiB/1 GiB direct-map entry into a 2 MiB region holding any private
4 KiB page faults, even if the byte written is not in that page (seeds.md 5). So before a 4 KiB
page becomes private the 2 MiB (and 1 GiB) mapping over it must be split.

* `presplit`: the direct map is built at 4 KiB from boot (the v1 series / debug_pagealloc
  layout): nothing to do at run time, every direct-map access pays a 4 KiB walk (membw.rs).
* `on_demand`: adjust_direct_map() of the SNP host series v2 (tip 661b1c6169e2,
  <20240126041126.1927228-12-michael.roth@amd.com>, arch/x86/virt/svm/sev.c), called by
  rmpupdate() for pages made private: returns at once for a 2 MiB RMP entry ("RMP checks are
  done at 4K/2M granularity"), and when lookup_address() finds the mapping already 4 KiB;
  otherwise set_memory_4k() splits it under the global cpa_lock with flush_tlb_all()
  (arch/x86/mm/pat/set_memory.c __split_large_page()). Splits are never undone.
* `never`: deliberately broken: leaves the large mappings, so host writes near private 4 KiB
  pages take RMP faults (a test must catch it).
"""

from __future__ import annotations

import numpy as np

from .sev import ConfigError

K4 = 4096


class DirectMapPolicy:
    name = ""
    splits_on_demand = False

    def at_boot(self, m) -> None:
        """Set-up before any CPU runs."""

    def adjust(self, m, tid: int, t: float, pa: np.ndarray) -> float:
        """adjust_direct_map() for 4 KiB pages `pa` about to become private, on thread `tid` at
        time `t`: returns the time after it."""
        return t


class Presplit(DirectMapPolicy):
    name = "presplit"

    def at_boot(self, m) -> None:
        m.host.direct_map_presplit()  # boot-time, free: no CPA, no flush


class OnDemand(DirectMapPolicy):
    name = "on_demand"
    splits_on_demand = True

    def adjust(self, m, tid: int, t: float, pa: np.ndarray) -> float:
        host = m.host
        if len(pa) == 0:
            return t
        # lookup_address(): only the mappings not yet 4 KiB, one per host 2 MiB region
        sizes = host.direct_map_leaf_sizes(pa)
        big = pa[sizes != K4]
        if len(big) == 0:
            return t
        _, first = np.unique(big >> np.uint64(21), return_index=True)
        cpu, slow = m.cpu[tid], m.slow[tid]
        alloc = m.alloc_4k
        for a in big[np.sort(first)]:
            # cpa_lock (global): granted in time order; the engine does the split, fill and flush
            start = m.cpa_lock.acquire(t)
            m.sync(cpu, start)
            e0 = host.cycles(cpu)
            # the engine waits for its own cpa_free_at; our lock already ordered the CPAs
            engine_wait = max(0.0, m.engine_cpa_free - (e0 + alloc))
            cyc, splits = host.set_memory_4k_batch(cpu, np.array([a], dtype=np.uint64), flush=m.flush)
            m.engine_cpa_free = host.cycles(cpu)
            n = int(splits[0])
            # the holder's own work (page-table page, 512-entry fill) runs at its slowed speed;
            # the flush's wait for the other CPUs' acknowledgements does not
            own = n * (alloc + m.split_fill)
            hold = max(0.0, cyc - engine_wait - own) + own * slow
            m.cpa_lock.release(start, start + hold)
            m.ctr.splits += n
            if m.flush == "ipi":
                m.ctr.flushes += n
            t = start + hold
        return t


class Never(DirectMapPolicy):
    name = "never"


POLICIES = {p.name: p for p in (Presplit, OnDemand, Never)}


def get_policy(name: str) -> DirectMapPolicy:
    try:
        return POLICIES[name]()
    except KeyError:
        raise ConfigError(f"direct-map policy {name!r} is not one of {', '.join(POLICIES)}") from None
