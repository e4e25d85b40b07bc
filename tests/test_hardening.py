"""Bad input gets a clear exception naming the argument, the value and what is allowed (issue 15,
the items fixed so far); clocks never wrap; sizes parse exactly."""

import numpy as np
import pytest

import sevsim
from sevsim._core import parse_bytes


@pytest.fixture
def host():
    return sevsim.Host.from_preset("tiny")


E0 = np.zeros(0, np.uint64)


@pytest.mark.parametrize("call, exc, pattern", [
    (lambda h: h.pvalidate(0, -1, 0, 0), ValueError, r"asid = -1 is out of range 0..=1023"),
    (lambda h: h.pvalidate(0, 1, 0, -5), ValueError, r"gpa = -5"),
    (lambda h: h.rmpupdate_batch(0, E0, E0, assigned=True, asid=70000), ValueError, r"asid = 70000 .*0..=1023"),
    # empty batches check their scalars too
    (lambda h: h.rmpupdate_batch(0, E0, E0, assigned=True, asid=1024), ValueError, r"asid = 1024"),
    (lambda h: h.pvalidate_batch(0, 65535, E0, E0), ValueError, r"asid = 65535"),
    (lambda h: h.pvalidate_batch(99, 1, E0, E0), ValueError, r"cpu"),
    (lambda h: h.pvalidate_batch(0, 1, np.zeros(3, np.int32), np.zeros(3, np.uint64)), TypeError,
     r"pa must be a 1-D numpy array of dtype uint64, got a 1-D array of dtype int32"),
    (lambda h: h.rmpupdate_batch(0, E0, [1, 2], assigned=False), TypeError, r"gpa must be a 1-D numpy array of dtype uint64"),
    (lambda h: setattr(h, "max_violations", -1), ValueError, r"max_violations = -1"),
    (lambda h: h.alloc_pages(0, 2**64 - 1), ValueError, r"count = 18446744073709551615 .* exceeds the host's"),
])
def test_errors_name_the_argument_value_and_range(host, call, exc, pattern):
    before = (host.clocks.copy(), host.violation_counts())
    with pytest.raises(exc, match=pattern):
        call(host)
    assert (host.clocks == before[0]).all() and host.violation_counts() == before[1]


def test_clocks_saturate_and_never_wrap(host):
    for _ in range(70_000):  # 70,000 x 2^48 > 2^64
        host.spend(0, 2**48)
    assert host.cycles(0) == 2**64 - 1
    host.ipi_call(0, [1, 2], work=2**40)
    assert host.cycles(0) == 2**64 - 1 and host.cycles(1) < 2**64 - 1


@pytest.mark.parametrize("text, value", [("16.1KB", 16_100), ("9007199254740993", 9_007_199_254_740_993),
                                         ("0.5KiB", 512), ("1.5TiB", 3 << 39), ("1_000", 1000)])
def test_sizes_parse_exactly(text, value):
    assert parse_bytes(text) == value


@pytest.mark.parametrize("text, pattern", [("-1KiB", "negative"), ("1.2.3KiB", "not a number"),
                                           ("0.3B", "whole number"), ("2EiB", "unknown unit"),
                                           ("4611686018427387905", "out of range")])
def test_bad_sizes_say_why(text, pattern):
    with pytest.raises(ValueError, match=pattern):
        parse_bytes(text)
