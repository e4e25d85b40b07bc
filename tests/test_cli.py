"""The sevsim command, run for real in a subprocess."""

import csv
import json
import os
import subprocess
import sys

import pytest

SEVSIM = [sys.executable, "-m", "sevsim.cli"]
FAST = ["--set", "scale=small", "--set", "vm_memory=2MiB", "--set", "guest_accesses=4000", "--set", "neighbours=4",
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


def test_list_a_scenario_prints_its_parameters_and_columns():
    r = run("list", "sev-teardown")
    assert r.returncode == 0, r.stderr
    assert "vm_memory" in r.stdout and "= 64GiB" in r.stdout and "allowed: an integer in [1, 509]" in r.stdout
    assert "nb_extra_misses" in r.stdout and "teardown_cpu_us" in r.stdout


def test_run_writes_json_and_csv(tmp_path):
    j, c = tmp_path / "out.json", tmp_path / "out.csv"
    r = run("run", "sev-teardown", "--strategy", "wbnoinvd_ran_cpus,none", "--seed", "2", "--json", str(j),
            "--csv", str(c), *FAST)
    assert r.returncode == 0, r.stderr
    assert "wbnoinvd_ran_cpus" in r.stdout and "Why UNSAFE" in r.stdout and "none rep 0: writeback_" in r.stdout
    # the legend says what the columns are
    assert "teardown_cpu_us  CPU time the teardown took summed over every CPU" in r.stdout
    data = json.loads(j.read_text(), parse_constant=lambda c: pytest.fail(f"JSON holds {c}"))
    assert [row["strategy"] for row in data["rows"]] == ["wbnoinvd_ran_cpus", "none"]
    assert data["rows"][0]["vm_memory"] == "2MiB" and data["rows"][0]["neighbours"] == 4
    assert data["legend"]["teardown_us"].endswith("(us)")
    rows = list(csv.DictReader(c.open()))
    assert rows[0]["verdict"] == "SAFE" and rows[1]["verdict"] == "UNSAFE"
    assert int(rows[0]["seed"]) == 2 and rows[0]["sevsim_version"]


def test_json_and_csv_to_standard_output():
    r = run("run", "--strategy", "none", "--json", "-", *FAST)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["rows"][0]["verdict"] == "UNSAFE"
    assert "Why UNSAFE" in r.stderr  # the table goes to stderr then
    r = run("run", "--strategy", "none", "--csv", "-", "-q", *FAST)
    assert r.returncode == 0 and r.stdout.startswith("strategy,") and r.stderr.count("\n") > 3


def test_progress_is_a_plain_line_per_row_off_a_terminal():
    r = run("run", "--strategy", "wbnoinvd_ran_cpus,none", *FAST)
    assert r.returncode == 0
    lines = [l for l in r.stderr.splitlines() if l.startswith("sevsim: ")]
    assert lines == ["sevsim: 1/2 wbnoinvd_ran_cpus rep 0: SAFE", "sevsim: 2/2 none rep 0: UNSAFE"]


def test_violations_file_and_reps_summary_with_baseline(tmp_path):
    v = tmp_path / "v.csv"
    r = run("run", "--strategy", "wbinvd_all,none", "--reps", "2", "--baseline", "wbinvd_all",
            "--violations", str(v), *FAST)
    assert r.returncode == 0, r.stderr
    assert "median [min-max] of 2 repetitions" in r.stdout and "1.00x" in r.stdout
    rows = list(csv.DictReader(v.open()))
    assert rows and {x["strategy"] for x in rows} == {"none"} and {x["rep"] for x in rows} == {"0", "1"}
    assert all(x["step"] and x["cause"] for x in rows)


def test_config_file_round_trip(tmp_path):
    cfg = tmp_path / "c.toml"
    r = run("run", "--strategy", "wbnoinvd_ran_cpus", "--seed", "3", "--dump-config", str(cfg), *FAST)
    assert r.returncode == 0 and cfg.exists() and not r.stdout.strip()
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert run("run", "--config", str(cfg), "--json", str(a)).returncode == 0
    assert run("run", "--strategy", "wbnoinvd_ran_cpus", "--seed", "3", "--json", str(b), *FAST).returncode == 0
    assert json.loads(a.read_text())["rows"] == json.loads(b.read_text())["rows"]
    cfg.write_text(cfg.read_text().replace("vcpus = 4", "vcpus = -3"))
    r = run("run", "--config", str(cfg))
    assert r.returncode == 2 and "parameter vcpus: -3 is not allowed" in r.stderr


def test_storm_runs_from_the_cli(tmp_path):
    r = run("run", "snp-notifier-storm", "--strategy", "clflushopt_pfn", "--set", "scale=small", "--set", "epochs=2",
            "--set", "neighbours=2", "--set", "vm_memory=2MiB", "--json", str(tmp_path / "s.json"))
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "s.json").read_text())["rows"][0]["verdict"] == "SAFE"


@pytest.mark.parametrize("args, pattern", [
    (["run", "nope"], "unknown scenario 'nope'"),
    (["run", "--seed", "x"], "--seed takes an integer"),
    (["run", "--reps", "0"], "--reps takes an integer in [1, 10000]"),
    (["run", "--bogus"], "unrecognized arguments: --bogus"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["run", "--set", "vms=-1"], "parameter vms: '-1' is not allowed; use an integer in [1, 509]"),
    (["run", "--set", "vms=0"], "parameter vms: '0'"),
    (["run", "--set", "neighbours=-1"], "parameter neighbours"),
    (["run", "--set", "guest_accesses=-5"], "parameter guest_accesses"),
    (["run", "--set", "sme_coherent=ture"], "parameter sme_coherent: 'ture'"),
    (["run", "--preset", "epyc-7742-2s", "--set", "snp=true"], "no SEV-SNP"),
    (["run", "--preset", "epyc-7742-2s", "--set", "vm_type=snp"], "SEV-SNP"),
    (["run", "--baseline", "wbinvd_all", "--strategy", "none"], "--baseline"),
    (["run", "--csv", "/nonexistent/dir/x.csv"], "no such directory"),
    (["run", "--plot", "out.txt"], ".png"),
    (["run", "sev-teardown", "--strategy", "wbinvd_all,bogus"], "unknown strategy 'bogus'"),
    (["run", "--preset", "tinyy"], "parameter preset: 'tinyy': unknown preset; valid: epyc-7742-2s"),
    (["run", "--set", "vcpus=999"], "cores"),
    (["run", "--set", "vm_memory=2TiB"], "do not fit"),
    (["run", "--set", "vcpus=many"], "vcpus"),
    (["run", "--set", "novalue"], "NAME=VALUE"),
    # a fuzzing helper: these ended in an OverflowError / MemoryError traceback, or ran for ever
    (["run", "--set", "scale=small", "--strategy", "none", "--set", "vcpu_migrations=18446744073709551616"],
     "parameter vcpu_migrations: 18446744073709551616 moves for 50000 accesses"),
    (["run", "snp-pagein", "--set", "vcpus=10000000000"], "parameter vcpus: '10000000000': give integers in [1, 4096]"),
    (["run", "snp-pagein", "--set", "guests=1024"], "parameter guests: '1024': give integers in [1, 1023] (one SNP ASID"),
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


def test_a_failing_output_leaves_no_file_behind(tmp_path):
    """--json d/out.json --plot d/out.txt used to leave out.json: paths are checked first."""
    out = tmp_path / "out.json"
    r = run("run", "--json", str(out), "--plot", str(tmp_path / "out.txt"), *FAST)
    assert r.returncode == 2 and not out.exists()
    assert not os.listdir(tmp_path)
