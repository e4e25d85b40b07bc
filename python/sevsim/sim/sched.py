"""Threads on logical CPUs: where the host's scheduler puts vCPU threads and how fast each runs.

Placement is CFS-like for threads that stay busy (select_idle_sibling() and the load balancer,
kernel/sched/fair.c): first one thread per idle core, cores taken alternately from each socket
(NUMA balancing spreads an unpinned VM's threads over the nodes [assumed]); then the SMT siblings
of those cores; then, with more threads than CPUs, further threads stacked round-robin on the
CPUs, which CFS then time-slices.

Speed: a thread's CPU work takes `slow` times its nominal cycles, the product of
  * its CPU's share: k threads runnable on one CPU each get 1/k (CFS's fair share; processor
    sharing in place of 3 ms slices, the same mean [assumed]). A lock holder that shares its CPU
    holds the lock k times longer: lock-holder preemption stalls its waiters;
  * SMT: with its sibling busy, a thread runs at Y/2 of its speed alone, Y = `smt_pair_yield`
    (two busy siblings together do Y times one alone [assumed]);
  * host threads: with no idle CPU left, the host's own threads (QEMU main loops, kworkers, RCU,
    kcompactd) take a share `background` of every CPU [assumed]; with idle CPUs they run there.
Threads are assumed always runnable (vCPUs faulting, clearing, or spinning with IRQs off in
accept_memory()); a mutex waiter that sleeps would free its CPU, which this ignores [assumed].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Placement:
    cpu: np.ndarray          # logical CPU of each thread
    slow: np.ndarray         # CPU-work multiplier of each thread (>= 1)
    idle_cpus: np.ndarray    # CPUs with no thread
    per_cpu: np.ndarray      # threads on each CPU


def place_threads(n_threads: int, cpu_core: np.ndarray, core_socket: np.ndarray, *, smt_pair_yield: float,
                  background: float) -> Placement:
    """Place `n_threads` always-busy threads on the CPUs of a host whose CPU c is on core
    cpu_core[c], core k on socket core_socket[k] (module comment)."""
    if n_threads < 0:
        raise ValueError(f"n_threads = {n_threads} must be >= 0")
    if not 0 < smt_pair_yield <= 2:
        raise ValueError(f"smt_pair_yield = {smt_pair_yield} must be in (0, 2]")
    if not 0 <= background < 1:
        raise ValueError(f"background = {background} must be in [0, 1)")
    cpu_core = np.asarray(cpu_core)
    n_cpus = len(cpu_core)
    n_cores = int(cpu_core.max()) + 1
    threads_of_core: list[list[int]] = [[] for _ in range(n_cores)]
    for c in range(n_cpus):
        threads_of_core[int(cpu_core[c])].append(c)
    # cores alternately from each socket, in order within a socket
    sockets = sorted(set(int(s) for s in core_socket))
    by_socket = [[k for k in range(n_cores) if int(core_socket[k]) == s] for s in sockets]
    core_order = [by_socket[i % len(sockets)][i // len(sockets)] for i in range(n_cores)
                  if i // len(sockets) < len(by_socket[i % len(sockets)])]
    order: list[int] = []
    smt = max(len(t) for t in threads_of_core)
    for level in range(smt):
        order += [threads_of_core[k][level] for k in core_order if level < len(threads_of_core[k])]
    cpu = np.array([order[i % n_cpus] for i in range(n_threads)], dtype=np.int64)
    per_cpu = np.bincount(cpu, minlength=n_cpus) if n_threads else np.zeros(n_cpus, dtype=np.int64)
    idle = np.nonzero(per_cpu == 0)[0]
    sibling_busy = np.zeros(n_cpus, dtype=bool)
    for ts in threads_of_core:
        for c in ts:
            sibling_busy[c] = any(per_cpu[o] > 0 for o in ts if o != c)
    slow = per_cpu[cpu].astype(np.float64) if n_threads else np.zeros(0)
    slow = slow * np.where(sibling_busy[cpu], 2.0 / smt_pair_yield, 1.0)
    if len(idle) == 0:
        slow = slow / (1.0 - background)
    return Placement(cpu=cpu, slow=slow, idle_cpus=idle, per_cpu=per_cpu)
