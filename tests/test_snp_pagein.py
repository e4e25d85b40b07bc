"""snp-pagein: SNP guests paging in at host scale (seeds.md 5, snp-pagein.md).

The direct-map policies (a broken one must fault, the others must be clean), the on-demand
policy's split rule, the seed table's bands, the direction from one guest to four, determinism,
oversubscription, and the sim/ primitives. Guest memory is scaled down from the seed's (the rate
is set by a saturated per-VM serial section, so it does not depend on the guest's size once every
vCPU queues on it; benches/bench_snp_pagein.py runs the real sizes)."""

from __future__ import annotations

import numpy as np
import pytest

import sevsim
from sevsim import scenarios
from sevsim.kvm.snp_host import run_pagein
from sevsim.scenarios import snp_pagein
from sevsim.sim import Driver, Lock, place_threads

PRESET = "epyc-9754-2s"


def row(strategy, *, guests=1, vcpus=16, mem="1GiB", era="2024", assume="", seed=0):
    t = scenarios.run("snp-pagein", strategies=strategy, reps=1, seed=seed, guests=str(guests), vcpus=str(vcpus),
                      guest_memory=mem, era=era, assume=assume, preset=PRESET)
    assert len(t.rows) == 1
    return t.rows[0]


# ---- the policies ---------------------------------------------------------------------------

@pytest.mark.parametrize("era, assume", [("upstream", ""), ("2024", "thp_fail_half=0.5")])
def test_never_takes_rmp_faults_where_4k_private_pages_sit_under_large_mappings(era, assume):
    r = row("never", era=era, assume=assume)
    assert r["fallback_chunks"] > 0
    assert r["rmp"] > 0 and r["verdict"] == "UNSAFE"
    assert "RmpHostWriteLargeMapping" in r["first_violation"] or "large" in r["first_violation"].lower()


@pytest.mark.parametrize("era, assume", [("upstream", ""), ("2024", "thp_fail_half=0.5"), ("2024", "")])
@pytest.mark.parametrize("strategy", ["presplit", "on_demand"])
def test_presplit_and_on_demand_are_clean(strategy, era, assume):
    r = row(strategy, era=era, assume=assume)
    assert r["rmp"] == 0 and r["violations"] == 0 and r["verdict"] == "SAFE"


def test_on_demand_splits_only_for_4k_rmp_entries():
    # 2 MiB folios only (a fresh host, the 2024 era): adjust_direct_map() returns at once
    h = sevsim.Host.from_preset(PRESET)
    r = run_pagein(h, era="2024", policy="on_demand", vm_vcpus=[16], vm_memory=[1 << 30], seed=0)
    assert r["counters"]["fallback_chunks"] == 0 and r["huge_fraction"] == 1.0
    assert r["counters"]["splits"] == 0 and r["dm_leaves"]["4K"] == 0
    # order-0 chunks: splits, at most one 2M split per host 2 MiB region holding them (plus the
    # 1 GiB splits above them), never undone, never repeated
    h = sevsim.Host.from_preset(PRESET)
    r = run_pagein(h, era="upstream", policy="on_demand", vm_vcpus=[16], vm_memory=[1 << 30], seed=0)
    c = r["counters"]
    assert c["fallback_chunks"] == 512 and c["splits"] > 0
    split_2m = r["dm_leaves"]["4K"] // 512
    assert split_2m <= c["order0_regions"]
    n_1g = c["splits"] - split_2m
    assert 0 < n_1g <= split_2m
    # INVLPGB era: no IPI broadcast per split
    assert c["flushes"] == 0


def test_ipi_flushes_one_per_split_in_the_2024_era():
    r = row("on_demand", assume="thp_fail_half=0.5")
    assert r["splits"] > 0 and r["flushes"] == r["splits"]
    assert r["cpa_wait_ms"] >= 0


def test_presplit_pays_the_direct_map_tax_and_on_demand_does_not_split_2m_folios():
    a, b = row("presplit", vcpus=64, mem="8GiB"), row("on_demand", vcpus=64, mem="8GiB")
    assert a["splits"] == 0 and b["splits"] == 0
    assert a["pagein_gbps"] < b["pagein_gbps"]


def test_the_1g_mixed_walk_follows_how_much_of_the_gib_is_private():
    """hugepage_has_attrs() at 1 GiB walks from the GiB's start to its first 2 MiB page that is not
    private (arch/x86/kvm/mmu/mmu.c): the steps depend on the acceptance so far, not on the range."""
    from sevsim.kvm.kvm_main import hugepage_1g_steps
    priv = np.zeros(2048, dtype=bool)
    priv[600:604] = True
    assert hugepage_1g_steps(priv, 600, 4) == 1          # the GiB's first page is still shared
    priv[512:600] = True
    assert hugepage_1g_steps(priv, 600, 4) == 93         # 92 private pages from the start, then a shared one
    priv[1020:1026] = True
    priv[1024:1030] = True
    assert hugepage_1g_steps(priv, 1022, 3) == 93 + 7    # a range crossing into the next GiB: both walked
    priv[0:512] = True
    assert hugepage_1g_steps(priv, 0, 2) == 512          # a whole private GiB: every page walked
    assert hugepage_1g_steps(priv[:700], 600, 4) == 0    # a GiB the memslot does not cover whole: none
    # deferred init's chunks decide how long the walks are: 8 GiB over 2 vCPUs is handed out in
    # 1 GiB chunks (size / (4 x 2)), each accepted in order, so a GiB fills from its start and a
    # call walks about half of it; over 16 vCPUs the chunks are 128 MiB (a section), eight per GiB
    # filling at once, so the private prefix a walk crosses stays within the first chunk
    def steps_per_call(vcpus):
        c = run_pagein(sevsim.Host.from_preset(PRESET, memory="64GiB"), era="2024", policy="presplit",
                       vm_vcpus=[vcpus], vm_memory=[8 << 30], seed=0)["counters"]
        return c["attr_1g_steps"] / c["psc"]

    whole, sections = steps_per_call(2), steps_per_call(16)
    assert 128 < whole < 384
    assert 1 <= sections <= 64 < whole


def test_ram_private_from_the_start_makes_the_attribute_update_a_no_op():
    """Today's QEMU makes guest_memfd RAM private at start (bd3bcf6962b6): the acceptance's PSC to
    private finds the attributes set, KVM returns early, slots_lock is nearly idle; the thread's
    era (shared at start) converts every range under a saturated slots_lock."""
    up = run_pagein(sevsim.Host.from_preset(PRESET, memory="64GiB"), era="upstream", policy="on_demand",
                    vm_vcpus=[64], vm_memory=[1 << 30], seed=0)
    old = run_pagein(sevsim.Host.from_preset(PRESET, memory="64GiB"), era="2024", policy="on_demand",
                     vm_vcpus=[64], vm_memory=[1 << 30], seed=0)
    assert up["counters"]["attr_noop_calls"] == up["counters"]["psc"] > 0 and up["counters"]["attr_gfns"] == 0
    assert old["counters"]["attr_noop_calls"] == 0 and old["counters"]["attr_gfns"] == (1 << 30) // 4096
    hold = lambda r: r["locks"]["slots_lock"]["hold_us"] / (r["sim_seconds"] * 1e6)
    assert hold(up) < 0.05 < 0.9 < hold(old)


def test_a_fault_retries_only_if_an_invalidation_ended_while_it_ran():
    """is_page_fault_stale(): retry if mmu_invalidate_seq moved between the fault's start and its
    check. One vCPU alone never meets another's invalidation; with 128 some faults do, not all
    (it used to retry whenever any invalidation computed so far ended later, i.e. nearly always)."""
    one = run_pagein(sevsim.Host.from_preset(PRESET, memory="64GiB"), era="2024", policy="presplit",
                     vm_vcpus=[1], vm_memory=[256 << 20], seed=0)["counters"]
    many = run_pagein(sevsim.Host.from_preset(PRESET, memory="64GiB"), era="2024", policy="presplit",
                      vm_vcpus=[128], vm_memory=[2 << 30], seed=0)["counters"]
    assert one["npf_retries"] == 0 and one["huge_chunks"] == 128
    assert 0 < many["npf_retries"] < many["huge_chunks"]


# ---- the seed table -------------------------------------------------------------------------

def _published_run(guests, mem_real, mem_test, strategy):
    t = scenarios.run("snp-pagein", strategies=strategy, reps=1, seed=0, guests=str(guests), vcpus="128",
                      guest_memory=mem_test, preset=PRESET)
    return t.rows[0]["pagein_gbps"], snp_pagein.PUBLISHED[(guests, 128, sevsim.config.parse_size(mem_real))][strategy]


BAND_MISS = ("the model's per-VM serial section (KVM_SET_MEMORY_ATTRIBUTES at 177 ns/gfn from Merwick's trace, "
             "plus its 1 GiB mixed walk and its sourced or assumed extras, ~200-230 us per 4 MiB) is short of what the "
             "published rates need (~270-300 us): one guest's rows come out about 1.15x above their bands, four "
             "guests' 1.25x (pre-split) and 1.7x (on demand, which needs order-9 fallbacks nothing quantifies); "
             "landing one guest's on-demand row would need attr_per_gfn at 209 ns or an assumed in-section cost at "
             ">= 14x its estimate (benches/pagein_sensitivity.py; README, snp-pagein)")


@pytest.mark.xfail(strict=True, reason=BAND_MISS)
@pytest.mark.parametrize("guests, mem_real, mem_test", [(1, "512GiB", "32GiB"), (4, "256GB", "16GiB")])
@pytest.mark.parametrize("strategy", ["presplit", "on_demand"])
def test_published_configurations_land_in_their_bands(guests, mem_real, mem_test, strategy):
    rate, pub = _published_run(guests, mem_real, mem_test, strategy)
    assert min(pub) <= rate <= max(pub), (rate, pub)


def test_four_guests_give_between_2_2_and_2_7_times_one_not_4():
    one, _ = _published_run(1, "512GiB", "16GiB", "presplit")
    four, _ = _published_run(4, "256GB", "8GiB", "presplit")
    ratio = four / one
    # published: 33.42 / 13.67 = 2.44 (pre-split); SMT pairing, no idle CPU, DRAM latency
    assert 2.2 <= ratio <= 2.7, ratio


def test_default_run_is_the_seed_table():
    p = scenarios.defaults(snp_pagein, {})
    confs = snp_pagein.configurations(p["guests"], p["vcpus"], p["guest_memory"])
    assert [(g, v, m) for g, v, m, _ in confs] == list(snp_pagein.PUBLISHED)
    assert snp_pagein.DEFAULT_STRATEGIES == ["presplit", "on_demand"] and snp_pagein.DEFAULT_REPS == 3


# ---- determinism, odd configurations, bad input ---------------------------------------------

def test_deterministic_and_seed_dependent():
    # every column, none dropped: the rows carry no wall-clock figure (a fuzzing helper found the JSON
    # of two identical runs differing by the wall_s column it had; benches/ time the runs instead)
    a = row("on_demand", assume="thp_fail_half=0.2", seed=3)
    b = row("on_demand", assume="thp_fail_half=0.2", seed=3)
    c = row("on_demand", assume="thp_fail_half=0.2", seed=4)
    assert a == b
    assert a != c


def test_more_vcpus_than_cpus_runs_time_sliced():
    r = row("on_demand", guests=2, vcpus=400, mem="2GiB")
    assert r["verdict"] == "SAFE" and r["pagein_gbps"] > 0
    assert "time-sliced" in r["notes"]


@pytest.mark.parametrize("params, pattern", [
    ({"guests": "0"}, "guests"), ({"vcpus": "x"}, "vcpus"), ({"guest_memory": "1MiB"}, "guest_memory"),
    ({"era": "1999"}, "era"), ({"assume": "smt_pair_yield"}, "assume"), ({"assume": "nope=1"}, "nope"),
    ({"guests": "1,4", "vcpus": "1,2,3"}, "2 values, but another list has 3"),
])
def test_bad_parameters_are_named(params, pattern):
    with pytest.raises(ValueError, match=pattern):
        scenarios.run("snp-pagein", strategies="presplit", reps=1, **params)


def test_guests_that_do_not_fit_are_refused():
    with pytest.raises(ValueError, match="do not fit"):
        row("presplit", guests=4, mem="400GiB")


# ---- sim/ -----------------------------------------------------------------------------------

def test_rw_lock_is_writer_fair_and_readers_share():
    lk = Lock("mmu_lock", "rw")
    assert lk.read_for(0, 10) == (0, 10)
    assert lk.read_for(5, 10) == (5, 15)          # readers overlap
    s, e = lk.hold_for(6, 4)                      # a writer waits for both readers admitted before it
    assert (s, e) == (15, 19)
    assert lk.read_for(7, 1) == (19, 20)          # a reader after a waiting writer waits for it
    assert lk.read_for(30, 1) == (30, 31)
    st = lk.stats(1.0)
    assert st["acquisitions"] == 5 and st["contended"] == 2


def test_mutex_is_fifo_and_counts_waits():
    lk = Lock("slots_lock")
    assert lk.hold_for(0, 10) == (0, 10)
    assert lk.hold_for(3, 10) == (10, 20)
    assert lk.hold_for(25, 1) == (25, 26)
    assert lk.contended == 1 and lk.wait == 7 and lk.hold == 21
    with pytest.raises(ValueError, match="mutex"):
        lk.read_for(0, 1)
    with pytest.raises(ValueError, match="kind"):
        Lock("x", "spin")


def test_forgetting_the_past_changes_no_grant():
    """Lock.forget_before(now) drops only history no request at or after `now` can meet: random
    requests issued in a driver-like order (each at or after the present, some computed ahead of
    it as nested sections are) get the same grants with and without it."""
    rng = np.random.default_rng(7)
    for kind in ("mutex", "rw"):
        a, b = Lock("a", kind), Lock("b", kind)
        now = 0.0
        for i in range(4000):
            now += float(rng.exponential(3.0))
            t = now + (float(rng.exponential(40.0)) if rng.random() < 0.3 else 0.0)
            hold = float(rng.exponential(2.0))   # the lock busy about 2/3 of the time
            if kind == "rw" and rng.random() < 0.6:
                assert a.read_for(t, hold) == b.read_for(t, hold)
            else:
                assert a.hold_for(t, hold) == b.hold_for(t, hold)
            if i % 16 == 0:
                b.forget_before(now)
        assert a.wait == b.wait and a.read_wait == b.read_wait and a.contended == b.contended
        assert len(b.ex_ask) < len(a.ex_ask) / 10 and b.forced_drops == 0


def test_the_lock_history_is_trimmed_by_time_not_by_the_safety_bound():
    """At the seed's scale the driver's forget_before() keeps every lock's history short: the
    KEEP bound, which would drop sections a present request could still meet, never acts."""
    r = run_pagein(sevsim.Host.from_preset(PRESET, memory="64GiB"), era="2024", policy="presplit",
                   vm_vcpus=[128, 128], vm_memory=[8 << 30, 8 << 30], seed=0)
    assert r["lock_history_drops"] == 0 and r["locks"]["slots_lock"]["wait_us"] > 0


def test_driver_runs_the_smallest_clock_first_and_wakes_blocked_threads():
    seen = []  # (driver time at each resume, thread)
    d = Driver()

    def th(name, times):
        for t in times:
            seen.append((d.now, name))
            yield t
        seen.append((d.now, name + " ends"))

    def sleeper():
        seen.append((d.now, "s"))
        yield None
        seen.append((d.now, "s woken"))

    def waker():
        yield 7.0
        d.wake(2, 7.0)

    d.spawn(0, th("a", [5.0, 9.0]))
    d.spawn(1, th("b", [1.0, 6.0]))
    d.spawn(2, sleeper())
    d.spawn(3, waker())
    d.run()
    assert [t for t, _ in seen] == sorted(t for t, _ in seen)           # resumed in time order
    assert seen == [(0, "a"), (0, "b"), (0, "s"), (1.0, "b"), (5.0, "a"), (6.0, "b ends"),
                    (7.0, "s woken"), (9.0, "a ends")]                  # ties by spawn order
    d2 = Driver()
    d2.spawn(0, (x for x in [None]))
    with pytest.raises(RuntimeError, match="blocked forever"):
        d2.run()
    d3 = Driver()
    d3.spawn(0, (x for x in [5.0, 1.0]))
    with pytest.raises(RuntimeError, match="back in time"):
        d3.run()


def test_placement_idle_cores_first_then_siblings_then_time_slicing():
    cpu_core = np.array([c % 4 for c in range(8)])  # 4 cores x 2 threads: CPU c on core c % 4
    core_socket = np.array([0, 0, 1, 1])
    p = place_threads(4, cpu_core, core_socket, smt_pair_yield=1.3, background=0.05)
    assert sorted(int(cpu_core[c]) for c in p.cpu) == [0, 1, 2, 3]   # one per core
    assert np.all(p.slow == 1.0)
    p = place_threads(8, cpu_core, core_socket, smt_pair_yield=1.3, background=0.05)
    assert len(p.idle_cpus) == 0
    assert np.allclose(p.slow, 2 / 1.3 / 0.95)
    p = place_threads(16, cpu_core, core_socket, smt_pair_yield=1.3, background=0.05)
    assert np.allclose(p.slow, 2 * 2 / 1.3 / 0.95)


def test_fallback_chunks_are_parallel_work_the_serial_section_still_bounds():
    # order-0 fallbacks cost their vCPU 511 extra #NPFs and clears, not the VM's serial section:
    # with every vCPU queued on slots_lock the rate stays (engine clears issued in time order)
    a = row("presplit", guests=4, vcpus=128, mem="4GiB")
    b = row("presplit", guests=4, vcpus=128, mem="4GiB", assume="thp_fail_half=0.3")
    assert b["fallback_chunks"] > 0
    assert b["pagein_gbps"] > 0.9 * a["pagein_gbps"], (a["pagein_gbps"], b["pagein_gbps"])
    # and slots_lock stays a mutex: its sections never overlap (held at most all the time)
    c = row("on_demand", guests=4, vcpus=128, mem="4GiB", assume="thp_fail_half=0.3")
    assert c["splits"] > 0
    for r in (a, b, c):
        assert r["slots_hold_frac"] <= 1.0 + 1e-9, r["slots_hold_frac"]


def test_folio_memory_fragmentation_model():
    from sevsim.kvm.sev import FolioMemory

    rng = np.random.default_rng(0)
    fm = FolioMemory(64 << 30, 2, rng, mixed_fraction=0.1, fail_half=0.0)
    # a fresh node: every order-9 request succeeds, lowest free block first, 2 MiB aligned
    pas = [fm.alloc_huge(0) for _ in range(100)]
    assert all(p is not None and p % (2 << 20) == 0 for p in pas) and pas == sorted(pas)
    # order-0 pages come from the mixed blocks first, scattered over several 2 MiB regions
    o0 = fm.alloc_order0(0, 512)
    assert len(o0) == 512 and len(np.unique(o0 >> np.uint64(21))) >= 2
    assert not set((o0 >> np.uint64(21)).tolist()) & {p >> 21 for p in pas}
    # p(u) = fail_half * u / (1 - u): certain failure once u >= 1/2 with fail_half = 1
    fm2 = FolioMemory(8 << 30, 1, np.random.default_rng(1), fail_half=1.0)
    while fm2.utilisation(0) < 0.5:
        fm2.alloc_order0(0, 512)
    assert all(fm2.alloc_huge(0) is None for _ in range(20))
    # deterministic with the seed
    a = FolioMemory(64 << 30, 2, np.random.default_rng(5), mixed_fraction=0.1, fail_half=0.3)
    b = FolioMemory(64 << 30, 2, np.random.default_rng(5), mixed_fraction=0.1, fail_half=0.3)
    assert [a.alloc_huge(0) for _ in range(50)] == [b.alloc_huge(0) for _ in range(50)]


def test_upstream_era_four_guests_scale_like_parallel_work():
    # order-0 guest_memfd: 511 #NPFs, clears and RMPUPDATEs per 2 MiB on each vCPU; four guests
    # get four times the vCPUs at SMT speed, not a serialised clear (a regression: engine clears
    # of long page lists issued ahead of time serialised every thread's clears)
    one = row("on_demand", guests=1, vcpus=128, mem="2GiB", era="upstream")
    four = row("on_demand", guests=4, vcpus=128, mem="2GiB", era="upstream")
    assert four["splits"] > 0 and four["flushes"] == 0
    assert 2.0 <= four["pagein_gbps"] / one["pagein_gbps"] <= 4.0, (one["pagein_gbps"], four["pagein_gbps"])


def test_the_page_in_reads_tlb_and_snp_costs_with_the_overrides():
    """The page-in read [tlb]/[snp] from the built-in profile, so overrides never reached it; it
    now reads the host's own configuration (Host.tlb_cost / Host.snp_cost)."""
    from sevsim.kvm.snp_host import preset_section
    h = sevsim.Host.from_preset("epyc-9754-2s", memory="64GiB",
                                overrides={"snp": {"npf_exit": 12345}, "tlb": {"world_switch": 777}})
    assert preset_section(h, "snp")["npf_exit"] == 12345 and h.snp_cost["npf_exit"] == 12345
    assert preset_section(h, "tlb")["world_switch"] == 777 and h.tlb_cost["smt_tagged"] in (True, False)


def test_faults_wait_for_the_attribute_updates_mmu_lock_writers():
    """The fault path's mmu_lock read sections meet the attribute ioctl's write sections now and
    then (mmu_wait_ms > 0). It was exactly 0: the saturated slots_lock computes each ioctl far
    ahead of the driver's clock, and the lock's history of writers (48 kept) held only those
    future sections, so no fault at the present ever found one."""
    from sevsim import scenarios
    # (with one pre-split guest the saturated section runs phase-locked, each fault's read between
    # the next holder's two write sections, and the waits are exactly 0 again: a fact of the model's
    # deterministic costs, not of the lock; these configurations break the phase)
    for guests, mem, policy in (("4", "2GiB", "presplit"), ("1", "8GiB", "on_demand")):
        r = scenarios.run("snp-pagein", strategies=policy, reps=1, guests=guests, vcpus="128", guest_memory=mem)
        (row,) = r.rows
        assert row["mmu_wait_ms"] > 0 and row["slots_wait_ms"] > 1000 * row["mmu_wait_ms"]


def test_unaccepted_list_is_built_in_section_aligned_chunks():
    """Deferred init hands padata chunks of size / (4 x threads) rounded up to a 128 MiB memory
    section (kernel/padata.c padata_do_multithreaded(), align = min_chunk = PAGES_PER_SECTION in
    mm/mm_init.c): a 256 GB guest with 128 vCPUs gets 512 MiB chunks, each appended in ascending
    order. Within every 512 MiB-aligned group the list order must ascend (with unrounded 476 MiB
    chunks, groups straddle two threads' runs and it does not), and some group must not ascend
    for 1 GiB groups (the chunks are not larger)."""
    from sevsim.kvm.guest_accept import BLOCK, unaccepted_order

    nblocks = -(-256_000_000_000 // BLOCK)
    order = unaccepted_order(nblocks, 128, np.random.default_rng(1))
    assert sorted(order.tolist()) == list(range(nblocks))
    pos = np.empty(nblocks, dtype=np.int64)
    pos[order] = np.arange(nblocks)

    def ascending_within(group_blocks):
        g = np.arange(nblocks) // group_blocks
        same = g[1:] == g[:-1]
        return bool(np.all(pos[1:][same] > pos[:-1][same]))

    assert ascending_within((512 << 20) // BLOCK)
    assert not ascending_within((1 << 30) // BLOCK)


def test_assume_cannot_set_the_memory_latency():
    """The 1 GiB walk's DRAM miss is the engine preset's latency.memory, not a page-in parameter:
    `assume` must refuse it (an override would be silently ignored by PageinCosts.from_host)."""
    from sevsim.kvm.sev import ConfigError
    from sevsim.kvm.snp_host import PageinCosts

    assert "mem_latency" not in PageinCosts.assumable() and "attr_1g_scan_step" in PageinCosts.assumable()
    h = sevsim.Host.from_preset(PRESET, memory="1GiB")
    for key in ("mem_latency", "mem_latency_ns"):
        with pytest.raises(ConfigError, match="not a page-in parameter"):
            PageinCosts.from_host(h, {key: 1.0})
    assert PageinCosts.from_host(h).mem_latency == h.cost["latency_memory"] > 0


def test_assume_takes_times_in_ns_only():
    """A time in the profile (NAME_ns) is overridden in ns; the bare name was read as cycles
    (assume=attr_per_gfn=216 gave 2.25x the rate meant): it is refused, naming the ns form.
    Dimensionless names (thp_fail_half) stay bare."""
    from sevsim.kvm.sev import ConfigError
    from sevsim.kvm.snp_host import PageinCosts

    h = sevsim.Host.from_preset(PRESET, memory="1GiB")
    with pytest.raises(ConfigError, match="attr_per_gfn_ns=VALUE"):
        PageinCosts.from_host(h, {"attr_per_gfn": 216.0})
    c = PageinCosts.from_host(h, {"attr_per_gfn_ns": 216.0, "thp_fail_half": 0.25})
    assert c.attr_per_gfn == pytest.approx(216.0 * h.freq_ghz) and c.thp_fail_half == 0.25


def test_the_serial_section_pays_the_sockets_dram_load():
    """The attribute update's memory-bound share (attr_memory_bound) is inflated by the socket's
    loaded-latency factor beta, read at the request's time. With the guests' clears loading DRAM
    hard (guest_clear_bytes 40), a section with a memory-bound share must run slower than one
    without; with no guest traffic the two must be nearly equal. (Beta read at the far-ahead grant
    time was always 1: then the heavy case came out equal too.)"""
    def rate(mb, gcb):
        return run_pagein(sevsim.Host.from_preset(PRESET, memory="64GiB"), era="2024", policy="on_demand",
                          vm_vcpus=[128], vm_memory=[8 << 30], seed=0,
                          overrides={"attr_memory_bound": mb, "guest_clear_bytes": gcb})["pagein_gbps"]

    light = rate(0.3, 0.0) / rate(0.0, 0.0)
    heavy = rate(0.3, 40.0) / rate(0.0, 40.0)
    assert 0.98 < light <= 1.0
    assert heavy < 0.9


def test_a_saturated_section_sets_the_rate():
    """With kvm->slots_lock held all the time (slots_hold_frac 1), each guest converts one range
    per section: its rate is the bytes a page-state change converts over section_us, the hold per
    change. (A rate that did not follow from the serial section, or a section column that double
    counted, would break the identity.)"""
    r = row("on_demand", guests=2, vcpus=64, mem="2GiB")
    assert r["slots_hold_frac"] > 0.97
    bytes_per_psc = 2 * (2 << 30) / r["psc"]                 # every byte of both guests, converted once
    # bytes / psc over (hold / psc), times the held share: bytes over the run (the columns agree;
    # a section counted twice or a rate from elsewhere would not)
    per_guest_gbps = bytes_per_psc / (r["section_us"] * 1e3) * r["slots_hold_frac"]
    assert per_guest_gbps * 2 == pytest.approx(r["pagein_gbps"], rel=0.01)
    assert r["walk_steps"] >= 1


def test_time_marks_answer_in_time_order_whatever_the_order_they_came_in():
    from sevsim.sim import TimeMarks

    m = TimeMarks()
    for e in (50.0, 10.0, 30.0, 30.0, 70.0):
        m.add(e)
    assert m.t == [10.0, 30.0, 30.0, 50.0, 70.0]
    assert m.moved(10.0, 30.0) and not m.moved(30.0, 49.9) and m.moved(49.9, 50.0) and not m.moved(70.0, 1e9)
    m.forget_before(55.0)
    assert m.t == [50.0, 70.0]          # the last moment before the present stays
    assert m.moved(55.0, 70.0) and not m.moved(55.0, 69.0)
