//! The coherence directory (standing in for the probe filter): physical line -> mask of the CCDs
//! whose caches may hold a copy of it under any key.
//!
//! The mask is a superset: a bit is set whenever a CCD gains a copy, and cleared lazily, when a
//! lookup scans the CCD and finds nothing. The table is rebuilt from the caches when it grows much
//! larger than the number of cached lines. A `SlotMap`: a lookup touches one host cache line, and
//! no operation allocates.

use crate::slotmap::SlotMap;

pub struct Directory {
    map: SlotMap,
}

impl Default for Directory {
    fn default() -> Self {
        Self::new()
    }
}

impl Directory {
    pub fn new() -> Self {
        Directory { map: SlotMap::with_capacity_pow2(10) }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
    pub fn bytes(&self) -> usize {
        self.map.bytes()
    }

    /// Ask the host CPU to start loading the slot where a lookup of `line` begins (a hint only).
    #[inline(always)]
    pub fn prefetch(&self, line: u64) {
        self.map.prefetch(line)
    }

    /// Slots of the table (the cost of `lines_in`).
    pub fn slots(&self) -> usize {
        self.map.slots()
    }

    /// Append every tracked line in [lo, hi) to `out`, unordered.
    pub fn lines_in(&self, lo: u64, hi: u64, out: &mut Vec<u64>) {
        self.map.keys_in(lo, hi, out)
    }

    pub fn clear(&mut self) {
        *self = Self::new();
    }

    /// The CCD mask of `line` (0 if untracked).
    #[inline]
    pub fn get(&self, line: u64) -> u64 {
        self.map.get(line).unwrap_or(0)
    }

    /// Set `bits` in the mask of `line`.
    #[inline]
    pub fn add(&mut self, line: u64, bits: u64) {
        self.map.or(line, bits)
    }

    /// Replace the mask of `line`; a zero mask removes the entry.
    #[inline]
    pub fn set(&mut self, line: u64, mask: u64) {
        if mask == 0 {
            self.map.remove(line);
        } else {
            self.map.insert(line, mask);
        }
    }

    pub fn remove(&mut self, line: u64) {
        self.map.remove(line);
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
