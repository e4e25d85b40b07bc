//! The host: topology, caches of every core and CCD, the coherence directory, memory, per-CPU
//! clocks and counters, the access path (single and batched) and the oracles' records. The
//! cache-maintenance instructions are in flush.rs and range.rs, the read-only views in inspect.rs,
//! translation in translate.rs, SNP in snp.rs (each an `impl Host` of its own).
//!
//! Model (semantics.md sections 1 and 7; DESIGN.md "The engine's model"):
//! - Per core a private L1D and L2 (shared by the core's SMT threads), L2 inclusive of L1; per CCD a
//!   shared L3 that is an exclusive victim cache of its cores' L2s (filled by L2 castouts, a hit
//!   moves the line into the requesting L2), as on Zen. All write-back, write-allocate, true LRU.
//! - Coherence among copies of the same (line, key) is MOESI-like: one writer (M), or many readers
//!   with at most one dirty owner (O). A read from another cache's M/E copy downgrades it (M->O,
//!   E->S) without writing back; a write invalidates every other copy and takes over dirty data.
//! - The same line under different keys: separate, non-coherent aliases, unless the host has
//!   SME_COHERENT (CPUID 8000_001F EAX[10]): then an access under one key first evicts the other
//!   keys' copies, writing back dirty ones (semantics.md 1.2). DMA never snoops other keys.
//! - Time: per-CPU clocks in cycles; every access and instruction charges the CPU that runs it.

use crate::cache::*;
use crate::config::{check_memory, HostConfig, LINE};
use crate::directory::Directory;
use crate::error::{EngineError, Result};
use crate::memory::{Memory, MAX_KEY};
use crate::paging::Table;
use crate::tlb::{Context, Invlpgb, Mode, TlbLevel, NO_TABLE};
use crate::topology::Topology;
use crate::violation::{Cause, Violation, CAUSES};

macro_rules! counters {
    ($($(#[$m:meta])* $f:ident),* $(,)?) => {
        /// Per-CPU counters, one array each, indexed by logical CPU.
        #[derive(Clone)]
        pub struct Counters { $($(#[$m])* pub $f: Vec<u64>,)* }
        impl Counters {
            pub const NAMES: &'static [&'static str] = &[$(stringify!($f)),*];
            fn new(n: usize) -> Self { Counters { $($f: vec![0; n],)* } }
            pub fn all(&self) -> Vec<(&'static str, &[u64])> { vec![$((stringify!($f), &self.$f[..])),*] }
        }
    };
}

counters!(
    /// memory accesses executed (reads + writes)
    accesses,
    reads,
    writes,
    l1_hits,
    l1_misses,
    l2_hits,
    l2_misses,
    /// served by the CCD's own L3
    l3_hits,
    /// missed the CCD's own L3 (served by a peer core, another CCD or memory)
    l3_misses,
    /// served by another core's private cache in the same CCD
    peer_hits,
    /// served by a cache of another CCD
    remote_hits,
    /// served by memory
    mem_reads,
    /// cycles spent in memory accesses (the CPU's throughput is accesses / access_cycles)
    access_cycles,
    /// dirty lines this CPU's actions wrote back to memory
    writebacks,
    /// cached copies invalidated by this CPU's actions (coherence and flush instructions)
    invalidations,
    /// write upgrades of a shared copy
    upgrades,
    /// cycles spent in flush instructions, IPI waits included
    flush_cycles,
    wbinvd,
    wbnoinvd,
    clflush_lines,
    vm_page_flush,
    ipis_sent,
    ipis_received,
    /// cycles this CPU spent in IPI handlers run for other CPUs
    ipi_cycles,
    /// modelled instructions that faulted (#GP), e.g. VM_PAGE_FLUSH without the feature
    faults,
    /// cycles charged by the policy layer for work the engine does not model instruction by
    /// instruction (firmware commands, page-table edits), see `Host::spend`
    other_cycles,
    /// translations served by the L1 DTLB, the L2 DTLB, or a page walk
    tlb_l1_hits,
    tlb_l2_hits,
    tlb_misses,
    /// guest-physical (GPA -> HPA) entries found or not during nested walks
    gphys_hits,
    gphys_misses,
    walk_cycles,
    /// translations with no mapping (#PF / #NPF), counted and not performed
    page_faults,
    /// writes through a read-only leaf or TLB entry (#PF / #NPF), counted and not performed
    write_faults,
    /// TLB invalidation operations executed and the entries they dropped
    tlb_flush_ops,
    tlb_dropped,
    /// world switches (VMRUN / VM entry) and those refused (VMEXIT_INVALID / VMfail)
    vmruns,
    vmrun_failures,
    /// SEV-SNP: RMP instructions, accesses the RMP checks refused, direct-map splits, cpa_lock
    /// waiting, bytes cleared
    rmp_updates,
    psmashes,
    pvalidates,
    rmp_faults,
    dm_splits,
    cpa_wait_cycles,
    clear_bytes,
    /// cycles this CPU held cpa_lock (set_memory_4k splits: fill and flush)
    cpa_hold_cycles,
    /// flush_tlb_all() calls this CPU made (kflush.rs), and as a target: IPIs that woke it from a
    /// C-state, IPIs that took it out of a guest
    kernel_flushes,
    flush_wakeups,
    flush_guest_exits,
    /// DRAM bytes counted against this CPU's socket (clears, add_memory_traffic; membw.rs)
    dram_bytes,
    /// direct-map page walks host work paid (clears, direct_map_walks) and their cycles
    dm_walks,
    dm_walk_cycles,
    /// nested page faults charged (npf_exit, npf_exits)
    npf_exits,
);

/// How many lines ahead a flush loop prefetches directory slots.
pub(crate) const FLUSH_AHEAD: u64 = 16;

/// Where an access was served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Level {
    L1 = 0,
    L2 = 1,
    L3 = 2,
    Peer = 3,
    Remote = 4,
    Memory = 5,
    /// refused by the RMP checks (not performed)
    Fault = 6,
}
pub const LEVEL_NAMES: [&str; 7] = ["l1", "l2", "l3", "peer", "remote", "memory", "rmp_fault"];

/// A cached copy of a line found by a coherence lookup.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Holder {
    l3: bool,
    /// core (L2) or CCD (L3)
    inst: u32,
    ccd: u32,
    /// the line as found; for a core, DIRTY merged from its L1 copy
    pub(crate) v: u64,
}

/// A scalar broadcast over a batch, or one value per access.
#[derive(Clone, Copy)]
pub enum Col<'a, T: Copy> {
    One(T),
    Each(&'a [T]),
}

impl<'a, T: Copy> Col<'a, T> {
    #[inline(always)]
    pub fn at(&self, i: usize) -> T {
        match self {
            Col::One(v) => *v,
            Col::Each(s) => s[i],
        }
    }
    pub fn len(&self) -> Option<usize> {
        match self {
            Col::One(_) => None,
            Col::Each(s) => Some(s.len()),
        }
    }
}

pub(crate) const NONE: usize = usize::MAX;

/// Context 0: the host's own table, ASID/VPID 0, PCID 0.
const HOST0: Context = Context { mode: Mode::Host, tag: 0, pcid: 0, pcide: true, cr3: 0, nested: NO_TABLE, key: 0, vm: 0 };

/// `$self.$f::<W1, W2, W3>(args)` with the (L1, L2, L3) associativities as constants for the
/// common geometries (set operations without a dispatch, set indices without a multiply), else
/// with them read at run time (0). Used by the AVX2-compiled batch loops.
macro_rules! by_geometry {
    ($self:ident . $f:ident ( $($a:expr),* )) => {
        match ($self.l1.ways, $self.l2.ways, $self.l3.ways) {
            (8, 16, 16) => $self.$f::<8, 16, 16>($($a),*),
            (12, 16, 16) => $self.$f::<12, 16, 16>($($a),*),
            _ => $self.$f::<0, 0, 0>($($a),*),
        }
    };
}
pub(crate) use by_geometry;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlushOp {
    Clflush,
    Clflushopt,
}

/// Cached copies of a line, for tests and inspection: (level 1/2/3, cache instance, key, state).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CachedCopy {
    pub level: u8,
    pub inst: u32,
    pub key: u16,
    pub dirty: bool,
    pub exclusive: bool,
    pub stale: bool,
}

pub struct Host {
    pub cfg: HostConfig,
    pub topo: Topology,
    pub l1: Caches,
    pub l2: Caches,
    pub l3: Caches,
    pub(crate) dir: Directory,
    pub(crate) dir_active: bool,
    dir_next_check: usize,
    /// accesses in the batch running now: how many lines the directory may have to take
    batch_hint: usize,
    /// accesses a caller announced it will make in batches (`expect_accesses`)
    expected: usize,
    /// with the directory off, the only CCD that may hold lines (NONE if none)
    pub(crate) sole_ccd: usize,
    pub mem: Memory,
    pub(crate) clocks: Vec<u64>,
    pub ctr: Counters,
    violations: Vec<Violation>,
    cause_counts: [u64; CAUSES.len()],
    pub max_violations: usize,
    pub(crate) scratch: Vec<Holder>,
    pub(crate) lines_scratch: Vec<u64>,
    /// how range operations find their lines, and their scratch list (range.rs)
    pub(crate) range_mode: crate::range::RangeMode,
    pub(crate) range_lines: Vec<u64>,
    lat: [u64; 6],
    lat_remote_socket: u64,
    // translation state (translate.rs)
    pub(crate) tables: Vec<Table>,
    pub(crate) contexts: Vec<Context>,
    pub(crate) cur_ctx: Vec<u32>,
    /// per CPU, the context it translates with as loaded: CR3 and PCID are the CPU's own (MOV CR3
    /// changes them here only), the rest is copied from `contexts[cur_ctx]` at entry
    pub(crate) cpu_ctx: Vec<Context>,
    /// per CPU, its host context (set_host_context) and the host state saved at VM entry, which
    /// #VMEXIT / VM exit restores (APM vol. 2 15.5.1: VMRUN saves host state to the host save
    /// area and #VMEXIT reloads it; Intel SDM vol. 3C 28.5 "Loading Host State")
    pub(crate) host_ctx: Vec<u32>,
    pub(crate) host_saved: Vec<Context>,
    /// per CPU, the thread tag its TLB entries carry: its SMT thread with `tlb.smt_tagged`, else 0
    pub(crate) cpu_thr: Vec<u8>,
    /// per context, the `context::CTX_COUNTERS` (a flat array, one row per context)
    pub(crate) ctx_ctr: Vec<u64>,
    /// per context, its declared nested truth (nested_truth.rs)
    pub(crate) truth: crate::nested_truth::NestedTruth,
    pub(crate) tlb1: Vec<TlbLevel>,
    pub(crate) tlb2: Vec<TlbLevel>,
    /// table walks so far, all CPUs (the translated batch watches it to prefetch walks)
    pub(crate) walks: u64,
    pub(crate) pending_invlpgb: Vec<(usize, Invlpgb)>,
    /// per invalidation kind: operations, entries dropped
    pub(crate) inval: Vec<[u64; 2]>,
    // SEV-SNP (snp.rs)
    pub(crate) rmp: crate::rmp::Rmp,
    pub(crate) snp_enabled: bool,
    pub(crate) snp_asids: Vec<bool>,
    pub(crate) cpa_free_at: u64,
    /// per CPU: idle (in a C-state), so an IPI has to wake it (kflush.rs)
    pub(crate) cpu_idle: Vec<bool>,
    /// per socket, recent DRAM traffic (membw.rs)
    pub(crate) traffic: crate::membw::SocketTraffic,
}

impl Host {
    /// Build a host from a validated configuration with `memory` bytes of physical memory
    /// (None: the preset's default). All memory starts owned by key 0 (the host).
    pub fn new(cfg: HostConfig, memory: Option<u64>) -> Result<Self> {
        cfg.validate()?;
        let bytes = memory.unwrap_or(cfg.memory.0);
        check_memory("memory", bytes)?;
        if let Some(avail) = crate::config::physical_memory() {
            cfg.check_footprint(bytes, avail)?;
        }
        let topo = Topology::new(&cfg);
        let l1 = Caches::new(topo.cores, cfg.l1d.sets() as usize, cfg.l1d.ways as usize);
        let l2 = Caches::new(topo.cores, cfg.l2.sets() as usize, cfg.l2.ways as usize);
        let l3 = Caches::new(topo.ccds, cfg.l3.sets() as usize, cfg.l3.ways as usize);
        let lat = [
            cfg.l1d.latency as u64,
            cfg.l2.latency as u64,
            cfg.l3.latency as u64,
            cfg.latency.peer_core as u64,
            cfg.latency.remote_ccd as u64,
            cfg.latency.memory as u64,
        ];
        let n = topo.cpus;
        let tlb_cfg = cfg.tlb.clone();
        Ok(Host {
            lat_remote_socket: cfg.latency.remote_socket as u64,
            cfg,
            l1,
            l2,
            l3,
            dir: Directory::new(),
            dir_active: false,
            dir_next_check: 1 << 16,
            batch_hint: 0,
            expected: 0,
            sole_ccd: NONE,
            mem: Memory::new(bytes),
            clocks: vec![0; n],
            ctr: Counters::new(n),
            violations: Vec::new(),
            cause_counts: [0; CAUSES.len()],
            max_violations: 1_000_000,
            scratch: Vec::with_capacity(64),
            lines_scratch: Vec::new(),
            range_mode: crate::range::RangeMode::Auto,
            range_lines: Vec::new(),
            lat,
            tables: vec![Table::with_direct_map(bytes)],
            contexts: vec![HOST0],
            cur_ctx: vec![0; n],
            cpu_ctx: vec![HOST0; n],
            host_ctx: vec![0; n],
            host_saved: vec![HOST0; n],
            ctx_ctr: vec![0; crate::context::CTX_COUNTERS.len()],
            truth: Default::default(),
            cpu_thr: (0..n).map(|c| if tlb_cfg.smt_tagged { (c / topo.cores) as u8 } else { 0 }).collect(),
            tlb1: (0..topo.cores).map(|_| TlbLevel::new(tlb_cfg.l1_entries as usize, tlb_cfg.l1_entries as usize)).collect(),
            tlb2: (0..topo.cores).map(|_| TlbLevel::new(tlb_cfg.l2_entries as usize, tlb_cfg.l2_ways as usize)).collect(),
            walks: 0,
            pending_invlpgb: Vec::new(),
            inval: vec![[0; 2]; crate::translate::INVAL_KINDS.len()],
            rmp: crate::rmp::Rmp::new(bytes),
            snp_enabled: false,
            snp_asids: vec![false; crate::rmp::MAX_ASID as usize + 1],
            cpa_free_at: 0,
            cpu_idle: vec![false; n],
            traffic: crate::membw::SocketTraffic::new(topo.sockets),
            topo,
        })
    }

    pub fn preset(name: &str, memory: Option<u64>) -> Result<Self> {
        Self::new(HostConfig::preset(name)?, memory)
    }

    // ---------------------------------------------------------------------------------------
    // argument checks (API misuse -> EngineError; the engine is unchanged when they fail)

    /// Use the AVX2-compiled paths if `on` and the CPU has AVX2 (the default). Results are the
    /// same either way; turning them off runs the portable paths a CPU without AVX2 would run.
    pub fn use_avx2(&mut self, on: bool) {
        self.l1.use_avx2(on);
        self.l2.use_avx2(on);
        self.l3.use_avx2(on);
        for t in self.tlb1.iter_mut().chain(self.tlb2.iter_mut()) {
            t.use_avx2(on);
        }
    }

    pub fn check_cpu(&self, arg: &str, cpu: usize) -> Result<()> {
        if cpu >= self.topo.cpus {
            return Err(EngineError::invalid(
                arg,
                format!("{arg} = {cpu} is out of range: this host has CPUs 0..{}", self.topo.cpus - 1),
            ));
        }
        Ok(())
    }

    pub fn check_key(&self, arg: &str, key: u64) -> Result<u16> {
        if key > MAX_KEY as u64 {
            return Err(EngineError::invalid(arg, format!("{arg} = {key} is out of range 0..={MAX_KEY}")));
        }
        Ok(key as u16)
    }

    pub fn check_range(&self, arg: &str, pa: u64, size: u64, align: u64) -> Result<()> {
        let mem = self.mem.bytes;
        if pa % align != 0 || size % align != 0 {
            return Err(EngineError::invalid(
                arg,
                format!("{arg} = {pa:#x} and size = {size:#x} must be multiples of {align:#x}"),
            ));
        }
        if size == 0 {
            return Err(EngineError::invalid(arg, format!("{arg}: size must be positive")));
        }
        if pa >= mem || size > mem - pa {
            return Err(EngineError::invalid(
                arg,
                format!("{arg} = {pa:#x} with size = {size:#x} runs past the end of memory ({mem:#x} bytes)"),
            ));
        }
        Ok(())
    }

    /// Every address of `addrs` inside memory; the error names the first offending index as
    /// `arg[i]`.
    pub fn check_addrs(&self, arg: &str, addrs: &[u64]) -> Result<()> {
        match addrs.iter().position(|&a| a >= self.mem.bytes) {
            Some(i) => Err(EngineError::invalid(
                arg,
                format!("{arg}[{i}] = {:#x} is past the end of memory ({:#x} bytes)", addrs[i], self.mem.bytes),
            )),
            None => Ok(()),
        }
    }

    pub fn check_addr(&self, arg: &str, pa: u64) -> Result<()> {
        if pa >= self.mem.bytes {
            return Err(EngineError::invalid(
                arg,
                format!("{arg} = {pa:#x} is past the end of memory ({:#x} bytes)", self.mem.bytes),
            ));
        }
        Ok(())
    }

    pub(crate) fn check_cpus(&self, arg: &str, cpus: &[usize]) -> Result<Vec<usize>> {
        for &c in cpus {
            self.check_cpu(arg, c)?;
        }
        let mut v = cpus.to_vec();
        v.sort_unstable();
        v.dedup();
        Ok(v)
    }

    // ---------------------------------------------------------------------------------------
    // accessors

    pub fn cycles(&self, cpu: usize) -> u64 {
        self.clocks[cpu]
    }
    pub fn clocks(&self) -> &[u64] {
        &self.clocks
    }
    pub fn memory_bytes(&self) -> u64 {
        self.mem.bytes
    }
    pub fn violations(&self) -> &[Violation] {
        &self.violations
    }
    /// Count of violations per cause, including any beyond `max_violations` that were not stored.
    pub fn cause_counts(&self) -> Vec<(Cause, u64)> {
        CAUSES.iter().map(|&c| (c, self.cause_counts[c.index()])).collect()
    }
    pub fn violation_total(&self) -> u64 {
        self.cause_counts.iter().sum()
    }
    pub fn clear_violations(&mut self) {
        self.violations.clear();
        self.cause_counts = [0; CAUSES.len()];
    }
    pub fn directory_active(&self) -> bool {
        self.dir_active
    }
    pub fn directory_entries(&self) -> usize {
        self.dir.len()
    }

    /// Bytes held by the engine's big tables (caches, directory, memory tables).
    pub fn heap_bytes(&self) -> usize {
        (self.l1.data.len() + self.l2.data.len() + self.l3.data.len()) * 8
            + self.tlb1.iter().chain(self.tlb2.iter()).map(|t| t.bytes()).sum::<usize>()
            + self.dir.bytes()
            + self.mem.heap_bytes()
            + self.rmp.heap_bytes()
            + self.tables[0].dm.as_ref().map_or(0, |d| d.heap_bytes())
            + self.violations.capacity() * std::mem::size_of::<Violation>()
    }

    #[inline]
    pub(crate) fn push_violation(&mut self, v: Violation) {
        self.cause_counts[v.cause.index()] += 1;
        if self.violations.len() < self.max_violations {
            self.violations.push(v);
        }
    }

    pub(crate) fn record(&mut self, cause: Cause, cpu: i32, line: u64, key: u16, other_key: u16, owner: u16) {
        self.cause_counts[cause.index()] += 1;
        if self.violations.len() < self.max_violations {
            let cycle = if cpu >= 0 {
                self.clocks[cpu as usize]
            } else {
                self.clocks.iter().copied().max().unwrap_or(0)
            };
            self.violations.push(Violation {
                cause,
                cpu,
                pa: line * LINE,
                key,
                other_key,
                owner,
                cycle,
                va: 0,
                ctx: 0,
                true_pa: 0,
            });
        }
    }

    // ---------------------------------------------------------------------------------------
    // the access path

    /// One memory access of `cpu` to physical address `pa` under `key`. Arguments must be valid
    /// (the batch API checks them); returns where it was served.
    pub fn access(&mut self, cpu: usize, pa: u64, write: bool, key: u16) -> Level {
        self.access_inline::<0, 0, 0>(cpu, pa, write, key)
    }

    #[inline(always)]
    pub(crate) fn access_inline<const W1: usize, const W2: usize, const W3: usize>(&mut self, cpu: usize, pa: u64, write: bool, key: u16) -> Level {
        if self.snp_enabled && !self.rmp_allows(cpu, pa, write, key) {
            return Level::Fault;
        }
        let x = pa >> 6;
        let core = self.topo.cpu_core[cpu] as usize;
        let want = tag(x, key);
        self.ctr.accesses[cpu] += 1;
        if write {
            self.ctr.writes[cpu] += 1;
        } else {
            self.ctr.reads[cpu] += 1;
        }
        // L1
        let b1 = self.l1.base_w::<W1>(core, x);
        // the most recently used way first: streams hit it 7 times in 8
        let i1 = if self.l1.data[b1] & MATCH_KEYED == want { Some(0) } else { self.l1.find_w::<W1>(b1, want, MATCH_KEYED) };
        if let Some(i) = i1 {
            let mut v = self.l1.data[b1 + i];
            if v & STALE != 0 {
                self.stale_hit(cpu, x, key);
            }
            let mut lat = self.lat[0];
            if write {
                if v & EXCL == 0 {
                    lat += self.upgrade(cpu, core, x, key);
                    v |= EXCL;
                }
                v |= DIRTY;
            }
            self.l1.data[b1 + i] = v;
            self.l1.touch_w::<W1>(b1, i);
            self.ctr.l1_hits[cpu] += 1;
            self.charge_access(cpu, lat);
            return Level::L1;
        }
        self.ctr.l1_misses[cpu] += 1;
        // L2
        let b2 = self.l2.base_w::<W2>(core, x);
        // one scan for the line under any key; the (rare) aliases found are then told apart by key
        let mut any2 = self.l2.match_bits_w::<W2>(b2, x | VALID, MATCH_ANY);
        let mut same = 0u64;
        let mut bits = any2;
        while bits != 0 {
            let w = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            if self.l2.data[b2 + w] & MATCH_KEYED == want {
                same = 1 << w;
                any2 &= !(1 << w);
                break;
            }
        }
        if same != 0 {
            let i = same.trailing_zeros() as usize;
            let mut lat = self.lat[1];
            if self.l2.data[b2 + i] & STALE != 0 {
                self.stale_hit(cpu, x, key);
            }
            if write && self.l2.data[b2 + i] & EXCL == 0 {
                // only other caches change: this set and way stay put
                lat += self.upgrade(cpu, core, x, key);
            }
            let v = self.l2.data[b2 + i];
            self.l2.touch_w::<W2>(b2, i);
            let l1v = (v & !DIRTY) | if write { DIRTY } else { 0 };
            self.fill_l1::<W1, W2, W3>(core, x, l1v);
            self.ctr.l2_hits[cpu] += 1;
            self.charge_access(cpu, lat);
            return Level::L2;
        }
        self.ctr.l2_misses[cpu] += 1;
        // does this core hold other keys' aliases of the line? (only an SME_COHERENT host cares)
        let own_alias = self.cfg.features.sme_coherent && any2 != 0;
        // the CCDs that may hold the line: one directory lookup for the whole miss
        let cand = self.candidate_ccds(x);
        if !own_alias && self.solo_for(core, cand) {
            if let Some(l) = self.miss_solo::<W1, W2, W3>(cpu, core, x, key, write, cand) {
                return l;
            }
        }
        self.miss::<W1, W2, W3>(cpu, core, x, key, write, own_alias, cand)
    }

    /// Is `core` the only agent that can hold lines: no directory, no other CCD and no other core
    /// of its CCD with anything cached? Then a miss only has the CCD's L3 to look at.
    #[inline(always)]
    fn solo(&self, core: usize) -> bool {
        if self.dir_active {
            return false;
        }
        let ccd = self.topo.core_ccd[core] as usize;
        if self.sole_ccd != NONE && self.sole_ccd != ccd {
            return false;
        }
        self.alone_in_ccd(core, ccd)
    }

    /// No core of `ccd` but `core` has anything in its L2 (and so in its L1). A plain loop that
    /// stops at the first busy core (an iterator's `all` stayed a call in the batch loop).
    #[inline(always)]
    fn alone_in_ccd(&self, core: usize, ccd: usize) -> bool {
        for c in self.topo.ccd_cores(ccd) {
            if c != core && self.l2.valid[c] != 0 {
                return false;
            }
        }
        true
    }

    /// Is `core` the only agent that can hold the line whose `candidate_ccds` are `cand`: `solo`,
    /// or, with the directory on, no other core of its CCD has anything cached and the directory
    /// names no other CCD for the line? Then the general search (`collect`) could only find the
    /// CCD's own L3 copy, which the solo path looks at. (The directory's mask is a superset of the
    /// CCDs holding the line.)
    #[inline(always)]
    fn solo_for(&self, core: usize, cand: u64) -> bool {
        if !self.dir_active {
            return self.solo(core);
        }
        let ccd = self.topo.core_ccd[core] as usize;
        cand & !(1u64 << ccd) == 0 && self.alone_in_ccd(core, ccd)
    }

    /// The private-cache miss of a solo core: the same outcome as `miss`, without the general
    /// holder search. None if the L3 holds another key's alias that SME_COHERENT must evict.
    /// `cand`: the line's `candidate_ccds`; with the directory on, a CCD it does not name holds no
    /// copy under any key, so its L3 set need not be searched.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn miss_solo<const W1: usize, const W2: usize, const W3: usize>(&mut self, cpu: usize, core: usize, x: u64, key: u16, write: bool, cand: u64) -> Option<Level> {
        let ccd = self.topo.core_ccd[core] as usize;
        let want = tag(x, key);
        let b3 = self.l3.base_w::<W3>(ccd, x);
        let named = !self.dir_active || cand & (1u64 << ccd) != 0;
        let any = if named && self.l3.valid[ccd] != 0 { self.l3.match_bits_w::<W3>(b3, x | VALID, MATCH_ANY) } else { 0 };
        let keyed = if any != 0 { self.l3.match_bits_w::<W3>(b3, want, MATCH_KEYED) } else { 0 };
        if self.cfg.features.sme_coherent && any & !keyed != 0 {
            return None;
        }
        let (newv, level, lat) = if keyed != 0 {
            let v = self.l3.remove_w::<W3>(ccd, b3, keyed.trailing_zeros() as usize);
            let stale = v & STALE;
            if stale != 0 {
                self.stale_hit(cpu, x, key);
            }
            self.ctr.l3_hits[cpu] += 1;
            let newv = if write {
                self.ctr.invalidations[cpu] += 1;
                want | EXCL | (v & DIRTY) | stale
            } else {
                v
            };
            (newv, Level::L3, self.lat[Level::L3 as usize])
        } else {
            if !write {
                let dk = self.mem.data_key(x);
                if dk != key {
                    let owner = self.mem.owner(x);
                    self.record(Cause::ReadForeignData, cpu as i32, x, key, dk, owner);
                }
            }
            self.ctr.l3_misses[cpu] += 1;
            self.ctr.mem_reads[cpu] += 1;
            (want | EXCL, Level::Memory, self.lat[Level::Memory as usize])
        };
        self.fill_l2::<W1, W2, W3>(cpu, core, ccd, x, newv);
        let l1v = (newv & !DIRTY) | if write { DIRTY } else { 0 };
        self.fill_l1::<W1, W2, W3>(core, x, l1v);
        self.note_fill(ccd, x);
        self.charge_access(cpu, lat);
        Some(level)
    }

    #[inline(always)]
    /// Charge `cycles` to `cpu`'s clock, saturating: a clock never wraps (the access path's
    /// charge_access adds latencies that cannot get there and stays a plain add).
    pub(crate) fn clocks_add(&mut self, cpu: usize, cycles: u64) {
        self.clocks[cpu] = self.clocks[cpu].saturating_add(cycles);
    }

    #[inline(always)]
    fn charge_access(&mut self, cpu: usize, lat: u64) {
        self.clocks[cpu] += lat;
        self.ctr.access_cycles[cpu] += lat;
    }

    fn stale_hit(&mut self, cpu: usize, x: u64, key: u16) {
        let owner = self.mem.owner(x);
        self.record(Cause::StaleKeyHit, cpu as i32, x, key, key, owner);
    }

    /// The CCDs that may hold line `x`.
    #[inline(always)]
    fn candidate_ccds(&self, x: u64) -> u64 {
        if self.dir_active {
            self.dir.get(x)
        } else if self.sole_ccd != NONE {
            1u64 << self.sole_ccd
        } else {
            0
        }
    }

    /// Collect every cached copy of line `x` (any key) into `self.scratch`. `skip_core` is a core
    /// whose private caches need not be searched. Clears directory bits of CCDs found empty.
    #[inline(always)]
    pub(crate) fn collect(&mut self, x: u64, skip_core: usize) {
        self.collect_in(x, skip_core, self.candidate_ccds(x))
    }

    /// `collect` over the CCDs of `mask`, which must be `candidate_ccds(x)` (looked up once by a
    /// caller that needed it already).
    #[inline(always)]
    fn collect_in(&mut self, x: u64, skip_core: usize, mask: u64) {
        self.scratch.clear();
        let mut mask = mask;
        let want = x | VALID;
        while mask != 0 {
            let e = mask.trailing_zeros() as usize;
            mask &= mask - 1;
            let before = self.scratch.len();
            if self.l3.valid[e] != 0 {
                let b = self.l3.base(e, x);
                let mut bits = self.l3.match_bits(b, want, MATCH_ANY);
                while bits != 0 {
                    let w = bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    let v = self.l3.data[b + w];
                    self.scratch.push(Holder { l3: true, inst: e as u32, ccd: e as u32, v });
                }
            }
            for core in self.topo.ccd_cores(e) {
                if core == skip_core || self.l2.valid[core] == 0 {
                    continue;
                }
                let b = self.l2.base(core, x);
                let mut bits = self.l2.match_bits(b, want, MATCH_ANY);
                while bits != 0 {
                    let w = bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    let mut v = self.l2.data[b + w];
                    let b1 = self.l1.base(core, x);
                    if let Some(i) = self.l1.find(b1, v & MATCH_KEYED, MATCH_KEYED) {
                        v |= self.l1.data[b1 + i] & DIRTY;
                    }
                    self.scratch.push(Holder { l3: false, inst: core as u32, ccd: e as u32, v });
                }
            }
            let skipped_here = skip_core != NONE && self.topo.core_ccd[skip_core] as usize == e;
            if self.dir_active && self.scratch.len() == before && !skipped_here {
                // lazy clean-up of the superset mask
                let cur = self.dir.get(x);
                self.dir.set(x, cur & !(1u64 << e));
            }
        }
    }

    /// Latency of getting a line from holder `h` for a requester in `ccd`.
    #[inline(always)]
    fn holder_latency(&self, h: &Holder, ccd: usize) -> (u64, Level) {
        if h.ccd as usize == ccd {
            if h.l3 {
                (self.lat[Level::L3 as usize], Level::L3)
            } else {
                (self.lat[Level::Peer as usize], Level::Peer)
            }
        } else if self.topo.ccd_socket[h.ccd as usize] == self.topo.ccd_socket[ccd] {
            (self.lat[Level::Remote as usize], Level::Remote)
        } else {
            (self.lat_remote_socket, Level::Remote)
        }
    }

    /// Remove holder `h`'s copy (and a core's L1 copy); returns it with DIRTY merged from L1.
    #[inline(always)]
    pub(crate) fn remove_holder(&mut self, h: &Holder) -> u64 {
        let x = line_of(h.v);
        let want = h.v & MATCH_KEYED;
        if h.l3 {
            self.l3.take(h.inst as usize, x, want, MATCH_KEYED).unwrap_or(0)
        } else {
            let core = h.inst as usize;
            let mut v = self.l2.take(core, x, want, MATCH_KEYED).unwrap_or(0);
            if let Some(l1v) = self.l1.take(core, x, want, MATCH_KEYED) {
                v |= l1v & DIRTY;
            }
            v
        }
    }

    /// Write back (if dirty) and invalidate holder `h`, on behalf of `cpu`. Returns dirty lines written.
    #[inline(always)]
    pub(crate) fn evict_holder(&mut self, cpu: usize, h: &Holder) -> u64 {
        let v = self.remove_holder(h);
        self.ctr.invalidations[cpu] += 1;
        if v & DIRTY != 0 {
            self.writeback(cpu, v);
            1
        } else {
            0
        }
    }

    /// Clear EXCL on holder `h` (M->O, E->S), folding a dirty L1 copy into the L2 copy.
    #[inline(always)]
    fn downgrade_holder(&mut self, h: &Holder) {
        let x = line_of(h.v);
        let want = h.v & MATCH_KEYED;
        if h.l3 {
            let b = self.l3.base(h.inst as usize, x);
            if let Some(i) = self.l3.find(b, want, MATCH_KEYED) {
                self.l3.data[b + i] &= !EXCL;
            }
        } else {
            let core = h.inst as usize;
            let b1 = self.l1.base(core, x);
            let mut l1dirty = 0;
            if let Some(i) = self.l1.find(b1, want, MATCH_KEYED) {
                l1dirty = self.l1.data[b1 + i] & DIRTY;
                self.l1.data[b1 + i] &= !(EXCL | DIRTY);
            }
            let b2 = self.l2.base(core, x);
            if let Some(i) = self.l2.find(b2, want, MATCH_KEYED) {
                self.l2.data[b2 + i] = (self.l2.data[b2 + i] & !EXCL) | l1dirty;
            }
        }
    }

    /// A write to a shared (S/O) copy held by `core`: invalidate every other copy of (x, key),
    /// take over dirty data, make the core's L2 copy exclusive. Returns the extra latency.
    fn upgrade(&mut self, cpu: usize, core: usize, x: u64, key: u16) -> u64 {
        self.ctr.upgrades[cpu] += 1;
        let ccd = self.topo.core_ccd[core] as usize;
        self.collect(x, core);
        let holders = std::mem::take(&mut self.scratch);
        let mut took = 0;
        let mut lat = self.lat[Level::L3 as usize];
        for h in holders.iter().filter(|h| key_of(h.v) == key) {
            lat = lat.max(self.holder_latency(h, ccd).0);
            took |= self.remove_holder(h) & DIRTY;
            self.ctr.invalidations[cpu] += 1;
        }
        self.scratch = holders;
        let b2 = self.l2.base(core, x);
        if let Some(i) = self.l2.find(b2, tag(x, key), MATCH_KEYED) {
            self.l2.data[b2 + i] |= EXCL | took;
        }
        lat
    }

    /// A miss in the core's private caches; `cand` is the line's `candidate_ccds`.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn miss<const W1: usize, const W2: usize, const W3: usize>(&mut self, cpu: usize, core: usize, x: u64, key: u16, write: bool, own_alias: bool, cand: u64) -> Level {
        let ccd = self.topo.core_ccd[core] as usize;
        let want = tag(x, key);
        // own core: its L2 missed (x, key) but may hold other keys' aliases, which only matter to
        // an SME_COHERENT host
        let coherent = self.cfg.features.sme_coherent;
        self.collect_in(x, if own_alias { NONE } else { core }, cand);
        let holders = std::mem::take(&mut self.scratch);
        if coherent {
            for h in holders.iter().filter(|h| key_of(h.v) != key) {
                self.evict_holder(cpu, h);
            }
        }
        // served by the nearest same-key copy (first found on ties), else by memory
        let mut level = Level::Memory;
        let mut lat = u64::MAX;
        let mut stale = 0;
        let mut n_same = 0;
        let mut own_l3 = false;
        for h in holders.iter().filter(|h| key_of(h.v) == key) {
            n_same += 1;
            stale |= h.v & STALE;
            let (l, lv) = self.holder_latency(h, ccd);
            if l < lat {
                lat = l;
                level = lv;
            }
            own_l3 |= h.l3 && h.inst as usize == ccd;
        }
        if n_same == 0 {
            lat = self.lat[Level::Memory as usize];
        }
        let newv = if write {
            let mut took = 0;
            for h in holders.iter().filter(|h| key_of(h.v) == key) {
                took |= self.remove_holder(h) & DIRTY;
                self.ctr.invalidations[cpu] += 1;
            }
            want | EXCL | took | stale
        } else if n_same == 0 {
            let dk = self.mem.data_key(x);
            if dk != key {
                let owner = self.mem.owner(x);
                self.record(Cause::ReadForeignData, cpu as i32, x, key, dk, owner);
            }
            want | EXCL
        } else if own_l3 {
            // the victim cache hands its copy over
            let v = self.l3.take_w::<W3>(ccd, x, want, MATCH_KEYED).unwrap_or(want);
            if n_same == 1 {
                v | stale
            } else {
                (v & !EXCL) | stale
            }
        } else {
            for h in holders.iter().filter(|h| key_of(h.v) == key) {
                self.downgrade_holder(h);
            }
            want | stale
        };
        self.scratch = holders;
        if stale != 0 {
            self.stale_hit(cpu, x, key);
        }
        match level {
            Level::L3 => self.ctr.l3_hits[cpu] += 1,
            Level::Peer => {
                self.ctr.l3_misses[cpu] += 1;
                self.ctr.peer_hits[cpu] += 1
            }
            Level::Remote => {
                self.ctr.l3_misses[cpu] += 1;
                self.ctr.remote_hits[cpu] += 1
            }
            _ => {
                self.ctr.l3_misses[cpu] += 1;
                self.ctr.mem_reads[cpu] += 1
            }
        }
        self.fill_l2::<W1, W2, W3>(cpu, core, ccd, x, newv);
        let l1v = (newv & !DIRTY) | if write { DIRTY } else { 0 };
        self.fill_l1::<W1, W2, W3>(core, x, l1v);
        self.note_fill(ccd, x);
        self.charge_access(cpu, lat);
        level
    }

    #[inline(always)]
    fn fill_l2<const W1: usize, const W2: usize, const W3: usize>(&mut self, cpu: usize, core: usize, ccd: usize, x: u64, v: u64) {
        let b2 = self.l2.base_w::<W2>(core, x);
        let mut victim = self.l2.insert_w::<W2>(core, b2, v);
        if victim != 0 {
            // inclusion: the L1 copy goes with it
            if let Some(l1v) = self.l1.take_w::<W1>(core, line_of(victim), victim & MATCH_KEYED, MATCH_KEYED) {
                victim |= l1v & DIRTY;
            }
            self.castout::<W1, W2, W3>(cpu, ccd, victim);
        }
    }

    /// An L2 victim goes to its CCD's L3 (victim cache); the L3's victim leaves the CCD.
    #[inline(always)]
    fn castout<const W1: usize, const W2: usize, const W3: usize>(&mut self, cpu: usize, ccd: usize, v: u64) {
        let x = line_of(v);
        let b3 = self.l3.base_w::<W3>(ccd, x);
        // another core's castout of the same line may be there already: then the two merge, and
        // neither was the only copy
        let victim = self.l3.insert_or_merge_w::<W3>(ccd, b3, v, |old, new| (old | (new & (DIRTY | STALE))) & !EXCL);
        if victim & DIRTY != 0 {
            self.writeback(cpu, victim);
        }
    }

    #[inline(always)]
    fn fill_l1<const W1: usize, const W2: usize, const W3: usize>(&mut self, core: usize, x: u64, v: u64) {
        let b1 = self.l1.base_w::<W1>(core, x);
        let victim = self.l1.insert_w::<W1>(core, b1, v);
        if victim & DIRTY != 0 {
            let vx = line_of(victim);
            let b2 = self.l2.base_w::<W2>(core, vx);
            if let Some(i) = self.l2.find_w::<W2>(b2, victim & MATCH_KEYED, MATCH_KEYED) {
                self.l2.data[b2 + i] |= DIRTY;
            } else {
                debug_assert!(false, "L1 line without its L2 copy");
            }
        }
    }

    /// A dirty line reaches memory. The oracle: its key must be its page's owner's, and its key
    /// slot must not have been re-keyed since it was cached.
    ///
    /// One exception: on an SME_COHERENT host, a host-key (key 0) line landing on a page now owned
    /// by a guest is harmless. Coherence makes any guest access evict it first, so it can only carry
    /// data over lines the guest has not written since it got the page (undefined content of a
    /// fresh page). KVM relies on this: sev_clflush_pages() returns early on SME_COHERENT
    /// (arch/x86/kvm/svm/sev.c; semantics.md 1.2, 1.7.1). It is recorded as the owner's data.
    pub(crate) fn writeback(&mut self, cpu: usize, v: u64) {
        let x = line_of(v);
        let key = key_of(v);
        self.ctr.writebacks[cpu] += 1;
        if key == 0 && v & STALE == 0 && self.cfg.features.sme_coherent {
            let owner = self.mem.owner(x);
            if owner != 0 {
                self.mem.write(x, owner);
                return;
            }
        }
        let owner = self.mem.write(x, key);
        if v & STALE != 0 {
            self.record(Cause::WritebackStaleKey, cpu as i32, x, key, owner, owner);
        } else if key != owner {
            self.record(Cause::WritebackForeignOwner, cpu as i32, x, key, owner, owner);
        }
    }

    /// CCD `ccd` now holds line `x`.
    #[inline(always)]
    fn note_fill(&mut self, ccd: usize, x: u64) {
        if self.dir_active {
            self.dir.add(x, 1u64 << ccd);
            if self.dir.len() > self.dir_next_check {
                self.check_directory_size();
            }
        } else if self.sole_ccd == NONE {
            self.sole_ccd = ccd;
        } else if self.sole_ccd != ccd {
            self.activate_directory();
        }
    }

    fn cached_lines_total(&self) -> usize {
        self.l2.valid.iter().map(|&v| v as usize).sum::<usize>() + self.l3.valid.iter().map(|&v| v as usize).sum::<usize>()
    }

    fn check_directory_size(&mut self) {
        let live = self.cached_lines_total();
        if self.dir.len() > 2 * live + (1 << 16) {
            self.rebuild_directory();
            // a fresh table: sized ahead again if a batch is running
            self.reserve_directory();
        }
        self.dir_next_check = 2 * self.cached_lines_total() + (1 << 16);
    }

    /// Build the directory from the caches' contents.
    fn rebuild_directory(&mut self) {
        let mut dir = Directory::new();
        for e in 0..self.topo.ccds {
            let bit = 1u64 << e;
            if self.l3.valid[e] != 0 {
                for &v in self.l3.inst_slice(e) {
                    if v != 0 {
                        dir.add(line_of(v), bit);
                    }
                }
            }
            for core in self.topo.ccd_cores(e) {
                if self.l2.valid[core] != 0 {
                    for &v in self.l2.inst_slice(core) {
                        if v != 0 {
                            dir.add(line_of(v), bit);
                        }
                    }
                }
            }
        }
        self.dir = dir;
    }

    fn activate_directory(&mut self) {
        self.dir_active = true;
        self.sole_ccd = NONE;
        self.rebuild_directory();
        self.dir_next_check = 2 * self.dir.len() + (1 << 16);
        self.reserve_directory();
    }

    /// If the directory has to grow during the batch running now, grow it once to what the
    /// batch may need: the doublings on the way then rehash a nearly empty table instead of a
    /// full one each time (on the 512-CPU bench's first 1 M accesses, 121 -> 97 ns per access).
    /// Its lines are new ones at most, never more than the rebuild bound (twice what the caches
    /// can hold), and at most RESERVE_AHEAD per batch; a batch that never grows the table leaves
    /// it as it is, and one that grows it once for a few more lines gets at most 32 MiB more
    /// than it needs (calloc'd pages are committed where entries land: everywhere in a table
    /// sized ahead). Timing only: range operations decide on the size natural growth gives
    /// (Directory::slots) and sort what they find.
    fn reserve_directory(&mut self) {
        // 2^20 lines: a table of 2^21 slots (32 MiB) at most beyond what a batch over a small
        // working set that grows it once needs
        const RESERVE_AHEAD: usize = 1 << 20;
        let cap = self.l2.data.len() + self.l3.data.len();
        let want = if self.batch_hint == 0 {
            0
        } else {
            (self.dir.len() + self.batch_hint.min(RESERVE_AHEAD)).min(2 * cap + (1 << 16))
        };
        self.dir.set_ahead(want);
    }

    fn ccd_empty(&self, e: usize) -> bool {
        self.l3.valid[e] == 0 && self.topo.ccd_cores(e).all(|c| self.l2.valid[c] == 0)
    }

    /// After bulk invalidations: drop the directory when every cache is empty.
    pub(crate) fn after_bulk(&mut self) {
        if self.dir_active {
            if self.cached_lines_total() == 0 {
                self.dir_active = false;
                self.dir.clear();
                self.dir_next_check = 1 << 16;
            }
        } else if self.sole_ccd != NONE && self.ccd_empty(self.sole_ccd) {
            self.sole_ccd = NONE;
        }
    }

    // ---------------------------------------------------------------------------------------
    // batch access

    /// Run a batch of accesses in order. Every argument is checked before anything runs, so a bad
    /// batch leaves the engine unchanged. `levels`, if given, receives where each was served.
    pub fn access_batch(
        &mut self,
        cpu: Col<u32>,
        addr: &[u64],
        write: Col<bool>,
        key: Col<u16>,
        levels: Option<&mut [u8]>,
    ) -> Result<[u64; 7]> {
        self.check_access_batch(&cpu, addr, &write, &key, levels.as_ref().map(|l| l.len()))?;
        // the directory is sized for the batch when it is (or becomes) active
        self.batch_hint = addr.len().max(std::mem::take(&mut self.expected));
        if self.dir_active {
            self.reserve_directory();
        }
        #[cfg(target_arch = "x86_64")]
        let by_level = if self.l1.avx2() {
            // SAFETY: the host CPU has AVX2 (detected at run time).
            unsafe { self.run_batch_avx2(cpu, addr, write, key, levels) }
        } else {
            self.run_batch::<0, 0, 0>(cpu, addr, write, key, levels)
        };
        #[cfg(not(target_arch = "x86_64"))]
        let by_level = self.run_batch::<0, 0, 0>(cpu, addr, write, key, levels);
        self.batch_hint = 0;
        self.dir.set_ahead(0);
        Ok(by_level)
    }

    /// A caller that runs one long batch as several `access_batch` calls (the binding's chunks)
    /// announces the accesses still to come, so that the directory is sized for all of them at
    /// once (`reserve_directory`); 0 when done. Timing only: no result depends on it.
    pub fn expect_accesses(&mut self, n: usize) {
        self.expected = n;
    }

    /// The checks `access_batch` makes before it runs anything (`levels`: the length of the
    /// output array, if one is given): lengths, CPUs, addresses and keys.
    pub fn check_access_batch(&self, cpu: &Col<u32>, addr: &[u64], write: &Col<bool>, key: &Col<u16>, levels: Option<usize>) -> Result<()> {
        let n = addr.len();
        for (name, len) in [("cpu", cpu.len()), ("write", write.len()), ("key", key.len())] {
            if let Some(l) = len {
                if l != n {
                    return Err(EngineError::invalid(
                        name,
                        format!("{name} has {l} elements but addr has {n}: arrays must have the same length"),
                    ));
                }
            }
        }
        if let Some(out) = levels {
            if out != n {
                return Err(EngineError::invalid("levels", "levels must have as many elements as addr"));
            }
        }
        match *cpu {
            Col::One(c) => self.check_cpu("cpu", c as usize)?,
            Col::Each(s) => {
                if let Some(m) = s.iter().copied().max() {
                    if m as usize >= self.topo.cpus {
                        let i = s.iter().position(|&c| c == m).unwrap_or(0);
                        return Err(EngineError::invalid(
                            "cpu",
                            format!("cpu[{i}] = {m} is out of range: this host has CPUs 0..{}", self.topo.cpus - 1),
                        ));
                    }
                }
            }
        }
        self.check_addrs("addr", addr)?;
        match *key {
            Col::One(k) => {
                self.check_key("key", k as u64)?;
            }
            Col::Each(s) => {
                if let Some(i) = s.iter().position(|&k| k > MAX_KEY) {
                    return Err(EngineError::invalid(
                        "key",
                        format!("key[{i}] = {} is out of range 0..={MAX_KEY}", s[i]),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The batch loop compiled for AVX2: the access path is inlined into it, so its set scans
    /// become a few inline vector instructions instead of calls.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn run_batch_avx2(
        &mut self,
        cpu: Col<u32>,
        addr: &[u64],
        write: Col<bool>,
        key: Col<u16>,
        levels: Option<&mut [u8]>,
    ) -> [u64; 7] {
        by_geometry!(self.run_batch(cpu, addr, write, key, levels))
    }

    /// The batch loop over checked arguments.
    #[inline(always)]
    fn run_batch<const W1: usize, const W2: usize, const W3: usize>(
        &mut self,
        cpu: Col<u32>,
        addr: &[u64],
        write: Col<bool>,
        key: Col<u16>,
        levels: Option<&mut [u8]>,
    ) -> [u64; 7] {
        let n = addr.len();
        let mut by_level = [0u64; 7];
        let mut levels = levels;
        let fast = !self.snp_enabled;
        let mut last = (u32::MAX, u64::MAX, 0u16);
        let mut i = 0;
        while i < n {
            let (c, a, w, k) = (cpu.at(i), addr[i], write.at(i), key.at(i));
            if fast && (c, a >> 6, k) == last {
                // the same CPU on the same line again (a stream's next words): the line is at the
                // MRU way of its L1 set, where the previous access left it; take the whole run
                let mut j = i + 1;
                while j < n && addr[j] >> 6 == a >> 6 && cpu.at(j) == c && key.at(j) == k && write.at(j) == w {
                    j += 1;
                }
                if self.l1_mru_hits::<W1, W2, W3>(c as usize, a >> 6, w, k, (j - i) as u64) {
                    by_level[0] += (j - i) as u64;
                    if let Some(out) = levels.as_deref_mut() {
                        out[i..j].fill(Level::L1 as u8);
                    }
                    i = j;
                    continue;
                }
            }
            self.prefetch_ahead::<W1, W2, W3>(&cpu, addr, i);
            last = (c, a >> 6, k);
            let l = self.access_inline::<W1, W2, W3>(c as usize, a, w, k);
            by_level[l as usize] += 1;
            if let Some(out) = levels.as_deref_mut() {
                out[i] = l as u8;
            }
            i += 1;
        }
        by_level
    }

    /// `n` accesses that hit the MRU way of their L1 set with nothing else to do (not stale, and a
    /// write finds the line exclusive). Returns false, changing nothing, otherwise.
    #[inline(always)]
    fn l1_mru_hits<const W1: usize, const W2: usize, const W3: usize>(&mut self, cpu: usize, x: u64, write: bool, key: u16, n: u64) -> bool {
        let core = self.topo.cpu_core[cpu] as usize;
        let b1 = self.l1.base_w::<W1>(core, x);
        let v = self.l1.data[b1];
        if v & (MATCH_KEYED | STALE) != tag(x, key) || (write && v & EXCL == 0) {
            return false;
        }
        self.ctr.accesses[cpu] += n;
        if write {
            self.l1.data[b1] = v | DIRTY;
            self.ctr.writes[cpu] += n;
        } else {
            self.ctr.reads[cpu] += n;
        }
        self.ctr.l1_hits[cpu] += n;
        self.charge_access(cpu, self.lat[0] * n);
        true
    }

    /// Ask the host CPU to start loading the cache sets a later access of the batch will search,
    /// so the simulator's own cache misses overlap (a hint only: no effect on results).
    #[inline(always)]
    fn prefetch_ahead<const W1: usize, const W2: usize, const W3: usize>(&self, cpu: &Col<u32>, addr: &[u64], i: usize) {
        const AHEAD: usize = 12;
        let (w2, w3) = (if W2 == 0 { self.l2.ways } else { W2 }, if W3 == 0 { self.l3.ways } else { W3 });
        let j = i + AHEAD;
        if j < addr.len() && addr[j] >> 6 != addr[j - 1] >> 6 {
            let x = addr[j] >> 6;
            let core = self.topo.cpu_core[cpu.at(j) as usize] as usize;
            let ccd = self.topo.core_ccd[core] as usize;
            let (p1, p2, p3) = (self.l1.data.as_ptr(), self.l2.data.as_ptr(), self.l3.data.as_ptr());
            let (b1, b2, b3) = (self.l1.base_w::<W1>(core, x), self.l2.base_w::<W2>(core, x), self.l3.base_w::<W3>(ccd, x));
            // many CPUs' L1 sets do not stay in the host's caches; a 12-way set spans two host lines
            let w1 = if W1 == 0 { self.l1.ways } else { W1 };
            crate::util::prefetch_at(p1, b1);
            if w1 > 8 {
                crate::util::prefetch_at(p1, b1 + w1 - 1);
            }
            crate::util::prefetch_at(p2, b2);
            crate::util::prefetch_at(p2, b2 + w2 - 1);
            // a read that misses everywhere asks memory whose data the line holds
            self.mem.prefetch(x);
            if self.dir_active {
                // the miss will look the line up in the directory; whether it needs its CCD's L3
                // set, the directory tells: the second stage below
                self.dir.prefetch(x);
            } else {
                crate::util::prefetch_at(p3, b3);
                crate::util::prefetch_at(p3, b3 + w3 - 1);
            }
            let k = i + AHEAD / 2;
            let xk = addr[k] >> 6;
            let core = self.topo.cpu_core[cpu.at(k) as usize] as usize;
            let ccd = self.topo.core_ccd[core] as usize;
            if self.dir_active && xk != addr[k - 1] >> 6 {
                // the directory slot of access k was asked for AHEAD / 2 accesses ago: its mask (a
                // superset of the CCDs holding the line) says whether the L3 set will be searched;
                // a probe run that goes on past the lines asked for gets its next line asked for
                // now (the lookup of a line no cache holds runs to the run's end)
                if let Some(mask) = self.dir.peek(xk) {
                    if mask & (1u64 << ccd) != 0 && self.l3.valid[ccd] != 0 {
                        let b3 = self.l3.base_w::<W3>(ccd, xk);
                        crate::util::prefetch_at(p3, b3);
                        crate::util::prefetch_at(p3, b3 + w3 - 1);
                    }
                }
            }
            // a dirty line access k pushes out of its L1 set marks its L2 copy dirty: that L2 set
            let b1k = self.l1.base_w::<W1>(core, xk);
            let l1lru = self.l1.data[b1k + w1 - 1];
            if l1lru & DIRTY != 0 {
                let b = self.l2.base_w::<W2>(core, line_of(l1lru));
                crate::util::prefetch_at(p2, b);
                crate::util::prefetch_at(p2, b + w2 - 1);
            }
            // the line access k will push out of its L2 set goes to its L3 set
            let b = self.l2.base_w::<W2>(core, xk);
            let lru = self.l2.data[b + w2 - 1];
            if lru != 0 {
                let b3 = self.l3.base_w::<W3>(ccd, line_of(lru));
                crate::util::prefetch_at(p3, b3);
                crate::util::prefetch_at(p3, b3 + w3 - 1);
            }
        }
    }
}
