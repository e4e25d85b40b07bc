//! The coherence directory (standing in for the probe filter): physical line -> mask of the CCDs
//! whose caches may hold a copy of it under any key.
//!
//! The mask is a superset: a bit is set whenever a CCD gains a copy, and cleared lazily, when a
//! lookup scans the CCD and finds nothing. The table is rebuilt from the caches when it grows much
//! larger than the number of cached lines. An open-addressing table with linear probing and
//! backward-shift deletion: one flat array of (key, mask) slots, so that a lookup touches one host
//! cache line, and no allocation per operation.

use crate::cache::LineArray;

const EMPTY: u64 = 0;

pub struct Directory {
    /// slot i is (line + 1, CCD mask) at 2i, 2i + 1; line + 1 = 0 marks an empty slot. A LineArray:
    /// 64-byte aligned and, when large, backed by transparent huge pages (random lookups over
    /// hundreds of MiB otherwise pay a host TLB miss each).
    slots: LineArray,
    len: usize,
    shift: u32,
}

#[inline(always)]
fn hash(k: u64, shift: u32) -> usize {
    (k.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> shift) as usize
}

impl Default for Directory {
    fn default() -> Self {
        Self::new()
    }
}

impl Directory {
    pub fn new() -> Self {
        Self::with_capacity_pow2(10)
    }

    fn with_capacity_pow2(bits: u32) -> Self {
        let n = 1usize << bits;
        Directory { slots: LineArray::zeroed(2 * n), len: 0, shift: 64 - bits }
    }

    /// Number of slots.
    #[inline(always)]
    fn cap(&self) -> usize {
        self.slots.len() / 2
    }

    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn bytes(&self) -> usize {
        self.cap() * 16
    }

    /// Ask the host CPU to start loading the slot where a lookup of `line` begins (a hint only).
    #[inline(always)]
    pub fn prefetch(&self, line: u64) {
        crate::util::prefetch_at(self.slots.as_ptr(), 2 * hash(line + 1, self.shift));
    }

    pub fn clear(&mut self) {
        *self = Self::new();
    }

    #[inline(always)]
    fn slot(&self, line: u64) -> (usize, bool) {
        let k = line + 1;
        let m = self.cap() - 1;
        let mut i = hash(k, self.shift);
        loop {
            let s = self.slots[2 * i];
            if s == k {
                return (i, true);
            }
            if s == EMPTY {
                return (i, false);
            }
            i = (i + 1) & m;
        }
    }

    /// The CCD mask of `line` (0 if untracked).
    #[inline]
    pub fn get(&self, line: u64) -> u64 {
        let (i, found) = self.slot(line);
        if found {
            self.slots[2 * i + 1]
        } else {
            0
        }
    }

    /// Set `bits` in the mask of `line`.
    #[inline]
    pub fn add(&mut self, line: u64, bits: u64) {
        let (i, found) = self.slot(line);
        if found {
            self.slots[2 * i + 1] |= bits;
            return;
        }
        self.slots[2 * i] = line + 1;
        self.slots[2 * i + 1] = bits;
        self.len += 1;
        // grow past 3/4 full: linear probing stays short, and a full 512-CPU host's ~21 M cached
        // lines fit 2^25 slots (512 MiB) rather than 2^26
        if self.len * 4 > self.cap() * 3 {
            self.grow();
        }
    }

    /// Replace the mask of `line`; a zero mask removes the entry.
    #[inline]
    pub fn set(&mut self, line: u64, mask: u64) {
        if mask == 0 {
            self.remove(line);
        } else {
            let (i, found) = self.slot(line);
            if found {
                self.slots[2 * i + 1] = mask;
            } else {
                self.add(line, mask);
            }
        }
    }

    pub fn remove(&mut self, line: u64) {
        let (mut i, found) = self.slot(line);
        if !found {
            return;
        }
        let m = self.cap() - 1;
        // backward-shift deletion keeps every probe chain unbroken without tombstones
        let mut j = i;
        loop {
            j = (j + 1) & m;
            let k = self.slots[2 * j];
            if k == EMPTY {
                break;
            }
            let home = hash(k, self.shift);
            // move k back to i if its home is not in the cyclic range (i, j]
            let in_range = if i <= j { home > i && home <= j } else { home > i || home <= j };
            if !in_range {
                self.slots[2 * i] = k;
                self.slots[2 * i + 1] = self.slots[2 * j + 1];
                i = j;
            }
        }
        self.slots[2 * i] = EMPTY;
        self.slots[2 * i + 1] = 0;
        self.len -= 1;
    }

    fn grow(&mut self) {
        let bits = 64 - self.shift + 1;
        let old = std::mem::replace(self, Self::with_capacity_pow2(bits));
        for pair in old.slots.chunks_exact(2) {
            let (k, v) = (pair[0], pair[1]);
            if k != EMPTY {
                self.add(k - 1, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn behaves_like_a_map() {
        let mut d = Directory::new();
        let mut m: HashMap<u64, u64> = HashMap::new();
        let mut x: u64 = 12345;
        for step in 0..200_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let line = x % 5000;
            match step % 3 {
                0 => {
                    d.add(line, 1 << (x % 7));
                    *m.entry(line).or_insert(0) |= 1 << (x % 7);
                }
                1 => {
                    d.remove(line);
                    m.remove(&line);
                }
                _ => {
                    let v = x % 4;
                    d.set(line, v);
                    if v == 0 {
                        m.remove(&line);
                    } else {
                        m.insert(line, v);
                    }
                }
            }
            assert_eq!(d.len(), m.len());
        }
        for line in 0..5000 {
            assert_eq!(d.get(line), *m.get(&line).unwrap_or(&0), "line {line}");
        }
    }
}
