"""Scenario parameters: a default, a help text, a type and the values allowed.

Every parameter given to a scenario, from Python or as text from the command line (`--set`,
`--config`), goes through `Param.parse`, which converts it to the parameter's type and checks its
range, raising a ValueError that names the parameter, the value and what is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ..config import parse_size

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


@dataclass(frozen=True)
class Param:
    default: Any
    help: str
    #: "int", "float", "bool", "optbool" (None = the preset's), "size", "choice", "text"
    kind: str
    lo: float | None = None
    hi: float | None = None
    choices: tuple[str, ...] = ()
    #: extra check of a parsed value: returns an error text, or None
    check: Callable[[Any], str | None] | None = None

    def allowed(self) -> str:
        """What values are allowed, in words."""
        if self.kind == "bool":
            return "true or false"
        if self.kind == "optbool":
            return "true, false or none (the preset's)"
        if self.kind == "choice":
            return "one of " + ", ".join(self.choices)
        if self.kind == "size":
            rng = _range(self.lo, self.hi, size=True)
            return f"a size such as 64MiB{(', ' + rng) if rng else ''}"
        if self.kind in ("int", "float"):
            rng = _range(self.lo, self.hi)
            what = "an integer" if self.kind == "int" else "a number"
            return f"{what}{(' ' + rng) if rng else ''}"
        return "text"

    def parse(self, name: str, value: Any) -> Any:
        """`value` (text or a Python value) as this parameter's type, checked."""
        bad = ValueError(f"parameter {name}: {value!r} is not allowed; use {self.allowed()}")
        k = self.kind
        if k == "bool" or k == "optbool":
            if isinstance(value, bool):
                return value
            if k == "optbool" and (value is None or (isinstance(value, str) and value.lower() in ("none", "default", ""))):
                return None
            if isinstance(value, str) and value.lower() in _TRUE:
                return True
            if isinstance(value, str) and value.lower() in _FALSE:
                return False
            raise bad
        if k == "int":
            if isinstance(value, bool):
                raise bad
            if isinstance(value, str):
                try:
                    value = int(value.replace("_", ""), 0)
                except ValueError:
                    raise bad from None
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if not isinstance(value, int):
                raise bad
            self._in_range(name, value, bad)
        elif k == "float":
            if isinstance(value, bool):
                raise bad
            if isinstance(value, str):
                try:
                    value = float(value)
                except ValueError:
                    raise bad from None
            if not isinstance(value, (int, float)) or value != value or value in (float("inf"), float("-inf")):
                raise bad
            value = float(value)
            self._in_range(name, value, bad)
        elif k == "size":
            try:
                n = parse_size(value)
            except ValueError:
                raise bad from None
            self._in_range(name, n, bad)
            value = value if isinstance(value, str) else n
        elif k == "choice":
            if not isinstance(value, str) or value not in self.choices:
                raise bad
        elif not isinstance(value, str):
            raise bad
        if self.check is not None:
            msg = self.check(value)
            if msg:
                raise ValueError(f"parameter {name}: {value!r}: {msg}")
        return value

    def _in_range(self, name: str, v: float, bad: ValueError) -> None:
        if (self.lo is not None and v < self.lo) or (self.hi is not None and v > self.hi):
            raise bad


def _range(lo, hi, size: bool = False) -> str:
    f = _size_text if size else (lambda v: f"{v:g}" if isinstance(v, float) else str(v))
    if lo is not None and hi is not None:
        return f"in [{f(lo)}, {f(hi)}]"
    if lo is not None:
        return f">= {f(lo)}"
    if hi is not None:
        return f"<= {f(hi)}"
    return ""


def _size_text(n: int) -> str:
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return f"{n}B"


def Int(default: int, help: str, lo: int | None = None, hi: int | None = None) -> Param:
    return Param(default, help, "int", lo, hi)


def Float(default: float, help: str, lo: float | None = None, hi: float | None = None) -> Param:
    return Param(default, help, "float", lo, hi)


def Bool(default: bool, help: str) -> Param:
    return Param(default, help, "bool")


def OptBool(help: str) -> Param:
    return Param(None, help, "optbool")


def Size(default: str, help: str, lo: int | None = None, hi: int | None = None) -> Param:
    return Param(default, help, "size", lo, hi)


def Choice(default: str, help: str, choices: tuple[str, ...]) -> Param:
    return Param(default, help, "choice", choices=choices)


def Text(default: str, help: str, check: Callable[[Any], str | None] | None = None) -> Param:
    return Param(default, help, "text", check=check)


def check_preset(name: str) -> str | None:
    from .. import Host

    names = [n for n, _ in Host.presets()]
    return None if name in names else f"unknown preset; valid: {', '.join(names)}"


def check_workload(spec: str) -> str | None:
    from ..workloads import make

    try:
        make(spec, 1 << 20)
    except ValueError as e:
        return str(e)
    return None
