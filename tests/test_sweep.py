"""sevsim sweep: the grid, the dataset, resuming, killing the driver and a worker, Dask."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from sevsim import scenarios, sweep

SEVSIM = [sys.executable, "-m", "sevsim.cli"]
SMALL = ["--set", "scale=small", "--set", "vm_memory=2MiB", "--set", "neighbours=2", "--set", "guest_accesses=2000"]
#: cells of about half a second each, so that a sweep can be killed in the middle
SLOW = ["--set", "scale=small", "--set", "vm_memory=2MiB", "--set", "neighbours=2", "--set", "guest_accesses=500000"]


def run(*args, **kw):
    return subprocess.run(SEVSIM + list(args), capture_output=True, text=True, timeout=300, **kw)


def cell_files(d):
    return sorted(f for f in os.listdir(os.path.join(d, "cells")) if not f.startswith("."))


def results(rows):
    """A row without the columns that say where and how fast it ran."""
    return {r["cell_id"]: {k: v for k, v in r.items() if k not in sweep.META} for r in rows}


def test_grid_from_the_command_line_and_a_file(tmp_path):
    g = sweep.make_grid("sev-teardown", sets=["vm_memory=16MiB,64MiB", "vcpus=4,16"], strategies="wbinvd_all,none",
                        seeds="0-2,7")
    assert g.axes == {"vm_memory": ["16MiB", "64MiB"], "vcpus": [4, 16]} and g.seeds == [0, 1, 2, 7]
    cells = g.cells()
    assert len(cells) == 2 * 2 * 2 * 4 and len({c.id for c in cells}) == len(cells)
    # every cell carries every parameter, the defaults included
    assert all(dict(c.params).keys() == scenarios.get("sev-teardown").PARAMS.keys() for c in cells)
    f = tmp_path / "g.toml"
    f.write_text(g.to_toml())
    again = sweep.make_grid(None, grid_file=str(f))
    assert [c.id for c in again.cells()] == [c.id for c in cells]
    # the command line wins over the file
    over = sweep.make_grid(None, grid_file=str(f), sets=["vcpus=8"], seeds="3")
    assert over.axes["vcpus"] == [8] and over.axes["vm_memory"] == ["16MiB", "64MiB"] and over.seeds == [3]


def test_cell_id_is_stable_and_names_the_configuration():
    def one(**kw):
        g = sweep.make_grid("sev-teardown", sets=[f"{k}={v}" for k, v in kw.items()], strategies="none", seeds="1")
        return g.cells()[0].id

    a = one(vm_memory="2MiB")
    assert a == one(vm_memory="2048KiB")  # the same size, however written
    assert a == one(vm_memory="2MiB", vcpus=16)  # 16 is the default
    assert a != one(vm_memory="4MiB") and a != one(vm_memory="2MiB", vcpus=8)
    # the same in another process (no per-process hash seed)
    code = ("from sevsim import sweep; print(sweep.make_grid('sev-teardown', sets=['vm_memory=2MiB'], "
            "strategies='none', seeds='1').cells()[0].id)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "12345"})
    assert out.stdout.strip() == a


@pytest.mark.parametrize("args, pattern", [
    (["sev-teardown", "--set", "vm_memory=2MiB,lots"], "--set vm_memory=2MiB,lots: parameter vm_memory: 'lots' "
                                                        "is not allowed; use a size such as 64MiB"),
    (["sev-teardown", "--set", "nope=1"], "scenario sev-teardown has no parameter 'nope'; valid: preset"),
    (["sev-teardown", "--set", "vcpus=2", "--set", "vcpus=4"], "--set vcpus: given twice"),
    (["sev-teardown", "--seeds", "5-2"], "--seeds '5-2' is not allowed; use N, N-M"),
    (["sev-teardown", "--strategy", "bogus"], "--strategy 'bogus': unknown strategy 'bogus' for sev-teardown; valid:"),
    (["no-such"], "sweep: unknown scenario 'no-such'; valid: sev-teardown"),
    (["sev-teardown", "--grid", "/nonexistent.toml"], "--grid /nonexistent.toml: no such file"),
    (["sev-teardown", "--format", "xls"], "argument --format: invalid choice: 'xls'"),
    (["sev-teardown", "--jobs", "0"], "--jobs takes an integer in [1, 4096], got 0"),
])
def test_bad_grids_are_one_line_errors_and_nothing_runs(tmp_path, args, pattern):
    out = tmp_path / "out"
    r = run("sweep", *args, "--out", str(out))
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sevsim: error: ") and pattern in lines[0], r.stderr
    assert not out.exists() or not cell_files(out)


def test_a_bad_grid_file_and_output_are_refused(tmp_path):
    f = tmp_path / "g.toml"
    f.write_text('scenario = "sev-teardown"\nstrategy = ["none"]\n')
    r = run("sweep", "--grid", str(f), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "--grid" in r.stderr and "unknown key 'strategy'; allowed: params, scenario, " \
                                                            "seeds, strategies" in r.stderr
    f.write_text('scenario = "sev-teardown"\n[params]\nvcpus = [2, 0]\n')
    r = run("sweep", "--grid", str(f), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "[params]: parameter vcpus: 0 is not allowed; use an integer >= 1" in r.stderr
    (tmp_path / "file").write_text("")
    r = run("sweep", "sev-teardown", "--out", str(tmp_path / "file"))
    assert r.returncode == 2 and "--out " in r.stderr and "exists and is not a directory" in r.stderr


def test_sweep_writes_one_file_per_cell_records_failures_and_resumes(tmp_path):
    out = tmp_path / "sw"
    # vcpus=1000 does not fit on the host: those cells fail, the others run
    args = ["sweep", "sev-teardown", *SMALL, "--set", "vcpus=2,1000", "--strategy", "wbinvd_all,none",
            "--seeds", "0-1", "--out", str(out), "--jobs", "2"]
    r = run(*args)
    assert r.returncode == 1, r.stderr
    assert "8 cells, 0 already done; 8 to run" in r.stderr
    lines = [l for l in r.stderr.splitlines() if " cells, " in l and "ETA" in l]
    assert len(lines) == 8 and lines[-1].startswith("sevsim: 8/8 cells, ") and "4 failed" in lines[-1]
    assert "4 of 8 cells failed" in r.stdout and "median [min-max] of 2 repetitions" in r.stdout
    assert len(cell_files(out)) == 8
    rows = sweep.load(str(out))
    assert len(rows) == 8 and len({x["cell_id"] for x in rows}) == 8
    failed = [x for x in rows if x["status"] == "failed"]
    assert {x["vcpus"] for x in failed} == {1000} and len(failed) == 4
    assert all("ConfigError: 2000 vCPUs pinned one per core, but the host has" in x["error"] for x in failed)
    ok = [x for x in rows if x["status"] == "ok"]
    # the whole configuration in every row
    assert all(x["vm_memory"] == "2MiB" and x["neighbours"] == 2 and x["preset"] == "epyc-9755-2s"
               and x["sevsim_version"] for x in rows)
    assert {x["verdict"] for x in ok if x["strategy"] == "none"} == {"UNSAFE"}
    # the same numbers as the scenario run directly
    x = next(x for x in ok if x["strategy"] == "wbinvd_all" and x["seed"] == 1)
    direct = scenarios.run("sev-teardown", strategies=["wbinvd_all"], seed=1, scale="small", vm_memory="2MiB", neighbours=2,
                           guest_accesses=2000, vcpus=2).rows[0]
    assert x["teardown_us"] == direct["teardown_us"] and x["writebacks"] == direct["writebacks"]
    before = {f: (out / "cells" / f).read_bytes() for f in cell_files(out)}
    # a rerun skips the finished cells and retries the failed ones only
    r = run(*args)
    assert r.returncode == 1 and "8 cells, 4 already done, 4 failed before and retried; 4 to run" in r.stderr
    after = {f: (out / "cells" / f).read_bytes() for f in cell_files(out)}
    assert after.keys() == before.keys()
    assert all(after[f] == before[f] for f in before if f.split(".")[0] in {x["cell_id"] for x in ok})


def test_csv_format(tmp_path):
    out = tmp_path / "sw"
    r = run("sweep", "sev-teardown", *SMALL, "--strategy", "none", "--seeds", "0-1", "--out", str(out),
            "--format", "csv", "-q")
    assert r.returncode == 0, r.stderr
    assert all(f.endswith(".csv") for f in cell_files(out)) and len(cell_files(out)) == 2
    rows = sweep.load(str(out))
    assert {x["seed"] for x in rows} == {0, 1} and all(isinstance(x["teardown_us"], float) for x in rows)


def _children(pid):
    out = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                with open(f"/proc/{p}/cmdline", "rb") as f:
                    cmd = f.read().decode(errors="replace")
            except OSError:
                continue
            if ppid == pid:
                out.append((int(p), cmd))
    return out


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_for_cells(d, n, proc, timeout=60):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if (d / "cells").is_dir() and len(cell_files(d)) >= n:
            return
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    pytest.fail(f"no {n} cells after {timeout}s")


SLOW_GRID = ["sweep", "sev-teardown", *SLOW, "--strategy", "wbinvd_all,none", "--seeds", "0-5", "--jobs", "2"]


def test_sigkill_of_the_driver_loses_no_finished_cell_and_duplicates_none(tmp_path):
    out = tmp_path / "sw"
    p = subprocess.Popen(SEVSIM + SLOW_GRID + ["--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    try:
        _wait_for_cells(out, 2, p)
        workers = [pid for pid, cmd in _children(p.pid) if "spawn_main" in cmd]
        assert workers
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    # the orphaned workers exit when they find their driver gone
    t0 = time.monotonic()
    while any(_alive(pid) for pid in workers) and time.monotonic() - t0 < 10:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in workers), "workers outlived their driver"
    kept = {f: (out / "cells" / f).read_bytes() for f in cell_files(out)}
    assert 2 <= len(kept) < 12, "the driver was killed after the sweep had finished: make the cells slower"
    rows = sweep.load(str(out))
    assert len(rows) == len(kept) and all(x["status"] == "ok" for x in rows)
    r = run(*SLOW_GRID, "--out", str(out), "-q")
    assert r.returncode == 0, r.stderr
    files = cell_files(out)
    assert len(files) == 12
    assert all((out / "cells" / f).read_bytes() == b for f, b in kept.items())  # not run again
    rows = sweep.load(str(out))
    assert len(rows) == 12 and len({(x["strategy"], x["seed"]) for x in rows}) == 12
    assert len({x["cell_id"] for x in rows}) == 12 and all(x["status"] == "ok" for x in rows)


def test_sigkill_of_a_worker_loses_no_cell_and_duplicates_none(tmp_path):
    out = tmp_path / "sw"
    p = subprocess.Popen(SEVSIM + SLOW_GRID + ["--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    try:
        _wait_for_cells(out, 1, p)
        workers = [pid for pid, cmd in _children(p.pid) if "spawn_main" in cmd]
        assert workers, _children(p.pid)
        os.kill(workers[0], signal.SIGKILL)
        stdout, stderr = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, stderr
    assert "a worker process died" in stderr and "resubmitted to a new pool" in stderr
    rows = sweep.load(str(out))
    assert len(rows) == 12 and len(cell_files(out)) == 12 and all(x["status"] == "ok" for x in rows)
    assert len({(x["strategy"], x["seed"]) for x in rows}) == 12
    assert max(x["attempt"] for x in rows) == 2  # the cells the dead worker took with it ran again
    assert "12 of 12 cells" in stdout


def test_dask_and_the_local_pool_give_the_same_rows(tmp_path):
    import distributed  # in the test extra: CI has it (no skip)
    grid = ["sweep", "sev-teardown", *SMALL, "--set", "vcpus=2,4", "--strategy", "wbnoinvd_ran_cpus,none",
            "--seeds", "3-4", "-q"]
    r = run(*grid, "--out", str(tmp_path / "pool"), "--jobs", "2")
    assert r.returncode == 0, r.stderr
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, protocol="tcp", host="127.0.0.1",
                                  dashboard_address=None) as cluster:
        r = run(*grid, "--out", str(tmp_path / "dask"), "--scheduler", cluster.scheduler_address)
        assert r.returncode == 0, r.stderr
    pool, dask = sweep.load(str(tmp_path / "pool")), sweep.load(str(tmp_path / "dask"))
    assert len(pool) == len(dask) == 8
    # the dask rows were computed in this process (the cluster's worker), the pool's elsewhere
    assert all(x["worker"].endswith(f":{os.getpid()}") for x in dask)
    assert not any(x["worker"].endswith(f":{os.getpid()}") for x in pool)
    assert results(pool) == results(dask)
    assert len({x["teardown_us"] for x in pool}) > 1  # not a table of constants


def test_unreachable_scheduler_is_a_one_line_error(tmp_path):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    t0 = time.monotonic()
    r = run("sweep", "sev-teardown", *SMALL, "--out", str(tmp_path / "o"), "--scheduler", f"tcp://127.0.0.1:{port}",
            env={**os.environ, "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "2s"})
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert f"sevsim: error: --scheduler tcp://127.0.0.1:{port}: cannot connect" in r.stderr
    assert time.monotonic() - t0 < 30
