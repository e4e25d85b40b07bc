"""snp-pagein at the seed's scale (issue 13): the 4 x 256 GB configuration on the thread's
1.5 TiB host (epyc-9754-2s), per direct-map policy, each in a fresh process: wall time, peak RSS
(resource.getrusage ru_maxrss of the child) and the figures.

Run: OPENBLAS_NUM_THREADS=1 pytest -p no:cacheprovider benches/bench_snp_pagein.py -s -q
Targets (issue 13): <= 30 s wall and <= 2 GiB RSS per policy on this machine.
Also: `python benches/bench_snp_pagein.py CONFIG POLICY [ERA]` prints one run's JSON.
"""

import json
import subprocess
import sys

import pytest

PROBE = r"""
import json, resource, sys, time
from sevsim import scenarios
guests, mem, strategy, era = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
t = time.perf_counter()
tab = scenarios.run("snp-pagein", strategies=strategy, reps=1, seed=0, guests=guests, vcpus="128",
                    guest_memory=mem, era=era)
r = tab.rows[0]
out = {k: r[k] for k in ("config", "strategy", "pagein_gbps", "published", "band", "splits", "flushes", "rmp",
                         "slots_wait_ms", "cpa_wait_ms", "fallback_chunks", "neighbour_waits", "events", "sim_s",
                         "slots_hold_frac", "verdict")}
out["wall_s"] = time.perf_counter() - t
out["maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps(out))
"""


def probe(guests, mem, strategy, era="2024"):
    p = subprocess.run([sys.executable, "-c", PROBE, guests, mem, strategy, era], capture_output=True, text=True,
                       check=True)
    return json.loads(p.stdout)


@pytest.mark.parametrize("strategy", ["presplit", "on_demand"])
def test_four_guests_of_256_gb(strategy):
    r = probe("4", "256GB", strategy)
    print(f"\n4 x (128, 256 GB) {strategy}: {r['pagein_gbps']:.2f} GB/s (published {r['published']}, {r['band']}), "
          f"{r['splits']} splits, {r['events']:,} events, {r['sim_s']:.2f} s simulated; "
          f"{r['wall_s']:.1f} s wall, max RSS {r['maxrss'] / 2**20:.0f} MiB")
    assert r["verdict"] == "SAFE"
    assert r["maxrss"] < 2 << 30


@pytest.mark.parametrize("strategy", ["presplit", "on_demand"])
def test_one_guest_of_512_gib(strategy):
    r = probe("1", "512GiB", strategy)
    print(f"\n1 x (128, 512 GiB) {strategy}: {r['pagein_gbps']:.2f} GB/s (published {r['published']}, {r['band']}), "
          f"{r['splits']} splits, {r['events']:,} events; {r['wall_s']:.1f} s wall, "
          f"max RSS {r['maxrss'] / 2**20:.0f} MiB")
    assert r["verdict"] == "SAFE"


if __name__ == "__main__":
    conf = sys.argv[1] if len(sys.argv) > 1 else "4x256GB"
    g, mem = conf.split("x")
    print(json.dumps(probe(g, mem, sys.argv[2] if len(sys.argv) > 2 else "on_demand",
                           sys.argv[3] if len(sys.argv) > 3 else "2024")))
