"""SEV-SNP through Python: codes, checks, the direct map, bad input."""

import numpy as np
import pytest

import sevsim


def host():
    h = sevsim.Host.from_preset("tiny")
    h.snp_enable()
    return h


def test_rmp_codes_and_entries():
    h = host()
    assert h.rmpupdate(0, 0x200000, assigned=True, huge=True, asid=3, gpa=0) == 0
    assert h.rmpupdate(0, 0x201000, assigned=False) == 4  # FAIL_OVERLAP
    assert h.pvalidate(1, 3, 0x201000, 0x1000) == (0x81, False)  # #NPF(RMP|SIZEM)
    assert h.psmash(0, 0x200000) == 0
    assert h.pvalidate(1, 3, 0x201000, 0x1000) == (0, True)
    assert h.pvalidate(1, 3, 0x201000, 0x1000) == (0, False)  # CF=1: no change
    assert h.pvalidate(1, 3, 0x200000, 0, huge=True) == (6, False)  # FAIL_SIZEMISMATCH
    e = h.rmp_entry(0x201000)
    assert e == dict(assigned=True, huge=False, asid=3, gpa=0x1000, validated=True, immutable=False)
    codes = h.rmpupdate_batch(0, np.array([0x400000, 0x401000], np.uint64), np.array([0, 0x1000], np.uint64),
                              assigned=True, asid=4)
    assert codes.tolist() == [0, 0]


def test_rmp_entries_are_rmp_entry_page_by_page():
    """The batch query (sev_gmem_invalidate's one crossing) gives each page's rmp_entry: a 2 MiB
    entry, one PSMASHed, 4 KiB entries, blank pages; a bad address fails before anything."""
    h = host()
    h.rmpupdate(0, 0x200000, assigned=True, huge=True, asid=3, gpa=0x600000)
    h.rmpupdate(0, 0x400000, assigned=True, huge=True, asid=4, gpa=0)
    h.psmash(0, 0x400000)
    h.rmpupdate(0, 0x401000, assigned=False)
    h.rmpupdate_batch(0, np.array([0x800000, 0x803000], np.uint64), np.array([0x1000, 0x9000], np.uint64), assigned=True, asid=5)
    h.pvalidate(1, 5, 0x803000, 0x9000)
    pas = np.array([0x200000, 0x3ff000, 0x400000, 0x401000, 0x7ff000, 0x800000, 0x801000, 0x803000, 0], np.uint64)
    got = h.rmp_entries(pas)
    for i, pa in enumerate(pas.tolist()):
        assert {k: (v[i].item()) for k, v in got.items()} == h.rmp_entry(pa), hex(pa)
    assert got["assigned"].tolist() == [True, True, True, False, False, True, False, True, False]
    assert got["huge"].dtype == np.bool_ and got["asid"].dtype == np.uint16 and got["gpa"].dtype == np.uint64
    assert len(h.rmp_entries(np.zeros(0, np.uint64))["assigned"]) == 0
    with pytest.raises(ValueError, match=r"pa\[1\] = 0x4000000 is past the end of memory"):
        h.rmp_entries(np.array([0, 64 << 20], np.uint64))
    with pytest.raises((TypeError, ValueError), match="pa"):
        h.rmp_entries(np.array([0.5]))


def test_the_large_mapping_fault_and_the_split():
    h = host()
    va = h.direct_map_va(0x400000)
    assert h.lookup_address(va) == 2 << 20
    h.rmpupdate(0, 0x400000, assigned=True, asid=3, gpa=0)
    r = h.access(1, np.array([0x401000], np.uint64), True, return_levels=True)
    assert r["rmp_fault"] == 1 and r["levels"].tolist() == [6]
    (v,) = h.violations
    assert (v.kind, v.cause) == ("rmp_fault", "rmp_host_write_large_mapping")
    assert h.set_memory_4k(0, va) > 0 and h.set_memory_4k(0, va) == 0
    assert h.lookup_address(va) == 4096
    assert h.access(1, np.array([0x401000], np.uint64), True)["rmp_fault"] == 0
    assert h.counters["dm_splits"][0] == 1


def test_rmp_checks_are_off_until_snp_is_enabled():
    h = sevsim.Host.from_preset("tiny")
    h.rmpupdate(0, 0x400000, assigned=True, asid=3, gpa=0)
    assert h.access(1, np.array([0x400000], np.uint64), True)["rmp_fault"] == 0
    h.snp_enable()
    assert h.access(1, np.array([0x400000], np.uint64), True)["rmp_fault"] == 1


@pytest.mark.parametrize("call, pattern", [
    (lambda h: h.rmpupdate(0, 1 << 40, assigned=True), "past the end"),
    (lambda h: h.rmpupdate(0, 0, assigned=True, asid=1024), "asid"),
    (lambda h: h.pvalidate(0, 2000, 0, 0), "asid"),
    (lambda h: h.psmash(0, 1 << 40), "past the end"),
    (lambda h: h.set_memory_4k(0, 0x1000), "direct map"),
    (lambda h: h.snp_set_asid(0), "asid"),
    (lambda h: h.clear_pages(0, 0x1001, 4096), "multiples"),
    (lambda h: h.rmpupdate_batch(0, np.array([1 << 40], np.uint64), np.array([0], np.uint64), assigned=True), r"pa\[0\]"),
    (lambda h: h.rmpupdate_batch(0, np.zeros(2, np.uint64), np.zeros(1, np.uint64), assigned=True), "elements"),
])
def test_bad_snp_calls(call, pattern):
    h = host()
    with pytest.raises(ValueError, match=pattern):
        call(h)
    assert h.rmp_bytes == sevsim.Host.from_preset("tiny").rmp_bytes
    assert int(h.counters["rmp_updates"].sum()) == 0


def test_misaligned_operands_are_the_hardwares_failures():
    h = host()
    assert h.rmpupdate(0, 0x201000, assigned=True, huge=True, asid=1, gpa=0) == 1  # FAIL_INPUT
    assert h.psmash(0, 0x201000) == 1
    assert h.pvalidate(0, 1, 0x201000, 0, huge=True) == (1, False)


def test_snp_enable_needs_the_feature_and_leaves_a_host_without_it_unchanged():
    rome = sevsim.Host.from_preset("epyc-7742-2s", memory="1GiB")
    assert rome.features["snp"] is False
    with pytest.raises(ValueError, match="no SEV-SNP"):
        rome.snp_enable()
    assert not rome.snp_enabled
    turin = sevsim.Host.from_preset("epyc-9755-2s", memory="1GiB")
    assert turin.features["snp"] is True
    turin.snp_enable()
    assert turin.snp_enabled


def test_kvm_costs_come_from_the_profile_and_are_checked():
    h = sevsim.Host.from_preset("tiny", overrides={"kvm": {"host_fault": 123}})
    assert h.kvm_cost["host_fault"] == 123.0 and "migrate_gbps" in h.kvm_cost
    with pytest.raises(ValueError, match="kvm.host_fault"):
        sevsim.Host.from_preset("tiny", overrides={"kvm": {"host_fault": -1}})
