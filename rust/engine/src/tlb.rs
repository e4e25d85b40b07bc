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
//! DTLBs]; a flush on one thread drops the core's entries that match it.

use crate::cache::{match_slice, has_avx2};
use crate::error::{EngineError, Result};
use crate::paging::{PageSize, Table, F_GLOBAL};

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
    pub stamp: u32,
    /// combined entries of guests: the guest-physical page the entry passes through, and the size
    /// of the nested leaf (the RMP checks compare both, semantics.md 5.3)
    pub gpa: u64,
    pub nsize: u8,
}

/// Key of a slot: page number at the entry's size, size, category, valid bit.
#[inline(always)]
pub fn key_of(addr: u64, size: PageSize, cat: u8) -> u64 {
    ((addr >> size.shift()) << 6) | ((size as u64) << 4) | ((cat as u64) << 2) | 1
}

/// One TLB level of one core: `sets` x `ways` slots, LRU by stamp.
pub struct TlbLevel {
    pub sets: usize,
    pub ways: usize,
    pub keys: Vec<u64>,
    pub ents: Vec<Entry>,
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
            ents: vec![Entry::default(); entries],
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

    /// The slots of `key`'s set holding that key, in slot order (the set is scanned 64 ways at a
    /// time, so a fully associative level of any size works the same way).
    #[inline]
    fn candidates(&self, key: u64) -> impl Iterator<Item = usize> + '_ {
        let b = self.set_base(key);
        (b..b + self.ways).step_by(64).flat_map(move |c| {
            let end = (c + 64).min(b + self.ways);
            let mut bits = match_slice(&self.keys[c..end], key, u64::MAX, self.avx2);
            std::iter::from_fn(move || {
                (bits != 0).then(|| {
                    let i = c + bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    i
                })
            })
        })
    }

    /// The slot holding a translation of `addr` of category `cat` that `ok` accepts.
    /// (The hot path of every translation: the same scan as `candidates`, as plain loops.)
    #[inline]
    pub fn find(&self, addr: u64, cat: u8, ok: impl Fn(&Entry) -> bool) -> Option<usize> {
        for s in PageSize::ALL {
            if self.per_size[s as usize] == 0 {
                continue;
            }
            let key = key_of(addr, s, cat);
            let b = self.set_base(key);
            let mut c = b;
            while c < b + self.ways {
                let end = (c + 64).min(b + self.ways);
                let mut bits = match_slice(&self.keys[c..end], key, u64::MAX, self.avx2);
                while bits != 0 {
                    let i = c + bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    if ok(&self.ents[i]) {
                        return Some(i);
                    }
                }
                c = end;
            }
        }
        None
    }

    #[inline]
    pub fn touch(&mut self, i: usize) {
        self.clock = self.clock.wrapping_add(1);
        self.ents[i].stamp = self.clock;
    }

    /// Insert (replacing an invalid slot or the least recently used one of the set).
    pub fn insert(&mut self, addr: u64, size: PageSize, mut e: Entry) {
        let key = key_of(addr, size, e.cat);
        let b = self.set_base(key);
        let mut victim = b;
        let mut oldest = 0u32;
        for i in b..b + self.ways {
            if self.keys[i] == 0 {
                victim = i;
                break;
            }
            let age = self.clock.wrapping_sub(self.ents[i].stamp);
            if age >= oldest {
                oldest = age;
                victim = i;
            }
        }
        if self.keys[victim] != 0 {
            self.per_size[((self.keys[victim] >> 4) & 3) as usize] -= 1;
            self.valid -= 1;
        }
        self.clock = self.clock.wrapping_add(1);
        e.stamp = self.clock;
        e.size = size as u8;
        self.keys[victim] = key;
        self.ents[victim] = e;
        self.per_size[size as usize] += 1;
        self.valid += 1;
    }

    pub fn invalidate(&mut self, i: usize) {
        if self.keys[i] != 0 {
            self.per_size[((self.keys[i] >> 4) & 3) as usize] -= 1;
            self.valid -= 1;
            self.keys[i] = 0;
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
        self.keys.len() * (8 + std::mem::size_of::<Entry>())
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
}

/// Walk the tables of `ctx` for `va`: None is a page fault (no mapping at some stage).
pub fn walk(tables: &[Table], ctx: &Context, va: u64) -> Option<Walk> {
    let (l1, out1) = tables[ctx.cr3 as usize].walk(va)?;
    if ctx.mode == Mode::Host || ctx.nested == NO_TABLE {
        return Some(Walk { target: out1, size: l1.size, flags: l1.flags, gpa: 0, gpa_frame: 0, nested_size: l1.size });
    }
    let (l2, out2) = tables[ctx.nested as usize].walk(out1)?;
    // a combined translation covers the smaller of the two leaves
    let size = l1.size.min(l2.size);
    Some(Walk { target: out2, size, flags: l1.flags, gpa: out1, gpa_frame: out1 & !(l2.size.bytes() - 1), nested_size: l2.size })
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
        return Err(EngineError::invalid("count", format!("INVLPGB count must be in 1..=8, got {}", op.count)));
    }
    if let Some(va) = op.va {
        if !crate::paging::canonical(va) || va % 4096 != 0 {
            return Err(EngineError::invalid("va", format!("INVLPGB needs a canonical, page-aligned address, got {va:#x}")));
        }
    }
    if op.pcid.is_some_and(|p| p >= 4096) {
        return Err(EngineError::invalid("pcid", "PCIDs are 12 bits"));
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
