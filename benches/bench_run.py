"""`sevsim run` with the real-footprint defaults (issue 14): wall time and peak RSS of the whole
command in a fresh process, as a user runs it.

Run: OPENBLAS_NUM_THREADS=1 pytest benches/bench_run.py --benchmark-only -s --benchmark-columns=min,median,rounds -p no:cacheprovider
Targets: `sevsim run` (sev-teardown, all seven strategies, 2 x 64 GiB VMs on the 1.5 TiB preset)
under 30 s wall and under 2 GiB peak RSS on the 2-core build machine. The same figures by hand:
`/usr/bin/time -v sevsim run -q` (Elapsed, Maximum resident set size).
"""

import resource
import subprocess
import sys
import time

import pytest

FIGURES: dict[str, dict] = {}


def run_cli(*args):
    """Run the CLI in a fresh process; (wall seconds, peak RSS bytes of the largest child)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "sevsim.cli", "run", *args, "-q"], capture_output=True, text=True)
    wall = time.perf_counter() - t
    assert out.returncode == 0, out.stderr
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB, the largest child so far
    return wall, peak * 1024, before * 1024, out.stdout


@pytest.mark.benchmark(group="sevsim-run")
@pytest.mark.parametrize("scenario", ["sev-teardown", "snp-notifier-storm"])
def test_sevsim_run_real_footprints(benchmark, scenario):
    res = {}

    def once():
        res["wall"], res["rss"], res["rss_before"], res["out"] = run_cli(scenario)

    benchmark.pedantic(once, rounds=1, iterations=1)
    assert "64GiB" in res["out"] or "64 GiB" in res["out"] or scenario != "sev-teardown"
    rss = res["rss"] if res["rss"] > res["rss_before"] else None  # ru_maxrss is a maximum over children
    print(f"\nsevsim run {scenario}: {res['wall']:.1f} s wall, peak RSS "
          f"{'%.2f GiB' % (rss / 2**30) if rss else 'not above an earlier child'}")
    benchmark.extra_info.update(wall_s=res["wall"], peak_rss_bytes=rss)
