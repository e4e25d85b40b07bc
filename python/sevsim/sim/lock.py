"""A kernel lock in simulated time: a mutex or a reader/writer lock, with wait and hold
accounting.

A request at time t is granted at the earliest time the lock allows, and the caller says when
it let go. Requests made at the start of a driver step arrive in simulated-time order
(driver.py); requests made later in a step (nested locks) may not, see Lock.

Reader/writer semantics follow the kernel's queued rwlock (include/asm-generic/qrwlock.h,
kernel/locking/qrwlock.c: a waiting writer makes later readers queue behind it, i.e. writer-fair)
and rw_semaphore's handoff (kernel/locking/rwsem.c): a writer waits for every reader admitted
before it; a reader arriving after a writer waits for that writer. Readers overlap each other.
A mutex is a writer-only lock. Waiters are served in arrival order (FIFO): the kernel's qspinlock
and mutex handoff are FIFO-like under contention [assumed for mutex optimistic spinning].
"""

from __future__ import annotations

from bisect import bisect_right


#: a bound on the exclusive sections remembered (a safety net; Lock.forget_before() is what keeps
#: the history short). A saturated per-VM lock (slots_lock) is requested far ahead of the
#: driver's clock (127 waiters x ~143 us) and the sections it computes there (mmu_lock writers)
#: are asked at those future times, so the history must reach back to the driver's present: only
#: sections that ended before the present can go. Past this bound the oldest go anyway, counted in
#: Lock.forced_drops (a request older than the kept history would then miss a writer).
KEEP, TRIM = 1 << 16, 1 << 12

class Lock:
    """One lock. `kind` is "mutex" or "rw". Times are in cycles (floats).

    A request at time t waits for every exclusive section asked for at or before t (FIFO), and
    an exclusive request also for the shared sections running at t; a shared request waits for
    no other reader. A shared request does not wait for a writer asked for after its time, even
    when the driver happened to process that one first (a nested lock taken later in another
    thread's step), which keeps it causal; exclusive sections never overlap (`strict`)."""

    __slots__ = ("name", "kind", "strict", "last_end", "ex_ask", "ex_end", "readers", "acquisitions", "contended", "wait", "hold",
                 "read_acquisitions", "read_wait", "_asked", "forced_drops")

    def __init__(self, name: str, kind: str = "mutex", *, strict: bool = True):
        """`strict` (the default): exclusive sections never overlap: each starts after every one
        granted before it, even one asked for later in simulated time (mutual exclusion first;
        the engine's own resources, such as its cpa_free_at, work that way too). With
        strict=False an exclusive request ignores sections asked for after its time."""
        self.strict = strict
        self.last_end = 0.0
        if kind not in ("mutex", "rw"):
            raise ValueError(f"lock {name!r}: kind = {kind!r} is not a lock kind; use \"mutex\" or \"rw\"")
        self.name = name
        self.kind = kind
        self.ex_ask: list[float] = []   # exclusive sections: when asked for (sorted) ...
        self.ex_end: list[float] = []   # ... and when they end
        self.readers: list[tuple[float, float]] = []   # (start, end) of shared sections
        self.acquisitions = 0   # exclusive acquisitions
        self.read_acquisitions = 0
        self.contended = 0      # acquisitions (either kind) that waited
        self.wait = 0.0         # cycles waited, exclusive
        self.read_wait = 0.0    # cycles waited, shared
        self.hold = 0.0         # cycles held exclusively
        self._asked = None
        self.forced_drops = 0   # sections dropped by the KEEP bound, not by forget_before()

    def forget_before(self, now: float) -> None:
        """Drop the history no request at or after `now` can wait for: the oldest exclusive
        sections, as long as each ended by `now`, and shared sections over by `now`. The driver
        calls this with its present (the smallest clock of any thread: no request is older)."""
        ends = self.ex_end
        j = 0
        n = len(ends)
        while j < n and ends[j] <= now:
            j += 1
        if j:
            del self.ex_ask[:j], ends[:j]
        if self.readers:
            self.readers = [r for r in self.readers if r[1] > now]

    def _drop_oldest(self) -> None:
        del self.ex_ask[:TRIM], self.ex_end[:TRIM]
        self.forced_drops += TRIM

    def _after_writers(self, t: float) -> float:
        # exclusive sections sorted by the time they were asked for; those asked at or before t
        # were granted one after another, so the last few of them hold the latest end
        asks = self.ex_ask
        if not asks:
            return t
        i = len(asks) if t >= asks[-1] else bisect_right(asks, t)  # asked after all: no search
        if i == 0:
            return t
        e = max(self.ex_end[max(0, i - 4):i])
        return e if e > t else t

    def acquire(self, t: float) -> float:
        """Exclusive (mutex, or rw write) request at `t`: the time it is granted. The caller
        must release() it before the next acquire()."""
        if self._asked is not None:
            raise RuntimeError(f"lock {self.name}: acquire() before the previous holder's release()")
        start = self._after_writers(t)
        if self.strict and self.last_end > start:
            start = self.last_end
        rs = self.readers
        if rs:
            if len(rs) > 16:
                del rs[:8]  # [assumed] no more than 8 shared sections overlap one request
            for r0, r1 in rs:
                if r1 > start and r0 <= t:
                    start = r1
        self.acquisitions += 1
        if start > t:
            self.contended += 1
            self.wait += start - t
        self._asked = t
        return start

    def release(self, start: float, end: float) -> None:
        """The exclusive holder that was granted at `start` lets go at `end`."""
        if self._asked is None:
            raise RuntimeError(f"lock {self.name}: release() without acquire()")
        if end < start:
            raise ValueError(f"lock {self.name}: release at {end} before the grant at {start}")
        self.hold += end - start
        if end > self.last_end:
            self.last_end = end
        asks, ends, a = self.ex_ask, self.ex_end, self._asked
        if len(asks) > KEEP:
            self._drop_oldest()
        if not asks or a >= asks[-1]:
            asks.append(a)
            ends.append(end)
        else:
            i = bisect_right(asks, a)
            asks.insert(i, a)
            ends.insert(i, end)
        self._asked = None

    def hold_for(self, t: float, cycles: float) -> tuple[float, float]:
        """Acquire at `t`, hold for `cycles`: (granted, released). The same as acquire() then
        release(), in one call (the hot path)."""
        if self._asked is not None:
            raise RuntimeError(f"lock {self.name}: hold_for() while the lock is held")
        asks, ends = self.ex_ask, self.ex_end
        if len(asks) > KEEP:
            self._drop_oldest()  # as in release()
        start = t
        if self.strict and (not asks or t >= asks[-1]):
            # asked after every remembered section: in strict mode the wait is for the latest end
            # of any (last_end), which the search below would only bound from below
            i = len(asks)
            if self.last_end > start:
                start = self.last_end
        else:
            i = bisect_right(asks, t) if asks else 0
            if i:
                e = max(ends[i - 4 if i > 4 else 0:i])
                if e > start:
                    start = e
            if self.strict and self.last_end > start:
                start = self.last_end
        rs = self.readers
        if rs:
            # readers over by t matter to no request from now on but an out-of-order nested one
            rs = self.readers = [r for r in rs if r[1] > t] if len(rs) > 4 else rs
            for r0, r1 in rs:
                if r1 > start and r0 <= t:
                    start = r1
        self.acquisitions += 1
        if start > t:
            self.contended += 1
            self.wait += start - t
        end = start + cycles
        self.hold += cycles
        if end > self.last_end:
            self.last_end = end
        if i == len(asks):
            asks.append(t)
            ends.append(end)
        else:
            asks.insert(i, t)
            ends.insert(i, end)
        return start, end

    def read_for(self, t: float, cycles: float) -> tuple[float, float]:
        """A shared (read) section of `cycles` asked for at `t`: (granted, released). Waits for
        writers asked for at or before its time and not yet done (writer-fair)."""
        if self.kind != "rw":
            raise ValueError(f"lock {self.name} is a mutex: it has no shared mode")
        start = self._after_writers(t)
        w = start - t
        self.read_acquisitions += 1
        if w > 0:
            self.contended += 1
            self.read_wait += w
        end = start + cycles
        self.readers.append((start, end))
        return start, end

    def stats(self, freq_ghz: float) -> dict[str, float]:
        """Counts and times in microseconds."""
        us = 1.0 / (freq_ghz * 1e3)
        return {"acquisitions": self.acquisitions + self.read_acquisitions, "contended": self.contended,
                "wait_us": (self.wait + self.read_wait) * us, "hold_us": self.hold * us}
