"""Simulation machinery above the engine: kernel locks in simulated time (lock.py), a
discrete-event driver that always advances the thread with the smallest clock (driver.py), and
a scheduler that places threads on logical CPUs and says how fast each runs (sched.py), and
sorted moments in time for retry checks (marks.py).

Nothing here knows about KVM: the kvm layer builds its locks, threads and placement from these.
"""

from .driver import Driver
from .lock import Lock
from .marks import TimeMarks
from .sched import Placement, place_threads

__all__ = ["Driver", "Lock", "Placement", "TimeMarks", "place_threads"]
