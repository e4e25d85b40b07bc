"""KVM's TLB policies (kvm/x86.py, svm.py, nested.py, hyperv.py) and the nested-asid scenario:
directions and invariants, every removed flush caught or argued benign, correct policies clean."""

import numpy as np
import pytest

import sevsim
from sevsim import scenarios
from sevsim.kvm.hyperv import KVM_HV_TLB_FLUSHALL_ENTRY, HvTlbFlush, kvm_hv_flush_tlb
from sevsim.scenarios.nested_asid import POLICIES
from sevsim.kvm.svm import SvmUpstream
from sevsim.kvm.x86 import FlushSites, Req, Vcpu, Vm, kvm_flush_remote_tlbs, vcpu_enter_guest_requests
from sevsim.scenarios.nested_asid import benign_reason

FAST = dict(round_trips=200, warmup_round_trips=20)


def row(t, strategy, mutation=""):
    (r,) = [r for r in t.rows if r["strategy"] == strategy and r.get("mutation", "") == mutation]
    return r


@pytest.fixture(scope="module")
def table():
    return scenarios.run("nested-asid", **FAST)


def test_rfc_flushes_less_per_transition_and_runs_faster(table):
    up, rfc, per = row(table, "svm_upstream"), row(table, "svm_rfc"), row(table, "svm_per_vmcb")
    vmx = row(table, "vmx_upstream")
    # nested VMX with EPT and vpid02 needs no flush at a transition either
    assert vmx["flushes_per_transition"] == 0 and vmx["violations"] == 0
    # upstream flushes the shared ASID at every nested transition
    assert up["flushes_per_transition"] == pytest.approx(1.0)
    assert up["entries_dropped_per_transition"] > 0
    for r in (rfc, per):
        assert r["flushes_per_transition"] < 0.05 * up["flushes_per_transition"]
        assert r["exits_per_s"] > up["exits_per_s"] and r["speedup"] > 1.0
    assert up["speedup"] == pytest.approx(1.0)
    # exit-heavy: each transition's flush makes both levels refill their hot pages
    assert up["l1_tlb_hit"] < rfc["l1_tlb_hit"] and up["l2_tlb_hit"] < rfc["l2_tlb_hit"]
    assert rfc["l2_tlb_hit"] > 0.95


NO_HOLES = dict(hazard_rfc=False, hazard_forced_leave=False)


def test_correct_policies_are_clean_through_the_hazards_but_two_holes_are_caught(table):
    clean = scenarios.run("nested-asid", **NO_HOLES, **FAST)
    for s in POLICIES:
        assert row(clean, s)["violations"] == 0, row(clean, s)
    # tlb-policies.md 7.3: a vCPU loaded in L1 mode VMRUNs its L2 where another vCPU's L2 ran
    rfc = row(table, "svm_rfc")
    assert rfc["v_foreign_vm_translation"] > 0 and "RFC 7.3" in rfc["first_violation"]
    assert row(table, "svm_per_vmcb")["violations"] == 0  # a static ASID per VMCB closes it
    assert row(table, "vmx_upstream")["violations"] == 0
    # upstream nSVM: no flush after a forced leave, and L1 shares L2's ASID ("L2 TLB entries can
    # leak into L1", RFC v2 01/25)
    up = row(table, "svm_upstream")
    assert up["v_foreign_vm_translation"] > 0 and "forced leave" in up["first_violation"]
    only_leave = scenarios.run("nested-asid", hazard_rfc=False, **FAST)
    assert row(only_leave, "svm_rfc")["violations"] == 0  # separate ASIDs: nothing leaks


def test_every_removed_flush_is_caught_or_argued_benign():
    t = scenarios.run("nested-asid", mutate=True, round_trips=100, warmup_round_trips=10)
    rows = [r for r in t.rows if r["mutation"]]
    assert {r["strategy"] for r in rows} == set(POLICIES)
    assert len(rows) == sum(len(p.SITES) for p in POLICIES.values())
    for r in rows:
        reason = benign_reason(r["strategy"], r["mutation"])
        if reason is None:
            assert r["new_violations"] > 0 and r["caught_by"], (r["strategy"], r["mutation"])
        else:
            assert r["benign"] is True and r["new_violations"] == 0 and reason, (r["strategy"], r["mutation"])
    # a missed MMU sync at nested VMRUN (D3, E2's sync half) is caught: L2's contexts declare their
    # nested truth (NPT12 then NPT01), so the walk through a stale NPT02 is a stale translation
    for strategy, site in (("svm_upstream", "nested_svm_transition_tlb_flush:mmu_sync(vmrun)"),
                           ("svm_rfc", "nested_svm_entry_tlb_flush:vmcb12_tlb_control(mmu_sync)"),
                           ("svm_per_vmcb", "nested_svm_entry_tlb_flush:vmcb12_tlb_control(mmu_sync)")):
        r = row(t, strategy, site)
        assert r["new_violations"] > 0 and "stale_translation" in r["caught_by"], (strategy, site)
    # the flushes the RFC keeps: each caught when removed (thread 3's "dropping any one ... is caught")
    for site in ("nested_svm_entry_tlb_flush:vmcb12_asid_changed", "nested_svm_entry_tlb_flush:vmcb12_tlb_control(flush)",
                 "nested_svm_exit_tlb_flush:flush_all_asid", "invlpga_interception:nested_asid",
                 "svm_flush_tlb_all:nested_asid", "svm_vcpu_load:asid_vcpu_changed",
                 "nested_vmcb02_prepare_control:keep_pending_flush", "svm_switch_vmcb:service_local_flushes",
                 "pre_svm_run:cpu_changed"):
        assert row(t, "svm_rfc", site)["new_violations"] > 0, site


def test_memory_bound_l2_keeps_its_tlb_under_the_rfc():
    t = scenarios.run("nested-asid", workload="memory-bound", l2_ws_pages=512, accesses_per_exit=256,
                      hazards=False, **NO_HOLES, round_trips=100, warmup_round_trips=20)
    up, rfc = row(t, "svm_upstream"), row(t, "svm_rfc")
    assert rfc["tlb_hit"] > up["tlb_hit"] + 0.1
    # per context: L2's own hit rate is what the shared-ASID flush costs
    assert rfc["l2_tlb_hit"] > up["l2_tlb_hit"] + 0.1 and rfc["l1_tlb_hit"] >= up["l1_tlb_hit"]
    assert rfc["walk_cycles_per_access"] < up["walk_cycles_per_access"]
    assert rfc["violations"] == 0 and up["violations"] == 0


def test_several_vcpus_sharing_pcpus_with_migrations_stay_clean():
    t = scenarios.run("nested-asid", vcpus=3, pcpus=2, migrate_every=7, **NO_HOLES, round_trips=60,
                      warmup_round_trips=5)
    for s in POLICIES:
        assert row(t, s)["violations"] == 0, row(t, s)["first_violation"]
    # vCPUs moving between pCPUs make the RFC flush too, but still less than upstream
    assert 0 < row(t, "svm_rfc")["flushes_per_transition"] < row(t, "svm_upstream")["flushes_per_transition"]


# -- upstream's ASID rules outside nesting: the hazards the nested scenario cannot show --------

class Plain:
    """Two non-nested VMs of one vCPU each, mapping the same GVAs to different pages, on tiny."""

    def __init__(self, mutations=(), nasids=0x8000, min_asid=1):
        self.h = h = sevsim.Host.from_preset("epyc-7742-2s", memory="1GiB")  # a TLB that keeps old entries
        self.p = SvmUpstream(h, mutations=mutations, nasids=nasids, min_asid=min_asid)
        self.vms, self.vcpus = [], []
        for k in range(2):
            npt = h.create_table("nested")
            gpt = h.create_table("guest")
            gva = 0x400000 + np.arange(8, dtype=np.uint64) * np.uint64(4096)
            h.map_many(gpt, gva, np.uint64(0x100000) + np.arange(8, dtype=np.uint64) * np.uint64(4096), "4K")
            h.map_many(npt, np.uint64(0x100000) + np.arange(8, dtype=np.uint64) * np.uint64(4096),
                       np.uint64((8 + 4 * k) << 20) + np.arange(8, dtype=np.uint64) * np.uint64(4096), "4K")
            vm = Vm(h, self.p, vm_id=k + 1, npt01=npt)
            v = Vcpu(vm, 0, l1_cr3=gpt, hv=HvTlbFlush())
            vm.vcpus.append(v)
            self.p.vcpu_create(v)
            self.vms.append(vm)
            self.vcpus.append(v)
        self.gva = gva

    def run(self, k, cpu):
        v = self.vcpus[k]
        if v.cpu != cpu:
            if v.cpu is not None:
                self.p.vcpu_put(v)
            self.p.vcpu_load(v, cpu)
        assert self.p.enter_guest(v) == "entered"
        self.h.access_virtual(cpu, self.gva, False)
        self.p.exit_guest(v)

    def bad(self):
        return sum(self.h.violation_counts().values())


@pytest.mark.parametrize("mutation, expect", [(None, 0), ("new_asid:wrap_flush_all_asid", "foreign_vm_translation"),
                                              ("pre_svm_run:cpu_changed_new_asid", "foreign_vm_translation")])
def test_upstream_asids_without_nesting_wrap_and_migration(mutation, expect):
    """A1 and A2 (tlb-policies.md 3.5): two VMs swap pCPUs over and over with three ASIDs, so the
    generation wraps and ASID numbers come back; without the wrap's FLUSH_ALL_ASID, or without the
    new ASID on a pCPU change, one VM hits the other's entries."""
    w = Plain(mutations=[mutation] if mutation else [], nasids=4, min_asid=1)
    for r in range(12):
        w.run(0, r % 2)
        w.run(1, (r + 1) % 2)
    if expect == 0:
        assert w.bad() == 0
    else:
        assert w.h.violation_counts()[expect] > 0


@pytest.mark.parametrize("mutation", [None, "kvm_flush_remote_tlbs:make_all_cpus_request", "svm_flush_tlb_asid:flush_asid"])
def test_upstream_remote_flush_after_an_npt_change(mutation):
    """A3: L0 remaps a page under a running VM and flushes remote TLBs; without the request (or
    without honouring it) the VM keeps using the old page."""
    w = Plain(mutations=[mutation] if mutation else [])
    w.run(0, 0)
    vm = w.vms[0]
    w.h.unmap(vm.npt01, 0x100000)
    w.h.map(vm.npt01, 0x100000, 60 << 20, "4K")
    kvm_flush_remote_tlbs(vm, 3)
    w.run(0, 0)
    assert (w.bad() > 0) == (mutation is not None)


# -- the generic layer and the Hyper-V FIFO ----------------------------------------------------

def test_requests_are_consumed_in_vcpu_enter_guest_order():
    seen = []

    class Spy:
        sites = FlushSites(["kvm_vcpu_flush_tlb_guest:flush_tlb_guest", "kvm_hv_vcpu_flush_tlb:drain"])

        def mmu_sync_roots(self, v):
            seen.append("sync")

        def flush_tlb_all(self, v):
            seen.append("all")

        def flush_tlb_current(self, v):
            seen.append("current")

        def flush_tlb_guest(self, v):
            seen.append("guest")

        def flush_tlb_gva(self, v, gva):
            seen.append(hex(gva))

    vm = Vm(None, Spy(), vm_id=1, npt01=0)
    v = Vcpu(vm, 0, l1_cr3=0, hv=HvTlbFlush())
    v.requests = Req.TLB_FLUSH | Req.TLB_FLUSH_CURRENT | Req.TLB_FLUSH_GUEST | Req.MMU_SYNC
    vcpu_enter_guest_requests(v)
    # KVM_REQ_TLB_FLUSH clears TLB_FLUSH_CURRENT ("Flushing all ASIDs flushes the current ASID")
    assert seen == ["sync", "all", "guest"] and v.requests == Req(0)
    seen.clear()
    kvm_hv_flush_tlb([v], [0x1000, 0x5002])  # 0x5002: 0x5000 and two more pages
    vcpu_enter_guest_requests(v)
    assert seen == ["0x1000", "0x5000", "0x6000", "0x7000"]


def test_hv_fifo_keeps_a_slot_for_flushall_and_overflows_into_it():
    f = HvTlbFlush()
    f.enqueue(False, list(range(0x1000, 0x1000 + 15 * 0x1000, 0x1000)))  # 15 fit (16 less the kept slot)
    assert len(f.fifo[0]) == 15 and KVM_HV_TLB_FLUSHALL_ENTRY not in f.fifo[0]
    f.enqueue(False, [0x99000])  # no room left but the kept slot: FLUSHALL
    assert list(f.fifo[0])[-1] == KVM_HV_TLB_FLUSHALL_ENTRY and len(f.fifo[0]) == 16
    f.enqueue(False, [0x98000])  # full: stays as it is ("full fifo always contains 'flush all' entry")
    assert len(f.fifo[0]) == 16 and f.stats["flushall"] == 1
    assert not f.fifo[1]  # the L2 FIFO is separate
    with pytest.raises(ValueError, match="at least 2"):
        HvTlbFlush(size=1)


def test_a_list_longer_than_15_becomes_flushall_and_a_guest_flush():
    seen = []

    class Spy:
        sites = FlushSites(["kvm_vcpu_flush_tlb_guest:flush_tlb_guest", "kvm_hv_vcpu_flush_tlb:drain"])

        def flush_tlb_guest(self, v):
            seen.append("guest")

        def flush_tlb_gva(self, v, gva):
            seen.append(gva)

        def mmu_sync_roots(self, v):
            pass

    vm = Vm(None, Spy(), vm_id=1, npt01=0)
    v = Vcpu(vm, 0, l1_cr3=0, hv=HvTlbFlush())
    kvm_hv_flush_tlb([v], list(range(0, 16 * 4096, 4096)))
    vcpu_enter_guest_requests(v)
    assert seen == ["guest"]


def test_flush_sites_reject_unknown_mutations():
    with pytest.raises(ValueError, match="not a flush site"):
        SvmUpstream(sevsim.Host.from_preset("tiny"), mutations=["nope:never"])


def test_bad_parameters():
    with pytest.raises(ValueError, match="vmcb12_tlb_control"):
        scenarios.run("nested-asid", vmcb12_tlb_control=2, **FAST)
    with pytest.raises(ValueError, match="unknown strategy 'wbinvd_all' for nested-asid"):
        scenarios.run("nested-asid", strategies="wbinvd_all", **FAST)
    with pytest.raises(ValueError, match="parameter pcpus"):
        scenarios.run("nested-asid", pcpus=0, **FAST)


# -- tlb-tagging (seed thread 4) ----------------------------------------------------------------

TAG = dict(pages=256, changed_pages=16, hv_calls=3, hv_gvas=8)


def test_an_ept_change_keeps_linear_entries_on_vmx_and_nothing_on_svm():
    t = scenarios.run("tlb-tagging", **TAG)
    vmx, svm = row(t, "vmx_upstream"), row(t, "svm_upstream")
    for r in (vmx, svm):
        assert r["cached_combined"] > 0 and r["cached_guest_physical"] > 0
        assert r["violations"] == 0, r["first_violation"]
    # SVM: the ASID flush drops every category
    assert svm["survive_linear"] == svm["survive_guest_physical"] == svm["survive_combined"] == 0
    # VMX: INVEPT drops the guest-physical and combined entries of the EPTP; the guest has no linear
    # entries to keep (none are created or used while EPT is in use, SDM vol. 3C 29.4.2)
    assert vmx["survive_guest_physical"] == vmx["survive_combined"] == 0
    assert vmx["cached_linear"] == vmx["survive_linear"] == 0
    # after a guest-table change KVM_REQ_TLB_FLUSH_GUEST is INVVPID on VMX: the guest-physical entries
    # stay and serve the refill's second stages, cheaper than SVM's refill after its ASID flush
    assert vmx["guest_flush_survive_guest_physical"] > 0 and svm["guest_flush_survive_guest_physical"] == 0
    assert vmx["guest_flush_gphys_hits"] > svm["guest_flush_gphys_hits"]
    assert vmx["guest_flush_refill_walks"] == svm["guest_flush_refill_walks"] > 0
    assert vmx["guest_flush_refill_walk_cycles"] < svm["guest_flush_refill_walk_cycles"]
    # INVVPID where INVEPT was needed keeps the guest-physical entries of the old EPT
    bad = row(t, "vmx_invvpid")
    assert bad["survive_guest_physical"] == bad["cached_guest_physical"] > 0
    # ... and the next combined miss takes its second stage from them: a stale translation
    assert bad["verdict"] == "UNSAFE" and bad["v_stale_translation"] > 0


@pytest.mark.parametrize("ept_flush", ["current", "remote"])
def test_the_remote_flush_and_the_current_flush_both_drop_what_the_change_made_stale(ept_flush):
    t = scenarios.run("tlb-tagging", ept_flush=ept_flush, **TAG)
    for s in ("vmx_upstream", "svm_upstream"):
        assert row(t, s)["violations"] == 0 and row(t, s)["survive_combined"] == 0
    # INVVPID in place of either INVEPT leaves the old guest-physical entries, and they are used
    bad = row(t, "vmx_invvpid")
    assert bad["survive_guest_physical"] > 0 and bad["v_stale_translation"] > 0


def test_hv_fifo_purge_rule_and_overflow():
    """SVM's flush of the current ASID is a superset of the queued per-page flushes, so it purges
    the FIFO (svm_flush_tlb_current); VMX's INVEPT is not (it keeps linear entries), so the FIFO
    drains page by page; a call of more than 15 entries is a FLUSHALL."""
    t = scenarios.run("tlb-tagging", strategies=["vmx_upstream", "svm_upstream"], **TAG)
    n = TAG["hv_calls"] * TAG["hv_gvas"]
    assert row(t, "svm_upstream")["hv_purged"] == n and row(t, "svm_upstream")["hv_gva_flushes"] == 0
    assert row(t, "vmx_upstream")["hv_gva_flushes"] == n and row(t, "vmx_upstream")["hv_purged"] == 0
    no_flush = scenarios.run("tlb-tagging", strategies=["svm_upstream"], hv_then_flush=False, **TAG)
    assert row(no_flush, "svm_upstream")["hv_gva_flushes"] == n  # nothing covered them: drained
    big = scenarios.run("tlb-tagging", strategies=["vmx_upstream"], hv_then_flush=False,
                        **{**TAG, "hv_gvas": 16})
    r = row(big, "vmx_upstream")
    assert r["hv_flushall"] == TAG["hv_calls"] and r["hv_gva_flushes"] == 0 and r["violations"] == 0
    for r in (*t.rows, *no_flush.rows):
        assert r["violations"] == 0, r["first_violation"]
