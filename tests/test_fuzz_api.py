"""Fuzz the whole public `Host` API with arbitrary arguments (issue 15, "tests that stay").

Every public method (found by introspection, so new calls are fuzzed as they land) is called with
arguments drawn from values that break bindings: extreme and negative ints, floats, strings, None,
lists, dicts, and numpy arrays of every length class and of the wrong dtypes, mixed with values
that are valid on the small host under test so that calls get past their first check. A call may
succeed, or raise ValueError/TypeError/OverflowError/MemoryError whose message names one of the
method's parameters (or the method). It must never raise anything else (a Rust panic surfaces as
pyo3's PanicException, a BaseException), and a rejected call must leave every observable of the
host as it was.

`SEVSIM_FUZZ_EXAMPLES=100000 pytest tests/test_fuzz_api.py` runs longer locally; CI runs the
default (a few thousand calls).
"""

import inspect
import os

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sevsim

EXAMPLES = int(os.environ.get("SEVSIM_FUZZ_EXAMPLES", "1000"))
MEMORY = 16 << 20

# calls that build or describe rather than act on a host, and accessors
SKIP = {"from_preset", "presets", "counter_names", "violation_causes"}
ALLOWED = (ValueError, TypeError, OverflowError, MemoryError)


def _methods():
    out = {}
    for name in dir(sevsim.Host):
        if name.startswith("_") or name in SKIP:
            continue
        attr = getattr(sevsim.Host, name)
        if not callable(attr):
            continue
        try:
            sig = inspect.signature(attr)
        except (TypeError, ValueError):
            continue
        params = [p for p in sig.parameters.values() if p.name not in ("self", "$self")]
        out[name] = params
    return out


METHODS = _methods()
NAMES = sorted(METHODS)

ints = st.one_of(
    st.sampled_from([0, 1, 2, 3, 7, 8, 63, 64, 511, 512, 1023, 1024, 4095, 4096, 65535, 65536,
                     2**21, 2**30, 2**31 - 1, 2**32, 2**47, 2**48, 2**52, 2**62, 2**63 - 1, 2**63,
                     2**64 - 1, 2**64, 2**100, -1, -2**63, -2**64]),
    st.integers(0, 16).map(lambda p: p * 4096),          # valid page addresses of the host
    st.integers(0, MEMORY // 64 - 1).map(lambda x: x * 64),  # valid line addresses
    st.integers(-2**70, 2**70),
)
dtypes = st.sampled_from([np.uint64, np.uint32, np.uint16, np.uint8, np.int64, np.int32, np.bool_, np.float64])


@st.composite
def arrays(draw):
    dt = draw(dtypes)
    n = draw(st.sampled_from([0, 1, 2, 5, 64, 513]))
    if dt is np.bool_:
        return draw(st.lists(st.booleans(), min_size=n, max_size=n).map(lambda v: np.array(v, dtype=np.bool_)))
    if dt is np.float64:
        return np.linspace(-1.0, 1e20, n)
    info = np.iinfo(dt)
    kind = draw(st.sampled_from(["small", "pages", "extreme"]))
    if kind == "small":
        a = np.arange(n, dtype=np.int64) % 8
    elif kind == "pages":
        a = (np.arange(n, dtype=np.int64) % 16) * 4096
    else:
        a = np.full(n, info.max if draw(st.booleans()) else info.min, dtype=np.int64 if info.min < 0 else np.uint64)
    a = a.astype(dt)
    if n > 2 and draw(st.booleans()):
        a = a[::2]  # not contiguous
    return a


values = st.one_of(
    ints, ints, ints,
    st.booleans(),
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["", "host", "svm", "vmx", "guest", "nested", "4K", "2M", "1G", "l1d", "l2", "l3",
                     "single", "all", "context", "global", "16MiB", "-1KiB", "x" * 300]),
    st.lists(ints, max_size=4),
    st.dictionaries(st.sampled_from(["a", "size", "ways"]), ints, max_size=2),
    arrays(), arrays(),
)


@st.composite
def calls(draw):
    name = draw(st.sampled_from(NAMES))
    params = METHODS[name]
    args, kwargs = [], {}
    for p in params:
        required = p.default is inspect.Parameter.empty
        if not required and not draw(st.booleans()):
            continue
        if draw(st.integers(0, 40)) == 0:
            continue  # a missing argument now and then
        v = draw(values)
        if p.kind == p.KEYWORD_ONLY:
            kwargs[p.name] = v
        else:
            if kwargs or len(args) != params.index(p):
                kwargs[p.name] = v
            else:
                args.append(v)
    if draw(st.integers(0, 40)) == 0:
        args.append(draw(values))  # one too many
    return name, args, kwargs


def plain(x):
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, dict):
        return {k: plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    return x


def observe(h):
    """Everything a caller can see of the host's state (heap_bytes aside: scratch buffers)."""
    tables = []
    for ctx in range(64):
        try:
            tables.append(h.context(ctx))
        except ValueError:
            break
    return plain((
        h.clocks.tolist(),
        {k: v.tolist() for k, v in h.counters.items()},
        h.violation_counts(), len(h.violations), h.max_violations,
        h.cached_lines(), h.cached_lines(dirty=True), h.audit(), h.directory_entries,
        h.snp_enabled, h.rmp_bytes, h.tlb_bytes, h.invalidation_stats(), h.context_counters(),
        [h.tlb_entries(c) for c in range(h.cpu_count)], [h.current_context(c) for c in range(h.cpu_count)],
        [h.cpu_cr3(c) for c in range(h.cpu_count)], tables,
        [h.owner(p * 4096) for p in range(0, MEMORY // 4096, 97)],
        [h.rmp_entry(p * 4096) for p in range(0, MEMORY // 4096, 97)],
    ))


def _setup(h):
    """A little state to act on: an SNP host with a guest, tables, contexts and warm caches."""
    h.snp_enable()
    g, n = h.create_table("guest"), h.create_table("nested")
    h.map(n, 0, 0, "2M")
    h.map(g, 0x1000, 0x2000)
    h.create_context("svm", g, nested=n, tag=1, key=1)
    h.access(np.arange(8, dtype=np.uint32), np.arange(0, 8 * 4096, 4096, dtype=np.uint64))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(st.lists(calls(), min_size=1, max_size=6), st.booleans())
def test_any_call_with_any_arguments_is_served_or_refused_by_name_and_never_panics(seq, snp):
    h = sevsim.Host.from_preset("tiny", memory=MEMORY)
    if snp:
        _setup(h)
    for name, args, kwargs in seq:
        before = observe(h)
        try:
            getattr(h, name)(*args, **kwargs)
        except ALLOWED as e:
            msg = str(e)
            names = [p.name for p in METHODS[name]] + [name, "argument", "overrides"]
            assert msg and any(n in msg for n in names), f"{name}{tuple(args)}{kwargs}: {type(e).__name__}: {msg!r} names no parameter"
            assert observe(h) == before, f"{name}{tuple(args)}{kwargs} was refused ({msg}) but changed the host"
        except BaseException as e:  # a PanicException, SystemError, anything else
            raise AssertionError(f"{name}{tuple(args)}{kwargs}: {type(e).__module__}.{type(e).__name__}: {e}") from e
