"""Random operation sequences through the engine and the pure-Python reference model must agree on
every counter, clock, violation, memory line and cache set (tiny hosts, with and without
SME_COHERENT)."""

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import sevsim
from refmodel import COUNTERS, RefHost, config_of

PAGE = 4096
# A few pages whose lines collide in the tiny caches' sets (L1: 4 sets, L2: 16, L3: 32).
PAGES = [0x10000, 0x11000, 0x20000, 0x31000]
LINES = [p + i * 64 for p in PAGES for i in (0, 1, 16, 32, 63)]
KEYS = [0, 1, 2]

cpus = st.integers(0, 7)
keys = st.sampled_from(KEYS)
lines = st.sampled_from(LINES)
pages = st.sampled_from(PAGES)


class EngineVsModel(RuleBasedStateMachine):
    coherent = False
    overrides = None

    @initialize()
    def build(self):
        self.h = sevsim.Host.from_preset("tiny", sme_coherent=self.coherent, overrides=self.overrides)
        self.m = RefHost(config_of(self.h), self.h.memory)

    @rule(cpu=cpus, pa=lines, write=st.booleans(), key=keys)
    def access(self, cpu, pa, write, key):
        got = self.h.access(cpu, np.array([pa], np.uint64), write, key, return_levels=True)
        want = self.m.access(cpu, pa, write, key)
        assert int(got["levels"][0]) == want

    @rule(cpu=cpus, pas=st.lists(lines, min_size=2, max_size=40), write=st.booleans(), key=keys)
    def access_batch(self, cpu, pas, write, key):
        # a batch that repeats lines exercises the engine's same-line fast path
        pas = sorted(pas)
        got = self.h.access(cpu, np.array(pas, np.uint64), write, key, return_levels=True)
        want = [self.m.access(cpu, pa, write, key) for pa in pas]
        assert got["levels"].tolist() == want

    @rule(ops=st.lists(st.tuples(cpus, lines, st.booleans(), keys), min_size=1, max_size=60))
    def mixed_batch(self, ops):
        cpu, pa, write, key = (np.array(c, dt) for c, dt in zip(zip(*ops), (np.uint32, np.uint64, bool, np.uint16)))
        got = self.h.access(cpu, pa, write, key, return_levels=True)
        want = [self.m.access(*op) for op in ops]
        assert got["levels"].tolist() == want

    @rule(cpu=cpus)
    def wbinvd(self, cpu):
        assert self.h.wbinvd(cpu) == self.m.wbinvd_on_cpus(cpu, [cpu], True)

    @rule(cpu=cpus)
    def wbnoinvd(self, cpu):
        assert self.h.wbnoinvd(cpu) == self.m.wbinvd_on_cpus(cpu, [cpu], False)

    @rule(init=cpus, cpu_set=st.lists(cpus, min_size=1, max_size=8), invalidate=st.booleans())
    def wbinvd_on_cpus(self, init, cpu_set, invalidate):
        f = self.h.wbinvd_on_cpus if invalidate else self.h.wbnoinvd_on_cpus
        assert f(init, cpu_set) == self.m.wbinvd_on_cpus(init, cpu_set, invalidate)

    @rule(cpu=cpus, pa=lines, key=keys, opt=st.booleans())
    def clflush(self, cpu, pa, key, opt):
        f = self.h.clflushopt if opt else self.h.clflush
        assert f(cpu, pa, key) == self.m.clflush(cpu, pa, 1, key, opt, False)

    @rule(cpu=cpus, pa=lines, n=st.integers(1, 300), key=keys)
    def clflushopt_range(self, cpu, pa, n, key):
        assert self.h.clflushopt_range(cpu, pa, n, key) == self.m.clflush(cpu, pa, n, key, True, True)

    @rule(cpu=cpus, pa=pages, key=keys)
    def vm_page_flush(self, cpu, pa, key):
        assert self.h.vm_page_flush(cpu, pa, key) == self.m.vm_page_flush(cpu, pa, key)

    @rule(pa=lines, n=st.integers(1, 200), key=st.sampled_from([0, 1]), write=st.booleans())
    def dma(self, pa, n, key, write):
        (self.h.dma_write if write else self.h.dma_read)(pa, n, key)
        self.m.dma(pa, n, key, write)

    @rule(pa=pages, npages=st.integers(1, 2), key=keys)
    def set_owner(self, pa, npages, key):
        self.h.set_owner(pa, npages * PAGE, key)
        self.m.set_owner(pa, npages * PAGE, key)

    @rule(key=st.sampled_from([1, 2]))
    def activate(self, key):
        assert self.h.activate(key) == self.m.activate(key)

    @invariant()
    def same_observables(self):
        c = self.h.counters
        for name in COUNTERS:
            assert c[name].tolist() == self.m.ctr[name], name
        assert self.h.clocks.tolist() == self.m.clocks
        got = [(v.cause, v.cpu, v.pa, v.key, v.other_key, v.owner, v.cycle) for v in self.h.violations]
        assert got == self.m.violations
        for pa in LINES:
            assert self.h.memory_line(pa) == tuple(self.m.memory_line(pa)), hex(pa)

    def teardown(self):
        if not hasattr(self, "h"):
            return
        caches = self.h.caches
        for level, name, insts in ((1, "l1d", 4), (2, "l2", 4), (3, "l3", 2)):
            for inst in range(insts):
                for s in range(caches[name]["sets"]):
                    assert self.h.set_contents(level, inst, s) == self.m.set_contents(level, inst, s)


class CoherentEngineVsModel(EngineVsModel):
    coherent = True


# The engine compiles its set operations separately for 8-, 12- and 16-way sets (tiny's L3 is
# 8-way, its L1 and L2 4-way: the run-time path), and its batch loop for exactly 8/16/16 and
# 12/16/16 geometries. These are real geometries' associativities, with one or two sets per cache
# so that the few lines above collide.
WIDE = {
    "l1d": {"size": "768B", "ways": 12},
    "l2": {"size": "2KiB", "ways": 16},
    "l3": {"size": "2KiB", "ways": 16},
}
WIDE8 = {**WIDE, "l1d": {"size": "512B", "ways": 8}}


class WideEngineVsModel(EngineVsModel):
    overrides = WIDE


class Wide8CoherentEngineVsModel(EngineVsModel):
    coherent = True
    overrides = WIDE8


class WideCoherentEngineVsModel(EngineVsModel):
    coherent = True
    overrides = WIDE


SETTINGS = settings(
    max_examples=150,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

TestNonCoherent = EngineVsModel.TestCase
TestNonCoherent.settings = SETTINGS
TestCoherent = CoherentEngineVsModel.TestCase
TestCoherent.settings = SETTINGS
TestWide = WideEngineVsModel.TestCase
TestWide.settings = settings(SETTINGS, max_examples=80)
TestWideCoherent = WideCoherentEngineVsModel.TestCase
TestWideCoherent.settings = settings(SETTINGS, max_examples=80)
TestWide8Coherent = Wide8CoherentEngineVsModel.TestCase
TestWide8Coherent.settings = settings(SETTINGS, max_examples=80)


def test_model_reads_the_same_config():
    h = sevsim.Host.from_preset("tiny")
    m = RefHost(config_of(h), h.memory)
    assert (m.cpus, m.cores, m.ccds) == (h.cpu_count, h.core_count, h.ccd_count)
