//! Set-associative caches held as one flat array of packed 64-bit lines per level (all instances
//! of a level side by side), with true LRU kept by order: each set's ways are stored from most to
//! least recently used, valid lines first, so the victim is always the last way.
//!
//! A line packs its physical line number (40 bits: 64 TiB of memory), the encryption key it was
//! filled under (16 bits), and its state bits. MOESI-style state is two bits: DIRTY and EXCL
//! (M = dirty+excl, O = dirty, E = excl, S = neither). STALE marks a line cached under a key slot
//! that has since been given a new key (firmware ACTIVATE after a recycle, semantics.md 1.6 case D).

pub const LINE_MASK: u64 = (1 << 40) - 1;
pub const KEY_SHIFT: u32 = 40;
pub const KEY_MASK: u64 = 0xFFFF << KEY_SHIFT;
pub const STALE: u64 = 1 << 56;
pub const EXCL: u64 = 1 << 57;
pub const DIRTY: u64 = 1 << 58;
pub const VALID: u64 = 1 << 63;
/// Compare line number, key and valid: the identity of a cached copy.
pub const MATCH_KEYED: u64 = LINE_MASK | KEY_MASK | VALID;
/// Compare line number and valid only: any key's alias of a physical line.
pub const MATCH_ANY: u64 = LINE_MASK | VALID;

#[inline(always)]
pub fn tag(line: u64, key: u16) -> u64 {
    line | ((key as u64) << KEY_SHIFT) | VALID
}
#[inline(always)]
pub fn line_of(v: u64) -> u64 {
    v & LINE_MASK
}
#[inline(always)]
pub fn key_of(v: u64) -> u16 {
    ((v & KEY_MASK) >> KEY_SHIFT) as u16
}

/// All instances of one cache level.
#[derive(Clone)]
pub struct Caches {
    pub ways: usize,
    pub sets: usize,
    pub insts: usize,
    set_mask: u64,
    pub data: Vec<u64>,
    /// valid lines per instance
    pub valid: Vec<u32>,
}

impl Caches {
    pub fn new(insts: usize, sets: usize, ways: usize) -> Self {
        debug_assert!(sets.is_power_of_two());
        Caches {
            ways,
            sets,
            insts,
            set_mask: (sets - 1) as u64,
            // vec![0; n] is calloc: pages are only committed when a set is first written.
            data: vec![0u64; insts * sets * ways],
            valid: vec![0u32; insts],
        }
    }

    pub fn lines_per_inst(&self) -> usize {
        self.sets * self.ways
    }

    /// Index of way 0 of the set that holds `line` in instance `inst`.
    #[inline(always)]
    pub fn base(&self, inst: usize, line: u64) -> usize {
        (inst * self.sets + (line & self.set_mask) as usize) * self.ways
    }

    /// Way of the first line at `base` with `v & mask == want`. Valid lines are packed at the front
    /// of a set, so the scan stops at the first invalid way.
    #[inline(always)]
    pub fn find(&self, base: usize, want: u64, mask: u64) -> Option<usize> {
        let set = &self.data[base..base + self.ways];
        for (i, &v) in set.iter().enumerate() {
            if v & mask == want {
                return Some(i);
            }
            if v == 0 {
                return None;
            }
        }
        None
    }

    /// Make way `i` the most recently used.
    #[inline(always)]
    pub fn touch(&mut self, base: usize, i: usize) {
        if i != 0 {
            self.data[base..=base + i].rotate_right(1);
        }
    }

    /// Insert `v` as the most recently used line; returns the evicted LRU line (0 if the set had a
    /// free way).
    #[inline(always)]
    pub fn insert(&mut self, inst: usize, base: usize, v: u64) -> u64 {
        let ways = self.ways;
        let set = &mut self.data[base..base + ways];
        let victim = set[ways - 1];
        set.rotate_right(1);
        set[0] = v;
        if victim == 0 {
            self.valid[inst] += 1;
        }
        victim
    }

    /// Remove way `i`, keeping the order of the others; returns the removed line.
    #[inline(always)]
    pub fn remove(&mut self, inst: usize, base: usize, i: usize) -> u64 {
        let ways = self.ways;
        let set = &mut self.data[base..base + ways];
        let v = set[i];
        set[i..].rotate_left(1);
        set[ways - 1] = 0;
        self.valid[inst] -= 1;
        v
    }

    /// Find and remove the copy matching `want` under `mask`.
    #[inline]
    pub fn take(&mut self, inst: usize, line: u64, want: u64, mask: u64) -> Option<u64> {
        let b = self.base(inst, line);
        self.find(b, want, mask).map(|i| self.remove(inst, b, i))
    }

    /// The lines of instance `inst` (including invalid ways).
    pub fn inst_slice(&self, inst: usize) -> &[u64] {
        let n = self.sets * self.ways;
        &self.data[inst * n..(inst + 1) * n]
    }

    pub fn inst_slice_mut(&mut self, inst: usize) -> &mut [u64] {
        let n = self.sets * self.ways;
        &mut self.data[inst * n..(inst + 1) * n]
    }

    /// Empty instance `inst`.
    pub fn clear_inst(&mut self, inst: usize) {
        if self.valid[inst] != 0 {
            self.inst_slice_mut(inst).fill(0);
            self.valid[inst] = 0;
        }
    }

    pub fn dirty_count(&self, inst: usize) -> u64 {
        self.inst_slice(inst).iter().filter(|&&v| v & DIRTY != 0).count() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lru_order_and_eviction() {
        let mut c = Caches::new(1, 1, 3);
        let b = c.base(0, 0);
        assert_eq!(c.insert(0, b, tag(1, 0)), 0);
        assert_eq!(c.insert(0, b, tag(2, 0)), 0);
        assert_eq!(c.insert(0, b, tag(3, 0)), 0);
        assert_eq!(c.valid[0], 3);
        // touch 1 -> order 1,3,2; inserting 4 evicts 2
        let i = c.find(b, tag(1, 0), MATCH_KEYED).unwrap();
        c.touch(b, i);
        assert_eq!(c.insert(0, b, tag(4, 0)), tag(2, 0));
        assert_eq!(c.valid[0], 3);
        assert_eq!(c.inst_slice(0), &[tag(4, 0), tag(1, 0), tag(3, 0)]);
        // removal keeps order and packs the invalid way at the end
        let i = c.find(b, tag(1, 0), MATCH_KEYED).unwrap();
        assert_eq!(c.remove(0, b, i), tag(1, 0));
        assert_eq!(c.inst_slice(0), &[tag(4, 0), tag(3, 0), 0]);
        assert_eq!(c.valid[0], 2);
        assert!(c.find(b, tag(1, 0), MATCH_KEYED).is_none());
    }

    #[test]
    fn keys_are_distinct_aliases() {
        let mut c = Caches::new(1, 2, 2);
        let b = c.base(0, 5);
        c.insert(0, b, tag(5, 1) | DIRTY);
        assert!(c.find(b, tag(5, 2), MATCH_KEYED).is_none());
        assert!(c.find(b, tag(5, 2) & MATCH_ANY, MATCH_ANY).is_some());
        assert_eq!(key_of(c.data[b]), 1);
        assert_eq!(line_of(c.data[b]), 5);
        assert_eq!(c.dirty_count(0), 1);
    }
}
