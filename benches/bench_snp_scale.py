"""SNP at host scale (issue 13, engine part): what a pre-split 1.5 TiB direct map and 4 KiB RMP
entries for hundreds of GB cost in memory, and how fast the engine splits a whole direct map on
demand, IPI or INVLPGB flushes.

Run: OPENBLAS_NUM_THREADS=1 pytest benches/bench_snp_scale.py --benchmark-only -s
Targets (issue 13): a pre-split 1.5 TiB direct map and 4 KiB RMP entries for hundreds of GB in
megabytes; the engine calls of a 4 x 256 GB page-in fitting 30 s wall and 2 GiB RSS per policy.
"""

import json
import subprocess
import sys

import pytest

PROBE = r"""
import json, time, sys
import numpy as np
import sevsim
def rss():
    for l in open('/proc/self/status'):
        if l.startswith('VmRSS:'):
            return int(l.split()[1]) * 1024
what = sys.argv[1]
out = {}
h = sevsim.Host.from_preset('epyc-9755-2s', memory='1.5TiB')
h.snp_enable()
base = rss()
t = time.perf_counter()
if what == 'presplit':
    h.direct_map_presplit()
    out['presplit_s'] = time.perf_counter() - t
    # walk 100,000 random direct-map addresses through CPU 0's TLB (4 KiB leaves synthesised)
    rng = np.random.default_rng(1)
    pa = (rng.integers(0, (1536 << 30) >> 12, 100_000, dtype=np.uint64) << np.uint64(12))
    t = time.perf_counter()
    h.access_virtual(0, pa + np.uint64(h.PAGE_OFFSET))
    out['walk_100k_s'] = time.perf_counter() - t
    out['leaves_4k'] = h.direct_map_leaves['4K']
elif what.startswith('split-'):
    # on demand: set_memory_4k on every 2 MiB region of 1.5 TiB, 2 MiB at a time (786,432 splits,
    # plus 1,536 of 1 GiB leaves), in batches of 4096 regions
    flush = what[len('split-'):]
    regions = np.arange((1536 << 30) >> 21, dtype=np.uint64) << np.uint64(21)
    n = 0
    for i in range(0, len(regions), 4096):
        n += int(h.set_memory_4k_batch(i % 64, regions[i:i + 4096], flush=flush)[1].sum())
    out['splits'] = n
    out['split_s'] = time.perf_counter() - t
    out['sim_s'] = float(h.clocks.max()) / (h.freq_ghz * 1e9)
elif what == 'rmp4k':
    # 256 GiB of guest memory as 4 KiB RMP entries, consecutive GPAs per 2 MiB region (order-0
    # guest_memfd pages taken in order), then PVALIDATE of all of it
    total = 256 << 30
    chunk = np.arange(512, dtype=np.uint64) << np.uint64(12)
    base_pa = 1 << 30
    for r in range(total >> 21):
        pa = chunk + np.uint64(base_pa + (r << 21))
        gpa = chunk + np.uint64(r << 21)
        h.rmpupdate_batch(0, pa, gpa, assigned=True, asid=5)
        h.pvalidate_batch(1, 5, pa, gpa)
    out['rmp4k_s'] = time.perf_counter() - t
    out['rmp_bytes'] = h.rmp_bytes
out['rss'] = rss() - base
print(json.dumps(out))
"""


def probe(what):
    return json.loads(subprocess.run([sys.executable, "-c", PROBE, what], capture_output=True, text=True,
                                     check=True).stdout)


def test_presplit_1_5_tib_direct_map():
    r = probe("presplit")
    print(f"\npre-split 1.5 TiB direct map: {r['leaves_4k']:,} 4 KiB leaves in {r['presplit_s'] * 1e3:.2f} ms; "
          f"100,000 random direct-map walks {r['walk_100k_s'] * 1e3:.1f} ms; RSS +{r['rss'] / 2**20:.1f} MiB")
    assert r["leaves_4k"] == (1536 << 30) >> 12
    assert r["rss"] < 64 << 20


@pytest.mark.parametrize("flush", ["ipi", "invlpgb"])
def test_split_whole_direct_map_on_demand(flush):
    r = probe(f"split-{flush}")
    print(f"\non-demand split of all 1.5 TiB ({flush}): {r['splits']:,} splits in {r['split_s']:.2f} s wall, "
          f"{r['sim_s']:.2f} s simulated; RSS +{r['rss'] / 2**20:.1f} MiB")
    assert r["splits"] == 1536 + (1536 << 9)


def test_rmp_4k_entries_for_256_gib():
    r = probe("rmp4k")
    print(f"\n256 GiB as 4 KiB RMP entries + PVALIDATE: {r['rmp4k_s']:.2f} s wall; RMP {r['rmp_bytes'] / 2**20:.1f} MiB; "
          f"RSS +{r['rss'] / 2**20:.1f} MiB")
    assert r["rmp_bytes"] < 256 << 20
