//! The cache-maintenance instructions and the IPIs that carry them: WBINVD/WBNOINVD (one CPU,
//! or many by IPI), smp_call_function_many and plain time (`ipi_call`, `spend`), CLFLUSH(OPT),
//! VM_PAGE_FLUSH, device DMA, page ownership and firmware ACTIVATE (semantics.md 1.3-1.6).

use crate::cache::*;
use crate::config::{WbinvdScope, LINE, PAGE};
use crate::error::Result;
use crate::host::*;

impl Host {
    /// Write back (and with `invalidate`, drop) what one CPU's WBINVD/WBNOINVD reaches: its core's
    /// L1 and L2 and, with scope "ccd", its CCD's L3. Returns (lines walked, dirty lines written).
    fn flush_cpu(&mut self, cpu: usize, invalidate: bool) -> (u64, u64) {
        let core = self.topo.cpu_core[cpu] as usize;
        let ccd = self.topo.core_ccd[core] as usize;
        let mut walked = (self.l1.lines_per_inst() + self.l2.lines_per_inst()) as u64;
        // L1 dirty data goes down to the L2 copy first
        if self.l1.valid[core] != 0 {
            let mut dirty1 = std::mem::take(&mut self.lines_scratch);
            dirty1.clear();
            for v in self.l1.inst_slice_mut(core) {
                if *v & DIRTY != 0 {
                    dirty1.push(*v);
                    *v &= !DIRTY;
                }
            }
            for &v in &dirty1 {
                let b2 = self.l2.base(core, line_of(v));
                if let Some(i) = self.l2.find(b2, v & MATCH_KEYED, MATCH_KEYED) {
                    self.l2.data[b2 + i] |= DIRTY;
                }
            }
            self.lines_scratch = dirty1;
            if invalidate {
                self.l1.clear_inst(core);
            }
        }
        let mut dirty = self.flush_inst(cpu, false, core, invalidate);
        if self.cfg.wbinvd_scope == WbinvdScope::Ccd {
            walked += self.l3.lines_per_inst() as u64;
            dirty += self.flush_inst(cpu, true, ccd, invalidate);
        }
        if invalidate {
            self.ctr.wbinvd[cpu] += 1;
        } else {
            self.ctr.wbnoinvd[cpu] += 1;
        }
        (walked, dirty)
    }

    fn flush_inst(&mut self, cpu: usize, l3: bool, inst: usize, invalidate: bool) -> u64 {
        let cache = if l3 { &mut self.l3 } else { &mut self.l2 };
        if cache.valid[inst] == 0 {
            return 0;
        }
        let mut dirty = std::mem::take(&mut self.lines_scratch);
        dirty.clear();
        let mut n_valid = 0u64;
        for v in cache.inst_slice_mut(inst) {
            if *v & DIRTY != 0 {
                dirty.push(*v);
                *v &= !DIRTY;
            }
            n_valid += (*v != 0) as u64;
        }
        if invalidate {
            cache.clear_inst(inst);
            self.ctr.invalidations[cpu] += n_valid;
        }
        for &v in &dirty {
            self.writeback(cpu, v);
        }
        let n = dirty.len() as u64;
        self.lines_scratch = dirty;
        n
    }

    fn flush_cost(&self, walked: u64, dirty: u64) -> u64 {
        let c = &self.cfg.cost;
        c.wbinvd_base + (c.wbinvd_walk_per_line * walked as f64 + c.wbinvd_writeback_per_line * dirty as f64).round() as u64
    }

    /// WBINVD (`invalidate`) or WBNOINVD on each CPU of `cpus`, sent from `initiator` by IPI and
    /// waited for, as `wbinvd_on_cpus_mask()` / `wbnoinvd_on_cpus_mask()` do (arch/x86/lib/cache-smp.c:
    /// on_each_cpu_mask(..., wait=1); the initiator runs it directly if it is in the mask).
    /// Targets run in ascending CPU order. The initiator pays the send, then waits for the slowest
    /// target (and for its socket's DRAM bandwidth to absorb the write-backs); each target pays its
    /// handler and its own flush. Without the WBNOINVD feature, WBNOINVD executes as WBINVD (the
    /// F3 prefix is ignored, asm/special_insns.h). Returns the initiator's cycles.
    pub fn wbinvd_on_cpus(&mut self, initiator: usize, cpus: &[usize], invalidate: bool) -> Result<u64> {
        self.check_cpu("initiator", initiator)?;
        let cpus = self.check_cpus("cpus", cpus)?;
        let invalidate = invalidate || !self.cfg.features.wbnoinvd;
        let c = self.cfg.cost.clone();
        let t0 = self.clocks[initiator];
        let n_remote = cpus.iter().filter(|&&t| t != initiator).count() as u64;
        let send = if n_remote > 0 { c.ipi_send_base + c.ipi_send_per_target * n_remote } else { 0 };
        let t_sent = t0 + send;
        let mut done = t_sent;
        let mut socket_dirty = vec![0u64; self.topo.sockets];
        for &t in &cpus {
            let (walked, dirty) = self.flush_cpu(t, invalidate);
            let op = self.flush_cost(walked, dirty);
            socket_dirty[self.topo.ccd_socket[self.topo.ccd_of_cpu(t)] as usize] += dirty;
            if t == initiator {
                done = done.max(t_sent + op);
            } else {
                self.ctr.flush_cycles[t] += op;
                done = done.max(t_sent + c.ipi_latency + c.ipi_handler + op);
                self.clocks[t] += c.ipi_handler + op;
                self.ctr.ipis_received[t] += 1;
                self.ctr.ipi_cycles[t] += c.ipi_handler + op;
            }
        }
        // write-backs of one socket share its DRAM bandwidth (semantics.md section 6)
        let bytes_per_cycle = c.socket_writeback_gbps / self.cfg.freq_ghz;
        let lat = if n_remote > 0 { c.ipi_latency } else { 0 };
        for &d in &socket_dirty {
            let floor = t_sent + lat + ((d * LINE) as f64 / bytes_per_cycle).ceil() as u64;
            done = done.max(floor);
        }
        if n_remote > 0 {
            done += c.ipi_ack;
        }
        // the initiator's flush time is the whole wait, its own flush included
        self.ctr.flush_cycles[initiator] += done - t0;
        self.clocks[initiator] = done;
        self.ctr.ipis_sent[initiator] += n_remote;
        self.after_bulk();
        Ok(done - t0)
    }

    /// A function run on each CPU of `cpus` by IPI from `initiator`, which waits for all of them
    /// (smp_call_function_many(..., wait=1) / on_each_cpu_mask()): each target spends
    /// `work` cycles in its handler. Same fan-out and wait model as `wbinvd_on_cpus`. Returns the
    /// initiator's cycles.
    pub fn ipi_call(&mut self, initiator: usize, cpus: &[usize], work: u64) -> Result<u64> {
        self.check_cpu("initiator", initiator)?;
        let cpus = self.check_cpus("cpus", cpus)?;
        let c = self.cfg.cost.clone();
        let t0 = self.clocks[initiator];
        let n_remote = cpus.iter().filter(|&&t| t != initiator).count() as u64;
        let send = if n_remote > 0 { c.ipi_send_base + c.ipi_send_per_target * n_remote } else { 0 };
        // saturating: clocks never wrap, whatever `work` a caller asks for
        let mut done = t0.saturating_add(send);
        for &t in &cpus {
            if t == initiator {
                done = done.max(t0.saturating_add(send + work));
            } else {
                done = done.max(t0.saturating_add(send + c.ipi_latency + c.ipi_handler + work));
                self.clocks_add(t, c.ipi_handler + work);
                self.ctr.ipis_received[t] += 1;
                self.ctr.ipi_cycles[t] = self.ctr.ipi_cycles[t].saturating_add(c.ipi_handler + work);
            }
        }
        if n_remote > 0 {
            done = done.saturating_add(c.ipi_ack);
        }
        self.clocks[initiator] = done;
        self.ctr.ipis_sent[initiator] += n_remote;
        Ok(done - t0)
    }

    /// Charge `cycles` of work the engine does not model step by step to `cpu`.
    pub fn spend(&mut self, cpu: usize, cycles: u64) -> Result<()> {
        self.check_cpu("cpu", cpu)?;
        self.clocks_add(cpu, cycles);
        self.ctr.other_cycles[cpu] = self.ctr.other_cycles[cpu].saturating_add(cycles);
        Ok(())
    }

    pub fn wbinvd(&mut self, cpu: usize) -> Result<u64> {
        self.wbinvd_on_cpus(cpu, &[cpu], true)
    }
    pub fn wbnoinvd(&mut self, cpu: usize) -> Result<u64> {
        self.wbinvd_on_cpus(cpu, &[cpu], false)
    }

    // ---------------------------------------------------------------------------------------
    // CLFLUSH / CLFLUSHOPT / VM_PAGE_FLUSH / DMA

    /// Ask the host CPU to load the directory slot a flush of line `x` will read (a hint: the
    /// lines of a range are consecutive, their slots are not).
    #[inline(always)]
    pub(crate) fn prefetch_flush(&self, x: u64) {
        if self.dir_active {
            self.dir.prefetch(x);
        }
    }

    /// Write back and invalidate every copy of line `x` that `matches(key)`, anywhere in the
    /// coherence domain. Returns dirty lines written.
    pub(crate) fn flush_line_everywhere(&mut self, cpu: usize, x: u64, key: u16, any_key: bool) -> u64 {
        self.collect(x, NONE);
        let holders = std::mem::take(&mut self.scratch);
        let mut dirty = 0;
        for h in holders.iter().filter(|h| any_key || key_of(h.v) == key) {
            dirty += self.evict_holder(cpu, h);
        }
        self.scratch = holders;
        dirty
    }

    /// CLFLUSH or CLFLUSHOPT of the lines of [pa, pa + size) through a mapping that uses `key`
    /// (the host's: 0, or the SME key). Coherence-domain wide (SDM CLFLUSH; semantics.md 1.4). Without
    /// SME_COHERENT it reaches only copies under `key`: a host CLFLUSH cannot evict guest-key lines
    /// (semantics.md 1.4, from the kernel comments in sev_writeback_caches()); with it, all aliases.
    /// A range is fenced before and after, as clflush_cache_range() does
    /// (arch/x86/mm/pat/set_memory.c). Returns the cycles charged to `cpu`.
    pub fn clflush(&mut self, cpu: usize, pa: u64, size: u64, key: u16, op: FlushOp, fenced: bool) -> Result<u64> {
        self.check_cpu("cpu", cpu)?;
        let key = self.check_key("key", key as u64)?;
        let (first, last) = self.flush_span(pa, size)?;
        // the cached lines only, the rest charged per line (range.rs)
        Ok(self.clflush_checked(cpu, first, last, key, op, fenced))
    }

    /// A write of MSR_AMD64_VM_PAGE_FLUSH (0xC001_011E): write back and invalidate the 4 KiB page's
    /// lines cached under guest key `asid`, everywhere (semantics.md 1.5). Without the feature the
    /// WRMSR raises #GP: returns Ok(false) and counts a fault, as wrmsrq_safe() would see it.
    pub fn vm_page_flush(&mut self, cpu: usize, pa: u64, asid: u16) -> Result<bool> {
        self.check_addr("pa", pa)?; // named as a single address, not as pa[0]
        self.vm_page_flush_many(cpu, &[pa], asid)
    }

    /// One VM_PAGE_FLUSH WRMSR per page of `pas`, in order, as a loop over sev_flush_encrypted_page()
    /// would issue them (each charged as `vm_page_flush`). Every argument is checked first, so bad
    /// input changes nothing. Without the feature the first WRMSR raises #GP: one fault is counted,
    /// nothing is flushed, and it returns Ok(false), where the caller falls back.
    pub fn vm_page_flush_many(&mut self, cpu: usize, pas: &[u64], asid: u16) -> Result<bool> {
        self.check_cpu("cpu", cpu)?;
        self.check_addrs("pa", pas)?;
        let asid = self.check_key("asid", asid as u64)?;
        if pas.is_empty() {
            return Ok(true);
        }
        if !self.cfg.features.vm_page_flush {
            self.ctr.faults[cpu] += 1;
            return Ok(false);
        }
        // the cached lines only, the rest charged per page (range.rs)
        self.vm_page_flush_checked(cpu, pas, asid);
        Ok(true)
    }

    /// A device access of [pa, pa + size) with `key` (0: plaintext DMA). Copies under the same key
    /// are coherent with the device (a write invalidates them, a read snoops them); dirty copies
    /// under other keys are invisible to it: each is a `dma` violation (semantics.md 1.6 case C).
    pub fn dma(&mut self, pa: u64, size: u64, key: u16, write: bool) -> Result<()> {
        let key = self.check_key("key", key as u64)?;
        let (first, last) = self.flush_span(pa, size)?;
        // the cached lines only; memory written as a range (range.rs)
        self.dma_checked(first, last, key, write);
        Ok(())
    }

    // ---------------------------------------------------------------------------------------
    // ownership and key slots

    /// The host hands the 4 KiB pages of [pa, pa + size) to `key`. Caches are untouched: whatever
    /// they still hold under the previous owner's key is the policy's problem, and the oracle's.
    pub fn set_owner(&mut self, pa: u64, size: u64, key: u16) -> Result<()> {
        self.check_range("pa", pa, size, PAGE)?;
        let key = self.check_key("key", key as u64)?;
        self.mem.set_owner(pa, size, key);
        Ok(())
    }

    pub fn owner(&self, pa: u64) -> Result<u16> {
        self.check_addr("pa", pa)?;
        Ok(self.mem.owner(pa / LINE))
    }

    /// The key slot `key` gets a new key (firmware ACTIVATE of a recycled ASID). Lines still cached
    /// under the slot become stale: a hit on one is an isolation violation, its write-back a
    /// corruption (semantics.md 1.6 case D). Returns how many cached copies became stale.
    pub fn activate(&mut self, key: u16) -> Result<u64> {
        let key = self.check_key("key", key as u64)?;
        let want = (key as u64) << KEY_SHIFT | VALID;
        let mask = KEY_MASK | VALID;
        let mut n = 0;
        for cache in [&mut self.l1, &mut self.l2, &mut self.l3] {
            for inst in 0..cache.insts {
                if cache.valid[inst] == 0 {
                    continue;
                }
                for v in cache.inst_slice_mut(inst) {
                    if *v & mask == want {
                        *v |= STALE;
                        n += 1;
                    }
                }
            }
        }
        Ok(n)
    }
}
