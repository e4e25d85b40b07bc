//! Page tables the engine walks, held sparsely: one map per leaf size (4 KiB, 2 MiB, 1 GiB).
//!
//! Three kinds share the structure: host tables (virtual -> physical, the direct map among them),
//! guest tables (guest virtual -> guest physical, per address space) and nested tables (guest
//! physical -> host physical: NPT on SVM, EPT on VMX). Editing a table never touches a TLB: that is
//! the invalidation instructions' job, and forgetting one is what the stale-translation oracle
//! catches. Every table has an edit generation, so a TLB hit filled since the last edit is known
//! to agree with the table without walking it.

use std::collections::HashMap;

use crate::directmap::{DirectMap, PAGE_OFFSET};
use crate::error::{EngineError, Result};
use crate::slotmap::SlotMap;
use crate::util::FxBuild;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum PageSize {
    K4 = 0,
    M2 = 1,
    G1 = 2,
}

impl PageSize {
    pub const ALL: [PageSize; 3] = [PageSize::K4, PageSize::M2, PageSize::G1];
    #[inline(always)]
    pub fn shift(self) -> u32 {
        match self {
            PageSize::K4 => 12,
            PageSize::M2 => 21,
            PageSize::G1 => 30,
        }
    }
    #[inline(always)]
    pub fn bytes(self) -> u64 {
        1 << self.shift()
    }
    pub fn from_bytes(b: u64) -> Option<Self> {
        match b {
            4096 => Some(PageSize::K4),
            0x20_0000 => Some(PageSize::M2),
            0x4000_0000 => Some(PageSize::G1),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            PageSize::K4 => "4K",
            PageSize::M2 => "2M",
            PageSize::G1 => "1G",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableKind {
    Host,
    Guest,
    Nested,
}

/// Leaf flags.
pub const F_GLOBAL: u8 = 1;
/// The C-bit: the access uses the encryption key of the context (guest) or the host's SME key.
pub const F_CBIT: u8 = 2;
/// The complement of the leaf's R/W bit (APM vol. 2 5.4.1 "Read/Write (R/W) Bit"; Intel SDM vol. 3A
/// 4.6; an EPT leaf's bit 1 "write access", SDM vol. 3C 29.3.2): a leaf is writable unless marked.
pub const F_RDONLY: u8 = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leaf {
    /// base address of the target frame
    pub target: u64,
    pub size: PageSize,
    pub flags: u8,
}

/// One page table.
pub struct Table {
    pub kind: TableKind,
    /// bumped on every edit
    pub gen: u64,
    /// per leaf size, page number -> target frame | flags (a target is at least 4 KiB aligned)
    maps: [SlotMap; 3],
    /// leaves of smaller sizes inside each 2 MiB and 1 GiB region (to refuse overlaps)
    inner: [HashMap<u64, u32, FxBuild>; 2],
    /// the host table's direct map, walked for [PAGE_OFFSET, PAGE_OFFSET + memory) instead of
    /// stored leaves (directmap.rs); None in every other table
    pub(crate) dm: Option<DirectMap>,
}

/// Canonical 48-bit virtual address (bits 63:47 all equal).
pub fn canonical(va: u64) -> bool {
    let top = va >> 47;
    top == 0 || top == (1 << 17) - 1
}

impl Table {
    pub fn new(kind: TableKind) -> Self {
        Table { kind, gen: 0, maps: std::array::from_fn(|_| SlotMap::with_capacity_pow2(4)), inner: Default::default(), dm: None }
    }

    /// A host table holding the direct map of `bytes` of RAM (and nothing else yet).
    pub fn with_direct_map(bytes: u64) -> Self {
        Table { dm: Some(DirectMap::new(bytes)), ..Table::new(TableKind::Host) }
    }

    /// The direct map's physical address for `addr`, if `addr` is in it.
    #[inline(always)]
    pub(crate) fn dm_pa(&self, addr: u64) -> Option<u64> {
        match &self.dm {
            Some(d) if d.covers(addr.wrapping_sub(PAGE_OFFSET)) => Some(addr.wrapping_sub(PAGE_OFFSET)),
            _ => None,
        }
    }

    /// Leaves, the direct map's synthesised ones included.
    pub fn leaves(&self) -> usize {
        self.maps.iter().map(|m| m.len()).sum::<usize>() + self.dm.as_ref().map_or(0, |d| d.leaves().iter().sum::<u64>() as usize)
    }

    /// Ask the host CPU to load what a walk of `addr` will read (a hint: no effect on results).
    #[inline(always)]
    pub fn prefetch(&self, addr: u64) {
        if self.dm_pa(addr).is_some() {
            return; // a bitmap read, nothing worth prefetching
        }
        for s in PageSize::ALL {
            let m = &self.maps[s as usize];
            if !m.is_empty() {
                m.prefetch(addr >> s.shift());
            }
        }
    }

    /// The leaf that maps `addr`, if any, and the address it translates to.
    #[inline]
    pub fn walk(&self, addr: u64) -> Option<(Leaf, u64)> {
        if let Some(pa) = self.dm_pa(addr) {
            let d = self.dm.as_ref().expect("direct map");
            return Some((d.leaf(pa), pa));
        }
        for s in PageSize::ALL {
            let m = &self.maps[s as usize];
            if m.is_empty() {
                continue;
            }
            if let Some(v) = m.get(addr >> s.shift()) {
                let l = Leaf { target: v & !0xFFF, size: s, flags: v as u8 };
                return Some((l, l.target + (addr & (s.bytes() - 1))));
            }
        }
        None
    }

    /// Map [addr, addr + size) to `target`. Errors (the table unchanged) for a misaligned address
    /// or target, a non-canonical virtual address, and a leaf that would overlap another.
    pub fn map(&mut self, addr: u64, target: u64, size: PageSize, flags: u8) -> Result<()> {
        let b = size.bytes();
        if addr % b != 0 || target % b != 0 {
            return Err(EngineError::invalid(
                "addr",
                format!("a {} leaf needs {b:#x}-aligned addresses, got {addr:#x} -> {target:#x}", size.name()),
            ));
        }
        if self.kind != TableKind::Nested && !canonical(addr) {
            return Err(EngineError::invalid("addr", format!("addr = {addr:#x} is not a canonical virtual address")));
        }
        if self.kind == TableKind::Nested && addr >= 1 << 52 {
            return Err(EngineError::invalid("addr", format!("guest physical address {addr:#x} is beyond 52 bits")));
        }
        // a leaf of any size already covering addr, or smaller leaves inside the new one
        if let Some((l, _)) = self.walk(addr) {
            return Err(EngineError::invalid(
                "addr",
                format!("addr = {addr:#x} is already mapped by a {} leaf: unmap it first (overlapping leaves)", l.size.name()),
            ));
        }
        if size != PageSize::K4 && self.inner[size as usize - 1].get(&(addr >> size.shift())).copied().unwrap_or(0) > 0 {
            return Err(EngineError::invalid(
                "addr",
                format!("[{addr:#x}, +{b:#x}) already holds smaller leaves (overlapping leaves)"),
            ));
        }
        // a target is at least 4 KiB aligned (checked above): its low 12 bits carry the flags
        self.maps[size as usize].insert(addr >> size.shift(), target | flags as u64);
        for big in [PageSize::M2, PageSize::G1] {
            if big > size {
                *self.inner[big as usize - 1].entry(addr >> big.shift()).or_insert(0) += 1;
            }
        }
        self.gen += 1;
        Ok(())
    }

    /// Remove the leaf that maps `addr`; returns it (None, and no change, if nothing maps it).
    /// The direct map is not unmapped leaf by leaf: None for its addresses (Host::unmap refuses
    /// them with an error).
    pub fn unmap(&mut self, addr: u64) -> Option<Leaf> {
        if self.dm_pa(addr).is_some() {
            return None;
        }
        let (l, _) = self.walk(addr)?;
        let base = addr & !(l.size.bytes() - 1);
        self.maps[l.size as usize].remove(base >> l.size.shift());
        for big in [PageSize::M2, PageSize::G1] {
            if big > l.size {
                let k = base >> big.shift();
                let e = self.inner[big as usize - 1].get_mut(&k).expect("inner count");
                *e -= 1;
                if *e == 0 {
                    self.inner[big as usize - 1].remove(&k);
                }
            }
        }
        self.gen += 1;
        Some(l)
    }

    /// Every stored leaf of size `size` (for splitting and inspection; not the direct map's).
    pub fn leaves_of(&self, size: PageSize) -> impl Iterator<Item = (u64, Leaf)> + '_ {
        self.maps[size as usize].iter().map(move |(k, v)| (k << size.shift(), Leaf { target: v & !0xFFF, size, flags: v as u8 }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walk_map_unmap_and_overlaps() {
        let mut t = Table::new(TableKind::Guest);
        t.map(0x20_0000, 0x4000_0000, PageSize::M2, F_CBIT).unwrap();
        t.map(0x1000, 0x9000, PageSize::K4, 0).unwrap();
        assert_eq!(t.walk(0x20_1234).unwrap().1, 0x4000_1234);
        assert_eq!(t.walk(0x1fff).unwrap().1, 0x9fff);
        assert!(t.walk(0x2000).is_none());
        let g = t.gen;
        // overlaps are refused and change nothing
        assert!(t.map(0x20_1000, 0, PageSize::K4, 0).is_err());
        assert!(t.map(0, 0, PageSize::M2, 0).is_err()); // holds the 4K leaf at 0x1000
        assert!(t.map(0, 0, PageSize::G1, 0).is_err());
        assert!(t.map(0x1000, 0, PageSize::K4, 0).is_err());
        assert!(t.map(0x3000, 0x1001, PageSize::K4, 0).is_err()); // misaligned target
        assert!(t.map(0x0000_8000_0000_0000, 0, PageSize::K4, 0).is_err()); // non-canonical
        assert_eq!(t.gen, g);
        assert_eq!(t.unmap(0x1234).unwrap().target, 0x9000);
        t.map(0, 0x60_0000, PageSize::M2, 0).unwrap();
        assert_eq!(t.walk(0x1234).unwrap().1, 0x60_1234);
        assert!(t.unmap(0x40_0000).is_none());
        assert!(t.map(0xffff_8000_0000_0000, 0, PageSize::G1, F_GLOBAL).is_ok());
    }
}
