"""Nested SVM's TLB rules (arch/x86/kvm/svm/nested.c, and part 2 of the "Rework ASID management"
RFC), and KVM's shadow of L1's nested page table. tlb-policies.md sections 6 and 7.

- `nsvm_upstream`: L2 shares L1's ASID; nested_svm_transition_tlb_flush() raises
  KVM_REQ_MMU_SYNC and KVM_REQ_TLB_FLUSH_CURRENT on every nested VMRUN and #VMEXIT; vmcb12's
  ASID and TLB_CONTROL are ignored; INVLPGA from L1 flushes the shared ASID.
- `nsvm_rfc`: L2 runs on its own (nested) ASID; pending local flushes are serviced before every
  VMCB switch (RFC 21); nested VMRUN flushes L2 only when vmcb12's TLB_CONTROL asks (with an MMU
  sync, RFC 18) or vmcb12's ASID changed (last_asid, RFC 19); #VMEXIT flushes L1 only for
  TLB_CONTROL_FLUSH_ALL_ASID; INVLPGA from L1 reaches the nested ASID (RFC 22); a pending flush
  in vmcb02 is not crushed on entry (RFC 20).

A full policy is an ASID scheme (svm.py, vmx.py) and a nested scheme: `POLICIES`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .hyperv import kvm_hv_nested_transtion_tlb_flush
from .svm import (TLB_CONTROL_DO_NOTHING, TLB_CONTROL_FLUSH_ALL_ASID, TLB_CONTROL_FLUSH_ASID, SvmPerVmcb,
                  SvmPolicy, SvmRfc, SvmUpstream, Vmcb12)
from .x86 import Req, Vcpu, kvm_make_request, kvm_service_local_tlb_flush_requests

if TYPE_CHECKING:  # pragma: no cover
    from .. import Host

PAGE = 4096


class NestedMmu:
    """KVM's shadow of L1's nested table for one L2 (nested NPT / nested EPT): NPT02 = NPT01 after
    NPT12, built by KVM and walked by the hardware. L1's edits of NPT12 leaves are not trapped
    (the shadow page is unsync) and reach NPT02 only at the next kvm_mmu_sync_roots(); L0's own
    changes of NPT01 zap the shadow entries derived from them at once (the rmaps cover the nested
    MMU's shadow pages too)."""

    def __init__(self, host: "Host", npt01_of, gpa2: np.ndarray, gpa1: np.ndarray, kind: str = "nested",
                 npt01: int | None = None):
        self.host = host
        self.npt01_of = npt01_of  # gpa1 page addresses -> hpa (L0's NPT01)
        # L1's NPT12 leaves as two arrays in the order they were made (L2 GPA page -> L1 GPA page)
        self.g2 = np.array(gpa2, dtype=np.uint64).ravel()
        self.g1 = np.array(gpa1, dtype=np.uint64).ravel()
        self.npt02 = host.create_table(kind)
        # L1's NPT12/EPT12 itself, in L1's memory (a guest table: L2 GPA -> L1 GPA): with L0's
        # NPT01 (`npt01`) it is the nested truth L2's contexts declare (Host.set_nested_truth), so
        # the engine judges L2 against the composition rather than against this shadow
        self.npt12_table = host.create_table("guest")
        self.truth = None if npt01 is None else (self.npt12_table, npt01)
        self.pending: set[int] = set()
        if len(gpa2):
            host.map_many(self.npt02, np.asarray(gpa2, np.uint64), npt01_of(np.asarray(gpa1, np.uint64)), "4K")
            host.map_many(self.npt12_table, np.asarray(gpa2, np.uint64), np.asarray(gpa1, np.uint64), "4K")

    def l1_writes_npt12(self, gpa2: int, gpa1: int) -> None:
        """L1 writes its NPT12 leaf (at once, in its memory); the shadow follows at the next sync."""
        at = np.flatnonzero(self.g2 == np.uint64(gpa2))
        if len(at):
            self.g1[at[0]] = gpa1
        else:
            self.g2, self.g1 = np.append(self.g2, np.uint64(gpa2)), np.append(self.g1, np.uint64(gpa1))
        self.host.unmap(self.npt12_table, int(gpa2))
        self.host.map(self.npt12_table, int(gpa2), int(gpa1))
        self.pending.add(int(gpa2))

    def sync(self) -> int:
        """Apply L1's pending NPT12 edits to NPT02; returns how many."""
        n = len(self.pending)
        if n:
            g2 = np.array(sorted(self.pending), dtype=np.uint64)
            order = np.argsort(self.g2, kind="stable")
            g1 = self.g1[order[np.searchsorted(self.g2, g2, sorter=order)]]
            for g in g2:
                self.host.unmap(self.npt02, int(g))
            self.host.map_many(self.npt02, g2, self.npt01_of(g1), "4K")
            self.pending.clear()
        return n

    def l0_remapped(self, gpa1: int) -> None:
        """L0 moved L1's page gpa1 (NPT01 changed): the shadow entries through it follow at once."""
        pending = np.fromiter(self.pending, dtype=np.uint64, count=len(self.pending))
        g2 = self.g2[(self.g1 == np.uint64(gpa1)) & ~np.isin(self.g2, pending)]
        for g in g2:
            self.host.unmap(self.npt02, int(g))
        if len(g2):
            self.host.map_many(self.npt02, g2, self.npt01_of(np.full(len(g2), gpa1, np.uint64)), "4K")


class NsvmUpstream:
    """The nested half of upstream SVM (nested.c)."""

    nested_name = "nsvm_upstream"
    NESTED_SITES = ("nested_svm_transition_tlb_flush:mmu_sync(vmrun)",
                    "nested_svm_transition_tlb_flush:flush_current(vmrun)",
                    "nested_svm_transition_tlb_flush:mmu_sync(vmexit)",
                    "nested_svm_transition_tlb_flush:flush_current(vmexit)")

    def svm_switch_vmcb(self, vcpu: Vcpu, name: str) -> None:
        vcpu.arch["current"] = vcpu.arch[name]

    def nested_svm_transition_tlb_flush(self, vcpu: Vcpu, where: str) -> None:
        """"TODO: optimize unconditional TLB flush/MMU sync": both, on every transition."""
        kvm_hv_nested_transtion_tlb_flush(vcpu)
        if self.sites.hit(f"nested_svm_transition_tlb_flush:mmu_sync({where})"):
            kvm_make_request(vcpu, Req.MMU_SYNC)
        if self.sites.hit(f"nested_svm_transition_tlb_flush:flush_current({where})"):
            kvm_make_request(vcpu, Req.TLB_FLUSH_CURRENT)

    def nested_svm_vmrun(self, vcpu: Vcpu, vmcb12: Vmcb12) -> bool:
        """L1's VMRUN, intercepted: False (SVM_EXIT_ERR to L1) if vmcb12's ASID is 0
        (nested_vmcb_check_controls()); else the switch to vmcb02, the scheme's entry flushes, and
        L2 is entered at the next enter_guest."""
        if vmcb12.asid == 0:
            return False
        vcpu.arch["vmcb12"] = vmcb12  # cached (upstream ignores its ASID and TLB_CONTROL otherwise)
        self.host.spend(vcpu.cpu, int(self.kc["nested_vmrun"]))
        self.svm_switch_vmcb(vcpu, "vmcb02")
        self.nested_entry_tlb_flush(vcpu, vmcb12)
        vcpu.guest_mode = True
        return True

    def nested_svm_vmexit(self, vcpu: Vcpu) -> None:
        """L0 reflects L2's exit to L1: leave_guest_mode(), svm_switch_vmcb(vmcb01) (in that order,
        nested.c), the scheme's exit flushes."""
        self.host.spend(vcpu.cpu, int(self.kc["nested_vmexit"]))
        vcpu.guest_mode = False
        self.svm_switch_vmcb(vcpu, "vmcb01")
        self.nested_exit_tlb_flush(vcpu)

    def nested_entry_tlb_flush(self, vcpu: Vcpu, vmcb12: Vmcb12) -> None:
        vcpu.arch["vmcb02"].tlb_ctl = TLB_CONTROL_DO_NOTHING  # nested_vmcb02_prepare_control()
        self.nested_svm_transition_tlb_flush(vcpu, "vmrun")

    def nested_exit_tlb_flush(self, vcpu: Vcpu) -> None:
        self.nested_svm_transition_tlb_flush(vcpu, "vmexit")

    def invlpga_interception(self, vcpu: Vcpu, gva: int, asid: int) -> None:
        """"Let's treat INVLPGA the same as INVLPG": kvm_mmu_invlpg() -> flush_tlb_gva() on the
        current (shared) ASID; ECX is ignored."""
        self.flush_tlb_gva(vcpu, gva)

    def svm_leave_nested(self, vcpu: Vcpu) -> None:
        """Forced leave (svm_leave_nested(): KVM_SET_NESTED_STATE, a vCPU reset, EFER.SVME
        cleared): no TLB flush request upstream, so L2's entries in the shared ASID reach L1 ("L2
        TLB entries can leak into L1": Y. Ahmed, "KVM: nSVM: Flush the TLB after forcefully leaving
        nested", RFC v2 01/25, 20260616004155.1435766-2-yosry@kernel.org, Cc stable)."""
        vcpu.guest_mode = False
        self.svm_switch_vmcb(vcpu, "vmcb01")

    def leave_nested(self, vcpu: Vcpu) -> None:
        self.svm_leave_nested(vcpu)

    # the vendor-neutral names the scenarios use (VMX has the same, vmx.py)
    def nested_vmrun(self, vcpu: Vcpu, vmcb12: Vmcb12) -> bool:
        return self.nested_svm_vmrun(vcpu, vmcb12)

    def nested_vmexit(self, vcpu: Vcpu) -> None:
        self.nested_svm_vmexit(vcpu)

    def l1_invalidate_gva(self, vcpu: Vcpu, gva: int, tag: int) -> None:
        """L1's INVLPGA(gva, ASID tag), intercepted."""
        self.invlpga_interception(vcpu, gva, tag)

    def l1_flushes_l2_mappings(self, vcpu: Vcpu, vmcb12: Vmcb12) -> Vmcb12:
        """L1 changed NPT12: on SVM it asks for the flush in vmcb12 (TLB_CONTROL_FLUSH_ASID) at its
        next VMRUN; returns the vmcb12 to run with."""
        return Vmcb12(asid=vmcb12.asid, tlb_ctl=TLB_CONTROL_FLUSH_ASID)

    def flush_count(self, vcpus) -> int:
        """VMRUNs that flushed (TLB_CONTROL 1, 3 or 7), over every VMCB of `vcpus`."""
        return sum(n for v in vcpus for name in ("vmcb01", "vmcb02") for ctl, n in v.arch[name].issued.items() if ctl)


class NsvmRfc(NsvmUpstream):
    """The nested half of the RFC (patches 11-24, with 24 applied)."""

    nested_name = "nsvm_rfc"
    NESTED_SITES = ("svm_switch_vmcb:service_local_flushes", "nested_svm_entry_tlb_flush:vmcb12_tlb_control(mmu_sync)",
                    "nested_svm_entry_tlb_flush:vmcb12_tlb_control(flush)",
                    "nested_svm_entry_tlb_flush:vmcb12_asid_changed", "nested_svm_exit_tlb_flush:flush_all_asid",
                    "nested_vmcb02_prepare_control:keep_pending_flush", "invlpga_interception:nested_asid",
                    "svm_leave_nested:transition_flush")

    def svm_switch_vmcb(self, vcpu: Vcpu, name: str) -> None:
        """RFC 21: "Perform any pending TLB flushes for the current VMCB before switching"."""
        if self.sites.hit("svm_switch_vmcb:service_local_flushes"):
            kvm_service_local_tlb_flush_requests(vcpu)
        vcpu.arch["current"] = vcpu.arch[name]

    def nested_entry_tlb_flush(self, vcpu: Vcpu, vmcb12: Vmcb12) -> None:
        """nested_svm_entry_tlb_flush() (RFC 14, 18, 19, 24)."""
        # RFC 20: vmcb02's tlb_ctl is no longer reset on entry ("don't crush a pending flush")
        if not self.sites.hit("nested_vmcb02_prepare_control:keep_pending_flush"):
            vcpu.arch["vmcb02"].tlb_ctl = TLB_CONTROL_DO_NOTHING
        kvm_hv_nested_transtion_tlb_flush(vcpu)
        if vmcb12.tlb_ctl != TLB_CONTROL_DO_NOTHING:
            # nested NPT: "Sync nested NPT MMU on VMRUN that flushes L2's ASID"
            if self.sites.hit("nested_svm_entry_tlb_flush:vmcb12_tlb_control(mmu_sync)"):
                kvm_make_request(vcpu, Req.MMU_SYNC)
            if self.sites.hit("nested_svm_entry_tlb_flush:vmcb12_tlb_control(flush)"):
                kvm_make_request(vcpu, Req.TLB_FLUSH_GUEST)
        if vmcb12.asid != vcpu.arch.get("last_asid", 0):
            vcpu.arch["last_asid"] = vmcb12.asid
            if self.sites.hit("nested_svm_entry_tlb_flush:vmcb12_asid_changed"):
                kvm_make_request(vcpu, Req.TLB_FLUSH_GUEST)

    def nested_exit_tlb_flush(self, vcpu: Vcpu) -> None:
        """nested_svm_exit_tlb_flush(). With RFC 21, a local flush still pending from L2 was serviced
        in L1 mode by the switch, since leave_guest_mode() comes first (nested.c) [INF: RFC 21's
        text says the flushes are for "the current VMCB"]."""
        kvm_hv_nested_transtion_tlb_flush(vcpu)
        # "TLB_CONTROL_FLUSH_ALL_ASID flushes all ASIDs from L1's perspective, including its own"
        if vcpu.arch["vmcb12"].tlb_ctl == TLB_CONTROL_FLUSH_ALL_ASID and \
                self.sites.hit("nested_svm_exit_tlb_flush:flush_all_asid"):
            kvm_make_request(vcpu, Req.TLB_FLUSH_GUEST)

    def invlpga_interception(self, vcpu: Vcpu, gva: int, asid: int) -> None:
        """RFC 22: ASID 0 is treated as INVLPG; the ASID L2 runs with reaches the nested ASID; any
        other needs nothing ("KVM does a full TLB flush when L1 runs a VMCB with a different L2
        ASID"). Local pCPU only: the migration flush covers the others."""
        if asid == 0:
            self.flush_tlb_gva(vcpu, gva)
        elif asid == vcpu.arch.get("last_asid", 0) and self.sites.hit("invlpga_interception:nested_asid"):
            self.host.invlpga(vcpu.cpu, gva, vcpu.arch["vmcb02"].asid)

    def svm_leave_nested(self, vcpu: Vcpu) -> None:
        """With the flush the v2 series adds first (nested_svm_transition_tlb_flush() after the
        switch to vmcb01, RFC v2 01/25); with a separate L2 ASID it only matters for the requests
        it raises (a sync and L1's flush)."""
        vcpu.guest_mode = False
        self.svm_switch_vmcb(vcpu, "vmcb01")
        if self.sites.hit("svm_leave_nested:transition_flush"):
            kvm_make_request(vcpu, Req.TLB_FLUSH_CURRENT)


def _combine(asid_cls: type[SvmPolicy], nested_cls: type) -> type:
    name = asid_cls.name
    return type(f"{asid_cls.__name__}{nested_cls.__name__}", (nested_cls, asid_cls), {
        "name": name, "SITES": asid_cls.SITES + nested_cls.NESTED_SITES,
        "summary": f"{asid_cls.summary}; nested: {nested_cls.nested_name}"})


#: the SVM policies by name: an ASID scheme with its nested scheme (the RFC's part 2 needs part 1)
POLICIES: dict[str, type] = {
    "svm_upstream": _combine(SvmUpstream, NsvmUpstream),
    "svm_rfc": _combine(SvmRfc, NsvmRfc),
    "svm_per_vmcb": _combine(SvmPerVmcb, NsvmRfc),
}
