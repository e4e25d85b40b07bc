"""Range operations visit only the cached lines of a range (the engine's range.rs); the line-by-line
form (`host.range_fast = False`) is the reference. On random small hosts, random fills and random
sequences of range operations, both must give the same clocks, counters, violations (cycle
included), cache contents and memory, in every mode the engine can choose."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sevsim

MIB = 1 << 20
MEM = 32 * MIB
KEYS = (0, 3, 5)


def build(seed: int, sme: bool, spread: bool, mode: str, overrides: dict | None) -> sevsim.Host:
    rng = np.random.default_rng(seed)
    h = sevsim.Host.from_preset("tiny", memory=MEM, sme_coherent=sme, overrides=overrides)
    h.range_mode = mode
    # a few guest-owned regions, one page-granular (a mixed 2 MiB region)
    h.set_owner(4 * MIB, 2 * MIB, 3)
    h.set_owner(8 * MIB + 4096, 3 * 4096, 5)
    n = 4000
    cpus = rng.integers(0, h.cpu_count if spread else 2, n).astype(np.uint32)
    addr = (rng.integers(0, 12 * MIB, n) & ~7).astype(np.uint64)
    write = rng.random(n) < 0.4
    for k in KEYS:
        sel = rng.random(n) < 0.34
        if sel.any():
            h.access(cpus[sel], addr[sel], write[sel], k)
    return h


def state(h: sevsim.Host):
    caches = []
    geo = h.caches
    for level, name, insts in ((1, "l1d", h.core_count), (2, "l2", h.core_count), (3, "l3", h.ccd_count)):
        for inst in range(insts):
            for s in range(geo[name]["sets"]):
                caches.append(tuple(h.set_contents(level, inst, s)))
    mem = [h.memory_line(pa) for pa in range(0, 12 * MIB, 64 * 13)]
    return {
        "clocks": h.clocks.tolist(),
        "counters": {k: v.tolist() for k, v in h.counters.items()},
        "violations": [v.to_dict() for v in h.violations],
        "counts": h.violation_counts(),
        "caches": caches,
        "memory": mem,
        "owners": [h.owner(pa) for pa in range(0, 12 * MIB, 4096 * 7)],
        "audit": h.audit(),
    }


page = st.integers(0, 12 * MIB // 4096 - 1)
op = st.one_of(
    st.tuples(st.just("clflushopt_range"), st.integers(0, 7), page, st.integers(1, 1024), st.sampled_from(KEYS)),
    st.tuples(st.just("clflushopt_ranges"), st.integers(0, 7), st.lists(st.tuples(page, st.integers(1, 300)), max_size=6),
              st.sampled_from(KEYS)),
    st.tuples(st.just("clflush"), st.integers(0, 7), page, st.just(1), st.sampled_from(KEYS)),
    st.tuples(st.just("vm_page_flush_pages"), st.integers(0, 7), st.lists(page, max_size=400), st.sampled_from(KEYS)),
    st.tuples(st.just("dma_read"), page, st.integers(1, 2048), st.sampled_from(KEYS)),
    st.tuples(st.just("dma_write"), page, st.integers(1, 2048), st.sampled_from(KEYS)),
    st.tuples(st.just("set_owner"), page, st.integers(1, 700), st.sampled_from(KEYS)),
    st.tuples(st.just("access"), st.integers(0, 7), page, st.integers(1, 64), st.sampled_from(KEYS)),
)


def apply(h: sevsim.Host, ops) -> None:
    for o in ops:
        name = o[0]
        if name == "clflushopt_range":
            _, cpu, p, n, key = o
            n = min(n, MEM // 4096 - p)
            h.clflushopt_range(cpu, p * 4096, n * 4096, key=key)
        elif name == "clflushopt_ranges":
            _, cpu, rs, key = o
            pa = np.array([p * 4096 for p, _ in rs], dtype=np.uint64)
            size = np.array([n * 64 for _, n in rs], dtype=np.uint64)
            h.clflushopt_ranges(cpu, pa, size, key=key)
        elif name == "clflush":
            _, cpu, p, _n, key = o
            h.clflush(cpu, p * 4096 + 128, key=key)
        elif name == "vm_page_flush_pages":
            _, cpu, ps, key = o
            h.vm_page_flush_pages(cpu, np.array(ps, dtype=np.uint64) * np.uint64(4096), max(key, 1))
        elif name in ("dma_read", "dma_write"):
            _, p, n, key = o
            getattr(h, name)(p * 4096 + 64, n * 64, key=key)
        elif name == "set_owner":
            _, p, n, key = o
            n = min(n, MEM // 4096 - p)
            h.set_owner(p * 4096, n * 4096, key)
        else:
            _, cpu, p, n, key = o
            addr = np.arange(p * 4096, p * 4096 + n * 64 * 8, 64 * 8, dtype=np.uint64)
            h.access(cpu, addr, True, key)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), sme=st.booleans(), spread=st.booleans(), ops=st.lists(op, min_size=1, max_size=8),
       mode=st.sampled_from(["auto", "directory", "caches"]))
def test_fast_equals_line_by_line(seed, sme, spread, ops, mode):
    ref = build(seed, sme, spread, "lines", None)
    assert not ref.range_fast
    fast = build(seed, sme, spread, mode, None)
    assert fast.range_fast
    apply(ref, ops)
    apply(fast, ops)
    assert state(fast) == state(ref)


@pytest.mark.parametrize("mode", ["auto", "directory", "caches"])
def test_whole_memory_flush_equal_and_violations_seen(mode):
    """A flush of all memory with dirty foreign lines cached: violations, write-backs and cycles
    the same in both forms (and there are some: the comparison is not vacuous)."""
    ref = build(7, False, True, "lines", None)
    fast = build(7, False, True, mode, None)
    for h in (ref, fast):
        h.set_owner(0, 12 * MIB, 5)  # the host hands the memory to key 5: cached key-0/3 lines are foreign
        h.vm_page_flush_pages(1, np.arange(0, 12 * MIB, 4096, dtype=np.uint64)[::-1].copy(), 3)
        h.clflushopt_range(2, 0, MEM, key=0)
        h.dma_write(0, 12 * MIB, key=3)
    s = state(fast)
    assert s == state(ref)
    assert s["counts"], "expected violations"
    assert sum(s["counters"]["writebacks"]) > 0


def test_clflush_charge_is_per_line_of_the_whole_range():
    h = sevsim.Host.from_preset("tiny", memory="1GiB")
    c = h.cost
    cycles = h.clflushopt_range(0, 0, 1 << 30)
    assert cycles == c["clflushopt_line"] * ((1 << 30) // 64) + 2 * c["fence"]
    assert h.counters["clflush_lines"][0] == (1 << 30) // 64


def test_range_mode_rejects_unknown():
    h = sevsim.Host.from_preset("tiny")
    with pytest.raises(ValueError, match="range_mode"):
        h.range_mode = "fastest"
    with pytest.raises(ValueError, match="size"):
        h.clflushopt_ranges(0, np.array([0, 4096], dtype=np.uint64), np.array([64], dtype=np.uint64))
    with pytest.raises(ValueError, match="range 1"):
        h.set_owner_ranges(np.array([0, 1 << 40], dtype=np.uint64), np.array([4096, 4096], dtype=np.uint64), 1)
    assert h.range_mode == "auto"
