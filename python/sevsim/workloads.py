"""Tenant workloads: generators (working-set, streaming, random, Zipf) and recorded traces.

A workload produces line-aligned byte offsets within its footprint and a write flag per access,
as numpy arrays; the scenario adds the tenant's base address and runs them in one engine call.
Traces: numpy `.npy` (a 1-D integer array of addresses, or a structured array with fields `addr`
and optionally `write`), `.npz` (arrays `addr` and optionally `write`), or the text output of
`valgrind --tool=lackey --trace-mem=yes` (lines " L addr,size", " S addr,size", " M addr,size";
instruction fetches "I ..." are skipped). Trace addresses are folded into the tenant's footprint.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import numpy as np

from .config import parse_size

LINE = 64


@dataclass
class Workload:
    kind: str
    footprint: int
    write_fraction: float = 0.3
    alpha: float = 1.1
    trace: tuple[np.ndarray, np.ndarray] | None = None
    _pos: int = 0
    _cdf: np.ndarray | None = None

    def next(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """The next n accesses: (offsets uint64, write bool)."""
        lines = max(1, self.footprint // LINE)
        if self.kind == "working-set":
            # sweep the working set over and over, as a cache-resident loop does
            idx = (np.arange(self._pos, self._pos + n, dtype=np.int64) % lines).astype(np.uint64)
            self._pos = (self._pos + n) % lines
        elif self.kind == "streaming":
            idx = (np.arange(self._pos, self._pos + n, dtype=np.int64) % lines).astype(np.uint64)
            self._pos = (self._pos + n) % lines
        elif self.kind == "random":
            idx = rng.integers(0, lines, n, dtype=np.uint64)
        elif self.kind == "zipf":
            if self._cdf is None:  # computed once per workload, not per batch
                cdf = np.cumsum(np.arange(1, lines + 1, dtype=np.float64) ** -self.alpha)
                self._cdf = cdf / cdf[-1]
            idx = np.minimum(np.searchsorted(self._cdf, rng.random(n)), lines - 1).astype(np.uint64)
        elif self.kind == "trace":
            addr, write = self.trace
            sel = (np.arange(self._pos, self._pos + n) % len(addr))
            self._pos = (self._pos + n) % len(addr)
            return (addr[sel] % np.uint64(lines * LINE)) // LINE * LINE, write[sel]
        else:  # pragma: no cover - checked in make()
            raise ValueError(self.kind)
        write = rng.random(n) < self.write_fraction
        return idx * LINE, write


KINDS = ("working-set", "streaming", "random", "zipf")


def make(spec: str, footprint: int | str, write_fraction: float = 0.3) -> Workload:
    """A workload from a spec: one of KINDS (zipf may carry its exponent: "zipf:1.2"), or a trace
    file path ("trace:PATH" or a path ending in .npy, .npz, .txt, .out, .lackey)."""
    fp = parse_size(footprint) if isinstance(footprint, str) else int(footprint)
    if fp < LINE:
        raise ValueError(f"workload footprint must be at least 64 bytes, got {fp}")
    if not 0.0 <= write_fraction <= 1.0:
        raise ValueError(f"write fraction must be in [0, 1], got {write_fraction}")
    if spec.startswith("trace:") or os.path.splitext(spec)[1] in (".npy", ".npz", ".txt", ".out", ".lackey"):
        path = spec[len("trace:"):] if spec.startswith("trace:") else spec
        return Workload("trace", fp, trace=load_trace(path))
    kind, _, arg = spec.partition(":")
    if kind not in KINDS:
        raise ValueError(f"unknown workload {spec!r}; valid: {', '.join(KINDS)}, zipf:ALPHA, trace:PATH")
    w = Workload(kind, fp, write_fraction)
    if arg:
        if kind != "zipf":
            raise ValueError(f"workload {kind!r} takes no argument (got {spec!r})")
        try:
            w.alpha = float(arg)
        except ValueError:
            raise ValueError(f"zipf exponent must be a number, got {arg!r}") from None
        if not w.alpha > 0:
            raise ValueError(f"zipf exponent must be positive, got {w.alpha}")
    return w


_LACKEY = re.compile(r"^\s*([LSMI])\s+([0-9a-fA-F]+),(\d+)\s*$")


def load_trace(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(addresses uint64, write bool) from a trace file; ValueError naming the file and the problem."""
    if not os.path.exists(path):
        raise ValueError(f"trace {path}: no such file")
    ext = os.path.splitext(path)[1]
    if ext not in (".npy", ".npz"):
        return _load_lackey(path)
    try:
        if ext == ".npy":
            a = np.load(path, allow_pickle=False)
            fields = a.dtype.names or ()
            cols = {f: a[f] for f in fields} if fields else {"addr": a}
        else:
            with np.load(path, allow_pickle=False) as z:
                cols = {k: z[k] for k in z.files}
    except Exception as e:  # truncated or corrupt files: numpy's own message, with the path
        raise ValueError(f"trace {path}: cannot read it ({e})") from None
    if "addr" not in cols:
        raise ValueError(f"trace {path}: needs an 'addr' array or field, has {sorted(cols)}")
    addr = cols["addr"]
    write = cols.get("write", np.zeros(len(np.atleast_1d(addr)), bool))
    addr = np.asarray(addr)
    write = np.asarray(write)
    if addr.ndim != 1 or not np.issubdtype(addr.dtype, np.integer):
        raise ValueError(f"trace {path}: addresses must be a 1-D integer array, got {addr.dtype} {addr.shape}")
    if len(addr) == 0:
        raise ValueError(f"trace {path}: empty")
    if write.shape != addr.shape:
        raise ValueError(f"trace {path}: 'write' has {write.shape} entries, 'addr' {addr.shape}")
    if np.issubdtype(addr.dtype, np.signedinteger) and (addr < 0).any():
        raise ValueError(f"trace {path}: negative addresses")
    return addr.astype(np.uint64), write.astype(bool)


def _load_lackey(path: str) -> tuple[np.ndarray, np.ndarray]:
    addrs: list[int] = []
    writes: list[bool] = []
    with open(path, "r", errors="replace") as f:
        for no, line in enumerate(f, 1):
            if not line.strip() or line.startswith("=="):
                continue  # blank lines and valgrind's own messages
            m = _LACKEY.match(line)
            if not m:
                raise ValueError(f"trace {path}:{no}: not a lackey record: {line.strip()[:60]!r}")
            op, addr, _size = m.groups()
            if op == "I":
                continue
            a = int(addr, 16)
            if op == "M":  # modify = a load then a store
                addrs += [a, a]
                writes += [False, True]
            else:
                addrs.append(a)
                writes.append(op == "S")
    if not addrs:
        raise ValueError(f"trace {path}: no data accesses")
    return np.array(addrs, dtype=np.uint64), np.array(writes, dtype=bool)
