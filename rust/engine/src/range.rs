//! Range operations in time proportional to what is cached, not to what the range covers.
//!
//! A CLFLUSHOPT of 1.5 TiB, a VM_PAGE_FLUSH of every page of a 64 GiB guest or a DMA over a large
//! buffer acts on the lines the caches hold, at most the ~21 M lines of the 512-CPU preset; every
//! other line of the range costs the same fixed amount (the profile's per-line or per-page cost)
//! and changes nothing. So these operations visit only the *candidate* lines (those the coherence
//! directory tracks in the range, or those the caches hold in it, whichever list is cheaper to
//! build), in address order, each through the same per-line step as the line-by-line form, and
//! charge the rest of the range arithmetically.
//!
//! The result is exactly the line-by-line form's: clocks, counters, violations (and the cycle each
//! records), cache contents and memory. That holds because a line's step has an effect only where
//! some cache holds the line (the candidates are a superset of those lines, and flushes never add
//! lines), and because lines are visited in the same order. The one state that may differ is the
//! directory's lazy clean-up of masks of lines nothing caches any more (`collect`), which only
//! changes how much later lookups scan, never what they find. `Host::set_range_fast(false)` keeps
//! the line-by-line form, the reference the tests compare against.

use crate::cache::{key_of, line_of, DIRTY, VALID};
use crate::config::{LINE, PAGE};
use crate::error::{EngineError, Result};
use crate::host::{FlushOp, Host, FLUSH_AHEAD, NONE};
use crate::util::FxBuild;
use crate::violation::Cause;

/// Relative cost of visiting one line of a range by lookup (a directory probe and the set scans
/// of the CCDs it names) against reading one slot in a sequential walk of the directory or of a
/// cache. A guess that only decides which form runs, never what it computes.
const LOOKUP_VS_SLOT: usize = 8;

const LINES_PER_PAGE: u64 = PAGE / LINE;

/// How range operations find the lines they visit. Every mode gives the same simulated results
/// (cycles, counters, cache contents, violations); the directory walk also drops the stale
/// entries of its superset mask that it meets, so `directory_entries` may differ between modes.
/// Auto decides on the directory's size as it grows by itself (Directory::slots), never on
/// how far ahead a batch sized it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeMode {
    /// the cheapest of the three below, by a cost estimate (the default)
    Auto,
    /// every line of the range, one by one: the reference form
    Lines,
    /// the directory's lines in the range (the caches' where the directory is off)
    Directory,
    /// the lines the caches hold in the range
    Caches,
}

impl RangeMode {
    pub const NAMES: [&'static str; 4] = ["auto", "lines", "directory", "caches"];
    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }
    pub fn from_name(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(RangeMode::Auto),
            "lines" => Ok(RangeMode::Lines),
            "directory" => Ok(RangeMode::Directory),
            "caches" => Ok(RangeMode::Caches),
            _ => Err(EngineError::invalid("mode", format!("mode = {s:?}: allowed are {}", Self::NAMES.join(", ")))),
        }
    }
}

impl Host {
    /// Visit only the cached lines of a range (the default), or every line of it, one by one
    /// (`false`: the reference form). Results are identical either way.
    pub fn set_range_fast(&mut self, on: bool) {
        self.range_mode = if on { RangeMode::Auto } else { RangeMode::Lines };
    }

    pub fn range_fast(&self) -> bool {
        self.range_mode != RangeMode::Lines
    }

    /// Choose how range operations find their lines (for tests of each form).
    pub fn set_range_mode(&mut self, mode: RangeMode) {
        self.range_mode = mode;
    }

    pub fn range_mode(&self) -> RangeMode {
        self.range_mode
    }

    /// Slots a walk of every cache that may hold lines reads: the non-empty L2s and L3s of the
    /// CCDs the directory may name (the sole CCD while the directory is off). L1 is inside L2.
    fn cache_walk_slots(&self) -> usize {
        let mut n = 0;
        let mut add = |e: usize| {
            if self.l3.valid[e] != 0 {
                n += self.l3.lines_per_inst();
            }
            for core in self.topo.ccd_cores(e) {
                if self.l2.valid[core] != 0 {
                    n += self.l2.lines_per_inst();
                }
            }
        };
        if self.dir_active {
            (0..self.topo.ccds).for_each(&mut add);
        } else if self.sole_ccd != NONE {
            add(self.sole_ccd);
        }
        n
    }

    /// Append the lines of [lo, hi) cached in instance `inst` of L2 (`l3` false) or L3.
    fn cache_lines_in(&self, l3: bool, inst: usize, lo: u64, hi: u64, out: &mut Vec<u64>) {
        let cache = if l3 { &self.l3 } else { &self.l2 };
        if cache.valid[inst] == 0 {
            return;
        }
        let n = hi - lo;
        for &v in cache.inst_slice(inst) {
            if v & VALID != 0 && line_of(v).wrapping_sub(lo) < n {
                out.push(line_of(v));
            }
        }
    }

    /// Into `out`, sorted and distinct, a superset of the lines of [lo, hi) that some L2 or L3
    /// holds; true. Or false (and `out` empty) where visiting the `lines` lines the caller would
    /// visit one by one is cheaper, or the fast form is off.
    pub(crate) fn range_candidates(&self, lo: u64, hi: u64, lines: u64, out: &mut Vec<u64>) -> bool {
        out.clear();
        if self.range_mode == RangeMode::Lines {
            return false;
        }
        if !self.dir_active && self.sole_ccd == NONE {
            return true; // nothing is cached anywhere
        }
        let walk = self.cache_walk_slots();
        let dir = if self.dir_active { self.dir.slots() } else { usize::MAX };
        let use_dir = match self.range_mode {
            RangeMode::Auto => {
                if (lines as usize).saturating_mul(LOOKUP_VS_SLOT) <= walk.min(dir) {
                    return false;
                }
                dir <= walk
            }
            RangeMode::Directory => self.dir_active,
            _ => false,
        };
        if use_dir {
            self.dir.lines_in(lo, hi, out);
        } else {
            let ccds: Vec<usize> = if self.dir_active { (0..self.topo.ccds).collect() } else { vec![self.sole_ccd] };
            for e in ccds {
                self.cache_lines_in(true, e, lo, hi, out);
                for core in self.topo.ccd_cores(e) {
                    self.cache_lines_in(false, core, lo, hi, out);
                }
            }
        }
        out.sort_unstable();
        out.dedup();
        true
    }

    /// `flush_line_everywhere` over lines [first, last) in order; returns dirty lines written.
    fn flush_lines(&mut self, cpu: usize, first: u64, last: u64, key: u16, any: bool) -> u64 {
        let mut cand = std::mem::take(&mut self.range_lines);
        let mut dirty = 0;
        if self.range_candidates(first, last, last - first, &mut cand) {
            for &x in &cand {
                dirty += self.flush_line_everywhere(cpu, x, key, any);
            }
        } else {
            for x in first..last {
                self.prefetch_flush(x + FLUSH_AHEAD);
                dirty += self.flush_line_everywhere(cpu, x, key, any);
            }
        }
        self.range_lines = cand;
        dirty
    }

    /// The charge of a CLFLUSH(OPT) of `n` lines of which `dirty` were written back.
    fn charge_clflush(&mut self, cpu: usize, n: u64, dirty: u64, op: FlushOp, fenced: bool) -> u64 {
        let c = &self.cfg.cost;
        let per_line = match op {
            FlushOp::Clflush => c.clflush_line,
            FlushOp::Clflushopt => c.clflushopt_line,
        };
        let cycles = per_line * n + c.flush_dirty_line * dirty + if fenced { 2 * c.fence } else { 0 };
        self.ctr.clflush_lines[cpu] += n;
        self.ctr.flush_cycles[cpu] += cycles;
        self.clocks[cpu] += cycles;
        cycles
    }

    /// Lines [first, last) of a checked range (see `clflush`).
    pub(crate) fn clflush_checked(&mut self, cpu: usize, first: u64, last: u64, key: u16, op: FlushOp, fenced: bool) -> u64 {
        let any = self.cfg.features.sme_coherent;
        let dirty = self.flush_lines(cpu, first, last, key, any);
        let cycles = self.charge_clflush(cpu, last - first, dirty, op, fenced);
        self.after_bulk();
        cycles
    }

    /// The lines [first, last) of a flush of [pa, pa + size), checked against the host's memory.
    pub(crate) fn flush_span(&self, pa: u64, size: u64) -> Result<(u64, u64)> {
        let first = pa / LINE;
        let end = pa.checked_add(size.max(1)).ok_or_else(|| {
            EngineError::invalid("size", format!("pa = {pa:#x} with size = {size:#x} runs past 2^64"))
        })?;
        let last = end.div_ceil(LINE);
        let mem = self.mem.bytes;
        if pa >= mem || end > mem {
            return Err(EngineError::invalid(
                "pa",
                format!("pa = {pa:#x} with size = {size:#x} runs past the end of memory ({mem:#x} bytes)"),
            ));
        }
        Ok((first, last))
    }

    /// `clflush(cpu, pas[i], sizes[i], key, op, fenced)` for each i in order, in one call: the
    /// same result as the loop, with the cached lines of all the ranges found in one pass. Every
    /// argument is checked first. Returns the cycles charged to `cpu`, all ranges together.
    pub fn clflush_ranges(&mut self, cpu: usize, pas: &[u64], sizes: &[u64], key: u16, op: FlushOp, fenced: bool) -> Result<u64> {
        self.check_cpu("cpu", cpu)?;
        let key = self.check_key("key", key as u64)?;
        if pas.len() != sizes.len() {
            return Err(EngineError::invalid("size", format!("size has {} entries for the {} of pa: give one size per range", sizes.len(), pas.len())));
        }
        let mut spans = Vec::with_capacity(pas.len());
        let (mut lo, mut hi, mut lines) = (u64::MAX, 0, 0u64);
        for (i, (&pa, &size)) in pas.iter().zip(sizes).enumerate() {
            let s = self.flush_span(pa, size).map_err(|e| EngineError::invalid("pa", format!("range {i}: {e}")))?;
            lo = lo.min(s.0);
            hi = hi.max(s.1);
            lines = lines.saturating_add(s.1 - s.0);
            spans.push(s);
        }
        let mut cand = std::mem::take(&mut self.range_lines);
        let mut total = 0u64;
        if !spans.is_empty() && self.range_candidates(lo, hi, lines, &mut cand) {
            let any = self.cfg.features.sme_coherent;
            for &(first, last) in &spans {
                let (i0, i1) = (cand.partition_point(|&x| x < first), cand.partition_point(|&x| x < last));
                let mut dirty = 0;
                for &x in &cand[i0..i1] {
                    dirty += self.flush_line_everywhere(cpu, x, key, any);
                }
                total = total.wrapping_add(self.charge_clflush(cpu, last - first, dirty, op, fenced));
                self.after_bulk();
            }
            self.range_lines = cand;
        } else {
            self.range_lines = cand;
            for &(first, last) in &spans {
                total = total.wrapping_add(self.clflush_checked(cpu, first, last, key, op, fenced));
            }
        }
        Ok(total)
    }

    /// The charge of `k` VM_PAGE_FLUSHes that wrote nothing back.
    fn charge_clean_pages(&mut self, cpu: usize, k: u64) {
        if k == 0 {
            return;
        }
        let c = &self.cfg.cost;
        let cycles = (c.vm_page_flush_base + c.clflushopt_line * LINES_PER_PAGE).wrapping_mul(k);
        self.ctr.vm_page_flush[cpu] += k;
        self.ctr.flush_cycles[cpu] = self.ctr.flush_cycles[cpu].wrapping_add(cycles);
        self.clocks[cpu] = self.clocks[cpu].wrapping_add(cycles);
    }

    /// One VM_PAGE_FLUSH of the page at `pa`, visiting `lines` (the page's lines, or those of
    /// them that may be cached).
    fn vm_page_flush_lines(&mut self, cpu: usize, lines: impl Iterator<Item = u64>, asid: u16, prefetch: bool) {
        let mut dirty = 0;
        for x in lines {
            if prefetch {
                self.prefetch_flush(x + FLUSH_AHEAD);
            }
            dirty += self.flush_line_everywhere(cpu, x, asid, false);
        }
        let c = &self.cfg.cost;
        let cycles = c.vm_page_flush_base + c.clflushopt_line * LINES_PER_PAGE + c.flush_dirty_line * dirty;
        self.ctr.vm_page_flush[cpu] += 1;
        self.ctr.flush_cycles[cpu] += cycles;
        self.clocks[cpu] += cycles;
    }

    /// The WRMSRs of `vm_page_flush_many` (checked, feature present), page by page in order. The
    /// clock advances page by page as in the line-by-line form, so a violation a page's flush
    /// records carries the same cycle.
    pub(crate) fn vm_page_flush_checked(&mut self, cpu: usize, pas: &[u64], asid: u16) {
        let (lo, hi) = pas.iter().fold((u64::MAX, 0), |(lo, hi), &pa| (lo.min(pa / PAGE), hi.max(pa / PAGE)));
        let mut cand = std::mem::take(&mut self.range_lines);
        let lines = (pas.len() as u64).saturating_mul(LINES_PER_PAGE);
        if self.range_candidates(lo * LINES_PER_PAGE, (hi + 1) * LINES_PER_PAGE, lines, &mut cand) {
            // page -> its candidates cand[i0..i1]
            let mut pages: std::collections::HashMap<u64, (usize, usize), FxBuild> = Default::default();
            let mut i = 0;
            while i < cand.len() {
                let p = cand[i] / LINES_PER_PAGE;
                let j = i + cand[i..].partition_point(|&x| x / LINES_PER_PAGE == p);
                pages.insert(p, (i, j));
                i = j;
            }
            let mut clean = 0u64;
            for &pa in pas {
                match pages.get(&(pa / PAGE)) {
                    Some(&(i0, i1)) => {
                        self.charge_clean_pages(cpu, clean);
                        clean = 0;
                        self.vm_page_flush_lines(cpu, cand[i0..i1].iter().copied(), asid, false);
                    }
                    None => clean += 1,
                }
            }
            self.charge_clean_pages(cpu, clean);
        } else {
            for &pa in pas {
                let first = (pa & !(PAGE - 1)) / LINE;
                self.vm_page_flush_lines(cpu, first..first + LINES_PER_PAGE, asid, true);
            }
        }
        self.range_lines = cand;
        self.after_bulk();
    }

    /// A device's access to one line `x` with `key`, caches only (see `dma`).
    fn dma_line(&mut self, x: u64, key: u16, write: bool, cause: Cause) {
        self.collect(x, NONE);
        let holders = std::mem::take(&mut self.scratch);
        for h in holders.iter() {
            if key_of(h.v) == key {
                if write {
                    self.remove_holder(h);
                }
            } else if h.v & DIRTY != 0 {
                let owner = self.mem.owner(x);
                self.record(cause, -1, x, key_of(h.v), key, owner);
            }
        }
        self.scratch = holders;
    }

    /// Lines [first, last) of a checked DMA (see `dma`). The cache side of each line neither
    /// reads nor changes what memory holds, so the memory writes of the whole range can follow
    /// the cache side of all its lines.
    pub(crate) fn dma_checked(&mut self, first: u64, last: u64, key: u16, write: bool) {
        let cause = if write { Cause::DmaWriteDirtyLine } else { Cause::DmaReadDirtyLine };
        let mut cand = std::mem::take(&mut self.range_lines);
        if self.range_candidates(first, last, last - first, &mut cand) {
            for &x in &cand {
                self.dma_line(x, key, write, cause);
            }
            if write {
                self.mem.write_range(first, last, key);
            }
        } else {
            for x in first..last {
                self.dma_line(x, key, write, cause);
                if write {
                    self.mem.write(x, key);
                }
            }
        }
        self.range_lines = cand;
        if write {
            self.after_bulk();
        }
    }

    /// `set_owner(pas[i], sizes[i], key)` for each i, in one call; every range is checked first.
    pub fn set_owner_ranges(&mut self, pas: &[u64], sizes: &[u64], key: u16) -> Result<()> {
        let key = self.check_key("key", key as u64)?;
        if pas.len() != sizes.len() {
            return Err(EngineError::invalid("size", format!("size has {} entries for the {} of pa: give one size per range", sizes.len(), pas.len())));
        }
        for (i, (&pa, &size)) in pas.iter().zip(sizes).enumerate() {
            self.check_range("pa", pa, size, PAGE).map_err(|e| EngineError::invalid("pa", format!("range {i}: {e}")))?;
        }
        for (&pa, &size) in pas.iter().zip(sizes) {
            self.mem.set_owner(pa, size, key);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::Col;

    /// xorshift64
    fn rng(s: &mut u64) -> u64 {
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        *s
    }

    /// Everything observable: clocks, every counter, violations, every cache slot, memory.
    fn state(h: &Host) -> (Vec<u64>, Vec<Vec<u64>>, Vec<String>, Vec<u64>, Vec<(u64, u16, u64)>) {
        let ctr = h.ctr.all().into_iter().map(|(_, v)| v.to_vec()).collect();
        let viol = h.violations().iter().map(|v| format!("{v:?}")).collect();
        let mut caches = Vec::new();
        for c in [&h.l1, &h.l2, &h.l3] {
            caches.extend_from_slice(&c.data[..]);
            caches.extend(c.valid.iter().map(|&v| v as u64));
        }
        let lines = h.mem.bytes / LINE;
        let mem = (0..lines).step_by(7).map(|l| (l, h.mem.line_state(l).0, h.mem.line_state(l).1)).collect();
        (h.clocks().to_vec(), ctr, viol, caches, mem)
    }

    /// A small multi-CCD host with random lines cached under a few keys by several CPUs.
    fn filled(seed: u64, sme_coherent: bool, spread: bool) -> Host {
        let mut cfg = crate::HostConfig::preset("tiny").unwrap();
        cfg.features.sme_coherent = sme_coherent;
        let mut h = Host::new(cfg, Some(64 << 20)).unwrap();
        let mut s = seed | 1;
        h.set_owner(8 << 20, 4 << 20, 3).unwrap();
        h.set_owner((16 << 20) + 4096, 8192, 5).unwrap();
        let n = 3000;
        let cpus: Vec<u32> = (0..n).map(|_| if spread { (rng(&mut s) % h.topo.cpus as u64) as u32 } else { 0 }).collect();
        let addr: Vec<u64> = (0..n).map(|_| (rng(&mut s) % (24 << 20)) & !7).collect();
        let write: Vec<bool> = (0..n).map(|_| rng(&mut s) % 3 == 0).collect();
        let key: Vec<u16> = (0..n).map(|_| [0u16, 3, 5][(rng(&mut s) % 3) as usize]).collect();
        h.access_batch(Col::Each(&cpus), &addr, Col::Each(&write), Col::Each(&key), None).unwrap();
        h
    }

    /// Run `op` on two copies of the same host, fast and line by line, and compare everything.
    fn same(seed: u64, op: impl Fn(&mut Host)) {
        for (sme, spread) in [(false, true), (true, true), (false, false)] {
            let mut b = filled(seed, sme, spread);
            b.set_range_fast(false);
            op(&mut b);
            for mode in [RangeMode::Auto, RangeMode::Directory, RangeMode::Caches] {
                let mut a = filled(seed, sme, spread);
                a.set_range_mode(mode);
                op(&mut a);
                assert_eq!(state(&a), state(&b), "seed {seed} sme_coherent {sme} spread {spread} mode {mode:?}");
            }
        }
    }

    #[test]
    fn clflush_matches_line_by_line() {
        for seed in 1..6 {
            same(seed, |h| {
                h.clflush(1, 0, 64 << 20, 0, FlushOp::Clflushopt, true).unwrap();
            });
            same(seed, |h| {
                h.clflush(0, 8 << 20, 4 << 20, 3, FlushOp::Clflush, false).unwrap();
                h.clflush(2, 4096, 3 << 20, 5, FlushOp::Clflushopt, true).unwrap();
            });
            same(seed, |h| {
                h.clflush_ranges(0, &[0, 9 << 20, 1 << 20], &[2 << 20, 1 << 20, 4 << 20], 0, FlushOp::Clflushopt, true).unwrap();
            });
        }
    }

    #[test]
    fn vm_page_flush_matches_line_by_line() {
        for seed in 1..6 {
            same(seed, |h| {
                // pages in a shuffled order with repeats, so violations carry per-page cycles
                let mut s = seed;
                let pas: Vec<u64> = (0..3000).map(|_| (rng(&mut s) % (24 << 20)) & !(PAGE - 1)).collect();
                assert!(h.vm_page_flush_many(1, &pas, 3).unwrap());
                let all: Vec<u64> = (0..(24u64 << 20) / PAGE).map(|p| p * PAGE).collect();
                assert!(h.vm_page_flush_many(0, &all, 5).unwrap());
            });
        }
    }

    #[test]
    fn dma_and_set_owner_match_line_by_line() {
        for seed in 1..6 {
            same(seed, |h| {
                h.dma(0, 24 << 20, 3, false).unwrap();
                h.dma(8 << 20, 6 << 20, 0, true).unwrap();
                h.dma(16 << 20, 64 << 10, 5, true).unwrap();
                h.set_owner_ranges(&[8 << 20, 0], &[2 << 20, 4096], 0).unwrap();
                h.dma(0, 12 << 20, 3, true).unwrap();
            });
        }
    }

    #[test]
    fn nothing_cached_is_charged_whole() {
        let mut a = Host::preset("tiny", Some(1 << 30)).unwrap();
        let c0 = a.clflush(0, 0, 1 << 30, 0, FlushOp::Clflushopt, true).unwrap();
        let c = &a.cfg.cost;
        assert_eq!(c0, c.clflushopt_line * ((1 << 30) / LINE) + 2 * c.fence);
        assert_eq!(a.ctr.clflush_lines[0], (1 << 30) / LINE);
    }

    #[test]
    fn memory_write_range_matches_writes() {
        use crate::memory::Memory;
        let mut a = Memory::new(8 << 20);
        let mut b = Memory::new(8 << 20);
        for m in [&mut a, &mut b] {
            m.set_owner(4096, 8192, 7);
            m.set_owner(3 << 20, 1 << 20, 9);
            m.write(5, 2);
        }
        for (first, last, key) in [(0u64, 200u64, 7u16), (60, 70000, 0), (40000, 90000, 9), (10, 20, 2)] {
            a.write_range(first, last, key);
            for l in first..last {
                b.write(l, key);
            }
            assert_eq!(a.writes(), b.writes());
            assert_eq!(a.foreign_lines(), b.foreign_lines());
            for l in 0..(8u64 << 20) / LINE {
                assert_eq!(a.line_state(l), b.line_state(l), "line {l}");
            }
        }
    }
}
