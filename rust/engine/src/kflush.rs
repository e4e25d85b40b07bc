//! The kernel's flush_tlb_all() on a large host, the two ways kernels do it:
//!
//! * IPIs (on_each_cpu(do_flush_tlb_all, NULL, 1), arch/x86/mm/tlb.c): the initiator sends to
//!   every other CPU and waits for all of them. A target running a guest takes a #VMEXIT for the
//!   interrupt, runs the handler in the host and VMRUNs again (the profile's `world_switch`); an
//!   idle target first leaves its C-state (`snp.cstate_wake`, [assumed]); a busy host CPU takes
//!   the interrupt directly. The slowest target sets the initiator's wait.
//! * INVLPGB + TLBSYNC (Rik van Riel, "x86/mm: Use INVLPGB for kernel TLB flushes", lore
//!   20250226030129.530345-5-riel@surriel.com, merged for 6.15: flush_tlb_all() calls
//!   invlpgb_flush_all(), a broadcast of "everything, globals included" and a TLBSYNC): no
//!   interrupt reaches any other CPU; the initiator pays the issue and the TLBSYNC.
//!
//! Both drop the host's translations (ASID 0, globals included) on every CPU: the handler's
//! flush (native_flush_tlb_global()) and the host's INVLPGB act on the host ASID, and TLB entries
//! are tagged by ASID so a guest's survive (semantics.md 3.1, 3.7) [INF].

use crate::directmap::KernelFlush;
use crate::error::{EngineError, Result};
use crate::host::Host;
use crate::tlb::{Entry, Invlpgb, Mode, DOM_HOST};
use crate::translate::INVAL_KINDS;

impl Host {
    /// Mark `cpus` idle (in a C-state: an IPI has to wake them) or busy.
    pub fn set_cpu_idle(&mut self, cpus: &[usize], idle: bool) -> Result<()> {
        for &c in cpus {
            self.check_cpu("cpus", c)?;
        }
        for &c in cpus {
            self.cpu_idle[c] = idle;
        }
        Ok(())
    }

    pub fn cpu_idle(&self) -> &[bool] {
        &self.cpu_idle
    }

    /// The host's own TLB entries (ASID 0, globals too) of every thread of `cpu`'s core: dropped
    /// in one pass over the core's TLBs (flush_tlb_all() reaches every thread). The entries are
    /// counted against the core's first CPU, the operation against each thread.
    fn drop_host_entries_core(&mut self, core: usize) -> u64 {
        let p = |e: &Entry| e.dom == DOM_HOST;
        let n = self.tlb1[core].drop_where(p) + self.tlb2[core].drop_where(p);
        let k = INVAL_KINDS.iter().position(|k| *k == "local_flush_all").expect("kind");
        self.inval[k][1] += n;
        let first = core; // CPU c is on core c % cores (topology.rs): CPU `core` is its first thread
        self.ctr.tlb_dropped[first] += n;
        n
    }

    /// flush_tlb_all() from `initiator`, the `how` way (module comment). Returns the initiator's
    /// cycles. `KernelFlush::Skip` does nothing and costs nothing.
    pub fn kernel_flush_tlb_all(&mut self, initiator: usize, how: KernelFlush) -> Result<u64> {
        self.check_cpu("initiator", initiator)?;
        let t0 = self.cycles(initiator);
        match how {
            KernelFlush::Skip => return Ok(0),
            KernelFlush::Invlpgb => {
                let op = Invlpgb {
                    va: None,
                    pcid: None,
                    asid: None,
                    include_global: true,
                    final_only: false,
                    include_nested: false,
                    count: 1,
                    stride_2m: false,
                };
                self.invlpgb(initiator, op)?;
                self.tlbsync(initiator)?;
                self.ctr.kernel_flushes[initiator] += 1;
                return Ok(self.cycles(initiator) - t0);
            }
            KernelFlush::Ipi => {}
        }
        let c = self.cfg.cost.clone();
        let work = self.cfg.tlb.flush as u64;
        let ws = self.cfg.tlb.world_switch as u64;
        let wake = self.cfg.snp.cstate_wake as u64;
        let n = self.topo.cpus;
        let n_remote = (n - 1) as u64;
        let mut send = if n_remote > 0 { c.ipi_send_base + c.ipi_send_per_target * n_remote } else { 0 };
        if c.ipi_queue_line {
            send += self.queue_line_cycles(initiator);
        }
        // every CPU flushes, the initiator too (on_each_cpu runs the function locally)
        for core in 0..self.topo.cores {
            self.drop_host_entries_core(core);
        }
        let k = INVAL_KINDS.iter().position(|k| *k == "local_flush_all").expect("kind");
        self.inval[k][0] += n as u64;
        for t in 0..n {
            self.ctr.tlb_flush_ops[t] += 1;
        }
        let mut done = t0.saturating_add(send + work);
        for t in 0..n {
            if t == initiator {
                continue;
            }
            let extra = if self.cpu_idle[t] {
                self.ctr.flush_wakeups[t] += 1;
                wake
            } else if self.cpu_ctx[t].mode != Mode::Host {
                // the interrupt exits the guest; the target re-enters it after the handler
                self.ctr.flush_guest_exits[t] += 1;
                self.clocks_add(t, ws);
                ws
            } else {
                0
            };
            done = done.max(t0.saturating_add(send + c.ipi_latency + extra + c.ipi_handler + work));
            self.clocks_add(t, c.ipi_handler + work);
            self.ctr.ipis_received[t] += 1;
            self.ctr.ipi_cycles[t] = self.ctr.ipi_cycles[t].saturating_add(c.ipi_handler + work + if extra == ws { ws } else { 0 });
        }
        if n_remote > 0 {
            done = done.saturating_add(c.ipi_ack);
        }
        let spent = done - t0;
        self.clocks_add(initiator, spent);
        self.ctr.flush_cycles[initiator] += spent;
        self.ctr.ipis_sent[initiator] += n_remote;
        self.ctr.kernel_flushes[initiator] += 1;
        Ok(spent)
    }

    /// The initiator's serial cost of queueing one csd per target (Costs::ipi_queue_line): one
    /// cache-line transfer at each target's distance, summed over every other CPU.
    pub(crate) fn queue_line_cycles(&self, initiator: usize) -> u64 {
        let l = &self.cfg.latency;
        let (my_ccd, my_core) = (self.topo.ccd_of_cpu(initiator), self.topo.cpu_core[initiator]);
        let my_sock = self.topo.ccd_socket[my_ccd];
        let mut sum = 0u64;
        for t in 0..self.topo.cpus {
            if t == initiator {
                continue;
            }
            let ccd = self.topo.ccd_of_cpu(t);
            sum += if self.topo.cpu_core[t] == my_core {
                0 // the SMT sibling shares the core's L1/L2
            } else if ccd == my_ccd {
                l.peer_core as u64
            } else if self.topo.ccd_socket[ccd] == my_sock {
                l.remote_ccd as u64
            } else {
                l.remote_socket as u64
            };
        }
        sum
    }

    /// `kernel_flush_tlb_all` by name ("ipi", "invlpgb", "none").
    pub fn kernel_flush_tlb_all_named(&mut self, initiator: usize, how: &str) -> Result<u64> {
        let k = KernelFlush::parse(how)
            .ok_or_else(|| EngineError::invalid("flush", format!("flush = {how:?}: expected \"ipi\", \"invlpgb\" or \"none\"")))?;
        self.kernel_flush_tlb_all(initiator, k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_line_adds_one_line_transfer_per_target_by_distance() {
        let mut h = Host::preset("tiny", None).unwrap();
        let flat = h.kernel_flush_tlb_all(0, KernelFlush::Ipi).unwrap();
        let mut h2 = Host::preset("tiny", None).unwrap();
        h2.cfg.cost.ipi_queue_line = true;
        let lines = h2.queue_line_cycles(0);
        let l = h2.cfg.latency.clone();
        let mut want = 0u64;
        for t in 1..h2.topo.cpus {
            let ccd = h2.topo.ccd_of_cpu(t);
            want += if h2.topo.cpu_core[t] == h2.topo.cpu_core[0] {
                0
            } else if ccd == h2.topo.ccd_of_cpu(0) {
                l.peer_core as u64
            } else if h2.topo.ccd_socket[ccd] == h2.topo.ccd_socket[h2.topo.ccd_of_cpu(0)] {
                l.remote_ccd as u64
            } else {
                l.remote_socket as u64
            };
        }
        assert_eq!(lines, want);
        assert!(lines > 0);
        assert_eq!(h2.kernel_flush_tlb_all(0, KernelFlush::Ipi).unwrap(), flat + lines);
    }

    #[test]
    fn guest_mode_targets_pay_a_world_switch_and_idle_ones_a_wakeup() {
        let mut h = Host::preset("tiny", None).unwrap();
        let base = h.kernel_flush_tlb_all(0, KernelFlush::Ipi).unwrap();
        assert_eq!(h.ctr.ipis_sent[0], h.topo.cpus as u64 - 1);
        // an idle target: the initiator waits for its wake-up too
        let mut h2 = Host::preset("tiny", None).unwrap();
        h2.set_cpu_idle(&[3], true).unwrap();
        let idle = h2.kernel_flush_tlb_all(0, KernelFlush::Ipi).unwrap();
        assert_eq!(idle, base + h2.cfg.snp.cstate_wake as u64);
        assert_eq!(h2.ctr.flush_wakeups[3], 1);
        // INVLPGB: no IPI at all, the issue and the TLBSYNC only
        let mut h3 = Host::preset("tiny", None).unwrap();
        let b = h3.kernel_flush_tlb_all(0, KernelFlush::Invlpgb).unwrap();
        assert_eq!(h3.ctr.ipis_sent[0], 0);
        assert_eq!(b, (h3.cfg.tlb.invlpgb + h3.cfg.tlb.tlbsync) as u64);
        assert!(b < base);
        assert_eq!(h3.kernel_flush_tlb_all(0, KernelFlush::Skip).unwrap(), 0);
    }
}
