"""sev-teardown's time series: the neighbours' hit rate window by window around the teardown, and
the per-CPU flush timeline of the teardown's steps."""

import json

import pytest

from sevsim import Host, scenarios

FAST = dict(scale="small", vm_memory="2MiB", neighbours=2, guest_accesses=2000)


def test_series_around_a_teardown():
    t = scenarios.run("sev-teardown", strategies=["wbinvd_all", "wbnoinvd_ran_cpus"], seed=1, reps=2, **FAST)
    assert [(s["strategy"], s["rep"], s["seed"]) for s in t.series] == [
        ("wbinvd_all", 0, 1), ("wbnoinvd_ran_cpus", 0, 1), ("wbinvd_all", 1, 2), ("wbnoinvd_ran_cpus", 1, 2)]
    cpus = Host.from_preset("epyc-9755-2s", memory="64GiB").cpu_count
    for s in t.series:
        row = t.where(strategy=s["strategy"], rep=s["rep"]).rows[0]
        # as many recovery windows as the row says, ending back at the steady rate
        assert len(s["nb_hit_after"]) == row["nb_recovery_windows"] >= 1
        assert abs(s["nb_hit_after"][-1] - s["nb_hit_steady"]) <= 0.011
        assert s["nb_hit_steady"] == round(row["nb_hit_before"], 5) and len(s["nb_hit_before"]) == 4
        # one entry per kernel step, every CPU that flushed, time on the initiator growing
        assert len(s["flush_steps"]) == len(s["flush_t_us"]) == len(s["flush_us"]) == 6
        assert s["flush_t_us"] == sorted(s["flush_t_us"]) and abs(s["flush_t_us"][-1] - row["teardown_us"]) < 0.01
        assert sum(map(sum, s["flush_us"])) <= row["teardown_cpu_us"] + 0.01
        assert all(len(step) == len(s["flush_cpus"]) for step in s["flush_us"])
    blast = t.where(strategy="wbinvd_all", rep=0).series[0]
    ran = t.where(strategy="wbnoinvd_ran_cpus", rep=0).series[0]
    # WBINVD everywhere flushes every CPU and costs the neighbours their caches; WBNOINVD on the
    # CPUs that ran the VMs flushes those (and the initiator) and leaves the neighbours alone
    assert len(blast["flush_cpus"]) == cpus and blast["nb_hit_after"][0] < blast["nb_hit_steady"] - 0.1
    assert len(ran["flush_cpus"]) == 2 * 4 + 1 and ran["nb_hit_after"][0] >= ran["nb_hit_steady"] - 0.011
    doc = json.loads(t.to_json())
    assert doc["series"] == t.series


def test_no_neighbours_no_hit_rate_series():
    t = scenarios.run("sev-teardown", strategies="wbinvd_all", neighbours=0,
                      **{k: v for k, v in FAST.items() if k != "neighbours"})
    s = json.loads(t.to_json(), parse_constant=lambda c: pytest.fail(f"JSON holds {c}"))["series"][0]
    assert s["nb_hit_before"] == [] and s["nb_hit_after"] == [] and s["nb_hit_steady"] is None
    assert len(s["flush_cpus"]) > 0
