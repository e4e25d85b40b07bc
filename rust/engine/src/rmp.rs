//! The SEV-SNP Reverse Map Table, stored by 2 MiB region: nothing for a region whose pages all
//! belong to the hypervisor, one record for a region covered by a 2 MiB entry, one record (a
//! `Run`: ASID, immutable bit, the GPA of the region's first page, an assigned and a validated
//! bitmap) for a region whose 4 KiB entries are uniform (every assigned page of one ASID at
//! consecutive GPAs, the others blank), and 512 records only for a region whose 4 KiB entries are
//! not. An untouched 1.5 TiB host costs a 96 KiB bit array; 256 GiB of uniform 4 KiB entries cost
//! about 28 MiB instead of the 1 GiB the 512-record form takes. The form is never visible: every
//! entry, return code and check is the same in all of them.
//!
//! Semantics: semantics.md 5.1-5.3 (APM vol. 2 15.36 via Linux arch/x86/virt/svm/sev.c).

use std::collections::HashMap;

use crate::util::FxBuild;

/// Return codes of RMPUPDATE, PSMASH and PVALIDATE (APM; Linux's RMPUPDATE_FAIL_OVERLAP = 4,
/// PVALIDATE_FAIL_SIZEMISMATCH = 6).
pub const SUCCESS: u8 = 0;
pub const FAIL_INPUT: u8 = 1;
pub const FAIL_PERMISSION: u8 = 2;
pub const FAIL_INUSE: u8 = 3;
pub const FAIL_OVERLAP: u8 = 4;
pub const FAIL_SIZEMISMATCH: u8 = 6;
/// Not a return code: the instruction caused a #NPF with the RMP bit (and SIZEM where it says so),
/// which exits to the hypervisor (PVALIDATE of a 4 KiB page inside a 2 MiB entry, or of a page the
/// guest does not own).
pub const NPF_RMP: u8 = 0x80;
pub const NPF_RMP_SIZEM: u8 = 0x81;

pub const MAX_ASID: u16 = 1023; // a 10-bit field in the RMP entry (semantics.md 2.1, 5.1)

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RmpEntry {
    pub assigned: bool,
    /// true: part of a 2 MiB entry
    pub huge: bool,
    pub asid: u16,
    /// guest-physical address of this 4 KiB page
    pub gpa: u64,
    pub validated: bool,
    pub immutable: bool,
}

#[derive(Clone)]
enum Region {
    /// one 2 MiB entry (`gpa` is the region's base GPA)
    Huge(RmpEntry),
    /// uniform 4 KiB entries
    Run(Box<Run>),
    /// 512 entries of 4 KiB, and how many of them are assigned
    Small(Box<[RmpEntry; 512]>, u16),
}

/// 4 KiB entries of one 2 MiB region: page k is assigned iff bit k of `assigned`, then to `asid`
/// at GPA `gpa0 + k * 4 KiB` with `immutable`, validated iff bit k of `validated`; an unassigned
/// page's entry is blank (all fields zero).
#[derive(Clone)]
struct Run {
    asid: u16,
    immutable: bool,
    /// the GPA page 0 would have (wrapping: only gpa0 + k * 4 KiB of an assigned k is meaningful)
    gpa0: u64,
    assigned: [u64; 8],
    validated: [u64; 8],
    n: u16,
}

#[inline(always)]
fn bit(b: &[u64; 8], k: usize) -> bool {
    b[k / 64] & (1 << (k % 64)) != 0
}

#[inline(always)]
fn put(b: &mut [u64; 8], k: usize, on: bool) {
    if on {
        b[k / 64] |= 1 << (k % 64);
    } else {
        b[k / 64] &= !(1 << (k % 64));
    }
}

impl Run {
    fn entry(&self, k: usize) -> RmpEntry {
        if !bit(&self.assigned, k) {
            return RmpEntry::default();
        }
        RmpEntry {
            assigned: true,
            huge: false,
            asid: self.asid,
            gpa: self.gpa0.wrapping_add((k as u64) << 12),
            validated: bit(&self.validated, k),
            immutable: self.immutable,
        }
    }

    /// Does entry `e` at page k fit the run as it is (an empty run fits anything assigned)?
    fn fits(&self, k: usize, e: &RmpEntry) -> bool {
        if *e == RmpEntry::default() {
            return true;
        }
        if !e.assigned || e.huge {
            return false;
        }
        let others = self.n - bit(&self.assigned, k) as u16;
        others == 0 || (e.asid == self.asid && e.immutable == self.immutable && e.gpa == self.gpa0.wrapping_add((k as u64) << 12))
    }

    /// Write `e` (which fits) at page k.
    fn set(&mut self, k: usize, e: &RmpEntry) {
        let was = bit(&self.assigned, k);
        if e.assigned {
            if self.n - was as u16 == 0 {
                self.asid = e.asid;
                self.immutable = e.immutable;
                self.gpa0 = e.gpa.wrapping_sub((k as u64) << 12);
            }
            put(&mut self.assigned, k, true);
            self.n += !was as u16;
        } else {
            put(&mut self.assigned, k, false);
            self.n -= was as u16;
        }
        put(&mut self.validated, k, e.validated);
    }

    fn dense(&self) -> Box<[RmpEntry; 512]> {
        let mut es = Box::new([RmpEntry::default(); 512]);
        for (k, x) in es.iter_mut().enumerate() {
            *x = self.entry(k);
        }
        es
    }
}

pub struct Rmp {
    regions: HashMap<u32, Region, FxBuild>,
    /// one bit per 2 MiB region: does it hold any assigned page (the host-write check's fast path;
    /// 96 KiB for 1.5 TiB)
    has_assigned: Vec<u64>,
}

/// The new state RMPUPDATE writes (rCX points to it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RmpState {
    pub assigned: bool,
    pub huge: bool,
    pub asid: u16,
    pub gpa: u64,
    pub immutable: bool,
}

impl Rmp {
    pub fn new(memory: u64) -> Self {
        Rmp { regions: HashMap::default(), has_assigned: vec![0; memory.div_ceil(1 << 21).div_ceil(64) as usize] }
    }

    /// Assigned 4 KiB pages in the 2 MiB region `r` (512 for an assigned 2 MiB entry).
    pub fn assigned_in(&self, r: u32) -> u16 {
        match self.regions.get(&r) {
            None => 0,
            Some(Region::Huge(e)) => 512 * e.assigned as u16,
            Some(Region::Run(r)) => r.n,
            Some(Region::Small(_, n)) => *n,
        }
    }

    fn set_bit(&mut self, r: u32, on: bool) {
        let (w, b) = ((r / 64) as usize, r % 64);
        if on {
            self.has_assigned[w] |= 1 << b;
        } else {
            self.has_assigned[w] &= !(1 << b);
        }
    }

    /// The entry of the 4 KiB page at `pa` (the size from the 2 MiB-aligned entry, 5.1).
    #[inline]
    pub fn entry(&self, pa: u64) -> RmpEntry {
        let r = (pa >> 21) as u32;
        match self.regions.get(&r) {
            None => RmpEntry::default(),
            Some(Region::Huge(e)) => RmpEntry { gpa: e.gpa + (pa & 0x1F_F000), ..*e },
            Some(Region::Run(r)) => r.entry(((pa >> 12) & 511) as usize),
            Some(Region::Small(es, _)) => es[((pa >> 12) & 511) as usize],
        }
    }

    #[inline]
    pub fn region_has_assigned(&self, pa: u64) -> bool {
        let r = pa >> 21;
        self.has_assigned[(r / 64) as usize] & (1 << (r % 64)) != 0
    }

    pub fn regions_stored(&self) -> usize {
        self.regions.len()
    }

    pub fn heap_bytes(&self) -> usize {
        self.has_assigned.len() * 8
            + self
                .regions
                .values()
                .map(|r| match r {
                    Region::Huge(_) => 48,
                    Region::Run(_) => 48 + std::mem::size_of::<Run>(),
                    Region::Small(..) => 48 + 512 * std::mem::size_of::<RmpEntry>(),
                })
                .sum::<usize>()
    }

    /// Bring the region's count, bit and storage up to date after an update.
    fn recount(&mut self, r: u32) {
        let mut keep = false;
        let n = match self.regions.get_mut(&r) {
            None => 0,
            Some(Region::Huge(e)) => {
                keep = e.assigned || e.immutable;
                512 * e.assigned as u16
            }
            Some(Region::Run(r)) => {
                keep = r.n > 0;
                r.n
            }
            Some(Region::Small(es, n)) => {
                *n = es.iter().filter(|e| e.assigned).count() as u16;
                keep = es.iter().any(|e| e.assigned || e.immutable);
                *n
            }
        };
        self.set_bit(r, n != 0);
        // all hypervisor-owned and nothing immutable: nothing left to store
        if !keep {
            self.regions.remove(&r);
        }
    }

    /// RMPUPDATE of the page (4 KiB) or region (2 MiB) at `pa` (aligned by the caller's checks
    /// for API misuse; hardware-rejected inputs give FAIL_INPUT). Always clears Validated.
    pub fn update(&mut self, pa: u64, new: RmpState) -> u8 {
        let r = (pa >> 21) as u32;
        let size = if new.huge { 1u64 << 21 } else { 4096 };
        if pa % size != 0 || (new.assigned && new.gpa % size != 0) || new.asid > MAX_ASID {
            return FAIL_INPUT;
        }
        if new.huge {
            match self.regions.get(&r) {
                Some(Region::Huge(e)) if e.immutable => return FAIL_PERMISSION,
                // a stored run holds assigned pages
                Some(Region::Run(run)) => return if run.immutable { FAIL_PERMISSION } else { FAIL_OVERLAP },
                Some(Region::Small(es, _)) => {
                    if es.iter().any(|e| e.immutable) {
                        return FAIL_PERMISSION;
                    }
                    // a 2 MiB entry needs the region's 4 KiB entries unassigned (5.2)
                    if es.iter().any(|e| e.assigned) {
                        return FAIL_OVERLAP;
                    }
                }
                _ => {}
            }
            let e = RmpEntry { assigned: new.assigned, huge: true, asid: new.asid, gpa: new.gpa, validated: false, immutable: new.immutable };
            if new.assigned || new.immutable {
                self.regions.insert(r, Region::Huge(e));
            } else {
                self.regions.remove(&r);
            }
        } else {
            let i = ((pa >> 12) & 511) as usize;
            let e = RmpEntry { assigned: new.assigned, huge: false, asid: new.asid, gpa: new.gpa, validated: false, immutable: new.immutable };
            match self.regions.get_mut(&r) {
                Some(Region::Huge(h)) => {
                    if h.immutable {
                        return FAIL_PERMISSION;
                    }
                    if h.assigned {
                        // the 2 MiB entry covers this page: PSMASH it first
                        return FAIL_OVERLAP;
                    }
                    let mut es = Box::new([RmpEntry::default(); 512]);
                    es[i] = e;
                    self.regions.insert(r, Region::Small(es, 0));
                }
                Some(Region::Run(run)) => {
                    if bit(&run.assigned, i) && run.immutable {
                        return FAIL_PERMISSION;
                    }
                    if run.fits(i, &e) {
                        run.set(i, &e);
                        if run.n == 0 {
                            self.regions.remove(&r);
                            self.set_bit(r, false);
                        }
                        return SUCCESS;
                    }
                    // not uniform any more: 512 records from now on
                    let mut es = run.dense();
                    es[i] = e;
                    self.regions.insert(r, Region::Small(es, 0));
                }
                Some(Region::Small(es, n)) => {
                    if es[i].immutable {
                        return FAIL_PERMISSION;
                    }
                    // incremental count: no need to recount the region
                    let before = es[i].assigned;
                    es[i] = e;
                    if before != e.assigned {
                        if e.assigned {
                            *n += 1;
                        } else {
                            *n -= 1;
                        }
                    }
                    let left = *n;
                    if left == 0 {
                        self.recount(r); // possibly nothing left to store
                    } else {
                        self.set_bit(r, true);
                    }
                    return SUCCESS;
                }
                None => {
                    let mut run = Box::new(Run { asid: 0, immutable: false, gpa0: 0, assigned: [0; 8], validated: [0; 8], n: 0 });
                    if run.fits(i, &e) {
                        if !e.assigned {
                            return SUCCESS; // a blank entry in a blank region: nothing to store
                        }
                        run.set(i, &e);
                        self.regions.insert(r, Region::Run(run));
                        self.set_bit(r, true);
                        return SUCCESS;
                    }
                    let mut es = Box::new([RmpEntry::default(); 512]);
                    es[i] = e;
                    self.regions.insert(r, Region::Small(es, 0));
                }
            }
        }
        self.recount(r);
        SUCCESS
    }

    /// PSMASH: split the 2 MiB entry at `pa` into 512 4 KiB entries with the same ASID,
    /// consecutive GPAs, immutable bit, and Validated kept (5.2).
    pub fn psmash(&mut self, pa: u64) -> u8 {
        if pa % (1 << 21) != 0 {
            return FAIL_INPUT;
        }
        let r = (pa >> 21) as u32;
        match self.regions.get(&r) {
            Some(Region::Huge(e)) if e.assigned => {
                let e = *e;
                let v = if e.validated { u64::MAX } else { 0 };
                let run = Run { asid: e.asid, immutable: e.immutable, gpa0: e.gpa, assigned: [u64::MAX; 8], validated: [v; 8], n: 512 };
                self.regions.insert(r, Region::Run(Box::new(run)));
                SUCCESS
            }
            _ => FAIL_INPUT,
        }
    }

    /// PVALIDATE by guest `asid` of the page at `pa` mapped at guest-physical `gpa`, 4 KiB or
    /// 2 MiB: (code, changed). A 2 MiB request on 4 KiB entries fails with FAIL_SIZEMISMATCH; a
    /// 4 KiB request inside a 2 MiB entry, or a page the guest does not own at that GPA, is a #NPF.
    pub fn pvalidate(&mut self, pa: u64, asid: u16, gpa: u64, huge: bool, validate: bool) -> (u8, bool) {
        let size = if huge { 1u64 << 21 } else { 4096 };
        if pa % size != 0 || gpa % size != 0 {
            return (FAIL_INPUT, false);
        }
        let r = (pa >> 21) as u32;
        let owned = |e: &RmpEntry, gpa: u64| e.assigned && e.asid == asid && e.gpa == gpa;
        match self.regions.get_mut(&r) {
            Some(Region::Huge(e)) => {
                if !huge {
                    return if owned(&RmpEntry { gpa: e.gpa + (pa & 0x1F_F000), ..*e }, gpa) { (NPF_RMP_SIZEM, false) } else { (NPF_RMP, false) };
                }
                if !owned(e, gpa) {
                    return (NPF_RMP, false);
                }
                let changed = e.validated != validate;
                e.validated = validate;
                (SUCCESS, changed)
            }
            Some(Region::Run(run)) => {
                if huge {
                    return (FAIL_SIZEMISMATCH, false);
                }
                let k = ((pa >> 12) & 511) as usize;
                if !owned(&run.entry(k), gpa) {
                    return (NPF_RMP, false);
                }
                let changed = bit(&run.validated, k) != validate;
                put(&mut run.validated, k, validate);
                (SUCCESS, changed)
            }
            Some(Region::Small(es, _)) => {
                if huge {
                    return (FAIL_SIZEMISMATCH, false);
                }
                let e = &mut es[((pa >> 12) & 511) as usize];
                if !owned(e, gpa) {
                    return (NPF_RMP, false);
                }
                let changed = e.validated != validate;
                e.validated = validate;
                (SUCCESS, changed)
            }
            None => (if huge { FAIL_SIZEMISMATCH } else { NPF_RMP }, false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assign(asid: u16, gpa: u64, huge: bool) -> RmpState {
        RmpState { assigned: true, huge, asid, gpa, immutable: false }
    }
    const SHARED4K: RmpState = RmpState { assigned: false, huge: false, asid: 0, gpa: 0, immutable: false };

    #[test]
    fn update_codes() {
        let mut r = Rmp::new(64 << 20);
        assert_eq!(r.update(0x1000, assign(5, 0x1000, false)), SUCCESS);
        assert_eq!(r.entry(0x1000).asid, 5);
        assert!(r.region_has_assigned(0x1000));
        // 2 MiB over a region with an assigned 4K entry
        assert_eq!(r.update(0, assign(5, 0, true)), FAIL_OVERLAP);
        assert_eq!(r.update(0x20_0000, assign(5, 0x20_1000, true)), FAIL_INPUT); // misaligned GPA
        assert_eq!(r.update(0x20_1000, assign(5, 0x20_0000, true)), FAIL_INPUT); // misaligned SPA
        assert_eq!(r.update(0x20_0000, assign(5, 0x20_0000, true)), SUCCESS);
        assert_eq!(r.entry(0x20_3000).gpa, 0x20_3000);
        assert_eq!(r.update(0x20_3000, SHARED4K), FAIL_OVERLAP); // inside a 2M entry
        assert_eq!(r.update(0x40_0000, RmpState { immutable: true, ..assign(0, 0x40_0000, false) }), SUCCESS);
        assert_eq!(r.update(0x40_0000, SHARED4K), FAIL_PERMISSION);
        assert_eq!(r.update(0x40_0000, assign(1, 0, true)), FAIL_PERMISSION);
        assert_eq!(r.update(0x1000, SHARED4K), SUCCESS);
        assert_eq!(r.regions_stored(), 2, "the emptied region is dropped");
    }

    #[test]
    fn psmash_then_partial_unassign() {
        let mut r = Rmp::new(64 << 20);
        assert_eq!(r.update(0x20_0000, assign(7, 0x8000_0000, true)), SUCCESS);
        assert_eq!(r.pvalidate(0x20_0000, 7, 0x8000_0000, true, true), (SUCCESS, true));
        assert_eq!(r.pvalidate(0x20_0000, 7, 0x8000_0000, true, true), (SUCCESS, false)); // no change
        assert_eq!(r.pvalidate(0x20_1000, 7, 0x8000_1000, false, true), (NPF_RMP_SIZEM, false));
        assert_eq!(r.psmash(0x20_0000), SUCCESS);
        let e = r.entry(0x20_5000);
        assert!(e.assigned && e.validated && !e.huge && e.gpa == 0x8000_5000);
        assert_eq!(r.pvalidate(0x20_0000, 7, 0x8000_0000, true, false), (FAIL_SIZEMISMATCH, false));
        assert_eq!(r.update(0x20_5000, SHARED4K), SUCCESS);
        assert_eq!(r.assigned_in(1), 511);
        assert_eq!(r.pvalidate(0x20_6000, 7, 0x8000_6000, false, false), (SUCCESS, true));
        assert_eq!(r.pvalidate(0x20_6000, 8, 0x8000_6000, false, false), (NPF_RMP, false)); // another ASID
        assert_eq!(r.psmash(0x20_0000), FAIL_INPUT); // not a 2M entry any more
    }

    #[test]
    fn uniform_4k_runs_are_one_record_and_agree_with_the_dense_form() {
        let mut r = Rmp::new(64 << 20);
        // 512 consecutive GPAs of one ASID: one run
        for k in 0..512u64 {
            assert_eq!(r.update(0x20_0000 + (k << 12), assign(3, 0x4000_0000 + (k << 12), false)), SUCCESS);
        }
        assert!(matches!(r.regions.get(&1), Some(Region::Run(_))));
        assert_eq!(r.pvalidate(0x20_5000, 3, 0x4000_5000, false, true), (SUCCESS, true));
        assert_eq!(r.pvalidate(0x20_5000, 3, 0x4000_6000, false, true), (NPF_RMP, false)); // wrong GPA
        assert_eq!(r.pvalidate(0x20_0000, 3, 0x4000_0000, true, true), (FAIL_SIZEMISMATCH, false));
        assert_eq!(r.update(0x20_0000, assign(3, 0x4000_0000, true)), FAIL_OVERLAP);
        let e = r.entry(0x20_5000);
        assert_eq!(e, RmpEntry { assigned: true, huge: false, asid: 3, gpa: 0x4000_5000, validated: true, immutable: false });
        // a page of another GPA breaks uniformity: the region goes to 512 records, same entries
        assert_eq!(r.update(0x20_7000, assign(3, 0x9000, false)), SUCCESS);
        assert!(matches!(r.regions.get(&1), Some(Region::Small(..))));
        assert_eq!(r.entry(0x20_5000), e);
        assert_eq!(r.entry(0x20_7000).gpa, 0x9000);
        assert_eq!(r.assigned_in(1), 512);
        // a run emptied page by page is dropped
        for k in 0..3u64 {
            r.update(0x40_0000 + (k << 12), assign(4, k << 12, false));
        }
        for k in 0..3u64 {
            r.update(0x40_0000 + (k << 12), SHARED4K);
        }
        assert_eq!(r.assigned_in(2), 0);
        assert!(r.regions.get(&2).is_none() && !r.region_has_assigned(0x40_0000));
        // PSMASH gives a run too, validated kept
        r.update(0x60_0000, assign(5, 0x20_0000, true));
        r.pvalidate(0x60_0000, 5, 0x20_0000, true, true);
        assert_eq!(r.psmash(0x60_0000), SUCCESS);
        assert!(matches!(r.regions.get(&3), Some(Region::Run(_))));
        assert!(r.entry(0x61_0000).validated && r.entry(0x61_0000).gpa == 0x21_0000);
        // an immutable page in a run refuses updates
        r.update(0x80_0000, RmpState { immutable: true, ..assign(6, 0, false) });
        assert_eq!(r.update(0x80_0000, SHARED4K), FAIL_PERMISSION);
        assert_eq!(r.update(0x80_1000, assign(6, 0x1000, false)), SUCCESS, "fits only with immutable");
        assert!(matches!(r.regions.get(&4), Some(Region::Small(..))));
    }

    #[test]
    fn storage_is_sparse() {
        let mut r = Rmp::new(1536 << 30);
        let empty = r.heap_bytes();
        assert!(empty < 128 << 10, "an untouched 1.5 TiB RMP costs kilobytes: {empty}");
        for i in 0..4096u64 {
            r.update(i << 21, assign(1, i << 21, true));
        }
        assert!(r.heap_bytes() - empty < 512 << 10);
        // 16 GiB of uniform 4 KiB entries: a run record per region, not 512
        let before = r.heap_bytes();
        for p in 0..(16u64 << 30 >> 12) {
            r.update((8 << 30) + (p << 12), assign(2, p << 12, false));
        }
        let per_region = (r.heap_bytes() - before) / 8192;
        assert!(per_region < 256, "{per_region} bytes per 2 MiB region");
    }
}
