"""Same inputs and seed, the same results bit for bit: across processes with different hash seeds."""

import os
import subprocess
import sys

import pytest

RUNS = [
    ["sev-teardown", "--strategy", "wbnoinvd_ran_cpus,clflushopt_hva,none", "--set", "scale=small", "--set", "vm_memory=2MiB",
     "--set", "neighbours=4", "--set", "guest_accesses=4000"],
    ["snp-notifier-storm", "--strategy", "clflushopt_hva,none", "--set", "scale=small", "--set", "vm_memory=2MiB", "--set", "neighbours=2",
     "--set", "epochs=2"],
    ["nested-asid", "--set", "round_trips=100", "--set", "warmup_round_trips=10", "--set", "vcpus=2",
     "--set", "migrate_every=5"],
    ["tlb-tagging", "--set", "pages=128", "--set", "changed_pages=8"],
]


@pytest.mark.parametrize("args", RUNS, ids=[a[0] for a in RUNS])
def test_same_seed_same_json_whatever_the_hash_seed(args):
    outs = []
    for hashseed in ("0", "4242"):
        env = dict(os.environ, PYTHONHASHSEED=hashseed)
        r = subprocess.run([sys.executable, "-m", "sevsim.cli", "run", *args, "--seed", "7", "--json", "-", "-q"],
                           capture_output=True, text=True, env=env, timeout=600)
        assert r.returncode == 0, r.stderr
        outs.append(r.stdout)
    assert outs[0] == outs[1]
    assert '"rows"' in outs[0]


def _split_run(split):
    """Two CCXs' CPUs over 370 K lines as one access call or as calls of `split`, then range
    flushes, more accesses under another key, and a flush of that key: every observable."""
    import numpy as np

    import sevsim

    rng = np.random.default_rng(1)
    h = sevsim.Host.from_preset("epyc-7742-2s", memory=1 << 30)
    n = 2_000_000
    cpus = rng.choice(np.array([0, 8], dtype=np.uint32), n)
    addr = (rng.integers(0, 370_000, n) * 64).astype(np.uint64)
    w = rng.random(n) < 0.3
    if split is None:
        h.access(cpus, addr, w, 0)
    else:
        for i in range(0, n, split):
            h.access(cpus[i:i + split], addr[i:i + split], w[i:i + split], 0)
    h.clflushopt_range(0, 0, 100_000 * 64)
    m = 500_000
    h.access(rng.choice(np.array([0, 8, 16, 24], dtype=np.uint32), m), (rng.integers(0, 600_000, m) * 64).astype(np.uint64),
             rng.random(m) < 0.5, 3)
    h.clflushopt_range(1, 0, 200_000 * 64, key=3)
    return (h.directory_entries, h.clocks.tolist(), {k: v.tolist() for k, v in h.counters.items()}, h.cached_lines(),
            h.violation_counts(), [v.to_dict() for v in h.violations])


def test_how_a_trace_is_split_into_calls_changes_nothing():
    """The directory is sized ahead for each access call (timing only): one call or many, every
    observable is the same, the directory's entries included (range operations choose their walk
    on the size the table grows to by itself; on its real size they cleaned it differently)."""
    assert _split_run(None) == _split_run(8192)


def test_a_long_call_over_a_few_lines_keeps_a_small_directory():
    """Sizing the directory ahead for a long call must not give a few lines a table sized for
    the call. 4 M accesses on two CCDs: over 700 lines, which the first table (1,024 slots)
    holds, the engine's tables do not grow at all (sizing happens only when the table has to
    grow); over 1,000 lines, which make it grow once, by at most 32 MiB (the cap of the sizing
    ahead; uncapped they grew by 128 MiB)."""
    import numpy as np

    import sevsim

    def growth(lines):
        h = sevsim.Host.from_preset("epyc-9755-2s", memory=1 << 30)
        rng = np.random.default_rng(0)
        n = 4_000_000
        cpus = rng.choice(np.array([0, 16], dtype=np.uint32), n)
        addr = (rng.integers(0, lines, n) * 64).astype(np.uint64)
        h.access(cpus[:10], addr[:10])
        before = h.heap_bytes
        h.access(cpus, addr)
        return h.heap_bytes - before

    assert growth(700) == 0
    assert 0 < growth(1000) <= 33 << 20
