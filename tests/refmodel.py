"""A small, slow, obviously-written model of the engine's cache semantics, for tests only.

It keeps every cache as Python lists of sets (most recently used first) and finds copies of a line
by scanning every cache: no directory, no packed lines, no fast paths. The hypothesis tests drive it
and the engine with the same operations and demand the same counters, clocks, violations, memory
and cache contents. The semantics it encodes are the engine's (see rust/engine/src/host.rs): MOESI-
like coherence per (line, key), L2 inclusive of L1, the L3 an exclusive victim cache, aliases per
key unless SME_COHERENT, the write-back/read/DMA/stale-key oracles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

LINE = 64
PAGE = 4096

L1, L2, L3, PEER, REMOTE, MEMORY = range(6)


@dataclass
class Line:
    x: int
    key: int
    dirty: bool = False
    excl: bool = False
    stale: bool = False


class Cache:
    def __init__(self, insts: int, sets: int, ways: int):
        self.sets, self.ways = sets, ways
        self.data = [[[] for _ in range(sets)] for _ in range(insts)]

    def set_of(self, inst: int, x: int) -> list:
        return self.data[inst][x % self.sets]

    def find(self, inst: int, x: int, key: int):
        for i, ln in enumerate(self.set_of(inst, x)):
            if ln.x == x and ln.key == key:
                return i, ln
        return None, None

    def take(self, inst: int, x: int, key: int):
        s = self.set_of(inst, x)
        for i, ln in enumerate(s):
            if ln.x == x and ln.key == key:
                return s.pop(i)
        return None

    def insert(self, inst: int, x: int, ln: Line):
        s = self.set_of(inst, x)
        s.insert(0, ln)
        if len(s) > self.ways:
            return s.pop()
        return None

    def lines(self, inst: int):
        for s in self.data[inst]:
            yield from s


@dataclass
class Holder:
    l3: bool
    inst: int
    ccd: int
    line: Line  # the cached object itself
    dirty: bool  # with a core's L1 dirty bit folded in


CAUSES = [
    "writeback_foreign_owner",
    "writeback_stale_key",
    "read_foreign_data",
    "dma_write_dirty_line",
    "dma_read_dirty_line",
    "stale_key_hit",
]

COUNTERS = [
    "accesses", "reads", "writes", "l1_hits", "l1_misses", "l2_hits", "l2_misses", "l3_hits",
    "l3_misses", "peer_hits", "remote_hits", "mem_reads", "access_cycles", "writebacks",
    "invalidations", "upgrades", "flush_cycles", "wbinvd", "wbnoinvd", "clflush_lines",
    "vm_page_flush", "ipis_sent", "ipis_received", "ipi_cycles", "faults", "other_cycles",
]


class RefHost:
    """Same semantics as sevsim.Host, for a preset described by the dict `cfg`."""

    def __init__(self, cfg: dict, memory: int):
        self.cfg = cfg
        t = cfg["topology"]
        self.sockets, self.ccds_per_socket = t["sockets"], t["ccds_per_socket"]
        self.cores_per_ccd, self.threads = t["cores_per_ccd"], t["threads_per_core"]
        self.ccds = self.sockets * self.ccds_per_socket
        self.cores = self.ccds * self.cores_per_ccd
        self.cpus = self.cores * self.threads
        c = cfg["caches"]
        self.l1 = Cache(self.cores, c["l1d"]["sets"], c["l1d"]["ways"])
        self.l2 = Cache(self.cores, c["l2"]["sets"], c["l2"]["ways"])
        self.l3 = Cache(self.ccds, c["l3"]["sets"], c["l3"]["ways"])
        self.scope_ccd = c["wbinvd_scope"] == "ccd"
        self.coherent = cfg["features"]["sme_coherent"]
        self.wbnoinvd_ok = cfg["features"]["wbnoinvd"]
        self.vmpf_ok = cfg["features"]["vm_page_flush"]
        lat = cfg["latency"]
        self.lat = [c["l1d"]["latency"], c["l2"]["latency"], c["l3"]["latency"],
                    lat["peer_core"], lat["remote_ccd"], lat["memory"]]
        self.lat_remote_socket = lat["remote_socket"]
        self.cost = cfg["cost"]
        self.freq = cfg["freq_ghz"]
        self.memory = memory
        self.owners: dict[int, int] = {}  # page -> key (absent: 0)
        self.foreign: dict[int, tuple[int, int]] = {}  # line -> (key, version)
        self.version = 0
        self.clocks = [0] * self.cpus
        self.ctr = {n: [0] * self.cpus for n in COUNTERS}
        self.violations: list[tuple] = []

    # -- topology
    def core_of(self, cpu):
        return cpu % self.cores

    def ccd_of_core(self, core):
        return core // self.cores_per_ccd

    def socket_of_ccd(self, ccd):
        return ccd // self.ccds_per_socket

    # -- memory
    def owner(self, x):
        return self.owners.get(x * LINE // PAGE, 0)

    def data_key(self, x):
        return self.foreign[x][0] if x in self.foreign else self.owner(x)

    def mem_write(self, x, key):
        self.version += 1
        o = self.owner(x)
        if key != o:
            self.foreign[x] = (key, self.version)
        else:
            self.foreign.pop(x, None)
        return o

    def record(self, cause, cpu, x, key, other, owner):
        cycle = self.clocks[cpu] if cpu >= 0 else max(self.clocks)
        self.violations.append((cause, cpu, x * LINE, key, other, owner, cycle))

    def writeback(self, cpu, ln: Line, dirty=True):
        self.ctr["writebacks"][cpu] += 1
        if ln.key == 0 and not ln.stale and self.coherent and self.owner(ln.x) != 0:
            self.mem_write(ln.x, self.owner(ln.x))  # host plaintext in a fresh guest page: benign
            return
        o = self.mem_write(ln.x, ln.key)
        if ln.stale:
            self.record("writeback_stale_key", cpu, ln.x, ln.key, o, o)
        elif ln.key != o:
            self.record("writeback_foreign_owner", cpu, ln.x, ln.key, o, o)

    # -- coherence lookups: every cache, CCDs ascending, L3 then cores, MRU first
    def holders(self, x, skip_core=None):
        out = []
        for e in range(self.ccds):
            for ln in self.l3.set_of(e, x):
                if ln.x == x:
                    out.append(Holder(True, e, e, ln, ln.dirty))
            for core in range(e * self.cores_per_ccd, (e + 1) * self.cores_per_ccd):
                if core == skip_core:
                    continue
                for ln in self.l2.set_of(core, x):
                    if ln.x == x:
                        _, l1 = self.l1.find(core, x, ln.key)
                        out.append(Holder(False, core, e, ln, ln.dirty or (l1 is not None and l1.dirty)))
        return out

    def remove_holder(self, h: Holder) -> bool:
        """Remove the copy; return whether its data was dirty."""
        x, key = h.line.x, h.line.key
        if h.l3:
            ln = self.l3.take(h.inst, x, key)
            return ln.dirty
        ln = self.l2.take(h.inst, x, key)
        d = ln.dirty
        l1 = self.l1.take(h.inst, x, key)
        if l1 is not None:
            d = d or l1.dirty
        return d

    def evict_holder(self, cpu, h: Holder) -> int:
        ln = Line(h.line.x, h.line.key, False, h.line.excl, h.line.stale)
        ln.dirty = self.remove_holder(h)
        self.ctr["invalidations"][cpu] += 1
        if ln.dirty:
            self.writeback(cpu, ln)
            return 1
        return 0

    def downgrade_holder(self, h: Holder):
        x, key = h.line.x, h.line.key
        if h.l3:
            h.line.excl = False
            return
        _, l1 = self.l1.find(h.inst, x, key)
        l1dirty = False
        if l1 is not None:
            l1dirty = l1.dirty
            l1.excl = False
            l1.dirty = False
        h.line.excl = False
        h.line.dirty = h.line.dirty or l1dirty

    def holder_latency(self, h: Holder, ccd):
        if h.ccd == ccd:
            return (self.lat[L3], L3) if h.l3 else (self.lat[PEER], PEER)
        if self.socket_of_ccd(h.ccd) == self.socket_of_ccd(ccd):
            return self.lat[REMOTE], REMOTE
        return self.lat_remote_socket, REMOTE

    # -- access path
    def access(self, cpu, pa, write, key):
        x = pa // LINE
        core = self.core_of(cpu)
        c = self.ctr
        c["accesses"][cpu] += 1
        c["writes" if write else "reads"][cpu] += 1
        i, ln = self.l1.find(core, x, key)
        if ln is not None:
            if ln.stale:
                self.record("stale_key_hit", cpu, x, key, key, self.owner(x))
            lat = self.lat[L1]
            if write:
                if not ln.excl:
                    lat += self.upgrade(cpu, core, x, key)
                    ln.excl = True
                ln.dirty = True
            s = self.l1.set_of(core, x)
            s.insert(0, s.pop(i))
            c["l1_hits"][cpu] += 1
            self.charge(cpu, lat)
            return L1
        c["l1_misses"][cpu] += 1
        i, ln = self.l2.find(core, x, key)
        if ln is not None:
            lat = self.lat[L2]
            if ln.stale:
                self.record("stale_key_hit", cpu, x, key, key, self.owner(x))
            if write and not ln.excl:
                lat += self.upgrade(cpu, core, x, key)
            s = self.l2.set_of(core, x)
            s.insert(0, s.pop(i))
            self.fill_l1(core, Line(x, key, write, ln.excl, ln.stale))
            c["l2_hits"][cpu] += 1
            self.charge(cpu, lat)
            return L2
        c["l2_misses"][cpu] += 1
        return self.miss(cpu, core, x, key, write)

    def charge(self, cpu, lat):
        self.clocks[cpu] += lat
        self.ctr["access_cycles"][cpu] += lat

    def upgrade(self, cpu, core, x, key):
        self.ctr["upgrades"][cpu] += 1
        ccd = self.ccd_of_core(core)
        took = False
        lat = self.lat[L3]
        for h in self.holders(x, skip_core=core):
            if h.line.key != key:
                continue
            lat = max(lat, self.holder_latency(h, ccd)[0])
            took = self.remove_holder(h) or took
            self.ctr["invalidations"][cpu] += 1
        _, ln = self.l2.find(core, x, key)
        if ln is not None:
            ln.excl = True
            ln.dirty = ln.dirty or took
        return lat

    def miss(self, cpu, core, x, key, write):
        ccd = self.ccd_of_core(core)
        hs = self.holders(x)
        if self.coherent:
            for h in hs:
                if h.line.key != key:
                    self.evict_holder(cpu, h)
        same = [h for h in hs if h.line.key == key]
        level, lat = MEMORY, math.inf
        stale = any(h.line.stale for h in same)
        own_l3 = False
        for h in same:
            l, lv = self.holder_latency(h, ccd)
            if l < lat:
                lat, level = l, lv
            own_l3 = own_l3 or (h.l3 and h.inst == ccd)
        if not same:
            lat = self.lat[MEMORY]
        if write:
            took = False
            for h in same:
                took = self.remove_holder(h) or took
                self.ctr["invalidations"][cpu] += 1
            new = Line(x, key, took, True, stale)
        elif not same:
            dk = self.data_key(x)
            if dk != key:
                self.record("read_foreign_data", cpu, x, key, dk, self.owner(x))
            new = Line(x, key, False, True, False)
        elif own_l3:
            old = self.l3.take(ccd, x, key)
            new = Line(x, key, old.dirty, old.excl if len(same) == 1 else False, old.stale or stale)
        else:
            for h in same:
                self.downgrade_holder(h)
            new = Line(x, key, False, False, stale)
        if stale:
            self.record("stale_key_hit", cpu, x, key, key, self.owner(x))
        c = self.ctr
        if level == L3:
            c["l3_hits"][cpu] += 1
        else:
            c["l3_misses"][cpu] += 1
            c[{PEER: "peer_hits", REMOTE: "remote_hits", MEMORY: "mem_reads"}[level]][cpu] += 1
        self.fill_l2(cpu, core, ccd, new)
        self.fill_l1(core, Line(x, key, write, new.excl, new.stale))
        self.charge(cpu, lat)
        return level

    def fill_l2(self, cpu, core, ccd, ln: Line):
        victim = self.l2.insert(core, ln.x, ln)
        if victim is not None:
            l1 = self.l1.take(core, victim.x, victim.key)
            if l1 is not None and l1.dirty:
                victim.dirty = True
            self.castout(cpu, ccd, victim)

    def castout(self, cpu, ccd, ln: Line):
        s = self.l3.set_of(ccd, ln.x)
        for i, old in enumerate(s):
            if old.x == ln.x and old.key == ln.key:
                s.pop(i)
                s.insert(0, Line(ln.x, ln.key, old.dirty or ln.dirty, False, old.stale or ln.stale))
                return
        victim = self.l3.insert(ccd, ln.x, ln)
        if victim is not None and victim.dirty:
            self.writeback(cpu, victim)

    def fill_l1(self, core, ln: Line):
        victim = self.l1.insert(core, ln.x, ln)
        if victim is not None and victim.dirty:
            _, l2 = self.l2.find(core, victim.x, victim.key)
            l2.dirty = True

    # -- WBINVD / WBNOINVD
    def flush_cpu(self, cpu, invalidate):
        core = self.core_of(cpu)
        ccd = self.ccd_of_core(core)
        walked = self.l1.sets * self.l1.ways + self.l2.sets * self.l2.ways
        for ln in list(self.l1.lines(core)):
            if ln.dirty:
                ln.dirty = False
                _, l2 = self.l2.find(core, ln.x, ln.key)
                l2.dirty = True
        if invalidate:
            self.l1.data[core] = [[] for _ in range(self.l1.sets)]
        dirty = self.flush_inst(cpu, self.l2, core, invalidate)
        if self.scope_ccd:
            walked += self.l3.sets * self.l3.ways
            dirty += self.flush_inst(cpu, self.l3, ccd, invalidate)
        self.ctr["wbinvd" if invalidate else "wbnoinvd"][cpu] += 1
        return walked, dirty

    def flush_inst(self, cpu, cache, inst, invalidate):
        dirty = []
        n_valid = 0
        for ln in cache.lines(inst):
            n_valid += 1
            if ln.dirty:
                dirty.append(Line(ln.x, ln.key, True, ln.excl, ln.stale))
                ln.dirty = False
        if invalidate:
            cache.data[inst] = [[] for _ in range(cache.sets)]
            self.ctr["invalidations"][cpu] += n_valid
        for ln in dirty:
            self.writeback(cpu, ln)
        return len(dirty)

    def flush_cost(self, walked, dirty):
        c = self.cost
        return c["wbinvd_base"] + math.floor(
            c["wbinvd_walk_per_line"] * walked + c["wbinvd_writeback_per_line"] * dirty + 0.5)

    def wbinvd_on_cpus(self, initiator, cpus, invalidate):
        cpus = sorted(set(cpus))
        invalidate = invalidate or not self.wbnoinvd_ok
        c = self.cost
        t0 = self.clocks[initiator]
        n_remote = sum(1 for t in cpus if t != initiator)
        send = c["ipi_send_base"] + c["ipi_send_per_target"] * n_remote if n_remote else 0
        t_sent = t0 + send
        done = t_sent
        socket_dirty = [0] * self.sockets
        for t in cpus:
            walked, dirty = self.flush_cpu(t, invalidate)
            op = self.flush_cost(walked, dirty)
            socket_dirty[self.socket_of_ccd(self.ccd_of_core(self.core_of(t)))] += dirty
            if t == initiator:
                done = max(done, t_sent + op)
            else:
                self.ctr["flush_cycles"][t] += op
                done = max(done, t_sent + c["ipi_latency"] + c["ipi_handler"] + op)
                self.clocks[t] += c["ipi_handler"] + op
                self.ctr["ipis_received"][t] += 1
                self.ctr["ipi_cycles"][t] += c["ipi_handler"] + op
        bpc = c["socket_writeback_gbps"] / self.freq
        lat = c["ipi_latency"] if n_remote else 0
        for d in socket_dirty:
            done = max(done, t_sent + lat + math.ceil((d * LINE) / bpc))
        if n_remote:
            done += c["ipi_ack"]
        self.ctr["flush_cycles"][initiator] += done - t0
        self.clocks[initiator] = done
        self.ctr["ipis_sent"][initiator] += n_remote
        return done - t0

    # -- CLFLUSH / VM_PAGE_FLUSH / DMA
    def flush_line(self, cpu, x, key, any_key):
        dirty = 0
        for h in self.holders(x):
            if any_key or h.line.key == key:
                dirty += self.evict_holder(cpu, h)
        return dirty

    def clflush(self, cpu, pa, size, key, opt, fenced):
        first, last = pa // LINE, -(-(pa + max(size, 1)) // LINE)
        c = self.cost
        per = c["clflushopt_line"] if opt else c["clflush_line"]
        dirty = sum(self.flush_line(cpu, x, key, self.coherent) for x in range(first, last))
        n = last - first
        cycles = per * n + c["flush_dirty_line"] * dirty + (2 * c["fence"] if fenced else 0)
        self.ctr["clflush_lines"][cpu] += n
        self.ctr["flush_cycles"][cpu] += cycles
        self.clocks[cpu] += cycles
        return cycles

    def vm_page_flush(self, cpu, pa, asid):
        if not self.vmpf_ok:
            self.ctr["faults"][cpu] += 1
            return False
        first = (pa - pa % PAGE) // LINE
        dirty = sum(self.flush_line(cpu, x, asid, False) for x in range(first, first + PAGE // LINE))
        c = self.cost
        cycles = c["vm_page_flush_base"] + c["clflushopt_line"] * (PAGE // LINE) + c["flush_dirty_line"] * dirty
        self.ctr["vm_page_flush"][cpu] += 1
        self.ctr["flush_cycles"][cpu] += cycles
        self.clocks[cpu] += cycles
        return True

    def dma(self, pa, size, key, write):
        first, last = pa // LINE, -(-(pa + max(size, 1)) // LINE)
        cause = "dma_write_dirty_line" if write else "dma_read_dirty_line"
        for x in range(first, last):
            for h in self.holders(x):
                if h.line.key == key:
                    if write:
                        self.remove_holder(h)
                elif h.dirty:
                    self.record(cause, -1, x, h.line.key, key, self.owner(x))
            if write:
                self.mem_write(x, key)

    # -- ownership and key slots
    def set_owner(self, pa, size, key):
        for p in range(pa // PAGE, (pa + size) // PAGE):
            self.owners[p] = key
        for x in [x for x in self.foreign if pa <= x * LINE < pa + size]:
            del self.foreign[x]

    def activate(self, key):
        n = 0
        for cache in (self.l1, self.l2, self.l3):
            for inst in cache.data:
                for s in inst:
                    for ln in s:
                        if ln.key == key:
                            ln.stale = True
                            n += 1
        return n

    # -- inspection, in the engine's shapes
    def set_contents(self, level, inst, set_):
        cache = {1: self.l1, 2: self.l2, 3: self.l3}[level]
        return [(ln.x * LINE, ln.key, ln.dirty) for ln in cache.data[inst][set_]]

    def memory_line(self, pa):
        x = pa // LINE
        if x in self.foreign:
            return self.foreign[x]
        return (self.owner(x), 0)


def config_of(host) -> dict:
    """The RefHost configuration of a sevsim.Host (read from its public properties)."""
    import tomllib

    from sevsim import _core

    prof = tomllib.loads(_core.DEFAULT_PROFILE)["presets"][host.preset]
    return {
        "topology": {
            "sockets": host.socket_count,
            "ccds_per_socket": host.ccd_count // host.socket_count,
            "cores_per_ccd": host.core_count // host.ccd_count,
            "threads_per_core": host.cpu_count // host.core_count,
        },
        "caches": host.caches,
        "features": host.features,
        "latency": prof["latency"],
        "cost": prof["cost"],
        "freq_ghz": host.freq_ghz,
    }
