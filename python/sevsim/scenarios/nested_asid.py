"""nested-asid: which SVM ASID scheme and which nested flush rules are safe, and what they cost.

Reproduces seed thread 3, "KVM: SVM: Rework ASID management" (Yosry Ahmed, RFC, Mar 2025;
tlb-policies.md sections 3-7 and 12). An L1 VM runs an L2 on each of its vCPUs. In the
exit-heavy workload (a cpuid_rate analogue) L2 touches a few hot pages and exits; L0 reflects the
exit to L1 (nested #VMEXIT emulation); L1's handler touches its own pages and VMRUNs L2 again
(nested VMRUN emulation). In the memory-bound workload L2 walks a working set the size of the
TLB between rarer exits. L1 and L2 map the same virtual addresses (as two kernels do), so an L2
that hits L1's entries, or the reverse, is caught as a foreign translation.

Policies (strategies): `svm_upstream` (per-pCPU ASIDs with generations, L2 shares L1's ASID and
KVM flushes it on every nested transition), `svm_rfc` (static per-VM ASIDs, a nested ASID for
the L2s, conditional flushes) and `svm_per_vmcb` (a static ASID per VMCB, the review's proposal).

Measured per policy: flushes per nested transition (VMRUNs whose TLB_CONTROL flushed, over both
VMCBs, per transition), TLB entries dropped, L1's and L2's TLB hit rates, simulated L2 exits per
second and the speed-up over `svm_upstream`. After the measured phase a hazard phase runs the
events the flushes exist for (an NPT01 remap with a remote flush, L1's INVLPGA, a vmcb12 ASID
change, vmcb12 TLB_CONTROL 3 and 1 after L1's edits, a migration, two vCPUs sharing a pCPU, and
the RFC open question of tlb-policies.md 7.3), so a correct policy must stay clean through them.
With `mutate` each named flush of the policy is removed in turn, one row each: `mutation` names
it, `caught_by` says which oracle saw the stale translation, `benign` marks the removals argued
harmless (a test shows why).
"""

from __future__ import annotations

import numpy as np

from .. import Host
from ..kvm import ConfigError
from ..kvm.hyperv import HvTlbFlush
from ..kvm.nested import POLICIES as SVM_POLICIES
from ..kvm.nested import NestedMmu
from ..kvm.vmx import VmxUpstream
from ..kvm.svm import TLB_CONTROL_DO_NOTHING, TLB_CONTROL_FLUSH_ALL_ASID, TLB_CONTROL_FLUSH_ASID, Vmcb12
from ..kvm.x86 import Req, Vcpu, Vm, kvm_flush_remote_tlbs, kvm_make_request
from ..results import ResultTable  # noqa: F401 (the return type)
from . import common
from .params import Bool, Choice, Int, Size, Text, check_preset

NAME = "nested-asid"
SUMMARY = "nested SVM: ASID schemes and nested flush rules, flushes per transition, L1/L2 TLB hit rates, safety"
SOURCE = "KVM: SVM: Rework ASID management (RFC, Mar 2025)"
#: the policies by name: the SVM ones, and VMX (with nested VMX) for reference
POLICIES = {**SVM_POLICIES, "vmx_upstream": VmxUpstream}
STRATEGY_NAMES = tuple(POLICIES)

PARAMS = {
    "preset": Text("epyc-9755-2s", "host preset", check=check_preset),
    "memory": Size("4GiB", "host memory", lo=64 << 20),
    "workload": Choice("exit-heavy", "exit-heavy: L2 exits constantly (cpuid_rate); memory-bound: L2 walks "
                       "l2_ws_pages between exits", ("exit-heavy", "memory-bound")),
    "vcpus": Int(1, "vCPUs of the L1 VM, each running an L2", lo=1, hi=64),
    "pcpus": Int(1, "pCPUs the vCPUs run on (one thread per core); fewer than vcpus: they share them", lo=1, hi=64),
    "migrate_every": Int(0, "round trips between moves of each vCPU to the next pCPU (0: never)", lo=0),
    "round_trips": Int(4000, "measured L2 exit -> L1 -> L2 round trips per vCPU", lo=1),
    "warmup_round_trips": Int(200, "round trips before the measurement", lo=0),
    "l2_hot_pages": Int(16, "pages L2 touches between exits (exit-heavy): code, stack, data", lo=1),
    "l2_hot_accesses": Int(64, "L2's accesses between exits (exit-heavy), random lines of its hot pages", lo=1),
    "l1_handler_pages": Int(32, "pages L1's exit handler touches per exit", lo=1),
    "l1_handler_accesses": Int(128, "L1's accesses per exit, random lines of its handler pages", lo=1),
    "l2_ws_pages": Int(2048, "L2's working set in 4 KiB pages (memory-bound)", lo=1),
    "accesses_per_exit": Int(1024, "L2 accesses between exits (memory-bound)", lo=1),
    "vmcb12_tlb_control": Int(0, "the TLB_CONTROL L1 writes in vmcb12 at every VMRUN (0, 1, 3 or 7)", 0, 7),
    "nasids": Int(0x8000, "CPUID 0x8000000A EBX: ASIDs of the CPU (0x8000 on Rome..Turin, S. Christopherson)",
                  2, 0x8000),
    "min_asid": Int(1007, "first non-SEV ASID (max_sev_asid + 1; 1006 SEV ASIDs on Genoa/Turin, T. Lendacky)", 1),
    "hazards": Bool(True, "run the hazard phase after the measurement (the events the flushes exist for)"),
    "hazard_rfc": Bool(True, "also run the sequence of the RFC's open question (tlb-policies.md 7.3): a vCPU "
                             "loaded in L1 mode VMRUNs its L2 where another vCPU's L2 ran"),
    "hazard_forced_leave": Bool(True, "also force a vCPU out of nested (svm_leave_nested: nested state set, "
                                      "reset) while its L2 runs, and run L1 at once"),
    "mutate": Bool(False, "one row per named flush of each policy, that flush removed: is it caught?"),
    "mutate_round_trips": Int(200, "with mutate: measured round trips of the rows with a flush removed (they are "
                                   "there to be caught; the policies' own rows keep round_trips)", lo=1),
}
DEFAULT_STRATEGIES = list(STRATEGY_NAMES)

SUMMARY_COLUMNS = ["strategy", "mutation", "rep", "flushes_per_transition", "entries_dropped_per_transition",
                   "l1_tlb_hit", "l2_tlb_hit", "exits_per_s", "speedup", "violations", "verdict", "new_violations",
                   "caught_by", "benign"]
METRICS = ["flushes_per_transition", "l1_tlb_hit", "l2_tlb_hit", "exits_per_s", "speedup", "violations"]
PLOTS = [("flushes_per_transition", "flushes per nested transition"), ("exits_per_s", "simulated L2 exits per s"),
         ("l2_tlb_hit", "L2 TLB hit rate"), ("violations", "violations")]

LEGEND = {
    "strategy": "the policy: an SVM ASID scheme with its nested scheme, or VMX with nested VMX (sevsim list)",
    "mutation": "the flush site removed for this row (function:reason); empty: the policy as written",
    "rep": "repetition (seed = --seed + rep)",
    "seed": "the run's RNG seed",
    "flushes_per_transition": "flushes per nested transition in the measured phase: SVM, VMRUNs whose TLB_CONTROL "
                              "flushed (either VMCB); VMX, INVEPT/INVVPID executed for the vCPU",
    "entries_dropped_per_transition": "TLB entries dropped by those flushes per nested transition (both TLB levels; "
                                      "a nested translation is a combined and a guest-physical entry in each)",
    "l1_tlb_hit": "L1's TLB hit rate (L1 or L2 DTLB) over its accesses in the measured phase",
    "l2_tlb_hit": "L2's TLB hit rate over its accesses in the measured phase",
    "walk_cycles_per_access": "page-walk cycles per translated access in the measured phase",
    "exits_per_s": "simulated L2 exits per second of pCPU time in the measured phase (all vCPUs' exits over "
                   "the pCPU time they took); VMX runs on the preset's (AMD) costs, for reference",
    "speedup": "exits_per_s over svm_upstream's in the same configuration and repetition",
    "round_trips": "measured round trips (L2 exit, L1 handler, nested VMRUN) per vCPU",
    "stale_translation": "TLB hits that disagreed with the current tables",
    "foreign_vm_translation": "TLB hits on another VM's entries (L1 on L2's, one L2 on another's)",
    "violations": "every violation recorded (TLB and memory; a hit on another VM's stale entry counts as both "
                  "a foreign and a stale translation): 0 means SAFE",
    "verdict": "SAFE: no violation; UNSAFE otherwise",
    "caught_by": "the oracles that fired, by cause",
    "benign": "true where a test argues the removed flush is harmless in this scenario",
    "new_violations": "mutation rows: violations beyond the policy's own row (> 0: the removal is caught)",
    "first_violation": "the first violation recorded, with the step that ran",
    "notes": "why a row looks as it does",
}

#: flush sites whose removal this scenario argues harmless, per policy ("*": any), with the reason;
#: tests/test_tlb_policies.py runs each one and shows it clean, and shows the hazard elsewhere
#: where one exists
_UPSTREAM_COVERS = ("nsvm_upstream flushes the shared ASID at every nested transition, which covers it in this "
                    "scenario's sequences (the ASID wrap needs more ASIDs than one VM uses: shown in the tests)")
_NO_HV = "no Hyper-V PV flush hypercalls in this scenario (tlb-tagging exercises them)"
_F1 = ("F1: the other L2 has its own EPT12, hence its own EPT02 and EPTP, which tags its guest-physical and "
       "combined entries apart; the hazard needs the same EPT12 with another vpid12")
BENIGN: dict[tuple[str, str], str] = {
    ("*", "kvm_hv_vcpu_flush_tlb:drain"): _NO_HV,
    ("*", "kvm_hv_nested_transtion_tlb_flush:raise"): _NO_HV,
    ("*", "pre_svm_run:fallback_asid"): "the ASID pool never runs out here",
    ("*", "init_vmcb:flush_on_first_use"): "no VM is destroyed and no ASID reused here",
    ("*", "svm_flush_tlb_gva:invlpga"): "used only for INVLPGA with ASID 0 and Hyper-V drains, neither of which "
                                        "this scenario issues (upstream: covered by the transition flush)",
    ("svm_upstream", "nested_svm_transition_tlb_flush:mmu_sync(vmexit)"): "nothing of L1's is shadowed: no sync is "
                                                                          "needed on the way back to L1",
    ("*", "svm_leave_nested:transition_flush"): "with a separate L2 ASID, L2's entries cannot reach L1 after a "
                                                "forced leave (upstream's shared ASID lacks this flush: the forced-leave "
                                                "hazard catches svm_upstream)",
    ("svm_upstream", "new_asid:wrap_flush_all_asid"): _UPSTREAM_COVERS,
    ("svm_upstream", "svm_flush_tlb_gva:invlpga"): _UPSTREAM_COVERS,
    ("svm_upstream", "kvm_vcpu_flush_tlb_guest:flush_tlb_guest"): "upstream raises only TLB_FLUSH and "
                                                                  "TLB_FLUSH_CURRENT in this scenario",
    # nested VMX: the EPTP tags what the VPID does not (tlb-policies.md 8.2)
    ("vmx_upstream", "nested_vmx_transition_tlb_flush:vpid12_changed"): _F1,
    ("vmx_upstream", "kvm_vcpu_flush_tlb_guest:flush_tlb_guest"): _F1,
    ("vmx_upstream", "vmx_flush_tlb_guest:invvpid_single"): _F1,
    ("vmx_upstream", "nested_vmx_transition_tlb_flush:no_vpid12"): "vmcs12 always enables VPID here (F2 needs an "
                                                                   "L1 that runs L2 without VPID)",
    ("vmx_upstream", "vmx_flush_tlb_gva:invvpid_address"): "used by Hyper-V drains only here (L1's INVVPID goes "
                                                           "through handle_invvpid)",
    ("vmx_upstream", "nested_vmx_vmexit:service_local_flushes"): "no local flush is pending in L2 mode at a nested "
                                                                 "VM-exit in this scenario",
}


def benign_reason(strategy: str, site: str, policy=None) -> str | None:
    """Why removing `site` is harmless for `strategy` here, or None; with the run's policy, a claim
    that its conditions make false is withdrawn."""
    if site == "pre_svm_run:fallback_asid" and getattr(policy, "fallback_used", False):
        return None  # the pool ran out: VMs share the fallback ASID (B4)
    return BENIGN.get((strategy, site), BENIGN.get(("*", site)))


GVA = 0x4000_0000      # L1's handler and L2's hot pages: the same virtual addresses
GPA_L1 = 0x100_0000    # L1's own pages (guest-physical, L1)
GPA_L2 = 0x100_0000    # L2's pages (guest-physical, L2)
GPA_L1_FOR_L2 = 0x4000_0000  # where L1 keeps L2's memory (guest-physical, L1)
PAGE = 4096


def run(*, strategies, seed, reps, progress=None, **p) -> ResultTable:
    bad = [s for s in strategies if s not in POLICIES]
    if bad:
        raise ValueError(f"unknown strategy {bad[0]!r} for {NAME}; valid: {', '.join(POLICIES)}")
    title = (f"{NAME}: {p['workload']}, L1 VM with {p['vcpus']} vCPU(s) on {p['pcpus']} pCPU(s), "
             f"{p['round_trips']} round trips, on {p['preset']}")
    if p["mutate"]:
        cases = [(s, m) for s in strategies for m in ("",) + POLICIES[s].SITES]
    else:
        cases = [(s, "") for s in strategies]
    names = [f"{s}|{m}" for s, m in cases]

    def one(name, seed_, rep, **kw):
        s, m = name.split("|", 1)
        return run_one(s, m, seed_, rep, **kw)

    t = common.run_grid(title, one, strategies=names, seed=seed, reps=reps, progress=progress, scenario=NAME,
                        legend=LEGEND, shown=SUMMARY_COLUMNS, **p)
    base = {(r["rep"], r["mutation"]): r["exits_per_s"] for r in t.rows if r["strategy"] == "svm_upstream"}
    own = {(r["strategy"], r["rep"]): r["violations"] for r in t.rows if not r["mutation"]}
    for r in t.rows:
        b = base.get((r["rep"], ""))
        r["speedup"] = r["exits_per_s"] / b if b else None
        # a removed flush is caught when it adds violations to the policy's own row
        r["new_violations"] = (r["violations"] - own.get((r["strategy"], r["rep"]), 0)) if r["mutation"] else None
    for c in ("speedup", "new_violations"):
        if c not in t.columns:
            t.columns.append(c)
    return t


class World:
    """The host's tables for one L1 VM and its L2s, the vCPUs and the policy."""

    def __init__(self, host: Host, policy, *, vcpus: int, pages_l1: int, pages_l2: int, hpa_base: int):
        self.host, self.policy = host, policy
        self.hpa_next = hpa_base
        self.npt01 = host.create_table("nested")
        self.l1_gpa_hpa: dict[int, int] = {}
        self.vm = Vm(host, policy, vm_id=1, npt01=self.npt01)
        policy.vm_init(self.vm)
        self.pages_l1, self.pages_l2 = pages_l1, pages_l2
        for i in range(vcpus):
            self.add_vcpu(i)

    def hpa(self, n: int) -> np.ndarray:
        out = np.arange(self.hpa_next, self.hpa_next + n * PAGE, PAGE, dtype=np.uint64)
        self.hpa_next += n * PAGE
        if self.hpa_next > self.host.memory:
            raise ConfigError(f"parameter memory: the tables need more than the host's {self.host.memory} bytes")
        return out

    def npt01_map(self, gpa1: np.ndarray) -> None:
        new = [int(g) for g in gpa1 if int(g) not in self.l1_gpa_hpa]
        if new:
            h = self.hpa(len(new))
            self.host.map_many(self.npt01, np.array(new, np.uint64), h, "4K")
            self.l1_gpa_hpa.update(zip(new, (int(x) for x in h)))

    def npt01_of(self, gpa1: np.ndarray) -> np.ndarray:
        return np.array([self.l1_gpa_hpa[int(g)] for g in gpa1], dtype=np.uint64)

    def add_vcpu(self, i: int) -> Vcpu:
        h = self.host
        # L1's process on this vCPU: the handler pages, at its own guest-physical pages
        l1_gpt = h.create_table("guest")
        gva = GVA + np.arange(self.pages_l1, dtype=np.uint64) * np.uint64(PAGE)
        gpa1 = np.uint64(GPA_L1 + i * (self.pages_l1 + 64) * PAGE) + np.arange(self.pages_l1, dtype=np.uint64) * np.uint64(PAGE)
        h.map_many(l1_gpt, gva, gpa1, "4K")
        self.npt01_map(gpa1)
        v = Vcpu(self.vm, i, l1_cr3=l1_gpt, l2_vm=100 + i, hv=HvTlbFlush())
        self.vm.vcpus.append(v)
        self.policy.vcpu_create(v)
        self.l2_setup(v, i)
        return v

    def l2_setup(self, v: Vcpu, which: int) -> None:
        """Give vCPU v an L2 (its own L2 VM `which`): L2's table, NPT12 and KVM's shadow NPT02."""
        h = self.host
        n = self.pages_l2
        l2_gpt = h.create_table("guest")
        gva = GVA + np.arange(n, dtype=np.uint64) * np.uint64(PAGE)
        gpa2 = np.uint64(GPA_L2) + np.arange(n, dtype=np.uint64) * np.uint64(PAGE)
        h.map_many(l2_gpt, gva, gpa2, "4K")
        gpa1 = np.uint64(GPA_L1_FOR_L2 + which * (n + 64) * PAGE) + np.arange(n, dtype=np.uint64) * np.uint64(PAGE)
        self.npt01_map(gpa1)
        v.l2_cr3 = l2_gpt
        v.l2_vm = 100 + which
        v.arch["nested_mmu"] = NestedMmu(h, self.npt01_of, gpa2, gpa1, npt01=self.npt01)
        v.arch["l2_gpa1"] = gpa1


def run_one(strategy: str, mutation: str, seed: int, rep: int, *, preset, memory, workload, vcpus, pcpus,
            migrate_every, round_trips, warmup_round_trips, l2_hot_pages, l2_hot_accesses, l1_handler_pages,
            l1_handler_accesses, l2_ws_pages,
            accesses_per_exit, vmcb12_tlb_control, nasids, min_asid, hazards, hazard_rfc, hazard_forced_leave,
            mutate, mutate_round_trips):
    if vmcb12_tlb_control not in (0, 1, 3, 7):
        raise ConfigError(f"parameter vmcb12_tlb_control: {vmcb12_tlb_control} is not a TLB_CONTROL value "
                          "(0, 1, 3 or 7)")
    if min_asid >= nasids:
        raise ConfigError(f"parameter min_asid: {min_asid} must be below nasids = {nasids}")
    rng = np.random.default_rng(seed)
    if mutation:
        round_trips = min(round_trips, mutate_round_trips)
    host = Host.from_preset(preset, memory=memory)
    cores = [c for ccd in common.first_threads_by_ccd(host) for c in ccd]
    need = pcpus + (1 if migrate_every or hazards or hazard_rfc else 0)
    if need > len(cores):
        raise ConfigError(f"parameter pcpus: {pcpus} pCPUs (+1 to migrate to) do not fit on the {len(cores)} cores")
    cpus = cores[:pcpus]
    spare = cores[pcpus] if len(cores) > pcpus else None
    policy = POLICIES[strategy](host, mutations=[mutation] if mutation else [], nasids=nasids, min_asid=min_asid)
    vmx = policy.vendor == "vmx"
    memory_bound = workload == "memory-bound"
    pages_l2 = l2_ws_pages if memory_bound else l2_hot_pages
    if (hazards or hazard_rfc) and (pages_l2 < 4 or l1_handler_pages < 4):
        raise ConfigError(f"the hazard phase needs at least 4 pages for L1 and L2 (got l1_handler_pages = "
                          f"{l1_handler_pages}, L2 pages = {pages_l2}); or set hazards=false and hazard_rfc=false")
    world = World(host, policy, vcpus=vcpus, pages_l1=l1_handler_pages, pages_l2=pages_l2, hpa_base=64 << 20)
    steps = common.Steps(host)
    kc = host.kvm_cost
    def lines(pages: int, n: int) -> np.ndarray:
        """n random lines of the first `pages` pages at GVA; where n >= pages, every page at least once."""
        if n >= pages:
            idx = np.concatenate([np.arange(pages, dtype=np.uint64), rng.integers(0, pages, n - pages, dtype=np.uint64)])
        else:
            idx = rng.integers(0, pages, n, dtype=np.uint64)
        return GVA + idx * np.uint64(PAGE) + rng.integers(0, 64, len(idx), dtype=np.uint64) * np.uint64(64)

    where: dict[int, int | None] = {}
    last_on = {}
    vmcb12s = {v.index: Vmcb12(asid=v.index + 1, tlb_ctl=vmcb12_tlb_control) for v in world.vm.vcpus}
    # per-phase accounting of L1's and L2's translated accesses
    acc = {"l1": 0, "l2": 0}

    def l2_batch():
        return lines(pages_l2, accesses_per_exit if memory_bound else l2_hot_accesses)

    def load(v: Vcpu, cpu: int) -> None:
        """Schedule v on cpu: put whoever ran there, and v from wherever it was."""
        if where.get(v.index) == cpu and last_on.get(cpu) is v:
            return
        if where.get(v.index) is not None:
            policy.vcpu_put(v)
        prev = last_on.get(cpu)
        if prev is not None and prev is not v and where.get(prev.index) == cpu:
            policy.vcpu_put(prev)
            where[prev.index] = None
        policy.vcpu_load(v, cpu)
        where[v.index] = cpu
        last_on[cpu] = v

    def run_l2(v: Vcpu) -> None:
        assert v.guest_mode, "run_l2 of a vCPU in L1 mode"
        if policy.enter_guest(v) != "entered":
            raise RuntimeError(f"{strategy}: VMRUN of L2 failed")
        b = l2_batch()
        host.access_virtual(v.cpu, b, False)
        acc["l2"] += len(b)
        policy.exit_guest(v)
        host.spend(v.cpu, int(kc["exit_handling"]))
        policy.nested_vmexit(v)

    def run_l1(v: Vcpu, vmcb12: Vmcb12, edit=None) -> None:
        """L1 runs its exit handler, then (after `edit`, L1's own table edits) executes VMRUN."""
        assert not v.guest_mode, "run_l1 of a vCPU in L2 mode"
        if policy.enter_guest(v) != "entered":
            raise RuntimeError(f"{strategy}: VMRUN of L1 failed")
        b = lines(l1_handler_pages, l1_handler_accesses)
        host.access_virtual(v.cpu, b, False)
        acc["l1"] += len(b)
        host.spend(v.cpu, int(kc["l1_exit_handler"]))
        if edit is not None:
            r = edit()
            if isinstance(r, Vmcb12):
                vmcb12 = r  # the edit also asked for a flush in vmcb12
        policy.exit_guest(v)  # L1 executes VMRUN: intercepted
        host.spend(v.cpu, int(kc["exit_handling"]))
        if not policy.nested_vmrun(v, vmcb12):
            raise RuntimeError(f"{strategy}: nested VMRUN refused")

    def round_trip(v: Vcpu) -> None:
        run_l2(v)
        run_l1(v, vmcb12s[v.index])

    def schedule(r: int):
        for v in list(world.vm.vcpus)[:vcpus]:
            k = (v.index + (r // migrate_every if migrate_every else 0)) % len(cpus)
            load(v, cpus[k])
            round_trip(v)

    # start: every vCPU enters L1, which VMRUNs its L2
    steps.mark("setup")
    for v in world.vm.vcpus:
        load(v, cpus[v.index % len(cpus)])
        run_l1(v, vmcb12s[v.index])
    steps.mark("warm-up")
    for r in range(warmup_round_trips):
        schedule(r)

    # the measured phase
    steps.mark("measured round trips")
    vm_list = list(world.vm.vcpus)
    issued0 = policy.flush_count(vm_list)
    inv0 = _dropped(host)
    c0 = host.counters
    k0 = host.context_counters()
    clk0 = {c: host.cycles(c) for c in cpus}
    acc.update(l1=0, l2=0)
    for r in range(round_trips):
        schedule(warmup_round_trips + r)
    c1 = host.counters
    k1 = host.context_counters()
    clk1 = {c: host.cycles(c) for c in cpus}
    flushes = policy.flush_count(vm_list) - issued0
    dropped = _dropped(host) - inv0
    transitions = 2 * round_trips * len(vm_list)
    d = {k: int(c1[k].sum() - c0[k].sum()) for k in ("tlb_l1_hits", "tlb_l2_hits", "tlb_misses", "walk_cycles")}
    tlb_acc = d["tlb_l1_hits"] + d["tlb_l2_hits"] + d["tlb_misses"]
    hit = (d["tlb_l1_hits"] + d["tlb_l2_hits"]) / tlb_acc if tlb_acc else None
    # per vCPU: the L2 exits each vCPU made, over the pCPU time all of them took (an idle pCPU adds
    # nothing; vCPUs sharing a pCPU share its time)
    busy = sum(clk1[c] - clk0[c] for c in cpus)
    exits_per_s = round_trips * len(vm_list) / (busy / (host.freq_ghz * 1e9)) if busy else None

    if hazards:
        steps.mark("hazards")
        hazard_phase(host, world, policy, load, round_trip, run_l1, run_l2, vmcb12s, cpus, spare, steps)
    if hazard_forced_leave:
        steps.mark("hazard: forced leave from L2 (svm_leave_nested), then L1 runs")
        v0 = world.vm.vcpus[0]
        load(v0, cpus[0])
        if not v0.guest_mode:
            run_l1(v0, vmcb12s[v0.index])
        if policy.enter_guest(v0) != "entered":  # L2 fills its entries
            raise RuntimeError("VMRUN of L2 failed")
        host.access_virtual(v0.cpu, lines(pages_l2, pages_l2), False)
        policy.exit_guest(v0)  # an exit L0 handles itself, then userspace forces L1 out of nested
        policy.leave_nested(v0)
        run_l1(v0, vmcb12s[v0.index])  # L1 runs at once, on the same GVAs
    if hazard_rfc and spare is not None:
        hazard_rfc_7_3(host, world, policy, load, run_l1, run_l2, vmcb12s, cpus[0], spare, steps)

    safe = common.safety(host)
    records = common.violation_records(host, steps)
    causes = common.cause_counts(host)
    caught = ", ".join(f"{k[2:]}={v}" for k, v in causes.items() if v)
    l1_hit, l2_hit = _split_hits(host, policy, world, k0, k1)
    row = {
        "strategy": strategy,
        "mutation": mutation,
        "rep": rep,
        "seed": seed,
        "flushes_per_transition": flushes / transitions,
        "entries_dropped_per_transition": dropped / transitions,
        "tlb_hit": hit,
        "l1_tlb_hit": l1_hit,
        "l2_tlb_hit": l2_hit,
        "walk_cycles_per_access": d["walk_cycles"] / tlb_acc if tlb_acc else None,
        "exits_per_s": exits_per_s,
        "flush_sites": ", ".join(f"{k}={n}" for k, n in sorted(policy.sites.done.items())),
        **{k: safe[k] for k in ("corruption", "dma", "isolation", "rmp", "tlb", "latent", "violations")},
        **causes,
        "verdict": common.verdict(safe),
        "caught_by": caught,
        "benign": (benign_reason(strategy, mutation, policy) is not None) if mutation else None,
        "first_violation": common.first_violation(records, safe),
        "notes": (f"removal argued benign: {benign_reason(strategy, mutation, policy)}"
                  if mutation and benign_reason(strategy, mutation, policy) else
                  "the RFC's open question (tlb-policies.md 7.3) is caught: see first_violation"
                  if hazard_rfc and strategy == "svm_rfc" and safe["violations"] else
                  "upstream nSVM has no flush after a forced leave (fixed by RFC v2 01/25, Jun 2026): see "
                  "first_violation" if hazard_forced_leave and strategy == "svm_upstream" and safe["violations"]
                  else ""),
    }
    return row, records


def _pages(n: int) -> np.ndarray:
    """One access to each of the first n pages at GVA."""
    return GVA + np.arange(n, dtype=np.uint64) * np.uint64(PAGE)


def _dropped(host: Host) -> int:
    return sum(n for _, n in host.invalidation_stats().values())


def _split_hits(host: Host, policy, world: World, before: dict, after: dict):
    """L1's and L2's TLB hit rates over the measured phase, from the engine's per-context counters:
    L1's contexts are those of the L1 VM's id, L2's the others."""
    def rate(vm_pred):
        n_after = len(after["tlb_misses"])  # contexts made later (the hazard phase) are not measured
        idx = [c for k, c in policy.contexts.ctx.items() if vm_pred(k[4]) and c < n_after]
        if not idx:
            return None

        def tot(name):
            a = after[name]
            b = before[name]
            return int(sum(int(a[c]) - (int(b[c]) if c < len(b) else 0) for c in idx))

        hits = tot("tlb_l1_hits") + tot("tlb_l2_hits")
        n = hits + tot("tlb_misses")
        return hits / n if n else None

    return rate(lambda vm: vm == world.vm.vm_id), rate(lambda vm: vm != world.vm.vm_id)


def hazard_phase(host, world, policy, load, round_trip, run_l1, run_l2, vmcb12s, cpus, spare, steps):
    """The events each flush exists for, each followed by accesses that would use a stale entry."""
    vm = world.vm
    v0 = vm.vcpus[0]
    cpu0 = cpus[0]
    load(v0, cpu0)
    for _ in range(2):
        round_trip(v0)

    # 1. L0 moves one of L1's pages under L2 (and one of L1's own): NPT01 changes, KVM zaps the
    #    shadow entries through it and flushes remote TLBs (A3, B5, E4, E6)
    steps.mark("hazard: NPT01 remap + kvm_flush_remote_tlbs")
    mmu = v0.arch["nested_mmu"]
    for gpa1 in (int(v0.arch["l2_gpa1"][0]), next(iter(world.l1_gpa_hpa))):
        new = int(world.hpa(1)[0])
        host.unmap(world.npt01, gpa1)
        host.map(world.npt01, gpa1, new, "4K")
        world.l1_gpa_hpa[gpa1] = new
        mmu.l0_remapped(gpa1)
    kvm_flush_remote_tlbs(vm, cpu0)
    for _ in range(2):
        round_trip(v0)

    # 1b. the same while the vCPU is in L1 mode: the request flags both VMCBs at L1's entry, and
    #     vmcb02's flag must survive the nested VMRUN (E4, E6)
    steps.mark("hazard: NPT01 remap + kvm_flush_remote_tlbs in L1 mode")
    run_l2(v0)  # v0 in L1 mode
    gpa1 = int(v0.arch["l2_gpa1"][1])
    new = int(world.hpa(1)[0])
    host.unmap(world.npt01, gpa1)
    host.map(world.npt01, gpa1, new, "4K")
    world.l1_gpa_hpa[gpa1] = new
    mmu.l0_remapped(gpa1)
    kvm_flush_remote_tlbs(vm, cpu0)
    run_l1(v0, vmcb12s[v0.index])
    round_trip(v0)

    # 1c. a local flush raised for L1 (kvm_mmu_load() on a new root: flush_tlb_current) just before
    #     L1's VMRUN is intercepted, with one of L1's pages moved: it must be serviced for L1 (E5)
    steps.mark("hazard: FLUSH_CURRENT pending for L1 at a nested VMRUN")
    run_l2(v0)
    gpa1 = int(list(world.l1_gpa_hpa)[2])

    def move_l1_page():
        new = int(world.hpa(1)[0])
        host.unmap(world.npt01, gpa1)
        host.map(world.npt01, gpa1, new, "4K")
        world.l1_gpa_hpa[gpa1] = new
        kvm_make_request(v0, Req.TLB_FLUSH_CURRENT)

    run_l1(v0, vmcb12s[v0.index], edit=move_l1_page)
    round_trip(v0)

    # 1d. exits L0 handles itself, with no nested transition: a remote flush kicks the vCPU out of
    #     a running L2, which L0 re-enters at once (A3, B5 without upstream's transition flush);
    #     then a host interrupt moves the vCPU to another pCPU and back between two L2 runs, L2's
    #     guest remapping a GVA with INVLPG meanwhile (A2, B2, E8)
    steps.mark("hazard: L0-handled exits (remote-flush kick, migration) without a nested transition")
    run_l2(v0)
    run_l1(v0, vmcb12s[v0.index])  # v0 about to enter L2
    if policy.enter_guest(v0) != "entered":
        raise RuntimeError("VMRUN of L2 failed")
    host.access_virtual(v0.cpu, _pages(world.pages_l2), False)
    gpa1 = int(v0.arch["l2_gpa1"][3])
    new = int(world.hpa(1)[0])
    host.unmap(world.npt01, gpa1)
    host.map(world.npt01, gpa1, new, "4K")
    world.l1_gpa_hpa[gpa1] = new
    mmu.l0_remapped(gpa1)
    kvm_flush_remote_tlbs(vm, spare if spare is not None else cpu0)  # v0 is in guest mode: kicked
    policy.exit_guest(v0)
    if policy.enter_guest(v0) != "entered":  # L0 re-enters L2 directly
        raise RuntimeError("VMRUN of L2 failed")
    host.access_virtual(v0.cpu, _pages(world.pages_l2), False)
    policy.exit_guest(v0)  # a host interrupt
    if spare is not None:
        load(v0, spare)
        if policy.enter_guest(v0) != "entered":
            raise RuntimeError("VMRUN of L2 failed")
        gva4 = GVA + PAGE * (world.pages_l2 - 1)
        host.unmap(v0.l2_cr3, gva4)
        host.map(v0.l2_cr3, gva4, GPA_L2 + (world.pages_l2 - 2) * PAGE, "4K")
        host.invlpg(spare, gva4)
        policy.exit_guest(v0)
        load(v0, cpu0)
        if policy.enter_guest(v0) != "entered":
            raise RuntimeError("VMRUN of L2 failed")
        host.access_virtual(v0.cpu, _pages(world.pages_l2), False)
        policy.exit_guest(v0)
    policy.nested_vmexit(v0)  # now the exit is reflected: L1 mode
    run_l1(v0, vmcb12s[v0.index])
    round_trip(v0)

    # 2. L1 remaps a page of L2's table and INVLPGAs it with L2's ASID (E7)
    steps.mark("hazard: L1 INVLPGA after editing L2's page table")
    gva = GVA + PAGE
    spare_gpa2 = GPA_L2 + world.pages_l2 * PAGE  # a page of L2's that L1 maps in NPT12 here
    gpa1 = GPA_L1_FOR_L2 + 0x1000_0000
    world.npt01_map(np.array([gpa1], np.uint64))
    mmu.l1_writes_npt12(spare_gpa2, gpa1)
    mmu.sync()  # a new NPT12 entry: KVM shadows it at L2's first fault on it (no stale shadow involved)
    run_l2(v0)  # v0 is in L1 mode
    if policy.enter_guest(v0) != "entered":
        raise RuntimeError("VMRUN of L1 failed")
    host.unmap(v0.l2_cr3, gva)
    host.map(v0.l2_cr3, gva, spare_gpa2, "4K")  # L1 edits L2's page table
    policy.exit_guest(v0)  # INVLPGA is intercepted
    policy.l1_invalidate_gva(v0, gva, vmcb12s[v0.index].asid)
    policy.enter_guest(v0)
    policy.exit_guest(v0)  # VMRUN
    if not policy.nested_vmrun(v0, vmcb12s[v0.index]):
        raise RuntimeError("nested VMRUN refused")
    round_trip(v0)

    # 3. L1 edits NPT12 and runs L2 with TLB_CONTROL = 3 (E2)
    steps.mark("hazard: L1 edits NPT12, VMRUN with TLB_CONTROL=3")
    run_l2(v0)
    gpa1b = GPA_L1_FOR_L2 + 0x1000_0000 + PAGE
    world.npt01_map(np.array([gpa1b], np.uint64))
    def edit_npt12():
        mmu.l1_writes_npt12(GPA_L2, gpa1b)  # L2's first hot page moves in L1's memory
        return policy.l1_flushes_l2_mappings(v0, vmcb12s[v0.index])  # SVM: TLB_CONTROL=3; VMX: INVEPT

    run_l1(v0, vmcb12s[v0.index], edit=edit_npt12)
    round_trip(v0)

    # 4. L1 remaps one of its own pages and runs L2 with TLB_CONTROL = 1, relying on it (E3; SVM
    #    only: VMX has no TLB_CONTROL)
    if policy.vendor == "svm":
        steps.mark("hazard: L1 remaps its page, VMRUN with TLB_CONTROL=1")
        run_l2(v0)
        gpa1c = GPA_L1 + 0x0800_0000
        world.npt01_map(np.array([gpa1c], np.uint64))
        run_l1(v0, Vmcb12(asid=vmcb12s[v0.index].asid, tlb_ctl=TLB_CONTROL_FLUSH_ALL_ASID),
               edit=lambda: (host.unmap(v0.l1_cr3, GVA), host.map(v0.l1_cr3, GVA, gpa1c, "4K")))
        run_l2(v0)
        run_l1(v0, vmcb12s[v0.index])
        round_trip(v0)

    # 5. L1 switches to another L2 (another vmcb12 ASID, another L2 VM mapping the same GVAs) (E1)
    steps.mark("hazard: vmcb12 ASID change to another L2")
    run_l2(v0)
    saved = (v0.l2_cr3, v0.l2_vm, v0.arch["nested_mmu"], v0.arch["l2_gpa1"])
    world.l2_setup(v0, 50)
    run_l1(v0, Vmcb12(asid=vmcb12s[v0.index].asid + 50, tlb_ctl=TLB_CONTROL_DO_NOTHING))
    run_l2(v0)
    v0.l2_cr3, v0.l2_vm, v0.arch["nested_mmu"], v0.arch["l2_gpa1"] = saved
    run_l1(v0, vmcb12s[v0.index])
    round_trip(v0)

    # 6. migration: fill on p0, move to p1 where L2's guest remaps a GVA and INVLPGs it, back (B2, E8,
    #    A2); twice, so that the second time the ASID->vCPU records of both pCPUs already name v0
    if spare is not None:
        steps.mark("hazard: migration with a guest INVLPG elsewhere")
        for k in (2, 3):
            round_trip(v0)  # v0 is about to enter L2
            load(v0, spare)
            if policy.enter_guest(v0) != "entered":  # L2 on the other pCPU
                raise RuntimeError("VMRUN of L2 failed")
            gva2 = GVA + k * PAGE
            host.unmap(v0.l2_cr3, gva2)
            host.map(v0.l2_cr3, gva2, spare_gpa2, "4K")
            host.invlpg(spare, gva2)  # L2's own INVLPG: not intercepted with NPT
            host.access_virtual(spare, np.array([gva2], np.uint64), False)
            policy.exit_guest(v0)
            policy.nested_vmexit(v0)
            run_l1(v0, vmcb12s[v0.index])
            load(v0, cpu0)
            round_trip(v0)

    # 7. two vCPUs of the VM alternate in L1 mode on one pCPU; their L1 processes map the same GVAs
    #    to different pages (B1, A5)
    steps.mark("hazard: two vCPUs share a pCPU")
    v1 = vm.vcpus[1] if len(vm.vcpus) > 1 else world.add_vcpu(len(vm.vcpus))
    vmcb12s.setdefault(v1.index, Vmcb12(asid=v1.index + 1, tlb_ctl=vmcb12s[v0.index].tlb_ctl))
    run_l2(v0)  # v0 in L1 mode
    if v1.guest_mode and spare is not None:
        load(v1, spare)  # v1 comes back to L1 elsewhere: loaded on cpu0 in L1 mode (B1, not 7.3's hole)
        run_l2(v1)
    load(v1, cpu0)
    if v1.guest_mode:
        run_l2(v1)
    run_l1(v1, vmcb12s[v1.index])
    run_l2(v1)  # v1 back in L1 mode, its L1 and L2 entries on cpu0
    load(v0, cpu0)
    run_l1(v0, vmcb12s[v0.index])
    round_trip(v0)


def hazard_rfc_7_3(host, world, policy, load, run_l1, run_l2, vmcb12s, cpu0, other, steps):
    """tlb-policies.md 7.3, the RFC's open question: v1 is loaded on p in L2 mode and runs its L2;
    v0, loaded there in L1 mode (so the ASID->vCPU check of L1's ASID passes), VMRUNs its own L2,
    of another L2 VM, on the nested ASID that v1's L2 entries still tag. The same holds for L1's
    ASID: v1 leaves L2 on p and its L1 runs there, with the record of L1's ASID still naming v0."""
    steps.mark("hazard: RFC 7.3 (v1's L2 entries, v0 loaded in L1 mode)")
    vm = world.vm
    v0 = vm.vcpus[0]
    v1 = vm.vcpus[1] if len(vm.vcpus) > 1 else world.add_vcpu(1)
    vmcb12s.setdefault(v1.index, Vmcb12(asid=v1.index + 1, tlb_ctl=vmcb12s[v0.index].tlb_ctl))
    load(v0, cpu0)
    if v0.guest_mode:
        run_l2(v0)  # v0 in L1 mode; its vmcb02 last ran here
    run_l1(v0, vmcb12s[v0.index])
    run_l2(v0)
    load(v1, other)  # v1 enters L2 mode elsewhere
    if not v1.guest_mode:
        run_l1(v1, vmcb12s[v1.index])
    run_l2(v1)
    run_l1(v1, vmcb12s[v1.index])
    load(v1, cpu0)  # loaded on p in L2 mode: only the nested ASID is recorded
    run_l2(v1)
    run_l1(v1, vmcb12s[v1.index])  # and v1's L1 runs there too, on L1's ASID, which still names v0
    load(v0, cpu0)  # loaded in L1 mode: L1's ASID last held v0 here, so no flush
    run_l1(v0, vmcb12s[v0.index])  # v0's L1 meets v1's L1 entries (the same hole for L1's ASID)
    run_l2(v0)  # and v0's L2 meets v1's L2 entries (7.3)
