"""The Python API: construction, presets, batches, bad input (clear errors, engine unchanged, no
Rust panic reaches Python), determinism."""

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sevsim


def state(h):
    """Everything observable, to check that a failed call changed nothing."""
    c = h.counters
    return (
        {k: v.tolist() for k, v in c.items()},
        h.clocks.tolist(),
        [v.to_dict() for v in h.violations],
        h.cached_lines(),
        h.cached_lines(dirty=True),
    )


def test_presets_listed_with_descriptions():
    names = dict(sevsim.Host.presets())
    assert {"tiny", "epyc-9755-2s", "epyc-7742-2s"} <= set(names)
    assert all(names.values())


def test_epyc_9755_topology():
    h = sevsim.Host.from_preset("epyc-9755-2s", memory="64GiB")
    assert (h.cpu_count, h.core_count, h.ccd_count, h.socket_count) == (512, 256, 32, 2)
    assert h.features["sme_coherent"] is True
    c = h.caches
    assert (c["l1d"]["size"], c["l1d"]["ways"]) == (48 << 10, 12)
    assert (c["l2"]["size"], c["l3"]["size"]) == (1 << 20, 32 << 20)
    t = h.topology()
    assert t["cpu_core"][0] == t["cpu_core"][256]
    assert t["cpu_socket"][255] == 1 and t["cpu_socket"][0] == 0


def test_memory_sizes():
    assert sevsim.Host.from_preset("tiny", memory="1GiB").memory == 1 << 30
    assert sevsim.Host.from_preset("tiny", memory=8 << 20).memory == 8 << 20
    assert sevsim.parse_bytes("1.5TiB") == 1536 << 30


def test_access_batch_and_levels():
    h = sevsim.Host.from_preset("tiny")
    addr = np.arange(0, 1024, 8, dtype=np.uint64)
    r = h.access(0, addr, return_levels=True)
    assert r["memory"] == 16 and r["l1"] == 112
    assert r["levels"].dtype == np.uint8 and len(r["levels"]) == len(addr)
    cpu = np.array([0, 1, 2, 3], np.uint32)
    a = np.full(4, 0x40000, np.uint64)
    w = np.array([False, False, True, False])
    k = np.zeros(4, np.uint16)
    r = h.access(cpu, a, w, k, return_levels=True)
    # CPU 1 shares CPU 0's CCD; CPUs 2 and 3 are the other CCD (tiny: 2 CCDs x 2 cores)
    assert r["levels"].tolist() == [5, 3, 4, 3]
    c = h.counters
    assert c["remote_hits"][2] == 1 and c["peer_hits"][3] == 1 and c["invalidations"][2] == 2


def test_non_contiguous_arrays_are_accepted():
    h = sevsim.Host.from_preset("tiny")
    a = np.arange(0, 4096, 32, dtype=np.uint64)[::2]
    assert h.access(0, a)["memory"] == 64


@pytest.mark.parametrize(
    "call, exc, pattern",
    [
        (lambda: sevsim.Host.from_preset("nope"), ValueError, r"unknown preset .*tiny"),
        (lambda: sevsim.Host.from_preset("tiny", overrides={"l1d": {"ways": 0}}), ValueError, r"l1d\.ways"),
        (lambda: sevsim.Host.from_preset("tiny", overrides={"l2": {"size": "1000B"}}), ValueError, r"l2\.size.*multiple"),
        (lambda: sevsim.Host.from_preset("tiny", overrides={"l1d": {"size": 128, "ways": 4}}), ValueError, r"l1d\.ways = 4 is more than the 2 lines"),
        (lambda: sevsim.Host.from_preset("tiny", overrides={"l3": {"size": "48KiB"}}), ValueError, r"power-of-two"),
        (lambda: sevsim.Host.from_preset("tiny", overrides={"line_size": 128}), ValueError, r"line_size"),
        (lambda: sevsim.Host.from_preset("tiny", overrides={"bogus": 1}), ValueError, r"bogus"),
        (lambda: sevsim.Host.from_preset("tiny", overrides={"sockets": 0}), ValueError, r"sockets"),
        (lambda: sevsim.Host.from_preset("tiny", memory="12 parsecs"), ValueError, r"memory.*unit"),
        (lambda: sevsim.Host.from_preset("tiny", memory=1000), ValueError, r"memory.*4 KiB"),
        (lambda: sevsim.Host.from_preset("tiny", memory=-1), ValueError, r"memory"),
        (lambda: sevsim.Host.from_preset("tiny", overrides=[1]), TypeError, r"overrides"),
        (lambda: sevsim.Host.from_preset("tiny", profile="/nonexistent.toml"), OSError, r"nonexistent"),
    ],
)
def test_bad_construction(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()


def test_bad_profile_file(tmp_path):
    p = tmp_path / "p.toml"
    p.write_text("schema = 2\n[presets]\n")
    with pytest.raises(ValueError, match="schema 2"):
        sevsim.Host.from_preset("tiny", profile=p)
    p.write_text("this is not toml [")
    with pytest.raises(ValueError, match="cannot parse"):
        sevsim.Host.from_preset("tiny", profile=p)


BAD_CALLS = [
    (lambda h: h.access(8, np.zeros(3, np.uint64)), ValueError, r"cpu = 8 is out of range.*0\.\.7"),
    (lambda h: h.access(-1, np.zeros(3, np.uint64)), ValueError, r"cpu = -1"),
    (lambda h: h.access(np.array([0, 9], np.uint32), np.zeros(2, np.uint64)), ValueError, r"cpu\[1\] = 9"),
    (lambda h: h.access(0, np.array([0, 64 << 20], np.uint64)), ValueError, r"addr\[1\].*past the end"),
    (lambda h: h.access(0, np.zeros(3, np.int64)), TypeError, r"addr must be .*uint64.*int64"),
    (lambda h: h.access(0, [0, 64]), TypeError, r"addr must be a numpy array"),
    (lambda h: h.access(0, np.zeros((2, 2), np.uint64)), TypeError, r"1-D"),
    (lambda h: h.access(np.zeros(2, np.uint32), np.zeros(3, np.uint64)), ValueError, r"cpu has 2 elements but addr has 3"),
    (lambda h: h.access(0, np.zeros(3, np.uint64), np.zeros(2, bool)), ValueError, r"write has 2"),
    (lambda h: h.access(0, np.zeros(3, np.uint64), np.zeros(3, np.uint8)), TypeError, r"write must be .*bool"),
    (lambda h: h.access(0, np.zeros(3, np.uint64), False, np.full(3, 0xFFFF, np.uint16)), ValueError, r"key\[0\] = 65535"),
    (lambda h: h.access(0, np.zeros(3, np.uint64), False, 70000), ValueError, r"key = 70000"),
    (lambda h: h.access(0, np.zeros(3, np.uint64), "yes"), TypeError, r"write"),
    (lambda h: h.access(1.5, np.zeros(3, np.uint64)), TypeError, r"cpu must be an int"),
    (lambda h: h.wbinvd(99), ValueError, r"cpu = 99"),
    (lambda h: h.wbinvd_on_cpus(0, [1, 2, 100]), ValueError, r"cpus = 100"),
    (lambda h: h.wbnoinvd_on_cpus(0, "abc"), TypeError, r"cpus must be a sequence"),
    (lambda h: h.clflushopt_range(0, 64 << 20, 64), ValueError, r"past the end"),
    (lambda h: h.clflushopt_range(0, 0, 0), ValueError, r"size must be positive"),
    (lambda h: h.vm_page_flush(0, 1 << 40, 1), ValueError, r"pa = 0x10000000000 is past the end"),
    (lambda h: h.vm_page_flush(0, 0, 1 << 20), ValueError, r"asid"),
    (lambda h: h.set_owner(100, 4096, 1), ValueError, r"multiples of 0x1000"),
    (lambda h: h.set_owner((64 << 20) - 4096, 8192, 1), ValueError, r"past the end"),
    (lambda h: h.set_owner(0, 4096, -3), ValueError, r"key = -3"),
    (lambda h: h.dma_write(0, 0), ValueError, r"size must be positive"),
    (lambda h: h.dma_read(64 << 20, 64), ValueError, r"past the end"),
    (lambda h: h.owner(1 << 62), ValueError, r"past the end"),
    (lambda h: h.set_contents(4, 0, 0), ValueError, r"level must be 1, 2 or 3"),
    (lambda h: h.set_contents(1, 99, 0), ValueError, r"inst 99"),
    (lambda h: h.occupancy(0), ValueError, r"level"),
    (lambda h: h.activate(1 << 16), ValueError, r"key"),
]


@pytest.mark.parametrize("call, exc, pattern", BAD_CALLS)
def test_bad_calls_raise_clearly_and_change_nothing(call, exc, pattern):
    h = sevsim.Host.from_preset("tiny")
    h.set_owner(0x10000, 4096, 3)
    h.access(np.array([0, 2], np.uint32), np.array([0x10000, 0x20000], np.uint64), True, 3)
    before = state(h)
    with pytest.raises(exc, match=pattern):
        call(h)
    assert state(h) == before


@settings(max_examples=400, deadline=None)
@given(
    args=st.lists(
        st.one_of(
            st.integers(-(2**65), 2**65),
            st.floats(allow_nan=True),
            st.text(max_size=5),
            st.none(),
            st.booleans(),
            st.lists(st.integers(-5, 5), max_size=3),
        ),
        min_size=0,
        max_size=4,
    ),
    method=st.sampled_from(
        ["access", "wbinvd", "wbnoinvd", "wbinvd_on_cpus", "clflush", "clflushopt", "clflushopt_range",
         "vm_page_flush", "dma_read", "dma_write", "set_owner", "owner", "memory_line", "activate",
         "cycles", "copies", "set_contents", "occupancy", "cached_lines", "create_table", "map", "unmap", "walk",
         "create_context", "vmrun", "vmentry", "vmexit", "translate", "invlpg", "mov_cr3", "invpcid", "invlpga",
         "invlpgb", "tlbsync", "invept", "invvpid", "flush_tlb_all_on_cpus", "tlb_entries", "rmpupdate", "psmash",
         "pvalidate", "rmp_entry", "lookup_address", "direct_map_va", "set_memory_4k", "alloc_pages", "clear_pages",
         "npf_exit", "snp_set_asid", "ipi_call", "spend"]
    ),
)
def test_no_panic_reaches_python(method, args):
    """Whatever garbage is passed, the result is a value or an ordinary exception, never a
    pyo3_runtime.PanicException (which derives from BaseException, not Exception)."""
    h = sevsim.Host.from_preset("tiny")
    h.snp_enable()
    try:
        getattr(h, method)(*args)
    except (ValueError, TypeError, OverflowError):
        pass
    # the engine is still usable
    h.access(0, np.array([0], np.uint64))


def run_trace(seed):
    rng = np.random.default_rng(seed)
    h = sevsim.Host.from_preset("tiny")
    n = 20000
    cpu = rng.integers(0, 8, n).astype(np.uint32)
    addr = (rng.integers(0, 1 << 20, n) // 8 * 8).astype(np.uint64)
    write = rng.random(n) < 0.3
    key = rng.integers(0, 3, n).astype(np.uint16)
    h.set_owner(0, 1 << 19, 1)
    h.access(cpu, addr, write, key)
    h.wbnoinvd_on_cpus(0, range(0, 8, 2))
    h.access(cpu[::-1].copy(), addr, write, key)
    return state(h)


def test_same_inputs_same_results():
    assert run_trace(7) == run_trace(7)
    assert run_trace(7) != run_trace(8)


def test_violation_objects():
    h = sevsim.Host.from_preset("tiny")
    h.access(0, np.array([0x1000], np.uint64), True, 4)
    h.wbinvd(0)
    (v,) = h.violations
    assert v.kind == "corruption" and v.cause == "writeback_foreign_owner"
    assert re.match(r"Violation\(kind=\"corruption\"", repr(v))
    arr = h.violations_array()
    assert arr["pa"].tolist() == [0x1000]
    causes = dict(sevsim.Host.violation_causes())
    assert causes["stale_key_hit"] == "isolation"
    h.max_violations = 0
    h.access(0, np.array([0x2000], np.uint64), True, 4)
    h.wbinvd(0)
    assert len(h.violations) == 1 and h.violation_counts()["writeback_foreign_owner"] == 2
    h.clear_violations()
    assert h.violations == [] and sum(h.violation_counts().values()) == 0


def test_counters_are_named_numpy_arrays():
    h = sevsim.Host.from_preset("tiny")
    c = h.counters
    assert set(c) == set(sevsim.Host.counter_names())
    assert all(a.dtype == np.uint64 and a.shape == (8,) for a in c.values())


@settings(max_examples=600, deadline=None)
@given(
    method=st.sampled_from(
        ["wbinvd_on_cpus", "clflushopt_range", "vm_page_flush", "dma_write", "set_owner", "map", "unmap", "walk",
         "vmrun", "vmentry", "translate", "invlpg", "mov_cr3", "invpcid", "invlpga", "invlpgb", "tlbsync", "invept",
         "invvpid", "rmpupdate", "psmash", "pvalidate", "set_memory_4k", "clear_pages", "set_contents", "copies"]),
    args=st.lists(st.one_of(st.integers(-1, 9), st.sampled_from([0x1000, 0x200000, 0x201000, 1 << 26, (1 << 26) - 64,
                                                                   0xFFFF888000000000, 1 << 47])), max_size=6),
    kw=st.dictionaries(st.sampled_from(["assigned", "huge", "validate", "cbit", "global_"]), st.booleans(), max_size=3),
)
def test_plausible_garbage_never_panics(method, args, kw):
    """Small, plausible integers reach the engine's logic (not just the argument parsing)."""
    h = sevsim.Host.from_preset("tiny")
    h.snp_enable()
    gt = h.create_table("guest")
    nt = h.create_table("nested")
    h.create_context("svm", gt, nested=nt, tag=1)
    try:
        getattr(h, method)(*args, **kw)
    except (ValueError, TypeError, OverflowError):
        pass
    h.access(0, np.array([0], np.uint64))
    h.translate(0, 0x1000)
