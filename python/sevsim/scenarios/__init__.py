"""Scenarios: one module per question, each naming the thread or commit it reproduces.

A scenario module defines NAME, SUMMARY, SOURCE, PARAMS ({name: params.Param}), DEFAULT_STRATEGIES,
SUMMARY_COLUMNS (the terminal's), METRICS (summarised over repetitions), PLOTS, LEGEND and
run(strategies, seed, reps, progress, **params) -> ResultTable. The registry
below is what `sevsim list` shows and `sevsim run` runs.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, Callable, Sequence

from . import nested_asid, sev_teardown, snp_notifier_storm, snp_pagein, tlb_tagging

SCENARIOS: dict[str, ModuleType] = {m.NAME: m for m in (sev_teardown, snp_notifier_storm, nested_asid, tlb_tagging, snp_pagein)}
DEFAULT = sev_teardown.NAME


def get(name: str) -> ModuleType:
    try:
        return SCENARIOS[name]
    except KeyError:
        raise ValueError(f"unknown scenario {name!r}; valid: {', '.join(SCENARIOS)}") from None


def coerce(scenario: ModuleType, name: str, value: Any) -> Any:
    """A parameter given as text (CLI, config file) or as a Python value, converted to its type and
    checked against its range; ValueError naming it, the value and what is allowed."""
    if name not in scenario.PARAMS:
        raise ValueError(f"scenario {scenario.NAME} has no parameter {name!r}; valid: {', '.join(scenario.PARAMS)}")
    return scenario.PARAMS[name].parse(name, value)


def defaults(sc: ModuleType, given: dict[str, Any]) -> dict[str, Any]:
    """Every parameter's default for a run given the parameters `given`: the PARAMS defaults, or,
    where `given` has `scale=small` and the scenario a `SMALL` table, its scaled-down values."""
    merged = {k: v.default for k, v in sc.PARAMS.items()}
    if "scale" in given and getattr(sc, "SMALL", None) and coerce(sc, "scale", given["scale"]) == "small":
        merged.update({k: coerce(sc, k, v) for k, v in sc.SMALL.items()})
    return merged


def run(name: str, *, strategies: str | Sequence[str] | None = None, seed: int = 0, reps: int | None = None,
        progress: Callable[..., None] | None = None, **params: Any):
    """Run scenario `name` and return its ResultTable, one row per strategy x repetition.

    `strategies`: one strategy name, a comma-separated string or a list (default: the scenario's
    DEFAULT_STRATEGIES); `seed`: repetition r uses seed + r; `reps`: repetitions (>= 1; default
    the scenario's DEFAULT_REPS, else 1);
    `progress(done, total, what, row=None)`: called before each run and after it with its row;
    `params`: the scenario's parameters (see its PARAMS, `sevsim list NAME`), as values or as
    text. Every parameter is checked before anything runs: ValueError naming the one that is not
    allowed."""
    sc = get(name)
    for k in params:
        if k not in sc.PARAMS:
            raise ValueError(f"scenario {name} has no parameter {k!r}; valid: {', '.join(sc.PARAMS)}")
    merged = defaults(sc, params)
    merged.update({k: coerce(sc, k, v) for k, v in params.items()})
    if reps is None:
        reps = getattr(sc, "DEFAULT_REPS", 1)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an integer in [0, 2**63), got {seed!r}")
    if isinstance(reps, bool) or not isinstance(reps, int) or not 1 <= reps <= 10_000:
        raise ValueError(f"reps must be an integer in [1, 10000], got {reps!r}")
    return sc.run(strategies=strategy_list(strategies, sc), seed=seed, reps=reps, progress=progress, **merged)


def strategy_list(strategies: str | Sequence[str] | None, sc: ModuleType) -> list[str]:
    """The strategies asked for, checked: a name, a comma-separated string or a list."""
    from ..kvm import STRATEGIES

    valid = getattr(sc, "STRATEGY_NAMES", None) or tuple(STRATEGIES)
    if strategies is None:
        return list(sc.DEFAULT_STRATEGIES)
    if isinstance(strategies, str):
        strategies = [s.strip() for s in strategies.split(",") if s.strip()]
    out = list(strategies)
    if not out:
        raise ValueError("strategies: name at least one strategy")
    for s in out:
        if s not in valid:
            raise ValueError(f"unknown strategy {s!r} for {sc.NAME}; valid: {', '.join(valid)}")
    return out
