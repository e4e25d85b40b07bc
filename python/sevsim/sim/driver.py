"""A discrete-event driver: threads are generators that yield the simulated time at which they
next need the machine (a lock, a shared list, the engine's shared resources); the driver always
resumes the thread with the smallest such time, so requests reach shared resources in time
order and waiting is causal. Ties go to the thread that was scheduled first (a sequence number),
so runs are deterministic.

A thread may also yield None: it blocks until another thread calls `wake(tid, t)`.

Resources that remember the past (sim/lock.py) register `forget_before(now)` with `on_advance`:
the driver calls them with its present every `every` steps, so their history stays as long as
the spread of the threads' clocks, not the run.
"""

from __future__ import annotations

import heapq
from typing import Generator, Iterator

Thread = Generator[float | None, None, None]


class Driver:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, int]] = []
        self._threads: dict[int, Iterator[float | None]] = {}
        self._blocked: set[int] = set()
        self._seq = 0
        self.steps = 0
        self.now = 0.0
        self._forget: list = []
        self._every = 256

    def on_advance(self, forget_before, every: int = 256) -> None:
        """Call `forget_before(now)` every `every` steps (module comment)."""
        if every < 1:
            raise ValueError(f"every = {every} must be >= 1")
        self._forget.append(forget_before)
        self._every = min(self._every, every)

    def spawn(self, tid: int, thread: Thread, t: float = 0.0) -> None:
        if tid in self._threads:
            raise ValueError(f"thread {tid} already exists")
        self._threads[tid] = thread
        self._push(t, tid)

    def _push(self, t: float, tid: int) -> None:
        heapq.heappush(self._heap, (t, self._seq, tid))
        self._seq += 1

    def wake(self, tid: int, t: float) -> None:
        """Make blocked thread `tid` runnable at time `t` (not before the driver's present)."""
        if tid not in self._blocked:
            raise ValueError(f"thread {tid} is not blocked")
        self._blocked.discard(tid)
        self._push(max(t, self.now), tid)

    def run(self) -> None:
        """Run until every thread has finished. A thread left blocked with nobody to wake it is an
        error (a lost wake-up in the model)."""
        heap = self._heap
        threads = self._threads
        forget, every = self._forget, self._every
        while heap:
            t, _, tid = heapq.heappop(heap)
            self.now = t
            self.steps += 1
            if forget and self.steps % every == 0:
                for f in forget:
                    f(t)
            try:
                nxt = next(threads[tid])
            except StopIteration:
                del threads[tid]
                continue
            if nxt is None:
                self._blocked.add(tid)
            else:
                if nxt < t:
                    raise RuntimeError(f"thread {tid} went back in time: {nxt} < {t}")
                heapq.heappush(heap, (nxt, self._seq, tid))
                self._seq += 1
        if self._blocked:
            raise RuntimeError(f"threads {sorted(self._blocked)[:8]} blocked forever (lost wake-up)")
