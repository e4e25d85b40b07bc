"""SVM's ASID policies (arch/x86/kvm/svm/svm.c, and the "Rework ASID management" RFC), behind one
protocol, chosen by name. tlb-policies.md sections 3 and 4 are their specification.

- `svm_upstream`: per-pCPU dynamic ASIDs with generations. pre_svm_run() gives a VMCB a new ASID
  when it runs on another pCPU or its generation is old; new_asid() wraps with
  TLB_CONTROL_FLUSH_ALL_ASID; svm_flush_tlb_asid() sets TLB_CONTROL_FLUSH_ASID (FLUSHBYASID) or
  forces a new ASID. L1 and L2 share `svm->asid`.
- `svm_rfc`: one static ASID per VM (and one nested ASID per VM for the L2s), per-pCPU ASID->vCPU
  tracking at vcpu_load (a flush when another vCPU of the ASID ran there), a flush when a VMCB runs
  on another pCPU, flush-on-first-use at init_vmcb, the fallback ASID flushed at every VMRUN.
- `svm_per_vmcb`: Sean Christopherson's review proposal (aFXrFKvZcJ3dN4k_@google.com): a static
  ASID per VMCB, VMX-like rules (flush when a VMCB first runs on a pCPU it did not last run on,
  plus the request flushes), no ASID->vCPU tracking. No code was posted; this is the proposal.

The nested half (nested VMRUN/#VMEXIT, INVLPGA from L1) is in nested.py; a full policy is an ASID
scheme and a nested scheme (`POLICIES` in nested.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable

from .x86 import FlushSites, Req, Vcpu, Vm, kvm_make_request, vcpu_enter_guest_requests

if TYPE_CHECKING:  # pragma: no cover
    from .. import Host

# VMCB TLB_CONTROL values (arch/x86/include/asm/svm.h; architectural, APM vol. 2 15.16.1)
TLB_CONTROL_DO_NOTHING = 0
TLB_CONTROL_FLUSH_ALL_ASID = 1
TLB_CONTROL_FLUSH_ASID = 3
TLB_CONTROL_FLUSH_ASID_LOCAL = 7


@dataclass
class Vmcb:
    """The parts of a VMCB (and of its struct kvm_vmcb_info) that TLB maintenance uses."""

    name: str
    asid: int = 0
    tlb_ctl: int = TLB_CONTROL_DO_NOTHING
    #: pCPU of the last VMRUN (kvm_vmcb_info.cpu); -1: never ran
    cpu: int = -1
    asid_generation: int = 0
    #: TLB_CONTROL values this VMCB was run with, counted
    issued: dict[int, int] = field(default_factory=dict)


@dataclass
class Vmcb12:
    """What L1 wrote in the vmcb12 it runs its L2 with."""

    asid: int = 1
    tlb_ctl: int = TLB_CONTROL_DO_NOTHING


class ContextCache:
    """Engine contexts by what defines them: a VMCB's translation context is (guest table, nested
    table, ASID, VM id); a new ASID is another context. Bounded by the tags in use."""

    def __init__(self, host: "Host"):
        self.host = host
        self.ctx: dict[tuple, int] = {}

    def get(self, mode: str, cr3: int, nested: int, tag: int, vm: int, truth: tuple[int, int] | None = None) -> int:
        """`truth`: an L2 context's (NPT12, NPT01), fixed by its shadow table `nested`."""
        k = (mode, cr3, nested, tag, vm)
        c = self.ctx.get(k)
        if c is None:
            c = self.host.create_context(mode, cr3, nested=nested, tag=tag, vm=vm)
            if truth is not None:
                self.host.set_nested_truth(c, *truth)
            self.ctx[k] = c
        return c


class SvmCpuData:
    """struct svm_cpu_data, per pCPU (svm_enable_virtualization_cpu())."""

    def __init__(self, min_asid: int, max_asid: int):
        self.asid_generation = 1
        self.max_asid = max_asid
        self.next_asid = max_asid + 1  # the first allocation wraps and flushes
        self.min_asid = min_asid
        #: the RFC's sd->asid_vcpu: ASID -> the vCPU last loaded with it here
        self.asid_vcpu: dict[int, Vcpu] = {}


class SvmPolicy:
    """The protocol every SVM (and VMX) policy implements; `enter_guest` is the vCPU's VMRUN.

    `nasids`: CPUID 0x8000000A EBX, the ASIDs the CPU has (Rome to Turin: 0x8000, Sean
    Christopherson, RFC review); `min_asid`: the first non-SEV ASID (max_sev_asid + 1; "SEV
    reserves 1006 ASIDs in Genoa/later", Tom Lendacky). A scenario can shrink the range to make
    the generation wrap happen."""

    name = ""
    summary = ""
    vendor = "svm"
    #: flush sites: each flush the policy performs, by kernel function and reason
    SITES: tuple[str, ...] = ("kvm_vcpu_flush_tlb_guest:flush_tlb_guest", "kvm_flush_remote_tlbs:make_all_cpus_request",
                              "kvm_hv_vcpu_flush_tlb:drain", "kvm_hv_nested_transtion_tlb_flush:raise")

    def __init__(self, host: "Host", *, mutations: Iterable[str] = (), nasids: int = 0x8000, min_asid: int = 1007,
                 flushbyasid: bool = True):
        if not 1 <= min_asid < nasids:
            raise ValueError(f"min_asid = {min_asid} must be in [1, nasids - 1 = {nasids - 1}]")
        self.host = host
        self.sites = FlushSites(self.SITES, mutations)
        self.nasids = nasids
        self.min_asid = min_asid
        self.sd = [SvmCpuData(min_asid, nasids - 1) for _ in range(host.cpu_count)]
        self.contexts = ContextCache(host)
        # CPUID 8000_000A EDX[6]; must match the preset's tlb.flushbyasid (VMRUN with TLB_CONTROL
        # 3 or 7 fails without it)
        self.flushbyasid = flushbyasid
        self.kc = host.kvm_cost

    # -- lifecycle -------------------------------------------------------------------------

    def vm_init(self, vm: Vm) -> None:
        pass

    def vcpu_create(self, vcpu: Vcpu) -> None:
        vcpu.arch["vmcb01"] = Vmcb("vmcb01")
        vcpu.arch["vmcb02"] = Vmcb("vmcb02")
        vcpu.arch["vmcb12"] = Vmcb12()
        vcpu.arch["current"] = vcpu.arch["vmcb01"]

    def vcpu_load(self, vcpu: Vcpu, cpu: int) -> None:
        vcpu.cpu = cpu

    def vcpu_put(self, vcpu: Vcpu) -> None:
        vcpu.cpu = None

    # -- entry -----------------------------------------------------------------------------

    def current(self, vcpu: Vcpu) -> Vmcb:
        return vcpu.arch["current"]

    def context(self, vcpu: Vcpu, vmcb: Vmcb) -> int:
        if vcpu.guest_mode:
            mmu = vcpu.arch["nested_mmu"]
            return self.contexts.get("svm", vcpu.l2_cr3, mmu.npt02, vmcb.asid, vcpu.l2_vm, mmu.truth)
        return self.contexts.get("svm", vcpu.l1_cr3, vcpu.vm.npt01, vmcb.asid, vcpu.vm.vm_id)

    def pre_run(self, vcpu: Vcpu, vmcb: Vmcb) -> None:
        """pre_svm_run(): the scheme's ASID work before VMRUN."""
        raise NotImplementedError

    def enter_guest(self, vcpu: Vcpu) -> str:
        """vcpu_enter_guest(): the requests in their order, pre_svm_run(), svm_vcpu_run(): VMRUN of
        the current VMCB with its TLB_CONTROL, which svm_vcpu_run() resets after the #VMEXIT (the
        current VMCB's only: a flush pending in the other VMCB survives)."""
        cpu = vcpu.cpu
        if cpu is None:
            raise ValueError(f"vCPU {vcpu.index} is not loaded on a pCPU (vcpu_load first)")
        vcpu_enter_guest_requests(vcpu)
        vmcb = self.current(vcpu)
        self.pre_run(vcpu, vmcb)
        ctl = vmcb.tlb_ctl
        r = self.host.vmrun(cpu, self.context(vcpu, vmcb), ctl)
        vmcb.issued[ctl] = vmcb.issued.get(ctl, 0) + 1
        vmcb.cpu = cpu
        vmcb.tlb_ctl = TLB_CONTROL_DO_NOTHING
        vcpu.in_guest = r == "entered"
        return r

    def exit_guest(self, vcpu: Vcpu) -> None:
        """#VMEXIT back to L0."""
        self.host.vmexit(vcpu.cpu)
        vcpu.in_guest = False

    # -- flushes (kvm_x86_ops) ------------------------------------------------------------

    def vmcb_set_flush_asid(self, vmcb: Vmcb) -> None:
        """RFC 04: FLUSH_ASID, or "just fallback to flushing everything if FLUSHBYASID is not
        available"."""
        vmcb.tlb_ctl = TLB_CONTROL_FLUSH_ASID if self.flushbyasid else TLB_CONTROL_FLUSH_ALL_ASID

    def flush_tlb_all(self, vcpu: Vcpu) -> None:
        self.svm_flush_tlb_asid(vcpu)

    def flush_tlb_current(self, vcpu: Vcpu) -> None:
        self.svm_flush_tlb_asid(vcpu)

    def flush_tlb_guest(self, vcpu: Vcpu) -> None:
        self.svm_flush_tlb_asid(vcpu)

    def svm_flush_tlb_asid(self, vcpu: Vcpu, guest_mode: bool | None = None) -> None:
        raise NotImplementedError

    def flush_tlb_gva(self, vcpu: Vcpu, gva: int) -> None:
        """svm_flush_tlb_gva(): INVLPGA of the current VMCB's ASID, at once, on this pCPU."""
        if self.sites.hit("svm_flush_tlb_gva:invlpga"):
            self.host.invlpga(vcpu.cpu, gva, self.current(vcpu).asid)

    def mmu_sync_roots(self, vcpu: Vcpu) -> None:
        """kvm_mmu_sync_roots(): with TDP, only KVM's shadow of L1's NPT (nested NPT) can be
        unsync; the nested MMU applies L1's pending NPT12 edits to NPT02."""
        mmu = vcpu.arch.get("nested_mmu")
        # L1's root is direct (TDP): kvm_mmu_sync_roots() returns at once; only L2's shadow syncs
        if mmu is not None and vcpu.cpu is not None and vcpu.guest_mode:
            n = mmu.sync()
            self.host.spend(vcpu.cpu, int(self.kc["mmu_sync"] + n * self.kc["mmu_sync_per_page"]))


class SvmUpstream(SvmPolicy):
    name = "svm_upstream"
    summary = "per-pCPU dynamic ASIDs with generations; a new ASID on migration; FLUSH_ALL_ASID on wrap"
    SITES = SvmPolicy.SITES + ("new_asid:wrap_flush_all_asid", "pre_svm_run:cpu_changed_new_asid",
                               "svm_flush_tlb_asid:flush_asid", "svm_flush_tlb_gva:invlpga")

    def vcpu_create(self, vcpu: Vcpu) -> None:
        super().vcpu_create(vcpu)
        vcpu.arch["asid"] = 0  # svm->asid, one per vCPU, shared by vmcb01 and vmcb02 (init_vmcb)

    def new_asid(self, vcpu: Vcpu, vmcb: Vmcb, sd: SvmCpuData) -> None:
        """svm.c: new_asid()."""
        if sd.next_asid > sd.max_asid:
            sd.asid_generation += 1
            sd.next_asid = sd.min_asid
            if self.sites.hit("new_asid:wrap_flush_all_asid"):
                vmcb.tlb_ctl = TLB_CONTROL_FLUSH_ALL_ASID
        vmcb.asid_generation = sd.asid_generation
        vcpu.arch["asid"] = sd.next_asid
        sd.next_asid += 1

    def pre_run(self, vcpu: Vcpu, vmcb: Vmcb) -> None:
        sd = self.sd[vcpu.cpu]
        if vmcb.cpu != vcpu.cpu:
            # "current_vmcb->asid_generation = 0": a new ASID on the new pCPU
            if self.sites.hit("pre_svm_run:cpu_changed_new_asid"):
                vmcb.asid_generation = 0
        if vmcb.asid_generation != sd.asid_generation:
            self.new_asid(vcpu, vmcb, sd)
        # svm_vcpu_run(): if (svm->asid != vmcb->control.asid) write it
        vmcb.asid = vcpu.arch["asid"]

    def svm_flush_tlb_asid(self, vcpu: Vcpu, guest_mode: bool | None = None) -> None:
        """svm.c: the current VMCB only ("KVM uses a single ASID for L1 and L2, and
        unconditionally does a TLB flush on both nested VM-Enter and nested VM-Exit")."""
        if vcpu.hv is not None:
            vcpu.hv.purge(vcpu)
        vmcb = self.current(vcpu)
        if not self.sites.hit("svm_flush_tlb_asid:flush_asid"):
            return
        if self.flushbyasid:
            vmcb.tlb_ctl = TLB_CONTROL_FLUSH_ASID
        else:
            vmcb.asid_generation -= 1


class SvmRfc(SvmPolicy):
    name = "svm_rfc"
    summary = "one static ASID per VM (and one nested ASID per VM), ASID->vCPU tracking per pCPU"
    SITES = SvmPolicy.SITES + ("init_vmcb:flush_on_first_use", "svm_vcpu_load:asid_vcpu_changed",
                               "pre_svm_run:cpu_changed", "pre_svm_run:fallback_asid",
                               "svm_flush_tlb_asid:flush_asid", "svm_flush_tlb_all:nested_asid",
                               "svm_flush_tlb_gva:invlpga")

    def __init__(self, host: "Host", **kw):
        super().__init__(host, **kw)
        self.free = list(range(self.min_asid + 1, self.nasids))[::-1]  # the pool; min_asid is the fallback
        self.fallback_asid = self.min_asid  # allocated in svm_hardware_setup() (RFC 09)
        self.fallback_used = False

    def alloc_asid(self) -> int:
        """kvm_tlb_tags_alloc(), or the fallback ASID when the pool is empty."""
        if self.free:
            return self.free.pop()
        self.fallback_used = True
        return self.fallback_asid

    def free_asid(self, asid: int) -> None:
        if asid != self.fallback_asid:
            self.free.append(asid)
            for sd in self.sd:  # svm_unregister_asid(): xa_erase on every pCPU
                sd.asid_vcpu.pop(asid, None)

    def vm_init(self, vm: Vm) -> None:
        vm.arch["asid"] = self.alloc_asid()
        # RFC 11/23: the L2s' ASID, one per VM, allocated when L1 enables SVM
        vm.arch["nested_asid"] = self.alloc_asid()

    def vm_destroy(self, vm: Vm) -> None:
        self.free_asid(vm.arch["asid"])
        self.free_asid(vm.arch["nested_asid"])

    def vcpu_create(self, vcpu: Vcpu) -> None:
        super().vcpu_create(vcpu)
        for name, key in (("vmcb01", "asid"), ("vmcb02", "nested_asid")):
            vmcb = vcpu.arch[name]
            vmcb.asid = self.asid_of(vcpu, vmcb)
            # init_vmcb(): "always flushed on first use in case it was used by another VM previously"
            if self.sites.hit("init_vmcb:flush_on_first_use"):
                self.vmcb_set_flush_asid(vmcb)

    def asid_of(self, vcpu: Vcpu, vmcb: Vmcb) -> int:
        return vcpu.vm.arch["nested_asid" if vmcb.name == "vmcb02" else "asid"]

    def vcpu_load(self, vcpu: Vcpu, cpu: int) -> None:
        """svm_vcpu_load() (RFC 07, 09, 10): record the vCPU against the ASID of the mode it is in
        now; another vCPU there last -> KVM_REQ_TLB_FLUSH."""
        super().vcpu_load(vcpu, cpu)
        asid = self.current(vcpu).asid
        prev = self.sd[cpu].asid_vcpu.get(asid)
        self.sd[cpu].asid_vcpu[asid] = vcpu
        if prev is not vcpu and self.sites.hit("svm_vcpu_load:asid_vcpu_changed"):
            kvm_make_request(vcpu, Req.TLB_FLUSH)

    def pre_run(self, vcpu: Vcpu, vmcb: Vmcb) -> None:
        if vmcb.cpu != vcpu.cpu and self.sites.hit("pre_svm_run:cpu_changed"):
            self.vmcb_set_flush_asid(vmcb)
        if vmcb.asid == self.fallback_asid and self.sites.hit("pre_svm_run:fallback_asid"):
            self.vmcb_set_flush_asid(vmcb)

    def vmcb_of(self, vcpu: Vcpu, guest_mode: bool) -> Vmcb:
        return vcpu.arch["vmcb02" if guest_mode else "vmcb01"]

    def svm_flush_tlb_asid(self, vcpu: Vcpu, guest_mode: bool | None = None) -> None:
        """RFC 12/13: the FIFO of that mode, then the VMCB of that mode."""
        mode = vcpu.guest_mode if guest_mode is None else guest_mode
        if vcpu.hv is not None:
            vcpu.hv.purge(vcpu, mode)
        if self.sites.hit("svm_flush_tlb_asid:flush_asid"):
            self.vmcb_set_flush_asid(self.vmcb_of(vcpu, mode))

    def flush_tlb_all(self, vcpu: Vcpu) -> None:
        """RFC 17: both ASIDs, each consumed at that VMCB's next VMRUN."""
        self.svm_flush_tlb_asid(vcpu, False)
        if self.sites.hit("svm_flush_tlb_all:nested_asid"):
            self.svm_flush_tlb_asid(vcpu, True)

    def flush_tlb_current(self, vcpu: Vcpu) -> None:
        self.svm_flush_tlb_asid(vcpu, vcpu.guest_mode)

    def flush_tlb_guest(self, vcpu: Vcpu) -> None:
        self.svm_flush_tlb_asid(vcpu, vcpu.guest_mode)


class SvmPerVmcb(SvmRfc):
    name = "svm_per_vmcb"
    summary = "a static ASID per VMCB (vmcb01, vmcb02), VMX-like flush rules, no ASID->vCPU tracking"
    SITES = tuple(s for s in SvmRfc.SITES if s != "svm_vcpu_load:asid_vcpu_changed")

    def vm_init(self, vm: Vm) -> None:
        pass

    def vm_destroy(self, vm: Vm) -> None:
        for v in vm.vcpus:
            self.free_asid(v.arch["vmcb01"].asid)
            self.free_asid(v.arch["vmcb02"].asid)

    def asid_of(self, vcpu: Vcpu, vmcb: Vmcb) -> int:
        return self.alloc_asid()

    def vcpu_load(self, vcpu: Vcpu, cpu: int) -> None:
        SvmPolicy.vcpu_load(self, vcpu, cpu)  # a VMCB owns its ASID: the pCPU check in pre_run suffices
