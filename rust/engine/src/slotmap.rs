//! An open-addressed map from u64 keys to u64 values, for the engine's hot lookups (the coherence
//! directory, the page tables' leaves): one flat array of (key + 1, value) slots, so that a lookup
//! touches one host cache line whose address `prefetch` can ask for ahead of time (a general hash
//! map hides it), linear probing, backward-shift deletion (no tombstones), and no allocation per
//! operation. Keys up to u64::MAX - 1.

use crate::cache::LineArray;

const EMPTY: u64 = 0;

pub struct SlotMap {
    /// slot i is (key + 1, value) at 2i, 2i + 1; key + 1 = 0 marks an empty slot. A LineArray:
    /// 64-byte aligned and, when large, backed by transparent huge pages (random lookups over
    /// hundreds of MiB otherwise pay a host TLB miss each).
    slots: LineArray,
    len: usize,
    shift: u32,
}

/// Fibonacci hashing: the multiply's high bits index the power-of-two table.
#[inline(always)]
fn hash(k: u64, shift: u32) -> usize {
    (k.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> shift) as usize
}

impl SlotMap {
    /// An empty map of 2^bits slots (it grows past 3/4 full).
    pub fn with_capacity_pow2(bits: u32) -> Self {
        let n = 1usize << bits;
        SlotMap { slots: LineArray::zeroed(2 * n), len: 0, shift: 64 - bits }
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

    /// Ask the host CPU to start loading the slot where a lookup of `key` begins (a hint only).
    #[inline(always)]
    pub fn prefetch(&self, key: u64) {
        let i = hash(key + 1, self.shift);
        crate::util::prefetch_at(self.slots.as_ptr(), 2 * i);
        if i & 3 >= 2 {
            // four slots to a host cache line: a probe run from the line's second half often
            // continues into the next line (a lookup of an absent key runs to the run's end)
            crate::util::prefetch_at(self.slots.as_ptr(), 2 * i + 8);
        }
    }

    /// The slot holding `key` (true), or the free slot that ends its probe run (false).
    #[inline(always)]
    fn slot(&self, key: u64) -> (usize, bool) {
        let k = key + 1;
        let m = self.cap() - 1;
        let mut i = hash(k, self.shift);
        loop {
            let s = self.slots[2 * i];
            if s == k || s == EMPTY {
                return (i, s != EMPTY);
            }
            i = (i + 1) & m;
        }
    }

    #[inline(always)]
    pub fn get(&self, key: u64) -> Option<u64> {
        let (i, found) = self.slot(key);
        found.then(|| self.slots[2 * i + 1])
    }

    /// Set `key`'s value to `v`, or, with `or`, to its old value | `v` (`v` if absent).
    #[inline(always)]
    fn put(&mut self, key: u64, v: u64, or: bool) {
        let (i, found) = self.slot(key);
        if found {
            let old = if or { self.slots[2 * i + 1] } else { 0 };
            self.slots[2 * i + 1] = old | v;
            return;
        }
        self.slots[2 * i] = key + 1;
        self.slots[2 * i + 1] = v;
        self.len += 1;
        // grow past 3/4 full: linear probing stays short, and a full 512-CPU host's ~21 M cached
        // lines fit 2^25 slots (512 MiB) rather than 2^26
        if self.len * 4 > self.cap() * 3 {
            self.grow();
        }
    }

    /// Insert or replace.
    #[inline]
    pub fn insert(&mut self, key: u64, v: u64) {
        self.put(key, v, false)
    }

    /// OR `bits` into `key`'s value (inserting `bits` if absent).
    #[inline]
    pub fn or(&mut self, key: u64, bits: u64) {
        self.put(key, bits, true)
    }

    /// Remove `key`; returns its value. The slots after it in its probe run move back.
    pub fn remove(&mut self, key: u64) -> Option<u64> {
        if self.len == 0 {
            return None;
        }
        let (mut i, found) = self.slot(key);
        if !found {
            return None;
        }
        let v = self.slots[2 * i + 1];
        let m = self.cap() - 1;
        // backward-shift deletion (Knuth 6.4 Algorithm R) keeps every probe run unbroken
        let mut j = i;
        loop {
            j = (j + 1) & m;
            let k = self.slots[2 * j];
            if k == EMPTY {
                break;
            }
            let home = hash(k, self.shift);
            // move slot j back to i unless its home lies in the cyclic range (i, j]
            let stays = if i <= j { home > i && home <= j } else { home > i || home <= j };
            if !stays {
                self.slots[2 * i] = k;
                self.slots[2 * i + 1] = self.slots[2 * j + 1];
                i = j;
            }
        }
        self.slots[2 * i] = EMPTY;
        self.slots[2 * i + 1] = 0;
        self.len -= 1;
        Some(v)
    }

    /// Number of slots (what a walk over every entry reads).
    pub fn slots(&self) -> usize {
        self.cap()
    }

    /// Append to `out` every key in [lo, hi), in slot order (a walk over all the slots).
    pub fn keys_in(&self, lo: u64, hi: u64, out: &mut Vec<u64>) {
        // stored as key + 1: the keys in [lo, hi) are the stored values in [lo + 1, hi + 1)
        let (a, n) = (lo.wrapping_add(1), hi.wrapping_sub(lo));
        for s in self.slots.chunks_exact(2) {
            if s[0].wrapping_sub(a) < n {
                out.push(s[0] - 1);
            }
        }
    }

    /// (key, value) of every entry, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.slots.chunks_exact(2).filter(|s| s[0] != EMPTY).map(|s| (s[0] - 1, s[1]))
    }

    #[cold]
    #[inline(never)]
    fn grow(&mut self) {
        let bits = 64 - self.shift + 1;
        let old = std::mem::replace(self, Self::with_capacity_pow2(bits));
        for (k, v) in old.iter() {
            self.insert(k, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Against a HashMap over random inserts, ORs, removals and lookups, on keys that collide (a
    /// narrow range in a small table) so probe runs wrap and removals shift runs back; the table
    /// grows, empties to a few keys and grows again.
    #[test]
    fn behaves_like_a_map() {
        let mut m = SlotMap::with_capacity_pow2(4);
        let mut r: HashMap<u64, u64> = HashMap::new();
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for step in 0..200_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let range = if (step / 20_000) % 2 == 0 { 3000 } else { 40 };
            let key = (x >> 8) % range * 7;
            match x % 6 {
                0 | 1 => {
                    m.insert(key, step);
                    r.insert(key, step);
                }
                2 => {
                    m.or(key, 1 << (x % 7));
                    *r.entry(key).or_insert(0) |= 1 << (x % 7);
                }
                3 | 4 => assert_eq!(m.remove(key), r.remove(&key), "step {step}"),
                _ => assert_eq!(m.get(key), r.get(&key).copied(), "step {step}"),
            }
            assert_eq!(m.len(), r.len());
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
}
