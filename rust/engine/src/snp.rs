//! SEV-SNP on the host: the RMP instructions with their return codes, the RMP checks on memory
//! accesses, the host direct map with lookup_address()/set_memory_4k() under cpa_lock, and the
//! primitives the SNP page-in path needs (page allocation, page clearing under memory-bandwidth
//! contention, nested page faults). Semantics: semantics.md section 5.

use crate::error::{EngineError, Result};
use crate::host::Host;
use crate::paging::PageSize;
use crate::rmp::{RmpEntry, RmpState, MAX_ASID};
use crate::violation::Cause;

pub use crate::directmap::PAGE_OFFSET;

impl Host {
    /// SYSCFG.SNPEn on every CPU (snp_rmptable_init()): RMP checks on memory accesses from now on.
    /// The WBINVD that precedes it is the policy's to issue.
    /// A CPU without SEV-SNP (CPUID 8000_001F EAX[4] clear) cannot set SYSCFG.SNPEn: an error
    /// naming the feature, and the host unchanged.
    pub fn snp_enable(&mut self) -> Result<()> {
        if !self.cfg.features.snp {
            return Err(EngineError::invalid(
                "snp",
                format!("preset {:?} has no SEV-SNP (features.snp = false; SNP needs Zen 3 / EPYC 7003 or later)", self.cfg.name),
            ));
        }
        self.snp_enabled = true;
        Ok(())
    }

    pub fn snp_enabled(&self) -> bool {
        self.snp_enabled
    }

    /// Declare that guest key `asid` is an SNP guest's: its private accesses get the RMP checks.
    pub fn snp_set_asid(&mut self, asid: u16, snp: bool) -> Result<()> {
        if asid == 0 || asid > MAX_ASID {
            return Err(EngineError::invalid("asid", format!("asid = {asid} is out of range 1..={MAX_ASID}")));
        }
        self.snp_asids[asid as usize] = snp;
        Ok(())
    }

    fn check_rmp_args(&self, pa: u64, asid: u16) -> Result<()> {
        self.check_addr("pa", pa)?;
        if asid > MAX_ASID {
            return Err(EngineError::invalid("asid", format!("asid = {asid} is out of range 0..={MAX_ASID} (10-bit RMP field)")));
        }
        Ok(())
    }

    /// RMPUPDATE on `cpu`: returns the hardware's code (0 success, FAIL_INPUT, FAIL_PERMISSION,
    /// FAIL_OVERLAP). A 2 MiB entry covers [pa, pa + 2 MiB), which must be in memory.
    pub fn rmpupdate(&mut self, cpu: usize, pa: u64, new: RmpState) -> Result<u8> {
        self.check_cpu("cpu", cpu)?;
        self.check_rmp_args(pa, new.asid)?;
        if new.huge && (pa & !((1 << 21) - 1)) + (1 << 21) > self.mem.bytes {
            return Err(EngineError::invalid("pa", format!("a 2 MiB entry at {pa:#x} runs past the end of memory")));
        }
        let c = self.cfg.snp.rmpupdate as u64;
        self.clocks_add(cpu, c);
        self.ctr.other_cycles[cpu] += c;
        self.ctr.rmp_updates[cpu] += 1;
        Ok(self.rmp.update(pa, new))
    }

    /// PSMASH of the 2 MiB entry at `pa`.
    pub fn psmash(&mut self, cpu: usize, pa: u64) -> Result<u8> {
        self.check_cpu("cpu", cpu)?;
        self.check_addr("pa", pa)?;
        let c = self.cfg.snp.psmash as u64;
        self.clocks_add(cpu, c);
        self.ctr.other_cycles[cpu] += c;
        self.ctr.psmashes[cpu] += 1;
        Ok(self.rmp.psmash(pa))
    }

    /// PVALIDATE by guest `asid` (running on `cpu`) of the page at `pa` (its GPA `gpa`): (code,
    /// changed). See Rmp::pvalidate for the codes; a #NPF code also charges a nested page fault.
    pub fn pvalidate(&mut self, cpu: usize, asid: u16, pa: u64, gpa: u64, huge: bool, validate: bool) -> Result<(u8, bool)> {
        self.check_cpu("cpu", cpu)?;
        self.check_rmp_args(pa, asid)?;
        let (code, changed) = self.rmp.pvalidate(pa, asid, gpa, huge, validate);
        let mut c = if huge { self.cfg.snp.pvalidate_2m } else { self.cfg.snp.pvalidate_4k } as u64;
        if code >= crate::rmp::NPF_RMP {
            c += self.cfg.snp.npf_exit as u64;
            self.ctr.npf_exits[cpu] += 1;
        }
        self.clocks_add(cpu, c);
        self.ctr.other_cycles[cpu] += c;
        self.ctr.pvalidates[cpu] += 1;
        Ok((code, changed))
    }

    pub fn rmp_entry(&self, pa: u64) -> Result<RmpEntry> {
        self.check_addr("pa", pa)?;
        Ok(self.rmp.entry(pa))
    }

    pub fn rmp_heap_bytes(&self) -> usize {
        self.rmp.heap_bytes()
    }

    /// The RMP checks of one memory access (semantics.md 5.3), made only once SNP is enabled.
    /// Key 0 is a hypervisor-domain access: a write to an assigned page faults, and so does a write
    /// through a 2 MiB/1 GiB direct-map translation (the TLB entry used, else the leaf) into a 2 MiB
    /// region holding any assigned 4 KiB page (checked as a 2 MiB access). A private access under an SNP guest's key needs a page assigned
    /// to that ASID and validated. Returns whether the access may proceed; a refusal is recorded.
    #[inline]
    pub(crate) fn rmp_allows(&mut self, cpu: usize, pa: u64, write: bool, key: u16) -> bool {
        if key == 0 {
            if !write || !self.rmp.region_has_assigned(pa) {
                return true;
            }
            // checked at the size of the translation used (directmap.rs host_access_size)
            let cause = if self.host_access_size(cpu, pa) != PageSize::K4 {
                Cause::RmpHostWriteLargeMapping
            } else if self.rmp.entry(pa).assigned {
                Cause::RmpHostWriteAssigned
            } else {
                return true;
            };
            self.rmp_fault(cause, cpu, pa, key);
            false
        } else if (key as usize) < self.snp_asids.len() && self.snp_asids[key as usize] {
            let e = self.rmp.entry(pa);
            if !e.assigned || e.asid != key {
                self.rmp_fault(Cause::RmpGuestNotOwned, cpu, pa, key);
                false
            } else if !e.validated {
                self.rmp_fault(Cause::RmpGuestNotValidated, cpu, pa, key);
                false
            } else {
                true
            }
        } else {
            true
        }
    }

    /// The guest-side checks of a translated private access by SNP guest `key`: the page assigned
    /// to that ASID at that GPA and validated, and no 2 MiB nested mapping over 4 KiB RMP entries.
    pub(crate) fn rmp_allows_guest(&mut self, cpu: usize, pa: u64, gpa: u64, nsize: u8, key: u16) -> bool {
        if (key as usize) >= self.snp_asids.len() || !self.snp_asids[key as usize] {
            return true;
        }
        let e = self.rmp.entry(pa);
        let cause = if !e.assigned || e.asid != key || e.gpa != gpa & !0xFFF {
            Cause::RmpGuestNotOwned
        } else if nsize != PageSize::K4 as u8 && !e.huge {
            Cause::RmpGuestSizeMismatch
        } else if !e.validated {
            Cause::RmpGuestNotValidated
        } else {
            return true;
        };
        self.rmp_fault(cause, cpu, pa, key);
        false
    }

    fn rmp_fault(&mut self, cause: Cause, cpu: usize, pa: u64, key: u16) {
        let e = self.rmp.entry(pa);
        let owner = self.mem.owner(pa >> 6);
        self.ctr.rmp_faults[cpu] += 1;
        self.record(cause, cpu as i32, pa >> 6, key, e.asid, owner);
    }

    /// Charge `cpu` for allocating `count` backing pages of 4 KiB or 2 MiB.
    pub fn alloc_pages(&mut self, cpu: usize, huge: bool, count: u64) -> Result<u64> {
        self.check_cpu("cpu", cpu)?;
        let page = if huge { 2 << 20 } else { 4096 };
        let most = self.memory_bytes() / page;
        if count > most {
            return Err(EngineError::invalid(
                "count",
                format!("count = {count} pages of {page} bytes exceeds the host's {most}"),
            ));
        }
        let c = count * if huge { self.cfg.snp.alloc_2m } else { self.cfg.snp.alloc_4k } as u64;
        self.clocks_add(cpu, c);
        self.ctr.other_cycles[cpu] = self.ctr.other_cycles[cpu].saturating_add(c);
        Ok(c)
    }

    /// Zero [pa, pa + size) from `cpu` (clear_page() through the direct map): bounded by the
    /// core's bandwidth (slowed by its socket's DRAM utilisation) and by its socket's, which the
    /// clears of every CPU share in the order they are issued, plus the direct-map page walks of
    /// the sweep (membw.rs). Timing only: caches and line contents are not touched. Returns the
    /// cycles.
    pub fn clear_pages(&mut self, cpu: usize, pa: u64, size: u64) -> Result<u64> {
        self.check_cpu("cpu", cpu)?;
        self.check_range("pa", pa, size, 4096)?;
        Ok(self.clear_range(cpu, pa, size))
    }

    /// Charge `cpu` a nested page fault (#VMEXIT, KVM's handler, VMRUN).
    pub fn npf_exit(&mut self, cpu: usize) -> Result<u64> {
        self.check_cpu("cpu", cpu)?;
        self.npf_exits(cpu, 1)
    }
}
