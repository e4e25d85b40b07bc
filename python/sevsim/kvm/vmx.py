"""VMX's TLB policy with EPT and VPID, and nested VMX (arch/x86/kvm/vmx/vmx.c, nested.c;
tlb-policies.md sections 5 and 8), behind the protocol of svm.SvmPolicy.

- `vmx_upstream`: VPIDs from a global bitmap (vpid01 per vCPU, vpid02 per vCPU for its L2),
  `loaded_vmcs->cpu` per VMCS, a full flush (KVM_REQ_TLB_FLUSH: INVEPT all-context) when a VMCS is
  loaded on a pCPU it did not last run on; KVM_REQ_TLB_FLUSH_CURRENT is INVEPT single-context on
  the current EPTP, KVM_REQ_TLB_FLUSH_GUEST is INVVPID single-context on the current VPID
  ("KVM_REQ_TLB_FLUSH_CURRENT == invept, KVM_REQ_TLB_FLUSH_GUEST = invvpid", Vitaly Kuznetsov,
  confirmed by Sean Christopherson, Yyx+AJLacVzOdtBr@google.com). Nested: pending local flushes
  serviced before each transition, nested_vmx_transition_tlb_flush()'s rules, L1's INVVPID on
  vpid02, L1's INVEPT freeing the EPT02 roots (a new root is flushed at load).
- `vmx_invvpid`: deliberately broken: KVM_REQ_TLB_FLUSH_CURRENT done with INVVPID where INVEPT
  was needed, which keeps the guest-physical translations of a changed EPT (seed thread 4).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

from .hyperv import kvm_hv_nested_transtion_tlb_flush
from .svm import ContextCache, Vmcb12
from .x86 import FlushSites, Req, Vcpu, Vm, kvm_make_request, kvm_service_local_tlb_flush_requests, \
    vcpu_enter_guest_requests

if TYPE_CHECKING:  # pragma: no cover
    from .. import Host

VMX_NR_VPIDS = 1 << 16  # vmx.c: vmx_vpid_bitmap, bit 0 reserved


class Vmcs:
    def __init__(self, name: str):
        self.name = name
        self.cpu = -1  # loaded_vmcs->cpu


class VmxUpstream:
    name = "vmx_upstream"
    summary = "VMX: VPIDs, INVEPT for CURRENT, INVVPID for GUEST, full flush on a new pCPU; nVMX's rules"
    vendor = "vmx"
    SITES = ("kvm_vcpu_flush_tlb_guest:flush_tlb_guest", "kvm_flush_remote_tlbs:make_all_cpus_request",
             "kvm_hv_vcpu_flush_tlb:drain", "kvm_hv_nested_transtion_tlb_flush:raise",
             "vmx_vcpu_load_vmcs:new_pcpu", "vmx_flush_tlb_all:invept_global", "vmx_flush_tlb_current:invept_single",
             "vmx_flush_tlb_guest:invvpid_single", "vmx_flush_tlb_gva:invvpid_address",
             "nested_vmx_enter_non_root_mode:service_local_flushes", "nested_vmx_vmexit:service_local_flushes",
             "nested_vmx_transition_tlb_flush:no_vpid12", "nested_vmx_transition_tlb_flush:vpid12_changed",
             "handle_invvpid:vpid02", "handle_invept:new_root_flush")

    def __init__(self, host: "Host", *, mutations: Iterable[str] = (), **_ignored):
        self.host = host
        self.sites = FlushSites(self.SITES, mutations)
        self.contexts = ContextCache(host)
        self.kc = host.kvm_cost
        self.next_vpid = 1
        self.flushes = 0  # INVEPT/INVVPID executed for the vCPUs

    def alloc_vpid(self) -> int:
        """allocate_vpid(): 0 (untagged) when the bitmap is exhausted."""
        if self.next_vpid >= VMX_NR_VPIDS:
            return 0
        self.next_vpid += 1
        return self.next_vpid - 1

    # -- lifecycle -------------------------------------------------------------------------

    def vm_init(self, vm: Vm) -> None:
        pass

    def vcpu_create(self, vcpu: Vcpu) -> None:
        vcpu.arch["vmcs01"] = Vmcs("vmcs01")
        vcpu.arch["vmcs02"] = Vmcs("vmcs02")
        vcpu.arch["vpid01"] = self.alloc_vpid()
        vcpu.arch["vpid02"] = self.alloc_vpid()  # enter_vmx_operation()
        vcpu.arch["vmcb12"] = Vmcb12()
        vcpu.arch["last_vpid"] = 0  # "last_vpid is initialized as 0": the first nested entry flushes

    def loaded(self, vcpu: Vcpu) -> Vmcs:
        return vcpu.arch["vmcs02" if vcpu.guest_mode else "vmcs01"]

    def vmx_vcpu_load_vmcs(self, vcpu: Vcpu, cpu: int) -> None:
        vmcs = self.loaded(vcpu)
        if vmcs.cpu != cpu:
            # "Flush all EPTP/VPID contexts, the new pCPU may have stale TLB entries from its
            # previous association with the vCPU."
            if self.sites.hit("vmx_vcpu_load_vmcs:new_pcpu"):
                kvm_make_request(vcpu, Req.TLB_FLUSH)
            vmcs.cpu = cpu

    def vcpu_load(self, vcpu: Vcpu, cpu: int) -> None:
        vcpu.cpu = cpu
        self.vmx_vcpu_load_vmcs(vcpu, cpu)

    def vcpu_put(self, vcpu: Vcpu) -> None:
        vcpu.cpu = None

    # -- entry -----------------------------------------------------------------------------

    def current_vpid(self, vcpu: Vcpu) -> int:
        """vmx_get_current_vpid() (since the Oct 2024 fix, 20241031202011.1580522-1-seanjc): vpid02
        only if L2 is active and vmcs12 enables VPID."""
        if vcpu.guest_mode and vcpu.arch["vmcb12"].asid:
            return vcpu.arch["vpid02"]
        return vcpu.arch["vpid01"]

    def current_eptp(self, vcpu: Vcpu) -> int:
        return vcpu.arch["nested_mmu"].npt02 if vcpu.guest_mode else vcpu.vm.npt01

    def context(self, vcpu: Vcpu) -> int:
        if vcpu.guest_mode:
            return self.contexts.get("vmx", vcpu.l2_cr3, self.current_eptp(vcpu), self.current_vpid(vcpu), vcpu.l2_vm,
                                     vcpu.arch["nested_mmu"].truth)
        return self.contexts.get("vmx", vcpu.l1_cr3, vcpu.vm.npt01, vcpu.arch["vpid01"], vcpu.vm.vm_id)

    def enter_guest(self, vcpu: Vcpu) -> str:
        if vcpu.cpu is None:
            raise ValueError(f"vCPU {vcpu.index} is not loaded on a pCPU (vcpu_load first)")
        vcpu_enter_guest_requests(vcpu)
        if vcpu.guest_mode and vcpu.arch.pop("ept02_roots_freed", False):
            # kvm_mmu_load() of the new EPT02 root (built from EPT12), then "Flush any TLB entries
            # for the new root, the provenance of the root is unknown" (mmu.c)
            self.mmu_sync_roots(vcpu)
            if self.sites.hit("handle_invept:new_root_flush"):
                self.flush_tlb_current(vcpu)
        self.host.vmentry(vcpu.cpu, self.context(vcpu))
        vcpu.in_guest = True
        return "entered"

    def exit_guest(self, vcpu: Vcpu) -> None:
        self.host.vmexit(vcpu.cpu)
        vcpu.in_guest = False

    # -- flushes (kvm_x86_ops), executed at once on the vCPU's pCPU --------------------------

    def flush_tlb_all(self, vcpu: Vcpu) -> None:
        """vmx_flush_tlb_all(): "INVEPT must be issued when EPT is enabled, irrespective of VPID"."""
        if self.sites.hit("vmx_flush_tlb_all:invept_global"):
            self.host.invept(vcpu.cpu, 2)
            self.flushes += 1

    def flush_tlb_current(self, vcpu: Vcpu) -> None:
        """vmx_flush_tlb_current(): INVEPT single-context on the current root's EPTP."""
        if self.sites.hit("vmx_flush_tlb_current:invept_single"):
            self.host.invept(vcpu.cpu, 1, self.current_eptp(vcpu))
            self.flushes += 1

    def flush_tlb_guest(self, vcpu: Vcpu) -> None:
        """vmx_flush_tlb_guest(): INVVPID single-context on the current VPID (a no-op for VPID 0,
        which VM entry and exit flush anyway); guest-physical entries are kept."""
        vpid = self.current_vpid(vcpu)
        if vpid and self.sites.hit("vmx_flush_tlb_guest:invvpid_single"):
            self.host.invvpid(vcpu.cpu, 1, vpid)
            self.flushes += 1

    def flush_tlb_gva(self, vcpu: Vcpu, gva: int) -> None:
        vpid = self.current_vpid(vcpu)
        if vpid and self.sites.hit("vmx_flush_tlb_gva:invvpid_address"):
            self.host.invvpid(vcpu.cpu, 0, vpid, gva)

    def mmu_sync_roots(self, vcpu: Vcpu) -> None:
        mmu = vcpu.arch.get("nested_mmu")
        if mmu is not None and vcpu.cpu is not None and vcpu.guest_mode:  # only L2's shadow syncs
            n = mmu.sync()
            self.host.spend(vcpu.cpu, int(self.kc["mmu_sync"] + n * self.kc["mmu_sync_per_page"]))

    def flush_count(self, vcpus) -> int:
        return self.flushes

    # -- nested VMX ------------------------------------------------------------------------

    def nested_vmx_transition_tlb_flush(self, vcpu: Vcpu, vmcs12: Vmcb12, is_vmenter: bool) -> None:
        kvm_hv_nested_transtion_tlb_flush(vcpu)
        if not vmcs12.asid:
            # "KVM emulates L2 sharing L1's VPID=0 by using vpid01": a guest flush of vpid01
            if self.sites.hit("nested_vmx_transition_tlb_flush:no_vpid12"):
                kvm_make_request(vcpu, Req.TLB_FLUSH_GUEST)
            return
        if is_vmenter and vmcs12.asid != vcpu.arch["last_vpid"]:
            vcpu.arch["last_vpid"] = vmcs12.asid
            if self.sites.hit("nested_vmx_transition_tlb_flush:vpid12_changed"):
                kvm_make_request(vcpu, Req.TLB_FLUSH_GUEST)
        # with EPT, L2 always has a guest TLB tag (nested_has_guest_tlb_tag()): no CURRENT flush

    def nested_vmrun(self, vcpu: Vcpu, vmcs12: Vmcb12) -> bool:
        """nested_vmx_enter_non_root_mode() for L1's VMLAUNCH/VMRESUME."""
        vcpu.arch["vmcb12"] = vmcs12
        self.host.spend(vcpu.cpu, int(self.kc["nested_vmrun"]))
        if self.sites.hit("nested_vmx_enter_non_root_mode:service_local_flushes"):
            kvm_service_local_tlb_flush_requests(vcpu)
        vcpu.guest_mode = True
        self.vmx_vcpu_load_vmcs(vcpu, vcpu.cpu)  # vmx_switch_loaded_vmcs(vmcs02)
        self.nested_vmx_transition_tlb_flush(vcpu, vmcs12, True)
        return True

    def nested_vmexit(self, vcpu: Vcpu) -> None:
        """nested_vmx_vmexit(): "Service pending TLB flush requests for L2 before switching to L1"."""
        self.host.spend(vcpu.cpu, int(self.kc["nested_vmexit"]))
        if self.sites.hit("nested_vmx_vmexit:service_local_flushes"):
            kvm_service_local_tlb_flush_requests(vcpu)
        vcpu.guest_mode = False
        self.vmx_vcpu_load_vmcs(vcpu, vcpu.cpu)  # back to vmcs01
        self.nested_vmx_transition_tlb_flush(vcpu, vcpu.arch["vmcb12"], False)

    def leave_nested(self, vcpu: Vcpu) -> None:
        """vmx_leave_nested(): nested_vmx_vmexit(vcpu, -1, 0, 0), the ordinary exit path with its
        flushes (no emulated VM-exit for L1 to see)."""
        if self.sites.hit("nested_vmx_vmexit:service_local_flushes"):
            kvm_service_local_tlb_flush_requests(vcpu)
        vcpu.guest_mode = False
        self.vmx_vcpu_load_vmcs(vcpu, vcpu.cpu)
        self.nested_vmx_transition_tlb_flush(vcpu, vcpu.arch["vmcb12"], False)

    def l1_invalidate_gva(self, vcpu: Vcpu, gva: int, tag: int) -> None:
        """L1's INVVPID type 0 (intercepted): handle_invvpid() "Always flush the effective vpid02"."""
        if self.sites.hit("handle_invvpid:vpid02"):
            self.host.invvpid(vcpu.cpu, 0, vcpu.arch["vpid02"], gva)

    def l1_flushes_l2_mappings(self, vcpu: Vcpu, vmcs12: Vmcb12) -> Vmcb12:
        """L1 changed EPT12 and executes INVEPT (intercepted): handle_invept() frees the matching
        EPT02 roots; the next entry builds a new root from EPT12 (the sync) and flushes it
        (kvm_mmu_load() -> flush_tlb_current)."""
        vcpu.arch["ept02_roots_freed"] = True
        return vmcs12


class VmxInvvpid(VmxUpstream):
    """tlb-policies.md 5.3 C2: flush_tlb_all and flush_tlb_current with INVVPID."""

    name = "vmx_invvpid"
    summary = "deliberately broken: KVM_REQ_TLB_FLUSH and _CURRENT with INVVPID where INVEPT was needed"

    def flush_tlb_all(self, vcpu: Vcpu) -> None:
        if self.sites.hit("vmx_flush_tlb_all:invept_global"):
            self.host.invvpid(vcpu.cpu, 2)  # all VPIDs but 0; guest-physical entries stay
            self.flushes += 1

    def flush_tlb_current(self, vcpu: Vcpu) -> None:
        vpid = self.current_vpid(vcpu)
        if vpid and self.sites.hit("vmx_flush_tlb_current:invept_single"):
            self.host.invvpid(vcpu.cpu, 1, vpid)  # keeps the guest-physical entries of the old EPT
            self.flushes += 1
