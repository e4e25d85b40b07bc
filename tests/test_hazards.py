"""The textbook cache hazards of memory encryption (semantics.md 1.6), each as a named test through
the Python API: a skipped flush is caught, each correct flush prevents it."""

import numpy as np
import pytest

import sevsim

GUEST = 5
PAGE = 4096
P = 0x10000


def host(coherent):
    return sevsim.Host.from_preset("tiny", sme_coherent=coherent)


def guest_writes_page(h, cpu=1):
    h.set_owner(P, PAGE, GUEST)
    h.access(cpu, np.arange(P, P + PAGE, 64, dtype=np.uint64), True, GUEST)
    assert h.violation_counts()["writeback_foreign_owner"] == 0


def host_reuses_page_and_everything_is_evicted(h):
    h.set_owner(P, PAGE, 0)
    h.access(0, np.arange(P, P + PAGE, 64, dtype=np.uint64), True, 0)
    h.wbinvd_on_cpus(0, range(h.cpu_count))


def caught(h):
    return h.violation_counts()["writeback_foreign_owner"] > 0


@pytest.mark.parametrize("coherent", [False, True])
def test_dirty_guest_line_written_back_after_set_owner_is_caught(coherent):
    h = host(coherent)
    guest_writes_page(h)
    h.set_owner(P, PAGE, 0)
    # before anything is evicted, the audit already sees the latent hazard
    assert h.audit()["dirty_foreign_owner"] > 0
    host_reuses_page_and_everything_is_evicted(h)
    assert caught(h)
    v = next(v for v in h.violations if v.cause == "writeback_foreign_owner")
    assert (v.kind, v.key, v.owner) == ("corruption", GUEST, 0)
    assert P <= v.pa < P + PAGE


def test_wbnoinvd_before_set_owner_prevents_it_and_keeps_lines_valid():
    h = host(False)
    guest_writes_page(h)
    cached = h.cached_lines(key=GUEST)
    h.wbnoinvd_on_cpus(0, range(h.cpu_count))
    assert h.cached_lines(key=GUEST, dirty=True) == 0
    assert h.cached_lines(key=GUEST) == cached
    host_reuses_page_and_everything_is_evicted(h)
    assert not caught(h)
    assert sum(h.violation_counts().values()) == 0


def test_wbinvd_before_set_owner_prevents_it_and_empties_the_caches():
    h = host(False)
    guest_writes_page(h)
    h.wbinvd_on_cpus(0, range(h.cpu_count))
    assert h.cached_lines() == 0
    host_reuses_page_and_everything_is_evicted(h)
    assert not caught(h)


@pytest.mark.parametrize("coherent", [False, True])
def test_clflushopt_under_the_host_key_prevents_it_only_with_sme_coherent(coherent):
    h = host(coherent)
    guest_writes_page(h)
    h.clflushopt_range(0, P, PAGE, key=0)
    host_reuses_page_and_everything_is_evicted(h)
    assert caught(h) is (not coherent)


def test_vm_page_flush_prevents_it():
    h = host(False)
    guest_writes_page(h)
    assert h.vm_page_flush(3, P, GUEST) is True
    host_reuses_page_and_everything_is_evicted(h)
    assert not caught(h)


@pytest.mark.parametrize("coherent", [False, True])
def test_dma_write_after_a_cached_dirty_line_is_caught_even_with_sme_coherent(coherent):
    h = host(coherent)
    guest_writes_page(h)
    h.dma_write(P, 256)
    c = h.violation_counts()
    assert c["dma_write_dirty_line"] == 4
    v = h.violations[0]
    assert (v.kind, v.cpu, v.key, v.other_key) == ("dma", -1, GUEST, 0)


def test_dma_read_meets_a_dirty_guest_line():
    h = host(True)
    guest_writes_page(h)
    h.dma_read(P, 64)
    assert h.violation_counts()["dma_read_dirty_line"] == 1


def test_recycled_asid_without_wbinvd_leaks_the_old_tenants_lines():
    h = host(False)
    guest_writes_page(h)
    # the ASID's key slot gets a new key for a new VM without WBINVD + DF_FLUSH first
    assert h.activate(GUEST) > 0
    h.access(1, P, False, GUEST)
    assert h.violation_counts()["stale_key_hit"] == 1
    assert h.violation_kinds()["isolation"] == 1
    assert h.audit()["dirty_stale_key"] > 0


def test_recycled_asid_after_wbinvd_is_clean():
    h = host(False)
    guest_writes_page(h)
    h.wbinvd_on_cpus(0, range(h.cpu_count))
    assert h.activate(GUEST) == 0
    h.access(1, P, False, GUEST)
    assert sum(h.violation_counts().values()) == 0


def test_host_reading_a_guest_page_reads_foreign_data():
    h = host(False)
    guest_writes_page(h)
    h.wbnoinvd(1)  # the guest's data reaches memory
    h.access(2, P, False, 0)  # another CCD reads it under the host key
    assert h.violation_counts()["read_foreign_data"] == 1


def test_vm_page_flush_pages_is_one_wrmsr_per_page():
    """The batch form flushes like the single-page WRMSR, page for page, and charges the same."""
    a, b = host(False), host(False)
    two = np.arange(P, P + 2 * PAGE, 64, dtype=np.uint64)
    for h in (a, b):
        h.set_owner(P, 2 * PAGE, GUEST)
        h.access(1, two, True, GUEST)
    assert a.vm_page_flush(3, P, GUEST) and a.vm_page_flush(3, P + PAGE, GUEST)
    assert b.vm_page_flush_pages(3, np.array([P, P + PAGE], np.uint64), GUEST) is True
    assert a.counters["vm_page_flush"].tolist() == b.counters["vm_page_flush"].tolist()
    assert a.clocks.tolist() == b.clocks.tolist()
    assert a.cached_lines(GUEST) == b.cached_lines(GUEST) == 0
    for h in (a, b):
        h.set_owner(P, 2 * PAGE, 0)
        h.access(0, two, True, 0)
        h.wbinvd_on_cpus(0, range(h.cpu_count))
        assert not caught(h)


def test_vm_page_flush_pages_without_the_feature_faults_once_and_changes_nothing():
    h = sevsim.Host.from_preset("tiny", sme_coherent=False, overrides={"features": {"vm_page_flush": False}})
    guest_writes_page(h)
    before = h.cached_lines(GUEST)
    assert h.vm_page_flush_pages(3, np.array([P, P + PAGE], np.uint64), GUEST) is False
    assert h.counters["faults"][3] == 1
    assert h.cached_lines(GUEST) == before


def test_vm_page_flush_pages_rejects_bad_input_before_flushing():
    h = host(False)
    guest_writes_page(h)
    before = h.cached_lines(GUEST)
    with pytest.raises(ValueError, match=r"pa\[1\]"):
        h.vm_page_flush_pages(3, np.array([P, h.memory], np.uint64), GUEST)
    with pytest.raises(TypeError):
        h.vm_page_flush_pages(3, np.array([P], np.int32), GUEST)
    assert h.cached_lines(GUEST) == before
