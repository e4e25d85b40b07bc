"""Workload generators and trace files."""

import numpy as np
import pytest

from sevsim.workloads import load_trace, make


def rng():
    return np.random.default_rng(0)


def test_generators_stay_in_their_footprint_and_are_line_aligned():
    for spec in ("working-set", "streaming", "random", "zipf", "zipf:1.5"):
        w = make(spec, "64KiB", 0.5)
        off, write = w.next(5000, rng())
        assert off.dtype == np.uint64 and write.dtype == bool and len(off) == 5000
        assert off.max() < 64 << 10 and not (off % 64).any()
        assert 0.4 < write.mean() < 0.6


def test_working_set_sweeps_every_line():
    off, _ = make("working-set", "4KiB").next(128, rng())
    assert sorted(set(off.tolist())) == list(range(0, 4096, 64))


def test_zipf_is_skewed():
    off, _ = make("zipf:1.2", "1MiB").next(20000, rng())
    _, counts = np.unique(off, return_counts=True)
    assert counts.max() > 50 * np.median(counts)


def test_npy_npz_and_lackey_traces(tmp_path):
    a = np.arange(10, dtype=np.uint64) * 100
    np.save(tmp_path / "a.npy", a)
    addr, write = load_trace(str(tmp_path / "a.npy"))
    assert addr.tolist() == a.tolist() and not write.any()
    rec = np.zeros(3, dtype=[("addr", np.uint64), ("write", bool)])
    rec["addr"] = [1, 2, 3]
    rec["write"] = [True, False, True]
    np.save(tmp_path / "r.npy", rec)
    assert load_trace(str(tmp_path / "r.npy"))[1].tolist() == [True, False, True]
    np.savez(tmp_path / "z.npz", addr=a, write=np.ones(10, bool))
    assert load_trace(str(tmp_path / "z.npz"))[1].all()
    (tmp_path / "l.txt").write_text(
        "==123== Lackey, an example Valgrind tool\nI  04000000,3\n L 1ffefffd58,8\n S 1ffefffd50,8\n M 0421f0e0,4\n")
    addr, write = load_trace(str(tmp_path / "l.txt"))
    assert addr.tolist() == [0x1ffefffd58, 0x1ffefffd50, 0x0421f0e0, 0x0421f0e0]
    assert write.tolist() == [False, True, False, True]
    w = make(f"trace:{tmp_path / 'l.txt'}", "8KiB")
    off, wr = w.next(6, rng())
    assert off.max() < 8192 and len(off) == 6


@pytest.mark.parametrize("name, content, pattern", [
    ("bad.txt", " L zzzz,4\n", r"bad.txt:1: not a lackey record"),
    ("empty.txt", "I  0400,3\n", "no data accesses"),
    ("f.npy", None, "integer"),
    ("notnumpy.npy", "hello", "cannot read"),
    ("trunc.npy", b"\x93NUMPY\x01\x00v\x00{'descr': '<u8', 'fortran_order': False, 'shape': (100,), }", "cannot read"),
    ("noaddr.npz", "noaddr", "'addr'"),
])
def test_malformed_traces(tmp_path, name, content, pattern):
    p = tmp_path / name
    if name == "f.npy":
        np.save(p, np.ones(3, np.float64))
    elif name == "noaddr.npz":
        np.savez(p, x=np.ones(3))
    elif isinstance(content, bytes):
        p.write_bytes(content)
    else:
        p.write_text(content)
    with pytest.raises(ValueError, match=pattern):
        load_trace(str(p))


def test_bad_specs():
    with pytest.raises(ValueError, match="unknown workload"):
        make("fractal", 4096)
    with pytest.raises(ValueError, match="zipf exponent"):
        make("zipf:abc", 4096)
    with pytest.raises(ValueError, match="write fraction"):
        make("random", 4096, 1.5)
    with pytest.raises(ValueError, match="no such file"):
        make("trace:/nonexistent.npy", 4096)
