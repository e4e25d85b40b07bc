//! Fast guest runs: one call that enters a guest context, runs its access batch and exits, so a
//! policy that decides in Python at every (nested) transition pays one crossing per run
//! (DESIGN.md: decisions per event, never per access).

use crate::error::{EngineError, Result};
use crate::host::{Col, Host};
use crate::paging::canonical;
use crate::tlb::Mode;
use crate::translate::VmrunResult;

impl Host {
    /// Enter guest context `ctx` on `cpu` (SVM: VMRUN with the VMCB's `tlb_control`, which may be
    /// refused with VMEXIT_INVALID as `vmrun` is; VMX: VM entry, which has no TLB_CONTROL, so
    /// `tlb_control` must be 0), make the translated accesses `va` (writes where `write`) on
    /// `cpu`, then #VMEXIT / VM exit. Exactly `vmrun`/`vmentry`, `access_virtual_batch` and
    /// `vmexit` in a row. Every argument is checked before anything happens. Returns the entry's
    /// result and the accesses per level (`access_virtual_batch`'s; all 0 if not entered).
    pub fn run_guest(&mut self, cpu: usize, ctx: u32, tlb_control: u8, va: &[u64], write: Col<bool>) -> Result<(VmrunResult, [u64; 8])> {
        self.check_cpu("cpu", cpu)?;
        let c = self.context(ctx)?;
        match c.mode {
            Mode::Host => return Err(EngineError::invalid("ctx", format!("ctx = {ctx} is a host context; run_guest enters a guest"))),
            Mode::Vmx if tlb_control != 0 => {
                return Err(EngineError::invalid(
                    "tlb_control",
                    format!("tlb_control = {tlb_control}: VMX has no TLB_CONTROL (flush with invept/invvpid); use 0"),
                ))
            }
            _ => {}
        }
        if let Some(l) = write.len() {
            if l != va.len() {
                return Err(EngineError::invalid("write", format!("write has {l} elements but va has {}", va.len())));
            }
        }
        if let Some(i) = va.iter().position(|&v| !canonical(v)) {
            return Err(EngineError::invalid("va", format!("va[{i}] = {:#x} is not a canonical address", va[i])));
        }
        if c.mode == Mode::Svm {
            if self.vmrun(cpu, ctx, tlb_control)? == VmrunResult::VmexitInvalid {
                return Ok((VmrunResult::VmexitInvalid, [0; 8]));
            }
        } else {
            self.vmentry(cpu, ctx)?;
        }
        let by = self.access_virtual_batch(Col::One(cpu as u32), va, write, None)?;
        self.vmexit(cpu)?;
        Ok((VmrunResult::Entered, by))
    }
}
