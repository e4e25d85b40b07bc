"""The sevsim command, run for real in a subprocess."""

import csv
import json
import os
import subprocess
import sys

import pytest

SEVSIM = [sys.executable, "-m", "sevsim.cli"]
FAST = ["--set", "vm_memory=2MiB", "--set", "guest_accesses=4000", "--set", "neighbours=4",
        "--set", "neighbour_accesses=4096"]


def run(*args, **kw):
    return subprocess.run(SEVSIM + list(args), capture_output=True, text=True, timeout=600, **kw)


def test_version_and_list():
    r = run("--version")
    assert r.returncode == 0 and r.stdout.startswith("sevsim ")
    r = run("list")
    assert r.returncode == 0
    for word in ("sev-teardown", "snp-notifier-storm", "wbnoinvd_ran_cpus", "clflushopt_hva", "epyc-9755-2s"):
        assert word in r.stdout


def test_run_writes_json_and_csv(tmp_path):
    j, c = tmp_path / "out.json", tmp_path / "out.csv"
    r = run("run", "sev-teardown", "--strategy", "wbnoinvd_ran_cpus,none", "--seed", "2", "--json", str(j),
            "--csv", str(c), *FAST)
    assert r.returncode == 0, r.stderr
    assert "wbnoinvd_ran_cpus" in r.stdout and "UNSAFE: none" in r.stdout
    data = json.loads(j.read_text())
    assert [row["strategy"] for row in data["rows"]] == ["wbnoinvd_ran_cpus", "none"]
    rows = list(csv.DictReader(c.open()))
    assert rows[0]["verdict"] == "SAFE" and rows[1]["verdict"] == "UNSAFE"
    assert int(rows[0]["seed"]) == 2


def test_storm_runs_from_the_cli(tmp_path):
    r = run("run", "snp-notifier-storm", "--strategy", "clflushopt_pfn", "--set", "epochs=2",
            "--set", "neighbours=2", "--set", "vm_memory=2MiB", "--json", str(tmp_path / "s.json"))
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "s.json").read_text())["rows"][0]["verdict"] == "SAFE"


@pytest.mark.parametrize("args, pattern", [
    (["run", "nope"], "unknown scenario 'nope'"),
    (["run", "sev-teardown", "--strategy", "wbinvd_all,bogus"], "unknown strategy 'bogus'"),
    (["run", "--preset", "tinyy"], "unknown preset 'tinyy'"),
    (["run", "--set", "vcpus=999"], "cores"),
    (["run", "--set", "vm_memory=2TiB"], "do not fit"),
    (["run", "--set", "vcpus=many"], "vcpus"),
    (["run", "--set", "novalue"], "NAME=VALUE"),
])
def test_errors_are_one_line_nonzero_and_leave_no_file(tmp_path, args, pattern):
    out = tmp_path / "x.json"
    r = run(*args, "--json", str(out), *FAST[:0])
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sevsim: error:") and pattern in lines[0], r.stderr
    assert not out.exists()
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".sevsim-")]


def test_plot(tmp_path):
    out = tmp_path / "p.png"
    r = run("run", "--strategy", "wbinvd_all,wbnoinvd_ran_cpus", "--plot", str(out), *FAST)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert r.returncode == 2 and "matplotlib" in r.stderr and not out.exists()
    else:
        assert r.returncode == 0, r.stderr
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
