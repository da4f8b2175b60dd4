"""Beta schedules: the teacher's probability per turn at iteration i (1-based), named in config.

    constant(value)               beta_i = value
    linear(start, end, steps)     from start to end over `steps` iterations, then end
    exponential(start, decay, floor)  beta_i = max(floor, start * decay^(i - 1))
    paper(floor=0.6, start=1.0, step=0.2)  beta_i = max(floor, start - step (i - 1)) (PAPER.md)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

Schedule = Callable[[int], float]


def _check_unit(name: str, value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"beta schedule: {name}={value!r} is outside [0, 1]")
    return float(value)


@dataclasses.dataclass(frozen=True)
class Constant:
    value: float = 1.0

    def __post_init__(self):
        _check_unit("value", self.value)

    def __call__(self, iteration: int) -> float:
        return _at(iteration, self.value)


@dataclasses.dataclass(frozen=True)
class Linear:
    start: float = 1.0
    end: float = 0.0
    steps: int = 4   # iterations to go from start to end

    def __post_init__(self):
        _check_unit("start", self.start)
        _check_unit("end", self.end)
        if self.steps < 1:
            raise ValueError(f"beta schedule: steps={self.steps!r} must be >= 1")

    def __call__(self, iteration: int) -> float:
        fraction = min(max(iteration - 1, 0) / self.steps, 1.0)
        return _at(iteration, self.start + (self.end - self.start) * fraction)


@dataclasses.dataclass(frozen=True)
class Exponential:
    start: float = 1.0
    decay: float = 0.5
    floor: float = 0.0

    def __post_init__(self):
        _check_unit("start", self.start)
        _check_unit("decay", self.decay)
        _check_unit("floor", self.floor)

    def __call__(self, iteration: int) -> float:
        return _at(iteration, max(self.floor, self.start * self.decay ** (iteration - 1)))


@dataclasses.dataclass(frozen=True)
class Paper:
    """PAPER.md: beta_i = max(0.6, 1.0 - 0.2 (i - 1))."""

    floor: float = 0.6
    start: float = 1.0
    step: float = 0.2

    def __post_init__(self):
        _check_unit("floor", self.floor)
        _check_unit("start", self.start)
        _check_unit("step", self.step)

    def __call__(self, iteration: int) -> float:
        return _at(iteration, max(self.floor, self.start - self.step * (iteration - 1)))


def _at(iteration: int, value: float) -> float:
    if iteration < 1:
        raise ValueError(f"beta schedule: iterations count from 1, got {iteration}")
    return min(max(value, 0.0), 1.0)


SCHEDULES: dict[str, type] = {"constant": Constant, "linear": Linear,
                              "exponential": Exponential, "paper": Paper}


def make_schedule(name: str, params: Mapping[str, Any] | None = None) -> Schedule:
    """The schedule `name` with its parameters; a clear error for unknown names or fields."""
    if name not in SCHEDULES:
        raise ValueError(f"beta schedule {name!r} does not exist; choose from {sorted(SCHEDULES)}")
    cls = SCHEDULES[name]
    params = dict(params or {})
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - fields)
    if unknown:
        raise ValueError(f"beta schedule {name!r}: unknown parameters {unknown} (has {sorted(fields)})")
    return cls(**params)
