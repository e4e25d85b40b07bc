//! Memory-bound host work at scale: page clearing through the direct map and the page walks it
//! pays there (the direct-map TLB tax), kernel data reached through the direct map, DRAM bandwidth
//! shared per socket with a utilisation-dependent slow-down, and batch forms of the page-in
//! primitives (semantics.md 5.4; snp-pagein.md 1.5-1.7, 3.3 items 6, 8 and 9).
//!
//! * **Direct-map walks.** Host code reaches a page through __va(): a 4 KiB direct-map leaf needs
//!   its own TLB entry per page, a 2 MiB or 1 GiB leaf one per leaf. Work that sweeps fresh pages
//!   (clear_page() of a new folio) or scattered kernel objects misses the TLB once per distinct
//!   leaf it meets; the engine charges exactly that, without filling TLBs (so 512-CPU flushes stay
//!   cheap to simulate): `snp.dm_walk_4k` for a walk ending at a 4 KiB leaf (its PTE lives in 3 GiB
//!   of page-table pages on a split 1.5 TiB host, often in DRAM [assumed]) and `tlb.walk_native`
//!   for a 2 MiB/1 GiB one (upper levels, in the page-walk caches). Pre-splitting therefore has a
//!   price. No reuse across calls is assumed [assumed].
//! * **Bandwidth.** Each socket's DRAM moves at most `snp.socket_clear_gbps`: per window of
//!   `snp.bw_window` cycles it has that many bytes of capacity, and every byte the engine counts
//!   (clears, `add_memory_traffic`) takes some. A clear moves its bytes at the core's rate from its
//!   CPU's clock on, window by window, each window giving it at most the capacity left there; a
//!   full window stalls it to the next (a fluid share of the socket [assumed], not a FIFO: two
//!   clears at once each get what is left, and a call issued after another but earlier in simulated
//!   time is not queued behind it: calls need not be issued in time order). The recent utilisation
//!   rho (bytes in the CPU's window and the one before over two windows' capacity) inflates memory
//!   latency by beta = 1 + a * rho / (1 - rho), a = `snp.dram_queueing`, rho capped at 0.95
//!   [assumed: an M/M/1-shaped loaded-latency curve, latency about doubling at 80% utilisation with
//!   a = 0.3]. A single core's clear rate is latency-bound, so it falls by beta; walks to DRAM and
//!   work the caller marks memory-bound cost beta times more. Windows live in a ring of 64 per
//!   socket: bytes of a window 64 or more behind the newest one written are not counted.

use crate::error::{EngineError, Result};
use crate::host::Host;
use crate::paging::PageSize;

pub const BW_WINDOWS: usize = 64;

/// Per socket: (window number, bytes) for the last BW_WINDOWS windows.
#[derive(Clone, Debug)]
pub struct SocketTraffic {
    ring: Vec<[(u64, f64); BW_WINDOWS]>,
}

impl SocketTraffic {
    pub fn new(sockets: usize) -> Self {
        SocketTraffic { ring: vec![[(u64::MAX, 0.0); BW_WINDOWS]; sockets] }
    }

    fn add(&mut self, s: usize, w: u64, bytes: f64) {
        let slot = &mut self.ring[s][(w % BW_WINDOWS as u64) as usize];
        if slot.0 == u64::MAX || slot.0 < w {
            *slot = (w, 0.0);
        } else if slot.0 > w {
            return; // a window the ring has already reused for a newer one: forgotten
        }
        slot.1 += bytes;
    }

    fn bytes(&self, s: usize, w: u64) -> f64 {
        let slot = self.ring[s][(w % BW_WINDOWS as u64) as usize];
        if slot.0 == w {
            slot.1
        } else {
            0.0
        }
    }
}

impl Host {
    #[inline]
    fn socket_of(&self, cpu: usize) -> usize {
        self.topo.ccd_socket[self.topo.ccd_of_cpu(cpu)] as usize
    }

    fn window(&self, cpu: usize) -> u64 {
        self.cycles(cpu) / self.cfg.snp.bw_window.max(1) as u64
    }

    /// Socket utilisation seen by `cpu` now: bytes moved in this window and the previous one over
    /// what the socket can move in two windows (socket_clear_gbps), in [0, 0.95].
    pub fn socket_utilisation(&self, cpu: usize) -> Result<f64> {
        self.check_cpu("cpu", cpu)?;
        Ok(self.utilisation(cpu))
    }

    fn utilisation(&self, cpu: usize) -> f64 {
        let s = self.socket_of(cpu);
        let w = self.window(cpu);
        let bytes = self.traffic.bytes(s, w) + if w > 0 { self.traffic.bytes(s, w - 1) } else { 0.0 };
        let cap = 2.0 * self.cfg.snp.bw_window as f64 * self.cfg.snp.socket_clear_gbps / self.cfg.freq_ghz;
        (bytes / cap).clamp(0.0, 0.95)
    }

    /// The memory-latency factor beta on `cpu`'s socket now (module comment).
    pub fn memory_factor(&self, cpu: usize) -> Result<f64> {
        self.check_cpu("cpu", cpu)?;
        Ok(self.beta(cpu))
    }

    fn beta(&self, cpu: usize) -> f64 {
        let rho = self.utilisation(cpu);
        1.0 + self.cfg.snp.dram_queueing * rho / (1.0 - rho)
    }

    /// Count `bytes` of DRAM traffic from `cpu` at its current clock that the engine does not
    /// model step by step (the guest's own clears, read-for-ownership, write-backs): it raises
    /// the socket's utilisation, costs nothing itself.
    pub fn add_memory_traffic(&mut self, cpu: usize, bytes: u64) -> Result<()> {
        self.check_cpu("cpu", cpu)?;
        let (s, w) = (self.socket_of(cpu), self.window(cpu));
        self.traffic.add(s, w, bytes as f64);
        self.ctr.dram_bytes[cpu] = self.ctr.dram_bytes[cpu].saturating_add(bytes);
        Ok(())
    }

    /// Charge `cpu` `cycles` of memory-bound work, inflated by beta. Returns the cycles charged.
    pub fn spend_memory_bound(&mut self, cpu: usize, cycles: u64) -> Result<u64> {
        self.check_cpu("cpu", cpu)?;
        let c = (cycles as f64 * self.beta(cpu)).ceil().min(u64::MAX as f64 / 2.0) as u64;
        self.clocks_add(cpu, c);
        self.ctr.other_cycles[cpu] = self.ctr.other_cycles[cpu].saturating_add(c);
        Ok(c)
    }

    /// Walks host code pays to sweep [pa, pa + size) through the direct map: one per distinct
    /// leaf it meets, by leaf size (module comment). Returns (walks, cycles before beta on the 4K ones).
    fn sweep_walks(&self, pa: u64, size: u64, beta: f64) -> (u64, f64) {
        let dm = self.tables[0].dm.as_ref().expect("direct map");
        let (mut walks, mut cyc) = (0u64, 0.0);
        let big = self.cfg.tlb.walk_native as f64;
        let small = self.cfg.snp.dm_walk_4k as f64 * beta;
        let end = pa + size;
        let mut a = pa;
        while a < end {
            let s = dm.leaf_size(a);
            let next = ((a >> s.shift()) + 1) << s.shift();
            if s == PageSize::K4 {
                // every 4 KiB page up to the end of this 2 MiB region is its own leaf
                let stop = end.min(((a >> 21) + 1) << 21);
                let pages = (stop - (a & !0xFFF)).div_ceil(4096);
                walks += pages;
                cyc += pages as f64 * small;
                a = stop;
            } else {
                walks += 1;
                cyc += big;
                a = next;
            }
        }
        (walks, cyc)
    }

    /// Zero [pa, pa + size) from `cpu` (clear_page() through the direct map): the core's clear
    /// rate divided by the socket's beta, bounded by the capacity its socket has left in the windows
    /// the clear runs through, plus the direct-map walks of the sweep. Timing only. Returns the cycles.
    pub(crate) fn clear_range(&mut self, cpu: usize, pa: u64, size: u64) -> u64 {
        self.clear_range_walking(cpu, pa, size, true)
    }

    fn clear_range_walking(&mut self, cpu: usize, pa: u64, size: u64, walk: bool) -> u64 {
        let f = self.cfg.freq_ghz;
        let beta = self.beta(cpu);
        let core_bpc = self.cfg.snp.core_clear_gbps / f / beta;
        let sock_bpc = self.cfg.snp.socket_clear_gbps / f;
        let s = self.socket_of(cpu);
        let (walks, walk_c) = if walk { self.sweep_walks(pa, size, beta) } else { (0, 0.0) };
        let start = self.cycles(cpu) as f64;
        // the walks first, then the bytes at the core's rate, window by window, each window
        // giving at most the socket capacity left in it (module comment)
        let win = self.cfg.snp.bw_window.max(1) as f64;
        let cap = win * sock_bpc;
        let mut t = start + walk_c;
        let mut left = size as f64;
        let mut windows = 0;
        while left > 0.0 {
            windows += 1;
            if windows > BW_WINDOWS {
                // past what the ring remembers: the rest at the socket's rate or the core's,
                // whichever is slower (bounded work whatever the profile's bandwidths)
                t += left / sock_bpc.min(core_bpc);
                break;
            }
            let w = (t / win) as u64;
            let w_end = (w + 1) as f64 * win;
            let free = (cap - self.traffic.bytes(s, w)).max(0.0);
            let can = (core_bpc * (w_end - t)).min(free);
            if can >= left {
                self.traffic.add(s, w, left);
                t += left / core_bpc;
                break;
            }
            self.traffic.add(s, w, can);
            left -= can;
            t = w_end;
        }
        let c = (t - start).ceil() as u64;
        self.clocks_add(cpu, c);
        self.ctr.other_cycles[cpu] += c;
        self.ctr.clear_bytes[cpu] += size;
        self.ctr.dram_bytes[cpu] += size;
        self.ctr.dm_walks[cpu] += walks;
        self.ctr.dm_walk_cycles[cpu] += walk_c.ceil() as u64;
        c
    }

    /// clear_pages over a page list: each of `pa` is a page of `page` bytes (4 KiB or 2 MiB),
    /// cleared in order on `cpu`; consecutive pages under the same large leaf pay one walk. Every address is checked first. Returns the cycles.
    pub fn clear_page_list(&mut self, cpu: usize, pa: &[u64], page: PageSize) -> Result<u64> {
        self.check_cpu("cpu", cpu)?;
        if page == PageSize::G1 {
            return Err(EngineError::invalid("page", "page must be 4 KiB or 2 MiB"));
        }
        let b = page.bytes();
        if let Some(i) = pa.iter().position(|&a| a % b != 0 || a >= self.mem.bytes || b > self.mem.bytes - a) {
            return Err(EngineError::invalid(
                "pa",
                format!("pa[{i}] = {:#x} is not a {}-aligned page inside memory ({:#x} bytes)", pa[i], page.name(), self.mem.bytes),
            ));
        }
        let t0 = self.cycles(cpu);
        // consecutive pages under one 2 MiB/1 GiB leaf share its TLB entry: one walk for the run
        let mut last_big = u64::MAX;
        for &a in pa {
            let s = self.tables[0].dm.as_ref().expect("direct map").leaf_size(a);
            let big = if s == PageSize::K4 || b > s.bytes() { u64::MAX - 1 } else { a >> s.shift() << s.shift() };
            self.clear_range_walking(cpu, a, b, big == u64::MAX - 1 || big != last_big);
            last_big = big;
        }
        Ok(self.cycles(cpu) - t0)
    }

    /// Host kernel code on `cpu` reaching the objects at `pa` through the direct map (xarray
    /// nodes, slab objects, memslots, page-table pages): one walk per distinct direct-map leaf
    /// among them, by leaf size, 4 KiB ones inflated by beta (module comment). Timing only.
    /// Returns (walks, cycles).
    pub fn direct_map_walks(&mut self, cpu: usize, pa: &[u64]) -> Result<(u64, u64)> {
        self.check_cpu("cpu", cpu)?;
        self.check_addrs("pa", pa)?;
        let dm = self.tables[0].dm.as_ref().expect("direct map");
        let mut leaves: Vec<(u64, u8)> = pa
            .iter()
            .map(|&a| {
                let s = dm.leaf_size(a);
                (a >> s.shift() << s.shift(), s as u8)
            })
            .collect();
        leaves.sort_unstable();
        leaves.dedup();
        let n4 = leaves.iter().filter(|(_, s)| *s == PageSize::K4 as u8).count() as u64;
        let nbig = leaves.len() as u64 - n4;
        let c = (n4 as f64 * self.cfg.snp.dm_walk_4k as f64 * self.beta(cpu) + nbig as f64 * self.cfg.tlb.walk_native as f64).ceil() as u64;
        self.clocks_add(cpu, c);
        self.ctr.walk_cycles[cpu] = self.ctr.walk_cycles[cpu].saturating_add(c);
        self.ctr.dm_walks[cpu] += n4 + nbig;
        self.ctr.dm_walk_cycles[cpu] += c;
        Ok((n4 + nbig, c))
    }

    /// `count` nested page faults on `cpu` (#VMEXIT, KVM's handler, VMRUN), one call. Returns cycles.
    pub fn npf_exits(&mut self, cpu: usize, count: u64) -> Result<u64> {
        self.check_cpu("cpu", cpu)?;
        let c = count.saturating_mul(self.cfg.snp.npf_exit as u64);
        self.clocks_add(cpu, c);
        self.ctr.other_cycles[cpu] = self.ctr.other_cycles[cpu].saturating_add(c);
        self.ctr.npf_exits[cpu] = self.ctr.npf_exits[cpu].saturating_add(count);
        Ok(c)
    }
}
