//! Nested truth: what an L2 guest's translations should be.
//!
//! For an L2 guest under nested NPT/EPT the hardware walks L2's table and then the shadow nested
//! table KVM builds for it (NPT02/EPT02 = NPT01 after NPT12: arch/x86/kvm/mmu/paging_tmpl.h, the
//! shadow MMU of a nested TDP guest). What is true is L2's table composed with L1's nested table
//! for L2 (NPT12/EPT12, guest-physical targets) and L0's nested table for L1 (NPT01/EPT01). A
//! context may declare that chain; its translations are then judged against the composition
//! rather than against the table the hardware walks, so a KVM that forgets to sync its shadow
//! after L1 edits NPT12 (KVM_REQ_MMU_SYNC, tlb-policies.md sections 6.3 D3 and 7.3 E2) is caught
//! at the walk, and a stale L2 TLB entry after any edit of the chain at its next hit.
//!
//! The oracle's fast path compares an entry's recorded source and generation with the context's:
//! for a chained context the source is the chain's id (fresh at each declaration and at each
//! change of the shadow table, above every table id) and the generation the sum of the three
//! tables' generations. Generations only grow, so an unchanged sum over the same three tables means
//! no table changed.

use crate::error::{EngineError, Result};
use crate::host::Host;
use crate::paging::{PageSize, TableKind, F_RDONLY};
use crate::tlb::{Context, Mode, Walk, NO_TABLE};

/// The declared chain of one context: L1's nested table for L2 (`t12`, a guest-kind table: its
/// targets are L1 guest-physical), L0's for L1 (`t01`, a nested table), and the chain's id.
/// `t12 == NO_TABLE`: none declared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chain {
    pub t12: u32,
    pub t01: u32,
    pub id: u32,
}

pub const NO_CHAIN: Chain = Chain { t12: NO_TABLE, t01: NO_TABLE, id: NO_TABLE };

/// Chain ids start above every table id (tables are numbered from 0 up).
pub const FIRST_CHAIN_ID: u32 = 0x8000_0000;

/// The chains, one per context, and the next chain id.
#[derive(Clone, Debug)]
pub struct NestedTruth {
    pub chains: Vec<Chain>,
    next_id: u32,
}

impl Default for NestedTruth {
    fn default() -> Self {
        NestedTruth { chains: vec![NO_CHAIN], next_id: FIRST_CHAIN_ID }
    }
}

impl NestedTruth {
    pub(crate) fn fresh_id(&mut self) -> u32 {
        let id = self.next_id;
        // 2^31 declarations before a wrap; then ids restart above the tables (a wrap could make an
        // old entry look current only if its three generations also summed alike)
        self.next_id = if id == u32::MAX - 1 { FIRST_CHAIN_ID } else { id + 1 };
        id
    }
}

impl Host {
    /// Declare (`Some((nested12, nested01))`) or clear (`None`) the nested truth of guest context
    /// `id`: its L2 translations are judged against L2's table, then `nested12` (L1's NPT12/EPT12,
    /// a guest table: L2 guest-physical -> L1 guest-physical), then `nested01` (L0's NPT01/EPT01, a
    /// nested table), while the hardware keeps walking the context's own nested table (the shadow
    /// NPT02/EPT02). Checked first, the engine unchanged on an error.
    pub fn set_nested_truth(&mut self, id: u32, chain: Option<(u32, u32)>) -> Result<()> {
        let c = self.context(id)?;
        let Some((t12, t01)) = chain else {
            self.truth.chains[id as usize] = NO_CHAIN;
            return Ok(());
        };
        if c.mode == Mode::Host {
            return Err(EngineError::invalid("ctx", format!("ctx = {id} is a host context; a nested chain belongs to an L2 guest context")));
        }
        if self.table_checked("nested12", t12)?.kind != TableKind::Guest {
            return Err(EngineError::invalid(
                "nested12",
                format!("nested12 = {t12} is not a guest table: L1's nested table for L2 maps L2 guest-physical to L1 guest-physical addresses"),
            ));
        }
        if self.table_checked("nested01", t01)?.kind != TableKind::Nested {
            return Err(EngineError::invalid("nested01", format!("nested01 = {t01} is not a nested (NPT/EPT) table: L0's table for L1 maps to host-physical addresses")));
        }
        if t12 == c.cr3 {
            return Err(EngineError::invalid("nested12", format!("nested12 = {t12} is the context's own guest table (cr3): the chain does not compose")));
        }
        if t01 == c.nested {
            return Err(EngineError::invalid(
                "nested01",
                format!("nested01 = {t01} is the context's own nested table, the shadow the hardware walks: the chain does not compose"),
            ));
        }
        let id_ = self.truth.fresh_id();
        self.truth.chains[id as usize] = Chain { t12, t01, id: id_ };
        Ok(())
    }

    /// The declared chain of context `id`: (nested12, nested01), or None.
    pub fn nested_truth(&self, id: u32) -> Result<Option<(u32, u32)>> {
        self.context(id)?;
        let ch = self.truth.chains[id as usize];
        Ok((ch.t12 != NO_TABLE).then_some((ch.t12, ch.t01)))
    }

    /// The source an entry of context `cid` records for its nested half: the nested table, or the
    /// chain's id.
    #[inline(always)]
    pub(crate) fn nested_src(&self, cid: u32, ctx: &Context) -> u32 {
        let ch = &self.truth.chains[cid as usize];
        if ch.t12 == NO_TABLE {
            ctx.nested
        } else {
            ch.id
        }
    }

    /// The generation an entry of context `cid` records for its nested half: the nested table's,
    /// or the sum over the shadow and the chain.
    #[inline(always)]
    pub(crate) fn nested_gen(&self, cid: u32, ctx: &Context) -> u32 {
        let g = self.tables[ctx.nested as usize].gen as u32;
        let ch = &self.truth.chains[cid as usize];
        if ch.t12 == NO_TABLE {
            g
        } else {
            g.wrapping_add(self.tables[ch.t12 as usize].gen as u32).wrapping_add(self.tables[ch.t01 as usize].gen as u32)
        }
    }

    /// The true second stage of context `cid` at guest-physical `gpa`: (host-physical address,
    /// read-only bit, granularity), through the chain if declared, else the nested table. None:
    /// unmapped. The granularity is the smaller leaf of the stages: the truth is one affine map
    /// over the naturally aligned block of that size around `gpa` (leaves are naturally aligned),
    /// so agreement at `gpa` vouches for a cached entry no larger than it, and only for such one.
    pub(crate) fn second_stage_truth(&self, cid: u32, ctx: &Context, gpa: u64) -> Option<(u64, u8, PageSize)> {
        let ch = self.truth.chains[cid as usize];
        if ch.t12 == NO_TABLE {
            let (l, hpa) = self.tables[ctx.nested as usize].walk(gpa)?;
            return Some((hpa, l.flags & F_RDONLY, l.size));
        }
        let (l12, gpa1) = self.tables[ch.t12 as usize].walk(gpa)?;
        let (l01, hpa) = self.tables[ch.t01 as usize].walk(gpa1)?;
        Some((hpa, (l12.flags | l01.flags) & F_RDONLY, l12.size.min(l01.size)))
    }

    /// The true translation of `va` in context `cid` (the oracle's walk): `tlb::walk`, or for a
    /// chained context L2's table, then the chain. Target and flags are compared; `size` is the
    /// truth's granularity at `va` (the largest cached entry one comparison can vouch for).
    pub(crate) fn truth_walk(&self, cid: u32, ctx: &Context, va: u64) -> Option<Walk> {
        let ch = self.truth.chains[cid as usize];
        if ctx.mode == Mode::Host || ch.t12 == NO_TABLE {
            return crate::tlb::walk(&self.tables, ctx, va);
        }
        let (l1, gpa) = self.tables[ctx.cr3 as usize].walk(va)?;
        let (hpa, ro, gran) = self.second_stage_truth(cid, ctx, gpa)?;
        Some(Walk { target: hpa, size: l1.size.min(gran), flags: l1.flags | ro, gpa, gpa_frame: gpa, nested_size: gran, nflags: ro })
    }

    /// Is a chain declared for context `cid`?
    #[inline(always)]
    pub(crate) fn chained(&self, cid: u32) -> bool {
        self.truth.chains[cid as usize].t12 != NO_TABLE
    }

    /// A new context has no chain.
    pub(crate) fn truth_push(&mut self) {
        self.truth.chains.push(NO_CHAIN);
    }

    /// Context `cid`'s shadow table changed (set_context): a declared chain gets a fresh id, so
    /// entries judged under the old shadow are judged again.
    pub(crate) fn truth_shadow_changed(&mut self, cid: u32) {
        if self.chained(cid) {
            let id = self.truth.fresh_id();
            self.truth.chains[cid as usize].id = id;
        }
    }
}
