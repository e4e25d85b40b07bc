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


class _HugeIndex:
    def __index__(self):
        return 2**200


class _RaisingIndex:
    def __index__(self):
        raise KeyError("from __index__")


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
    # empty batches check their scalars too (item 5)
    (lambda h: h.map_many(99, E0, E0), ValueError, r"table = 99: no such table"),
    (lambda h: h.create_context("svm", h.create_table("guest"), nested=99), ValueError, r"nested = 99: no such table"),
    # array arguments of the range, flush and TLB batches name themselves and the dtype (a fuzzing
    # helper: they gave PyO3's internal type name, 'PyArray<T, D>', and no allowed dtype)
    (lambda h: h.clflushopt_ranges(1, np.array([1 << 20]), np.array([64], np.uint64)), TypeError,
     r"pa must be a 1-D numpy array of dtype uint64, got a 1-D array of dtype int64"),
    (lambda h: h.clflushopt_ranges(1, np.array([1 << 20], np.uint64), [64]), TypeError, r"size must be .* got list"),
    (lambda h: h.set_owner_ranges([1 << 20], np.array([4096], np.uint64), 3), TypeError, r"pa must be .*uint64, got list"),
    (lambda h: h.vm_page_flush_pages(1, np.array([0], np.int64), 3), TypeError, r"pa must be .*dtype int64"),
    (lambda h: h.map_many(0, np.array([0x400000], np.uint64), np.array([0x10000], np.int32)), TypeError,
     r"target must be .*dtype int32"),
    (lambda h: h.access_virtual(1, np.zeros((2, 2), np.uint64)), TypeError, r"va must be .*got a 2-D array"),
    (lambda h: h.run_guest(1, 0, np.array([0x400000])), TypeError, r"va must be .*dtype int64"),
    # out-of-range CPUs name the host's CPUs whatever the int (they named 0..=2^63-1 past it, or for -1)
    (lambda h: h.wbinvd(2**63), ValueError, r"cpu = 9223372036854775808 is out of range: this host has CPUs 0\.\.7"),
    (lambda h: h.wbinvd(-1), ValueError, r"cpu = -1 is out of range: this host has CPUs 0\.\.7"),
    (lambda h: h.wbinvd(_HugeIndex()), ValueError, r"cpu = 16069380442589902755\d+ is out of range: this host has CPUs"),
    (lambda h: h.wbinvd(_RaisingIndex()), TypeError, r"cpu must be an int, got _RaisingIndex: .*from __index__"),
    (lambda h: setattr(h, "range_fast", 1), TypeError, r"argument 'range_fast'"),
    (lambda h: h.clflushopt_ranges(1, E0, np.array([64, 64], np.uint64)), ValueError,
     r"size has 2 entries for the 0 of pa: give one size per range"),
    (lambda h: h.set_owner_ranges(np.array([0], np.uint64), E0, 1), ValueError, r"size has 0 entries for the 1 of pa"),
    (lambda h: sevsim.Host.from_preset("tiny", 2**63), ValueError, r"memory = 9223372036854775808 is out of range 0..=70368744177664"),
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


BIG = "epyc-9755-2s"


@pytest.mark.parametrize("overrides, exc, pattern", [
    # item 2: this configuration passed validation and aborted the interpreter (32 GiB of tags)
    ({"l2": {"size": "1GiB", "ways": 64}}, MemoryError, r"needs about \d+ GiB .*l2.size alone"),
    ({"l3": {"size": "4GiB", "ways": 16}}, MemoryError, r"l3.size"),
    ({"tlb": {"l2_entries": 2**20, "l2_ways": 16}}, ValueError, r"tlb.l2_entries must be at most 65536, got 1048576"),
    ({"tlb": {"l2_entries": 2**40}}, ValueError, r"tlb.l2_entries: invalid value: integer `1099511627776`"),
    ({"l2": {"ways": 2**64}}, ValueError, r"overrides.l2.ways = 18446744073709551616 is out of range"),
])
def test_configurations_the_machine_cannot_hold_are_refused_by_name(overrides, exc, pattern):
    with pytest.raises(exc, match=pattern):
        sevsim.Host.from_preset(BIG, memory="64MiB", overrides=overrides)


def _state(h):
    return (h.clocks.tolist(), {k: v.tolist() for k, v in h.counters.items()}, h.violation_counts(), h.cached_lines(), h.audit())


def test_long_batches_run_in_chunks_with_the_same_result_as_small_calls():
    """The binding runs a batch in chunks of 2^18 (checking for signals in between): the result is
    the one the same accesses give in any other split."""
    n = (1 << 18) * 2 + 12345
    rng = np.random.default_rng(7)
    addr = rng.integers(0, (64 << 20) // 64, n, dtype=np.uint64) * np.uint64(64)
    cpu = rng.integers(0, 8, n, dtype=np.uint32)
    write = rng.random(n) < 0.3
    a, b = (sevsim.Host.from_preset("tiny", memory="64MiB") for _ in range(2))
    ra = a.access(cpu, addr, write, return_levels=True)
    levels = []
    tot = {}
    for i in range(0, n, 100_003):
        r = b.access(cpu[i:i + 100_003], addr[i:i + 100_003], write[i:i + 100_003], return_levels=True)
        levels.append(r.pop("levels"))
        for k, v in r.items():
            tot[k] = tot.get(k, 0) + v
    assert (ra.pop("levels") == np.concatenate(levels)).all()
    assert ra == tot
    assert _state(a) == _state(b)


def test_ctrl_c_stops_a_long_batch_and_leaves_the_engine_consistent():
    import os
    import signal
    import threading
    h = sevsim.Host.from_preset("tiny", memory="64MiB")
    n = 40_000_000
    addr = np.random.default_rng(1).integers(0, (64 << 20) // 64, n, dtype=np.uint64) * np.uint64(64)
    # the interrupt lands a quarter into the batch, however fast this machine runs it (a fixed
    # 0.3 s came after the end once the engine got faster on a quiet machine)
    import time
    scratch = sevsim.Host.from_preset("tiny", memory="64MiB")
    t0 = time.perf_counter()
    scratch.access(0, addr[:n // 20])
    delay = min(0.3, (time.perf_counter() - t0) * 20 / 4)
    timer = threading.Timer(delay, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt) as ei:
            h.access(0, addr)
    finally:
        timer.cancel()
    note = " ".join(getattr(ei.value, "__notes__", []))
    done = int(note.split("interrupted after ")[1].split(" of ")[0])
    assert 0 < done < n and f"of {n} accesses" in note
    # exactly the first `done` accesses were applied: a fresh host given just those agrees
    ref = sevsim.Host.from_preset("tiny", memory="64MiB")
    ref.access(0, addr[:done])
    assert _state(h) == _state(ref)


def test_a_batch_uses_what_it_checked_even_if_another_thread_writes_the_arrays():
    """Item 1: another thread writing the caller's cpu/addr arrays mid-batch got a Rust panic with
    most of the batch applied (or bypassed the address checks). The batch now works on a copy."""
    import threading
    h = sevsim.Host.from_preset("tiny", memory="64MiB")
    n = 3_000_000
    cpu = np.zeros(n, np.uint32)
    addr = np.arange(n, dtype=np.uint64) % np.uint64((64 << 20) // 64) * np.uint64(64)
    stop = threading.Event()

    def scribble():
        while not stop.is_set():
            cpu[::997] = 1 << 30           # CPUs the host does not have
            addr[::991] = np.uint64(1 << 62)  # beyond memory
    t = threading.Thread(target=scribble)
    t.start()
    try:
        for _ in range(3):
            try:
                h.access(cpu, addr)
            except ValueError as e:  # a write that landed before the copy is refused by name
                assert "cpu[" in str(e) or "addr[" in str(e)
    finally:
        stop.set()
        t.join()
    assert h.violation_counts() == {k: 0 for k in h.violation_counts()}



def test_a_second_thread_is_told_the_host_is_busy_and_changes_nothing():
    """Item 9: a call on a Host while another thread's batch runs on it (the batch releases the
    GIL) raised PyO3's bare "Already mutably borrowed". It now says what is going on and names
    both calls; a refused call changes nothing (CPU 1's clock counts only the spends that got in),
    and the batch gives exactly a lone run's result."""
    import threading
    n = 6_000_000
    addr = np.random.default_rng(5).integers(0, (64 << 20) // 64, n, dtype=np.uint64) * np.uint64(64)
    h = sevsim.Host.from_preset("tiny", memory="64MiB")
    done = threading.Event()
    refusals, others, spent = [], [], [0]

    def poke():
        while not done.is_set():
            for name, call in (("cycles", lambda: h.cycles(0)), ("spend", lambda: h.spend(1, 10)),
                               ("counters", lambda: h.counters)):
                try:
                    call()
                    spent[0] += name == "spend"
                except RuntimeError as e:
                    refusals.append((name, str(e)))
                except Exception as e:
                    others.append(repr(e))
    t = threading.Thread(target=poke)
    t.start()
    try:
        got = h.access(0, addr, return_levels=True)
    finally:
        done.set()
        t.join()
    assert not others
    assert refusals, "the batch ran too fast for the second thread to meet it"
    for name, msg in refusals:
        assert msg.startswith(f"Host.{name}: this Host is busy in another thread's call (Host.access)"), msg
        assert "cannot be shared across threads while a call runs" in msg
    assert h.cycles(1) == 10 * spent[0]
    ref = sevsim.Host.from_preset("tiny", memory="64MiB")
    want = ref.access(0, addr, return_levels=True)
    assert (got.pop("levels") == want.pop("levels")).all() and got == want
    assert h.cycles(0) == ref.cycles(0)


@pytest.mark.parametrize("call, pattern", [
    (lambda h: h.clflushopt_range(0, 2**64 - 10, 100), r"^pa = 0xfffffffffffffff6 with size = 0x64 runs past 2\^64$"),
    (lambda h: h.clflushopt_range(0, 64 << 20, 64), r"^pa = 0x4000000 with size = 0x40 runs past the end of memory"),
    (lambda h: h.dma_write(2**64 - 1, 10), r"^pa = 0xffffffffffffffff with size = 0xa runs past 2\^64$"),
    (lambda h: h.set_owner(4096, 8 << 30, 1), r"^pa = 0x1000 with size = 0x200000000 runs past the end of memory"),
    (lambda h: h.set_owner(4095, 4096, 1), r"^pa = 0xfff and size = 0x1000 must be multiples of 0x1000$"),
    (lambda h: h.owner(1 << 40), r"^pa = 0x10000000000 is past the end of memory"),
    (lambda h: h.copies(1 << 40), r"^pa = 0x10000000000 is past the end of memory"),
])
def test_range_errors_name_pa_and_size(call, pattern):
    """Item 4: these said "range overflows" or "addr: ..." where the parameter is `pa`."""
    h = sevsim.Host.from_preset("tiny", memory="64MiB")
    with pytest.raises(ValueError, match=pattern):
        call(h)
