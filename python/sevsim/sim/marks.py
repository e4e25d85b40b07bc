"""Moments in simulated time, kept sorted though they arrive out of order, with the question a
retry check asks: did one fall in (t0, t1]? Resources computed ahead of the driver's present (a
saturated lock's future sections) add their moments early; `forget_before` drops those no
question can reach any more (registered with Driver.on_advance)."""

from __future__ import annotations

from bisect import bisect_right, insort


class TimeMarks:
    __slots__ = ("t",)

    def __init__(self) -> None:
        self.t: list[float] = []

    def add(self, e: float) -> None:
        t = self.t
        if not t or e >= t[-1]:
            t.append(e)
        else:
            insort(t, e)

    def moved(self, t0: float, t1: float) -> bool:
        """A moment fell in (t0, t1]."""
        i = bisect_right(self.t, t0)
        return i < len(self.t) and self.t[i] <= t1

    def forget_before(self, now: float) -> None:
        """Drop moments before the driver's present (no question starts before it); the last
        one before it stays."""
        i = bisect_right(self.t, now)
        if i > 1:
            del self.t[:i - 1]
