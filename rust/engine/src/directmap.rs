//! The host's direct map (the kernel's linear map of all RAM at PAGE_OFFSET), held compactly: one
//! bit per 1 GiB region (split to 2 MiB) and one per 2 MiB region (split to 4 KiB). Leaves are
//! synthesised when the table is walked, so a 1.5 TiB direct map split entirely to 4 KiB costs
//! about 100 KiB of bitmaps instead of the 400 million leaves (several GiB) a table of leaves would
//! hold. The host table (table 0) walks this structure for addresses in
//! [PAGE_OFFSET, PAGE_OFFSET + memory); every other address goes to its ordinary leaves.
//!
//! Layout at boot: 1 GiB leaves where a whole 1 GiB of RAM is present, then 2 MiB, then 4 KiB for
//! a ragged end (the kernel maps RAM with the largest pages it can: arch/x86/mm/init.c,
//! split_mem_range()). Splits are never undone (semantics.md 5.4).

use crate::error::{EngineError, Result};
use crate::host::Host;
use crate::paging::{Leaf, PageSize, F_GLOBAL};
use crate::tlb::{Entry, CAT_LINEAR, DOM_HOST};
use crate::translate::size_of;

/// Start of the direct map: Linux x86-64 with 4-level paging, __PAGE_OFFSET_BASE_L4
/// (arch/x86/include/asm/page_64_types.h). KASLR moves it; the simulation does not.
pub const PAGE_OFFSET: u64 = 0xffff_8880_0000_0000;

const G1: u32 = 30;
const M2: u32 = 21;

#[derive(Clone, Debug)]
pub struct DirectMap {
    /// bytes of RAM it maps
    pub bytes: u64,
    /// per 1 GiB region: no 1 GiB leaf (split, or not wholly in memory)
    small1g: Vec<u64>,
    /// per 2 MiB region: no 2 MiB leaf (split to 4 KiB, or not wholly in memory)
    small2m: Vec<u64>,
    /// leaves by size (4K, 2M, 1G), kept up to date on every split
    leaves: [u64; 3],
}

#[inline(always)]
fn bit(v: &[u64], i: u64) -> bool {
    v[(i / 64) as usize] & (1 << (i % 64)) != 0
}

#[inline(always)]
fn set(v: &mut [u64], i: u64) {
    v[(i / 64) as usize] |= 1 << (i % 64);
}

impl DirectMap {
    pub fn new(bytes: u64) -> Self {
        let n1 = bytes.div_ceil(1 << G1);
        let n2 = bytes.div_ceil(1 << M2);
        let mut d = DirectMap { bytes, small1g: vec![0; n1.div_ceil(64) as usize], small2m: vec![0; n2.div_ceil(64) as usize], leaves: [0; 3] };
        let full1 = bytes >> G1;
        let full2 = bytes >> M2;
        for r in full1..n1 {
            set(&mut d.small1g, r);
        }
        for q in full2..n2 {
            set(&mut d.small2m, q);
        }
        // 1 GiB leaves over whole GiBs, 2 MiB over whole 2 MiBs after them, 4 KiB for the rest
        d.leaves = [(bytes - (full2 << M2)) >> 12, full2 - (full1 << (G1 - M2)), full1];
        d
    }

    /// Does `off` (a physical address) lie in the map?
    #[inline(always)]
    pub fn covers(&self, pa: u64) -> bool {
        pa < self.bytes
    }

    /// The size of the leaf that maps physical address `pa` (< bytes).
    #[inline(always)]
    pub fn leaf_size(&self, pa: u64) -> PageSize {
        if !bit(&self.small1g, pa >> G1) {
            PageSize::G1
        } else if !bit(&self.small2m, pa >> M2) {
            PageSize::M2
        } else {
            PageSize::K4
        }
    }

    /// The leaf that maps physical address `pa` (< bytes): identity frames, global.
    #[inline(always)]
    pub fn leaf(&self, pa: u64) -> Leaf {
        let size = self.leaf_size(pa);
        Leaf { target: pa & !(size.bytes() - 1), size, flags: F_GLOBAL }
    }

    /// Split the leaf covering `pa` one level (1G -> 2M or 2M -> 4K). Returns the size it had, or
    /// None if it was already 4 KiB.
    pub fn split_once(&mut self, pa: u64) -> Option<PageSize> {
        match self.leaf_size(pa) {
            PageSize::G1 => {
                set(&mut self.small1g, pa >> G1);
                self.leaves[2] -= 1;
                self.leaves[1] += 512;
                Some(PageSize::G1)
            }
            PageSize::M2 => {
                set(&mut self.small2m, pa >> M2);
                self.leaves[1] -= 1;
                self.leaves[0] += 512;
                Some(PageSize::M2)
            }
            PageSize::K4 => None,
        }
    }

    /// Split everything to 4 KiB at once (a direct map built at 4 KiB, as with debug_pagealloc or
    /// a pre-split policy at boot). Returns how many 1 GiB and 2 MiB leaves it split.
    pub fn split_all(&mut self) -> (u64, u64) {
        let before = self.leaves;
        // every 1 GiB leaf becomes 512 2 MiB leaves, then every 2 MiB leaf 512 4 KiB ones
        let m2 = before[1] + 512 * before[2];
        self.small1g.iter_mut().for_each(|w| *w = u64::MAX);
        self.small2m.iter_mut().for_each(|w| *w = u64::MAX);
        self.leaves = [self.bytes >> 12, 0, 0];
        (before[2], m2)
    }

    /// Leaves by size: (4K, 2M, 1G).
    pub fn leaves(&self) -> [u64; 3] {
        self.leaves
    }

    pub fn heap_bytes(&self) -> usize {
        (self.small1g.len() + self.small2m.len()) * 8
    }
}

/// How flush_tlb_all() reaches the other CPUs (kflush.rs): IPIs to every CPU (on_each_cpu, the
/// kernel before 6.15 and CPUs without INVLPGB), INVLPGB + TLBSYNC (Rik van Riel, "x86/mm: Use
/// INVLPGB for kernel TLB flushes", lore 20250226030129.530345-5-riel@surriel.com), or not at all
/// (no kernel does that: a deliberately broken split, for the RMP-check-size oracle).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelFlush {
    Ipi,
    Invlpgb,
    Skip,
}

impl KernelFlush {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ipi" => Some(KernelFlush::Ipi),
            "invlpgb" => Some(KernelFlush::Invlpgb),
            "none" => Some(KernelFlush::Skip),
            _ => None,
        }
    }
}

impl Host {
    fn dm(&self) -> &DirectMap {
        self.tables[0].dm.as_ref().expect("the host table holds the direct map")
    }

    fn dm_mut(&mut self) -> &mut DirectMap {
        self.tables[0].dm.as_mut().expect("the host table holds the direct map")
    }

    /// The direct-map virtual address of physical address `pa` (__va()).
    pub fn direct_map_va(&self, pa: u64) -> u64 {
        PAGE_OFFSET + pa
    }

    /// lookup_address(): the size of the host-table leaf that maps `va`, if any.
    pub fn lookup_address(&self, va: u64) -> Option<PageSize> {
        self.tables[0].walk(va).map(|(l, _)| l.size)
    }

    /// The size of the direct-map leaf over physical address `pa` (lookup_address(__va(pa))).
    #[inline]
    pub fn direct_map_leaf(&self, pa: u64) -> Result<PageSize> {
        self.check_addr("pa", pa)?;
        Ok(self.dm().leaf_size(pa))
    }

    /// Direct-map leaves by size (4K, 2M, 1G), synthesised ones counted.
    pub fn direct_map_leaves(&self) -> [u64; 3] {
        self.dm().leaves()
    }

    pub fn direct_map_bytes(&self) -> usize {
        self.dm().heap_bytes()
    }

    /// Build the whole direct map at 4 KiB (a kernel that maps RAM with 4 KiB pages from boot, as
    /// with debug_pagealloc, or a pre-split policy before any CPU has cached a translation): no
    /// CPA, no cpa_lock, no flush, no charge. TLB entries already cached are left alone (a boot-time
    /// state: call it before the run). Returns the 1 GiB and 2 MiB leaves it split.
    pub fn direct_map_presplit(&mut self) -> (u64, u64) {
        let r = self.dm_mut().split_all();
        self.tables[0].gen += 1;
        r
    }

    /// set_memory_4k(va, 1) on `cpu` (arch/x86/mm/pat/set_memory.c) with flush_tlb_all() done the
    /// `flush` way: split the direct-map leaf covering `va` down to 4 KiB, 1G -> 2M -> 4K. Each
    /// split allocates a page-table page with cpa_lock dropped (split_large_page()), then under the
    /// global cpa_lock fills 512 entries and flushes every CPU's TLB (__split_large_page():
    /// flush_tlb_all() inside cpa_lock). A CPU that finds the lock held waits until it is free. A
    /// leaf already at 4 KiB costs nothing: splits are never undone. Returns (cycles `cpu` spent,
    /// waiting included, splits made).
    pub fn set_memory_4k_with(&mut self, cpu: usize, va: u64, flush: KernelFlush) -> Result<(u64, u32)> {
        self.check_cpu("cpu", cpu)?;
        let pa = match self.tables[0].dm_pa(va) {
            Some(pa) => pa,
            None => return Err(EngineError::invalid("va", format!("va = {va:#x} is not in the direct map [{PAGE_OFFSET:#x}, {:#x})", PAGE_OFFSET + self.mem.bytes))),
        };
        self.split_pa(cpu, pa, flush)
    }

    /// set_memory_4k() with IPI flushes (the kernel of the SNP host series). Returns the cycles.
    pub fn set_memory_4k(&mut self, cpu: usize, va: u64) -> Result<u64> {
        Ok(self.set_memory_4k_with(cpu, va, KernelFlush::Ipi)?.0)
    }

    /// set_memory_4k(__va(pa[i]), 1) for each i in order on `cpu`: one CPA operation each, as
    /// adjust_direct_map() makes them. Every address is checked first (a bad one changes nothing).
    /// `splits[i]` gets the splits the i-th made (0 if already 4 KiB, 2 for a 1 GiB leaf). Returns
    /// the cycles, waiting included.
    pub fn set_memory_4k_batch(&mut self, cpu: usize, pa: &[u64], flush: KernelFlush, splits: &mut [u8]) -> Result<u64> {
        self.check_cpu("cpu", cpu)?;
        if splits.len() != pa.len() {
            return Err(EngineError::invalid("splits", format!("splits has {} elements, pa {}", splits.len(), pa.len())));
        }
        self.check_addrs("pa", pa)?;
        let t0 = self.cycles(cpu);
        for (i, &a) in pa.iter().enumerate() {
            splits[i] = self.split_pa(cpu, a, flush)?.1 as u8;
        }
        Ok(self.cycles(cpu) - t0)
    }

    /// The page size an RMP check of a host access by `cpu` to `pa` is made at: that of the
    /// direct-map translation the access goes through, i.e. the entry `cpu`'s TLB holds for
    /// __va(pa) if there is one (a large entry cached before a split and not flushed since
    /// included), else the leaf a walk finds now. "Check granularity is the mapping size of the
    /// access" (semantics.md 5.3; APM vol. 2 15.36.10 RMP checks); the kernel flushes every TLB
    /// inside cpa_lock after a split for exactly this reason among others (__split_large_page()).
    #[inline]
    pub(crate) fn host_access_size(&self, cpu: usize, pa: u64) -> PageSize {
        let va = PAGE_OFFSET + pa;
        let core = self.topo.cpu_core[cpu] as usize;
        let thr = self.cpu_thr[cpu];
        let m = |e: &Entry| e.dom == DOM_HOST && e.tag == 0 && e.thr == thr;
        if let Some(i) = self.tlb1[core].find(va, CAT_LINEAR, m) {
            return size_of(self.tlb1[core].ents[i].size);
        }
        if let Some(i) = self.tlb2[core].find(va, CAT_LINEAR, m) {
            return size_of(self.tlb2[core].ents[i].size);
        }
        if pa < self.memory_bytes() {
            self.dm().leaf_size(pa)
        } else {
            PageSize::K4
        }
    }

    fn split_pa(&mut self, cpu: usize, pa: u64, flush: KernelFlush) -> Result<(u64, u32)> {
        let t0 = self.cycles(cpu);
        let mut n = 0;
        while self.dm().leaf_size(pa) != PageSize::K4 {
            // the page-table page, allocated with cpa_lock dropped
            let alloc = self.cfg.snp.alloc_4k as u64;
            self.clocks_add(cpu, alloc);
            self.ctr.other_cycles[cpu] += alloc;
            // cpa_lock: a resource free at a given time
            let now = self.cycles(cpu);
            let start = now.max(self.cpa_free_at);
            let wait = start - now;
            self.clocks_add(cpu, wait);
            self.ctr.cpa_wait_cycles[cpu] += wait;
            self.dm_mut().split_once(pa);
            self.tables[0].gen += 1;
            let fill = self.cfg.snp.split_fill as u64;
            self.clocks_add(cpu, fill);
            self.ctr.other_cycles[cpu] += fill;
            self.kernel_flush_tlb_all(cpu, flush)?;
            self.ctr.dm_splits[cpu] += 1;
            self.cpa_free_at = self.cycles(cpu);
            self.ctr.cpa_hold_cycles[cpu] += self.cpa_free_at - start;
            n += 1;
        }
        Ok((self.cycles(cpu) - t0, n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_and_ragged_end() {
        // 1 GiB + 6 MiB + 12 KiB: one 1G leaf, three 2M leaves, three 4K leaves
        let bytes = (1 << 30) + (6 << 20) + 3 * 4096;
        let d = DirectMap::new(bytes);
        assert_eq!(d.leaves(), [3, 3, 1]);
        assert_eq!(d.leaf_size(0x1234_5678), PageSize::G1);
        assert_eq!(d.leaf((1 << 30) + (2 << 20) + 5).target, (1 << 30) + (2 << 20));
        assert_eq!(d.leaf_size((1 << 30) + (6 << 20) + 4096), PageSize::K4);
        assert_eq!(d.leaf((1 << 30) + (6 << 20) + 4097).target, (1 << 30) + (6 << 20) + 4096);
    }

    #[test]
    fn splits_and_counts() {
        let mut d = DirectMap::new(4 << 30);
        assert_eq!(d.split_once(0x4000_1000), Some(PageSize::G1));
        assert_eq!(d.leaf_size(0x4000_1000), PageSize::M2);
        assert_eq!(d.split_once(0x4000_1000), Some(PageSize::M2));
        assert_eq!(d.split_once(0x4000_1000), None);
        assert_eq!(d.leaf_size(0x4020_0000), PageSize::M2); // the neighbour 2 MiB stays
        assert_eq!(d.leaf_size(0x8000_0000), PageSize::G1); // the next GiB too
        assert_eq!(d.leaves(), [512, 511, 3]);
        let (g, m) = d.split_all();
        assert_eq!((g, m), (3, 511 + 3 * 512));
        assert_eq!(d.leaves(), [(4 << 30) >> 12, 0, 0]);
        assert_eq!(d.leaf_size(0), PageSize::K4);
    }

    #[test]
    fn a_split_1_5_tib_map_costs_kilobytes() {
        let mut d = DirectMap::new(1536 << 30);
        d.split_all();
        assert!(d.heap_bytes() < 128 << 10, "{}", d.heap_bytes());
        assert_eq!(d.leaves()[0], (1536u64 << 30) >> 12);
    }
}
