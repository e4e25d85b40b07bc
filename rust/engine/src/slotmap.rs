//! An open-addressed map from u64 keys to u64 values, for the engine's hot lookups (the coherence
//! directory, the page tables' leaves): one flat array of (key + 1, value) slots, so that a lookup
//! touches one host cache line whose address `prefetch` can ask for ahead of time (a general hash
//! map hides it), linear probing, backward-shift deletion (no tombstones), and no allocation per
//! operation. Keys up to u64::MAX - 1.
//!
//! Growth is in place: the table's array reserves (virtually: calloc'd pages are committed only
//! when first written) up to 8 times the slots in use, and a doubling rehashes within it, so the
//! pages of the old table are reused instead of a fresh table being zeroed by the kernel and the
//! old one freed (on the 512-CPU bench, fresh directory tables were 19% of the run).

use crate::cache::LineArray;

const EMPTY: u64 = 0;

pub struct SlotMap {
    /// slot i is (key + 1, value) at 2i, 2i + 1 for i < cap; key + 1 = 0 marks an empty slot. A
    /// LineArray: 64-byte aligned and, when large, backed by transparent huge pages (random
    /// lookups over hundreds of MiB otherwise pay a host TLB miss each). Elements past the table
    /// (2 * cap and up) are the reserve for in-place growth, always zero.
    slots: LineArray,
    len: usize,
    shift: u32,
    cap: usize,
    /// the slots the table would have had without `set_ahead` (doubling past 3/4 full): what a
    /// cost decision may read, so that no result depends on how far ahead it was sized
    natural: usize,
    /// entries to make room for at the next growth (0: double as usual)
    ahead: usize,
}

/// Fibonacci hashing: the multiply's high bits index the power-of-two table.
#[inline(always)]
fn hash(k: u64, shift: u32) -> usize {
    (k.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> shift) as usize
}

impl SlotMap {
    /// An empty map of 2^bits slots (it grows past 3/4 full).
    pub fn with_capacity_pow2(bits: u32) -> Self {
        Self::reserving(bits, bits)
    }

    /// An empty map of 2^bits slots whose array reserves 2^reserve_bits.
    fn reserving(bits: u32, reserve_bits: u32) -> Self {
        let n = 1usize << bits;
        SlotMap { slots: LineArray::zeroed(2 << reserve_bits), len: 0, shift: 64 - bits, cap: n, natural: n, ahead: 0 }
    }

    /// Number of slots.
    #[inline(always)]
    fn cap(&self) -> usize {
        self.cap
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

    /// A second look some time after `prefetch(key)`: follow `key`'s probe run over the host
    /// lines `prefetch` asked for (by now in the host's cache) and, if the run goes on past them,
    /// ask for the next two lines, which the lookup will need. Returns the value (Some(0): absent) when
    /// the run ends within those lines, None otherwise. A hint only: nothing changes.
    #[inline(always)]
    pub fn peek(&self, key: u64) -> Option<u64> {
        let k = key + 1;
        let m = self.cap() - 1;
        let mut i = hash(k, self.shift);
        // the lines `prefetch` asked for end at slot `end` (exclusive)
        let end = (i | 3) + 1 + if i & 3 >= 2 { 4 } else { 0 };
        let mut n = end - i;
        while n > 0 {
            let s = self.slots[2 * i];
            if s == k {
                return Some(self.slots[2 * i + 1]);
            }
            if s == EMPTY {
                return Some(0);
            }
            i = (i + 1) & m;
            n -= 1;
        }
        // a run that filled those lines is likely a long one: its next two lines
        crate::util::prefetch_at(self.slots.as_ptr(), 2 * i);
        crate::util::prefetch_at(self.slots.as_ptr(), 2 * ((i + 4) & m));
        None
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
        if self.len * 4 > self.natural * 3 {
            self.natural *= 2;
        }
        // grow past 3/4 full: linear probing stays short, and a full 512-CPU host's ~21 M cached
        // lines fit 2^25 slots (512 MiB) rather than 2^26; with `ahead` set, straight to its size
        if self.len * 4 > self.cap() * 3 {
            if self.ahead > self.len {
                self.reserve(self.ahead);
            } else {
                self.grow();
            }
        }
    }

    /// When the table next has to grow, grow it at once to hold `total` entries (0: double as
    /// usual). A caller that knows how many entries may come sets this, so that their doublings
    /// rehash a small table once instead of a full one each time; a table that never has to
    /// grow is never sized ahead (a long run over a few keys keeps a small table).
    pub fn set_ahead(&mut self, total: usize) {
        self.ahead = total;
    }

    /// The slots the table would have without `set_ahead` (see `natural`).
    pub fn natural_slots(&self) -> usize {
        self.natural
    }

    /// Grow now, as inserting up to `total` entries in all would (their rehash done once, while
    /// the table is small, instead of at every doubling on the way).
    pub fn reserve(&mut self, total: usize) {
        while total * 4 > self.cap() * 3 {
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

    /// Append to `out` every key in [lo, hi), in slot order (a walk over all the slots).
    pub fn keys_in(&self, lo: u64, hi: u64, out: &mut Vec<u64>) {
        // stored as key + 1: the keys in [lo, hi) are the stored values in [lo + 1, hi + 1)
        let (a, n) = (lo.wrapping_add(1), hi.wrapping_sub(lo));
        for s in self.slots[..2 * self.cap].chunks_exact(2) {
            if s[0].wrapping_sub(a) < n {
                out.push(s[0] - 1);
            }
        }
    }

    /// (key, value) of every entry, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.slots[..2 * self.cap].chunks_exact(2).filter(|s| s[0] != EMPTY).map(|s| (s[0] - 1, s[1]))
    }

    /// Double the table: in place if the reserve allows, else into a new array reserving 8 times
    /// the new size.
    #[cold]
    #[inline(never)]
    fn grow(&mut self) {
        let bits = 64 - self.shift + 1;
        if 2usize << bits > self.slots.len() {
            let old = std::mem::replace(self, Self::reserving(bits, bits + 3));
            for (k, v) in old.iter() {
                self.insert(k, v);
            }
            (self.natural, self.ahead) = (old.natural, old.ahead);
            return;
        }
        self.grow_in_place();
    }

    /// Every entry reachable from its home through occupied slots (the probing invariant).
    #[cfg(test)]
    fn check_runs(&self) {
        let m = self.cap - 1;
        for i in 0..self.cap {
            let k = self.slots[2 * i];
            if k != EMPTY {
                let mut j = hash(k, self.shift);
                while j != i {
                    assert_ne!(self.slots[2 * j], EMPTY, "slot {i}: run from home broken at {j}");
                    j = (j + 1) & m;
                }
            }
        }
        assert!(self.slots[2 * self.cap..].iter().all(|&s| s == 0), "the reserve is not zero");
    }

    /// Double the table within its array. Slots are taken from the top of the old table down; each
    /// entry goes to the first free slot at or after its new home (which is 2h or 2h + 1 for an old
    /// home h, the hash's next bit) without wrapping. Every slot below the one being taken is still
    /// an untaken old entry or empty, so this is only done when the new home is at or above the
    /// slot taken: then no placed entry's probe run crosses a slot still to be taken (and emptied),
    /// and every run stays unbroken. The few others (entries displaced past twice their home, near
    /// slot 0, and runs that would wrap) are inserted after, as usual.
    fn grow_in_place(&mut self) -> usize {
        let old_cap = self.cap;
        self.cap = 2 * old_cap;
        self.shift -= 1;
        let end = self.cap;
        let mut later: Vec<(u64, u64)> = Vec::new();
        for i in (0..old_cap).rev() {
            let k = self.slots[2 * i];
            if k == EMPTY {
                continue;
            }
            let v = self.slots[2 * i + 1];
            self.slots[2 * i] = EMPTY;
            self.slots[2 * i + 1] = 0;
            let mut p = hash(k, self.shift);
            if p < i {
                later.push((k, v));
                continue;
            }
            while p < end && self.slots[2 * p] != EMPTY {
                p += 1;
            }
            if p == end {
                later.push((k, v));
                continue;
            }
            self.slots[2 * p] = k;
            self.slots[2 * p + 1] = v;
        }
        let deferred = later.len();
        for (k, v) in later {
            let (i, found) = self.slot(k - 1);
            debug_assert!(!found);
            self.slots[2 * i] = k;
            self.slots[2 * i + 1] = v;
        }
        deferred
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// `reserve` grows the table as far as `total` entries need (3/4 full) at once and keeps
    /// every entry; inserting up to `total` then never grows it; a smaller total changes nothing.
    #[test]
    fn reserve_sizes_the_table_once() {
        let mut m = SlotMap::with_capacity_pow2(4);
        for k in 0..10u64 {
            m.insert(k * 7919, k);
        }
        m.reserve(100_000);
        let cap = m.cap();
        assert!(cap * 3 >= 100_000 * 4 && cap / 2 * 3 < 100_000 * 4, "cap {cap}");
        m.check_runs();
        for k in 0..10u64 {
            assert_eq!(m.get(k * 7919), Some(k));
        }
        for k in 10..100_000u64 {
            m.insert(k * 7919, k);
        }
        assert_eq!(m.cap(), cap);
        assert_eq!(m.len(), 100_000);
        m.reserve(10);
        assert_eq!(m.cap(), cap);
    }

    /// `set_ahead` sizes the table only when it has to grow, then at once to the hinted total;
    /// `natural_slots` stays what doubling alone would give, with or without the hint.
    #[test]
    fn set_ahead_grows_once_and_only_when_needed() {
        let (mut a, mut b) = (SlotMap::with_capacity_pow2(4), SlotMap::with_capacity_pow2(4));
        a.set_ahead(50_000);
        // 12 entries (3/4 of 16): no growth, so no sizing ahead
        for k in 0..12u64 {
            a.insert(k * 31, k);
            b.insert(k * 31, k);
        }
        assert_eq!((a.cap(), a.natural_slots()), (16, 16));
        // the 13th grows the table: straight to room for 50,000
        a.insert(12 * 31, 12);
        b.insert(12 * 31, 12);
        assert_eq!(a.cap(), 1 << 17);
        assert_eq!(b.cap(), 32);
        for k in 13..30_000u64 {
            a.insert(k * 31, k);
            b.insert(k * 31, k);
        }
        assert_eq!(a.cap(), 1 << 17);
        assert_eq!(a.natural_slots(), b.natural_slots());
        assert_eq!(b.natural_slots(), b.cap());
        a.check_runs();
        for k in 0..30_000u64 {
            assert_eq!(a.get(k * 31), Some(k));
        }
    }

    /// Doubling in place keeps every entry findable and every probe run unbroken, both for keys
    /// whose runs wrap past the table's end and for runs displaced near slot 0 (the entries taken
    /// after the top-down pass), at every size from 4 to 2^15 slots; the reserve stays zero.
    #[test]
    fn grows_in_place_keeping_every_key() {
        let mut deferred = 0;
        for seed in 1..4u64 {
            let mut m = SlotMap::reserving(2, 16);
            let mut keys = Vec::new();
            let mut x = seed.wrapping_mul(0x2545_F491_4F6C_DD1D);
            while m.cap() < 1 << 15 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // dense keys around the hash's wrap-around and random ones
                let k = if x % 3 == 0 { x % 4096 } else { x >> 20 };
                if m.get(k).is_some() {
                    continue;
                }
                // fill to just below the growth point, then double by hand
                let (i, _) = m.slot(k);
                m.slots[2 * i] = k + 1;
                m.slots[2 * i + 1] = k ^ seed;
                m.len += 1;
                keys.push(k);
                if m.len * 4 > m.cap() * 3 {
                    deferred += m.grow_in_place();
                    m.check_runs();
                    for &k in &keys {
                        assert_eq!(m.get(k), Some(k ^ seed), "seed {seed} cap {} key {k}", m.cap());
                    }
                }
            }
            // removals shift runs back in the grown table
            for &k in keys.iter().step_by(2) {
                assert_eq!(m.remove(k), Some(k ^ seed));
            }
            m.check_runs();
            for (n, &k) in keys.iter().enumerate() {
                assert_eq!(m.get(k), if n % 2 == 0 { None } else { Some(k ^ seed) });
            }
        }
        assert!(deferred > 0, "no entry took the deferred path");
    }

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
