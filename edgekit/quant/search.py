"""The budgeted search: start from full INT8 and climb the cheapest rungs first until the budget holds on
the check data: all-int8 techniques (no latency cost), then int16 weights on chosen layers (where the backend
runs 16-bit Q/DQ), then whole layers kept in float.

Why measured and not guessed: which layers int8 hurts depends on the weights and the data, and layer-local
error is a poor predictor because errors add up downstream. So every candidate is ranked by what it alone
does to the model's output (output SQNR), and every step is checked on data the ranges were not computed
from, with the task metric (agreement / accuracy drop) and the SQNR together deciding.

A search that cannot meet the budget does not raise: it returns its best effort with `holds` false, and the
export decides (an error, exit 2, or the best effort written with `budget: missed` when asked to keep it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from edgekit.quant.budget import Budget, describe
from edgekit.quant.qgraph import QuantSetup, build_and_evaluate

#: techniques that keep every layer int8 (so cost no latency), tried in this order before any layer is
#: widened: the cheapest fix first. A technique the user already asked for is not repeated.
FIRST_TRY: tuple[str, ...] = ("equalize",)
#: most layers the int16 rung widens before float fallback takes over
MAX_INT16_LAYERS = 12
#: layers whose int16 gain the search measures (those with the worst int8 weights), one quantized graph each
INT16_MEASURED = 16


@dataclass
class FallbackPlan:
    """The layers kept in higher precision and how the search got there (all measured on the check data)."""

    budget: Budget | None
    kept: list[str]
    kept_precision: str
    start: dict[str, Any]  # full int8
    final: dict[str, Any]
    steps: list[dict[str, Any]]
    ranking: list[dict[str, Any]]
    held_out: int
    cost: dict[str, Any] = field(default_factory=dict)
    #: the all-int8 techniques the budget tried before widening layers (see `budgeted_search`)
    techniques: list[dict[str, Any]] = field(default_factory=list)
    #: layers given int16 weights (the rung between int8 and float), and how they were chosen
    int16: list[str] = field(default_factory=list)
    int16_steps: list[dict[str, Any]] = field(default_factory=list)
    holds: bool = True
    checked_on: str = "held-out calibration samples"

    @property
    def techniques_applied(self) -> list[str]:
        return [t["technique"] for t in self.techniques if t["applied"]]

    def to_json(self) -> dict[str, Any]:
        return {"budget": self.budget.to_json() if self.budget else None, "held_out_samples": self.held_out,
                "checked_on": self.checked_on, "holds": self.holds,
                "kept_layers": self.kept, "kept_precision": self.kept_precision,
                "int16_layers": self.int16, "int16_steps": self.int16_steps,
                "full_int8": self.start, "int8_techniques": self.techniques,
                "int8_techniques_applied": self.techniques_applied, "result": self.final, "steps": self.steps,
                "ranking": self.ranking[:10], "cost": self.cost,
                "method": "first the all-int8 techniques in int8_techniques (each kept when it met the budget or "
                          "raised the output SQNR); then, where the backend runs 16-bit Q/DQ, int16 weights on the "
                          "layers whose int16 weights alone raised the output SQNR most per MAC; then layers ranked "
                          "by the output-SQNR gain of keeping each alone in float, added in that order until the "
                          "budget held on the check data, then any layer not needed for the budget dropped again"}


def budgeted_search(setup: QuantSetup, budget: Budget, cal, method: str, method_opts: dict[str, Any], *,
                    applied: Sequence[str] = (), first_try: Sequence[str] | None = None,
                    int16_rung: bool = True, log: Callable[[str], None] | None = None
                    ) -> tuple[QuantSetup, FallbackPlan]:
    """All-int8 techniques first, then the int16 rung, then layer fallback (`search`) if still needed.

    Each technique in `first_try` (default FIRST_TRY) not in `applied` is tried on the current graph while the
    budget fails; it is kept when the budget then holds or the output SQNR rose, else dropped. One that comes
    before an applied technique in ptq_improve.ORDER is skipped (recorded with `skipped`): applied after it,
    it would undo what that technique fitted. Returns the
    setup the plan applies to (equalisation changes the graph and its ranges) and the plan, whose `techniques`
    records every try and whose `start` is the full-int8 graph before them.
    """
    from edgekit.quant import ptq_improve

    log = log or (lambda _m: None)
    start = build_and_evaluate(setup, [], "full-int8")
    log(f"full int8 on {len(setup.held_x)} check samples: agreement {start['agreement']:.4f}, "
        f"SQNR {start['sqnr_db']:.1f} dB")
    current, tried = start, []
    for tech in FIRST_TRY if first_try is None else first_try:
        if tech in applied or budget.holds(current):
            continue
        order = ptq_improve.ORDER
        later = [t for t in applied if t in order and order.index(t) > order.index(tech)] if tech in order else []
        if later:  # e.g. equalisation rescales the weights and ranges that learned rounding or qat fitted
            why = (f"not tried: it runs before {', '.join(later)} (already applied), and would change the weights "
                   "and ranges they were fitted to")
            tried.append({"technique": tech, "applied": False, "skipped": why})
            log(f"budget: {tech} {why}")
            continue
        candidate, steps = ptq_improve.apply(setup, [tech], cal, method, method_opts, before=current)
        result = {k: v for k, v in steps[-1].items() if k != "technique"}
        keep = budget.holds(result) or result["sqnr_db"] > current["sqnr_db"]
        tried.append({"technique": tech, "applied": keep, **result})
        log(f"budget: {tech} (all layers int8): agreement {result['agreement']:.4f}, SQNR "
            f"{result['sqnr_db']:.1f} dB on the check data; {'kept' if keep else 'not kept'}")
        if keep:
            setup, current = candidate, {k: result[k] for k in current if k in result}
    int16: list[str] = []
    int16_steps: list[dict[str, Any]] = []
    if int16_rung and setup.has_int16_rung and not budget.holds(current):
        from edgekit.quant import int16_search as rung

        ranking = rung.rank(setup, measure=INT16_MEASURED, log=log)
        int16, current, int16_steps = rung.search(setup, budget.holds, current, ranking, MAX_INT16_LAYERS, log)
    plan = search(setup, budget, log=log, start=current, int16=int16)
    plan.start, plan.techniques, plan.int16_steps = start, tried, int16_steps
    return setup, plan


def search(setup: QuantSetup, budget: Budget, ranking: list[dict[str, Any]] | None = None,
           log: Callable[[str], None] | None = None, max_kept: int | None = None,
           start: dict[str, Any] | None = None, int16: Sequence[str] = ()) -> FallbackPlan:
    """Greedy budgeted float fallback on top of the `int16` layers. `ranking` (from diagnose.rank_layers) is
    computed when not given; `start` is the result of `setup` with `int16` when already measured. `setup` is
    a QuantSetup or any setup with `build_and_evaluate` (a transformer's TransformerSetup)."""
    log = log or (lambda _m: None)
    int16 = list(int16)
    if start is None:
        start = setup.build_and_evaluate([], "full-int8", int16=int16)
        log(f"int8 on {len(setup.held_x)} check samples: {describe(start)}")
    steps: list[dict[str, Any]] = []
    kept: list[str] = []
    final = start
    holds = budget.holds(start)
    if not holds:
        if ranking is None:
            from edgekit.quant.diagnose import rank_layers, rank_token_layers

            ranking = rank_layers(setup, log=log) if isinstance(setup, QuantSetup) else rank_token_layers(
                setup, log=log)
        order = [r["layer"] for r in ranking]
        limit = len(order) if max_kept is None else min(max_kept, len(order))
        from tqdm import tqdm

        for layer in tqdm(order[:limit], desc="fallback", unit="layer", leave=False):
            kept.append(layer)
            final = setup.build_and_evaluate(kept, f"kept-{len(kept)}", int16=int16)
            steps.append({"added": layer, "kept": list(kept), **final})
            log(f"keeping {len(kept)} layer(s) ({layer} added): {describe(final)}")
            if budget.holds(final):
                holds = True
                break
        if holds:
            # drop layers the budget does not need (an early pick may be redundant once later ones are kept)
            for layer in list(kept[:-1]):
                trial = [k for k in kept if k != layer]
                result = setup.build_and_evaluate(trial, f"drop-{layer}", int16=int16)
                if budget.holds(result):
                    kept, final = trial, result
                    steps.append({"dropped": layer, "kept": list(kept), **result})
                    log(f"{layer} is not needed for the budget: dropped")
        else:
            log(f"the budget {budget.to_json()} does not hold even with {len(kept)} layer(s) kept in "
                f"{setup.kept_precision} ({describe(final)})")
    return FallbackPlan(budget, kept, setup.kept_precision, start, final, steps, ranking or [], len(setup.held_x),
                        int16=int16, holds=holds)
