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

/// Bit i set for each element i of `set` (at most 64) with `v & mask == want`.
#[inline(always)]
pub fn match_slice(set: &[u64], want: u64, mask: u64, avx2: bool) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: the caller says the CPU has AVX2 (detected with is_x86_feature_detected).
        return unsafe { match_bits_avx2(set, want, mask) };
    }
    let _ = avx2;
    match_bits_scalar(set, want, mask)
}

pub fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx2");
    #[cfg(not(target_arch = "x86_64"))]
    return false;
}

#[inline(always)]
fn match_bits_scalar(set: &[u64], want: u64, mask: u64) -> u64 {
    let mut bits: u64 = 0;
    for (i, &v) in set.iter().enumerate() {
        bits |= ((v & mask == want) as u64) << i;
    }
    bits
}

/// `match_bits_scalar` over the N ways at `set` (N a multiple of 4, at most 64), four at a time.
/// Not `target_feature`, so that it inlines both into `match_bits_avx2` and into the access path
/// of the AVX2-compiled batch loops (`Caches::match_bits_w`).
///
/// SAFETY: the CPU has AVX2, and `set[..N]` is in bounds.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn match_ways_avx2<const N: usize>(set: *const u64, want: u64, mask: u64) -> u64 {
    use std::arch::x86_64::*;
    let w = _mm256_set1_epi64x(want as i64);
    let m = _mm256_set1_epi64x(mask as i64);
    let p = set as *const __m256i;
    let mut bits = 0u64;
    for k in 0..N / 4 {
        let e = _mm256_cmpeq_epi64(_mm256_and_si256(_mm256_loadu_si256(p.add(k)), m), w);
        bits |= (_mm256_movemask_pd(_mm256_castsi256_pd(e)) as u32 as u64) << (4 * k);
    }
    bits
}

/// `match_bits_scalar` four ways at a time. Set scans dominate the simulator's miss path.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn match_bits_avx2(set: &[u64], want: u64, mask: u64) -> u64 {
    let n = set.len();
    // SAFETY (all three): AVX2 is enabled here; each reads the first 16, 8 or 4 * (n / 4) ways
    // the common geometries, unrolled
    if n == 16 {
        return match_ways_avx2::<16>(set.as_ptr(), want, mask);
    }
    if n == 8 {
        return match_ways_avx2::<8>(set.as_ptr(), want, mask);
    }
    let mut bits = 0u64;
    let mut i = 0;
    while i + 4 <= n {
        bits |= match_ways_avx2::<4>(set.as_ptr().add(i), want, mask) << i;
        i += 4;
    }
    while i < n {
        bits |= ((set[i] & mask == want) as u64) << i;
        i += 1;
    }
    bits
}

/// A set of N ways (N a multiple of 4, at most 16) at `p` becomes: way 0 = `v`, ways 1..=i = the old ways
/// 0..i, the rest unchanged (a touch of way i, with `v` its line).
/// Branch-free: which way hits is data, and a mispredicted copy length costs more than the move.
///
/// SAFETY: AVX2; p - 1 .. p + N readable and p .. p + N writable (LineArray keeps a spare element
/// before and after every set it holds).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn move_to_front_avx2<const N: usize>(p: *mut u64, i: usize, v: u64) {
    use std::arch::x86_64::*;
    let q = p as *mut __m256i;
    let lim = _mm256_set1_epi64x(i as i64 + 1);
    let mut old = [_mm256_setzero_si256(); 4];
    let mut sh = [_mm256_setzero_si256(); 4];
    // every load before any store: the shifted loads overlap the ways stored
    for k in 0..N / 4 {
        old[k] = _mm256_loadu_si256(q.add(k));
        sh[k] = _mm256_loadu_si256(p.add(4 * k).sub(1) as *const __m256i);
    }
    for k in 0..N / 4 {
        let w = 4 * k as i64;
        let idx = _mm256_setr_epi64x(w, w + 1, w + 2, w + 3);
        // way index <= i: take the left neighbour
        let take = _mm256_cmpgt_epi64(lim, idx);
        let mut nv = _mm256_blendv_epi8(old[k], sh[k], take);
        if k == 0 {
            nv = _mm256_blend_epi32::<0b0000_0011>(nv, _mm256_set1_epi64x(v as i64));
        }
        _mm256_storeu_si256(q.add(k), nv);
    }
}

/// A set of N ways (N a multiple of 4, at most 16) at `p` loses way `i`: ways i..N-1 take their right
/// neighbour and way N - 1 becomes empty. Branch-free, as `move_to_front_avx2`.
///
/// SAFETY: as `move_to_front_avx2`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn remove_at_avx2<const N: usize>(p: *mut u64, i: usize) {
    use std::arch::x86_64::*;
    let q = p as *mut __m256i;
    let below = _mm256_set1_epi64x(i as i64 - 1);
    let mut old = [_mm256_setzero_si256(); 4];
    let mut sh = [_mm256_setzero_si256(); 4];
    for k in 0..N / 4 {
        old[k] = _mm256_loadu_si256(q.add(k));
        sh[k] = _mm256_loadu_si256(p.add(4 * k + 1) as *const __m256i);
    }
    for k in 0..N / 4 {
        let w = 4 * k as i64;
        let idx = _mm256_setr_epi64x(w, w + 1, w + 2, w + 3);
        // way index >= i: take the right neighbour
        let take = _mm256_cmpgt_epi64(idx, below);
        let mut nv = _mm256_blendv_epi8(old[k], sh[k], take);
        if k == N / 4 - 1 {
            nv = _mm256_blend_epi32::<0b1100_0000>(nv, _mm256_setzero_si256());
        }
        _mm256_storeu_si256(q.add(k), nv);
    }
}

/// A zeroed array of u64 aligned to 64 bytes (a set of 8 or 16 ways then spans exactly one or
/// two host cache lines), whose pages the kernel may back with transparent huge pages: random set
/// lookups over tens of MiB otherwise pay host TLB misses.
/// Not Clone: a copy would have its own alignment offset.
pub struct LineArray {
    /// owns the memory `ptr` points into
    raw: Vec<u64>,
    /// index in `raw` of element 0
    off: usize,
    /// `raw`'s element at the 64-byte boundary (`raw` is never resized, so this stays valid), with
    /// at least one element of `raw` before it and one after `ptr + len`
    ptr: *mut u64,
    len: usize,
}

// SAFETY: `ptr` points into `raw`, which the LineArray owns; access follows &/&mut self.
unsafe impl Send for LineArray {}
unsafe impl Sync for LineArray {}

impl LineArray {
    pub fn zeroed(n: usize) -> Self {
        // vec![0u64; n] is calloc, so pages are committed only when first written (an aligned
        // zeroed allocation would be memset up front). Over-allocate and start at a 64-byte
        // boundary with 8..16 spare elements before the first set and at least 1 after the last:
        // the AVX2 set shifts load one element past either end of a set (and discard it). Arrays
        // of 4 MiB or more start at a 2 MiB boundary instead, so that all of them can be backed by
        // transparent huge pages (random set lookups over tens of MiB otherwise pay host TLB misses).
        const HUGE: usize = 2 << 20;
        let big = n * 8 >= 4 << 20;
        let extra = if big { HUGE / 8 + 16 } else { 16 };
        let mut raw = vec![0u64; n + extra];
        let start = raw.as_ptr() as usize + 64;
        let align = if big { HUGE } else { 64 };
        let off = (start.div_ceil(align) * align - raw.as_ptr() as usize) / 8;
        debug_assert!(off >= 8 && off + n < raw.len());
        #[cfg(target_os = "linux")]
        if big {
            // SAFETY: advice on memory this vector owns; it changes no contents.
            unsafe {
                let first = raw.as_ptr() as usize;
                let aligned = (first + 4095) & !4095;
                let end = first + raw.len() * 8;
                if end > aligned {
                    libc::madvise(aligned as *mut libc::c_void, end - aligned, libc::MADV_HUGEPAGE);
                }
            }
        }
        let ptr = raw[off..].as_mut_ptr();
        LineArray { raw, off, ptr, len: n }
    }

    /// A pointer to element `i` whose provenance covers the whole allocation, the spare elements
    /// on both sides included (for the AVX2 set shifts, which load one element past a set).
    #[inline(always)]
    pub fn padded_ptr(&mut self, i: usize) -> *mut u64 {
        assert!(i <= self.len);
        // SAFETY: off + i <= off + len < raw.len()
        unsafe { self.raw.as_mut_ptr().add(self.off + i) }
    }
}

impl std::ops::Deref for LineArray {
    type Target = [u64];
    #[inline(always)]
    fn deref(&self) -> &[u64] {
        // SAFETY: ptr..ptr+len lies inside `raw` (off + len <= raw.len()), which lives as long as self.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl std::ops::DerefMut for LineArray {
    #[inline(always)]
    fn deref_mut(&mut self) -> &mut [u64] {
        // SAFETY: as in deref; &mut self makes this the only live reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

/// Call `self.$f::<N>(...)` with N the set's associativity for the common geometries (8, 12 and
/// 16 ways: the set scans and shifts then compile to a few fixed vector operations), else with
/// N = 0 (ways read at run time).
macro_rules! ways {
    ($self:ident . $f:ident ( $($a:expr),* )) => {
        match $self.ways {
            16 => $self.$f::<16>($($a),*),
            8 => $self.$f::<8>($($a),*),
            12 => $self.$f::<12>($($a),*),
            _ => $self.$f::<0>($($a),*),
        }
    };
}

/// All instances of one cache level.
pub struct Caches {
    pub ways: usize,
    pub sets: usize,
    pub insts: usize,
    set_mask: u64,
    pub data: LineArray,
    /// valid lines per instance
    pub valid: Vec<u32>,
    /// the host CPU has AVX2 (detected once). Private: the AVX2 paths are only sound where the
    /// CPU has it, so it can be turned off (`use_avx2`) but never forced on.
    avx2: bool,
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
            data: LineArray::zeroed(insts * sets * ways),
            valid: vec![0u32; insts],
            avx2: has_avx2(),
        }
    }

    /// Are the AVX2 set operations in use?
    pub fn avx2(&self) -> bool {
        self.avx2
    }

    /// Use the AVX2 set operations if `on` and the CPU has AVX2 (for tests of the scalar paths).
    pub fn use_avx2(&mut self, on: bool) {
        self.avx2 = on && has_avx2();
    }

    pub fn lines_per_inst(&self) -> usize {
        self.sets * self.ways
    }

    /// Index of way 0 of the set that holds `line` in instance `inst`.
    #[inline(always)]
    pub fn base(&self, inst: usize, line: u64) -> usize {
        self.base_w::<0>(inst, line)
    }

    // The `_w` forms take the associativity as a constant N (0: read at run time), for callers
    // that dispatch on it once per batch rather than once per operation. N must be 0 or `ways`.

    #[inline(always)]
    pub fn base_w<const N: usize>(&self, inst: usize, line: u64) -> usize {
        debug_assert!(N == 0 || N == self.ways);
        (inst * self.sets + (line & self.set_mask) as usize) * if N == 0 { self.ways } else { N }
    }

    #[inline(always)]
    pub fn find_w<const N: usize>(&self, base: usize, want: u64, mask: u64) -> Option<usize> {
        let bits = self.match_bits_w::<N>(base, want, mask);
        if bits == 0 {
            None
        } else {
            Some(bits.trailing_zeros() as usize)
        }
    }

    #[inline(always)]
    pub fn take_w<const N: usize>(&mut self, inst: usize, line: u64, want: u64, mask: u64) -> Option<u64> {
        let b = self.base_w::<N>(inst, line);
        self.find_w::<N>(b, want, mask).map(|i| self.remove_w::<N>(inst, b, i))
    }

    /// Bit w set for each way w of the set at `base` with `v & mask == want`. Branch-free over
    /// the whole set (vectorisable): cheaper than an early-exit loop for the 8-16 ways of real caches.
    #[inline(always)]
    pub fn match_bits(&self, base: usize, want: u64, mask: u64) -> u64 {
        self.match_bits_w::<0>(base, want, mask)
    }

    /// With N = 8, 12 or 16 and AVX2 this is a few inline vector instructions, for the access
    /// path inlined into the AVX2-compiled batch loops (host.rs run_batch_avx2, translate.rs
    /// virtual_batch_avx2), where a call to `match_bits_avx2` stays out of line. Elsewhere the
    /// intrinsics would become calls: use `match_bits` there.
    #[inline(always)]
    pub fn match_bits_w<const N: usize>(&self, base: usize, want: u64, mask: u64) -> u64 {
        let ways = if N == 0 { self.ways } else { N };
        let set = &self.data[base..base + ways];
        #[cfg(target_arch = "x86_64")]
        if N != 0 && N % 4 == 0 && N <= 16 && self.avx2 {
            // SAFETY: the CPU has AVX2 (detected at run time); `set` holds the N ways read
            return unsafe { match_ways_avx2::<N>(set.as_ptr(), want, mask) };
        }
        match_slice(set, want, mask, self.avx2)
    }

    /// Way of the first line at `base` with `v & mask == want`.
    #[inline(always)]
    pub fn find(&self, base: usize, want: u64, mask: u64) -> Option<usize> {
        self.find_w::<0>(base, want, mask)
    }

    /// Insert `v` as the most recently used line, or, if a copy with the same line and key is
    /// already in the set, merge it (`merge(old, v)` becomes the new MRU line). Returns the evicted
    /// LRU line, 0 if none. One pass over the set.
    #[inline(always)]
    pub fn insert_or_merge(&mut self, inst: usize, base: usize, v: u64, merge: impl Fn(u64, u64) -> u64) -> u64 {
        self.insert_or_merge_w::<0>(inst, base, v, merge)
    }

    #[inline(always)]
    pub fn insert_or_merge_w<const N: usize>(&mut self, inst: usize, base: usize, v: u64, merge: impl Fn(u64, u64) -> u64) -> u64 {
        let dup = self.match_bits_w::<N>(base, v & MATCH_KEYED, MATCH_KEYED);
        if dup == 0 {
            return self.insert_w::<N>(inst, base, v);
        }
        let set = &mut self.data[base..base + self.ways];
        let id = v & MATCH_KEYED;
        let mut carry = v;
        for w in 0..set.len() {
            let cur = set[w];
            set[w] = carry;
            if cur & MATCH_KEYED == id {
                // the old copy leaves its way (filled by the shifted line): fold it into the new MRU
                set[0] = merge(cur, v);
                return 0;
            }
            if cur == 0 {
                self.valid[inst] += 1;
                return 0;
            }
            carry = cur;
        }
        carry
    }

    /// Make way `i` the most recently used.
    #[inline(always)]
    pub fn touch(&mut self, base: usize, i: usize) {
        ways!(self.touch_w(base, i))
    }

    #[inline(always)]
    pub fn touch_w<const N: usize>(&mut self, base: usize, i: usize) {
        let ways = if N == 0 { self.ways } else { N };
        let v = self.data[base..base + ways][i];
        #[cfg(target_arch = "x86_64")]
        if N != 0 && N % 4 == 0 && N <= 16 && self.avx2 {
            // SAFETY: AVX2 detected; the set lies inside the array (checked above) and a LineArray
            // has a spare readable element on each side of every set.
            unsafe { move_to_front_avx2::<N>(self.data.padded_ptr(base), i, v) };
            return;
        }
        let set = &mut self.data[base..base + ways];
        if i != 0 {
            // carry the line to the front
            set.copy_within(0..i, 1);
            set[0] = v;
        }
    }

    /// Insert `v` as the most recently used line; returns the evicted LRU line (0 if the set had a
    /// free way).
    #[inline(always)]
    pub fn insert(&mut self, inst: usize, base: usize, v: u64) -> u64 {
        ways!(self.insert_w(inst, base, v))
    }

    #[inline(always)]
    pub fn insert_w<const N: usize>(&mut self, inst: usize, base: usize, v: u64) -> u64 {
        let ways = if N == 0 { self.ways } else { N };
        let set = &mut self.data[base..base + ways];
        // valid lines come first, so shifting every way down by one drops either the LRU line or
        // (in a set with a free way) an empty way
        let victim = set[ways - 1];
        // a fixed-size block move (measured faster than the AVX2 blend of `move_to_front_avx2`)
        set.copy_within(0..ways - 1, 1);
        set[0] = v;
        self.valid[inst] += (victim == 0) as u32;
        victim
    }

    /// Remove way `i`, keeping the order of the others; returns the removed line.
    #[inline(always)]
    pub fn remove(&mut self, inst: usize, base: usize, i: usize) -> u64 {
        ways!(self.remove_w(inst, base, i))
    }

    #[inline(always)]
    pub fn remove_w<const N: usize>(&mut self, inst: usize, base: usize, i: usize) -> u64 {
        let ways = if N == 0 { self.ways } else { N };
        let v = self.data[base..base + ways][i];
        self.valid[inst] -= 1;
        #[cfg(target_arch = "x86_64")]
        if N != 0 && N % 4 == 0 && N <= 16 && self.avx2 {
            // SAFETY: AVX2 detected; the set lies inside the array (checked above) and a LineArray
            // has a spare readable element on each side of every set.
            unsafe { remove_at_avx2::<N>(self.data.padded_ptr(base), i) };
            return v;
        }
        let set = &mut self.data[base..base + ways];
        // valid lines come first: empty ways shift along with the rest
        set.copy_within(i + 1..ways, i);
        set[ways - 1] = 0;
        v
    }

    /// Find and remove the copy matching `want` under `mask`.
    #[inline(always)]
    pub fn take(&mut self, inst: usize, line: u64, want: u64, mask: u64) -> Option<u64> {
        self.take_w::<0>(inst, line, want, mask)
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

    /// touch, insert and remove on every specialised associativity, with and without the AVX2
    /// shifts, against a plain Vec model of LRU order; neighbouring sets must not change.
    #[test]
    fn set_operations_match_a_plain_lru_list() {
        for ways in [3usize, 4, 8, 12, 16] {
            for avx2 in [false, has_avx2()] {
                let mut c = Caches::new(2, 4, ways);
                c.use_avx2(avx2);
                let mut model: Vec<Vec<u64>> = vec![Vec::new(); 8];
                let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ ways as u64;
                for step in 0..4000u64 {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let (inst, set) = ((seed % 2) as usize, ((seed >> 8) % 4) as usize);
                    let b = (inst * 4 + set) * ways;
                    let m = &mut model[inst * 4 + set];
                    match (seed >> 16) % 3 {
                        0 => {
                            let v = tag(step * 4 + set as u64, 0);
                            let victim = c.insert(inst, b, v);
                            m.insert(0, v);
                            let want = if m.len() > ways { m.pop().unwrap() } else { 0 };
                            assert_eq!(victim, want);
                        }
                        1 if !m.is_empty() => {
                            let i = ((seed >> 24) as usize) % m.len();
                            c.touch(b, i);
                            let v = m.remove(i);
                            m.insert(0, v);
                        }
                        2 if !m.is_empty() => {
                            let i = ((seed >> 24) as usize) % m.len();
                            assert_eq!(c.remove(inst, b, i), m.remove(i));
                        }
                        _ => {}
                    }
                    // the scans: constant associativity (the batch loops' form), run-time, and a
                    // plain loop over the model, for every line of the set and for one never inserted
                    for want in m.iter().copied().chain([tag(1 << 30, 0)]) {
                        let plain = m.iter().enumerate().fold(0u64, |b, (i, &v)| b | ((v == want) as u64) << i);
                        assert_eq!(ways!(c.match_bits_w(b, want, MATCH_KEYED)), plain, "ways {ways} avx2 {avx2}");
                        assert_eq!(c.match_bits(b, want, MATCH_KEYED), plain);
                    }
                    for (k, m) in model.iter().enumerate() {
                        let mut want = m.clone();
                        want.resize(ways, 0);
                        assert_eq!(&c.data[k * ways..(k + 1) * ways], &want[..], "ways {ways} avx2 {avx2} step {step}");
                    }
                    let valid: Vec<u32> = (0..2).map(|i| model[i * 4..i * 4 + 4].iter().map(|m| m.len() as u32).sum()).collect();
                    assert_eq!(c.valid, valid);
                }
            }
        }
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
