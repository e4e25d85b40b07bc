//! Translation contexts: what a logical CPU translates with (mode, ASID/VPID, CR3 and PCID, the
//! nested table, key and VM), created and changed by the policy layer, loaded per CPU at entry,
//! and the per-context TLB counters.

use crate::error::{EngineError, Result};
use crate::host::Host;
use crate::paging::TableKind;
use crate::tlb::{Context, Mode, NO_TABLE};
use crate::translate::NASID;

/// Per-context counters, in this order in `Host::ctx_ctr` (one row per context).
pub const CTX_COUNTERS: [&str; 6] = ["tlb_l1_hits", "tlb_l2_hits", "tlb_misses", "gphys_hits", "page_faults", "write_faults"];
pub const CC_L1: usize = 0;
pub const CC_L2: usize = 1;
pub const CC_MISS: usize = 2;
pub const CC_GPHYS: usize = 3;
pub const CC_PF: usize = 4;
pub const CC_WF: usize = 5;

impl Host {
    /// Register a translation context. Host contexts translate through a host table; SVM and VMX
    /// guest contexts through a guest table and a nested table (NPT/EPT).
    pub fn create_context(&mut self, ctx: Context) -> Result<u32> {
        let c = self.check_context(ctx)?;
        self.contexts.push(c);
        self.ctx_ctr.extend_from_slice(&[0; CTX_COUNTERS.len()]);
        self.truth_push();
        Ok((self.contexts.len() - 1) as u32)
    }

    /// `ctx` checked as a context: its tables of the right kinds, its tag, PCID and key in range.
    fn check_context(&self, ctx: Context) -> Result<Context> {
        let need = if ctx.mode == Mode::Host { TableKind::Host } else { TableKind::Guest };
        if self.table_checked("cr3", ctx.cr3)?.kind != need {
            return Err(EngineError::invalid("cr3", format!("cr3 = {}: a {:?} context needs a {need:?} table", ctx.cr3, ctx.mode)));
        }
        if ctx.mode != Mode::Host && self.table_checked("nested", ctx.nested)?.kind != TableKind::Nested {
            return Err(EngineError::invalid("nested", format!("nested = {} is not a nested (NPT/EPT) table", ctx.nested)));
        }
        if ctx.pcid >= 4096 {
            return Err(EngineError::invalid("pcid", format!("pcid = {} is out of range 0..=4095", ctx.pcid)));
        }
        if !ctx.pcide && ctx.pcid != 0 {
            // with CR4.PCIDE = 0 the current PCID is always 000H (SDM vol. 3A 4.10.1)
            return Err(EngineError::invalid("pcid", format!("pcid = {}: a context with CR4.PCIDE clear (pcide=False) has PCID 0", ctx.pcid)));
        }
        match ctx.mode {
            Mode::Host if ctx.tag != 0 => return Err(EngineError::invalid("tag", format!("tag = {}: a host context has ASID/VPID 0", ctx.tag))),
            Mode::Svm if ctx.tag as u32 >= NASID => {
                return Err(EngineError::invalid("tag", format!("tag = {}: ASID out of range 0..{NASID}", ctx.tag)))
            }
            _ => {}
        }
        self.check_key("key", ctx.key as u64)?;
        let mut c = ctx;
        if c.mode == Mode::Host {
            c.nested = NO_TABLE;
        }
        Ok(c)
    }

    /// Change context `id`: its tag (ASID/VPID), nested table, VM or key, as KVM hands a VMCB a
    /// new ASID or points it at another nested table. Checked like `create_context`, the context
    /// unchanged on an error. It takes effect at the next entry: a CPU running the context keeps
    /// what it loaded (VMRUN reads the VMCB's ASID and nCR3 at entry, APM vol. 2 15.5.1/15.25.4;
    /// VM entry the VMCS's VPID and EPTP, SDM vol. 3C 27.3).
    pub fn set_context(&mut self, id: u32, tag: Option<u16>, nested: Option<u32>, vm: Option<u32>, key: Option<u16>) -> Result<()> {
        let mut c = self.context(id)?;
        if let (Some(n), Mode::Host) = (nested, c.mode) {
            return Err(EngineError::invalid("nested", format!("nested = {n}: ctx = {id} is a host context, which has no nested table")));
        }
        c.tag = tag.unwrap_or(c.tag);
        c.nested = nested.unwrap_or(c.nested);
        c.vm = vm.unwrap_or(c.vm);
        c.key = key.unwrap_or(c.key);
        let c = self.check_context(c)?;
        if let Some((_, t01)) = self.nested_truth(id)? {
            if c.nested == t01 {
                return Err(EngineError::invalid(
                    "nested",
                    format!("nested = {t01} is the context's declared nested01 (L0's table for L1): the shadow and the chain would not compose"),
                ));
            }
        }
        if c.nested != self.contexts[id as usize].nested {
            self.truth_shadow_changed(id);
        }
        self.contexts[id as usize] = c;
        Ok(())
    }

    pub fn context(&self, id: u32) -> Result<Context> {
        self.contexts
            .get(id as usize)
            .copied()
            .ok_or_else(|| EngineError::invalid("ctx", format!("ctx = {id}: no such context")))
    }

    pub fn current_context(&self, cpu: usize) -> u32 {
        self.cur_ctx[cpu]
    }

    /// Make `ctx` (a host context) the current one of `cpu` and its host context, the one a
    /// #VMEXIT returns to, without any flush. The CPU loads the context's CR3 and PCID. Moving
    /// between host contexts of different CR4.PCIDE flushes nothing either, where the hardware's
    /// MOV to CR4 clearing PCIDE would invalidate every PCID's entries (SDM vol. 3A 4.10.4.1): not
    /// modelled, as Linux never clears PCIDE once set (arch/x86/mm/init.c setup_pcid()).
    pub fn set_host_context(&mut self, cpu: usize, ctx: u32) -> Result<()> {
        self.check_cpu("cpu", cpu)?;
        if self.context(ctx)?.mode != Mode::Host {
            return Err(EngineError::invalid("ctx", format!("ctx = {ctx}: set_host_context takes a host context; guests are entered with vmrun/vmentry")));
        }
        self.save_guest_state(cpu);
        self.cur_ctx[cpu] = ctx;
        self.cpu_ctx[cpu] = self.contexts[ctx as usize];
        self.host_ctx[cpu] = ctx;
        self.host_saved[cpu] = self.cpu_ctx[cpu];
        Ok(())
    }

    /// The CPU's (table, PCID) in CR3 now.
    pub fn cpu_cr3(&self, cpu: usize) -> Result<(u32, u16)> {
        self.check_cpu("cpu", cpu)?;
        let c = &self.cpu_ctx[cpu];
        Ok((c.cr3, c.pcid))
    }

    /// A CPU leaving guest mode stores the guest's CR3 and PCID into its context, as #VMEXIT
    /// stores guest state into the VMCB (APM vol. 2 15.6) and VM exit into the VMCS guest-state
    /// area (Intel SDM vol. 3C 28.3 "Saving Guest State"); the next entry of the context loads
    /// them. Nothing for a CPU in host mode.
    pub(crate) fn save_guest_state(&mut self, cpu: usize) {
        let c = self.cpu_ctx[cpu];
        if c.mode != Mode::Host {
            let t = &mut self.contexts[self.cur_ctx[cpu] as usize];
            t.cr3 = c.cr3;
            t.pcid = c.pcid;
        }
    }

    /// Enter guest context `ctx` on `cpu`: a CPU in host mode saves its host state (VMRUN's host
    /// save area, APM vol. 2 15.5.1; the VMCS host-state area, SDM vol. 3C 28.5), then the
    /// guest's state is loaded from the context.
    pub(crate) fn enter(&mut self, cpu: usize, ctx: u32) {
        if self.cpu_ctx[cpu].mode == Mode::Host {
            self.host_saved[cpu] = self.cpu_ctx[cpu];
        } else {
            self.save_guest_state(cpu);
        }
        self.cur_ctx[cpu] = ctx;
        self.cpu_ctx[cpu] = self.contexts[ctx as usize];
    }

    /// Per-context counters (`CTX_COUNTERS`) of context `id`: TLB hits in the L1 and L2 DTLB,
    /// misses (each a walk), guest-physical entries used by a walk, faults; counted for the
    /// context the CPU was in.
    pub fn context_counters(&self, id: u32) -> Result<[u64; CTX_COUNTERS.len()]> {
        self.context(id)?;
        let b = id as usize * CTX_COUNTERS.len();
        let mut out = [0; CTX_COUNTERS.len()];
        out.copy_from_slice(&self.ctx_ctr[b..b + CTX_COUNTERS.len()]);
        Ok(out)
    }
}

impl Host {
    pub fn context_count(&self) -> usize {
        self.contexts.len()
    }

    /// Every context's counters, one row per context (`CTX_COUNTERS` columns).
    pub fn context_counters_all(&self) -> &[u64] {
        &self.ctx_ctr
    }
}
