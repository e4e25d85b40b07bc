"""tlb-tagging: Intel's three translation categories and their tags against SVM's ASID, after an
EPT/NPT change, and the Hyper-V PV flush FIFO.

Reproduces seed thread 4, "KVM: x86: hyper-v: Resurrect dedicated KVM_REQ_HV_TLB_FLUSH flag"
(Sep 2022; tlb-policies.md sections 1, 5 and 9). Intel tags linear (GVA->GPA) and combined
translations with the VPID, guest-physical (GPA->HPA) and combined ones with the EPTP, so an EPT
change (INVEPT) can keep the linear translations and a guest flush (INVVPID) the guest-physical
ones; SVM has no way to flush only nested-paging translations: an ASID flush drops everything,
which is also why svm_flush_tlb_current() purges the Hyper-V FIFO. (A guest under EPT has no
linear entries of its own: "No linear mappings are created while EPT is in use", SDM vol. 3C
29.4.2; what INVEPT keeps is the host's and EPT-less guests' linear entries.)

A guest touches `pages` pages; L0 then changes `changed_pages` of its nested (EPT/NPT) mappings
and flushes as KVM does: `ept_flush=remote` (kvm_flush_remote_tlbs -> KVM_REQ_TLB_FLUSH) or
`current` (KVM_REQ_TLB_FLUSH_CURRENT, as at a new root). Measured: the translations cached before
and surviving after, by category; the refill (walks, walk cycles, time) when the guest touches
its pages again; then accesses through a second GVA range aliasing the same guest pages, which a
stale guest-physical entry would serve (the stale translation `vmx_invvpid`, INVVPID where INVEPT
was needed, leaves). Then the guest changes `changed_pages` of its own PTEs and KVM flushes its
translations (KVM_REQ_TLB_FLUSH_GUEST): INVVPID keeps the guest-physical entries, which serve the
refill's second stages, where SVM's ASID flush leaves nothing. Then the Hyper-V FIFO: `hv_calls` HVCALL_FLUSH_VIRTUAL_ADDRESS_LIST calls of
`hv_gvas` entries each after the guest remapped those pages (more than 15: FLUSHALL), and the
purge rule: with `hv_then_flush`, a KVM flush of the current context comes before the drain
(SVM purges the FIFO since its ASID flush covers it; VMX's INVEPT does not, so it drains).
"""

from __future__ import annotations

import numpy as np

from .. import Host
from ..kvm import ConfigError
from ..kvm.hyperv import HvTlbFlush, kvm_hv_flush_tlb
from ..kvm.nested import POLICIES as SVM_POLICIES
from ..kvm.vmx import VmxInvvpid, VmxUpstream
from ..kvm.x86 import Req, Vcpu, Vm, kvm_flush_remote_tlbs, kvm_make_request
from ..results import ResultTable  # noqa: F401 (the return type)
from . import common
from .params import Bool, Choice, Int, Size, Text, check_preset

NAME = "tlb-tagging"
SUMMARY = "VMX's three translation categories vs SVM's ASID after an EPT/NPT change; the Hyper-V flush FIFO"
SOURCE = "KVM: x86: hyper-v: Resurrect dedicated KVM_REQ_HV_TLB_FLUSH flag (Sep 2022)"
POLICIES = {"vmx_upstream": VmxUpstream, "svm_upstream": SVM_POLICIES["svm_upstream"], "vmx_invvpid": VmxInvvpid}
STRATEGY_NAMES = tuple(POLICIES)
DEFAULT_STRATEGIES = list(STRATEGY_NAMES)

PARAMS = {
    "preset": Text("epyc-9755-2s", "host preset", check=check_preset),
    "memory": Size("4GiB", "host memory", lo=64 << 20),
    "pages": Int(1024, "guest pages touched (4 KiB)", lo=1, hi=1 << 20),
    "changed_pages": Int(64, "guest pages whose nested (EPT/NPT) mapping L0 changes", lo=0),
    "ept_flush": Choice("current", "how KVM flushes the change: current (KVM_REQ_TLB_FLUSH_CURRENT) or remote "
                        "(kvm_flush_remote_tlbs: KVM_REQ_TLB_FLUSH)", ("current", "remote")),
    "hv_calls": Int(4, "HVCALL_FLUSH_VIRTUAL_ADDRESS_LIST calls from the guest", lo=0),
    "hv_gvas": Int(8, "entries per call (more than 15: the call becomes a flush of everything)", lo=1, hi=4096),
    "hv_then_flush": Bool(True, "a KVM flush of the current context comes before the FIFO drain (the purge rule)"),
}
SUMMARY_COLUMNS = ["strategy", "rep", "cached_linear", "cached_guest_physical", "cached_combined",
                   "survive_linear", "survive_guest_physical", "survive_combined", "refill_walks",
                   "refill_walk_cycles", "refill_us", "guest_flush_survive_guest_physical",
                   "guest_flush_refill_walk_cycles", "hv_gva_flushes", "hv_flushall", "hv_purged", "violations",
                   "verdict"]
METRICS = ["survive_linear", "refill_walks", "refill_walk_cycles", "refill_us", "guest_flush_refill_walk_cycles",
           "violations"]
PLOTS = [("guest_flush_refill_walk_cycles", "refill walk cycles after a guest flush"),
         ("refill_walk_cycles", "refill walk cycles"),
         ("refill_us", "refill time (us)"), ("violations", "violations")]
LEGEND = {
    "strategy": "the TLB policy (vmx_invvpid: deliberately broken, INVVPID where INVEPT was needed)",
    "rep": "repetition (seed = --seed + rep)",
    "seed": "the run's RNG seed",
    "cached_linear": "linear (GVA->GPA) entries cached before the change, both TLB levels",
    "cached_guest_physical": "guest-physical (GPA->HPA) entries cached before the change",
    "cached_combined": "combined (GVA->HPA) entries cached before the change",
    "survive_linear": "linear entries left after the flush of the change",
    "survive_guest_physical": "guest-physical entries left after the flush",
    "survive_combined": "combined entries left after the flush",
    "refill_walks": "TLB misses (walks) when the guest touches its pages again",
    "refill_walk_cycles": "page-walk cycles of that refill",
    "refill_us": "simulated time of that refill on the vCPU (us)",
    "guest_flush_survive_guest_physical": "guest-physical entries left after the guest changed `changed_pages` of "
                                          "its PTEs and KVM flushed its translations (KVM_REQ_TLB_FLUSH_GUEST)",
    "guest_flush_refill_walks": "TLB misses when the guest touches its pages after that flush",
    "guest_flush_refill_walk_cycles": "page-walk cycles of that refill (a kept guest-physical entry spares the "
                                      "nested half of a walk: walk_guest_only instead of walk_nested)",
    "guest_flush_gphys_hits": "walks of that refill whose second stage came from a kept guest-physical entry",
    "hv_gva_flushes": "per-page flushes the Hyper-V FIFO drains executed (INVVPID type 0 / INVLPGA)",
    "hv_flushall": "FLUSHALL entries queued (a call with more than 15 entries, or a full FIFO)",
    "hv_purged": "FIFO entries purged unexecuted because a flush of the current context covered them",
    "violations": "every violation recorded (stale or foreign translations included): 0 means SAFE",
    "verdict": "SAFE: no violation; UNSAFE otherwise",
    "first_violation": "the first violation recorded, with the step that ran",
    "notes": "why a row looks as it does",
}

GVA, GVA_ALIAS, GPA = 0x4000_0000, 0x8000_0000, 0x100_0000
PAGE = 4096


def run(*, strategies, seed, reps, progress=None, **p) -> ResultTable:
    title = (f"{NAME}: {p['pages']} guest pages, {p['changed_pages']} nested mappings changed "
             f"(flush: {p['ept_flush']}), {p['hv_calls']} Hyper-V calls of {p['hv_gvas']} on {p['preset']}")
    return common.run_grid(title, run_one, strategies=strategies, seed=seed, reps=reps, progress=progress,
                           scenario=NAME, legend=LEGEND, shown=SUMMARY_COLUMNS, **p)


def _by_category(host: Host, cpu: int) -> dict[str, int]:
    out = {"linear": 0, "guest_physical": 0, "combined": 0}
    for e in host.tlb_entries(cpu):
        out[e["category"]] = out.get(e["category"], 0) + 1
    return out


def run_one(strategy, seed, rep, *, preset, memory, pages, changed_pages, ept_flush, hv_calls, hv_gvas,
            hv_then_flush):
    if changed_pages > pages:
        raise ConfigError(f"parameter changed_pages: {changed_pages} exceeds pages = {pages}")
    rng = np.random.default_rng(seed)
    host = Host.from_preset(preset, memory=memory)
    policy = POLICIES[strategy](host)
    cpu = 0
    steps = common.Steps(host)
    steps.mark("setup")
    gpt, npt = host.create_table("guest"), host.create_table("nested")
    idx = np.arange(pages, dtype=np.uint64) * np.uint64(PAGE)
    host.map_many(gpt, np.uint64(GVA) + idx, np.uint64(GPA) + idx, "4K")
    host.map_many(gpt, np.uint64(GVA_ALIAS) + idx, np.uint64(GPA) + idx, "4K")  # a second view of the same pages
    hpa_base = 64 << 20
    if hpa_base + 2 * pages * PAGE > host.memory:
        raise ConfigError(f"parameter pages: {pages} pages do not fit in the host's memory")
    host.map_many(npt, np.uint64(GPA) + idx, np.uint64(hpa_base) + idx, "4K")
    vm = Vm(host, policy, vm_id=1, npt01=npt)
    v = Vcpu(vm, 0, l1_cr3=gpt, hv=HvTlbFlush())
    vm.vcpus.append(v)
    policy.vm_init(vm)
    policy.vcpu_create(v)
    policy.vcpu_load(v, cpu)

    def touch(base):
        policy.enter_guest(v)
        host.access_virtual(cpu, np.uint64(base) + idx, False)
        policy.exit_guest(v)

    steps.mark("guest touches its pages")
    touch(GVA)
    touch(GVA)
    cached = _by_category(host, cpu)

    # L0 changes nested mappings (a migration), then KVM's flush of the change
    steps.mark(f"nested mappings changed, flush: {ept_flush}")
    moved = np.sort(rng.choice(pages, size=changed_pages, replace=False)).astype(np.uint64) * np.uint64(PAGE)
    for k, off in enumerate(moved):
        host.unmap(npt, int(GPA + off))
        host.map(npt, int(GPA + off), hpa_base + pages * PAGE + k * PAGE, "4K")
    if ept_flush == "remote":
        kvm_flush_remote_tlbs(vm, cpu)
    else:
        kvm_make_request(v, Req.TLB_FLUSH_CURRENT)
    policy.enter_guest(v)  # the requests are serviced at entry
    policy.exit_guest(v)
    survive = _by_category(host, cpu)

    steps.mark("refill")
    c0, t0 = host.counters, host.cycles(cpu)
    touch(GVA)
    c1, t1 = host.counters, host.cycles(cpu)
    walks = int(c1["tlb_misses"][cpu] - c0["tlb_misses"][cpu])
    walk_cycles = int(c1["walk_cycles"][cpu] - c0["walk_cycles"][cpu])
    steps.mark("accesses through an aliasing GVA")
    touch(GVA_ALIAS)

    # the guest changes its own table (a GVA now at another of its pages) and KVM flushes the
    # guest's translations (KVM_REQ_TLB_FLUSH_GUEST: INVVPID on VMX, which keeps the guest-physical
    # entries; SVM's ASID flush, which cannot keep them): the refill that follows
    steps.mark("guest-table change, KVM_REQ_TLB_FLUSH_GUEST")
    remapped = np.sort(rng.choice(pages, size=changed_pages, replace=False)).astype(np.uint64) * np.uint64(PAGE)
    for off in remapped:
        host.unmap(gpt, int(GVA + off))
        host.map(gpt, int(GVA + off), int(GPA + (int(off) + PAGE * 3) % (pages * PAGE)), "4K")
    kvm_make_request(v, Req.TLB_FLUSH_GUEST)
    policy.enter_guest(v)
    policy.exit_guest(v)
    guest_survive = _by_category(host, cpu)
    c0 = host.counters
    touch(GVA)
    c1 = host.counters
    guest_walks = int(c1["tlb_misses"][cpu] - c0["tlb_misses"][cpu])
    guest_walk_cycles = int(c1["walk_cycles"][cpu] - c0["walk_cycles"][cpu])
    guest_gphys_hits = int(c1["gphys_hits"][cpu] - c0["gphys_hits"][cpu])

    # the Hyper-V FIFO: the guest remaps pages, then asks for their flush by hypercall
    steps.mark("Hyper-V PV flush hypercalls")
    for c in range(hv_calls):
        lo = (c * hv_gvas) % max(pages, 1)
        offs = (np.arange(lo, lo + hv_gvas) % pages).astype(np.uint64) * np.uint64(PAGE)
        for off in offs:
            host.unmap(gpt, int(GVA + off))
            host.map(gpt, int(GVA + off), int(GPA + (int(off) + PAGE * 7) % (pages * PAGE)), "4K")
        kvm_hv_flush_tlb([v], [int(GVA + o) for o in offs])
        if hv_then_flush:
            kvm_make_request(v, Req.TLB_FLUSH_CURRENT)
        touch(GVA)

    safe = common.safety(host)
    records = common.violation_records(host, steps)
    notes = []
    if cached["linear"] == 0 and strategy.startswith("vmx"):
        notes.append("no linear entries: none are created or used while EPT is in use (SDM vol. 3C 29.4.2), so "
                     "what INVEPT keeps is the host's and EPT-less guests' linear entries, not this guest's; what "
                     "a partial translation saves shows after the guest flush (guest_flush_*)")
    row = {
        "strategy": strategy, "rep": rep, "seed": seed,
        **{f"cached_{k}": cached[k] for k in ("linear", "guest_physical", "combined")},
        **{f"survive_{k}": survive[k] for k in ("linear", "guest_physical", "combined")},
        "refill_walks": walks,
        "refill_walk_cycles": walk_cycles,
        "refill_us": common.cycles_to_us(host, t1 - t0),
        "guest_flush_survive_guest_physical": guest_survive["guest_physical"],
        "guest_flush_refill_walks": guest_walks,
        "guest_flush_refill_walk_cycles": guest_walk_cycles,
        "guest_flush_gphys_hits": guest_gphys_hits,
        "hv_gva_flushes": v.hv.stats["gva_flushes"],
        "hv_flushall": v.hv.stats["flushall"],
        "hv_purged": v.hv.stats["purged"],
        **{k: safe[k] for k in ("corruption", "dma", "isolation", "rmp", "tlb", "latent", "violations")},
        **common.cause_counts(host),
        "verdict": common.verdict(safe),
        "first_violation": common.first_violation(records, safe),
        "notes": "; ".join(notes),
    }
    return row, records
