"""What a budgeted int8 export promises, and whether the data it is checked on can tell.

A budget (top-1 agreement with FP32 >= a, accuracy drop <= d points, output SQNR >= s dB) is judged on data
the ranges were not computed from: the `--eval` set when given, else a seeded held-out split of the
calibration set. The same data serve the final check of the written artifact, so the figure the budget
promises and the figure printed at the end are one measurement. Every agreement or accuracy figure carries
its Wilson 95 % interval, and a check set too small to resolve the budget is refused before any work: with
50 samples one flipped image is 2 points, so a 2-point budget cannot be told from its complement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.common.metrics import wilson

#: fraction of the calibration samples held out to check the budget when no --eval set is given
HELD_OUT_FRACTION = 0.25
MIN_HELD_OUT = 20
#: the check set must hold at least this many samples per point of allowed error (one flip <= half the budget)
FLIPS_PER_BUDGET = 2


def ci_text(p: float, n: int) -> str:
    lo, hi = wilson(p * n, n)
    return f"{p:.4f} (95% CI {lo:.3f}-{hi:.3f}, n={n})"


@dataclass(frozen=True)
class Budget:
    """What must hold on the check data: agreement >= min_agreement, accuracy drop <= max_accuracy_drop
    (fractions: 1 point is 0.01) and output SQNR >= min_sqnr_db, each only when given."""

    min_agreement: float | None = None
    max_accuracy_drop: float | None = None
    min_sqnr_db: float | None = None

    def __post_init__(self) -> None:
        if self.min_agreement is None and self.max_accuracy_drop is None and self.min_sqnr_db is None:
            raise EdgekitError("a fallback budget needs --min-agreement FRACTION, --max-accuracy-drop PCT and/or "
                               "--min-sqnr DB")
        if self.min_agreement is not None and not 0.0 < self.min_agreement <= 1.0:
            raise EdgekitError(f"--min-agreement must be a fraction in (0, 1], e.g. 0.98 (got {self.min_agreement})")
        if self.max_accuracy_drop is not None and not 0.0 <= self.max_accuracy_drop <= 1.0:
            raise EdgekitError(f"--max-accuracy-drop must be in [0, 100] percentage points (got "
                               f"{100 * self.max_accuracy_drop:g})")

    def holds(self, result: dict[str, Any]) -> bool:
        if self.min_agreement is not None and result["agreement"] < self.min_agreement - 1e-12:
            return False
        if self.min_sqnr_db is not None and (result.get("sqnr_db") or 200.0) < self.min_sqnr_db:
            return False
        drop = result.get("accuracy_drop", math.inf)
        return self.max_accuracy_drop is None or drop <= self.max_accuracy_drop + 1e-12

    def task_holds(self, result: dict[str, Any]) -> bool:
        """The task-metric part alone (agreement / accuracy drop), SQNR aside."""
        return Budget(self.min_agreement, self.max_accuracy_drop, None).holds(result) if (
            self.min_agreement is not None or self.max_accuracy_drop is not None) else True

    def allowed_error(self) -> float | None:
        """The smallest error the budget allows on a proportion (1 - agreement, or the accuracy drop)."""
        errs = [e for e in ((None if self.min_agreement is None else 1.0 - self.min_agreement),
                            self.max_accuracy_drop) if e is not None]
        return min(errs) if errs else None

    def samples_needed(self) -> int:
        err = self.allowed_error()
        if err is None:
            return MIN_HELD_OUT
        return max(MIN_HELD_OUT, math.ceil(FLIPS_PER_BUDGET / max(err, 1e-6) - 1e-9))

    def check_resolution(self, n: int, what: str) -> None:
        """Refuse a check set that cannot tell the budget from its complement (see the module docstring)."""
        need = self.samples_needed()
        if n < need:
            err = self.allowed_error() or 0.0
            raise EdgekitError(
                f"the budget allows {100 * err:g} points of error but is checked on {n} samples ({what}), where one "
                f"flipped sample is {100 / max(n, 1):.2g} points: pass --eval DATA with at least {need} samples "
                "(or more --calib-samples), or relax the budget")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.min_agreement is not None:
            out["min_agreement"] = self.min_agreement
        if self.max_accuracy_drop is not None:
            out["max_accuracy_drop"] = self.max_accuracy_drop
        if self.min_sqnr_db is not None:
            out["min_sqnr_db"] = self.min_sqnr_db
        return out


def with_intervals(result: dict[str, Any], n: int) -> dict[str, Any]:
    """`result` plus the Wilson 95 % interval of its agreement (and accuracy, with labels)."""
    out = dict(result)
    out["agreement_ci95"] = list(wilson(result["agreement"] * n, n))
    if "accuracy" in result:
        out["accuracy_ci95"] = list(wilson(result["accuracy"] * n, n))
    return out


def check_labels(budget: Budget | None, labels: bool) -> None:
    if budget is not None and budget.max_accuracy_drop is not None and not labels:
        raise EdgekitError("--max-accuracy-drop needs labels in the check data (an .npz with array y, or "
                           "zoo:digits); without labels use --min-agreement, which compares with FP32 only")


def split_calibration(cset, seed: int = 0, held_out: int | None = None):
    """(calibration part, held-out part) of a CalibrationSet, each with its own provenance."""
    from edgekit.data.calibration import CalibrationSet

    cal, held = split_held_out(cset.x, cset.y, seed, held_out=held_out)
    parts = []
    for idx, what in ((cal, "calibration part"), (held, "held-out part")):
        parts.append(CalibrationSet(np.ascontiguousarray(cset.x[idx]), None if cset.y is None else cset.y[idx],
                                    cset.source, cset.preprocessing, cset.available,
                                    f"{cset.selection}; {what}: {len(idx)} samples (seeded split, seed {seed})"))
    return parts[0], parts[1]


def split_held_out(x: np.ndarray, y: np.ndarray | None, seed: int = 0, fraction: float = HELD_OUT_FRACTION,
                   held_out: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Indices (calibration part, held-out part) of a seeded split; the ranges never see the held-out part.
    `held_out` (at least) that many samples are held out, e.g. what a budget needs to be resolved."""
    n = len(x)
    held = max(MIN_HELD_OUT, round(fraction * n), held_out or 0)
    if n - held < 1:
        raise EdgekitError(f"a budgeted export needs more than {held} calibration samples ({held} are held out to "
                           f"check the budget); got {n}: pass more with --calib / --calib-samples, or a separate "
                           "--eval set")
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[: n - held]), np.sort(order[n - held :])
