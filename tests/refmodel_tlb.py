"""A slow, plain model of the engine's translation semantics (tests only): page tables as dicts,
each TLB level as a list of slots with LRU stamps, translation with fills and the oracle, and the
invalidations, written from semantics.md sections 3 and 4. The hypothesis test drives it and the
engine together and demands the same translations, counters and violations."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

K4, M2, G1 = 0, 1, 2
SHIFT = {K4: 12, M2: 21, G1: 30}
LINEAR, GPHYS, COMBINED = 0, 1, 2
HOST, SVM, VMX = 0, 1, 2
GLOBAL, CBIT, RDONLY = 1, 2, 4
NO_TABLE = 2**32 - 1
NASID = 32768


def canonical(va):
    top = va >> 47
    return top == 0 or top == (1 << 17) - 1


@dataclass
class Table:
    kind: str
    gen: int = 0
    maps: dict = field(default_factory=lambda: {K4: {}, M2: {}, G1: {}})

    def walk(self, addr):
        for s in (K4, M2, G1):
            leaf = self.maps[s].get(addr >> SHIFT[s])
            if leaf is not None:
                target, flags = leaf
                return s, target + (addr & ((1 << SHIFT[s]) - 1)), flags
        return None

    def map(self, addr, target, size, flags):
        b = 1 << SHIFT[size]
        if addr % b or target % b or self.walk(addr) is not None:
            return False
        for small in (K4, M2):
            if small < size and any((k << SHIFT[small]) >> SHIFT[size] == addr >> SHIFT[size] for k in self.maps[small]):
                return False
        self.maps[size][addr >> SHIFT[size]] = (target, flags)
        self.gen += 1
        return True

    def unmap(self, addr):
        w = self.walk(addr)
        if w is None:
            return False
        s = w[0]
        del self.maps[s][addr >> SHIFT[s]]
        self.gen += 1
        return True


@dataclass
class Ctx:
    mode: int
    tag: int
    pcid: int
    cr3: int
    nested: int
    key: int
    vm: int
    pcide: bool = True  # CR4.PCIDE: clear, the PCID is 0 and CR3 bit 63 (noflush) is a #GP


@dataclass
class Ent:
    target: int
    eptp: int
    tag: int
    pcid: int
    dom: int
    cat: int
    flags: int
    size: int
    src_cr3: int
    src_nested: int
    gen_cr3: int
    gen_nested: int
    vm: int
    thr: int = 0
    stamp: int = 0
    gpa: int = 0  # the entry's guest-physical frame (the engine's Entry.gpa)


def key_of(addr, size, cat):
    return ((addr >> SHIFT[size]) << 6) | (size << 4) | (cat << 2) | 1


class Level:
    def __init__(self, entries, ways):
        self.sets, self.ways = entries // ways, ways
        self.keys = [0] * entries
        self.ents = [None] * entries
        self.clock = 0

    def base(self, key):
        if self.sets == 1:
            return 0
        return (((key >> 6) + ((key >> 4) & 3)) & (self.sets - 1)) * self.ways

    def present(self, size):
        return any(k and (k >> 4) & 3 == size for k in self.keys)

    def find(self, addr, cat, ok):
        for s in (K4, M2, G1):
            if not self.present(s):
                continue
            k = key_of(addr, s, cat)
            b = self.base(k)
            for i in range(b, b + self.ways):
                if self.keys[i] == k and ok(self.ents[i]):
                    return i
        return None

    def touch(self, i):
        self.clock = (self.clock + 1) & 0xFFFFFFFF
        self.ents[i].stamp = self.clock

    def insert(self, addr, size, e):
        k = key_of(addr, size, e.cat)
        b = self.base(k)
        victim, oldest = b, 0
        for i in range(b, b + self.ways):
            if self.keys[i] == 0:
                victim = i
                break
            age = (self.clock - self.ents[i].stamp) & 0xFFFFFFFF
            if age >= oldest:
                oldest, victim = age, i
        self.clock = (self.clock + 1) & 0xFFFFFFFF
        self.keys[victim] = k
        self.ents[victim] = replace(e, stamp=self.clock, size=size)

    def drop_where(self, pred):
        n = 0
        for i, k in enumerate(self.keys):
            if k and pred(self.ents[i]):
                self.keys[i] = 0
                n += 1
        return n

    def drop_addr(self, addr, cats, pred):
        n = 0
        for s in (K4, M2, G1):
            if not self.present(s):
                continue
            for cat in (LINEAR, GPHYS, COMBINED):
                if not cats & (1 << cat):
                    continue
                k = key_of(addr, s, cat)
                b = self.base(k)
                for i in range(b, b + self.ways):
                    if self.keys[i] == k and pred(self.ents[i]):
                        self.keys[i] = 0
                        n += 1
        return n


LIN_COMB = (1 << LINEAR) | (1 << COMBINED)
# per-context counters, in the engine's order (context.rs CTX_COUNTERS)
CTX_COUNTERS = ("tlb_l1_hits", "tlb_l2_hits", "tlb_misses", "gphys_hits", "page_faults", "write_faults")
ALL = 7


class RefTlb:
    """Translation state of a host with `cores` cores and `cpus` CPUs (cpu -> core = cpu % cores)."""

    def __init__(self, cores, cpus, l1, l2, l2_ways, cost, owner_of, smt_tagged=False):
        self.cores, self.cpus = cores, cpus
        # the thread tag of each CPU's entries: its SMT thread if the TLB is tagged by thread
        self.thr = [cpu // cores if smt_tagged else 0 for cpu in range(cpus)]
        self.tables = [Table("host")]
        self.ctxs = [Ctx(HOST, 0, 0, 0, NO_TABLE, 0, 0)]
        self.cur = [0] * cpus
        # per CPU: the context as loaded (its own CR3/PCID), its host context, the saved host state
        self.cpu_ctx = [replace(self.ctxs[0]) for _ in range(cpus)]
        self.host_ctx = [0] * cpus
        self.host_saved = [replace(self.ctxs[0]) for _ in range(cpus)]
        self.t1 = [Level(l1, l1) for _ in range(cores)]
        self.t2 = [Level(l2, l2_ways) for _ in range(cores)]
        self.cost = cost
        self.owner_of = owner_of
        self.pending = []
        self.ctr = {k: [0] * cpus for k in ("tlb_l1_hits", "tlb_l2_hits", "tlb_misses", "gphys_hits", "gphys_misses",
                                            "page_faults", "write_faults", "tlb_flush_ops", "tlb_dropped", "vmruns", "vmrun_failures")}
        self.violations = []
        self.ctx_ctr = {}
        # declared nested truths: cid -> [nested12, nested01, chain id] (nested_truth.rs)
        self.chains = {}
        self.next_chain = 0x8000_0000

    def cc(self, cid, name):
        row = self.ctx_ctr.setdefault(cid, dict.fromkeys(CTX_COUNTERS, 0))
        row[name] += 1

    def set_nested_truth(self, cid, chain):
        if chain is None:
            self.chains.pop(cid, None)
            return
        self.chains[cid] = [chain[0], chain[1], self._fresh_chain()]

    def _fresh_chain(self):
        i = self.next_chain
        self.next_chain += 1
        return i

    def nested_src(self, cid, ctx):
        ch = self.chains.get(cid)
        return ctx.nested if ch is None else ch[2]

    def nested_gen(self, cid, ctx):
        ch = self.chains.get(cid)
        g = self.tables[ctx.nested].gen
        if ch is not None:
            g += self.tables[ch[0]].gen + self.tables[ch[1]].gen
        return g & 0xFFFFFFFF

    def second_truth(self, cid, ctx, gpa):
        """(hpa, read-only bit, granularity) of the second stage: the nested table, or nested12
        then nested01 (granularity: the smaller leaf, the block one comparison vouches for)."""
        ch = self.chains.get(cid)
        if ch is None:
            t = self.tables[ctx.nested].walk(gpa)
            return None if t is None else (t[1], t[2] & RDONLY, t[0])
        a = self.tables[ch[0]].walk(gpa)
        if a is None:
            return None
        b = self.tables[ch[1]].walk(a[1])
        return None if b is None else (b[1], (a[2] | b[2]) & RDONLY, min(a[0], b[0]))

    def truth_walk(self, cid, ctx, va):
        if ctx.mode == HOST or cid not in self.chains:
            return self.walk(ctx, va)
        w1 = self.tables[ctx.cr3].walk(va)
        if w1 is None:
            return None
        t = self.second_truth(cid, ctx, w1[1])
        return None if t is None else dict(target=t[0], size=min(w1[0], t[2]), flags=w1[2] | t[1])

    def second_agrees(self, cpu, cid, ctx, va, gpa, hpa, ro, write):
        """The truth's granularity at gpa if the second stage used agrees with it, else None."""
        t = self.second_truth(cid, ctx, gpa)
        if t is not None and t[0] == hpa and t[1] != ro:
            if write and not ro:
                self.violate("stale_translation", cpu, cid, ctx, va, hpa, t[0])
            return None
        if t is not None and t[0] == hpa:
            return t[2]
        self.violate("stale_translation", cpu, cid, ctx, va, hpa, 2**64 - 1 if t is None else t[0])
        return None

    def set_context(self, cid, tag=None, nested=None, vm=None, key=None):
        c = self.ctxs[cid]
        if nested is not None and nested != c.nested and cid in self.chains:
            self.chains[cid][2] = self._fresh_chain()
        c.tag = c.tag if tag is None else tag
        c.nested = c.nested if nested is None else nested
        c.vm = c.vm if vm is None else vm
        c.key = c.key if key is None else key

    def core(self, cpu):
        return cpu % self.cores

    def walk(self, ctx, va):
        w1 = self.tables[ctx.cr3].walk(va)
        if w1 is None:
            return None
        s1, out1, f1 = w1
        if ctx.mode == HOST or ctx.nested == NO_TABLE:
            return dict(target=out1, size=s1, flags=f1, gpa=0, nsize=s1, nflags=f1)
        w2 = self.tables[ctx.nested].walk(out1)
        if w2 is None:
            return None
        s2, out2, f2 = w2
        return dict(target=out2, size=min(s1, s2), flags=f1 | (f2 & RDONLY), gpa=out1, nsize=s2, nflags=f2)

    def walk_partial(self, cpu, cid, ctx, va, c, dom, eptp, thr, write):
        """A miss's walk: the guest (or host) table, then for a guest the second stage from a
        matching guest-physical entry if there is one (checked, refreshed or found stale), else the
        nested table, filling the guest-physical entries."""
        w1 = self.tables[ctx.cr3].walk(va)
        if w1 is None:
            return None
        s1, gpa, f1 = w1
        if ctx.mode == HOST or ctx.nested == NO_TABLE:
            return dict(target=gpa, size=s1, flags=f1, src_nested=NO_TABLE, gpa=0)
        gtag = ctx.tag if ctx.mode == SVM else 0

        def gm(e):
            return e.dom == dom and e.tag == gtag and e.eptp == eptp and e.thr == thr

        nt = self.tables[ctx.nested]
        src, gen = self.nested_src(cid, ctx), self.nested_gen(cid, ctx)
        i = self.t1[c].find(gpa, GPHYS, gm)
        lvl = self.t1[c]
        if i is None:
            i = self.t2[c].find(gpa, GPHYS, gm)
            lvl = self.t2[c]
        if i is not None:
            self.ctr["gphys_hits"][cpu] += 1
            self.cc(cid, "gphys_hits")
            ge = lvl.ents[i]
            ns = ge.size
            hpa = ge.target + (gpa & ((1 << SHIFT[ns]) - 1))
            nflags = ge.flags
            if ge.vm != ctx.vm:
                self.violate("foreign_vm_translation", cpu, cid, ctx, va, hpa, hpa)
            if not (ge.src_nested == src and ge.gen_nested == gen):
                g = self.second_agrees(cpu, cid, ctx, va, gpa, hpa, ge.flags & RDONLY, write)
                if g is not None and g >= ns:
                    ge.src_nested, ge.gen_nested = src, gen
                if g is None or g < min(s1, ns):
                    src = NO_TABLE
        else:
            self.ctr["gphys_misses"][cpu] += 1
            t = nt.walk(gpa)
            if t is None:
                return None
            ns, hpa, nflags = t
            g = ns if cid not in self.chains else self.second_agrees(cpu, cid, ctx, va, gpa, hpa, nflags & RDONLY, write)
            ok = g is not None and g >= ns
            ge = Ent(hpa - (gpa & ((1 << SHIFT[ns]) - 1)), eptp, gtag, 0, dom, GPHYS, nflags & RDONLY, 0, ctx.cr3,
                     src if ok else NO_TABLE, self.tables[ctx.cr3].gen, gen if ok else 0, ctx.vm, thr)
            src = src if g is not None and g >= min(s1, ns) else NO_TABLE
            s2 = M2 if ns == G1 else ns
            self.t2[c].insert(gpa, s2, replace(ge, target=hpa - (gpa & ((1 << SHIFT[s2]) - 1))))
            self.t1[c].insert(gpa, ns, ge)
        return dict(target=hpa, size=min(s1, ns), flags=f1 | (nflags & RDONLY), src_nested=src, gpa=gpa)

    def current(self, e, cid, ctx):
        return (e.src_cr3 == ctx.cr3 and e.gen_cr3 == self.tables[ctx.cr3].gen
                and (ctx.mode == HOST or (e.src_nested == self.nested_src(cid, ctx) and e.gen_nested == self.nested_gen(cid, ctx))))

    def violate(self, cause, cpu, cid, ctx, va, pa, true_pa):
        self.violations.append((cause, cpu, va, pa, true_pa, cid))

    def translate(self, cpu, va, write=False):
        cid = self.cur[cpu]
        ctx = self.cpu_ctx[cpu]
        c = self.core(cpu)
        cat, dom = (LINEAR, HOST) if ctx.mode == HOST else (COMBINED, ctx.mode)
        eptp = ctx.nested if ctx.mode == VMX else 0
        thr = self.thr[cpu]

        def m(e):
            return (e.dom == dom and e.tag == ctx.tag and e.eptp == eptp and e.thr == thr
                    and (e.pcid == ctx.pcid or e.flags & GLOBAL))

        hit = None
        i = self.t1[c].find(va, cat, m)
        if i is not None:
            self.t1[c].touch(i)
            self.ctr["tlb_l1_hits"][cpu] += 1
            self.cc(cid, "tlb_l1_hits")
            hit = (self.t1[c], i)
        else:
            i = self.t2[c].find(va, cat, m)
            if i is not None:
                self.t2[c].touch(i)
                self.ctr["tlb_l2_hits"][cpu] += 1
                self.cc(cid, "tlb_l2_hits")
                e = self.t2[c].ents[i]
                self.t1[c].insert(va, e.size, e)
                hit = (self.t2[c], i)
        if hit is not None:
            lvl, i = hit
            e = lvl.ents[i]
            pa = e.target + (va & ((1 << SHIFT[e.size]) - 1))
            gpa = e.gpa + (va & ((1 << SHIFT[e.size]) - 1))
            flags = e.flags
            if not self.current(e, cid, ctx):
                if e.vm != ctx.vm:
                    self.violate("foreign_vm_translation", cpu, cid, ctx, va, pa, pa)
                w = self.truth_walk(cid, ctx, va)
                same = w is not None and w["target"] == pa and (w["flags"] & CBIT) == (e.flags & CBIT)
                if same and (w["flags"] & RDONLY) != (e.flags & RDONLY):
                    # a writable entry over a read-only leaf: stale for a write; never refreshed
                    if write and not e.flags & RDONLY:
                        self.violate("stale_translation", cpu, cid, ctx, va, pa, w["target"])
                elif same and w["size"] < e.size:
                    pass  # vouched for at this address only: the entry stays suspect
                elif same:
                    e.src_cr3, e.gen_cr3 = ctx.cr3, self.tables[ctx.cr3].gen
                    if ctx.mode != HOST:
                        e.src_nested, e.gen_nested = self.nested_src(cid, ctx), self.nested_gen(cid, ctx)
                else:
                    self.violate("stale_translation", cpu, cid, ctx, va, pa, 2**64 - 1 if w is None else w["target"])
            elif e.vm != ctx.vm:
                self.violate("foreign_vm_translation", cpu, cid, ctx, va, pa, pa)
        else:
            self.ctr["tlb_misses"][cpu] += 1
            self.cc(cid, "tlb_misses")
            w = self.walk_partial(cpu, cid, ctx, va, c, dom, eptp, thr, write)
            if w is None:
                self.ctr["page_faults"][cpu] += 1
                self.cc(cid, "page_faults")
                return None
            base = Ent(0, eptp, ctx.tag, ctx.pcid, dom, cat, w["flags"] & (GLOBAL | CBIT | RDONLY), 0, ctx.cr3,
                       w["src_nested"], self.tables[ctx.cr3].gen,
                       0 if w["src_nested"] == NO_TABLE else self.nested_gen(cid, ctx), ctx.vm, thr)
            size = w["size"]
            self.t1[c].insert(va, size, replace(base, target=w["target"] - (va & ((1 << SHIFT[size]) - 1)),
                                                gpa=w["gpa"] & ~((1 << SHIFT[size]) - 1)))
            s2 = M2 if size == G1 else size
            self.t2[c].insert(va, s2, replace(base, target=w["target"] - (va & ((1 << SHIFT[s2]) - 1)),
                                              gpa=w["gpa"] & ~((1 << SHIFT[s2]) - 1)))
            pa, flags, gpa = w["target"], w["flags"], w["gpa"]
        if write and flags & RDONLY:
            self.ctr["write_faults"][cpu] += 1
            self.cc(cid, "write_faults")
            # the fault drops what it used (SDM 3A 4.10.4.1; 3C 29.4.3): the retry walks again
            self._drop(cpu, lambda e: e.dom == dom and e.tag == ctx.tag and e.eptp == eptp
                       and (e.pcid == ctx.pcid or e.flags & GLOBAL), va, 1 << cat)
            if ctx.mode != HOST and ctx.nested != NO_TABLE:
                gtag = ctx.tag if ctx.mode == SVM else 0
                self._drop(cpu, lambda e: e.dom == dom and e.tag == gtag and e.eptp == eptp, gpa, 1 << GPHYS)
            return None
        key = ctx.key if flags & CBIT else 0
        if ctx.mode != HOST:
            o = self.owner_of(pa)
            if o not in (0, ctx.key):
                self.violate("foreign_page_access", cpu, cid, ctx, va, pa, pa)
        return pa, key

    # -- invalidations
    def _drop(self, cpu, pred0, addr=None, cats=ALL):
        c = self.core(cpu)
        thr = self.thr[cpu]

        def pred(e):
            return e.thr == thr and pred0(e)

        if addr is None:
            return self.t1[c].drop_where(pred) + self.t2[c].drop_where(pred)
        return self.t1[c].drop_addr(addr, cats, pred) + self.t2[c].drop_addr(addr, cats, pred)

    def _note(self, cpu, n):
        self.ctr["tlb_flush_ops"][cpu] += 1
        self.ctr["tlb_dropped"][cpu] += n
        return n

    def vmrun(self, cpu, cid, tlb_control):
        ctx = self.ctxs[cid]
        if ctx.tag == 0 or tlb_control not in (0, 1, 3, 7):
            self.ctr["vmrun_failures"][cpu] += 1
            return "vmexit_invalid"
        a = ctx.tag
        if tlb_control == 1:
            self._note(cpu, self._drop(cpu, lambda e: True))
        elif tlb_control == 3:
            self._note(cpu, self._drop(cpu, lambda e: e.dom == SVM and e.tag == a))
        elif tlb_control == 7:
            self._note(cpu, self._drop(cpu, lambda e: e.dom == SVM and e.tag == a and not e.flags & GLOBAL))
        self.ctr["vmruns"][cpu] += 1
        self._enter(cpu, cid)
        return "entered"

    def _save_guest(self, cpu):
        c = self.cpu_ctx[cpu]
        if c.mode != HOST:
            t = self.ctxs[self.cur[cpu]]
            t.cr3, t.pcid = c.cr3, c.pcid

    def _enter(self, cpu, cid):
        if self.cpu_ctx[cpu].mode == HOST:
            self.host_saved[cpu] = replace(self.cpu_ctx[cpu])
        else:
            self._save_guest(cpu)
        self.cur[cpu] = cid
        self.cpu_ctx[cpu] = replace(self.ctxs[cid])

    def set_host_context(self, cpu, cid):
        self._save_guest(cpu)
        self.cur[cpu] = cid
        self.cpu_ctx[cpu] = replace(self.ctxs[cid])
        self.host_ctx[cpu] = cid
        self.host_saved[cpu] = replace(self.ctxs[cid])

    def vmentry(self, cpu, cid):
        if self.ctxs[cid].tag == 0:
            self._vpid0(cpu)
        self.ctr["vmruns"][cpu] += 1
        self._enter(cpu, cid)

    def _vpid0(self, cpu):
        self._note(cpu, self._drop(cpu, lambda e: e.dom in (VMX, HOST) and e.tag == 0 and e.cat != GPHYS))

    def vmexit(self, cpu):
        c = self.cpu_ctx[cpu]
        if c.mode == HOST:
            return
        if c.mode == VMX and c.tag == 0:
            self._vpid0(cpu)
        self._save_guest(cpu)
        self.cur[cpu] = self.host_ctx[cpu]
        self.cpu_ctx[cpu] = replace(self.host_saved[cpu])

    def invlpg(self, cpu, va):
        c = self.cpu_ctx[cpu]
        return self._note(cpu, self._drop(cpu, lambda e: e.dom == c.mode and e.tag == c.tag and (e.pcid == c.pcid or e.flags & GLOBAL), va, LIN_COMB))

    def invlpga(self, cpu, va, asid):
        dom = HOST if asid == 0 else SVM
        return self._note(cpu, self._drop(cpu, lambda e: e.dom == dom and e.tag == asid, va, LIN_COMB))

    def invept(self, cpu, kind, eptp):
        if kind == 1:
            return self._note(cpu, self._drop(cpu, lambda e: e.dom == VMX and e.cat != LINEAR and e.eptp == eptp))
        if kind == 2:
            return self._note(cpu, self._drop(cpu, lambda e: e.dom == VMX and e.cat != LINEAR))
        self.ctr["vmrun_failures"][cpu] += 1
        return None

    def invvpid(self, cpu, kind, vpid, va):
        if (kind != 2 and vpid == 0) or kind > 3:
            self.ctr["vmrun_failures"][cpu] += 1
            return None
        if kind == 0:
            return self._note(cpu, self._drop(cpu, lambda e: e.dom == VMX and e.tag == vpid, va, LIN_COMB))
        if kind == 1:
            return self._note(cpu, self._drop(cpu, lambda e: e.dom == VMX and e.tag == vpid and e.cat != GPHYS))
        if kind == 2:
            return self._note(cpu, self._drop(cpu, lambda e: e.dom == VMX and e.tag != 0 and e.cat != GPHYS))
        return self._note(cpu, self._drop(cpu, lambda e: e.dom == VMX and e.tag == vpid and e.cat != GPHYS and not e.flags & GLOBAL))

    def invpcid(self, cpu, kind, pcid, va):
        c = self.cpu_ctx[cpu]
        if not c.pcide and kind <= 1 and pcid:
            return None  # #GP (SDM vol. 2A INVPCID)

        def mine(e):
            return e.dom == c.mode and e.tag == c.tag and e.cat != GPHYS

        if kind == 0:
            return self._note(cpu, self._drop(cpu, lambda e: mine(e) and e.pcid == pcid and not e.flags & GLOBAL, va, LIN_COMB))
        if kind == 1:
            return self._note(cpu, self._drop(cpu, lambda e: mine(e) and e.pcid == pcid and not e.flags & GLOBAL))
        if kind == 2:
            return self._note(cpu, self._drop(cpu, mine))
        if kind == 3:
            return self._note(cpu, self._drop(cpu, lambda e: mine(e) and not e.flags & GLOBAL))
        return None

    def invlpgb(self, cpu, va, asid, include_global, include_nested):
        self.pending.append((cpu, dict(va=va, asid=asid, g=include_global, n=include_nested)))

    def tlbsync(self, cpu):
        mine = [op for c, op in self.pending if c == cpu]
        self.pending = [(c, op) for c, op in self.pending if c != cpu]
        total = 0
        for op in mine:

            def hits(e, op=op):
                if e.cat == GPHYS and not op["n"]:
                    return False
                if e.flags & GLOBAL and not op["g"]:
                    return False
                a = op["asid"] or 0
                if e.dom == HOST:
                    return a == 0
                if e.dom == SVM:
                    return op["asid"] is not None and e.tag == a
                return False

            n = 0
            for core in range(self.cores):
                if op["va"] is None:
                    n += self.t1[core].drop_where(hits) + self.t2[core].drop_where(hits)
                else:
                    n += self.t1[core].drop_addr(op["va"], ALL, hits) + self.t2[core].drop_addr(op["va"], ALL, hits)
            self._note(cpu, n)
            total += n
        return total


def mov_cr3(self, cpu, table, pcid, noflush):
    c = self.cpu_ctx[cpu]
    if not c.pcide:
        if pcid:
            raise ValueError("pcid: the PCID is 0 with CR4.PCIDE clear")
        if noflush:
            return None  # #GP: bit 63 is reserved without PCIDE (SDM vol. 2B MOV CR3)
    c.cr3, c.pcid = table, pcid
    if noflush:
        return 0  # a CR3 load that flushes nothing is no flush op
    n = self._drop(cpu, lambda e: e.dom == c.mode and e.tag == c.tag and e.cat != GPHYS and e.pcid == pcid
                   and not e.flags & GLOBAL)
    return self._note(cpu, n)


RefTlb.mov_cr3 = mov_cr3
