"""SNP at host scale through Python: the compact direct map, batch splits, RMP checks at the size of
the translation used, flush_tlb_all the IPI or INVLPGB way, bad input."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sevsim

M2 = 2 << 20


def host(memory=None):
    h = sevsim.Host.from_preset("tiny", memory=memory)
    h.snp_enable()
    return h


def test_presplit_is_free_and_everything_walks_at_4k():
    h = sevsim.Host.from_preset("epyc-9755-2s", memory="1.5TiB")
    assert h.direct_map_leaves == {"4K": 0, "2M": 0, "1G": 1536}
    assert h.direct_map_presplit() == (1536, 1536 * 512)
    assert h.direct_map_leaves == {"4K": 1536 << 18, "2M": 0, "1G": 0}
    assert h.direct_map_bytes < 128 << 10
    assert h.direct_map_leaf(1 << 40) == 4096
    assert int(h.counters["dm_splits"].sum()) == 0 and int(h.clocks.max()) == 0


def test_batch_split_counts_and_leaf_sizes():
    h = host("2GiB")
    pa = np.array([(1 << 30) + 0x5000, (1 << 30) + 0x9000, (1 << 30) + M2, 0x1000], np.uint64)
    cycles, splits = h.set_memory_4k_batch(0, pa, flush="invlpgb")
    assert splits.tolist() == [2, 0, 1, 2] and cycles > 0
    assert int(h.counters["dm_splits"][0]) == 5 and int(h.counters["ipis_sent"][0]) == 0
    assert h.direct_map_leaf_sizes(np.array([0x1000, 3 * M2, 1 << 30], np.uint64)).tolist() == [4096, M2, 4096]
    # the same addresses again: nothing left to split, nothing charged
    assert h.set_memory_4k_batch(0, pa)[0] == 0


@pytest.mark.parametrize("flush, faults", [("none", 1), ("ipi", 0), ("invlpgb", 0)])
def test_a_stale_large_translation_is_checked_at_its_size(flush, faults):
    """The check granularity is the mapping the access went through (semantics.md 5.3): a host
    write through a 2 MiB direct-map TLB entry cached before a split, never flushed, faults when the
    region holds a private 4 KiB page."""
    h = host()
    va = h.direct_map_va(0x405000)
    h.translate(1, va)  # CPU 1 caches the 2 MiB translation
    h.set_memory_4k(0, h.direct_map_va(0x403000), flush=flush)
    assert h.lookup_address(va) == 4096
    assert h.rmpupdate(0, 0x403000, assigned=True, asid=5, gpa=0x1000) == 0
    r = h.access_virtual(1, np.array([va], np.uint64), write=True)
    assert r["rmp_fault"] == faults
    assert [v.cause for v in h.violations if v.kind == "rmp_fault"] == ["rmp_host_write_large_mapping"] * faults
    # a CPU that never cached it meets the 4 KiB leaf
    assert h.access(h.cpu_count - 1, np.array([0x405000], np.uint64), True)["rmp_fault"] == 0


def test_flush_tlb_all_ipi_pays_exits_and_wakeups_invlpgb_does_not():
    h = host()
    base = h.flush_tlb_all(0)
    h2 = host()
    h2.set_cpu_idle([2, 3])
    assert h2.cpu_idle.tolist()[:4] == [False, False, True, True]
    assert h2.flush_tlb_all(0, flush="ipi") > base
    assert h2.counters["flush_wakeups"].tolist()[2:4] == [1, 1]
    h3 = host()
    assert h3.flush_tlb_all(0, flush="invlpgb") < base
    assert int(h3.counters["ipis_sent"].sum()) == 0
    assert h3.flush_tlb_all(0, flush="none") == 0


@pytest.mark.parametrize("call, exc, pattern", [
    (lambda h: h.set_memory_4k(0, h.PAGE_OFFSET, flush="sometimes"), ValueError, "flush"),
    (lambda h: h.set_memory_4k_batch(0, np.array([1 << 40], np.uint64)), ValueError, r"pa\[0\]"),
    (lambda h: h.set_memory_4k_batch(0, np.array([0], np.int64)), TypeError, "uint64"),
    (lambda h: h.set_memory_4k_batch(99, np.array([0], np.uint64)), ValueError, "cpu"),
    (lambda h: h.direct_map_leaf(1 << 40), ValueError, "pa"),
    (lambda h: h.direct_map_leaf_sizes(np.array([0, 1 << 40], np.uint64)), ValueError, r"pa\[1\]"),
    (lambda h: h.flush_tlb_all(0, flush="ipis"), ValueError, "flush"),
    (lambda h: h.set_cpu_idle([0, 99]), ValueError, "cpus"),
    (lambda h: h.unmap(0, h.PAGE_OFFSET), ValueError, "direct map"),
])
def test_bad_calls_change_nothing(call, exc, pattern):
    h = host()
    with pytest.raises(exc, match=pattern):
        call(h)
    assert h.direct_map_leaves == host().direct_map_leaves
    assert not h.cpu_idle.any() and int(h.clocks.max()) == 0


@settings(max_examples=300, deadline=None)
@given(method=st.sampled_from(["set_memory_4k", "set_memory_4k_batch", "direct_map_leaf", "direct_map_leaf_sizes",
                               "flush_tlb_all", "set_cpu_idle"]),
       args=st.lists(st.one_of(st.integers(-1, 9), st.sampled_from([0x1000, M2, 1 << 26, 0xFFFF888000000000, 1 << 64]),
                               st.just(np.array([0, M2], np.uint64)), st.just("ipi"), st.none()), max_size=3))
def test_garbage_never_panics(method, args):
    h = host()
    try:
        getattr(h, method)(*args)
    except (ValueError, TypeError, OverflowError):
        pass


def test_direct_map_tax_bandwidth_and_batch_forms():
    h = sevsim.Host.from_preset("epyc-9755-2s", memory="64GiB")
    s = sevsim.Host.from_preset("epyc-9755-2s", memory="64GiB")
    s.direct_map_presplit()
    pages = np.arange(512, dtype=np.uint64) * np.uint64(4096) + np.uint64(2 << 30)
    a, b = h.clear_page_list(0, pages), s.clear_page_list(0, pages)
    assert b > a and int(s.counters["dm_walks"][0]) == 512 and int(h.counters["dm_walks"][0]) == 1
    assert s.direct_map_walks(1, pages[:100])[0] == 100 and h.direct_map_walks(1, pages[:100])[0] == 1
    assert h.clear_page_list(2, np.array([4 << 30], np.uint64), "2M") > 0
    assert h.npf_exit(3, 511) == 511 * h.npf_exit(3) and int(h.counters["npf_exits"][3]) == 512
    h = sevsim.Host.from_preset("epyc-9755-2s", memory="64GiB")  # a quiet socket again
    assert h.memory_factor(5) == 1.0 and h.spend_memory_bound(5, 1000) == 1000
    h.add_memory_traffic(5, "60MiB")
    assert h.socket_utilisation(5) > 0.3 and h.memory_factor(5) > 1.1 and h.spend_memory_bound(5, 1000) > 1000
    with pytest.raises(ValueError, match=r"pa\[0\]"):
        h.clear_page_list(0, np.array([4097], np.uint64))
    with pytest.raises(ValueError, match="page"):
        h.clear_page_list(0, pages, "1G")
