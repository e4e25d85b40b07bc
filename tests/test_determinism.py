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
