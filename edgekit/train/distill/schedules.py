"""Temperature and α schedules for soft-target distillation.

Every schedule maps training progress (a fraction in [0, 1]: epochs done plus the fraction of the current
epoch) to a value, so the same schedule means the same thing for 5 or 500 epochs and survives a resume.

- temperature: constant, staged (e.g. 5 -> 2 -> 1: soft targets early, when the student has most to learn
  from the teacher's dark knowledge, sharper ones late) or learnable (a bounded parameter trained with the
  student, optionally adversarially as in curriculum temperature distillation, CTKD);
- α (the weight of the KL term, 1 - α goes to cross-entropy): constant or linear (e.g. 0.7 -> 0.3: lean on
  the teacher first, on the labels last).

`parse_temperature` / `parse_alpha` read the CLI forms: `4`, `5,2,1`, `learnable`, `learnable:4`;
`0.7`, `0.7:0.3`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from edgekit.errors import EdgekitError


def _check_progress(progress: float) -> float:
    return min(max(float(progress), 0.0), 1.0)


class Schedule(Protocol):
    def __call__(self, progress: float) -> float | torch.Tensor: ...


@dataclass(frozen=True)
class ConstantTemperature:
    value: float = 4.0

    def __post_init__(self) -> None:
        if not self.value > 0:
            raise EdgekitError(f"temperature must be > 0 (got {self.value}); typical values are 1-8")

    def __call__(self, progress: float) -> float:
        return float(self.value)

    def describe(self) -> str:
        return f"constant {self.value:g}"


@dataclass(frozen=True)
class StagedTemperature:
    """Piecewise-constant: `values[i]` from `milestones[i-1]` to `milestones[i]` (fractions of training).

    Without milestones the stages are equal slices of training: (5, 2, 1) is 5 for the first third, and so on.
    """

    values: tuple[float, ...] = (5.0, 2.0, 1.0)
    milestones: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if not self.values or any(not v > 0 for v in self.values):
            raise EdgekitError(f"staged temperature needs positive values (got {list(self.values)}), e.g. 5,2,1")
        if self.milestones is not None:
            ms = list(self.milestones)
            if len(ms) != len(self.values) - 1 or any(not 0 < m < 1 for m in ms) or ms != sorted(ms):
                raise EdgekitError(
                    f"staged temperature with {len(self.values)} values needs {len(self.values) - 1} increasing "
                    f"milestones in (0, 1) (got {ms})"
                )

    def _bounds(self) -> list[float]:
        if self.milestones is not None:
            return list(self.milestones)
        n = len(self.values)
        return [i / n for i in range(1, n)]

    def __call__(self, progress: float) -> float:
        p = _check_progress(progress)
        for value, bound in zip(self.values, self._bounds(), strict=False):
            if p < bound:
                return float(value)
        return float(self.values[-1])

    def describe(self) -> str:
        return "staged " + " -> ".join(f"{v:g}" for v in self.values)


class _Reverse(torch.autograd.Function):
    """Identity forward, negated gradient backward (gradient reversal)."""

    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        return -grad


class LearnableTemperature(nn.Module):
    """T = low + (high - low) * sigmoid(raw): bounded, so the T² factor cannot run away.

    With `adversarial` the gradient reaching T is reversed (CTKD): T moves to make the soft-target loss
    harder, a curriculum that the student then has to follow.
    """

    def __init__(self, init: float, low: float, high: float, adversarial: bool = False) -> None:
        super().__init__()
        frac = (init - low) / (high - low)
        self.low, self.high, self.adversarial = low, high, adversarial
        self.raw = nn.Parameter(torch.tensor(math.log(frac / (1 - frac)), dtype=torch.float32))

    def forward(self, progress: float = 0.0) -> torch.Tensor:
        t = self.low + (self.high - self.low) * torch.sigmoid(self.raw)
        return _Reverse.apply(t) if self.adversarial else t

    def value(self) -> float:
        return float(self.low + (self.high - self.low) * torch.sigmoid(self.raw.detach()))

    def describe(self) -> str:
        kind = "adversarial" if self.adversarial else "learnable"
        return f"{kind} (now {self.value():.3g}, bounds {self.low:g}-{self.high:g})"


@dataclass(frozen=True)
class LearnableTemperatureConfig:
    """A temperature learned with the student; `build()` gives the nn.Module the loss owns."""

    init: float = 4.0
    low: float = 1.0
    high: float = 10.0
    adversarial: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.low < self.init < self.high:
            raise EdgekitError(
                f"learnable temperature needs 0 < low < init < high (got low={self.low}, init={self.init}, "
                f"high={self.high})"
            )

    def describe(self) -> str:
        kind = "adversarial" if self.adversarial else "learnable"
        return f"{kind} from {self.init:g} (bounds {self.low:g}-{self.high:g})"

    def build(self) -> LearnableTemperature:
        return LearnableTemperature(self.init, self.low, self.high, self.adversarial)


@dataclass(frozen=True)
class ConstantAlpha:
    value: float = 0.9

    def __post_init__(self) -> None:
        if not 0.0 <= self.value <= 1.0:
            raise EdgekitError(f"alpha must be within [0, 1] (got {self.value}): alpha*KL + (1-alpha)*CE")

    def __call__(self, progress: float) -> float:
        return float(self.value)

    def describe(self) -> str:
        return f"constant {self.value:g}"


@dataclass(frozen=True)
class LinearAlpha:
    start: float = 0.7
    end: float = 0.3

    def __post_init__(self) -> None:
        for v in (self.start, self.end):
            if not 0.0 <= v <= 1.0:
                raise EdgekitError(f"alpha must be within [0, 1] (got {v}): alpha*KL + (1-alpha)*CE")

    def __call__(self, progress: float) -> float:
        p = _check_progress(progress)
        return float(self.start + (self.end - self.start) * p)

    def describe(self) -> str:
        return f"linear {self.start:g} -> {self.end:g}"


TemperatureSpec = ConstantTemperature | StagedTemperature | LearnableTemperatureConfig
AlphaSpec = ConstantAlpha | LinearAlpha


def _floats(text: str, what: str, example: str) -> list[float]:
    try:
        return [float(p) for p in text.split(",")]
    except ValueError:
        raise EdgekitError(f"malformed {what} '{text}': expected {example}") from None


def parse_temperature(text: str | float) -> TemperatureSpec:
    """'4' constant; '5,2,1' staged; 'learnable' or 'learnable:4'; 'adversarial[:4]' (CTKD)."""
    if isinstance(text, int | float):
        return ConstantTemperature(float(text))
    s = text.strip().lower()
    for kind in ("learnable", "adversarial"):
        if s.startswith(kind):
            rest = s[len(kind):]
            init = 4.0
            if rest:
                if not rest.startswith(":"):
                    break
                init = _floats(rest[1:], "--temperature", f"{kind}:4")[0]
            return LearnableTemperatureConfig(init=init, adversarial=kind == "adversarial")
    values = _floats(s, "--temperature", "a number (4), stages (5,2,1) or learnable[:4]")
    return ConstantTemperature(values[0]) if len(values) == 1 else StagedTemperature(tuple(values))


def parse_alpha(text: str | float) -> AlphaSpec:
    """'0.9' constant; '0.7:0.3' linear from 0.7 to 0.3 over training."""
    if isinstance(text, int | float):
        return ConstantAlpha(float(text))
    parts = text.split(":")
    values = [_floats(p, "--alpha", "a number in [0, 1] (0.9) or start:end (0.7:0.3)")[0] for p in parts]
    if len(values) == 1:
        return ConstantAlpha(values[0])
    if len(values) == 2:
        return LinearAlpha(values[0], values[1])
    raise EdgekitError(f"malformed --alpha '{text}': expected a number (0.9) or start:end (0.7:0.3)")
