"""Small helpers for parameters."""

from __future__ import annotations

from ._core import parse_bytes


def parse_size(v: int | str) -> int:
    """Bytes from an int or a string such as "64MiB" (ValueError otherwise)."""
    if isinstance(v, bool):
        raise ValueError(f"not a size: {v!r}")
    if isinstance(v, int):
        if v < 0:
            raise ValueError(f"size must not be negative, got {v}")
        return v
    if isinstance(v, str):
        return parse_bytes(v)
    raise ValueError(f"not a size: {v!r}")
