"""The TLB hazards of issue 11, each as a named test through the Python API: per-CPU CR3, per-thread
TLB tags, write permission, partial translations, nested truth. Each fails on the engine before the
issue or on the bug its docstring names."""

import numpy as np
import pytest

import sevsim

VA = 0x400000



def remap(h, table, addr, target):
    """Point `addr` of `table` at `target` (an edit: no TLB is touched)."""
    h.unmap(table, addr)
    h.map(table, addr, target)

def svm_guest(h, asid, hpa, vm, gpa=0x1000):
    gt = h.create_table("guest")
    h.map(gt, VA, gpa)
    nt = h.create_table("nested")
    h.map(nt, gpa, hpa)
    return h.create_context("svm", gt, nested=nt, tag=asid, vm=vm), gt, nt


# -- CR3 and PCID are per CPU ------------------------------------------------------------------

def test_mov_cr3_on_cpu0_does_not_move_cpu1():
    """Two CPUs in one context; CPU 0 loads another guest table. CPU 1 keeps translating through
    the table it entered with. (Before issue 11 mov_cr3 rewrote the shared context, so CPU 1 moved.)"""
    h = sevsim.Host.from_preset("tiny")
    ctx, gt, nt = svm_guest(h, 1, 0x30000, vm=1)
    gt2 = h.create_table("guest")
    h.map(gt2, VA, 0x2000)
    h.map(nt, 0x2000, 0x50000)
    for cpu in (0, 1):
        assert h.vmrun(cpu, ctx, 0) == "entered"
    h.mov_cr3(0, gt2, pcid=3)
    assert h.cpu_cr3(0) == (gt2, 3) and h.cpu_cr3(1) == (gt, 0)
    assert h.translate(0, VA) == (0x50000, 0)
    assert h.translate(1, VA) == (0x30000, 0)
    assert sum(h.violation_counts().values()) == 0
    # the exit stores CPU 0's CR3 into the context (the VMCB save area): the next entry loads it
    h.vmexit(0)
    assert h.vmrun(2, ctx, 0) == "entered"
    assert h.cpu_cr3(2) == (gt2, 3) and h.cpu_cr3(1) == (gt, 0)


def test_mov_cr3_noflush_is_not_a_flush():
    """A MOV to CR3 with bit 63 set keeps the PCID's translations: it is no flush op and costs the
    CR3 load (tlb.cr3_load), not a flush (tlb.flush). (It was counted as a flush op with the flush's
    cycles, so a PCID policy's flush count included its no-flush switches.)"""
    h = sevsim.Host.from_preset("tiny")
    ht = h.create_table("host")
    h.map(ht, VA, 0x30000)
    h.set_host_context(0, h.create_context("host", ht, pcid=7))
    assert h.translate(0, VA) == (0x30000, 0)
    before = h.invalidation_stats()["mov_cr3"]
    c0 = h.cycles(0)
    assert h.mov_cr3(0, ht, pcid=7, noflush=True) == 0
    assert h.invalidation_stats()["mov_cr3"] == before
    assert h.cycles(0) - c0 == h.tlb_cost["cr3_load"] > 0
    assert h.translate(0, VA) == (0x30000, 0)
    # the flushing form drops the entry and counts one op
    c0 = h.cycles(0)
    n = h.mov_cr3(0, ht, pcid=7)
    assert n >= 1  # its L1 and L2 TLB entries
    assert h.invalidation_stats()["mov_cr3"] == (before[0] + 1, before[1] + n)
    assert h.cycles(0) - c0 == h.tlb_cost["flush"]


def test_mov_cr3_noflush_without_pcide_is_a_general_protection_fault():
    """With CR4.PCIDE clear, CR3 bit 63 is reserved: MOV to CR3 with it set is #GP(0) (SDM vol. 2B
    MOV CR3; KVM's kvm_set_cr3() strips X86_CR3_PCID_NOFLUSH only with PCIDE): reported as None
    with the CPU's fault counted, CR3 and the TLB unchanged. (It was accepted as a no-flush load.)
    A PCID other than 0 is no PCID there: an invalid argument, as is a pcide=False context with one."""
    h = sevsim.Host.from_preset("tiny")
    ht, ht2 = h.create_table("host"), h.create_table("host")
    h.map(ht, VA, 0x30000)
    h.set_host_context(0, h.create_context("host", ht, pcide=False))
    assert h.context(h.current_context(0))["pcide"] is False
    assert h.translate(0, VA) == (0x30000, 0)
    faults, c0 = int(h.counters["faults"][0]), h.cycles(0)
    assert h.mov_cr3(0, ht2, noflush=True) is None
    assert int(h.counters["faults"][0]) == faults + 1 and h.cycles(0) == c0
    assert h.cpu_cr3(0) == (ht, 0) and h.translate(0, VA) == (0x30000, 0)
    # without bit 63 the load flushes PCID 0's non-global entries, as ever
    assert h.mov_cr3(0, ht) >= 1
    with pytest.raises(ValueError, match="pcid = 3"):
        h.mov_cr3(0, ht, pcid=3)
    with pytest.raises(ValueError, match="pcid = 2"):
        h.create_context("host", ht, pcid=2, pcide=False)
    # the default context runs with PCIDE, as Linux does on CPUs with PCID
    assert h.context(0)["pcide"] is True
    # INVPCID type 0 or 1 naming a PCID other than 0 without PCIDE: #GP (SDM vol. 2A INVPCID)
    h.translate(0, VA)
    faults = int(h.counters["faults"][0])
    assert h.invpcid(0, 1, pcid=5) is None and h.invpcid(0, 0, pcid=5, va=VA) is None
    assert int(h.counters["faults"][0]) == faults + 2 and h.translate(0, VA) == (0x30000, 0)
    assert h.invpcid(0, 1, pcid=0) >= 1


def test_vmexit_returns_to_the_cpus_own_host_context():
    """A CPU given its own host context returns to it, with the host CR3 it had at VMRUN.
    (Before issue 11 every vmexit went to context 0.)"""
    h = sevsim.Host.from_preset("tiny")
    ht = h.create_table("host")
    hc = h.create_context("host", ht, pcid=7)
    ctx, _, _ = svm_guest(h, 1, 0x30000, vm=1)
    h.set_host_context(2, hc)
    assert h.cpu_cr3(2) == (ht, 7)
    h.mov_cr3(2, 0, pcid=9, noflush=True)
    h.vmrun(2, ctx)
    h.vmexit(2)
    assert h.current_context(2) == hc and h.cpu_cr3(2) == (0, 9)
    h.vmrun(3, ctx)
    h.vmexit(3)
    assert h.current_context(3) == 0 and h.cpu_cr3(3) == (0, 0)


# -- per-thread TLB tags ------------------------------------------------------------------------

def test_presets_tag_tlb_entries_by_smt_thread():
    for name, _ in sevsim.Host.presets():
        assert sevsim.Host.from_preset(name, memory="1GiB").features["tlb_smt_tagged"] is True


@pytest.mark.parametrize("tagged", [True, False])
def test_flush_on_one_smt_thread_leaves_the_siblings_entries(tagged):
    """CPUs 0 and 4 are SMT siblings on tiny. A TLB_CONTROL=3 flush of ASID 1 on CPU 0 drops CPU 0's
    entries only where entries carry the thread; shared entries go for both. (Before issue 11 the
    flush always dropped the sibling's entries.)"""
    h = sevsim.Host.from_preset("tiny", overrides={"tlb": {"smt_tagged": tagged}})
    ctx, _, _ = svm_guest(h, 1, 0x30000, vm=1)
    for cpu in (0, 4):
        h.vmrun(cpu, ctx, 0)
        h.translate(cpu, VA)
    threads = sorted({e["thread"] for e in h.tlb_entries(0)})
    assert threads == ([0, 1] if tagged else [0])
    before = h.counters["tlb_misses"][4]
    h.vmexit(0)
    h.vmrun(0, ctx, 3)
    left = h.tlb_entries(4)
    assert {e["thread"] for e in left} == ({1} if tagged else set())
    assert h.translate(4, VA) == (0x30000, 0)
    assert h.counters["tlb_misses"][4] - before == (0 if tagged else 1)


def test_smt_siblings_do_not_hit_each_others_entries():
    """Two VMs hold ASID 1 on the sibling threads of one core (legal: KVM's ASIDs are per logical
    CPU). With thread-tagged entries neither sees the other's translation (G1 in tlb-policies.md:
    the shared TLB gave a false foreign_vm_translation and stale_translation)."""
    h = sevsim.Host.from_preset("tiny")
    a, _, _ = svm_guest(h, 1, 0x30000, vm=1)
    b, _, _ = svm_guest(h, 1, 0x50000, vm=2)
    h.vmrun(0, a)
    h.vmrun(4, b)
    assert h.translate(0, VA) == (0x30000, 0)
    assert h.translate(4, VA) == (0x50000, 0)
    assert sum(h.violation_counts().values()) == 0
    shared = sevsim.Host.from_preset("tiny", overrides={"tlb": {"smt_tagged": False}})
    a, _, _ = svm_guest(shared, 1, 0x30000, vm=1)
    b, _, _ = svm_guest(shared, 1, 0x50000, vm=2)
    shared.vmrun(0, a)
    shared.vmrun(4, b)
    shared.translate(0, VA)
    assert shared.translate(4, VA) == (0x30000, 0)
    assert shared.violation_counts()["foreign_vm_translation"] == 1


# -- write permission ---------------------------------------------------------------------------

def test_write_through_a_read_only_leaf_is_a_recorded_fault():
    """A write through a read-only guest or nested leaf faults: None / level 7, counted in
    write_faults, the memory untouched; a read goes through. (Before issue 11 leaves had no R/W bit.)"""
    for ro_stage in ("guest", "nested"):
        h = sevsim.Host.from_preset("tiny")
        gt = h.create_table("guest")
        nt = h.create_table("nested")
        h.map(gt, VA, 0x1000, writable=ro_stage != "guest")
        h.map(nt, 0x1000, 0x30000, writable=ro_stage != "nested")
        ctx = h.create_context("svm", gt, nested=nt, tag=1, vm=1)
        h.vmrun(0, ctx)
        assert h.translate(0, VA, write=True) is None
        r = h.access_virtual(0, np.array([VA, VA], np.uint64), np.array([False, True]), return_levels=True)
        assert r["levels"][1] == 7 and r["page_fault"] == 1
        assert h.counters["write_faults"][0] == 2 and h.counters["writes"][0] == 0
        assert not any(e["writable"] for e in h.tlb_entries(0) if e["category"] == "combined")
        assert sum(h.violation_counts().values()) == 0


def test_write_through_a_stale_writable_entry_is_caught():
    """KVM write-protects a page for dirty logging (the leaf becomes read-only) and must flush: a
    guest write through the writable TLB entry left behind is a stale translation; a read through
    it is not; after INVLPGA the write faults as it should."""
    h = sevsim.Host.from_preset("tiny")
    ctx, gt, nt = svm_guest(h, 1, 0x30000, vm=1)
    h.vmrun(0, ctx)
    assert h.translate(0, VA, write=True) == (0x30000, 0)
    h.unmap(nt, 0x1000)
    h.map(nt, 0x1000, 0x30000, writable=False)
    assert h.translate(0, VA) == (0x30000, 0)
    assert sum(h.violation_counts().values()) == 0
    assert h.translate(0, VA, write=True) == (0x30000, 0)
    (v,) = h.violations
    assert (v.cause, v.va, v.pa, v.ctx) == ("stale_translation", VA, 0x30000, ctx)
    assert h.translate(0, VA, write=True) == (0x30000, 0)  # checked again, not refreshed
    assert h.violation_counts()["stale_translation"] == 2
    # INVLPGA is not enough: the NPT (guest-physical) entry it keeps is still writable
    h.vmexit(0)
    h.invlpga(0, VA, 1)
    h.vmrun(0, ctx)
    assert h.translate(0, VA) == (0x30000, 0)
    assert h.violation_counts()["stale_translation"] == 2
    assert h.translate(0, VA, write=True) == (0x30000, 0)
    assert h.violation_counts()["stale_translation"] == 3
    # TLB_CONTROL=3 drops the ASID's guest-physical entries too: now the write faults
    h.vmexit(0)
    h.vmrun(0, ctx, 3)
    assert h.translate(0, VA, write=True) is None
    assert h.counters["write_faults"][0] == 1 and h.violation_counts()["stale_translation"] == 3


# -- contexts can change; counters per context --------------------------------------------------

def test_a_new_asid_takes_effect_at_the_next_vmrun_and_the_oracle_follows():
    """KVM gives a VMCB a new ASID (set_context): the CPU running it keeps the old one until it
    re-enters; then the old ASID's entries are not used. Re-pointing the context at another VM
    makes a hit on the first VM's entries a foreign_vm_translation."""
    h = sevsim.Host.from_preset("tiny")
    ctx, _, _ = svm_guest(h, 1, 0x30000, vm=1)
    h.vmrun(0, ctx)
    h.translate(0, VA)
    h.set_context(ctx, tag=2)
    assert h.context(ctx)["tag"] == 2
    h.translate(0, VA)
    assert h.counters["tlb_l1_hits"][0] == 1  # still ASID 1 until the next VMRUN
    h.vmexit(0)
    h.vmrun(0, ctx)
    h.translate(0, VA)
    assert h.counters["tlb_misses"][0] == 2
    assert {e["tag"] for e in h.tlb_entries(0)} == {1, 2}
    h.vmexit(0)
    h.set_context(ctx, vm=7)
    h.vmrun(0, ctx)
    h.translate(0, VA)
    assert h.violation_counts()["foreign_vm_translation"] == 1


def test_a_context_can_move_to_another_nested_table():
    h = sevsim.Host.from_preset("tiny")
    ctx, _, nt = svm_guest(h, 1, 0x30000, vm=1)
    nt2 = h.create_table("nested")
    h.map(nt2, 0x1000, 0x50000)
    h.set_context(ctx, nested=nt2)
    h.vmrun(0, ctx, 3)
    assert h.translate(0, VA) == (0x50000, 0)
    assert h.context(ctx)["nested"] == nt2


def test_counters_per_context_separate_l1_and_l2_guests():
    """Two guests on one CPU: each context's TLB hits, misses and walks are its own."""
    h = sevsim.Host.from_preset("tiny")
    l1, _, _ = svm_guest(h, 1, 0x30000, vm=1)
    l2, _, _ = svm_guest(h, 2, 0x50000, vm=1)
    h.vmrun(0, l1)
    h.access_virtual(0, np.full(5, VA, np.uint64))
    h.vmexit(0)
    h.vmrun(0, l2)
    h.access_virtual(0, np.full(3, VA, np.uint64))
    assert h.context_counters(l1) == dict(tlb_l1_hits=4, tlb_l2_hits=0, tlb_misses=1, gphys_hits=0, page_faults=0,
                                          write_faults=0)
    assert h.context_counters(l2)["tlb_l1_hits"] == 2 and h.context_counters(l2)["tlb_misses"] == 1
    assert h.context_counters()["tlb_l1_hits"].tolist() == [0, 4, 2]


# -- bad input to the new calls: ValueError/TypeError naming the argument, the engine unchanged --

@pytest.mark.parametrize("call, exc, pattern", [
    (lambda h, c: h.set_context(99, tag=1), ValueError, r"ctx = 99: no such context"),
    (lambda h, c: h.set_context(c, tag=70000), ValueError, r"tag = 70000 is out of range"),
    (lambda h, c: h.set_context(c, tag=40000), ValueError, r"tag = 40000: ASID out of range"),
    (lambda h, c: h.set_context(c, nested=0), ValueError, r"nested = 0 is not a nested"),
    (lambda h, c: h.set_context(c, nested=50), ValueError, r"nested = 50: no such table"),
    (lambda h, c: h.set_context(0, nested=1), ValueError, r"nested.*host context"),
    (lambda h, c: h.set_context(0, tag=1), ValueError, r"tag.*host context has ASID/VPID 0"),
    (lambda h, c: h.set_context(c, key=1 << 20), ValueError, r"key"),
    (lambda h, c: h.set_context(c, vm="a"), TypeError, r"vm must be an int"),
    (lambda h, c: h.context(5), ValueError, r"ctx = 5: no such context"),
    (lambda h, c: h.context_counters(-1), ValueError, r"ctx = -1"),
    (lambda h, c: h.cpu_cr3(8), ValueError, r"cpu = 8"),
    (lambda h, c: h.translate(0, VA, write=None), TypeError, r"write"),
])
def test_bad_context_calls(call, exc, pattern):
    h = sevsim.Host.from_preset("tiny")
    ctx, _, nt = svm_guest(h, 1, 0x30000, vm=1)
    before = [h.context(i) for i in (0, ctx)]
    with pytest.raises(exc, match=pattern):
        call(h, ctx)
    assert [h.context(i) for i in (0, ctx)] == before


# -- cached partial translations are used -------------------------------------------------------

def vmx_aliasing_guest(h):
    """A VMX guest whose GVAs VA and VA2 both map GPA 0x1000 (Sean's aliasing example), EPT ->
    HPA 0x30000."""
    gt = h.create_table("guest")
    h.map(gt, VA, 0x1000)
    h.map(gt, VA2, 0x1000)
    ept = h.create_table("ept")
    h.map(ept, 0x1000, 0x30000)
    return h.create_context("vmx", gt, nested=ept, tag=1, vm=1), gt, ept


VA2 = 0x800000


def test_invvpid_after_an_ept_change_leaves_a_guest_physical_entry_that_is_used_and_caught():
    """KVM changes an EPT leaf and flushes with INVVPID (mutation C2): INVVPID never drops
    guest-physical mappings (SDM vol. 3C 29.4.3.1), so the next walk through that GPA takes the
    old HPA from the cached entry: a stale translation. (Before issue 11 the cached entry only
    lowered the walk's cost and the walk returned the new HPA: nothing was caught.)"""
    h = sevsim.Host.from_preset("tiny")
    ctx, _, ept = vmx_aliasing_guest(h)
    h.vmentry(0, ctx)
    assert h.translate(0, VA) == (0x30000, 0)
    h.unmap(ept, 0x1000)
    h.map(ept, 0x1000, 0x50000)
    h.invvpid(0, 1, 1)
    assert h.translate(0, VA2) == (0x30000, 0)  # what the hardware may do
    (v,) = h.violations
    assert (v.cause, v.va, v.pa, v.true_pa) == ("stale_translation", VA2, 0x30000, 0x50000)
    assert h.counters["gphys_hits"][0] == 1
    # the combined entry made from it is suspect too: its next hit is checked and caught again
    h.translate(0, VA2)
    assert h.violation_counts()["stale_translation"] == 2
    # INVEPT is the right flush: the guest-physical and combined entries go
    h.invept(0, 1, ept)
    assert h.translate(0, VA2) == (0x50000, 0) and h.violation_counts()["stale_translation"] == 2


def test_invvpid_after_a_guest_table_change_keeps_guest_physical_entries_that_serve_the_next_walk():
    """The other half of seed thread 4: after a guest-table change INVVPID suffices, and the
    guest-physical entries it keeps serve the next walk (the nested half is not walked again:
    walk_guest_only instead of walk_nested), with no violation."""
    h = sevsim.Host.from_preset("tiny")
    ctx, gt, _ = vmx_aliasing_guest(h)
    h.vmentry(0, ctx)
    h.translate(0, VA)
    full = int(h.counters["walk_cycles"][0])  # a two-dimensional walk
    h.unmap(gt, VA)
    h.map(gt, VA, 0x1000)  # the same GPA, a new leaf
    h.invvpid(0, 1, 1)
    assert h.translate(0, VA) == (0x30000, 0)
    assert 0 < h.counters["walk_cycles"][0] - full < full
    assert h.counters["gphys_hits"][0] == 1 and sum(h.violation_counts().values()) == 0


def test_invept_after_an_ept_change_keeps_linear_entries_that_serve_the_next_walk():
    """INVEPT drops guest-physical and combined mappings of the EP4TA and keeps linear ones (SDM
    vol. 3C 29.4.3.1): the host's linear entries serve its next translation without a walk, and the
    guest's next walk sees the new EPT leaf. (The SDM creates and uses no linear mappings while EPT
    is in use (29.4.2), so a VMX guest's own walk never starts from one: see the report.)"""
    h = sevsim.Host.from_preset("tiny")
    h.map(0, 0x7000_0000, 0x70000)
    h.translate(0, 0x7000_0000)
    ctx, _, ept = vmx_aliasing_guest(h)
    h.vmentry(0, ctx)
    h.translate(0, VA)
    h.unmap(ept, 0x1000)
    h.map(ept, 0x1000, 0x50000)
    h.invept(0, 1, ept)
    assert h.translate(0, VA2) == (0x50000, 0)
    h.vmexit(0)
    misses = h.counters["tlb_misses"][0]
    assert h.translate(0, 0x7000_0000) == (0x70000, 0)
    assert h.counters["tlb_misses"][0] == misses
    assert sum(h.violation_counts().values()) == 0


def test_invlpga_after_an_npt_change_leaves_the_nested_entry_that_is_used_and_caught():
    """The AMD analogue: INVLPGA does not touch NPT (guest-physical) translations (APM INVLPGA;
    tlb-policies.md section 1), so after an NPT change INVLPGA of the guest's pages is not enough;
    TLB_CONTROL=3 (FLUSH_ASID) is."""
    h = sevsim.Host.from_preset("tiny")
    ctx, gt, nt = svm_guest(h, 1, 0x30000, vm=1)
    h.map(gt, VA2, 0x1000)
    h.vmrun(0, ctx)
    h.translate(0, VA)
    h.unmap(nt, 0x1000)
    h.map(nt, 0x1000, 0x50000)
    h.vmexit(0)
    for va in (VA, VA2):
        h.invlpga(0, va, 1)
    h.vmrun(0, ctx)
    assert h.translate(0, VA2) == (0x30000, 0)
    assert h.violation_counts()["stale_translation"] == 1
    h.vmexit(0)
    h.vmrun(0, ctx, 3)
    assert h.translate(0, VA2) == (0x50000, 0)
    assert h.violation_counts()["stale_translation"] == 1


# -- nested truth: L2 judged against L2's table, NPT12/EPT12 and NPT01/EPT01 ----------------------

def nested_l2(h, mode="svm", chain=True):
    """An L2 guest: its table maps VA -> L2 GPA 0x1000; L1's NPT12 maps that to L1 GPA 0x5000;
    L0's NPT01 maps L1 GPAs 0x5000 -> 0x30000 and 0x6000 -> 0x40000; KVM's shadow NPT02 (what the
    hardware walks) holds the composition 0x1000 -> 0x30000."""
    gt = h.create_table("guest")
    h.map(gt, VA, 0x1000)
    npt12 = h.create_table("guest")
    h.map(npt12, 0x1000, 0x5000)
    npt01 = h.create_table("nested")
    h.map(npt01, 0x5000, 0x30000)
    h.map(npt01, 0x6000, 0x40000)
    npt02 = h.create_table("nested")
    h.map(npt02, 0x1000, 0x30000)
    l2 = h.create_context(mode, gt, nested=npt02, tag=2, vm=2)
    if chain:
        h.set_nested_truth(l2, npt12, npt01)
    return l2, npt12, npt02


def enter(h, ctx, tlb_control=0):
    h.vmexit(0)
    if h.context(ctx)["mode"] == "svm":
        assert h.vmrun(0, ctx, tlb_control) == "entered"
    else:
        h.vmentry(0, ctx)


@pytest.mark.parametrize("chain", [True, False])
def test_a_missed_shadow_sync_after_an_npt12_edit_is_caught(chain):
    """L1 remaps L2's GPA in NPT12 and asks for a flush (vmcb12 TLB_CONTROL=3, which KVM turns into
    a flush of L2's ASID); KVM flushes but forgets KVM_REQ_MMU_SYNC (tlb-policies.md D3, the sync
    half of E2), so NPT02 still maps the old page. With the chain declared the walk through the
    stale shadow is a stale translation; without it (the engine before issue 11: its truth was
    the shadow) nothing is seen. After the sync the walk agrees again."""
    h = sevsim.Host.from_preset("tiny")
    l2, npt12, npt02 = nested_l2(h, chain=chain)
    enter(h, l2)
    assert h.translate(0, VA) == (0x30000, 0)
    h.unmap(npt12, 0x1000)
    h.map(npt12, 0x1000, 0x6000)  # L1's edit; NPT02 not synced
    enter(h, l2, 3)
    assert h.translate(0, VA) == (0x30000, 0)  # the hardware walks the stale shadow
    if not chain:
        assert sum(h.violation_counts().values()) == 0
        return
    (v,) = h.violations
    assert (v.cause, v.va, v.pa, v.true_pa, v.ctx) == ("stale_translation", VA, 0x30000, 0x40000, l2)
    # the entry filled from the stale shadow is suspect: its next hit is checked and caught again
    h.translate(0, VA)
    assert h.violation_counts()["stale_translation"] == 2
    # the sync (NPT02 recomputed) and the flush: correct again
    h.unmap(npt02, 0x1000)
    h.map(npt02, 0x1000, 0x40000)
    enter(h, l2, 3)
    assert h.translate(0, VA) == (0x40000, 0)
    h.translate(0, VA)
    assert h.violation_counts()["stale_translation"] == 2


@pytest.mark.parametrize("mode", ["svm", "vmx"])
def test_a_stale_l2_entry_after_an_npt12_edit_is_caught_even_with_the_shadow_synced(mode):
    """KVM syncs NPT02 after L1's NPT12 edit but does not flush L2's entries (no TLB_CONTROL,
    no INVEPT): the L2 combined entry still gives the old page, caught at its next hit; so is a
    guest-physical entry kept for another GVA aliasing the same L2 GPA."""
    h = sevsim.Host.from_preset("tiny")
    l2, npt12, npt02 = nested_l2(h, mode)
    gt = h.context(l2)["cr3"]
    h.map(gt, VA2, 0x1000)
    enter(h, l2)
    assert h.translate(0, VA) == (0x30000, 0)
    remap(h, npt12, 0x1000, 0x6000)
    remap(h, npt02, 0x1000, 0x40000)
    enter(h, l2)
    assert h.translate(0, VA) == (0x30000, 0)
    assert h.translate(0, VA2) == (0x30000, 0)  # second stage from the kept guest-physical entry
    assert [(v.cause, v.va, v.true_pa) for v in h.violations] == [
        ("stale_translation", VA, 0x40000), ("stale_translation", VA2, 0x40000)]


def test_an_npt01_edit_under_l2_memory_is_judged_through_the_chain():
    """L0 moves an L1 page that backs L2 memory (NPT01 remap) and rebuilds the shadow, but L2's
    entries are not flushed (E4's trigger): caught through the chain although NPT02 agrees."""
    h = sevsim.Host.from_preset("tiny")
    l2, _, npt02 = nested_l2(h)
    npt01 = h.context(l2)["nested01"]
    enter(h, l2)
    h.translate(0, VA)
    remap(h, npt01, 0x5000, 0x50000)
    remap(h, npt02, 0x1000, 0x50000)
    enter(h, l2)
    assert h.translate(0, VA) == (0x30000, 0)
    assert [(v.cause, v.true_pa) for v in h.violations] == [("stale_translation", 0x50000)]
    enter(h, l2, 3)
    assert h.translate(0, VA) == (0x50000, 0) and len(h.violations) == 1


def test_a_write_through_a_shadow_writable_where_npt12_is_read_only_is_caught():
    """L1 write-protects L2's page in NPT12 (its dirty logging) and KVM leaves the shadow writable:
    a write by L2 goes through, against the truth; a read does not count."""
    h = sevsim.Host.from_preset("tiny")
    l2, npt12, _ = nested_l2(h)
    h.unmap(npt12, 0x1000)
    h.map(npt12, 0x1000, 0x5000, writable=False)
    enter(h, l2)
    assert h.translate(0, VA) == (0x30000, 0) and not h.violations
    assert h.translate(0, VA, write=True) == (0x30000, 0)
    assert [(v.cause, v.true_pa) for v in h.violations] == [("stale_translation", 0x30000)]


def test_the_chain_is_reported_and_cleared():
    h = sevsim.Host.from_preset("tiny")
    l2, npt12, npt02 = nested_l2(h)
    c = h.context(l2)
    assert (c["nested"], c["nested12"]) == (npt02, npt12) and c["nested01"] is not None
    h.set_nested_truth(l2, None, None)
    assert (h.context(l2)["nested12"], h.context(l2)["nested01"]) == (None, None)
    assert h.context(0)["nested12"] is None


@pytest.mark.parametrize("call, pattern", [
    (lambda h, l2, t: h.set_nested_truth(0, t["npt12"], t["npt01"]), r"ctx = 0 is a host context"),
    (lambda h, l2, t: h.set_nested_truth(99, t["npt12"], t["npt01"]), r"ctx = 99: no such context"),
    (lambda h, l2, t: h.set_nested_truth(l2, 77, t["npt01"]), r"nested12 = 77: no such table"),
    (lambda h, l2, t: h.set_nested_truth(l2, t["npt12"], 77), r"nested01 = 77: no such table"),
    (lambda h, l2, t: h.set_nested_truth(l2, t["npt01"], t["npt01"]), r"nested12 = \d+ is not a guest table"),
    (lambda h, l2, t: h.set_nested_truth(l2, t["npt12"], t["npt12"]), r"nested01 = \d+ is not a nested"),
    (lambda h, l2, t: h.set_nested_truth(l2, t["gt"], t["npt01"]), r"nested12 = \d+ is the context's own guest table"),
    (lambda h, l2, t: h.set_nested_truth(l2, t["npt12"], t["npt02"]), r"nested01 = \d+ is the context's own nested table"),
    (lambda h, l2, t: h.set_nested_truth(l2, t["npt12"], None), r"give both tables"),
    (lambda h, l2, t: h.set_nested_truth(l2, -1, t["npt01"]), r"nested12"),
    (lambda h, l2, t: h.set_nested_truth(l2, "x", t["npt01"]), r"nested12"),
])
def test_bad_chains_are_refused_and_the_engine_is_unchanged(call, pattern):
    h = sevsim.Host.from_preset("tiny")
    l2, npt12, npt02 = nested_l2(h, chain=False)
    t = dict(gt=h.context(l2)["cr3"], npt12=npt12, npt02=npt02, npt01=npt02 - 1)
    before = [h.context(i) for i in range(l2 + 1)]
    with pytest.raises((ValueError, TypeError), match=pattern):
        call(h, l2, t)
    assert [h.context(i) for i in range(l2 + 1)] == before


def test_the_shadow_cannot_become_the_chains_nested01():
    h = sevsim.Host.from_preset("tiny")
    l2, npt12, npt02 = nested_l2(h)
    npt01 = h.context(l2)["nested01"]
    with pytest.raises(ValueError, match=r"nested = \d+ is the context's declared nested01"):
        h.set_context(l2, nested=npt01)
    assert h.context(l2)["nested"] == npt02


# -- large entries are vouched for only by a truth as coarse; faults drop what they used --------

@pytest.mark.parametrize("first", [[], [0]])
def test_one_comparison_does_not_vouch_for_a_larger_entry(first):
    """A 2 MiB entry whose leaf was re-made as 4 KiB leaves (page 0 kept, page 1 moved, no flush):
    agreement at page 0 said nothing of page 1, yet refreshed the whole entry, so touching page 0
    first hid the stale page 1 (a second reader's finding). Page 1 is caught in either order."""
    M, base = 0x200000, 0x40000000
    h = sevsim.Host.from_preset("tiny")
    ht = h.create_table("host")
    h.set_host_context(0, h.create_context("host", ht))
    h.map(ht, base, 2 * M, "2M")
    h.translate(0, base)
    h.unmap(ht, base)
    h.map(ht, base, 2 * M)
    h.map(ht, base + 0x1000, 4 * M)
    for p in first:
        assert h.translate(0, base + p * 0x1000) == (2 * M + p * 0x1000, 0)
    assert h.translate(0, base + 0x1000) == (2 * M + 0x1000, 0)  # the stale entry is used ...
    (v,) = h.violations                                           # ... and caught
    assert (v.cause, v.va, v.pa, v.true_pa) == ("stale_translation", base + 0x1000, 2 * M + 0x1000, 4 * M)


@pytest.mark.parametrize("guest_leaf", ["4K", "2M"])
@pytest.mark.parametrize("first", [[], [0]])
def test_a_2m_shadow_over_a_4k_chain_is_caught_wherever_it_disagrees(guest_leaf, first):
    """KVM's shadow NPT02 maps a 2 MiB leaf where L1's NPT12 (2 MiB) over NPT01 (4 KiB, scattered)
    says each 4 KiB page goes elsewhere. One comparison at page 0 vouched for the whole 2 MiB
    guest-physical (or combined) entry, so page 1 slipped through after page 0; now each page the
    chain maps elsewhere is caught, whatever was touched first."""
    M, base = 0x200000, 0x40000000
    h = sevsim.Host.from_preset("tiny")
    gt = h.create_table("guest")
    if guest_leaf == "2M":
        h.map(gt, base, M, "2M")
    else:
        h.map(gt, base, M)
        h.map(gt, base + 0x1000, M + 0x1000)
    t12 = h.create_table("guest")
    h.map(t12, M, 2 * M, "2M")
    t01 = h.create_table("nested")
    for i in range(512):
        h.map(t01, 2 * M + i * 0x1000, 0x1000000 + (i * 7919 % 512) * 0x1000)
    t02 = h.create_table("nested")
    h.map(t02, M, 0x1000000, "2M")  # a shadow KVM did not build from the chain: right at page 0 only
    ctx = h.create_context("svm", gt, nested=t02, tag=1, vm=1)
    h.set_nested_truth(ctx, t12, t01)
    h.vmrun(0, ctx)
    for p in first:
        h.translate(0, base + p * 0x1000)
    assert sum(h.violation_counts().values()) == 0
    assert h.translate(0, base + 0x1000) == (0x1001000, 0)
    (v,) = h.violations
    assert (v.cause, v.va, v.true_pa) == ("stale_translation", base + 0x1000, 0x1000000 + 7919 % 512 * 0x1000)


@pytest.mark.parametrize("stage", ["guest", "nested"])
def test_a_write_fault_drops_the_entries_it_used(stage):
    """SDM vol. 3A 4.10.4.1 (a #PF invalidates the TLB entries for its linear address) and vol.
    3C 29.4.3 (an EPT violation those for its guest-physical and linear address): a write through
    a read-only entry faults once, and once the leaf is writable the retry walks and succeeds, as
    KVM's fast page fault path relies on when it makes a leaf writable without a flush. (The engine
    kept the read-only entry, so the write faulted forever.)"""
    h = sevsim.Host.from_preset("tiny")
    gt, nt = h.create_table("guest"), h.create_table("nested")
    h.map(gt, VA, 0x1000, writable=stage != "guest")
    h.map(nt, 0x1000, 0x30000, writable=stage != "nested")
    ctx = h.create_context("svm", gt, nested=nt, tag=1, vm=1)
    h.vmrun(0, ctx)
    assert h.translate(0, VA) == (0x30000, 0)
    table, addr, target = (gt, VA, 0x1000) if stage == "guest" else (nt, 0x1000, 0x30000)
    h.unmap(table, addr)
    h.map(table, addr, target)  # made writable, no flush
    assert [h.translate(0, VA, write=True) for _ in range(3)] == [None, (0x30000, 0), (0x30000, 0)]
    assert h.counters["write_faults"][0] == 1 and sum(h.violation_counts().values()) == 0
