"""Random RMPUPDATE / PSMASH / PVALIDATE / access / split sequences through the engine and a dense
Python model of the RMP (one entry per 4 KiB page, written from semantics.md 5.1-5.4) must agree on
every return code, every RMP check and every entry. The engine stores uniform runs of 4 KiB entries
as one record and falls back to 512 records when a region stops being uniform (rmp.rs); the
`assign_run` rule makes uniform runs (consecutive GPAs of one ASID, whole or partial regions) that
the other rules then break, so both forms and the moves between them are compared with the model."""

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

import sevsim

MEM = 16 << 20
PAGES = MEM // 4096
REGION = 512
SUCCESS, FAIL_INPUT, FAIL_PERMISSION, FAIL_OVERLAP, FAIL_SIZEMISMATCH = 0, 1, 2, 4, 6
NPF, NPF_SIZEM = 0x80, 0x81


def blank():
    return dict(assigned=False, huge=False, asid=0, gpa=0, validated=False, immutable=False)


class DenseRmp:
    def __init__(self):
        self.e = [blank() for _ in range(PAGES)]
        self.dm_4k = [False] * PAGES  # direct map leaf is 4K (else 2M)

    def region(self, p):
        b = p - p % REGION
        return range(b, b + REGION)

    def update(self, p, assigned, huge, asid, gpa, immutable):
        size = REGION if huge else 1
        if p % size or (assigned and (gpa // 4096) % size):
            return FAIL_INPUT
        if huge:
            es = [self.e[q] for q in self.region(p)]
            if any(x["immutable"] for x in es):
                return FAIL_PERMISSION
            if not es[0]["huge"] and any(x["assigned"] for x in es):
                return FAIL_OVERLAP
            for k, q in enumerate(self.region(p)):
                if assigned or immutable:
                    self.e[q] = dict(assigned=assigned, huge=True, asid=asid, gpa=gpa + k * 4096, validated=False,
                                     immutable=immutable)
                else:
                    self.e[q] = blank()
            return SUCCESS
        x = self.e[p]
        if x["immutable"]:
            return FAIL_PERMISSION
        if x["huge"] and x["assigned"]:
            return FAIL_OVERLAP
        if x["huge"]:  # an unassigned, immutable 2M entry was refused above; nothing else is huge
            for q in self.region(p):
                self.e[q] = blank()
        self.e[p] = dict(assigned=assigned, huge=False, asid=asid, gpa=gpa, validated=False, immutable=immutable)
        return SUCCESS

    def psmash(self, p):
        if p % REGION or not (self.e[p]["huge"] and self.e[p]["assigned"]):
            return FAIL_INPUT
        for q in self.region(p):
            self.e[q]["huge"] = False
        return SUCCESS

    def pvalidate(self, p, asid, gpa, huge, validate):
        size = REGION if huge else 1
        if p % size or (gpa // 4096) % size:
            return FAIL_INPUT, False

        def owned(x, g):
            return x["assigned"] and x["asid"] == asid and x["gpa"] == g

        x = self.e[p]
        if x["huge"]:
            if not huge:
                return (NPF_SIZEM if owned(x, gpa) else NPF), False
            if not owned(x, gpa):
                return NPF, False
            changed = x["validated"] != validate
            for q in self.region(p):
                self.e[q]["validated"] = validate
            return SUCCESS, changed
        if huge:
            return FAIL_SIZEMISMATCH, False
        if not owned(x, gpa):
            return NPF, False
        changed = x["validated"] != validate
        x["validated"] = validate
        return SUCCESS, changed

    def host_write(self, p):
        if not any(self.e[q]["assigned"] for q in self.region(p)):
            return None
        if not self.dm_4k[p]:
            return "rmp_host_write_large_mapping"
        if self.e[p]["assigned"]:
            return "rmp_host_write_assigned"
        return None

    def guest_access(self, p, asid):
        x = self.e[p]
        if not x["assigned"] or x["asid"] != asid:
            return "rmp_guest_not_owned"
        if not x["validated"]:
            return "rmp_guest_not_validated"
        return None

    def split(self, p):
        for q in self.region(p):
            self.dm_4k[q] = True


pages = st.integers(0, PAGES - 1)
regions = st.integers(0, PAGES // REGION - 1).map(lambda r: r * REGION)
some_page = st.one_of(regions, pages, regions.map(lambda r: r + 1))
asids = st.sampled_from([1, 2])
gpas = st.sampled_from([0, 4096, 2 << 20, (2 << 20) + 4096, 4 << 20])


class RmpEngineVsModel(RuleBasedStateMachine):
    @initialize()
    def build(self):
        self.h = sevsim.Host.from_preset("tiny", memory=MEM)
        self.h.snp_enable()
        self.h.snp_set_asid(1)
        self.h.snp_set_asid(2)
        self.m = DenseRmp()
        self.faults = []

    @rule(p=some_page, assigned=st.booleans(), huge=st.booleans(), asid=asids, gpa=gpas, immutable=st.booleans())
    def rmpupdate(self, p, assigned, huge, asid, gpa, immutable):
        immutable = immutable and assigned and asid == 2  # rarely: immutable pages block everything after
        got = self.h.rmpupdate(0, p * 4096, assigned=assigned, huge=huge, asid=asid if assigned else 0,
                               gpa=gpa if assigned else 0, immutable=immutable)
        assert got == self.m.update(p, assigned, huge, asid if assigned else 0, gpa if assigned else 0, immutable)

    @rule(r=regions, first=st.integers(0, REGION - 1), count=st.integers(1, REGION), asid=asids,
          gpa=st.sampled_from([0, 2 << 20, 8 << 20]), validate=st.booleans())
    def assign_run(self, r, first, count, asid, gpa, validate):
        """A run of 4 KiB pages at consecutive GPAs through the batch calls, then (maybe) PVALIDATE."""
        count = min(count, REGION - first)
        p = np.arange(r + first, r + first + count, dtype=np.uint64)
        g = np.uint64(gpa) + (p - np.uint64(r)) * np.uint64(4096)
        codes = self.h.rmpupdate_batch(0, p * np.uint64(4096), g, assigned=True, asid=asid)
        want = [self.m.update(int(q), True, False, asid, int(gg), False) for q, gg in zip(p, g)]
        assert codes.tolist() == want
        if validate:
            codes, changed = self.h.pvalidate_batch(1, asid, p * np.uint64(4096), g)
            want = [self.m.pvalidate(int(q), asid, int(gg), False, True) for q, gg in zip(p, g)]
            assert list(zip(codes.tolist(), changed.tolist())) == want

    @rule(p=some_page)
    def psmash(self, p):
        assert self.h.psmash(0, p * 4096) == self.m.psmash(p)

    @rule(p=some_page, asid=asids, gpa=gpas, huge=st.booleans(), validate=st.booleans())
    def pvalidate(self, p, asid, gpa, huge, validate):
        assert self.h.pvalidate(1, asid, p * 4096, gpa, huge=huge, validate=validate) == \
            self.m.pvalidate(p, asid, gpa, huge, validate)

    @rule(p=pages)
    def host_write(self, p):
        self.faults.append(self.m.host_write(p))
        self.h.access(2, np.array([p * 4096], np.uint64), True, 0)

    @rule(p=pages, asid=asids, write=st.booleans())
    def guest_access(self, p, asid, write):
        self.faults.append(self.m.guest_access(p, asid))
        self.h.access(3, np.array([p * 4096], np.uint64), write, asid)

    @rule(p=pages)
    def split(self, p):
        self.h.set_memory_4k(4, self.h.direct_map_va(p * 4096))
        self.m.split(p)

    @invariant()
    def agree(self):
        if not hasattr(self, "h"):
            return
        rmp = [v.cause for v in self.h.violations if v.kind == "rmp_fault"]
        assert rmp == [f for f in self.faults if f is not None]

    def teardown(self):
        if not hasattr(self, "h"):
            return
        for p in range(PAGES):
            got = self.h.rmp_entry(p * 4096)
            want = self.m.e[p]
            if want["assigned"] or got["assigned"]:
                assert got == want, p


TestRmp = RmpEngineVsModel.TestCase
TestRmp.settings = settings(max_examples=120, stateful_step_count=50, deadline=None,
                            suppress_health_check=[HealthCheck.too_slow])
