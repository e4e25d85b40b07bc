//! Page tables the engine walks, held sparsely: one map per leaf size (4 KiB, 2 MiB, 1 GiB).
//!
//! Three kinds share the structure: host tables (virtual -> physical, the direct map among them),
//! guest tables (guest virtual -> guest physical, per address space) and nested tables (guest
//! physical -> host physical: NPT on SVM, EPT on VMX). Editing a table never touches a TLB: that is
//! the invalidation instructions' job, and forgetting one is what the stale-translation oracle
//! catches. Every table has an edit generation, so a TLB hit filled since the last edit is known
//! to agree with the table without walking it.

use std::collections::HashMap;

use crate::error::{EngineError, Result};
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
pub const F_WRITABLE: u8 = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leaf {
    /// base address of the target frame
    pub target: u64,
    pub size: PageSize,
    pub flags: u8,
}

/// The leaves of one size: page number -> (target | flags), in an open-addressed table with linear
/// probing, 16-byte slots (a walk reads one host cache line, whose address `prefetch` can ask for
/// ahead of time; a general hash map hides it).
#[derive(Default)]
struct LeafMap {
    /// page number + 1 (0: free), and the leaf's target frame | flags
    slots: Vec<[u64; 2]>,
    len: usize,
}

impl LeafMap {
    #[inline(always)]
    fn home(&self, page: u64) -> usize {
        // Fibonacci hashing: the multiply's high bits index a power-of-two table
        let bits = self.slots.len().trailing_zeros();
        (page.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - bits)) as usize
    }

    /// The slot holding `page` (true), or the free slot that ends its probe run (false). The
    /// table must have slots.
    #[inline(always)]
    fn slot(&self, page: u64) -> (usize, bool) {
        let mask = self.slots.len() - 1;
        let mut i = self.home(page);
        loop {
            let k = self.slots[i][0];
            if k == page + 1 || k == 0 {
                return (i, k != 0);
            }
            i = (i + 1) & mask;
        }
    }

    #[inline]
    fn get(&self, page: u64) -> Option<u64> {
        if self.len == 0 {
            return None;
        }
        let (i, found) = self.slot(page);
        found.then(|| self.slots[i][1])
    }

    #[inline(always)]
    fn prefetch(&self, page: u64) {
        if self.len != 0 {
            let i = self.home(page);
            crate::util::prefetch(&self.slots[i]);
        }
    }

    /// Insert or replace.
    fn insert(&mut self, page: u64, v: u64) {
        if (self.len + 1) * 2 > self.slots.len() {
            self.grow();
        }
        let (i, found) = self.slot(page);
        self.len += !found as usize;
        self.slots[i] = [page + 1, v];
    }

    fn grow(&mut self) {
        let cap = (self.slots.len() * 2).max(16);
        let old = std::mem::replace(&mut self.slots, vec![[0, 0]; cap]);
        self.len = 0;
        for [k, v] in old {
            if k != 0 {
                self.insert(k - 1, v);
            }
        }
    }

    /// Remove `page`'s leaf; the slots after it in its probe run move back (no tombstones).
    fn remove(&mut self, page: u64) -> Option<u64> {
        if self.len == 0 {
            return None;
        }
        let (i, found) = self.slot(page);
        if !found {
            return None;
        }
        let v = self.slots[i][1];
        self.len -= 1;
        // backward-shift deletion (Knuth 6.4 Algorithm R)
        let mask = self.slots.len() - 1;
        let mut hole = i;
        let mut j = i;
        loop {
            j = (j + 1) & mask;
            let kj = self.slots[j][0];
            if kj == 0 {
                break;
            }
            let h = self.home(kj - 1);
            // move slot j into the hole unless its home lies cyclically in (hole, j]
            let stays = if hole <= j { hole < h && h <= j } else { hole < h || h <= j };
            if !stays {
                self.slots[hole] = self.slots[j];
                hole = j;
            }
        }
        self.slots[hole] = [0, 0];
        Some(v)
    }

    fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.slots.iter().filter(|s| s[0] != 0).map(|&[k, v]| (k - 1, v))
    }
}

/// One page table.
pub struct Table {
    pub kind: TableKind,
    /// bumped on every edit
    pub gen: u64,
    maps: [LeafMap; 3],
    /// leaves of smaller sizes inside each 2 MiB and 1 GiB region (to refuse overlaps)
    inner: [HashMap<u64, u32, FxBuild>; 2],
}

/// Canonical 48-bit virtual address (bits 63:47 all equal).
pub fn canonical(va: u64) -> bool {
    let top = va >> 47;
    top == 0 || top == (1 << 17) - 1
}

impl Table {
    pub fn new(kind: TableKind) -> Self {
        Table { kind, gen: 0, maps: Default::default(), inner: Default::default() }
    }

    pub fn leaves(&self) -> usize {
        self.maps.iter().map(|m| m.len).sum()
    }

    /// Ask the host CPU to load what a walk of `addr` will read (a hint: no effect on results).
    #[inline(always)]
    pub fn prefetch(&self, addr: u64) {
        for s in PageSize::ALL {
            self.maps[s as usize].prefetch(addr >> s.shift());
        }
    }

    /// The leaf that maps `addr`, if any, and the address it translates to.
    #[inline]
    pub fn walk(&self, addr: u64) -> Option<(Leaf, u64)> {
        for s in [PageSize::K4, PageSize::M2, PageSize::G1] {
            if let Some(v) = self.maps[s as usize].get(addr >> s.shift()) {
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
            return Err(EngineError::invalid("addr", format!("{addr:#x} is not a canonical virtual address")));
        }
        if self.kind == TableKind::Nested && addr >= 1 << 52 {
            return Err(EngineError::invalid("addr", format!("guest physical address {addr:#x} is beyond 52 bits")));
        }
        // a leaf of any size already covering addr, or smaller leaves inside the new one
        if let Some((l, _)) = self.walk(addr) {
            return Err(EngineError::invalid(
                "addr",
                format!("{addr:#x} is already mapped by a {} leaf: unmap it first (overlapping leaves)", l.size.name()),
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
    pub fn unmap(&mut self, addr: u64) -> Option<Leaf> {
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

    /// Every leaf of size `size` (for splitting and inspection).
    pub fn leaves_of(&self, size: PageSize) -> impl Iterator<Item = (u64, Leaf)> + '_ {
        self.maps[size as usize].iter().map(move |(k, v)| (k << size.shift(), Leaf { target: v & !0xFFF, size, flags: v as u8 }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The open-addressed leaf map against a HashMap over random inserts, replacements, removals
    /// and lookups, on keys that collide (clustered pages, a small table) so probe runs wrap and
    /// removals shift runs back.
    #[test]
    fn leaf_map_matches_a_hash_map() {
        let mut m = LeafMap::default();
        let mut r: HashMap<u64, u64> = HashMap::new();
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for step in 0..200_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // a narrow key range in phases: the table grows, shrinks to few keys, grows again
            let range = if (step / 20_000) % 2 == 0 { 3000 } else { 40 };
            let page = (x >> 8) % range * 7;
            match x % 5 {
                0 | 1 => {
                    m.insert(page, step << 12);
                    r.insert(page, step << 12);
                }
                2 | 3 => assert_eq!(m.remove(page), r.remove(&page), "step {step}"),
                _ => assert_eq!(m.get(page), r.get(&page).copied(), "step {step}"),
            }
            assert_eq!(m.len, r.len());
            if step % 10_000 == 0 {
                for (&k, &v) in &r {
                    assert_eq!(m.get(k), Some(v), "step {step} key {k}");
                }
                let mut got: Vec<(u64, u64)> = m.iter().collect();
                got.sort();
                let mut want: Vec<(u64, u64)> = r.iter().map(|(&k, &v)| (k, v)).collect();
                want.sort();
                assert_eq!(got, want);
            }
        }
    }

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
