"""Random translation and invalidation sequences through the engine and the Python model of the TLB
semantics (tests/refmodel_tlb.py) must agree on every translation, TLB counter and violation."""

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

import pytest

import sevsim
from refmodel_tlb import CBIT, CTX_COUNTERS, GLOBAL, HOST, RDONLY, SHIFT, NO_TABLE, SVM, VMX, Ctx, RefTlb, Table

VAS = [0x400000, 0x401000, 0x402000, 0x600000, 0x40000000, 0xFFFF800000000000]
GPAS = [0x1000, 0x2000, 0x200000, 0x400000, 0x40000000]
HPAS = [0x100000, 0x101000, 0x200000, 0x400000, 0x1000000, 0x2000000]
SIZES = {0: "4K", 1: "2M", 2: "1G"}
COUNTERS = ["tlb_l1_hits", "tlb_l2_hits", "tlb_misses", "gphys_hits", "gphys_misses", "page_faults", "write_faults",
            "tlb_flush_ops", "tlb_dropped", "vmruns", "vmrun_failures"]

cpus = st.integers(0, 7)
NPT12 = 6
SETTINGS = settings(max_examples=120, stateful_step_count=50, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
# a run of 4 KiB pages in host table 0, mapped at the start, that sweeps translate through: more
# distinct translations than a core's TLB holds, so LRU replacement decides later hits
RUN_VA, RUN_HPA, RUN_PAGES = 0x10000000, 0x2000000, 40


class TlbEngineVsModel(RuleBasedStateMachine):
    # the TLB geometry: L1 entries (fully associative), L2 entries, L2 ways
    GEOMETRY = (4, 16, 4)
    # TLB entries tagged by SMT thread (the presets' setting) or shared by a core's threads
    SMT_TAGGED = True

    @initialize()
    def build(self):
        l1, l2, l2_ways = self.GEOMETRY
        self.h = sevsim.Host.from_preset("tiny", overrides={"tlb": {"l1_entries": l1, "l2_entries": l2, "l2_ways": l2_ways,
                                                                    "smt_tagged": self.SMT_TAGGED}})
        owners = {}
        self.owners = owners
        self.m = RefTlb(4, 8, l1, l2, l2_ways, None, lambda pa: owners.get(pa >> 12, 0), self.SMT_TAGGED)
        # tables: 0 host (exists), 1 host, 2-3 guest, 4-5 nested, 6 guest (an NPT12/EPT12: L2
        # guest-physical -> L1 guest-physical, for declared nested truths)
        for kind in ("host", "guest", "guest", "nested", "nested", "guest"):
            assert self.h.create_table(kind) == len(self.m.tables)
            self.m.tables.append(Table(kind))
        # contexts: 1 SVM ASID 1 of VM 1; 2 SVM ASID 1 of VM 2 (a reused ASID); 3 SVM ASID 2;
        # 4 VMX VPID 1 on EPT 4; 5 VMX VPID 0 on EPT 5
        specs = [("svm", SVM, 1, 2, 4, 5, 1), ("svm", SVM, 1, 3, 5, 6, 2), ("svm", SVM, 2, 2, 5, 7, 3),
                 ("vmx", VMX, 1, 2, 4, 0, 4), ("vmx", VMX, 0, 3, 5, 0, 5)]
        self.svm, self.vmx = [], []
        for name, mode, tag, cr3, nested, key, vm in specs:
            cid = self.h.create_context(name, cr3, nested=nested, tag=tag, key=key, vm=vm)
            self.m.ctxs.append(Ctx(mode, tag, 0, cr3, nested, key, vm))
            assert cid == len(self.m.ctxs) - 1
            (self.svm if mode == SVM else self.vmx).append(cid)
        # context 6: a second host context on host table 1 (a CPU's own host CR3)
        self.host_ctxs = [0, self.h.create_context("host", 1)]
        self.m.ctxs.append(Ctx(HOST, 0, 0, 1, NO_TABLE, 0, 0))
        # context 7: a host context with CR4.PCIDE clear (PCID 0; CR3 bit 63 a #GP)
        self.host_ctxs.append(self.h.create_context("host", 1, pcide=False))
        self.m.ctxs.append(Ctx(HOST, 0, 0, 1, NO_TABLE, 0, 0, pcide=False))
        for p in range(RUN_PAGES):
            assert self.m.tables[0].map(RUN_VA + p * 4096, RUN_HPA + p * 4096, 0, 0)
            self.h.map(0, RUN_VA + p * 4096, RUN_HPA + p * 4096)

    @rule(table=st.integers(0, 5), va=st.integers(0, len(VAS) - 1), tgt=st.integers(0, 5), size=st.integers(0, 2),
          cbit=st.booleans(), glob=st.booleans(), ro=st.booleans())
    def map(self, table, va, tgt, size, cbit, glob, ro):
        t = self.m.tables[table]
        addr = (GPAS[va % len(GPAS)] if t.kind == "nested" else VAS[va])
        target = GPAS[tgt % len(GPAS)] if t.kind == "guest" else HPAS[tgt]
        flags = (CBIT if cbit else 0) | (GLOBAL if glob else 0) | (RDONLY if ro else 0)
        ok = t.map(addr, target, size, flags)
        try:
            self.h.map(table, addr, target, SIZES[size], cbit=cbit, global_=glob, writable=not ro)
            assert ok, "engine mapped what the model refused"
        except ValueError:
            assert not ok, "engine refused what the model mapped"

    @rule(i=st.integers(0, 4), va=st.integers(0, len(VAS) - 1), gpa=st.integers(0, len(GPAS) - 1), hpa=st.integers(0, 5))
    def map_chain(self, i, va, gpa, hpa):
        # a 4 KiB guest page through a context's current guest and nested tables (where free)
        c = self.m.ctxs[(self.svm + self.vmx)[i]]
        for table, addr, target in ((c.cr3, VAS[va], GPAS[gpa]), (c.nested, GPAS[gpa], HPAS[hpa])):
            if self.m.tables[table].map(addr, target, 0, 0):
                self.h.map(table, addr, target)

    @rule(cpu=cpus, i=st.integers(0, 4), nested=st.booleans(), va=st.integers(0, len(VAS) - 1), tgt=st.integers(0, 5),
          ro=st.booleans())
    def remap_and_flush_linear(self, cpu, i, nested, va, tgt, ro):
        # a guest runs and translates every address; a leaf of its guest or nested table changes
        # in place (unmap + map at its size); its linear/combined entries go (INVVPID single, or
        # INVLPGA of every address) while its guest-physical ones stay; it translates again
        cid = (self.svm + self.vmx)[i]
        if self.m.ctxs[cid].mode == SVM:
            if self.h.vmrun(cpu, cid, 0) != self.m.vmrun(cpu, cid, 0):
                raise AssertionError("vmrun")
        else:
            self.h.vmentry(cpu, cid)
            self.m.vmentry(cpu, cid)
        c = self.m.cpu_ctx[cpu]
        if c.mode == HOST:
            return
        for v in VAS:
            assert self.h.translate(cpu, v) == self.m.translate(cpu, v)
        table = c.nested if nested else c.cr3
        t = self.m.tables[table]
        addr = GPAS[va % len(GPAS)] if nested else VAS[va]
        w = t.walk(addr)
        if w is None:
            return
        size = w[0]
        base = addr >> SHIFT[size] << SHIFT[size]
        target = (HPAS[tgt] if nested else GPAS[tgt % len(GPAS)]) >> SHIFT[size] << SHIFT[size]
        flags = w[2] & (CBIT | GLOBAL) | (RDONLY if ro else 0)
        assert self.h.unmap(table, base) == t.unmap(base)
        ok = t.map(base, target, size, flags)
        try:
            self.h.map(table, base, target, SIZES[size], cbit=bool(flags & CBIT), global_=bool(flags & GLOBAL),
                       writable=not ro)
            assert ok
        except ValueError:
            assert not ok
        if c.mode == VMX and c.tag:
            assert self.h.invvpid(cpu, 1, c.tag) == self.m.invvpid(cpu, 1, c.tag, 0)
        for v in VAS:
            if c.mode == SVM:
                assert self.h.invlpga(cpu, v, c.tag) == self.m.invlpga(cpu, v, c.tag)
            else:
                assert self.h.invlpg(cpu, v) == self.m.invlpg(cpu, v)
        for v in VAS:
            assert self.h.translate(cpu, v) == self.m.translate(cpu, v)

    @rule(gpa=st.integers(0, len(GPAS) - 1), tgt=st.integers(0, len(GPAS) - 1), ro=st.booleans(), unmap=st.booleans(),
          big=st.booleans())
    def edit_npt12(self, gpa, tgt, ro, unmap, big):
        # L1 edits its nested table for L2 (4 KiB leaves, or 2 MiB where both ends are aligned:
        # a chain coarser or finer than the shadow)
        t = self.m.tables[NPT12]
        if unmap:
            assert self.h.unmap(NPT12, GPAS[gpa]) == t.unmap(GPAS[gpa])
            return
        size = 1 if big and GPAS[gpa] % (2 << 20) == 0 and GPAS[tgt] % (2 << 20) == 0 else 0
        ok = t.map(GPAS[gpa], GPAS[tgt], size, RDONLY if ro else 0)
        try:
            self.h.map(NPT12, GPAS[gpa], GPAS[tgt], SIZES[size], writable=not ro)
            assert ok
        except ValueError:
            assert not ok

    @rule(i=st.integers(0, 4), clear=st.booleans())
    def set_nested_truth(self, i, clear):
        # declare a context an L2 guest: its nested table is the shadow, the truth NPT12 then the
        # other nested table as NPT01
        cid = (self.svm + self.vmx)[i]
        if clear:
            self.h.set_nested_truth(cid, None, None)
            self.m.set_nested_truth(cid, None)
            return
        t01 = 9 - self.m.ctxs[cid].nested
        self.h.set_nested_truth(cid, NPT12, t01)
        self.m.set_nested_truth(cid, (NPT12, t01))

    @rule(table=st.integers(0, 5), va=st.integers(0, len(VAS) - 1))
    def unmap(self, table, va):
        t = self.m.tables[table]
        addr = GPAS[va % len(GPAS)] if t.kind == "nested" else VAS[va]
        assert self.h.unmap(table, addr) == t.unmap(addr)

    @rule(cpu=cpus, i=st.integers(0, 2), tlb_control=st.sampled_from([0, 1, 2, 3, 7]))
    def vmrun(self, cpu, i, tlb_control):
        assert self.h.vmrun(cpu, self.svm[i], tlb_control) == self.m.vmrun(cpu, self.svm[i], tlb_control)

    @rule(cpu=cpus, i=st.integers(0, 1))
    def vmentry(self, cpu, i):
        self.h.vmentry(cpu, self.vmx[i])
        self.m.vmentry(cpu, self.vmx[i])

    @rule(cpu=cpus)
    def vmexit(self, cpu):
        self.h.vmexit(cpu)
        self.m.vmexit(cpu)

    @rule(cpu=cpus, va=st.sampled_from(VAS), write=st.booleans())
    def translate(self, cpu, va, write):
        before = self.h.violation_counts()["stale_translation"]
        got = self.h.translate(cpu, va, write)
        assert got == self.m.translate(cpu, va, write)
        # independent of both TLB models: a translation to anything but what the tables (or the
        # declared chain) say now is a stale translation, recorded by the same call
        if got is not None and got[0] != true_pa(self.m, cpu, va):
            assert self.h.violation_counts()["stale_translation"] > before, (hex(va), got, true_pa(self.m, cpu, va))

    @rule(cpu=cpus, acc=st.lists(st.tuples(st.sampled_from(VAS), st.booleans()), min_size=1, max_size=20))
    def translate_batch(self, cpu, acc):
        vas, writes = [a for a, _ in acc], [w for _, w in acc]
        got = self.h.access_virtual(cpu, np.array(vas, np.uint64), np.array(writes, bool),
                                    return_levels=True)["levels"].tolist()
        want = [self.m.translate(cpu, va, w) for va, w in acc]
        assert [g == 7 for g in got] == [w is None for w in want]

    @rule(cpu=cpus, pages=st.lists(st.integers(0, RUN_PAGES - 1), min_size=1, max_size=60))
    def sweep(self, cpu, pages):
        vas = [RUN_VA + p * 4096 for p in pages]
        got = self.h.access_virtual(cpu, np.array(vas, np.uint64), return_levels=True)["levels"].tolist()
        want = [self.m.translate(cpu, va) for va in vas]
        assert [g == 7 for g in got] == [w is None for w in want]

    @rule(cpu=cpus, va=st.sampled_from(VAS))
    def invlpg(self, cpu, va):
        assert self.h.invlpg(cpu, va) == self.m.invlpg(cpu, va)

    @rule(cpu=cpus, va=st.sampled_from(VAS), asid=st.integers(0, 2))
    def invlpga(self, cpu, va, asid):
        assert self.h.invlpga(cpu, va, asid) == self.m.invlpga(cpu, va, asid)

    @rule(cpu=cpus, kind=st.integers(0, 3), eptp=st.sampled_from([4, 5]))
    def invept(self, cpu, kind, eptp):
        assert self.h.invept(cpu, kind, eptp) == self.m.invept(cpu, kind, eptp)

    @rule(cpu=cpus, kind=st.integers(0, 4), vpid=st.integers(0, 2), va=st.sampled_from(VAS))
    def invvpid(self, cpu, kind, vpid, va):
        assert self.h.invvpid(cpu, kind, vpid, va) == self.m.invvpid(cpu, kind, vpid, va)

    @rule(cpu=cpus, kind=st.integers(0, 4), pcid=st.integers(0, 1), va=st.sampled_from(VAS))
    def invpcid(self, cpu, kind, pcid, va):
        assert self.h.invpcid(cpu, kind, pcid, va) == self.m.invpcid(cpu, kind, pcid, va)

    @rule(cpu=cpus, table=st.sampled_from([0, 1]), pcid=st.integers(0, 1), noflush=st.booleans())
    def mov_cr3_host(self, cpu, table, pcid, noflush):
        if self.m.cpu_ctx[cpu].mode != HOST:
            return
        if not self.m.cpu_ctx[cpu].pcide and pcid:
            with pytest.raises(ValueError, match="PCIDE"):
                self.h.mov_cr3(cpu, table, pcid, noflush)
            with pytest.raises(ValueError):
                self.m.mov_cr3(cpu, table, pcid, noflush)
            return
        assert self.h.mov_cr3(cpu, table, pcid, noflush) == self.m.mov_cr3(cpu, table, pcid, noflush)

    @rule(cpu=cpus, table=st.sampled_from([2, 3]), pcid=st.integers(0, 1), noflush=st.booleans())
    def mov_cr3_guest(self, cpu, table, pcid, noflush):
        # a guest loads another of its tables (CR3 per CPU; stored into the context at exit)
        if self.m.cpu_ctx[cpu].mode == HOST:
            return
        assert self.h.mov_cr3(cpu, table, pcid, noflush) == self.m.mov_cr3(cpu, table, pcid, noflush)

    @rule(i=st.integers(0, 4), tag=st.one_of(st.none(), st.integers(0, 2)), nested=st.one_of(st.none(), st.sampled_from([4, 5])),
          vm=st.one_of(st.none(), st.integers(1, 3)))
    def set_context(self, i, tag, nested, vm):
        # KVM gives a VMCB a new ASID, another nested table, or the context another VM's use
        cid = (self.svm + self.vmx)[i]
        ch = self.m.chains.get(cid)
        if ch is not None and nested == ch[1]:
            # the shadow cannot become the chain's own NPT01: refused, nothing changes
            with pytest.raises(ValueError, match="declared nested01"):
                self.h.set_context(cid, tag=tag, nested=nested, vm=vm)
            return
        self.h.set_context(cid, tag=tag, nested=nested, vm=vm)
        self.m.set_context(cid, tag, nested, vm)

    @rule(cpu=cpus, i=st.integers(0, 2))
    def set_host_context(self, cpu, i):
        self.h.set_host_context(cpu, self.host_ctxs[i])
        self.m.set_host_context(cpu, self.host_ctxs[i])

    @rule(cpu=cpus, va=st.one_of(st.none(), st.sampled_from(VAS)), asid=st.one_of(st.none(), st.integers(0, 2)),
          glob=st.booleans(), nested=st.booleans(), sync=st.booleans())
    def invlpgb(self, cpu, va, asid, glob, nested, sync):
        self.h.invlpgb(cpu, va, asid=asid, include_global=glob, include_nested=nested)
        self.m.invlpgb(cpu, va, asid, glob, nested)
        if sync:
            assert self.h.tlbsync(cpu) == self.m.tlbsync(cpu)

    @rule(hpa=st.sampled_from(HPAS), key=st.sampled_from([0, 5, 6]))
    def set_owner(self, hpa, key):
        self.h.set_owner(hpa, 4096, key)
        self.owners[hpa >> 12] = key

    @invariant()
    def agree(self):
        if not hasattr(self, "h"):
            return
        for cpu in range(self.h.cpu_count):
            assert (self.h.current_context(cpu), self.h.cpu_cr3(cpu)) == (
                self.m.cur[cpu], (self.m.cpu_ctx[cpu].cr3, self.m.cpu_ctx[cpu].pcid))
        cc = self.h.context_counters()
        for name in CTX_COUNTERS:
            assert cc[name].tolist() == [self.m.ctx_ctr.get(i, {}).get(name, 0) for i in range(len(self.m.ctxs))], name
        c = self.h.counters
        for name in COUNTERS:
            assert c[name].tolist() == self.m.ctr[name], name
        # translation findings only: batches also access memory, whose oracle this model leaves out
        tr = ("stale_translation", "foreign_vm_translation", "foreign_page_access")
        got = [(v.cause, v.cpu, v.va, v.pa, v.true_pa if v.true_pa is not None else 2**64 - 1, v.ctx)
               for v in self.h.violations if v.cause in tr]
        assert got == self.m.violations


def true_pa(m, cpu, va):
    """What `va` translates to on `cpu` by the current tables alone (no TLB): the context's table,
    then its nested table, or for a declared chain NPT12 then NPT01. None: unmapped."""
    ctx, ch = m.cpu_ctx[cpu], m.chains.get(m.cur[cpu])
    w = m.tables[ctx.cr3].walk(va)
    if w is None or ctx.mode == HOST or ctx.nested == NO_TABLE:
        return None if w is None else w[1]
    for t in ((ch[0], ch[1]) if ch else (ctx.nested,)):
        w = m.tables[t].walk(w[1])
        if w is None:
            return None
    return w[1]


TestTlb = TlbEngineVsModel.TestCase
TestTlb.settings = SETTINGS


class WideTlbEngineVsModel(TlbEngineVsModel):
    """A 17-entry L1 and a 16-way L2: the engine's lookups compare 16 slots per step and its LRU
    victim search eight stamps per step (with a tail of one), paths the 4-entry tiny TLB skips."""

    GEOMETRY = (17, 32, 16)


TestWideTlb = WideTlbEngineVsModel.TestCase
TestWideTlb.settings = SETTINGS


class Wide8TlbEngineVsModel(TlbEngineVsModel):
    """A 24-entry L1 (a 16-slot and an 8-slot lookup step) and an 8-way L2 (the preset's)."""

    GEOMETRY = (24, 64, 8)


TestWide8Tlb = Wide8TlbEngineVsModel.TestCase
TestWide8Tlb.settings = SETTINGS


class SharedTlbEngineVsModel(TlbEngineVsModel):
    """SMT siblings share their core's entries and flushes (tlb.smt_tagged = false)."""

    SMT_TAGGED = False


TestSharedTlb = SharedTlbEngineVsModel.TestCase
TestSharedTlb.settings = SETTINGS


class ChainTlbEngineVsModel(TlbEngineVsModel):
    """Guest and nested tables start populated, two guest pages aliasing each guest-physical page,
    so that nested walks, guest-physical entries used for the second stage and their staleness
    after a remap (remap_and_flush_linear) come up in most runs."""

    @initialize()
    def build(self):
        super().build()
        for gt in (2, 3):
            for k, va in enumerate(VAS[:4]):
                assert self.m.tables[gt].map(va, GPAS[k % 2], 0, 0)
                self.h.map(gt, va, GPAS[k % 2])
        for nt in (4, 5):
            for k, gpa in enumerate(GPAS[:2]):
                assert self.m.tables[nt].map(gpa, HPAS[k + 2 * (nt - 4)], 0, 0)
                self.h.map(nt, gpa, HPAS[k + 2 * (nt - 4)])


TestChainTlb = ChainTlbEngineVsModel.TestCase
TestChainTlb.settings = SETTINGS


class NestedTruthTlbEngineVsModel(ChainTlbEngineVsModel):
    """As the chained tables, with NPT12 populated (L2 GPAs 0x1000/0x2000 -> L1 GPAs 0x200000/
    0x400000, mapped in both nested tables) and contexts 1 (SVM) and 4 (VMX) declared L2 guests
    from the start: walks through a shadow that disagrees with the chain, entries judged against
    it, and the chain's edits (edit_npt12) come up in most runs."""

    @initialize()
    def build(self):
        super().build()
        for k in range(2):
            assert self.m.tables[NPT12].map(GPAS[k], GPAS[k + 2], 0, 0)
            self.h.map(NPT12, GPAS[k], GPAS[k + 2])
            for nt in (4, 5):
                assert self.m.tables[nt].map(GPAS[k + 2], HPAS[k + 2 * (5 - nt)], 0, 0)
                self.h.map(nt, GPAS[k + 2], HPAS[k + 2 * (5 - nt)])
        for cid in (self.svm[0], self.vmx[0]):
            t01 = 9 - self.m.ctxs[cid].nested
            self.h.set_nested_truth(cid, NPT12, t01)
            self.m.set_nested_truth(cid, (NPT12, t01))


TestNestedTruthTlb = NestedTruthTlbEngineVsModel.TestCase
TestNestedTruthTlb.settings = SETTINGS
