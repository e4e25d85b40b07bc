"""The TLB engine through Python: a guest end to end, the hazards, bad input."""

import numpy as np
import pytest

import sevsim

VA = 0x400000


def svm_guest(h, asid, hpa, vm, key=0, cbit=False):
    gt = h.create_table("guest")
    h.map(gt, VA, 0x1000, "4K", cbit=cbit)
    nt = h.create_table("nested")
    h.map(nt, 0x1000, hpa)
    return h.create_context("svm", gt, nested=nt, tag=asid, key=key, vm=vm), gt, nt


def test_sev_guest_end_to_end_uses_its_key():
    h = sevsim.Host.from_preset("tiny")
    h.set_owner(0x30000, 4096, 5)
    ctx, _, _ = svm_guest(h, 5, 0x30000, vm=1, key=5, cbit=True)
    assert h.vmrun(2, ctx, 3) == "entered"
    r = h.access_virtual(2, np.array([VA, VA + 8, VA + 64], np.uint64), True, return_levels=True)
    assert r["page_fault"] == 0 and r["levels"].tolist() == [5, 0, 5]
    assert {c["key"] for c in h.copies(0x30000)} == {5}
    c = h.counters
    assert c["tlb_misses"][2] == 1 and c["tlb_l1_hits"][2] == 2
    assert sum(h.violation_counts().values()) == 0
    es = h.tlb_entries(2)
    assert {e["category"] for e in es} == {"combined", "guest_physical"}
    assert all(e["domain"] == "svm" and e["tag"] == 5 for e in es)


def test_stale_translation_after_a_remap_without_invlpg():
    h = sevsim.Host.from_preset("tiny")
    ctx, gt, nt = svm_guest(h, 3, 0x30000, vm=1)
    h.map(nt, 0x2000, 0x50000)
    h.vmrun(0, ctx)
    assert h.translate(0, VA) == (0x30000, 0)
    h.unmap(gt, VA)
    h.map(gt, VA, 0x2000)
    assert h.translate(0, VA) == (0x30000, 0)  # the TLB still says so
    (v,) = h.violations
    assert (v.kind, v.cause, v.va, v.pa, v.true_pa, v.ctx) == ("stale_translation", "stale_translation", VA, 0x30000,
                                                               0x50000, ctx)
    h.invlpg(0, VA)
    assert h.translate(0, VA) == (0x50000, 0)
    assert h.violation_kinds()["stale_translation"] == 1
    stats = h.invalidation_stats()
    assert stats["invlpg"][0] == 1 and stats["invlpg"][1] >= 1


def test_map_many_is_all_or_nothing():
    h = sevsim.Host.from_preset("tiny")
    gt = h.create_table("guest")
    addr = np.array([0x1000, 0x2000, 0x2000], np.uint64)  # the third overlaps the second
    with pytest.raises(ValueError, match=r"\[2\].*nothing was mapped"):
        h.map_many(gt, addr, np.array([0x1000, 0x2000, 0x3000], np.uint64))
    assert h.walk(gt, 0x1000) is None and h.walk(gt, 0x2000) is None
    h.map_many(gt, addr[:2], np.array([0x5000, 0x6000], np.uint64))
    assert h.walk(gt, 0x2000)[0] == 0x6000


def test_unmapped_address_is_a_fault_not_an_exception():
    h = sevsim.Host.from_preset("tiny")
    assert h.translate(0, 0x1234000) is None
    r = h.access_virtual(0, np.array([0x1234000], np.uint64), return_levels=True)
    assert r["page_fault"] == 1 and r["levels"].tolist() == [7]
    assert h.counters["page_faults"][0] == 2


def test_hardware_refusals_are_results():
    h = sevsim.Host.from_preset("tiny")
    ctx, _, _ = svm_guest(h, 0, 0x30000, vm=1)
    assert h.vmrun(0, ctx) == "vmexit_invalid"
    ctx, _, _ = svm_guest(h, 4, 0x30000, vm=1)
    assert h.vmrun(0, ctx, 2) == "vmexit_invalid"
    assert h.invvpid(0, 1, 0) is None and h.invept(0, 9) is None and h.invpcid(0, 7) is None
    assert h.current_context(0) == 0


@pytest.mark.parametrize("call, exc, pattern", [
    (lambda h: h.create_table("shadow"), ValueError, "kind"),
    (lambda h: h.map(0, 0x1001, 0x2000), ValueError, "aligned"),
    (lambda h: h.map(0, 0x0000800000000000, 0x2000), ValueError, "canonical"),
    (lambda h: h.map(0, 0x1000, 1 << 40), ValueError, "past the end"),
    (lambda h: h.map(0, 0x1000, 0x2000, "3K"), ValueError, "page size"),
    (lambda h: (h.map(0, 0x200000, 0x200000, "2M"), h.map(0, 0x201000, 0x1000)), ValueError, "overlapping"),
    (lambda h: h.map(99, 0, 0), ValueError, "no such table"),
    (lambda h: h.create_context("svm", 0, nested=None, tag=1), ValueError, "nested"),
    (lambda h: h.create_context("svm", 0, nested=0, tag=1), ValueError, "Guest table"),
    (lambda h: h.create_context("tdx", 0), ValueError, "mode"),
    (lambda h: h.create_context("host", 0, pcid=5000), ValueError, "pcid"),
    (lambda h: h.vmrun(0, 0), ValueError, "not an SVM"),
    (lambda h: h.vmrun(0, 77), ValueError, "no such context"),
    (lambda h: h.vmentry(0, 0), ValueError, "not a VMX"),
    (lambda h: h.invlpgb(0, 0x1001), ValueError, "page-aligned"),
    (lambda h: h.invlpgb(0, 0x1000, count=99), ValueError, "count"),
    (lambda h: h.translate(0, 0x0000800000000000), ValueError, "canonical"),
    (lambda h: h.access_virtual(0, np.array([1 << 63], np.uint64)), ValueError, "canonical"),
    (lambda h: h.access_virtual(9, np.array([0], np.uint64)), ValueError, "cpu = 9"),
    (lambda h: h.mov_cr3(0, 5), ValueError, "table"),
    # integers outside their field's width: ValueError naming the argument, not OverflowError
    (lambda h: h.vmrun(0, 0, 300), ValueError, "tlb_control = 300"),
    (lambda h: h.map(-1, 0, 0), ValueError, "table = -1"),
    (lambda h: h.invpcid(0, 999), ValueError, "kind = 999"),
    (lambda h: h.invlpga(0, 0, -2), ValueError, "asid = -2"),
    (lambda h: h.create_context("svm", 1, nested=-1), ValueError, "nested = -1"),
    (lambda h: h.rmpupdate(0, 0, assigned=True, asid=70000), ValueError, "asid = 70000"),
    (lambda h: h.set_contents(300, 0, 0), ValueError, "level = 300"),
])
def test_bad_tlb_calls(call, exc, pattern):
    h = sevsim.Host.from_preset("tiny")
    with pytest.raises(exc, match=pattern):
        call(h)
    assert sum(h.counters["tlb_flush_ops"]) == 0 and sum(h.counters["vmruns"]) == 0


# -- run_guest: enter, an access batch, exit, in one call -----------------------------------------

def two_guests(h):
    ctxs = []
    for i, mode in enumerate(("svm", "vmx")):
        gt = h.create_table("guest")
        nt = h.create_table("nested")
        for p in range(8):
            h.map(gt, 0x400000 + p * 4096, 0x1000 * (p + 1))
            h.map(nt, 0x1000 * (p + 1), 0x100000 * (i + 1) + p * 4096)
        ctxs.append(h.create_context(mode, gt, nested=nt, tag=1 + i, vm=1 + i))
    return ctxs


def test_run_guest_is_entry_batch_exit():
    """run_guest gives exactly what vmrun/vmentry + access_virtual + vmexit give: counters, clocks,
    per-context counters, TLB contents and where the CPU ends up."""
    rng = np.random.default_rng(3)
    plan = [(k % 2, int(rng.choice([0, 1, 3, 7])) if k % 2 == 0 else 0,
             (0x400000 + rng.integers(0, 9, 5) * 4096).astype(np.uint64), rng.integers(0, 2, 5).astype(bool))
            for k in range(40)]
    hs = [sevsim.Host.from_preset("tiny") for _ in range(2)]
    ctxs = [two_guests(h) for h in hs]
    got = []
    for which, tc, va, wr in plan:
        got.append(hs[0].run_guest(1, ctxs[0][which], va, tlb_control=tc, write=wr))
        h, c = hs[1], ctxs[1][which]
        if which == 0:
            assert h.vmrun(1, c, tc) == "entered"
        else:
            h.vmentry(1, c)
        r = h.access_virtual(1, va, wr)
        h.vmexit(1)
        assert got[-1] == ("entered", r["page_fault"], r["rmp_fault"])
    a, b = hs
    assert {k: v.tolist() for k, v in a.counters.items()} == {k: v.tolist() for k, v in b.counters.items()}
    assert [a.cycles(c) for c in range(a.cpu_count)] == [b.cycles(c) for c in range(b.cpu_count)]
    assert {k: v.tolist() for k, v in a.context_counters().items()} == {k: v.tolist() for k, v in b.context_counters().items()}
    assert a.tlb_entries(1) == b.tlb_entries(1)
    assert a.current_context(1) == b.current_context(1) == 0
    assert any(g[1] for g in got)  # some accesses fault (page 8 is unmapped)


def test_run_guest_reports_vmexit_invalid_without_running():
    h = sevsim.Host.from_preset("tiny", overrides={"tlb": {"flushbyasid": False}})
    svm, _ = two_guests(h)
    before = {k: v.tolist() for k, v in h.counters.items()}
    assert h.run_guest(0, svm, np.array([0x400000], np.uint64), tlb_control=3) == ("vmexit_invalid", 0, 0)
    assert h.current_context(0) == 0 and h.counters["tlb_misses"].tolist() == before["tlb_misses"]


@pytest.mark.parametrize("call, exc, pattern", [
    (lambda h, s, v: h.run_guest(0, v, np.array([0x400000], np.uint64), tlb_control=3), ValueError, r"tlb_control = 3: VMX has no TLB_CONTROL"),
    (lambda h, s, v: h.run_guest(0, 0, np.array([0x400000], np.uint64)), ValueError, r"ctx = 0 is a host context"),
    (lambda h, s, v: h.run_guest(0, 9, np.array([0x400000], np.uint64)), ValueError, r"ctx = 9: no such context"),
    (lambda h, s, v: h.run_guest(8, s, np.array([0x400000], np.uint64)), ValueError, r"cpu = 8"),
    (lambda h, s, v: h.run_guest(0, s, np.array([0x400000, 1 << 60], np.uint64)), ValueError, r"va\[1\] = 0x1000000000000000 is not a canonical"),
    (lambda h, s, v: h.run_guest(0, s, np.array([0x400000], np.uint64), write=np.array([True, False])), ValueError, r"write has 2 elements"),
    (lambda h, s, v: h.run_guest(0, s, np.array([0x400000], np.uint64), tlb_control=256), ValueError, r"tlb_control"),
    (lambda h, s, v: h.run_guest(0, s, np.array([0x400000], np.uint64), write="yes"), TypeError, r"write"),
])
def test_bad_run_guest_calls_change_nothing(call, exc, pattern):
    h = sevsim.Host.from_preset("tiny")
    svm, vmx = two_guests(h)
    h.run_guest(0, svm, np.array([0x400000], np.uint64))
    before = ({k: v.tolist() for k, v in h.counters.items()}, h.cycles(0), h.current_context(0), h.tlb_entries(0))
    with pytest.raises(exc, match=pattern):
        call(h, svm, vmx)
    assert ({k: v.tolist() for k, v in h.counters.items()}, h.cycles(0), h.current_context(0), h.tlb_entries(0)) == before


def test_invlpg_of_a_non_canonical_address_is_a_nop():
    """SDM vol. 2A INVLPG: in 64-bit mode a non-canonical address makes INVLPG a NOP (it was
    refused with a ValueError, as if the instruction could not be executed)."""
    h = sevsim.Host.from_preset("tiny")
    h.map(0, 0x400000, 0x1000)
    h.translate(0, 0x400000)
    entries = h.tlb_entries(0)
    assert h.invlpg(0, 0x0000800000000000) == 0
    assert h.tlb_entries(0) == entries
