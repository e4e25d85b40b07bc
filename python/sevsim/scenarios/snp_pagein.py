"""snp-pagein: SNP guests paging in their memory through lazy acceptance on a large host, with the
direct map pre-split to 4 KiB against split on demand.

Reproduces seed thread 5, "x86/sev: Invalidate pages from the direct map when adding them to the
RMP table" (Jan 2024; seeds.md 5, snp-pagein.md): Roth's page-in/acceptance rates on a
512-thread, 1.5 TB EPYC host (2 x EPYC 9754 assumed, preset epyc-9754-2s) for one guest of 128
vCPUs and four guests of 128 vCPUs and 256 GB. Every vCPU is a thread of a discrete-event driver
(sim/): it takes a 4 MiB block off the guest's unaccepted list, waits for an overlapping
acceptance in flight, makes a page-state change to private (exit to QEMU,
KVM_SET_MEMORY_ATTRIBUTES under the VM's slots_lock and mmu_lock, the shared memfd discard),
PVALIDATEs each 2 MiB (a #NPF, a guest_memfd folio allocated, cleared and made private, the
direct-map policy for 4 KiB entries), and then faults the accepted memory in (stress). The rate
comes out of those mechanisms and their costs (the preset's [kvm] section and snp-pagein.md);
nothing is fitted to the table.

Configurations: `guests`, `vcpus` and `guest_memory` each take one value or a comma-separated
list, zipped into configurations (a single value applies to all). The default runs the seed
table's two: 1 x (128 vCPUs, 512 GiB) and 4 x (128 vCPUs, 256 GB). The seed prints the first as
"512 MiB", which cannot be meant: the guest ran `stress --vm 128 --vm-bytes 5G` (P2) and a rate of
~14 GB/s would page 512 MiB in 36 ms, shorter than /proc/meminfo sampling; 512 GiB is assumed.
Rows of a published configuration carry its min-max band and whether the rate lands in it.
"""

from __future__ import annotations

from .. import Host, __version__
from ..kvm import ConfigError
from ..kvm.directmap import POLICIES
from ..kvm.snp_host import ERAS, run_pagein
from ..results import ResultTable
from .common import size
from .params import Choice, Text, check_preset

NAME = "snp-pagein"
SUMMARY = "SNP guests paging in through lazy acceptance at host scale: direct map pre-split vs split on demand"
SOURCE = "x86/sev: Invalidate pages from the direct map when adding them to the RMP table (Jan 2024)"

STRATEGY_NAMES = tuple(POLICIES)
DEFAULT_STRATEGIES = ["presplit", "on_demand"]
DEFAULT_REPS = 3
#: the CLI's summary over repetitions: one row per configuration and policy
SUMMARY_BY = "run"

#: seeds.md 5: (guests, vcpus, guest memory) -> strategy -> the three published rates (GB/s)
PUBLISHED = {
    (1, 128, 512 << 30): {"presplit": (13.77, 11.88, 15.37), "on_demand": (14.77, 16.57, 15.53)},
    (4, 128, 256 * 10**9): {"presplit": (37.35, 33.37, 29.55), "on_demand": (28.88, 25.13, 29.28)},
}


#: KVM's vCPU limit per VM: KVM_MAX_VCPUS is CONFIG_KVM_MAX_NR_VCPUS, at most 4096
#: (arch/x86/include/asm/kvm_host.h, arch/x86/kvm/Kconfig)
MAX_VCPUS = 4096
#: each guest takes an SNP ASID (kvm/snp_host.py: ASIDs 1, 2, ...); the engine's RMP entries
#: hold ASIDs up to 1023 (rust/engine/src/rmp.rs MAX_ASID, a 10-bit field)
MAX_GUESTS = 1023


def _ints_upto(limit: int, why: str):
    def check(v: str) -> str | None:
        try:
            xs = [int(x) for x in v.split(",")]
        except ValueError:
            xs = []
        if xs and all(1 <= x <= limit for x in xs):
            return None
        return f"give integers in [1, {limit}] ({why}), one or a comma-separated list"
    return check


def _check_sizes(v: str) -> str | None:
    try:
        xs = [size(x.strip(), "guest_memory") for x in v.split(",")]
    except ValueError as e:
        return str(e)
    return None if xs and all(x >= 4 << 20 for x in xs) else "each guest needs at least 4 MiB"


def _check_assume(v: str) -> str | None:
    from ..kvm.snp_host import PageinCosts

    if not v.strip():
        return None
    names = PageinCosts.assumable()
    for item in v.split(","):
        if "=" not in item:
            return f"{item!r}: give NAME=VALUE pairs, comma-separated"
        key = item.split("=", 1)[0].strip()
        if key.removesuffix("_ns") not in names:
            return f"{key!r} is not a page-in parameter; valid: {', '.join(sorted(names))}"
        try:
            float(item.split("=", 1)[1])
        except ValueError:
            return f"{item!r}: the value must be a number"
    return None


PARAMS = {
    "preset": Text("epyc-9754-2s", "host preset (the thread's host: 2 x EPYC 9754, 512 CPUs, 1.5 TiB)",
                   check=check_preset),
    "guests": Text("1,4", "guests per configuration (one value or a list zipped with vcpus and guest_memory)",
                   check=_ints_upto(MAX_GUESTS, "one SNP ASID each")),
    "vcpus": Text("128", "vCPUs per guest (one value or a list)", check=_ints_upto(MAX_VCPUS, "KVM's vCPU limit per VM")),
    "guest_memory": Text("512GiB,256GB", "memory per guest, all of it paged in (one value or a list)",
                         check=_check_sizes),
    "era": Choice("2024", "kernel era: 2024 = the thread's (best-effort 2 MiB guest_memfd folios, IPI "
                          "flush_tlb_all); upstream = today's (order-0 guest_memfd, INVLPGB flushes)", tuple(ERAS)),
    "assume": Text("", "override [assumed] page-in parameters of the preset's [kvm] section, e.g. "
                       "thp_fail_half=0.001,smt_pair_yield=1.2 (names as in the profile)", check=_check_assume),
}

SUMMARY_COLUMNS = ["config", "strategy", "rep", "pagein_gbps", "published", "band", "splits", "flushes", "rmp",
                   "slots_wait_ms", "mmu_wait_ms", "cpa_wait_ms", "fallback_chunks", "neighbour_waits", "verdict"]
METRICS = ["pagein_gbps", "splits", "flushes", "rmp", "slots_wait_ms", "cpa_wait_ms"]
PLOTS = [("pagein_gbps", "page-in rate (GB/s, simulated)")]
LEGEND = {
    "config": "guests x (vCPUs per guest, memory per guest)",
    "run": "configuration and policy",
    "strategy": "direct-map policy: presplit (4 KiB from boot), on_demand (adjust_direct_map), never (broken)",
    "pagein_gbps": "page-in/acceptance rate, summed over the guests: bytes accepted / simulated time (GB/s)",
    "filehuge_gbps": "the same for 2 MiB guest_memfd folios only (what FileHugePages in /proc/meminfo counts)",
    "published": "the seed table's min-max for this configuration and policy (seeds.md 5)",
    "band": "in: the rate lies in the published min-max; above/below: outside it; -: no published row",
    "splits": "direct-map splits (set_memory_4k under cpa_lock)",
    "flushes": "flush_tlb_all() IPI broadcasts (one per split; INVLPGB flushes are not broadcasts)",
    "rmp": "RMP faults recorded (host writes through a large mapping over a private 4 KiB page)",
    "slots_wait_ms": "time vCPUs waited for kvm->slots_lock, summed (ms)",
    "mmu_wait_ms": "time waited for kvm->mmu_lock (either mode), summed (ms); small (under 0.2% of the vCPUs' "
                   "time in the seed table) and set by how the model's fixed costs phase the faults' reads against "
                   "the writers: in the seed table it differs 4.7x (1 guest) and 66x (4 guests) between "
                   "policies whose sections differ by 5%, so do not rank policies by it",
    "cpa_wait_ms": "time waited for the global cpa_lock, summed (ms)",
    "shmem_wait_ms": "time waited for the shared memfd's inode lock, summed (ms)",
    "gmem_wait_ms": "time waited for guest_memfd's i_pages lock, summed (ms)",
    "slots_hold_frac": "share of the run kvm->slots_lock was held, mean over the guests (1 = saturated)",
    "section_us": "kvm->slots_lock hold per page-state change (us): the per-VM serial section, which sets the rate "
                  "when slots_hold_frac is 1",
    "walk_steps": "hugepage_has_attrs() steps at 1 GiB per page-state change (the post-set mixed walk)",
    "psc": "page-state changes (guest VMGEXITs to private)",
    "npf": "nested page faults (retries included)",
    "npf_retries": "faults retried because an MMU invalidation ended while they ran",
    "fallback_chunks": "2 MiB chunks backed by order-0 folios (4 KiB RMP entries, 512 PVALIDATEs)",
    "neighbour_waits": "acceptances that waited for an overlapping one in flight (accepting_list)",
    "huge_fraction": "share of the memory paged in as 2 MiB folios",
    "host_util": "host memory in use at the end (mean over nodes)",
    "sim_s": "simulated seconds until the last acceptance",
    "events": "steps of the discrete-event driver",
    "verdict": "SAFE: no RMP fault or other violation; UNSAFE otherwise",
    "first_violation": "the first violation recorded",
    "notes": "why a row looks as it does",
}


def configurations(guests: str, vcpus: str, guest_memory: str) -> list[tuple[int, int, int, str]]:
    """(guests, vcpus, bytes per guest, memory as given) per configuration, lists zipped."""
    g = [int(x) for x in guests.split(",")]
    v = [int(x) for x in vcpus.split(",")]
    m_txt = [x.strip() for x in guest_memory.split(",")]
    m = [size(x, "guest_memory") for x in m_txt]
    n = max(len(g), len(v), len(m))
    for name, xs in (("guests", g), ("vcpus", v), ("guest_memory", m)):
        if len(xs) not in (1, n):
            raise ConfigError(f"parameter {name}: {len(xs)} values, but another list has {n}; give one value or {n}")
    pick = lambda xs, i: xs[i if len(xs) > 1 else 0]  # noqa: E731
    return [(pick(g, i), pick(v, i), pick(m, i), pick(m_txt, i)) for i in range(n)]


def run(*, strategies, seed, reps, progress=None, **p) -> ResultTable:
    confs = configurations(p["guests"], p["vcpus"], p["guest_memory"])
    assume = {k.strip(): float(v) for k, v in (i.split("=", 1) for i in p["assume"].split(",") if i.strip())}
    title = (f"{NAME}: SNP page-in on {p['preset']}, era {p['era']}: "
             + "; ".join(f"{g} x ({v} vCPUs, {mt})" for g, v, _, mt in confs))
    table = ResultTable(title=title, legend=LEGEND, params=list(PARAMS), shown=SUMMARY_COLUMNS)
    total = len(confs) * reps * len(strategies)
    done = 0
    for g, v, mem, mem_txt in confs:
        for rep in range(reps):
            for strat in strategies:
                what = f"{g}x({v}, {mem_txt}) {strat} rep {rep}"
                if progress:
                    progress(done, total, what)
                row = run_one(strat, seed + rep, rep, preset=p["preset"], guests=g, vcpus=v, memory=mem,
                              memory_text=mem_txt, era=p["era"], assume=assume)
                row.update({"scenario": NAME, **p, "seed": seed + rep, "sevsim_version": __version__})
                table.append(row)
                done += 1
                if progress:
                    progress(done, total, what, row=row)
    return table


def run_one(strategy: str, seed: int, rep: int, *, preset: str, guests: int, vcpus: int, memory: int,
            memory_text: str, era: str, assume: dict[str, float]) -> dict:
    host = Host.from_preset(preset)
    if not host.features["snp"]:
        raise ConfigError(f"parameter preset: {preset} has no SEV-SNP")
    if guests * memory > host.memory * 0.95:
        raise ConfigError(f"{guests} guests of {memory_text} do not fit in the host's {host.memory >> 30} GiB "
                          "(with 5% for the host)")
    r = run_pagein(host, era=era, policy=strategy, vm_vcpus=[vcpus] * guests, vm_memory=[memory] * guests,
                   seed=seed, overrides=assume)
    ctr, locks = r["counters"], r["locks"]
    pub = PUBLISHED.get((guests, vcpus, memory), {}).get(strategy) if era == "2024" else None
    band = "-"
    if pub:
        lo, hi = min(pub), max(pub)
        band = "in" if lo <= r["pagein_gbps"] <= hi else ("above" if r["pagein_gbps"] > hi else "below")
    viol = int(sum(r["violations"].values()))
    first = ""
    if viol:
        v = host.violations[0]
        first = f"{v.cause} on CPU {v.cpu} at pa {v.pa:#x} (owner {v.owner}), cycle {v.cycle}"
    notes = []
    notes.append(f"{guests}x({vcpus}, {memory_text})")
    if strategy == "never":
        notes.append("deliberately broken: large direct-map entries left over private 4 KiB pages")
    if ctr["fallback_chunks"] == 0 and strategy == "on_demand" and era == "2024":
        notes.append("no order-0 fallback: adjust_direct_map() had nothing to split")
    if vcpus * guests > host.cpu_count:
        notes.append(f"{vcpus * guests} vCPU threads on {host.cpu_count} CPUs: time-sliced")
    sim_s = r["sim_seconds"]
    slots_hold = locks["slots_lock"]["hold_us"] / 1e6 / guests / sim_s if sim_s else 0.0
    return {
        "config": f"{guests}x({vcpus}, {memory_text})", "run": f"{guests}x({vcpus}, {memory_text}) {strategy}",
        "guests": guests, "vcpus": vcpus, "strategy": strategy,
        "rep": rep, "pagein_gbps": round(r["pagein_gbps"], 3),
        "filehuge_gbps": round(r["pagein_gbps"] * r["huge_fraction"], 3),
        "published": f"{min(pub):.2f}-{max(pub):.2f}" if pub else "-", "band": band,
        "splits": ctr["splits"], "flushes": ctr["flushes"], "rmp": r["rmp_faults"],
        "slots_wait_ms": round(locks["slots_lock"]["wait_us"] / 1e3, 3),
        "mmu_wait_ms": round(locks["mmu_lock"]["wait_us"] / 1e3, 3),
        "cpa_wait_ms": round(locks["cpa_lock"]["wait_us"] / 1e3, 3),
        "shmem_wait_ms": round(locks["shmem_lock"]["wait_us"] / 1e3, 3),
        "gmem_wait_ms": round(locks["gmem_lock"]["wait_us"] / 1e3, 3),
        "slots_hold_frac": round(slots_hold, 3),
        "section_us": round(locks["slots_lock"]["hold_us"] / ctr["psc"], 2) if ctr["psc"] else 0.0,
        "walk_steps": round(ctr["attr_1g_steps"] / ctr["psc"], 1) if ctr["psc"] else 0.0,
        "psc": ctr["psc"], "npf": ctr["npf"], "npf_retries": ctr["npf_retries"],
        "fallback_chunks": ctr["fallback_chunks"], "neighbour_waits": ctr["neighbour_waits"],
        "huge_fraction": round(r["huge_fraction"], 4),
        "host_util": round(sum(r["host_utilisation"]) / len(r["host_utilisation"]), 3),
        "sim_s": round(sim_s, 4), "events": r["events"],
        "violations": viol, "verdict": "SAFE" if viol == 0 else "UNSAFE", "first_violation": first,
        "notes": "; ".join(notes) if len(notes) > 1 else "",
    }
