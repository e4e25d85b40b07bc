//! TLBs: per-core L1 and L2 data TLBs holding tagged translations, the translation contexts,
//! the walk that fills them, the invalidation instructions, and the stale-translation oracle.
//!
//! Tags (semantics.md 3.1, 4.1, 4.2): an entry belongs to a domain (host, SVM guest, VMX guest)
//! and carries the ASID (SVM) or VPID (VMX), the PCID, the EPT root (VMX guest-physical and
//! combined entries; the EP4TA), the global bit and the page size. Its category is linear
//! (VA -> PA, host or EPT-less), guest-physical (GPA -> HPA) or combined (GVA -> HPA). A guest
//! context always uses nested paging here (NPT/EPT); shadow paging is not modelled.
//!
//! The TLB is per core and shared by the core's SMT threads [assumed; Zen competitively shares the
//! DTLBs]. With `tlb.smt_tagged` (the presets' AMD parts: Li et al., "TLB Poisoning Attacks on AMD
//! Secure Encrypted Virtualization", ACSAC 2021, report the logical-core ID as part of the TLB tag)
//! each entry also carries its logical thread: a thread hits only its own entries, and a flush
//! on one thread drops only its own; broadcast INVLPGB reaches every thread.

use crate::cache::has_avx2;
use crate::error::{EngineError, Result};
use crate::paging::{PageSize, Table, F_GLOBAL, F_RDONLY};

pub const CAT_LINEAR: u8 = 0;
pub const CAT_GPHYS: u8 = 1;
pub const CAT_COMBINED: u8 = 2;

pub const DOM_HOST: u8 = 0;
pub const DOM_SVM: u8 = 1;
pub const DOM_VMX: u8 = 2;

/// No table (a context without nested paging).
pub const NO_TABLE: u32 = u32::MAX;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Host,
    Svm,
    Vmx,
}

impl Mode {
    pub fn dom(self) -> u8 {
        match self {
            Mode::Host => DOM_HOST,
            Mode::Svm => DOM_SVM,
            Mode::Vmx => DOM_VMX,
        }
    }
}

/// What a logical CPU translates with: its mode, tag, PCID, tables, encryption key and owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Context {
    pub mode: Mode,
    /// ASID (SVM) or VPID (VMX); 0 for the host
    pub tag: u16,
    pub pcid: u16,
    /// CR4.PCIDE of the context's CR4: with it clear the PCID is always 000H and CR3 bit 63 is
    /// reserved (SDM vol. 3A 4.10.1, vol. 2B MOV CR3: #GP on a reserved bit). Linux sets it on
    /// CPUs with PCID (arch/x86/mm/init.c setup_pcid()), so contexts default to it set.
    pub pcide: bool,
    /// the host table (host mode) or the guest's table (guest modes)
    pub cr3: u32,
    /// the nested table (NPT/EPT) of a guest context
    pub nested: u32,
    /// key of C-bit accesses: the guest's (its ASID for SEV), or the host's SME key
    pub key: u16,
    /// which VM the context belongs to (0: the host), for the isolation oracle
    pub vm: u32,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    /// frame base the entry translates to
    pub target: u64,
    /// the EPT root (nested table id) of VMX guest-physical/combined entries, else 0
    pub eptp: u32,
    pub tag: u16,
    pub pcid: u16,
    pub dom: u8,
    pub cat: u8,
    pub flags: u8,
    pub size: u8,
    /// the tables it was filled from and their generations then (oracle fast path)
    pub src_cr3: u32,
    pub src_nested: u32,
    pub gen_cr3: u32,
    pub gen_nested: u32,
    pub vm: u32,
    /// combined entries of guests: the guest-physical page the entry passes through, and the size
    /// of the nested leaf (the RMP checks compare both, semantics.md 5.3)
    pub gpa: u64,
    pub nsize: u8,
    /// the SMT thread of the core that filled it (0 on hosts without `tlb.smt_tagged`)
    pub thr: u8,
}

/// Key of a slot: page number at the entry's size, size, category, valid bit.
#[inline(always)]
pub fn key_of(addr: u64, size: PageSize, cat: u8) -> u64 {
    ((addr >> size.shift()) << 6) | ((size as u64) << 4) | ((cat as u64) << 2) | 1
}

/// A 32-bit digest of a slot key, never 0 (keys have bit 0 set): equal keys have equal folds.
#[inline(always)]
fn fold(key: u64) -> u32 {
    (key ^ (key >> 32)) as u32 | 1
}

/// The first slot in `b..b + folds.len()` whose fold is `f` and that `hit` accepts. The folds
/// are compared 128 at a time into one mask with no data-dependent branch (where the match lies
/// is data: a loop that stops at it mispredicts its exit), sixteen per step with SSE2 (part of
/// every x86-64 CPU, so this inlines anywhere).
#[inline(always)]
fn scan_folds(folds: &[u32], f: u32, b: usize, hit: impl Fn(usize) -> bool) -> Option<usize> {
    for (k, chunk) in folds.chunks(128).enumerate() {
        let mut bits = match_folds(chunk, f);
        while bits != 0 {
            let i = b + k * 128 + bits.trailing_zeros() as usize;
            bits &= bits - 1;
            if hit(i) {
                return Some(i);
            }
        }
    }
    None
}

/// Bit i set for each of the (at most 128) `folds` equal to `f`.
#[inline(always)]
fn match_folds(folds: &[u32], f: u32) -> u128 {
    let n = folds.len();
    let mut bits = 0u128;
    let mut c = 0;
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        let p = folds.as_ptr() as *const __m128i;
        // SAFETY: SSE2 is part of x86-64; the loads read folds[c..c + 16] with c + 16 <= n
        unsafe {
            let w = _mm_set1_epi32(f as i32);
            while c + 16 <= n {
                let q = p.add(c / 4);
                let e0 = _mm_cmpeq_epi32(_mm_loadu_si128(q), w);
                let e1 = _mm_cmpeq_epi32(_mm_loadu_si128(q.add(1)), w);
                let e2 = _mm_cmpeq_epi32(_mm_loadu_si128(q.add(2)), w);
                let e3 = _mm_cmpeq_epi32(_mm_loadu_si128(q.add(3)), w);
                // lanes of all ones or zeros pack to bytes in slot order
                let m = _mm_packs_epi16(_mm_packs_epi32(e0, e1), _mm_packs_epi32(e2, e3));
                bits |= (_mm_movemask_epi8(m) as u32 as u128) << c;
                c += 16;
            }
            // an 8-way set (the presets' L2 DTLB geometry, l2_ways = 8 [assumed] in profile.toml)
            if c + 8 <= n {
                let q = p.add(c / 4);
                let e0 = _mm_cmpeq_epi32(_mm_loadu_si128(q), w);
                let e1 = _mm_cmpeq_epi32(_mm_loadu_si128(q.add(1)), w);
                let m = _mm_packs_epi16(_mm_packs_epi32(e0, e1), _mm_setzero_si128());
                bits |= (_mm_movemask_epi8(m) as u32 as u128) << c;
                c += 8;
            }
        }
    }
    while c < n {
        bits |= ((folds[c] == f) as u128) << c;
        c += 1;
    }
    bits
}

/// Index of the largest `clock - stamp` (wrapping) in `st`, the last of equals.
#[inline]
fn oldest(st: &[u32], clock: u32) -> usize {
    let mut victim = 0;
    let mut age = 0;
    for (i, &s) in st.iter().enumerate() {
        let a = clock.wrapping_sub(s);
        if a >= age {
            age = a;
            victim = i;
        }
    }
    victim
}

/// `oldest`, eight stamps at a time: the largest age, then the last slot that has it.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn oldest_avx2(st: &[u32], clock: u32) -> usize {
    use std::arch::x86_64::*;
    let n = st.len() / 8 * 8;
    if n == 0 {
        return oldest(st, clock);
    }
    let c = _mm256_set1_epi32(clock as i32);
    let p = st.as_ptr() as *const __m256i;
    let mut m = _mm256_setzero_si256();
    for k in 0..n / 8 {
        // SAFETY: k * 8 + 8 <= n <= st.len()
        m = _mm256_max_epu32(m, _mm256_sub_epi32(c, _mm256_loadu_si256(p.add(k))));
    }
    // horizontal maximum
    let m = _mm256_max_epu32(m, _mm256_permute2x128_si256::<1>(m, m));
    let m = _mm256_max_epu32(m, _mm256_shuffle_epi32::<0b01_00_11_10>(m));
    let m = _mm256_max_epu32(m, _mm256_shuffle_epi32::<0b10_11_00_01>(m));
    let mut age = _mm256_extract_epi32::<0>(m) as u32;
    let tail = &st[n..];
    // a tail age at least as large wins (it comes later)
    let mut victim = usize::MAX;
    for (i, &s) in tail.iter().enumerate() {
        if clock.wrapping_sub(s) >= age {
            age = clock.wrapping_sub(s);
            victim = n + i;
        }
    }
    if victim != usize::MAX {
        return victim;
    }
    let want = _mm256_set1_epi32(age as i32);
    for k in (0..n / 8).rev() {
        let eq = _mm256_cmpeq_epi32(_mm256_sub_epi32(c, _mm256_loadu_si256(p.add(k))), want);
        let bits = _mm256_movemask_ps(_mm256_castsi256_ps(eq)) as u32;
        if bits != 0 {
            return k * 8 + 31 - bits.leading_zeros() as usize;
        }
    }
    // not reached: the maximum is one of the ages
    oldest(st, clock)
}

/// One TLB level of one core: `sets` x `ways` slots, LRU by stamp.
pub struct TlbLevel {
    pub sets: usize,
    pub ways: usize,
    pub keys: Vec<u64>,
    /// per slot, `fold(key)` (0: free): the lookup scans these, sixteen per SSE2 step, and
    /// checks the full key only where one matches
    folds: Vec<u32>,
    /// the entries, slot by slot: empty until the first insert, and read only where `keys` is valid
    pub ents: Vec<Entry>,
    /// per slot, `clock` when it was last filled or hit (apart from the entries: the victim
    /// search of a fully associative level reads them all, 4 bytes each instead of a whole entry)
    stamps: Vec<u32>,
    clock: u32,
    /// entries per page size, to skip sizes that are absent
    pub per_size: [u32; 3],
    pub valid: u32,
    avx2: bool,
}

impl TlbLevel {
    pub fn new(entries: usize, ways: usize) -> Self {
        TlbLevel {
            sets: entries / ways,
            ways,
            keys: vec![0; entries],
            folds: vec![0; entries],
            // allocated at the first insert: a host of 256 cores would otherwise write 60 MiB of
            // empty entries when it is built (the zeroed arrays above cost nothing until used)
            ents: Vec::new(),
            stamps: vec![0; entries],
            clock: 0,
            per_size: [0; 3],
            valid: 0,
            avx2: has_avx2(),
        }
    }

    /// The set: low bits of the page number at the entry's size, as hardware indexes [assumed],
    /// offset by the size so that the sizes spread.
    #[inline(always)]
    fn set_base(&self, key: u64) -> usize {
        if self.sets == 1 {
            0
        } else {
            let vpn = key >> 6;
            let size = (key >> 4) & 3;
            ((vpn.wrapping_add(size) as usize) & (self.sets - 1)) * self.ways
        }
    }

    /// The slots of `key`'s set holding that key, in slot order.
    #[inline]
    fn candidates(&self, key: u64) -> impl Iterator<Item = usize> + '_ {
        let b = self.set_base(key);
        let f = fold(key);
        self.folds[b..b + self.ways]
            .chunks(128)
            .enumerate()
            .flat_map(move |(k, chunk)| {
                let mut bits = match_folds(chunk, f);
                std::iter::from_fn(move || {
                    (bits != 0).then(|| {
                        let i = b + k * 128 + bits.trailing_zeros() as usize;
                        bits &= bits - 1;
                        i
                    })
                })
            })
            .filter(move |&i| self.keys[i] == key)
    }

    /// The slot holding a translation of `addr` of category `cat` that `ok` accepts, the first
    /// in slot order. (The hot path of every translation.)
    #[inline]
    pub fn find(&self, addr: u64, cat: u8, ok: impl Fn(&Entry) -> bool) -> Option<usize> {
        for s in PageSize::ALL {
            if self.per_size[s as usize] == 0 {
                continue;
            }
            let key = key_of(addr, s, cat);
            let b = self.set_base(key);
            let folds = &self.folds[b..b + self.ways];
            if let Some(i) = scan_folds(folds, fold(key), b, |i| self.keys[i] == key && ok(&self.ents[i])) {
                return Some(i);
            }
        }
        None
    }

    /// Use the AVX2 victim search if `on` and the CPU has AVX2 (for tests of the scalar path).
    pub fn use_avx2(&mut self, on: bool) {
        self.avx2 = on && has_avx2();
    }

    #[inline]
    pub fn touch(&mut self, i: usize) {
        self.clock = self.clock.wrapping_add(1);
        self.stamps[i] = self.clock;
    }

    /// The slot of the set at `b` an insert replaces: the first free one, else the least
    /// recently used (the largest age; of equal ages, the last).
    #[inline]
    fn victim(&self, b: usize) -> usize {
        let w = self.ways;
        // a full fully associative level has no free slot to look for; a free slot's fold is 0
        if !(self.sets == 1 && self.valid as usize == w) {
            if let Some(i) = scan_folds(&self.folds[b..b + w], 0, b, |_| true) {
                return i;
            }
        }
        let st = &self.stamps[b..b + w];
        #[cfg(target_arch = "x86_64")]
        if self.avx2 {
            // SAFETY: the CPU has AVX2 (detected at run time)
            return b + unsafe { oldest_avx2(st, self.clock) };
        }
        b + oldest(st, self.clock)
    }

    /// Insert (replacing an invalid slot or the least recently used one of the set).
    pub fn insert(&mut self, addr: u64, size: PageSize, mut e: Entry) {
        let key = key_of(addr, size, e.cat);
        let victim = self.victim(self.set_base(key));
        if self.keys[victim] != 0 {
            self.per_size[((self.keys[victim] >> 4) & 3) as usize] -= 1;
            self.valid -= 1;
        }
        self.clock = self.clock.wrapping_add(1);
        self.stamps[victim] = self.clock;
        e.size = size as u8;
        self.keys[victim] = key;
        self.folds[victim] = fold(key);
        if self.ents.is_empty() {
            self.ents = vec![Entry::default(); self.keys.len()];
        }
        self.ents[victim] = e;
        self.per_size[size as usize] += 1;
        self.valid += 1;
    }

    pub fn invalidate(&mut self, i: usize) {
        if self.keys[i] != 0 {
            self.per_size[((self.keys[i] >> 4) & 3) as usize] -= 1;
            self.valid -= 1;
            self.keys[i] = 0;
            self.folds[i] = 0;
        }
    }

    /// Drop every entry `pred` selects; returns how many.
    pub fn drop_where(&mut self, pred: impl Fn(&Entry) -> bool) -> u64 {
        if self.valid == 0 {
            return 0;
        }
        let mut n = 0;
        for i in 0..self.keys.len() {
            if self.keys[i] != 0 && pred(&self.ents[i]) {
                self.invalidate(i);
                n += 1;
            }
        }
        n
    }

    /// Drop the entries covering `addr` (any size) of category `cats` (bit mask) that `pred` selects.
    pub fn drop_addr(&mut self, addr: u64, cats: u8, pred: impl Fn(&Entry) -> bool) -> u64 {
        let mut n = 0;
        for s in PageSize::ALL {
            if self.per_size[s as usize] == 0 {
                continue;
            }
            for cat in [CAT_LINEAR, CAT_GPHYS, CAT_COMBINED] {
                if cats & (1 << cat) == 0 {
                    continue;
                }
                let hits: Vec<usize> = self.candidates(key_of(addr, s, cat)).filter(|&i| pred(&self.ents[i])).collect();
                for i in hits {
                    self.invalidate(i);
                    n += 1;
                }
            }
        }
        n
    }

    pub fn bytes(&self) -> usize {
        self.keys.len() * (8 + 4 + 4) + self.ents.len() * std::mem::size_of::<Entry>()
    }
}

/// The result of translating an address in a context, per the current tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Walk {
    pub target: u64,
    pub size: PageSize,
    pub flags: u8,
    /// the guest-physical address on the way (guest contexts)
    pub gpa: u64,
    pub gpa_frame: u64,
    pub nested_size: PageSize,
    /// the nested leaf's flags (guest contexts; the host leaf's otherwise)
    pub nflags: u8,
}

/// Walk the tables of `ctx` for `va`: None is a page fault (no mapping at some stage).
pub fn walk(tables: &[Table], ctx: &Context, va: u64) -> Option<Walk> {
    let (l1, out1) = tables[ctx.cr3 as usize].walk(va)?;
    if ctx.mode == Mode::Host || ctx.nested == NO_TABLE {
        return Some(Walk { target: out1, size: l1.size, flags: l1.flags, gpa: 0, gpa_frame: 0, nested_size: l1.size, nflags: l1.flags });
    }
    let (l2, out2) = tables[ctx.nested as usize].walk(out1)?;
    // a combined translation covers the smaller of the two leaves; it is writable only if both
    // leaves are (APM vol. 2 15.25.5: a nested walk checks the guest's and the nested table's
    // permissions; SDM vol. 3C 29.3.3.2: a write needs EPT write access)
    let size = l1.size.min(l2.size);
    let flags = l1.flags | (l2.flags & F_RDONLY);
    Some(Walk { target: out2, size, flags, gpa: out1, gpa_frame: out1 & !(l2.size.bytes() - 1), nested_size: l2.size, nflags: l2.flags })
}

/// INVLPGB operands (semantics.md 3.7): rAX flags, ECX count/stride, EDX PCID/ASID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Invlpgb {
    pub va: Option<u64>,
    pub pcid: Option<u16>,
    pub asid: Option<u16>,
    pub include_global: bool,
    pub final_only: bool,
    pub include_nested: bool,
    /// number of pages (1..=invlpgb_count_max)
    pub count: u32,
    pub stride_2m: bool,
}

pub fn check_invlpgb(op: &Invlpgb) -> Result<()> {
    if op.count == 0 || op.count > 8 {
        // CPUID 8000_0008 EDX[15:0] + 1 = invlpgb_count_max; [assumed] 8 pages
        return Err(EngineError::invalid("count", format!("count = {} is out of range: INVLPGB takes 1..=8 pages", op.count)));
    }
    if let Some(va) = op.va {
        if !crate::paging::canonical(va) || va % 4096 != 0 {
            return Err(EngineError::invalid("va", format!("va = {va:#x}: INVLPGB needs a canonical, page-aligned address")));
        }
    }
    if op.pcid.is_some_and(|p| p >= 4096) {
        return Err(EngineError::invalid("pcid", format!("pcid = {} is out of range 0..=4095 (PCIDs are 12 bits)", op.pcid.unwrap_or(0))));
    }
    Ok(())
}

/// Does a broadcast INVLPGB drop entry `e` (which covers page `addr`)?
pub fn invlpgb_hits(op: &Invlpgb, e: &Entry) -> bool {
    if e.cat == CAT_GPHYS && !op.include_nested {
        return false;
    }
    if e.flags & F_GLOBAL != 0 && !op.include_global {
        return false;
    }
    if let Some(p) = op.pcid {
        if e.cat != CAT_GPHYS && e.pcid != p && e.flags & F_GLOBAL == 0 {
            return false;
        }
    }
    // the ASID field: 0 from the host; only SVM and host domains use ASIDs (INVLPGB is AMD's and
    // names ASIDs, semantics.md 3.7), so VMX-tagged entries are out of its reach
    let asid = op.asid.unwrap_or(0);
    match e.dom {
        DOM_HOST => asid == 0,
        DOM_SVM => op.asid.is_some() && e.tag == asid,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AVX2 victim search agrees with the scalar one on every length, with ties and with
    /// stamps on both sides of a clock wrap.
    #[test]
    fn oldest_avx2_matches_scalar() {
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        for len in 1..=100usize {
            for round in 0..50 {
                let mut st = Vec::with_capacity(len);
                for _ in 0..len {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    // few distinct values in some rounds (ties), near the wrap in others
                    let v = if round % 3 == 0 { (x % 4) as u32 } else { (x as u32).wrapping_add(u32::MAX - 1000) };
                    st.push(v);
                }
                let clock = if round % 2 == 0 { (x >> 32) as u32 } else { 5 };
                let want = oldest(&st, clock);
                #[cfg(target_arch = "x86_64")]
                if has_avx2() {
                    // SAFETY: AVX2 detected
                    assert_eq!(unsafe { oldest_avx2(&st, clock) }, want, "len {len} round {round}");
                }
                let age = |i: usize| clock.wrapping_sub(st[i]);
                assert!((0..len).all(|i| age(i) <= age(want)));
                assert!((want + 1..len).all(|i| age(i) < age(want)));
            }
        }
    }

    /// Keys whose 32-bit folds collide are told apart by the full key, in any slot of a level
    /// wider than one 16-slot step; entries of one key are found in slot order.
    #[test]
    fn find_tells_colliding_folds_apart() {
        // pages p, p ^ 1 ^ (1 << 32) and p ^ 2 ^ (1 << 33) all fold alike
        let p = 0x7_1234u64;
        let pages = [p, p ^ 1 ^ (1 << 32), p ^ 2 ^ (1 << 33)];
        assert!(pages.iter().all(|&q| fold(key_of(q << 12, PageSize::K4, CAT_LINEAR)) == fold(key_of(p << 12, PageSize::K4, CAT_LINEAR))));
        let mut t = TlbLevel::new(40, 40);
        for q in 0..30u64 {
            t.insert((0x100 + q) << 12, PageSize::K4, Entry { target: q << 12, ..Entry::default() });
        }
        t.insert(pages[1] << 12, PageSize::K4, Entry { target: 0x1000, tag: 7, ..Entry::default() });
        t.insert(pages[1] << 12, PageSize::K4, Entry { target: 0x2000, tag: 8, ..Entry::default() });
        t.insert(pages[0] << 12, PageSize::K4, Entry { target: 0x3000, ..Entry::default() });
        let target = |t: &TlbLevel, q: u64, tag: Option<u16>| {
            t.find(q << 12, CAT_LINEAR, |e| tag.is_none_or(|g| e.tag == g)).map(|i| t.ents[i].target)
        };
        assert_eq!(target(&t, pages[0], None), Some(0x3000));
        assert_eq!(target(&t, pages[1], None), Some(0x1000)); // the first of the two in slot order
        assert_eq!(target(&t, pages[1], Some(8)), Some(0x2000));
        assert_eq!(target(&t, pages[2], None), None);
        assert_eq!(target(&t, 0x100 + 29, None), Some(29 << 12));
        let i = t.find(pages[1] << 12, CAT_LINEAR, |_| true).unwrap();
        t.invalidate(i);
        assert_eq!(target(&t, pages[1], None), Some(0x2000));
    }

    /// A full fully associative level replaces its least recently used entry.
    #[test]
    fn insert_replaces_the_least_recently_used() {
        let mut t = TlbLevel::new(12, 12);
        for p in 0..12u64 {
            t.insert(p << 12, PageSize::K4, Entry { target: p << 12, ..Entry::default() });
        }
        // touch all but page 5, in a shuffled order
        for p in [3u64, 0, 11, 7, 1, 9, 2, 10, 4, 8, 6] {
            let i = t.find(p << 12, CAT_LINEAR, |_| true).unwrap();
            t.touch(i);
        }
        t.insert(100 << 12, PageSize::K4, Entry { target: 100 << 12, ..Entry::default() });
        assert!(t.find(5 << 12, CAT_LINEAR, |_| true).is_none());
        for p in [0u64, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11, 100] {
            assert!(t.find(p << 12, CAT_LINEAR, |_| true).is_some(), "page {p}");
        }
        assert_eq!(t.valid, 12);
    }
}
