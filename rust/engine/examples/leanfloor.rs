//! How fast can a simulator of the bench geometry go? A stripped three-level LRU loop, written
//! for speed alone, with none of sevsim's semantics: no keys' aliases, no coherence, no states
//! beyond the tag, no oracle, no counters, clocks or bounds checks. It runs the same random trace
//! as `randbench` (4 GiB, reads) on L1 32 KiB/8-way, L2 1 MiB/16-way, L3 32 MiB/16-way victim
//! cache, with the same prefetching as the engine. Its time is a floor for the engine's: the
//! engine does all of this and more per access.
//!
//! Two set representations:
//! - `ordered` (the engine's): ways kept from most to least recently used, so a touch or an
//!   insert shifts the ways with two to four vector moves;
//! - `ages`: tags stay put and each set keeps a byte age per way (a permutation of 0..ways, empty
//!   ways oldest), updated with one 16-byte vector operation.
//!
//! `cargo run --release -p sevsim-engine --example leanfloor [ordered|ages]` (env L3SETS: L3 sets).
//! `... --example leanfloor ratio` (env ROUNDS, default 6; N accesses, default 2,000,000): the
//! engine's random trace (`randbench 32MiB`) and the ordered floor alternated in one run, and
//! their ratio (issue 14's single-core target: at most 1.5x).
//! `... --example leanfloor multi` (env ROUNDS, N, FILL, AHEAD): issue 14's multi-CPU target
//! against floors: the engine and `run_multi` (the same loop over the full preset's 256 cores
//! and 32 CCDs, without coherence, and with the least directory a coherent simulator needs) on
//! bench_cache's interleaved 512-CPU trace, next to the single-core pair, on fresh caches and at
//! steady state (caches full).
//! Compare with pycachesim's time per access from `pytest benches/bench_cache.py` (BENCHMARKS.md).
#[cfg(target_arch = "x86_64")]
mod floor {
    use std::arch::x86_64::*;

    const VALID: u64 = 1 << 63;
    const LINE: u64 = (1 << 40) - 1;
    const DIRTY: u64 = 1 << 58;
    const ID: u64 = LINE | VALID;
    const AHEAD: usize = 12;

    /// Bit w set for each of the N ways at `p` equal to `want` (N a multiple of 4, at most 16).
    #[inline(always)]
    unsafe fn scan<const N: usize>(p: *const u64, want: u64) -> u32 {
        let w = _mm256_set1_epi64x(want as i64);
        let m = _mm256_set1_epi64x(ID as i64);
        let mut r = 0u32;
        for k in 0..N / 4 {
            let v = _mm256_loadu_si256(p.add(4 * k) as *const __m256i);
            r |= (_mm256_movemask_pd(_mm256_castsi256_pd(_mm256_cmpeq_epi64(_mm256_and_si256(v, m), w))) as u32) << (4 * k);
        }
        r
    }

    unsafe fn prefetch(p: *const u64) {
        _mm_prefetch(p as *const i8, _MM_HINT_T0);
    }

    /// N-way sets, each from most to least recently used, empty ways last; one spare element before
    /// the first set (the shifted load reads it).
    pub struct Ordered<const N: usize> {
        v: Vec<u64>,
        mask: u64,
    }

    impl<const N: usize> Ordered<N> {
        pub fn new(sets: usize) -> Self {
            Ordered { v: vec![0; sets * N + 8], mask: sets as u64 - 1 }
        }
        #[inline(always)]
        fn set(&mut self, x: u64) -> *mut u64 {
            // SAFETY: 4 + (x & mask) * N + N <= len
            unsafe { self.v.as_mut_ptr().add(4 + ((x & self.mask) as usize) * N) }
        }
        /// Insert `v` as the MRU way; returns the way that fell out (0: none).
        #[inline(always)]
        unsafe fn insert(p: *mut u64, v: u64) -> u64 {
            let last = *p.add(N - 1);
            let mut t = [_mm256_setzero_si256(); 4];
            for (k, t) in t.iter_mut().enumerate().take(N / 4) {
                *t = _mm256_loadu_si256(p.add(4 * k).sub(1) as *const __m256i);
            }
            for (k, t) in t.iter().enumerate().take(N / 4) {
                _mm256_storeu_si256(p.add(4 * k) as *mut __m256i, *t);
            }
            *p = v;
            last
        }
        /// Make way i the MRU way.
        #[inline(always)]
        unsafe fn touch(p: *mut u64, i: usize) {
            let v = *p.add(i);
            std::ptr::copy(p, p.add(1), i);
            *p = v;
        }
        #[inline(always)]
        unsafe fn remove(p: *mut u64, i: usize) -> u64 {
            let v = *p.add(i);
            std::ptr::copy(p.add(i + 1), p.add(i), N - 1 - i);
            *p.add(N - 1) = 0;
            v
        }
    }

    #[target_feature(enable = "avx2")]
    pub unsafe fn run_ordered(l1: &mut Ordered<8>, l2: &mut Ordered<16>, l3: &mut Ordered<16>, addr: &[u64]) -> u64 {
        let mut acc = 0u64;
        let n = addr.len();
        for i in 0..n {
            if i + AHEAD < n {
                let xj = addr[i + AHEAD] >> 6;
                let (p2, p3) = (l2.set(xj), l3.set(xj));
                for p in [p2, p2.add(8), p3, p3.add(8)] {
                    prefetch(p);
                }
                let lru = *l2.set(addr[i + AHEAD / 2] >> 6).add(15);
                if lru != 0 {
                    let q = l3.set(lru & LINE);
                    prefetch(q);
                    prefetch(q.add(8));
                }
            }
            let x = addr[i] >> 6;
            let want = x | VALID;
            let p1 = l1.set(x);
            let h1 = scan::<8>(p1, want);
            if h1 != 0 {
                Ordered::<8>::touch(p1, h1.trailing_zeros() as usize);
                acc += 1;
                continue;
            }
            let p2 = l2.set(x);
            let h2 = scan::<16>(p2, want);
            if h2 != 0 {
                Ordered::<16>::touch(p2, h2.trailing_zeros() as usize);
                acc += 2;
                continue;
            }
            let p3 = l3.set(x);
            let h3 = scan::<16>(p3, want);
            let newv = if h3 != 0 { Ordered::<16>::remove(p3, h3.trailing_zeros() as usize) } else { want };
            let victim = Ordered::<16>::insert(p2, newv);
            if victim != 0 {
                let q1 = l1.set(victim & LINE);
                let b = scan::<8>(q1, victim & ID);
                if b != 0 {
                    acc ^= Ordered::<8>::remove(q1, b.trailing_zeros() as usize);
                }
                let q3 = l3.set(victim & LINE);
                let d = scan::<16>(q3, victim & ID);
                if d != 0 {
                    let w = d.trailing_zeros() as usize;
                    *q3.add(w) |= victim & DIRTY;
                    Ordered::<16>::touch(q3, w);
                } else {
                    acc ^= Ordered::<16>::insert(q3, victim);
                }
            }
            acc ^= Ordered::<8>::insert(p1, newv);
        }
        acc
    }

    /// `inst` instances of `Ordered<N>` (one per core or per CCD) in one array, each set starting
    /// at a 64-byte boundary as the engine's LineArray sets do (a 16-way set is two host lines).
    pub struct Many<const N: usize> {
        v: Vec<u64>,
        base: usize,
        sets: usize,
        mask: u64,
    }

    impl<const N: usize> Many<N> {
        pub fn new(inst: usize, sets: usize) -> Self {
            let v = vec![0u64; inst * sets * N + 16];
            // transparent huge pages, as the engine's cache arrays ask for (cache.rs LineArray):
            // random set lookups over tens of MiB otherwise pay host TLB misses
            // SAFETY: advice on memory this vector owns; it changes no contents
            unsafe { libc::madvise((v.as_ptr() as usize & !4095) as *mut libc::c_void, v.len() * 8, libc::MADV_HUGEPAGE) };
            let mut v = v;
            pretouch(&mut v);
            // the first set at a 64-byte boundary with at least one element before it (the
            // shifted load of an insert reads it)
            let mut base = 1;
            while !(v.as_ptr() as usize + base * 8).is_multiple_of(64) {
                base += 1;
            }
            Many { v, base, sets, mask: sets as u64 - 1 }
        }
        #[inline(always)]
        fn set(&mut self, inst: usize, x: u64) -> *mut u64 {
            // SAFETY: base + (inst * sets + (x & mask)) * N + N <= len for inst < the instances
            unsafe { self.v.as_mut_ptr().add(self.base + (inst * self.sets + (x & self.mask) as usize) * N) }
        }
    }

    /// Fault in every page of a zeroed vector before any timing: a simulator could take these
    /// first-touch faults when it builds its host, so a floor must not pay them in its timed loop.
    fn pretouch(v: &mut [u64]) {
        for i in (0..v.len()).step_by(512) {
            // SAFETY: i < len; a volatile write of the value already there
            unsafe { std::ptr::write_volatile(v.as_mut_ptr().add(i), 0) };
        }
    }

    /// The least a coherent simulator must add: a directory from line to the CCDs that may hold
    /// it, as one open-addressed table of (line + 1, mask) slots sized ahead (the engine's grows),
    /// one lookup and one insert per miss, nothing ever removed (the engine's mask is a superset
    /// too), no search of the CCDs it names.
    pub struct Dir {
        slots: Vec<u64>,
        shift: u32,
        mask: usize,
    }

    impl Dir {
        pub fn new(bits: u32) -> Self {
            let slots = vec![0u64; 2 << bits];
            // SAFETY: advice on memory this vector owns
            unsafe { libc::madvise((slots.as_ptr() as usize & !4095) as *mut libc::c_void, slots.len() * 8, libc::MADV_HUGEPAGE) };
            let mut slots = slots;
            pretouch(&mut slots);
            Dir { slots, shift: 64 - bits, mask: (1 << bits) - 1 }
        }
        #[inline(always)]
        fn home(&self, x: u64) -> usize {
            ((x + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> self.shift) as usize
        }
        #[inline(always)]
        fn prefetch(&self, x: u64) {
            // SAFETY: 2 * home < len
            unsafe { prefetch(self.slots.as_ptr().add(2 * self.home(x))) }
        }
        /// OR `bit` into line x's mask; returns the mask it had.
        #[inline(always)]
        fn add(&mut self, x: u64, bit: u64) -> u64 {
            let mut i = self.home(x);
            loop {
                let k = self.slots[2 * i];
                if k == x + 1 {
                    let m = self.slots[2 * i + 1];
                    self.slots[2 * i + 1] = m | bit;
                    return m;
                }
                if k == 0 {
                    self.slots[2 * i] = x + 1;
                    self.slots[2 * i + 1] = bit;
                    return 0;
                }
                i = (i + 1) & self.mask;
            }
        }
    }

    /// The ordered loop over many cores: `core[i]`'s own L1 and L2, its CCD's L3 (`ccd_of`), the
    /// same prefetching as `run_ordered` (plus the L1 set, which no longer stays in the host's
    /// caches, and the directory slot). What the engine does on the same path, stripped: an L2 hit
    /// moves the line into L1, a write marks it dirty, a dirty L1 victim marks its L2 copy, an L2
    /// victim takes its L1 copy and goes to the L3 (victim cache), whose victim is written back if
    /// dirty. With `dir`, a miss also looks the line up in a directory and adds its CCD; without,
    /// no coherence at all. No keys, states beyond dirty, oracles, counters or clocks.
    #[target_feature(enable = "avx2")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn run_multi<const W1: usize, const A: usize>(
        l1: &mut Many<W1>,
        l2: &mut Many<16>,
        l3: &mut Many<16>,
        mut dir: Option<&mut Dir>,
        core: &[u32],
        ccd_of: &[u32],
        addr: &[u64],
        write: &[bool],
    ) -> u64 {
        let mut acc = 0u64;
        let n = addr.len();
        for i in 0..n {
            if i + A < n {
                let j = i + A;
                let (cj, xj) = (core[j] as usize, addr[j] >> 6);
                let (p1, p2, p3) = (l1.set(cj, xj), l2.set(cj, xj), l3.set(ccd_of[cj] as usize, xj));
                for p in [p1, p1.add(W1 - 1), p2, p2.add(15), p3, p3.add(15)] {
                    prefetch(p);
                }
                if let Some(d) = dir.as_deref() {
                    d.prefetch(xj);
                }
                let k = i + A / 2;
                let ck = core[k] as usize;
                let lru = *l2.set(ck, addr[k] >> 6).add(15);
                if lru != 0 {
                    let q = l3.set(ccd_of[ck] as usize, lru & LINE);
                    prefetch(q);
                    prefetch(q.add(15));
                }
                let l1lru = *l1.set(ck, addr[k] >> 6).add(W1 - 1);
                if l1lru & DIRTY != 0 {
                    let q = l2.set(ck, l1lru & LINE);
                    prefetch(q);
                    prefetch(q.add(15));
                }
            }
            let (c, x, w) = (core[i] as usize, addr[i] >> 6, write[i]);
            let d3 = ccd_of[c] as usize;
            let want = x | VALID;
            let dirty = if w { DIRTY } else { 0 };
            let p1 = l1.set(c, x);
            let h1 = scan::<W1>(p1, want);
            if h1 != 0 {
                let k = h1.trailing_zeros() as usize;
                *p1.add(k) |= dirty;
                Ordered::<W1>::touch(p1, k);
                acc += 1;
                continue;
            }
            let p2 = l2.set(c, x);
            let h2 = scan::<16>(p2, want);
            let l1v = if h2 != 0 {
                Ordered::<16>::touch(p2, h2.trailing_zeros() as usize);
                acc += 2;
                (*p2 & !DIRTY) | dirty
            } else {
                let p3 = l3.set(d3, x);
                let h3 = scan::<16>(p3, want);
                let newv = if h3 != 0 { Ordered::<16>::remove(p3, h3.trailing_zeros() as usize) } else { want };
                if let Some(d) = dir.as_deref_mut() {
                    acc ^= d.add(x, 1 << d3);
                }
                let mut victim = Ordered::<16>::insert(p2, newv);
                if victim != 0 {
                    let q1 = l1.set(c, victim & LINE);
                    let b = scan::<W1>(q1, victim & ID);
                    if b != 0 {
                        victim |= Ordered::<W1>::remove(q1, b.trailing_zeros() as usize) & DIRTY;
                    }
                    let q3 = l3.set(d3, victim & LINE);
                    let d = scan::<16>(q3, victim & ID);
                    if d != 0 {
                        let w = d.trailing_zeros() as usize;
                        *q3.add(w) |= victim & DIRTY;
                        Ordered::<16>::touch(q3, w);
                    } else {
                        // a dirty L3 victim is written back (counted)
                        acc += Ordered::<16>::insert(q3, victim) & DIRTY;
                    }
                }
                (newv & !DIRTY) | dirty
            };
            let v1 = Ordered::<W1>::insert(p1, l1v);
            if v1 & DIRTY != 0 {
                // the dirty L1 victim marks its L2 copy (the L2 is inclusive)
                let q2 = l2.set(c, v1 & LINE);
                let b = scan::<16>(q2, v1 & ID);
                if b != 0 {
                    *q2.add(b.trailing_zeros() as usize) |= DIRTY;
                }
            }
        }
        acc
    }

    /// N-way sets whose tags stay in place, with a byte age per way in a 16-byte row per set
    /// (a permutation of 0..N over the N ways: 0 most recent, empty ways oldest).
    pub struct Ages<const N: usize> {
        t: Vec<u64>,
        a: Vec<u8>,
        mask: u64,
    }

    impl<const N: usize> Ages<N> {
        pub fn new(sets: usize) -> Self {
            let mut a = vec![0u8; sets * 16];
            for s in 0..sets {
                for w in 0..N {
                    a[s * 16 + w] = (N - 1 - w) as u8;
                }
            }
            Ages { t: vec![0; sets * N], a, mask: sets as u64 - 1 }
        }
        #[inline(always)]
        fn s(&self, x: u64) -> usize {
            (x & self.mask) as usize
        }
        #[inline(always)]
        fn tags(&mut self, s: usize) -> *mut u64 {
            // SAFETY: s < sets
            unsafe { self.t.as_mut_ptr().add(s * N) }
        }
        #[inline(always)]
        unsafe fn lanes() -> __m128i {
            // the first N bytes of the row are ways, the rest padding
            _mm_cmpgt_epi8(_mm_set1_epi8(N as i8), _mm_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15))
        }
        /// Ages younger than `age` grow by one; way i becomes `to`.
        #[inline(always)]
        unsafe fn age(&mut self, s: usize, i: usize, older_than: i8, step: __m128i, to: u8) {
            let p = self.a.as_mut_ptr().add(s * 16);
            let a = _mm_loadu_si128(p as *const __m128i);
            let sel = _mm_and_si128(_mm_cmpgt_epi8(_mm_set1_epi8(older_than), a), Self::lanes());
            _mm_storeu_si128(p as *mut __m128i, _mm_add_epi8(a, _mm_and_si128(sel, step)));
            *p.add(i) = to;
        }
        #[inline(always)]
        unsafe fn touch(&mut self, s: usize, i: usize) {
            let ai = self.a[s * 16 + i] as i8;
            self.age(s, i, ai, _mm_set1_epi8(1), 0);
        }
        /// Insert `v` in the oldest way; returns what it held (0: empty).
        #[inline(always)]
        unsafe fn insert(&mut self, s: usize, v: u64) -> u64 {
            let p = self.a.as_ptr().add(s * 16);
            let m = _mm_movemask_epi8(_mm_cmpeq_epi8(_mm_loadu_si128(p as *const __m128i), _mm_set1_epi8((N - 1) as i8)));
            let i = (m as u32).trailing_zeros() as usize;
            let old = *self.tags(s).add(i);
            *self.tags(s).add(i) = v;
            self.age(s, i, N as i8, _mm_set1_epi8(1), 0);
            old
        }
        /// Empty way i (it becomes the oldest); ways older than it grow younger by one.
        #[inline(always)]
        unsafe fn remove(&mut self, s: usize, i: usize) -> u64 {
            let ai = self.a[s * 16 + i];
            let p = self.a.as_mut_ptr().add(s * 16);
            let a = _mm_loadu_si128(p as *const __m128i);
            let older = _mm_and_si128(_mm_cmpgt_epi8(a, _mm_set1_epi8(ai as i8)), Self::lanes());
            _mm_storeu_si128(p as *mut __m128i, _mm_add_epi8(a, older));
            *p.add(i) = (N - 1) as u8;
            std::mem::replace(&mut *self.tags(s).add(i), 0)
        }
    }

    #[target_feature(enable = "avx2")]
    pub unsafe fn run_ages(l1: &mut Ages<8>, l2: &mut Ages<16>, l3: &mut Ages<16>, addr: &[u64]) -> u64 {
        let mut acc = 0u64;
        let n = addr.len();
        for i in 0..n {
            if i + AHEAD < n {
                let xj = addr[i + AHEAD] >> 6;
                let (s2, s3) = (l2.s(xj), l3.s(xj));
                let (p2, p3) = (l2.tags(s2), l3.tags(s3));
                for p in [p2, p2.add(8), p3, p3.add(8)] {
                    prefetch(p);
                }
                prefetch(l3.a.as_ptr().add(s3 * 16) as *const u64);
            }
            let x = addr[i] >> 6;
            let want = x | VALID;
            let s1 = l1.s(x);
            let h1 = scan::<8>(l1.tags(s1), want);
            if h1 != 0 {
                l1.touch(s1, h1.trailing_zeros() as usize);
                acc += 1;
                continue;
            }
            let s2 = l2.s(x);
            let h2 = scan::<16>(l2.tags(s2), want);
            if h2 != 0 {
                l2.touch(s2, h2.trailing_zeros() as usize);
                acc += 2;
                continue;
            }
            let s3 = l3.s(x);
            let h3 = scan::<16>(l3.tags(s3), want);
            let newv = if h3 != 0 { l3.remove(s3, h3.trailing_zeros() as usize) } else { want };
            let victim = l2.insert(s2, newv);
            if victim != 0 {
                let q1 = l1.s(victim & LINE);
                let b = scan::<8>(l1.tags(q1), victim & ID);
                if b != 0 {
                    acc ^= l1.remove(q1, b.trailing_zeros() as usize);
                }
                let q3 = l3.s(victim & LINE);
                let d = scan::<16>(l3.tags(q3), victim & ID);
                if d != 0 {
                    let w = d.trailing_zeros() as usize;
                    *l3.tags(q3).add(w) |= victim & DIRTY;
                    l3.touch(q3, w);
                } else {
                    acc ^= l3.insert(q3, victim);
                }
            }
            acc ^= l1.insert(s1, newv);
        }
        acc
    }
}

/// This thread's CPU time in ns (wall time less the time other sessions' processes had the core).
fn cpu_ns() -> u128 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec to fill
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as u128 * 1_000_000_000 + t.tv_nsec as u128
}

/// The engine on `randbench`'s host (one core of epyc-9755-2s, L1 32 KiB/8, L2 1 MiB/16, L3
/// 32 MiB/16, SME_COHERENT, directory, oracles), 64 GiB of memory.
fn engine_host() -> sevsim_engine::host::Host {
    let o: toml::Table = toml::from_str(
        "sockets=1\nccds_per_socket=1\ncores_per_ccd=1\nthreads_per_core=1\n[l1d]\nsize=\"32KiB\"\nways=8\n[l2]\nsize=\"1MiB\"\nways=16\n[l3]\nsize=\"32MiB\"\nways=16\n",
    )
    .unwrap();
    let cfg = sevsim_engine::HostConfig::from_profile(sevsim_engine::config::DEFAULT_PROFILE, "epyc-9755-2s", Some(&o)).unwrap();
    sevsim_engine::host::Host::new(cfg, Some(64 << 30)).unwrap()
}

type ManyCaches = (floor::Many<12>, floor::Many<16>, floor::Many<16>);

/// The preset's caches for `floor::run_multi`: 256 cores' L1 48 KiB/12 and L2 1 MiB/16, 32 CCDs'
/// L3 32 MiB/16.
fn many_caches() -> ManyCaches {
    (floor::Many::<12>::new(256, 64), floor::Many::<16>::new(256, 1024), floor::Many::<16>::new(32, 32768))
}

/// `floor::run_multi` at prefetch distance `ahead`.
/// # Safety
/// AVX2 must be available.
#[cfg(target_arch = "x86_64")]
unsafe fn run_multi_at(ahead: usize, fm: &mut ManyCaches, dir: Option<&mut floor::Dir>, t: &Trace, ccd_of: &[u32]) -> u64 {
    let (l1, l2, l3) = (&mut fm.0, &mut fm.1, &mut fm.2);
    let (c, a, w) = (&t.core[..], &t.addr[..], &t.write[..]);
    match ahead {
        4 => floor::run_multi::<12, 4>(l1, l2, l3, dir, c, ccd_of, a, w),
        6 => floor::run_multi::<12, 6>(l1, l2, l3, dir, c, ccd_of, a, w),
        8 => floor::run_multi::<12, 8>(l1, l2, l3, dir, c, ccd_of, a, w),
        12 => floor::run_multi::<12, 12>(l1, l2, l3, dir, c, ccd_of, a, w),
        24 => floor::run_multi::<12, 24>(l1, l2, l3, dir, c, ccd_of, a, w),
        _ => panic!("AHEAD must be 4, 6, 8, 12 or 24, not {ahead}"),
    }
}

/// bench_cache's interleaved trace: CPU i % 512 (on core CPU % 256), random lines over 64 GiB, 30 % writes.
struct Trace {
    cpu: Vec<u32>,
    core: Vec<u32>,
    addr: Vec<u64>,
    write: Vec<bool>,
}

impl Trace {
    fn new(len: usize, next: &mut dyn FnMut() -> u64) -> Self {
        let cpu: Vec<u32> = (0..len).map(|i| (i % 512) as u32).collect();
        // the preset's topology: CPU c runs on core c % 256 (SMT siblings share the core's caches)
        let core = cpu.iter().map(|&c| c % 256).collect();
        let addr = (0..len).map(|_| (next() % (64 << 30)) & !7).collect();
        let write = (0..len).map(|_| next() % 10 < 3).collect();
        Trace { cpu, core, addr, write }
    }
}

fn rounds_env() -> usize {
    std::env::var("ROUNDS").map(|s| s.parse().unwrap()).unwrap_or(6)
}

/// `multi` mode: issue 14's multi-CPU target against floors, in one run. Five loops alternated
/// each round: the engine and the ordered floor on the single-core random trace (as `ratio`); the
/// engine (the full epyc-9755-2s preset, 64 GiB) and `run_multi` (the same geometry), without and
/// with a directory, on the interleaved trace of bench_cache (CPU i % 512, random lines over 64 GiB,
/// 30 % writes), a fresh trace each round. First on fresh caches, as the bench runs it (a fresh
/// host per round), then at steady state: after FILL accesses (default 32 M, more than the 21 M
/// lines the caches hold) the caches are full and nearly every miss evicts.
#[cfg(target_arch = "x86_64")]
fn multi(single: &[u64], rounds: usize) {
    use sevsim_engine::host::Col;
    use std::time::Instant;
    let n = single.len();
    // the floor's prefetch distance (env AHEAD: 4, 6, 8, 12 or 24; the engine's is 12)
    let ahead: usize = std::env::var("AHEAD").map(|s| s.parse().unwrap()).unwrap_or(6);
    let fill: usize = std::env::var("FILL").map(|s| s.parse().unwrap()).unwrap_or(32_000_000);
    let mut x: u64 = 0x9E3779B97F4A7C15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let ccd_of: Vec<u32> = (0..256).map(|k| k / 8).collect();
    let new_engine = || {
        let cfg = sevsim_engine::HostConfig::from_profile(sevsim_engine::config::DEFAULT_PROFILE, "epyc-9755-2s", None).unwrap();
        sevsim_engine::host::Host::new(cfg, Some(64 << 30)).unwrap()
    };
    // directory tables at about half load: 2 M lines for a fresh round, fill + rounds at steady state
    let dir_bits = |lines: usize| (2 * lines).next_power_of_two().trailing_zeros();
    let time = |f: &mut dyn FnMut()| {
        let (t, c) = (Instant::now(), cpu_ns());
        f();
        (t.elapsed().as_nanos() as f64 / n as f64, (cpu_ns() - c) as f64 / n as f64)
    };
    let mut es = engine_host();
    let (mut o1, mut o2, mut o3) = (floor::Ordered::<8>::new(64), floor::Ordered::<16>::new(1024), floor::Ordered::<16>::new(32768));
    // warm the single-core loops (their caches fill within one pass and stay full)
    es.access_batch(Col::One(0), single, Col::One(false), Col::One(0), None).unwrap();
    // SAFETY (all floor calls): AVX2 was detected by main
    std::hint::black_box(unsafe { floor::run_ordered(&mut o1, &mut o2, &mut o3, single) });
    for phase in ["fresh", "steady"] {
        let steady = phase == "steady";
        let (mut em, mut fm, mut fd) = (new_engine(), many_caches(), many_caches());
        let mut dir = floor::Dir::new(dir_bits(if steady { fill + rounds * n } else { n }));
        if steady {
            let t = Trace::new(fill, &mut next);
            em.access_batch(Col::Each(&t.cpu), &t.addr, Col::Each(&t.write), Col::One(0), None).unwrap();
            std::hint::black_box(unsafe { run_multi_at(ahead, &mut fm, None, &t, &ccd_of) });
            std::hint::black_box(unsafe { run_multi_at(ahead, &mut fd, Some(&mut dir), &t, &ccd_of) });
        }
        let mut rows: Vec<[f64; 10]> = Vec::new();
        for round in 0..rounds {
            if !steady && round > 0 {
                // every round on fresh caches, as the bench does (a fresh host per round)
                em = new_engine();
                fm = many_caches();
                fd = many_caches();
                dir = floor::Dir::new(dir_bits(n));
            }
            let t = Trace::new(n, &mut next);
            let (es_w, es_c) = time(&mut || es.access_batch(Col::One(0), single, Col::One(false), Col::One(0), None).map(|_| ()).unwrap());
            let (fs_w, fs_c) = time(&mut || {
                std::hint::black_box(unsafe { floor::run_ordered(&mut o1, &mut o2, &mut o3, single) });
            });
            let (em_w, em_c) = time(&mut || em.access_batch(Col::Each(&t.cpu), &t.addr, Col::Each(&t.write), Col::One(0), None).map(|_| ()).unwrap());
            let (fm_w, fm_c) = time(&mut || {
                std::hint::black_box(unsafe { run_multi_at(ahead, &mut fm, None, &t, &ccd_of) });
            });
            let (fd_w, fd_c) = time(&mut || {
                std::hint::black_box(unsafe { run_multi_at(ahead, &mut fd, Some(&mut dir), &t, &ccd_of) });
            });
            println!(
                "{phase} round {round}: single engine {es_w:.1} floor {fs_w:.1}; multi engine {em_w:.1} floor {fm_w:.1} floor+directory {fd_w:.1} ns/access (CPU time {es_c:.1} {fs_c:.1} {em_c:.1} {fm_c:.1} {fd_c:.1})"
            );
            rows.push([es_w, fs_w, em_w, fm_w, fd_w, es_c, fs_c, em_c, fm_c, fd_c]);
        }
        let min = |k: usize| rows.iter().map(|r| r[k]).fold(f64::MAX, f64::min);
        let (es_m, fs_m, em_m, fm_m, fd_m) = (min(0), min(1), min(2), min(3), min(4));
        println!(
            "{phase}: minima single engine {es_m:.1} / floor {fs_m:.1}, multi engine {em_m:.1} / floor {fm_m:.1} / floor+directory {fd_m:.1} ns/access; \
             engine multi/single {:.2}x (target <= 2); against the engine's single core: floor {:.2}x, floor+directory {:.2}x; engine/floor+directory multi {:.2}x; CPU time engine multi/single {:.2}x",
            em_m / es_m,
            fm_m / es_m,
            fd_m / es_m,
            em_m / fd_m,
            min(7) / min(5),
        );
        // issue 14's two access-path targets at once: single <= 1.5 x the single-core floor and
        // multi <= 2 x single give multi <= 3 x the single-core floor; a multi-CPU engine cannot
        // be faster than the least coherent loop of the same geometry (floor+directory)
        let joint = 3.0 * fs_m;
        println!(
            "{phase}: both targets need multi <= 3 x the single-core floor = {joint:.1} ns/access; the coherent floor is {fd_m:.1} ({:.2}x that bound): {}",
            fd_m / joint,
            if fd_m > joint { "jointly infeasible on this machine" } else { "feasible" },
        );
    }
}

#[cfg(target_arch = "x86_64")]
fn main() {
    use sevsim_engine::host::Col;
    use std::time::Instant;
    if !std::arch::is_x86_feature_detected!("avx2") {
        eprintln!("leanfloor needs AVX2");
        return;
    }
    let mode = std::env::args().nth(1).unwrap_or_default();
    let n: usize = std::env::var("N").map(|s| s.parse().unwrap()).unwrap_or(2_000_000);
    let mut x: u64 = 88172645463325252;
    let addr: Vec<u64> = (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % (4 << 30)) & !7
        })
        .collect();
    let l3sets: usize = std::env::var("L3SETS").map(|s| s.parse().unwrap()).unwrap_or(32768);
    let (mut o1, mut o2, mut o3) = (floor::Ordered::<8>::new(64), floor::Ordered::<16>::new(1024), floor::Ordered::<16>::new(l3sets));
    if mode == "ratio" {
        // issue 14's single-core target as one run: the engine's random trace (as `randbench
        // 32MiB`) and the ordered floor on the same trace, rounds alternated in one process so
        // that both see the same machine load; both warm (round 0 of each fills its caches and
        // commits its pages, and is not counted); minimum of each, and the ratio of each pair
        let rounds = rounds_env();
        let mut h = engine_host();
        // wall and CPU time of each: on a shared machine the CPU time leaves out the time the
        // scheduler gave the core to others (memory contention stays in both)
        let (mut e, mut f, mut ec, mut fc, mut pairs) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for round in 0..=rounds {
            let (t, c) = (Instant::now(), cpu_ns());
            h.access_batch(Col::One(0), &addr, Col::One(false), Col::One(0), None).unwrap();
            let (te, tec) = (t.elapsed().as_nanos() as f64 / n as f64, (cpu_ns() - c) as f64 / n as f64);
            let (t, c) = (Instant::now(), cpu_ns());
            // SAFETY: AVX2 detected above
            let acc = unsafe { floor::run_ordered(&mut o1, &mut o2, &mut o3, &addr) };
            let (tf, tfc) = (t.elapsed().as_nanos() as f64 / n as f64, (cpu_ns() - c) as f64 / n as f64);
            std::hint::black_box(acc);
            if round > 0 {
                println!("round {round}: engine {te:.1} ns/access (cpu {tec:.1}), floor {tf:.1} (cpu {tfc:.1}), ratio {:.2}x", te / tf);
                e.push(te);
                f.push(tf);
                ec.push(tec);
                fc.push(tfc);
                pairs.push(te / tf);
            }
        }
        let min = |v: &[f64]| v.iter().copied().fold(f64::MAX, f64::min);
        pairs.sort_by(f64::total_cmp);
        println!(
            "engine {:.1} ns/access, leanfloor (ordered) {:.1} ns/access: ratio of minima {:.2}x (pairs {:.2}-{:.2}x, median {:.2}x); CPU time {:.1} / {:.1} ns, {:.2}x",
            min(&e),
            min(&f),
            min(&e) / min(&f),
            pairs[0],
            pairs[pairs.len() - 1],
            pairs[pairs.len() / 2],
            min(&ec),
            min(&fc),
            min(&ec) / min(&fc)
        );
        return;
    }
    if mode == "multi" {
        multi(&addr, rounds_env());
        return;
    }
    let ages = mode == "ages";
    let (mut a1, mut a2, mut a3) = (floor::Ages::<8>::new(64), floor::Ages::<16>::new(1024), floor::Ages::<16>::new(l3sets));
    for rep in 0..4 {
        let t = Instant::now();
        // SAFETY: AVX2 detected above
        let acc = unsafe {
            if ages {
                floor::run_ages(&mut a1, &mut a2, &mut a3, &addr)
            } else {
                floor::run_ordered(&mut o1, &mut o2, &mut o3, &addr)
            }
        };
        let name = if ages { "ages" } else { "ordered" };
        println!("rep {rep}: {:.1} ns/access ({name}, {acc:x})", t.elapsed().as_nanos() as f64 / n as f64);
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn main() {
    eprintln!("leanfloor is x86-64 only");
}
