"""Scenarios: one module per question, each naming the thread or commit it reproduces.

A scenario module defines NAME, SUMMARY, SOURCE, PARAMS ({name: (default, help)}),
DEFAULT_STRATEGIES and run(strategies, seed, reps, progress, **params) -> ResultTable. The registry
below is what `sevsim list` shows and `sevsim run` runs.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, Callable

from . import sev_teardown, snp_notifier_storm

SCENARIOS: dict[str, ModuleType] = {m.NAME: m for m in (sev_teardown, snp_notifier_storm)}
DEFAULT = sev_teardown.NAME


def get(name: str) -> ModuleType:
    try:
        return SCENARIOS[name]
    except KeyError:
        raise ValueError(f"unknown scenario {name!r}; valid: {', '.join(SCENARIOS)}") from None


def coerce(scenario: ModuleType, name: str, value: Any) -> Any:
    """Convert a parameter given as text (CLI) to the type of its default; ValueError naming it."""
    if name not in scenario.PARAMS:
        raise ValueError(f"scenario {scenario.NAME} has no parameter {name!r}; valid: {', '.join(scenario.PARAMS)}")
    default = scenario.PARAMS[name][0]
    if not isinstance(value, str):
        return value
    try:
        if isinstance(default, bool):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if default is None:
            return None if value.lower() in ("", "none", "default") else (value.lower() in ("1", "true", "yes", "on"))
        if isinstance(default, int):
            return int(value, 0)
        if isinstance(default, float):
            return float(value)
    except ValueError:
        raise ValueError(f"parameter {name}: {value!r} is not a valid {type(default).__name__}") from None
    return value


def run(name: str, *, strategies: list[str] | None = None, seed: int = 0, reps: int = 1,
        progress: Callable[[int, int, str], None] | None = None, **params: Any):
    """Run scenario `name` and return its ResultTable."""
    sc = get(name)
    for k in params:
        if k not in sc.PARAMS:
            raise ValueError(f"scenario {name} has no parameter {k!r}; valid: {', '.join(sc.PARAMS)}")
    merged = {k: v[0] for k, v in sc.PARAMS.items()}
    merged.update({k: coerce(sc, k, v) for k, v in params.items()})
    if reps < 1:
        raise ValueError(f"reps must be at least 1, got {reps}")
    return sc.run(strategies=list(strategies or sc.DEFAULT_STRATEGIES), seed=seed, reps=reps,
                  progress=progress, **merged)
