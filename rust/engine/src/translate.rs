//! Translation on the host: page tables, contexts, the TLB lookup/fill path in front of the cache
//! access path, every invalidation instruction with its manual's scope, and the oracles (stale
//! translation, isolation). Semantics: semantics.md sections 3 and 4 (APM vol. 2 ch. 15 via kernel
//! sources; Intel SDM vol. 3C "Caching Translation Information").

use crate::context::{CC_GPHYS, CC_L1, CC_L2, CC_MISS, CC_PF, CC_WF, CTX_COUNTERS};
use crate::error::{EngineError, Result};
use crate::host::{by_geometry, Col, Host};
use crate::paging::{canonical, Leaf, PageSize, Table, TableKind, F_CBIT, F_GLOBAL, F_RDONLY};
use crate::tlb::*;
use crate::violation::{Cause, Violation};

/// The invalidation kinds counted in `Host::invalidation_stats`.
pub const INVAL_KINDS: [&str; 19] = [
    "invlpg",
    "mov_cr3",
    "invpcid_address",
    "invpcid_single",
    "invpcid_all_global",
    "invpcid_all",
    "tlb_control_flush_all_asid",
    "tlb_control_flush_asid",
    "tlb_control_flush_asid_local",
    "invlpga",
    "invlpgb",
    "invept_single",
    "invept_all",
    "invvpid_address",
    "invvpid_single",
    "invvpid_all",
    "invvpid_single_retain_globals",
    "vpid0_entry_exit",
    "local_flush_all",
];

fn kind_index(name: &str) -> usize {
    INVAL_KINDS.iter().position(|k| *k == name).expect("invalidation kind")
}

/// NASID: CPUID 8000_000A EBX, the number of ASIDs; [MEM] 32768 on Zen 3/4 (semantics.md 3.1).
pub const NASID: u32 = 32768;

/// VMRUN's result: entered the guest, or refused with VMEXIT_INVALID (exit code -1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmrunResult {
    Entered,
    VmexitInvalid,
}

/// Where a translated access went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Translated {
    Ok { pa: u64, key: u16 },
    /// no mapping (#PF / #NPF)
    Fault,
    /// the SNP RMP checks refused the guest's translation (#NPF with the RMP bit, or #VC)
    RmpFault,
}

const ALL_CATS: u8 = 0b111;
const LIN_COMB: u8 = (1 << CAT_LINEAR) | (1 << CAT_COMBINED);

impl Host {
    // ---------------------------------------------------------------------------------------
    // tables and contexts

    pub fn create_table(&mut self, kind: TableKind) -> u32 {
        self.tables.push(Table::new(kind));
        (self.tables.len() - 1) as u32
    }

    pub(crate) fn table_checked(&self, arg: &str, id: u32) -> Result<&Table> {
        self.tables
            .get(id as usize)
            .ok_or_else(|| EngineError::invalid(arg, format!("{arg} = {id}: no such table (there are {})", self.tables.len())))
    }

    /// Map [addr, addr + size) of table `table` to `target` (host-physical for host and nested
    /// tables, guest-physical for guest tables). The TLBs are not touched.
    pub fn map(&mut self, table: u32, addr: u64, target: u64, size: PageSize, flags: u8) -> Result<()> {
        let kind = self.table_checked("table", table)?.kind;
        if kind != TableKind::Guest && (target >= self.mem.bytes || size.bytes() > self.mem.bytes - target) {
            return Err(EngineError::invalid(
                "target",
                format!("target {target:#x}+{:#x} is past the end of memory ({:#x} bytes)", size.bytes(), self.mem.bytes),
            ));
        }
        if kind == TableKind::Guest && target >= 1 << 52 {
            return Err(EngineError::invalid("target", format!("guest physical address {target:#x} is beyond 52 bits")));
        }
        self.tables[table as usize].map(addr, target, size, flags)
    }

    /// Map addr[i] -> target[i], all of one size and flags, or nothing at all: on the first bad
    /// one the leaves already added are removed again and the error names its index.
    pub fn map_many(&mut self, table: u32, addr: &[u64], target: &[u64], size: PageSize, flags: u8) -> Result<()> {
        // the scalars first, whatever the lengths (an empty batch on a missing table is an error)
        self.table_checked("table", table)?;
        if addr.len() != target.len() {
            return Err(EngineError::invalid("target", format!("addr has {} elements, target {}", addr.len(), target.len())));
        }
        for i in 0..addr.len() {
            if let Err(e) = self.map(table, addr[i], target[i], size, flags) {
                for &a in &addr[..i] {
                    self.tables[table as usize].unmap(a);
                }
                return Err(EngineError::invalid(e.arg(), format!("[{i}]: {e}; nothing was mapped")));
            }
        }
        Ok(())
    }

    pub fn unmap(&mut self, table: u32, addr: u64) -> Result<Option<Leaf>> {
        if self.table_checked("table", table)?.dm_pa(addr).is_some() {
            return Err(EngineError::invalid("addr", format!("addr = {addr:#x} is in the direct map, which is split (set_memory_4k), never unmapped")));
        }
        Ok(self.tables[table as usize].unmap(addr))
    }

    pub fn table_walk(&self, table: u32, addr: u64) -> Result<Option<(Leaf, u64)>> {
        Ok(self.table_checked("table", table)?.walk(addr))
    }

    pub fn table(&self, id: u32) -> Result<&Table> {
        self.table_checked("table", id)
    }

    fn note_inval(&mut self, cpu: usize, kind: &str, dropped: u64, cycles: u64) {
        let k = kind_index(kind);
        self.inval[k][0] += 1;
        self.inval[k][1] += dropped;
        self.ctr.tlb_flush_ops[cpu] += 1;
        self.ctr.tlb_dropped[cpu] += dropped;
        self.ctr.flush_cycles[cpu] += cycles;
        self.clocks_add(cpu, cycles);
    }

    /// (operations, entries dropped) per invalidation kind, over the whole host.
    pub fn invalidation_stats(&self) -> Vec<(&'static str, u64, u64)> {
        INVAL_KINDS.iter().zip(&self.inval).map(|(k, v)| (*k, v[0], v[1])).collect()
    }

    /// Drop, on `cpu`'s core, the entries `pred` selects (both levels): of this thread only where
    /// the entries carry the thread (`tlb.smt_tagged`), since a local invalidation acts on the
    /// logical processor that executes it (APM vol. 2 INVLPGA/TLB_CONTROL, SDM INVLPG/INVEPT).
    fn drop_local(&mut self, cpu: usize, pred: impl Fn(&Entry) -> bool + Copy) -> u64 {
        let core = self.topo.cpu_core[cpu] as usize;
        let thr = self.cpu_thr[cpu];
        let p = move |e: &Entry| e.thr == thr && pred(e);
        self.tlb1[core].drop_where(p) + self.tlb2[core].drop_where(p)
    }

    fn drop_local_addr(&mut self, cpu: usize, addr: u64, cats: u8, pred: impl Fn(&Entry) -> bool + Copy) -> u64 {
        let core = self.topo.cpu_core[cpu] as usize;
        let thr = self.cpu_thr[cpu];
        let p = move |e: &Entry| e.thr == thr && pred(e);
        self.tlb1[core].drop_addr(addr, cats, p) + self.tlb2[core].drop_addr(addr, cats, p)
    }

    // ---------------------------------------------------------------------------------------
    // translation

    /// Translate `va` in `cpu`'s current context through its TLBs, filling them on a miss, and
    /// check what it finds against the current tables. Charges the translation's cost.
    pub fn translate(&mut self, cpu: usize, va: u64) -> Translated {
        self.translate_inline(cpu, va, false)
    }

    /// `translate` for a read (`write` false) or a write: a write through a read-only leaf or
    /// TLB entry is a fault (#PF / #NPF), counted in `write_faults` and not performed.
    pub fn translate_access(&mut self, cpu: usize, va: u64, write: bool) -> Translated {
        self.translate_inline(cpu, va, write)
    }

    /// `translate`, inlined into the translated batch loops (the TLB hit path is most of a
    /// translated access; the miss path stays out of line).
    #[inline(always)]
    fn translate_inline(&mut self, cpu: usize, va: u64, write: bool) -> Translated {
        let cid = self.cur_ctx[cpu];
        let ctx = self.cpu_ctx[cpu];
        let core = self.topo.cpu_core[cpu] as usize;
        let (cat, dom) = if ctx.mode == Mode::Host { (CAT_LINEAR, DOM_HOST) } else { (CAT_COMBINED, ctx.mode.dom()) };
        let eptp = if ctx.mode == Mode::Vmx { ctx.nested } else { 0 };
        let thr = self.cpu_thr[cpu];
        let m = |e: &Entry| {
            e.dom == dom && e.tag == ctx.tag && e.eptp == eptp && e.thr == thr && (e.pcid == ctx.pcid || e.flags & F_GLOBAL != 0)
        };
        let cc = cid as usize * CTX_COUNTERS.len();
        let hit = if let Some(i) = self.tlb1[core].find(va, cat, m) {
            self.tlb1[core].touch(i);
            self.ctr.tlb_l1_hits[cpu] += 1;
            self.ctx_ctr[cc + CC_L1] += 1;
            Some((1u8, i))
        } else if let Some(i) = self.tlb2[core].find(va, cat, m) {
            self.tlb2[core].touch(i);
            self.ctr.tlb_l2_hits[cpu] += 1;
            self.ctx_ctr[cc + CC_L2] += 1;
            let lat = self.cfg.tlb.l2_latency as u64;
            self.clocks_add(cpu, lat);
            // promote into the L1 (the L2 keeps its copy)
            let e = self.tlb2[core].ents[i];
            let size = size_of(e.size);
            self.tlb1[core].insert(va, size, e);
            Some((2u8, i))
        } else {
            None
        };
        let (target, flags, gpa, nsize) = match hit {
            Some((lvl, i)) => {
                let e = if lvl == 1 { self.tlb1[core].ents[i] } else { self.tlb2[core].ents[i] };
                let size = size_of(e.size);
                let off = va & (size.bytes() - 1);
                let pa = e.target + off;
                if !self.entry_is_current(&e, cid, &ctx) {
                    self.check_hit(cpu, cid, &ctx, va, pa, e, lvl, i, write);
                } else if e.vm != ctx.vm {
                    self.translation_violation(Cause::ForeignVmTranslation, cpu, cid, &ctx, va, pa, pa);
                }
                (pa, e.flags, e.gpa + off, e.nsize)
            }
            None => match self.fill(cpu, core, thr, cc, &ctx, va, cat, dom, eptp, write) {
                Some(t) => t,
                None => {
                    self.ctr.page_faults[cpu] += 1;
                    self.ctx_ctr[cc + CC_PF] += 1;
                    return Translated::Fault;
                }
            },
        };
        if write && flags & F_RDONLY != 0 {
            // a write through a read-only translation, from the TLB or the walk, faults (a stale
            // read-only entry may fault spuriously: SDM vol. 3A 4.10.4.3), and the fault drops
            // what it used, so the retry walks the tables again
            self.ctr.write_faults[cpu] += 1;
            self.ctx_ctr[cc + CC_WF] += 1;
            self.fault_invalidate(cpu, &ctx, va, gpa, cat, dom, eptp);
            return Translated::Fault;
        }
        let key = if flags & F_CBIT != 0 { ctx.key } else { 0 };
        // SNP: a private access checks the RMP entry's ASID, GPA and size against the nested
        // mapping (semantics.md 5.3); a refusal is recorded and the access not made
        if self.snp_enabled && ctx.mode == Mode::Svm && key != 0 && target < self.mem.bytes && !self.rmp_allows_guest(cpu, target, gpa, nsize, key) {
            return Translated::RmpFault;
        }
        if ctx.mode != Mode::Host && target < self.mem.bytes {
            // a guest reaching a page that belongs to another guest's key
            let owner = self.mem.owner(target >> 6);
            if owner != 0 && owner != ctx.key {
                self.translation_violation(Cause::ForeignPageAccess, cpu, cid, &ctx, va, target, target);
            }
        }
        Translated::Ok { pa: target, key }
    }

    /// What a fault invalidates on the faulting logical processor. SDM vol. 3A 4.10.4.1: a page
    /// fault invalidates the TLB entries for the faulting linear address (current PCID); vol. 3C
    /// 29.4.3 (28.3.3.1 in older editions): an EPT violation invalidates the guest-physical
    /// mappings for the faulting guest-physical address and the combined mappings for the linear
    /// address. Which stage refused a write is not tracked, so a guest's fault drops both (more
    /// than a #PF must, which the SDM allows: a processor may invalidate any entry at any time).
    /// The APM says nothing of #NPF and the TLB; AMD is treated the same [assumed]. Not an
    /// invalidation instruction: no flush is counted.
    #[allow(clippy::too_many_arguments)]
    #[inline(never)]
    fn fault_invalidate(&mut self, cpu: usize, ctx: &Context, va: u64, gpa: u64, cat: u8, dom: u8, eptp: u32) {
        let (tag, pcid) = (ctx.tag, ctx.pcid);
        self.drop_local_addr(cpu, va, 1 << cat, move |e: &Entry| {
            e.dom == dom && e.tag == tag && e.eptp == eptp && (e.pcid == pcid || e.flags & F_GLOBAL != 0)
        });
        if ctx.mode != Mode::Host && ctx.nested != NO_TABLE {
            let gtag = if ctx.mode == Mode::Svm { ctx.tag } else { 0 };
            self.drop_local_addr(cpu, gpa, 1 << CAT_GPHYS, move |e: &Entry| e.dom == dom && e.tag == gtag && e.eptp == eptp);
        }
    }

    /// Was entry `e` filled from the context's current tables, unchanged since?
    #[inline]
    fn entry_is_current(&self, e: &Entry, cid: u32, ctx: &Context) -> bool {
        e.src_cr3 == ctx.cr3
            && e.gen_cr3 == self.tables[ctx.cr3 as usize].gen as u32
            && (ctx.mode == Mode::Host || (e.src_nested == self.nested_src(cid, ctx) && e.gen_nested == self.nested_gen(cid, ctx)))
    }

    /// The oracle's slow path: re-walk and compare; refresh the entry's source if it agrees. An
    /// entry that still allows writes where the leaf no longer does is stale for a write (KVM's
    /// write protection for dirty logging relies on that flush), harmless for a read; it is not
    /// refreshed, so the next write through it is checked again.
    #[allow(clippy::too_many_arguments)]
    fn check_hit(&mut self, cpu: usize, cid: u32, ctx: &Context, va: u64, pa: u64, e: Entry, lvl: u8, slot: usize, write: bool) {
        if e.vm != ctx.vm {
            self.translation_violation(Cause::ForeignVmTranslation, cpu, cid, ctx, va, pa, pa);
        }
        let truth = self.truth_walk(cid, ctx, va);
        match truth {
            Some(w) if w.target == pa && (w.flags & F_CBIT) == (e.flags & F_CBIT) && (w.flags & F_RDONLY) != (e.flags & F_RDONLY) => {
                if write && e.flags & F_RDONLY == 0 {
                    self.translation_violation(Cause::StaleTranslation, cpu, cid, ctx, va, pa, w.target);
                }
            }
            // one comparison vouches only for an entry no larger than the truth's leaf here (a
            // 2 MiB entry over what are now 4 KiB leaves may be wrong elsewhere): a larger one
            // stays suspect, and each hit on it is checked at its own address
            Some(w) if w.target == pa && (w.flags & F_CBIT) == (e.flags & F_CBIT) && w.size < size_of(e.size) => {}
            Some(w) if w.target == pa && (w.flags & F_CBIT) == (e.flags & F_CBIT) => {
                let core = self.topo.cpu_core[cpu] as usize;
                let gen_cr3 = self.tables[ctx.cr3 as usize].gen as u32;
                let (src, gen) = if ctx.mode != Mode::Host { (self.nested_src(cid, ctx), self.nested_gen(cid, ctx)) } else { (e.src_nested, e.gen_nested) };
                let t = if lvl == 1 { &mut self.tlb1[core] } else { &mut self.tlb2[core] };
                let en = &mut t.ents[slot];
                en.src_cr3 = ctx.cr3;
                en.gen_cr3 = gen_cr3;
                en.src_nested = src;
                en.gen_nested = gen;
            }
            other => {
                let true_pa = other.map_or(u64::MAX, |w| w.target);
                self.translation_violation(Cause::StaleTranslation, cpu, cid, ctx, va, pa, true_pa);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn translation_violation(&mut self, cause: Cause, cpu: usize, cid: u32, ctx: &Context, va: u64, pa: u64, true_pa: u64) {
        let owner = if pa < self.mem.bytes { self.mem.owner(pa >> 6) } else { 0 };
        let cycle = self.cycles(cpu);
        self.push_violation(Violation {
            cause,
            cpu: cpu as i32,
            pa,
            key: ctx.key,
            other_key: ctx.tag,
            owner,
            cycle,
            va,
            ctx: cid,
            true_pa,
        });
    }

    /// A TLB miss: walk, charge it, fill the entries the hardware caches (the final translation
    /// in both levels, and the guest-physical one of a nested walk). None: a fault.
    ///
    /// A guest's walk takes its second stage (GPA -> HPA) from a matching guest-physical entry if
    /// there is one, as the hardware may: Intel SDM vol. 3C 29.4.2 ("for accesses using
    /// guest-physical addresses, it may use cached guest-physical mappings associated with the
    /// current EP4TA"); on AMD the nested (gPA -> hPA) translations are cached under the ASID and
    /// survive INVLPGA (APM vol. 2 INVLPGA; tlb-policies.md section 1). A stale one used this way
    /// is a stale translation, recorded, and the combined entry made from it stays suspect. The
    /// first stage always walks the guest table, never a cached linear entry: "No linear mappings
    /// are created while EPT is in use" and "No linear mappings are used while EPT is in use" (SDM
    /// vol. 3C 29.4.2, "Creating and Using Cached Translation Information"; 28.3.2 in older
    /// editions); AMD documents no cached gVA -> gPA translations for a nested-paging guest (its
    /// TLB holds gVA -> sPA and the nested gPA -> sPA ones). A context with a declared nested
    /// truth (nested_truth.rs) has the shadow's second stage judged against the chain as well.
    #[allow(clippy::too_many_arguments)]
    #[inline(never)]
    fn fill(&mut self, cpu: usize, core: usize, thr: u8, cc: usize, ctx: &Context, va: u64, cat: u8, dom: u8, eptp: u32, write: bool) -> Option<(u64, u8, u64, u8)> {
        self.ctr.tlb_misses[cpu] += 1;
        self.ctx_ctr[cc + CC_MISS] += 1;
        self.walks += 1;
        let t = &self.cfg.tlb;
        let full = if ctx.mode == Mode::Host { t.walk_native } else { t.walk_nested } as u64;
        let guest_only = t.walk_guest_only as u64;
        let fault = |h: &mut Host, cost: u64| {
            h.clocks_add(cpu, cost);
            h.ctr.walk_cycles[cpu] += cost;
            None
        };
        let Some((l1, gpa)) = self.tables[ctx.cr3 as usize].walk(va) else {
            return fault(self, full);
        };
        let gen_cr3 = self.tables[ctx.cr3 as usize].gen as u32;
        if ctx.mode == Mode::Host || ctx.nested == NO_TABLE {
            let w = Walk { target: gpa, size: l1.size, flags: l1.flags, gpa: 0, gpa_frame: 0, nested_size: l1.size, nflags: l1.flags };
            return Some(self.fill_final(cpu, core, thr, ctx, va, cat, dom, eptp, &w, gen_cr3, NO_TABLE, 0, full));
        }
        // the nested half: a cached guest-physical entry (tagged by ASID on SVM, by EP4TA on
        // VMX; semantics.md 3.1, 4.2) spares most of the two-dimensional walk and gives the HPA
        let gtag = if ctx.mode == Mode::Svm { ctx.tag } else { 0 };
        let gm = |e: &Entry| e.dom == dom && e.tag == gtag && e.eptp == eptp && e.thr == thr;
        let found = match self.tlb1[core].find(gpa, CAT_GPHYS, gm) {
            Some(i) => Some((1u8, i, self.tlb1[core].ents[i])),
            None => self.tlb2[core].find(gpa, CAT_GPHYS, gm).map(|i| (2u8, i, self.tlb2[core].ents[i])),
        };
        let cid = self.cur_ctx[cpu];
        let src = self.nested_src(cid, ctx);
        let nested_gen = self.nested_gen(cid, ctx);
        let (hpa, nsize, nflags, src_nested, cost) = match found {
            Some((lvl, i, ge)) => {
                self.ctr.gphys_hits[cpu] += 1;
                self.ctx_ctr[cc + CC_GPHYS] += 1;
                let size = size_of(ge.size);
                let hpa = ge.target + (gpa & (size.bytes() - 1));
                let gran = self.check_gphys(cpu, cid, ctx, va, gpa, hpa, &ge, lvl, i, write);
                // a combined entry made from a stale one, or larger than what the check vouches
                // for, records no source: every hit on it is checked
                let ok = gran.is_some_and(|g| g >= l1.size.min(size));
                (hpa, size, ge.flags, if ok { src } else { NO_TABLE }, guest_only)
            }
            None => {
                self.ctr.gphys_misses[cpu] += 1;
                let Some((l2, hpa)) = self.tables[ctx.nested as usize].walk(gpa) else {
                    return fault(self, full);
                };
                // with a declared nested truth the shadow's leaf is judged against the chain: a
                // shadow KVM did not sync gives a stale translation, and suspect entries
                let gran = if self.chained(cid) { self.second_stage_agrees(cpu, cid, ctx, va, gpa, hpa, l2.flags & F_RDONLY, write) } else { Some(l2.size) };
                // the guest-physical entry is vouched for only if the chain's leaf here is at least
                // as large as the shadow's, the combined one if at least as large as itself
                let ok = gran.is_some_and(|g| g >= l2.size);
                let src_comb = if gran.is_some_and(|g| g >= l1.size.min(l2.size)) { src } else { NO_TABLE };
                let src = if ok { src } else { NO_TABLE };
                // the guest-physical entry maps the nested leaf's frame (HPA = leaf + offset)
                let ge = Entry {
                    target: hpa - (gpa & (l2.size.bytes() - 1)),
                    eptp,
                    tag: gtag,
                    dom,
                    cat: CAT_GPHYS,
                    flags: l2.flags & F_RDONLY,
                    src_cr3: ctx.cr3,
                    src_nested: src,
                    gen_cr3,
                    gen_nested: if ok { nested_gen } else { 0 },
                    vm: ctx.vm,
                    gpa: gpa & !(l2.size.bytes() - 1),
                    nsize: l2.size as u8,
                    thr,
                    ..Entry::default()
                };
                let s2 = if l2.size == PageSize::G1 { PageSize::M2 } else { l2.size };
                let ge2 = Entry { target: hpa - (gpa & (s2.bytes() - 1)), ..ge };
                self.tlb2[core].insert(gpa, s2, ge2);
                self.tlb1[core].insert(gpa, l2.size, ge);
                (hpa, l2.size, l2.flags, src_comb, full)
            }
        };
        // a combined translation covers the smaller of the two leaves; it is writable only if both
        // are (APM vol. 2 15.25.5; SDM vol. 3C 29.3.3.2)
        let size = l1.size.min(nsize);
        let w = Walk {
            target: hpa,
            size,
            flags: l1.flags | (nflags & F_RDONLY),
            gpa,
            gpa_frame: gpa & !(nsize.bytes() - 1),
            nested_size: nsize,
            nflags,
        };
        let gen_nested = if src_nested == NO_TABLE { 0 } else { nested_gen };
        Some(self.fill_final(cpu, core, thr, ctx, va, cat, dom, eptp, &w, gen_cr3, src_nested, gen_nested, cost))
    }

    /// The second stage of a walk came from guest-physical entry `ge` (at `lvl`, slot `slot`):
    /// if the entry was filled from the nested table (or chain) as it is now, nothing to check;
    /// else compare with the truth, refresh the entry if it agrees and the truth's leaf is at least
    /// as large as the entry, and record a stale translation if it disagrees. Returns the size of
    /// block the second stage is known true over (None: it disagrees).
    #[allow(clippy::too_many_arguments)]
    fn check_gphys(&mut self, cpu: usize, cid: u32, ctx: &Context, va: u64, gpa: u64, hpa: u64, ge: &Entry, lvl: u8, slot: usize, write: bool) -> Option<PageSize> {
        if ge.vm != ctx.vm {
            self.translation_violation(Cause::ForeignVmTranslation, cpu, cid, ctx, va, hpa, hpa);
        }
        let (src, gen) = (self.nested_src(cid, ctx), self.nested_gen(cid, ctx));
        if ge.src_nested == src && ge.gen_nested == gen {
            // stamped current only when vouched for over its whole extent
            return Some(size_of(ge.size));
        }
        let gran = self.second_stage_agrees(cpu, cid, ctx, va, gpa, hpa, ge.flags & F_RDONLY, write)?;
        if gran >= size_of(ge.size) {
            let core = self.topo.cpu_core[cpu] as usize;
            let t = if lvl == 1 { &mut self.tlb1[core] } else { &mut self.tlb2[core] };
            t.ents[slot].src_nested = src;
            t.ents[slot].gen_nested = gen;
        }
        Some(gran)
    }

    /// Does the second stage the hardware used (`gpa` -> `hpa`, read-only bit `ro`) agree with the
    /// truth (`second_stage_truth`)? A different HPA or none is a stale translation, recorded; a
    /// different permission only for a write through a writable translation over a read-only truth
    /// (as in `check_hit`). Agreement returns the truth's granularity at `gpa` (how large a
    /// block the comparison vouches for), a disagreement None.
    #[allow(clippy::too_many_arguments)]
    fn second_stage_agrees(&mut self, cpu: usize, cid: u32, ctx: &Context, va: u64, gpa: u64, hpa: u64, ro: u8, write: bool) -> Option<PageSize> {
        match self.second_stage_truth(cid, ctx, gpa) {
            Some((truth, tro, _)) if truth == hpa && tro != ro => {
                if write && ro == 0 {
                    self.translation_violation(Cause::StaleTranslation, cpu, cid, ctx, va, hpa, truth);
                }
                None
            }
            Some((truth, _, gran)) if truth == hpa => Some(gran),
            other => {
                // the true HPA is the whole walk's (the guest table was just walked)
                let true_pa = other.map_or(u64::MAX, |(t, _, _)| t);
                self.translation_violation(Cause::StaleTranslation, cpu, cid, ctx, va, hpa, true_pa);
                None
            }
        }
    }

    /// Charge a walk and fill the final translation `w` in both levels.
    #[allow(clippy::too_many_arguments)]
    fn fill_final(
        &mut self,
        cpu: usize,
        core: usize,
        thr: u8,
        ctx: &Context,
        va: u64,
        cat: u8,
        dom: u8,
        eptp: u32,
        w: &Walk,
        gen_cr3: u32,
        src_nested: u32,
        gen_nested: u32,
        cost: u64,
    ) -> (u64, u8, u64, u8) {
        let base = Entry {
            target: 0,
            eptp,
            tag: ctx.tag,
            pcid: ctx.pcid,
            dom,
            cat,
            flags: w.flags & (F_GLOBAL | F_CBIT | F_RDONLY),
            size: 0,
            src_cr3: ctx.cr3,
            src_nested,
            gen_cr3,
            gen_nested,
            vm: ctx.vm,
            gpa: w.gpa & !(w.size.bytes() - 1),
            nsize: w.nested_size as u8,
            thr,
        };
        self.clocks_add(cpu, cost);
        self.ctr.walk_cycles[cpu] += cost;
        let frame = w.target - (va & (w.size.bytes() - 1));
        self.tlb1[core].insert(va, w.size, Entry { target: frame, ..base });
        // the L2 DTLB holds no 1 GiB entries ("all page sizes but 1G", Hot Chips 2024 Zen 5 via
        // semantics.md section 7): a 1 GiB translation is kept as its 2 MiB piece
        let s2 = if w.size == PageSize::G1 { PageSize::M2 } else { w.size };
        // (its guest-physical frame is the 2 MiB piece's, so a hit's frame + offset is the GPA)
        self.tlb2[core].insert(va, s2, Entry { target: w.target - (va & (s2.bytes() - 1)), gpa: w.gpa & !(s2.bytes() - 1), ..base });
        (w.target, w.flags, w.gpa, w.nested_size as u8)
    }

    /// Translated accesses: `va[i]` in the current context of `cpu[i]`, then the memory access
    /// with the key the translation gives. Every argument is checked first. `levels` gets the
    /// cache level, 6 if the RMP checks refused the access, 7 for a translation fault.
    pub fn access_virtual_batch(&mut self, cpu: Col<u32>, va: &[u64], write: Col<bool>, levels: Option<&mut [u8]>) -> Result<[u64; 8]> {
        self.check_virtual_batch(&cpu, va, &write, levels.as_ref().map(|l| l.len()))?;
        #[cfg(target_arch = "x86_64")]
        if self.l1.avx2() {
            // SAFETY: the host CPU has AVX2 (detected at run time).
            return Ok(unsafe { self.virtual_batch_avx2(cpu, va, write, levels) });
        }
        Ok(self.virtual_batch::<0, 0, 0>(cpu, va, write, levels))
    }

    /// The checks `access_virtual_batch` makes before it runs anything.
    pub fn check_virtual_batch(&self, cpu: &Col<u32>, va: &[u64], write: &Col<bool>, levels: Option<usize>) -> Result<()> {
        let n = va.len();
        for (name, len) in [("cpu", cpu.len()), ("write", write.len())] {
            if let Some(l) = len {
                if l != n {
                    return Err(EngineError::invalid(name, format!("{name} has {l} elements but va has {n}")));
                }
            }
        }
        if let Some(out) = levels {
            if out != n {
                return Err(EngineError::invalid("levels", "levels must have as many elements as va"));
            }
        }
        for i in 0..n {
            let c = cpu.at(i) as usize;
            if c >= self.topo.cpus {
                return Err(EngineError::invalid("cpu", format!("cpu[{i}] = {c} is out of range: this host has CPUs 0..{}", self.topo.cpus - 1)));
            }
            if !canonical(va[i]) {
                return Err(EngineError::invalid("va", format!("va[{i}] = {:#x} is not a canonical address", va[i])));
            }
        }
        Ok(())
    }

    /// The translated batch loop compiled for AVX2, as `access_batch`'s (host.rs run_batch_avx2).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn virtual_batch_avx2(&mut self, cpu: Col<u32>, va: &[u64], write: Col<bool>, levels: Option<&mut [u8]>) -> [u64; 8] {
        by_geometry!(self.virtual_batch(cpu, va, write, levels))
    }

    #[inline(always)]
    fn virtual_batch<const W1: usize, const W2: usize, const W3: usize>(
        &mut self,
        cpu: Col<u32>,
        va: &[u64],
        write: Col<bool>,
        levels: Option<&mut [u8]>,
    ) -> [u64; 8] {
        const AHEAD: usize = 8;
        let mut out = [0u64; 8];
        let mut levels = levels;
        // one bit per recent access whose translation walked the tables: while walks happen,
        // the walk of the access AHEAD places on is prefetched (TLB hits pay nothing for it)
        let mut walked = 0u64;
        for i in 0..va.len() {
            let c = cpu.at(i) as usize;
            if walked != 0 {
                if i + AHEAD < va.len() {
                    let ctx = &self.cpu_ctx[cpu.at(i + AHEAD) as usize];
                    self.tables[ctx.cr3 as usize].prefetch(va[i + AHEAD]);
                }
                // a guest's walk goes on through the nested table at the guest-physical address
                // the first stage gives (its slot prefetched AHEAD / 2 accesses ago)
                let j = i + AHEAD / 2;
                if j < va.len() {
                    let ctx = &self.cpu_ctx[cpu.at(j) as usize];
                    if ctx.nested != NO_TABLE {
                        if let Some((_, gpa)) = self.tables[ctx.cr3 as usize].walk(va[j]) {
                            self.tables[ctx.nested as usize].prefetch(gpa);
                        }
                    }
                }
            }
            let walks = self.walks;
            let t = self.translate_inline(c, va[i], write.at(i));
            walked = (walked << 1) | (self.walks != walks) as u64;
            let l = match t {
                Translated::Ok { pa, key } if pa < self.mem.bytes => {
                    self.access_inline::<W1, W2, W3>(c, pa, write.at(i), key) as u8
                }
                Translated::Ok { .. } => 7, // translated beyond memory: a machine check, not modelled
                Translated::Fault => 7,
                Translated::RmpFault => 6,
            };
            out[l as usize] += 1;
            if let Some(o) = levels.as_deref_mut() {
                o[i] = l;
            }
        }
        out
    }

    // ---------------------------------------------------------------------------------------
    // world switches

    /// VMRUN of SVM context `ctx` on `cpu` with the VMCB's TLB_CONTROL (APM 15.16; semantics.md
    /// 3.2): 0 nothing, 1 flush everything on this CPU (every ASID, the host's and globals too),
    /// 3 flush the ASID's entries (globals too), 7 the ASID's non-global entries. The flush happens
    /// at VMRUN, on this CPU. ASID 0, an undefined TLB_CONTROL, or 3/7 without FLUSHBYASID: the
    /// VMRUN fails with VMEXIT_INVALID (the guest is not entered).
    pub fn vmrun(&mut self, cpu: usize, ctx: u32, tlb_control: u8) -> Result<VmrunResult> {
        self.check_cpu("cpu", cpu)?;
        let c = self.context(ctx)?;
        if c.mode != Mode::Svm {
            return Err(EngineError::invalid("ctx", format!("ctx = {ctx} is not an SVM guest context")));
        }
        let byasid = self.cfg.tlb.flushbyasid;
        let valid = match tlb_control {
            0 | 1 => true,
            3 | 7 => byasid,
            _ => false,
        };
        let ws = self.cfg.tlb.world_switch as u64;
        if c.tag == 0 || !valid {
            self.ctr.vmrun_failures[cpu] += 1;
            self.clocks_add(cpu, ws);
            return Ok(VmrunResult::VmexitInvalid);
        }
        let asid = c.tag;
        let flush = self.cfg.tlb.flush as u64;
        match tlb_control {
            1 => {
                let n = self.drop_local(cpu, |_| true);
                self.note_inval(cpu, "tlb_control_flush_all_asid", n, flush);
            }
            3 => {
                let n = self.drop_local(cpu, |e| e.dom == DOM_SVM && e.tag == asid);
                self.note_inval(cpu, "tlb_control_flush_asid", n, flush);
            }
            7 => {
                let n = self.drop_local(cpu, |e| e.dom == DOM_SVM && e.tag == asid && e.flags & F_GLOBAL == 0);
                self.note_inval(cpu, "tlb_control_flush_asid_local", n, flush);
            }
            _ => {}
        }
        self.ctr.vmruns[cpu] += 1;
        self.clocks_add(cpu, ws);
        self.enter(cpu, ctx);
        Ok(VmrunResult::Entered)
    }

    /// #VMEXIT (SVM) or VM exit (VMX): the guest's CR3 goes back into its context and the CPU
    /// returns to its own host context (`set_host_context`, 0 by default) with the host CR3 it had
    /// at entry. VMX with VPID 0 flushes the VPID-0 linear and combined mappings at every entry and
    /// exit (SDM, semantics.md 4.3). Nothing happens on a CPU already in host mode.
    pub fn vmexit(&mut self, cpu: usize) -> Result<()> {
        self.check_cpu("cpu", cpu)?;
        let c = self.cpu_ctx[cpu];
        if c.mode == Mode::Host {
            return Ok(());
        }
        if c.mode == Mode::Vmx && c.tag == 0 {
            self.vpid0_flush(cpu);
        }
        self.save_guest_state(cpu);
        self.cur_ctx[cpu] = self.host_ctx[cpu];
        self.cpu_ctx[cpu] = self.host_saved[cpu];
        Ok(())
    }

    fn vpid0_flush(&mut self, cpu: usize) {
        let n = self.drop_local(cpu, |e| (e.dom == DOM_VMX || e.dom == DOM_HOST) && e.tag == 0 && e.cat != CAT_GPHYS);
        let f = self.cfg.tlb.flush as u64;
        self.note_inval(cpu, "vpid0_entry_exit", n, f);
    }

    /// VM entry of VMX context `ctx` on `cpu` (VMLAUNCH/VMRESUME). No flush with a VPID; with VPID
    /// 0 the VPID-0 linear and combined mappings are flushed.
    pub fn vmentry(&mut self, cpu: usize, ctx: u32) -> Result<()> {
        self.check_cpu("cpu", cpu)?;
        let c = self.context(ctx)?;
        if c.mode != Mode::Vmx {
            return Err(EngineError::invalid("ctx", format!("ctx = {ctx} is not a VMX guest context")));
        }
        if c.tag == 0 {
            self.vpid0_flush(cpu);
        }
        self.ctr.vmruns[cpu] += 1;
        let ws = self.cfg.tlb.world_switch as u64;
        self.clocks_add(cpu, ws);
        self.enter(cpu, ctx);
        Ok(())
    }

    // ---------------------------------------------------------------------------------------
    // invalidations in the current context

    fn cur(&self, cpu: usize) -> Context {
        self.cpu_ctx[cpu]
    }

    /// INVLPG `va` in the current context: its linear/combined translations for the current PCID
    /// and global ones, current ASID/VPID (SDM INVLPG; APM).
    pub fn invlpg(&mut self, cpu: usize, va: u64) -> Result<u64> {
        self.check_cpu("cpu", cpu)?;
        let c = self.cur(cpu);
        let (dom, tag, pcid) = (c.mode.dom(), c.tag, c.pcid);
        // "if the memory address is in non-canonical form ... INVLPG is the same as a NOP" in
        // 64-bit mode (SDM vol. 2A INVLPG): it executes, and drops nothing
        let n = if canonical(va) {
            self.drop_local_addr(cpu, va, LIN_COMB, |e| e.dom == dom && e.tag == tag && (e.pcid == pcid || e.flags & F_GLOBAL != 0))
        } else {
            0
        };
        let cost = self.cfg.tlb.invlpg as u64;
        self.note_inval(cpu, "invlpg", n, cost);
        Ok(n)
    }

    /// MOV to CR3 on `cpu` in its current context: load `table` with `pcid` into this CPU's CR3
    /// only (CR3 is per logical CPU; another CPU in the same context keeps its own). Unless
    /// `noflush` (CR3 bit 63 with CR4.PCIDE), the non-global translations of that PCID go (SDM
    /// 4.10.4.1). A guest's CR3 is stored into its context at the next exit. With the context's
    /// CR4.PCIDE clear, bit 63 is a reserved bit: `noflush` is a #GP (SDM vol. 2B MOV CR3 "#GP(0)
    /// if an attempt is made to write a 1 to any reserved bit in CR3"; APM vol. 2 3.1.2: CR3 bits
    /// 63:52 reserved, MBZ; KVM's kvm_set_cr3() strips X86_CR3_PCID_NOFLUSH only with PCIDE, so
    /// the illegal CR3 injects #GP), counted in the CPU's faults and returned as Ok(None), nothing
    /// changed. A PCID other than 0 there is refused as an argument: the hardware would read those
    /// bits as PWT/PCD and ignored bits, not a PCID, so the call cannot mean what it says (an API
    /// choice, not a hardware fault).
    pub fn mov_cr3(&mut self, cpu: usize, table: u32, pcid: u16, noflush: bool) -> Result<Option<u64>> {
        self.check_cpu("cpu", cpu)?;
        let c = self.cur(cpu);
        let need = if c.mode == Mode::Host { TableKind::Host } else { TableKind::Guest };
        if self.table_checked("table", table)?.kind != need {
            return Err(EngineError::invalid("table", format!("table {table} is not a {need:?} table")));
        }
        if pcid >= 4096 {
            return Err(EngineError::invalid("pcid", format!("pcid = {pcid} is out of range 0..=4095")));
        }
        if !c.pcide {
            if pcid != 0 {
                // CR3[11:0] are PWT/PCD and ignored bits without PCIDE, not a PCID (SDM vol. 3A 4.10.1)
                return Err(EngineError::invalid("pcid", format!("pcid = {pcid}: cpu {cpu} runs with CR4.PCIDE clear, its PCID is always 0")));
            }
            if noflush {
                self.ctr.faults[cpu] += 1;
                return Ok(None);
            }
        }
        self.cpu_ctx[cpu].cr3 = table;
        self.cpu_ctx[cpu].pcid = pcid;
        if noflush {
            // a CR3 load that invalidates nothing: not a flush (no flush op, no flush cycles),
            // only the serialising load's cost on the clock
            let cost = self.cfg.tlb.cr3_load as u64;
            self.clocks_add(cpu, cost);
            return Ok(Some(0));
        }
        let (dom, tag) = (c.mode.dom(), c.tag);
        let n = self.drop_local(cpu, |e| e.dom == dom && e.tag == tag && e.cat != CAT_GPHYS && e.pcid == pcid && e.flags & F_GLOBAL == 0);
        let cost = self.cfg.tlb.flush as u64;
        self.note_inval(cpu, "mov_cr3", n, cost);
        Ok(Some(n))
    }

    /// INVPCID type 0 (address), 1 (single context), 2 (all, globals too), 3 (all but globals), in
    /// the current ASID/VPID (SDM INVPCID). Other types, and types 0-1 naming a PCID other than 0
    /// with CR4.PCIDE clear: #GP, reported as Ok(None).
    pub fn invpcid(&mut self, cpu: usize, kind: u8, pcid: u16, va: u64) -> Result<Option<u64>> {
        self.check_cpu("cpu", cpu)?;
        if pcid >= 4096 {
            return Err(EngineError::invalid("pcid", format!("pcid = {pcid} is out of range 0..=4095")));
        }
        let c = self.cur(cpu);
        if !c.pcide && kind <= 1 && pcid != 0 {
            // "#GP(0) if CR4.PCIDE = 0, the INVPCID type is 0 or 1, and the PCID is not 000H"
            // (SDM vol. 2A INVPCID; KVM's kvm_handle_invpcid() injects it)
            self.ctr.faults[cpu] += 1;
            return Ok(None);
        }
        let (dom, tag) = (c.mode.dom(), c.tag);
        let cost = self.cfg.tlb.flush as u64;
        let (name, n) = match kind {
            0 => {
                if !canonical(va) {
                    self.ctr.faults[cpu] += 1;
                    return Ok(None);
                }
                let n = self.drop_local_addr(cpu, va, LIN_COMB, |e| e.dom == dom && e.tag == tag && e.pcid == pcid && e.flags & F_GLOBAL == 0);
                ("invpcid_address", n)
            }
            1 => ("invpcid_single", self.drop_local(cpu, |e| e.dom == dom && e.tag == tag && e.cat != CAT_GPHYS && e.pcid == pcid && e.flags & F_GLOBAL == 0)),
            2 => ("invpcid_all_global", self.drop_local(cpu, |e| e.dom == dom && e.tag == tag && e.cat != CAT_GPHYS)),
            3 => ("invpcid_all", self.drop_local(cpu, |e| e.dom == dom && e.tag == tag && e.cat != CAT_GPHYS && e.flags & F_GLOBAL == 0)),
            _ => {
                self.ctr.faults[cpu] += 1;
                return Ok(None);
            }
        };
        self.note_inval(cpu, name, n, cost);
        Ok(Some(n))
    }

    /// INVLPGA (rAX = va, ECX = asid): the page's translations for that ASID on this CPU only, every
    /// PCID and globals too [MEM: APM INVLPGA]. Executed by the host.
    pub fn invlpga(&mut self, cpu: usize, va: u64, asid: u16) -> Result<u64> {
        self.check_cpu("cpu", cpu)?;
        if !canonical(va) {
            return Err(EngineError::invalid("va", format!("va = {va:#x} is not a canonical address")));
        }
        let dom = if asid == 0 { DOM_HOST } else { DOM_SVM };
        let n = self.drop_local_addr(cpu, va, LIN_COMB, |e| e.dom == dom && e.tag == asid);
        let cost = self.cfg.tlb.invlpg as u64;
        self.note_inval(cpu, "invlpga", n, cost);
        Ok(n)
    }

    /// INVLPGB from `cpu`: broadcast to every CPU, asynchronous: it takes effect when the issuing
    /// CPU's TLBSYNC completes (semantics.md 3.7). Until then other CPUs may still use what it names.
    pub fn invlpgb(&mut self, cpu: usize, op: Invlpgb) -> Result<()> {
        self.check_cpu("cpu", cpu)?;
        check_invlpgb(&op)?;
        self.pending_invlpgb.push((cpu, op));
        let cost = self.cfg.tlb.invlpgb as u64;
        self.clocks_add(cpu, cost);
        self.ctr.flush_cycles[cpu] += cost;
        Ok(())
    }

    /// TLBSYNC on `cpu`: wait until every INVLPGB it issued has completed on all CPUs. Returns the
    /// entries dropped.
    pub fn tlbsync(&mut self, cpu: usize) -> Result<u64> {
        self.check_cpu("cpu", cpu)?;
        let mine: Vec<Invlpgb> = self.pending_invlpgb.iter().filter(|(c, _)| *c == cpu).map(|(_, o)| *o).collect();
        self.pending_invlpgb.retain(|(c, _)| *c != cpu);
        let mut total = 0;
        for op in &mine {
            let mut n = 0;
            for core in 0..self.topo.cores {
                match op.va {
                    Some(va) => {
                        let step = if op.stride_2m { 1u64 << 21 } else { 4096 };
                        for k in 0..op.count as u64 {
                            let a = va + k * step;
                            let p = |e: &Entry| invlpgb_hits(op, e);
                            n += self.tlb1[core].drop_addr(a, ALL_CATS, p) + self.tlb2[core].drop_addr(a, ALL_CATS, p);
                        }
                    }
                    None => {
                        let p = |e: &Entry| invlpgb_hits(op, e);
                        n += self.tlb1[core].drop_where(p) + self.tlb2[core].drop_where(p);
                    }
                }
            }
            self.note_inval(cpu, "invlpgb", n, 0);
            total += n;
        }
        let cost = if mine.is_empty() { 0 } else { self.cfg.tlb.tlbsync as u64 };
        self.clocks_add(cpu, cost);
        self.ctr.flush_cycles[cpu] += cost;
        Ok(total)
    }

    /// INVEPT type 1 (single context: the EPT root `eptp`) or 2 (all contexts): guest-physical and
    /// combined mappings of that EP4TA (all VPIDs, all PCIDs); linear ones stay (SDM; semantics.md
    /// 4.3). Other types: VMfail, reported as Ok(None).
    pub fn invept(&mut self, cpu: usize, kind: u8, eptp: u32) -> Result<Option<u64>> {
        self.check_cpu("cpu", cpu)?;
        let cost = self.cfg.tlb.flush as u64;
        let (name, n) = match kind {
            1 => {
                self.table_checked("eptp", eptp)?;
                ("invept_single", self.drop_local(cpu, |e| e.dom == DOM_VMX && e.cat != CAT_LINEAR && e.eptp == eptp))
            }
            2 => ("invept_all", self.drop_local(cpu, |e| e.dom == DOM_VMX && e.cat != CAT_LINEAR)),
            _ => {
                self.ctr.vmrun_failures[cpu] += 1;
                return Ok(None);
            }
        };
        self.note_inval(cpu, name, n, cost);
        Ok(Some(n))
    }

    /// INVVPID type 0 (address), 1 (single context), 2 (all contexts but VPID 0), 3 (single context
    /// keeping globals): linear and combined mappings only, never guest-physical ones (SDM;
    /// semantics.md 4.3). VPID 0 with types 0, 1, 3 or an unknown type: VMfail, Ok(None).
    pub fn invvpid(&mut self, cpu: usize, kind: u8, vpid: u16, va: u64) -> Result<Option<u64>> {
        self.check_cpu("cpu", cpu)?;
        let cost = self.cfg.tlb.flush as u64;
        if (kind != 2 && vpid == 0) || kind > 3 || (kind == 0 && !canonical(va)) {
            self.ctr.vmrun_failures[cpu] += 1;
            return Ok(None);
        }
        let (name, n) = match kind {
            0 => ("invvpid_address", self.drop_local_addr(cpu, va, LIN_COMB, |e| e.dom == DOM_VMX && e.tag == vpid)),
            1 => ("invvpid_single", self.drop_local(cpu, |e| e.dom == DOM_VMX && e.tag == vpid && e.cat != CAT_GPHYS)),
            2 => ("invvpid_all", self.drop_local(cpu, |e| e.dom == DOM_VMX && e.tag != 0 && e.cat != CAT_GPHYS)),
            _ => (
                "invvpid_single_retain_globals",
                self.drop_local(cpu, |e| e.dom == DOM_VMX && e.tag == vpid && e.cat != CAT_GPHYS && e.flags & F_GLOBAL == 0),
            ),
        };
        self.note_inval(cpu, name, n, cost);
        Ok(Some(n))
    }

    /// A full local TLB flush run on each CPU of `cpus` by IPI from `initiator`, which waits
    /// (flush_tlb_all()/on_each_cpu; a CPU-local flush on a remote CPU goes through the IPI path).
    pub fn flush_tlb_all_on_cpus(&mut self, initiator: usize, cpus: &[usize]) -> Result<u64> {
        self.check_cpu("initiator", initiator)?;
        for &c in cpus {
            self.check_cpu("cpus", c)?;
        }
        let mut sorted = cpus.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let work = self.cfg.tlb.flush as u64;
        for &c in &sorted {
            let n = self.drop_local(c, |_| true);
            let k = kind_index("local_flush_all");
            self.inval[k][0] += 1;
            self.inval[k][1] += n;
            self.ctr.tlb_flush_ops[c] += 1;
            self.ctr.tlb_dropped[c] += n;
        }
        self.ipi_call(initiator, &sorted, work)
    }

    /// TLB entries of `cpu`'s core (tests and inspection): (level, entry, page address).
    pub fn tlb_entries(&self, cpu: usize) -> Result<Vec<(u8, Entry, u64)>> {
        self.check_cpu("cpu", cpu)?;
        let core = self.topo.cpu_core[cpu] as usize;
        let mut out = Vec::new();
        for (lvl, t) in [(1u8, &self.tlb1[core]), (2u8, &self.tlb2[core])] {
            for i in 0..t.keys.len() {
                let k = t.keys[i];
                if k != 0 {
                    let size = size_of(((k >> 4) & 3) as u8);
                    out.push((lvl, t.ents[i], (k >> 6) << size.shift()));
                }
            }
        }
        Ok(out)
    }

    pub fn tlb_bytes(&self) -> usize {
        self.tlb1.iter().chain(self.tlb2.iter()).map(|t| t.bytes()).sum()
    }
}

#[inline(always)]
pub fn size_of(s: u8) -> PageSize {
    match s {
        0 => PageSize::K4,
        1 => PageSize::M2,
        _ => PageSize::G1,
    }
}
