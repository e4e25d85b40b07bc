"""The kvm layer: ASID allocation and recycling, the SEV lifecycle, the notifier path, strategies."""

import numpy as np
import pytest

import sevsim
from sevsim.kvm import STRATEGIES, AsidExhausted, ConfigError, Kvm, VmType, get_strategy


def tiny(coherent=False):
    return sevsim.Host.from_preset("tiny", sme_coherent=coherent)


def dirty(kvm, vm, cpu, n=2000, seed=0):
    rng = np.random.default_rng(seed)
    gpa = rng.integers(0, vm.memory // 64, n, dtype=np.uint64) * np.uint64(64)
    kvm.vcpu_run(vm, 0, cpu, gpa, True)


def test_asid_ranges_and_exhaustion_without_recycling():
    kvm = Kvm(tiny(), min_sev_asid=3, max_sev_asid=4, recycle=False)
    a = kvm.sev_guest_init("a", "sev-es", 1 << 20, 1)
    b = kvm.sev_guest_init("b", "snp", 1 << 20, 1)
    assert (a.asid, b.asid) == (1, 2)  # ES/SNP share [1, min_sev_asid - 1]
    assert kvm.sev_guest_init("c", "sev", 1 << 20, 1).asid == 3
    kvm.sev_vm_destroy(a)
    with pytest.raises(AsidExhausted, match="recycling is disabled"):
        kvm.sev_guest_init("d", "sev-es", 1 << 20, 1)


def test_recycling_flushes_every_cpu_then_df_flush():
    h = tiny()
    kvm = Kvm(h, min_sev_asid=2, max_sev_asid=4)
    a = kvm.sev_guest_init("a", "sev-es", 1 << 20, 1)
    dirty(kvm, a, 1)
    kvm.sev_vm_destroy(a)
    assert 1 in kvm.asid_reclaim and 1 in kvm.asid_used
    wbinvd_before = h.counters["wbinvd"].copy()
    b = kvm.sev_guest_init("b", "sev-es", 1 << 20, 1)
    assert b.asid == 1
    assert kvm.stats["df_flush"] == 1
    assert (h.counters["wbinvd"] - wbinvd_before).tolist() == [1] * h.cpu_count
    dirty(kvm, b, 2)
    assert sum(h.violation_counts().values()) == 0


def test_a_recycle_frees_every_waiting_asid_of_either_range():
    """__sev_recycle_asids() flushes when an ASID of the asked range waits, then frees all the
    waiting ones: a freed SEV-ES ASID is reusable after an SEV recycle without another flush."""
    kvm = Kvm(tiny(), min_sev_asid=2, max_sev_asid=2)
    es = kvm.sev_guest_init("es", "sev-es", 1 << 20, 1)
    sev = kvm.sev_guest_init("sev", "sev", 1 << 20, 1)
    assert (es.asid, sev.asid) == (1, 2)
    kvm.sev_vm_destroy(es)
    kvm.sev_vm_destroy(sev)
    assert kvm.sev_guest_init("sev2", "sev", 1 << 20, 1).asid == 2
    assert kvm.stats["df_flush"] == 1 and not kvm.asid_reclaim
    assert kvm.sev_guest_init("es2", "sev-es", 1 << 20, 1).asid == 1
    assert kvm.stats["df_flush"] == 1


class WbnoinvdRecycleKvm(Kvm):
    """A broken recycle: WBNOINVD where SNP firmware requires WBINVD (sev_flush_asids comment)."""

    def sev_flush_asids(self, initiator):
        self.host.wbnoinvd_on_cpus(initiator, range(self.host.cpu_count))
        self.host.spend(initiator, self.host.cost["df_flush"])


def test_recycle_without_invalidation_is_an_isolation_violation():
    h = tiny()
    kvm = WbnoinvdRecycleKvm(h, "wbnoinvd_ran_cpus", min_sev_asid=2, max_sev_asid=4)
    a = kvm.sev_guest_init("a", "sev-es", 1 << 20, 1)
    dirty(kvm, a, 1)
    pages_a = a.pages.copy()
    kvm.sev_vm_destroy(a)
    b = kvm.sev_guest_init("b", "sev-es", 1 << 20, 1)
    assert b.asid == 1
    # the new tenant of ASID 1 happens to get the old tenant's pages and reads them from the
    # same core, where the old clean lines survived the WBNOINVD
    np.testing.assert_array_equal(np.sort(b.pages), np.sort(pages_a))
    kvm.vcpu_run(b, 0, 1, np.arange(0, 1 << 20, 64, dtype=np.uint64), False)
    assert h.violation_kinds()["isolation"] > 0


def test_have_run_cpus_grows_and_is_never_cleared():
    h = tiny()
    kvm = Kvm(h)
    vm = kvm.sev_guest_init("a", "sev", 1 << 20, 2)
    kvm.vcpu_run(vm, 0, 1, np.zeros(1, np.uint64))
    kvm.vcpu_run(vm, 1, 2, np.zeros(1, np.uint64))
    kvm.vcpu_run(vm, 0, 5, np.zeros(1, np.uint64))  # vCPU 0 migrates
    kvm.vcpu_put(vm, 0)
    assert vm.have_run_cpus == {1, 2, 5}
    assert vm.running_cpus() == [2]


@pytest.mark.parametrize("name", [n for n in STRATEGIES if n != "none"])
def test_every_correct_strategy_is_safe_on_a_coherent_host(name):
    h = tiny(coherent=True)
    kvm = Kvm(h, name, initiator=7)
    vm = kvm.sev_guest_init("a", "sev-es", 1 << 20, 2)
    dirty(kvm, vm, 1)
    dirty(kvm, vm, 2, seed=1)
    pages = vm.pages.copy()
    kvm.sev_mem_enc_unregister_region(vm, 0)
    kvm.sev_vm_destroy(vm)
    h.access(7, pages, True, 0)  # the host reuses the pages
    assert sum(h.violation_counts().values()) == 0
    assert h.audit() == {"dirty_foreign_owner": 0, "dirty_stale_key": 0}


def test_no_flush_is_caught():
    h = tiny(coherent=True)
    kvm = Kvm(h, "none", initiator=7)
    vm = kvm.sev_guest_init("a", "sev-es", 1 << 20, 1)
    dirty(kvm, vm, 1)
    kvm.sev_mem_enc_unregister_region(vm, 0)
    kvm.sev_vm_destroy(vm)
    assert h.audit()["dirty_foreign_owner"] > 0


def test_host_key_clflush_is_unsafe_without_sme_coherent():
    h = tiny(coherent=False)
    kvm = Kvm(h, "clflushopt_pfn", initiator=7)
    vm = kvm.sev_guest_init("a", "sev-es", 1 << 20, 1)
    dirty(kvm, vm, 1)
    kvm.sev_mem_enc_unregister_region(vm, 0)
    kvm.sev_vm_destroy(vm)
    assert h.audit()["dirty_foreign_owner"] > 0


def test_unregister_only_unpins_the_pages_stay_the_vms_until_the_mm_releases_them():
    """sev_unpin_memory() drops KVM's pin; the pages stay mapped in the VMM and hold the guest's
    data until the mm releases them, so nothing is freed (and nothing needs a flush) yet."""
    h = tiny(coherent=True)
    kvm = Kvm(h, "none", initiator=7)
    vm = kvm.sev_guest_init("a", "sev-es", 1 << 20, 1)
    dirty(kvm, vm, 1)
    free = kvm.mem.free
    kvm.sev_mem_enc_unregister_region(vm, 0)
    assert not vm.regions and kvm.mem.free == free
    assert {h.owner(int(pa)) for pa in vm.pages} == {vm.asid}
    assert h.audit() == {"dirty_foreign_owner": 0, "dirty_stale_key": 0}
    kvm.sev_vm_destroy(vm)
    assert kvm.mem.free == free + vm.memory + 4096  # the guest's pages and its VMSA
    assert {h.owner(int(pa)) for pa in vm.pages} == {0}


@pytest.mark.parametrize("name, counter", [("clflushopt_hva", "clflush_lines"), ("clflushopt_pfn", "clflush_lines"),
                                           ("vm_page_flush", "vm_page_flush")])
def test_per_page_strategies_flush_each_page_once_at_teardown(name, counter):
    """Unregister, then destroy: each guest page is flushed by the step that frees it, once (the
    landed code flushed them at unregister and again at destroy, after giving them back)."""
    h = tiny(coherent=name != "vm_page_flush")
    kvm = Kvm(h, name, initiator=7)
    vm = kvm.sev_guest_init("a", "sev-es", 1 << 20, 1)
    dirty(kvm, vm, 1)
    c0 = int(h.counters[counter].sum())
    kvm.sev_mem_enc_unregister_region(vm, 0)
    kvm.sev_vm_destroy(vm)
    flushed = int(h.counters[counter].sum()) - c0
    per_page = 64 if counter == "clflush_lines" else 1
    assert flushed == (len(vm.pages) + len(vm.vmsa)) * per_page
    assert sum(h.violation_counts().values()) == 0


def test_notifier_hva_flush_misses_pages_whose_mapping_is_gone():
    for mapped, caught in ((True, False), (False, True)):
        h = tiny(coherent=True)
        kvm = Kvm(h, "clflushopt_hva", initiator=7)
        vm = kvm.sev_guest_init("a", "snp", 1 << 20, 1)
        kvm.vcpu_run(vm, 0, 1, np.arange(0, 3 * 4096, 64, dtype=np.uint64), True)  # fits in L2 + L3
        freed = kvm.mmu_notifier_invalidate(vm, [0, 1, 2], hva_mapped=[mapped] * 3)
        assert len(freed) == 3 and not set(freed.tolist()) & set(vm.pages.tolist())
        assert (h.audit()["dirty_foreign_owner"] > 0) is caught


def test_notifier_without_free_keeps_the_pages_and_pays_the_flush():
    h = tiny()
    kvm = Kvm(h, "wbinvd_all", initiator=7)
    vm = kvm.sev_guest_init("a", "sev", 1 << 20, 1)
    kvm.vcpu_run(vm, 0, 1, np.zeros(1, np.uint64))
    before = vm.pages.copy()
    wb = int(h.counters["wbinvd"].sum())
    assert len(kvm.mmu_notifier_invalidate(vm, [0], free=False)) == 0
    np.testing.assert_array_equal(before, vm.pages)
    assert int(h.counters["wbinvd"].sum()) - wb == h.cpu_count
    assert h.counters["ipis_received"][1] >= 1  # the running vCPU was kicked for the TLB flush


def test_bad_configurations():
    h = tiny()
    with pytest.raises(ConfigError, match="do not fit"):
        Kvm(h).sev_guest_init("big", "sev", 1 << 30, 1)
    with pytest.raises(ConfigError, match="1023"):
        Kvm(h, max_sev_asid=2000)
    with pytest.raises(ValueError, match="unknown strategy 'nope'.*wbinvd_all"):
        get_strategy("nope")
    with pytest.raises(ValueError):
        Kvm(h).sev_guest_init("x", "tdx", 1 << 20, 1)
    kvm = Kvm(h)
    vm = kvm.sev_guest_init("a", VmType.SEV, 1 << 20, 1)
    with pytest.raises(ValueError, match="beyond"):
        kvm.vcpu_run(vm, 0, 1, np.array([1 << 20], np.uint64))
    with pytest.raises(ValueError, match="vCPUs 0..0"):
        kvm.vcpu_run(vm, 3, 1, np.zeros(1, np.uint64))


class NoVmsaFlushKvm(Kvm):
    """Forgets sev_flush_encrypted_page() when freeing a vCPU."""

    def sev_flush_encrypted_page(self, vm, pa, initiator):
        pass


@pytest.mark.parametrize("coherent", [False, True])
def test_vmsa_pages_are_flushed_when_vcpus_are_freed(coherent):
    # strategy "none": nothing else writes the VMSA back, so only its own flush protects it
    for cls, caught in ((Kvm, False), (NoVmsaFlushKvm, True)):
        h = tiny(coherent)
        kvm = cls(h, "none", initiator=7)
        vm = kvm.sev_guest_init("a", "sev-es", 1 << 20, 1)
        kvm.vcpu_run(vm, 0, 1, np.zeros(1, np.uint64))
        vmsa = vm.vmsa[0]
        assert any(c["key"] == vm.asid and c["dirty"] for c in h.copies(vmsa))
        kvm.sev_vm_destroy(vm)
        stale = [c for c in h.copies(vmsa) if c["key"] == vm.asid and c["dirty"]]
        assert bool(stale) is caught, (cls, coherent)


def test_snp_private_memory_is_flushed_by_gmem_whatever_the_strategy():
    # SME_COHERENT, as on every SNP-capable CPU: the host-key CLFLUSH by PFN reaches guest lines
    h = tiny(coherent=True)
    h.snp_enable()
    kvm = Kvm(h, "none", initiator=7)
    vm = kvm.sev_guest_init("a", "snp", 1 << 20, 1)
    assert vm.regions == []
    dirty(kvm, vm, 1)
    kvm.sev_vm_destroy(vm)
    assert h.audit() == {"dirty_foreign_owner": 0, "dirty_stale_key": 0}
    assert h.counters["clflush_lines"][7] >= (1 << 20) // 64


@pytest.mark.parametrize("coherent", [True, False])
def test_snp_guest_without_guest_memfd_needs_the_strategy_at_teardown(coherent):
    """On a host without SNP enabled an SNP guest's memory is HVA-backed (sevsim's model of SNP
    before guest_memfd): teardown reclaims it through the strategy, as for SEV-ES, and
    sev_gmem_invalidate() does nothing (it returns unless the host has SNP). Before, teardown took
    the guest_memfd path and its host-key CLFLUSH, which misses guest-key lines without
    SME_COHERENT and made even `none` safe with it."""
    for strategy, safe in (("none", False), ("wbinvd_all", True)):
        h = tiny(coherent=coherent)
        kvm = Kvm(h, strategy, initiator=7)
        vm = kvm.sev_guest_init("a", "snp", 1 << 20, 1)
        dirty(kvm, vm, 1)
        before = int(h.counters["clflush_lines"].sum())
        kvm.sev_gmem_invalidate(vm, np.arange(4), 7)
        assert int(h.counters["clflush_lines"].sum()) == before
        kvm.sev_vm_destroy(vm)
        left = h.audit()["dirty_foreign_owner"] + h.audit()["dirty_stale_key"]
        assert (left == 0) is safe, (strategy, coherent, h.audit())


def test_snp_guest_memory_is_4k_in_the_rmp_with_upstream_guest_memfd():
    """Upstream guest_memfd folios are 4 KiB (__kvm_gmem_get_pfn() sets max_order 0): every
    private page is a 4 KiB RMP entry, and each 2 MiB region of the direct map it touches splits."""
    h = sevsim.Host.from_preset("tiny", sme_coherent=True)
    h.snp_enable()
    kvm = Kvm(h, "wbnoinvd_ran_cpus", initiator=7)
    vm = kvm.sev_guest_init("a", "snp", 4 << 20, 1)
    assert all(not h.rmp_entry(int(pa))["huge"] and h.rmp_entry(int(pa))["assigned"] for pa in vm.pages)
    regions = {int(pa) >> 21 for pa in vm.pages} | {vm.vmsa[0] >> 21}
    assert int(h.counters["dm_splits"].sum()) == len(regions)
    assert int(h.counters["rmp_updates"].sum()) == len(vm.pages) + 1
    dirty(kvm, vm, 1)
    assert h.violation_kinds()["rmp_fault"] == 0
    # a hole punch frees 4 KiB entries: no PSMASH
    freed = kvm.kvm_gmem_punch_hole(vm, [1, 600])
    assert int(h.counters["psmashes"].sum()) == 0
    assert all(not h.rmp_entry(int(pa))["assigned"] for pa in freed)
    h.access(0, freed.astype(np.uint64), True)
    assert h.violation_kinds()["rmp_fault"] == 0
    kvm.sev_vm_destroy(vm)
    assert not any(h.rmp_entry(int(pa))["assigned"] for pa in vm.pages)
    assert h.audit() == {"dirty_foreign_owner": 0, "dirty_stale_key": 0}


def test_snp_guest_memory_goes_through_the_rmp_when_snp_is_enabled():
    h = sevsim.Host.from_preset("tiny", sme_coherent=True)
    h.snp_enable()
    kvm = Kvm(h, "wbnoinvd_ran_cpus", initiator=7, gmem_huge=True)
    vm = kvm.sev_guest_init("a", "snp", 4 << 20, 1)
    # 2 MiB-aligned backing and GPAs: 2 MiB RMP entries; only the 4 KiB VMSA split the direct map
    e = h.rmp_entry(int(vm.pages[0]))
    assert e["assigned"] and e["huge"] and e["asid"] == vm.asid and e["validated"]
    assert int(h.counters["dm_splits"].sum()) == 1
    assert h.lookup_address(h.direct_map_va(vm.vmsa[0])) == 4096
    dirty(kvm, vm, 1)
    assert h.violation_kinds()["rmp_fault"] == 0
    # host writes next to private memory: the neighbour of the 4 KiB VMSA (split, so allowed) and
    # the first page of the region after the guest's 2 MiB entries (no split needed, allowed)
    vmsa = vm.vmsa[0]
    nxt = (int(vm.pages.max()) // (2 << 20) + 1) * (2 << 20)
    others = [p for p in (vmsa + 4096, nxt + (2 << 20)) if p != vmsa]
    h.access(0, np.array(others, np.uint64), True)
    assert h.violation_kinds()["rmp_fault"] == 0
    h.access(0, np.array([vmsa], np.uint64), True)  # but the VMSA itself is the guest's
    assert h.violation_counts()["rmp_host_write_assigned"] == 1
    kvm.sev_vm_destroy(vm)
    assert not h.rmp_entry(int(vm.pages[0]))["assigned"]
    assert h.audit() == {"dirty_foreign_owner": 0, "dirty_stale_key": 0}
    h.access(0, vm.pages[:64].astype(np.uint64), True)  # the host reuses the pages: no new RMP fault
    h.access(0, np.array([vmsa], np.uint64), True)
    assert h.violation_kinds()["rmp_fault"] == 1


def test_snp_notifier_free_of_part_of_a_2m_entry_psmashes_and_splits():
    h = sevsim.Host.from_preset("tiny", sme_coherent=True)
    h.snp_enable()
    kvm = Kvm(h, "clflushopt_pfn", initiator=7, gmem_huge=True)
    vm = kvm.sev_guest_init("a", "snp", 2 << 20, 1)
    pa3 = int(vm.pages[3])
    kvm.sev_gmem_invalidate(vm, np.array([3]), 7)
    assert int(h.counters["psmashes"].sum()) == 1
    assert not h.rmp_entry(pa3)["assigned"] and h.rmp_entry(pa3 + 4096)["assigned"]
    # making it shared at 4 KiB split the direct map around it first
    assert h.lookup_address(h.direct_map_va(pa3)) == 4096
    h.access(0, np.array([pa3, pa3 + 8192], np.uint64), True)
    assert h.violation_counts()["rmp_host_write_assigned"] == 1  # only the write into the private neighbour


def test_notifier_rejects_bad_input_and_a_full_host_before_changing_anything():
    h = sevsim.Host.from_preset("tiny", memory="80MiB")
    kvm = Kvm(h, "wbinvd_all", initiator=7, reserved_memory=64 << 20)  # 16 MiB free
    vm = kvm.sev_guest_init("a", "sev", 12 << 20, 1)
    kvm.vcpu_run(vm, 0, 1, np.zeros(1, np.uint64))
    pages, clocks, stats = vm.pages.copy(), h.clocks.copy(), dict(kvm.stats)
    with pytest.raises(ValueError, match="guest page numbers"):
        kvm.mmu_notifier_invalidate(vm, [0, len(vm.pages)])
    with pytest.raises(ValueError, match="hva_mapped"):
        kvm.mmu_notifier_invalidate(vm, [0, 1], hva_mapped=[True])
    with pytest.raises(ValueError, match="repeat"):  # it would free the page twice
        kvm.mmu_notifier_invalidate(vm, [3, 3])
    np.testing.assert_array_equal(pages, vm.pages)
    np.testing.assert_array_equal(clocks, h.clocks)
    assert kvm.stats == stats
    # registered SEV memory is pinned: the notifier fires, migrate_pages() cannot move the pages
    assert len(kvm.mmu_notifier_invalidate(vm, np.arange(16))) == 0
    np.testing.assert_array_equal(pages, vm.pages)
    # unpinned, the pages can go: within what is free it goes through, beyond it nothing changes
    kvm.sev_mem_enc_unregister_region(vm, 0)
    pages, stats = vm.pages.copy(), dict(kvm.stats)
    with pytest.raises(ConfigError, match="out of host memory"):
        kvm.mmu_notifier_invalidate(vm, np.arange(len(vm.pages)))  # 3072 pages, 1024 free
    np.testing.assert_array_equal(pages, vm.pages)
    assert kvm.stats == stats and h.owner(int(vm.pages[0])) == vm.asid
    assert len(kvm.mmu_notifier_invalidate(vm, np.arange(16))) == 16


def snp_host_and_vm(strategy="wbinvd_all", memory=4 << 20, gmem_huge=True):
    """An SNP guest on an SNP host; by default with 2 MiB guest_memfd folios (2 MiB RMP entries)."""
    h = sevsim.Host.from_preset("tiny", sme_coherent=True)
    h.snp_enable()
    kvm = Kvm(h, strategy, initiator=7, gmem_huge=gmem_huge)
    return h, kvm, kvm.sev_guest_init("a", "snp", memory, 1)


def test_hva_notifiers_cannot_reach_guest_memfd_memory():
    """SNP + guest_memfd: the notifier zaps and flushes TLBs but runs no reclaim hook (even a WBINVD
    strategy's) and frees no private page (sev_guest_memory_reclaimed() returns early for SNP)."""
    h, kvm, vm = snp_host_and_vm("wbinvd_all")
    kvm.vcpu_run(vm, 0, 1, np.arange(0, 8 * 4096, 64, dtype=np.uint64), True)
    pages = vm.pages.copy()
    wb = int(h.counters["wbinvd"].sum())
    assert len(kvm.mmu_notifier_invalidate(vm, [0, 1, 2])) == 0
    np.testing.assert_array_equal(pages, vm.pages)
    assert int(h.counters["wbinvd"].sum()) == wb
    assert kvm.stats["notifier_calls"] == 1 and h.rmp_entry(int(vm.pages[0]))["assigned"]
    # the same event against an SEV-ES guest of the same host runs the hook (its pinned pages stay)
    es = kvm.sev_guest_init("b", "sev-es", 1 << 20, 1)
    kvm.vcpu_run(es, 0, 2, np.zeros(1, np.uint64))
    assert len(kvm.mmu_notifier_invalidate(es, [0])) == 0
    assert int(h.counters["wbinvd"].sum()) == wb + h.cpu_count


def test_gmem_punch_hole_frees_private_pages_safely_and_the_guest_gets_new_ones():
    h, kvm, vm = snp_host_and_vm()
    kvm.vcpu_run(vm, 0, 1, np.arange(0, 16 * 4096, 64, dtype=np.uint64), True)  # dirty guest lines
    gp = np.array([1, 5, 600])  # inside the first 2 MiB entry (PSMASH) and the second
    freed = kvm.kvm_gmem_punch_hole(vm, gp)
    assert len(freed) == 3 and not set(freed.tolist()) & set(vm.pages.tolist())
    for pa in freed.tolist():
        assert not h.rmp_entry(pa)["assigned"] and h.owner(pa) == 0
    for pa in vm.pages[gp].tolist():
        e = h.rmp_entry(pa)
        assert e["assigned"] and e["validated"] and e["asid"] == vm.asid
    assert int(h.counters["psmashes"].sum()) == 2
    # the host reuses the freed pages: no RMP fault, no corruption; the guest runs on its new pages
    h.access(0, freed.astype(np.uint64), True)
    kvm.vcpu_run(vm, 0, 1, (gp * 4096).astype(np.uint64), True)
    h.wbinvd_on_cpus(0, range(h.cpu_count))
    assert h.violation_kinds()["rmp_fault"] == 0
    assert h.violation_counts()["writeback_foreign_owner"] == 0
    assert kvm.stats["gmem_punches"] == 1


def test_gmem_punch_hole_rejects_what_it_cannot_do_before_changing_anything():
    h, kvm, vm = snp_host_and_vm()
    es = kvm.sev_guest_init("b", "sev-es", 1 << 20, 1)
    clocks = h.clocks.copy()
    with pytest.raises(ValueError, match="guest_memfd"):
        kvm.kvm_gmem_punch_hole(es, [0])
    with pytest.raises(ValueError, match="guest page numbers"):
        kvm.kvm_gmem_punch_hole(vm, [len(vm.pages)])
    with pytest.raises(ValueError, match="repeat"):
        kvm.kvm_gmem_punch_hole(vm, [3, 3])
    np.testing.assert_array_equal(clocks, h.clocks)
    assert kvm.stats["gmem_punches"] == 0


def test_vmsa_flush_at_launch_is_sev_es_only():
    """__sev_launch_update_vmsa() (SEV-ES) flushes each VMSA before the firmware encrypts it;
    snp_launch_update_vmsa() makes it private in the RMP and encrypts it with no flush."""
    lines = {}
    for vm_type in ("sev-es", "snp"):
        h = tiny(coherent=True)  # no sev_clflush_pages() of the guest's memory
        h.snp_enable()
        kvm = Kvm(h, "none", initiator=7)
        kvm.sev_guest_init("a", vm_type, 1 << 20, 2)
        lines[vm_type] = int(h.counters["clflush_lines"].sum())
    assert lines == {"sev-es": 2 * 4096 // 64, "snp": 0}


@pytest.mark.parametrize("strategy, wbinvd, wbnoinvd", [
    ("wbinvd_all", "all", None),           # before a77896eea33d: wbinvd_on_all_cpus()
    ("wbnoinvd_all", None, "all"),         # a77896eea33d: wbnoinvd_on_all_cpus()
    ("wbnoinvd_ran_cpus", None, "ran"),    # 6.17+: sev_writeback_caches() on have_run_cpus
])
def test_vm_page_flush_fault_falls_back_to_the_strategys_kernel_writeback(strategy, wbinvd, wbnoinvd):
    h = sevsim.Host.from_preset("tiny", overrides={"features": {"vm_page_flush": False}})
    kvm = Kvm(h, strategy, initiator=7)
    vm = kvm.sev_guest_init("a", "sev-es", 1 << 20, 1)
    kvm.vcpu_run(vm, 0, 1, np.zeros(1, np.uint64))
    before = {k: h.counters[k].copy() for k in ("wbinvd", "wbnoinvd")}
    kvm.sev_flush_encrypted_page(vm, vm.vmsa[0], 7)
    want = {"all": list(range(h.cpu_count)), "ran": sorted(vm.have_run_cpus), None: []}
    for k, which in (("wbinvd", wbinvd), ("wbnoinvd", wbnoinvd)):
        ran = np.nonzero(h.counters[k] - before[k])[0].tolist()
        assert ran == want[which], (k, strategy)


def test_4k_prepare_in_runs_matches_page_by_page():
    """sev_gmem_prepare's 4 KiB path batches the RMPUPDATEs and PVALIDATEs of each 2 MiB region;
    clocks, counters and the RMP must come out as the kernel's page-by-page order leaves them."""
    def run(page_by_page):
        h = sevsim.Host.from_preset("tiny", sme_coherent=True)
        h.snp_enable()
        kvm = Kvm(h, "none", initiator=7)
        if page_by_page:
            def one_by_one(vm, pages, gpas, cpu):
                for pa, gpa in zip(pages.tolist(), gpas.tolist()):
                    kvm.rmpupdate(pa, cpu, assigned=True, huge=False, asid=vm.asid, gpa=gpa)
                    assert h.pvalidate(cpu, vm.asid, pa, gpa)[0] == 0
            kvm._prepare_4k = one_by_one
        def state():
            rmp = [h.rmp_entry(int(p)) for p in vm.pages]
            return h.clocks.tolist(), {k: v.tolist() for k, v in h.counters.items()}, rmp
        vm = kvm.sev_guest_init("a", "snp", 6 << 20, 2)
        launched = state()
        kvm.kvm_gmem_punch_hole(vm, [1, 700, 1500])
        return launched, state()
    assert run(False) == run(True)


def _gmem_invalidate_page_by_page(kvm, vm, gpages, initiator):
    """The page-by-page form of sev_gmem_invalidate (the kernel's loop, one RMP lookup per pfn),
    kept as the reference of the array form."""
    if not kvm.host.snp_enabled:
        return
    freeing = {int(p) for p in vm.pages[gpages]}
    done_huge, flushed = set(), []
    for pa in sorted(freeing):
        e = kvm.host.rmp_entry(pa)
        if not e["assigned"]:
            continue
        base = pa - pa % HUGE
        if e["huge"]:
            if base in done_huge:
                continue
            if all(base + k * 4096 in freeing for k in range(512)):
                kvm.rmpupdate(base, initiator, assigned=False, huge=True)
                done_huge.add(base)
                flushed.extend(range(base, base + HUGE, 4096))
                continue
            kvm.host.psmash(initiator, base)
        kvm.rmpupdate(pa, initiator, assigned=False, huge=False)
        flushed.append(pa)
    kvm.host.clflushopt_ranges(initiator, *kvm.runs(np.array(sorted(flushed), dtype=np.uint64)), key=0)


def _gmem_prepare_page_by_page(kvm, vm, gpages, initiator):
    """The page-by-page form of sev_gmem_prepare with 2 MiB folios (the reference of the array form)."""
    pages = vm.pages[gpages]
    i = 0
    while i < len(pages):
        pa, gpa = int(pages[i]), int(gpages[i]) * 4096
        run = pages[i:i + 512]
        huge = (pa % HUGE == 0 and gpa % HUGE == 0 and len(run) == 512
                and bool(np.all(np.diff(run) == 4096)) and int(gpages[i + 511]) * 4096 == gpa + HUGE - 4096)
        kvm.rmpupdate(pa, initiator, assigned=True, huge=huge, asid=vm.asid, gpa=gpa)
        assert kvm.host.pvalidate(initiator, vm.asid, pa, gpa, huge=huge)[0] == 0
        i += 512 if huge else 1


HUGE = 2 << 20


@pytest.mark.parametrize("seed", range(4))
def test_gmem_invalidate_and_prepare_as_arrays_match_page_by_page(seed):
    """sev_gmem_invalidate and the 2 MiB-folio sev_gmem_prepare work on page arrays, one 2 MiB
    region at a time; on random lifecycles (VMs launched on fragmented memory, holes punched in 2 MiB
    entries, pages unassigned behind KVM's back, teardown) clocks, counters, the RMP, the direct map
    and the caches must come out as the page-by-page loops leave them."""
    def run(page_by_page):
        rng = np.random.default_rng(seed)
        h = sevsim.Host.from_preset("tiny", sme_coherent=True)
        h.snp_enable()
        kvm = Kvm(h, "none", initiator=7, gmem_huge=True)
        if page_by_page:
            kvm.sev_gmem_invalidate = lambda vm, g, cpu: _gmem_invalidate_page_by_page(kvm, vm, g, cpu)
            kvm.sev_gmem_prepare = lambda vm, g, cpu: _gmem_prepare_page_by_page(kvm, vm, g, cpu)
        vms = [kvm.sev_guest_init(f"v{i}", "snp", int(rng.integers(2, 6)) << 20, 1) for i in range(3)]
        kvm.sev_vm_destroy(vms.pop(1))  # its pages are reused, most recently freed first
        vms.append(kvm.sev_guest_init("w", "snp", 5 << 20, 2))
        touched = np.concatenate([vm.pages for vm in vms])
        for vm in vms:
            kvm.vcpu_run(vm, 0, int(rng.integers(8)), rng.integers(0, vm.memory, 2000, dtype=np.uint64) & ~np.uint64(63), True)
            # holes in the first 2 MiB only: the VM's later 2 MiB entries go whole at teardown
            kvm.kvm_gmem_punch_hole(vm, rng.choice(512, int(rng.integers(1, 40)), replace=False))
            gone = int(rng.choice(vm.pages))  # a page the RMP no longer shows as assigned: skipped
            if not h.rmp_entry(gone)["huge"]:
                kvm.rmpupdate(gone, 7, assigned=False, huge=False)
        touched = np.concatenate([touched] + [vm.pages for vm in vms])
        for vm in list(vms):
            kvm.sev_vm_destroy(vm)
        assert h.counters["psmashes"].sum() and h.counters["rmp_updates"].sum() < 3 * len(touched)  # both kinds
        return (h.clocks.tolist(), {k: v.tolist() for k, v in h.counters.items()},
                [h.rmp_entry(int(p)) for p in np.unique(touched)], h.direct_map_leaves, h.cached_lines(), h.cached_lines(dirty=True))
    assert run(False) == run(True)
