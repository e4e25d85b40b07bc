"""sevsim: is a host's cache, TLB and RMP maintenance for confidential VMs safe, and what does it cost?

The engine (``sevsim._core``, Rust) models the hardware: caches with key-tagged lines and coherence,
memory ownership, per-CPU clocks, the cache-maintenance instructions and the oracles that catch
corruption. Policies and scenarios are Python, on top of it.
"""

from ._core import Host, Violation, parse_bytes, __version__

__all__ = ["Host", "Violation", "parse_bytes", "__version__"]
