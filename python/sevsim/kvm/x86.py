"""KVM's generic TLB-flush requests (arch/x86/kvm/x86.c), as the vendor policies use them.

A request is a per-vCPU bit raised by `kvm_make_request()` and consumed in `vcpu_enter_guest()`,
in the kernel's order (tlb-policies.md section 2, from vcpu_enter_guest()):

1. KVM_REQ_MMU_SYNC      -> kvm_mmu_sync_roots()
2. KVM_REQ_TLB_FLUSH     -> kvm_vcpu_flush_tlb_all(), which also clears KVM_REQ_TLB_FLUSH_CURRENT
   ("Flushing all ASIDs flushes the current ASID...")
3. kvm_service_local_tlb_flush_requests(): KVM_REQ_TLB_FLUSH_CURRENT -> flush_tlb_current, then
   KVM_REQ_TLB_FLUSH_GUEST -> kvm_vcpu_flush_tlb_guest() (flush_tlb_guest, then the Hyper-V
   FIFO purge: "Flushing all 'guest' TLB is always a superset of Hyper-V's fine grained flushing")
4. KVM_REQ_HV_TLB_FLUSH  -> kvm_hv_vcpu_flush_tlb(); a non-zero return -> kvm_vcpu_flush_tlb_guest()

Every flush a policy performs goes through `FlushSites.hit(name)`: the flush has a name (its
kernel function and reason), is counted, and can be switched off by a mutation to show that an
oracle catches its absence.
"""

from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:  # pragma: no cover
    from .. import Host


class Req(enum.IntFlag):
    """KVM request bits (include/linux/kvm_host.h, arch/x86/include/asm/kvm_host.h)."""

    TLB_FLUSH = 1 << 0
    TLB_FLUSH_CURRENT = 1 << 1
    TLB_FLUSH_GUEST = 1 << 2
    HV_TLB_FLUSH = 1 << 3
    MMU_SYNC = 1 << 4


class FlushSites:
    """The named flush sites of a policy: counts of each one performed, and the mutations (sites
    switched off). A site name is "function:reason", e.g. "new_asid:wrap_flush_all_asid"."""

    def __init__(self, known: Iterable[str], mutations: Iterable[str] = ()):
        self.known = tuple(known)
        self.mutations = frozenset(mutations)
        bad = sorted(self.mutations - set(self.known))
        if bad:
            raise ValueError(f"mutation {bad[0]!r} is not a flush site of this policy; sites: {', '.join(self.known)}")
        self.done: Counter[str] = Counter()
        self.skipped: Counter[str] = Counter()

    def hit(self, name: str) -> bool:
        """Whether the flush at site `name` happens (False when mutated away); counted either way."""
        if name in self.mutations:
            self.skipped[name] += 1
            return False
        self.done[name] += 1
        return True


@dataclass
class Vm:
    """A VM as the TLB policies see it (struct kvm): its vCPUs, its engine tables and ids.

    `vm_id` is the engine's VM id of L1's translations; `l2_vm_ids` those of the L2 guests L1
    runs (one per vmcb12 ASID / vpid12), so that L1 using L2's entries, or one L2 another's, is a
    foreign_vm_translation. `npt01` is L0's nested table for L1 (GPA1 -> HPA); the vendor policy
    keeps the shadow table L2 runs on (NPT02/EPT02)."""

    host: "Host"
    policy: Any
    vm_id: int
    npt01: int
    vcpus: list["Vcpu"] = field(default_factory=list)
    #: vendor state per VM (static ASIDs, nested ASID, ...)
    arch: dict[str, Any] = field(default_factory=dict)


@dataclass
class Vcpu:
    """A vCPU (struct kvm_vcpu): where it is loaded, whether it is in guest mode (running) and in
    L2 (is_guest_mode), its pending requests, and its guest tables: `l1_cr3` the page table of the
    L1 process it runs, `l2_cr3` L2's, `l2_vm` the engine VM id of the L2 it runs."""

    vm: Vm
    index: int
    l1_cr3: int
    l2_cr3: int | None = None
    l2_vm: int = 0
    cpu: int | None = None
    in_guest: bool = False
    guest_mode: bool = False
    requests: Req = Req(0)
    hv: Any = None
    #: vendor state (VMCBs / VMCSs, last_asid, ...)
    arch: dict[str, Any] = field(default_factory=dict)

    @property
    def policy(self):
        return self.vm.policy


def kvm_make_request(vcpu: "Vcpu", req: Req) -> None:
    vcpu.requests |= req


def kvm_check_request(vcpu: "Vcpu", req: Req) -> bool:
    """Test and clear one request bit."""
    if vcpu.requests & req:
        vcpu.requests &= ~req
        return True
    return False


def kvm_vcpu_flush_tlb_all(vcpu: "Vcpu") -> None:
    vcpu.policy.flush_tlb_all(vcpu)
    # "Flushing all ASIDs flushes the current ASID..." (kvm_vcpu_flush_tlb_all, x86.c)
    vcpu.requests &= ~Req.TLB_FLUSH_CURRENT


def kvm_vcpu_flush_tlb_guest(vcpu: "Vcpu") -> None:
    if vcpu.policy.sites.hit("kvm_vcpu_flush_tlb_guest:flush_tlb_guest"):
        vcpu.policy.flush_tlb_guest(vcpu)
    # "Flushing all 'guest' TLB is always a superset of Hyper-V's fine grained flushing"
    if vcpu.hv is not None:  # kvm_hv_vcpu_purge_flush_tlb() returns early without Hyper-V
        vcpu.hv.purge(vcpu)


def kvm_service_local_tlb_flush_requests(vcpu: "Vcpu") -> None:
    """x86.c: CURRENT first, then GUEST. nVMX calls it before every nested transition; upstream
    nSVM does not (the RFC's patch 21 calls it in svm_switch_vmcb())."""
    if kvm_check_request(vcpu, Req.TLB_FLUSH_CURRENT):
        vcpu.policy.flush_tlb_current(vcpu)
    if kvm_check_request(vcpu, Req.TLB_FLUSH_GUEST):
        kvm_vcpu_flush_tlb_guest(vcpu)


def vcpu_enter_guest_requests(vcpu: "Vcpu") -> None:
    """The request block of vcpu_enter_guest(), in its order (see the module docstring)."""
    if kvm_check_request(vcpu, Req.MMU_SYNC):
        vcpu.policy.mmu_sync_roots(vcpu)
    if kvm_check_request(vcpu, Req.TLB_FLUSH):
        kvm_vcpu_flush_tlb_all(vcpu)
    kvm_service_local_tlb_flush_requests(vcpu)
    if kvm_check_request(vcpu, Req.HV_TLB_FLUSH) and (vcpu.hv is None or vcpu.hv.drain(vcpu)):
        # no Hyper-V on the vCPU: kvm_hv_vcpu_flush_tlb() returns -EINVAL, a full guest flush
        kvm_vcpu_flush_tlb_guest(vcpu)


def kvm_flush_remote_tlbs(vm: "Vm", initiator: int) -> None:
    """kvm_make_all_cpus_request(kvm, KVM_REQ_TLB_FLUSH): the request on every vCPU; those in
    guest mode are kicked with an IPI and waited for (until they exit, not until they flush); each
    flushes at its next entry, on whatever pCPU it then runs (virt/kvm/kvm_main.c)."""
    running = []
    for v in vm.vcpus:
        if vm.policy.sites.hit("kvm_flush_remote_tlbs:make_all_cpus_request"):
            kvm_make_request(v, Req.TLB_FLUSH)
        if v.in_guest and v.cpu is not None:
            running.append(v.cpu)
    if running:
        vm.host.ipi_call(initiator, sorted(set(running)))
