"""Choosing the int16 rung's layers by measurement: each candidate's output SQNR gain from int16 weights
alone, per MAC it moves to a float kernel, then a greedy climb that keeps a layer only when it helps."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


def rank(setup, candidates: Sequence[str] | None = None, samples: int = 64, measure: int | None = None,
         log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Each candidate layer with the output SQNR gain of int16 weights on it alone (held-out samples), its
    MACs and the gain per million MACs, best value first. `measure`: on a large graph, measure only that many
    layers, those whose int8 weights are worst (`weight_sqnr`); each measurement is one quantized graph."""
    from dataclasses import replace

    from tqdm import tqdm

    from edgekit.quant.cost import macs_per_layer
    from edgekit.quant.qgraph import build_and_evaluate, layer_names

    log = log or (lambda _m: None)
    small = replace(setup, held_x=setup.held_x[:samples], reference=setup.reference[:samples],
                    held_y=None if setup.held_y is None else setup.held_y[:samples])
    base = build_and_evaluate(small, [], "int16-base")
    macs = macs_per_layer(setup.prepared)
    rows = []
    names = list(candidates or layer_names(setup.prepared))
    if measure is not None and len(names) > measure:
        from edgekit.quant.int16 import weight_sqnr

        proxy = weight_sqnr(setup.prepared, bool(setup.options.get("per_channel", True)))
        names = sorted(names, key=lambda n: proxy.get(n, 200.0))[:measure]
    for layer in tqdm(names, desc="int16 rank", unit="layer",
                      leave=False):
        r = build_and_evaluate(small, [], f"int16-{len(rows)}", int16=[layer])
        gain = r["sqnr_db"] - base["sqnr_db"]
        rows.append({"layer": layer, "sqnr_gain_db": round(gain, 3), "macs": macs.get(layer, 0),
                     "gain_per_mmac": round(gain / max(macs.get(layer, 0) / 1e6, 1e-3), 4)})
    rows.sort(key=lambda r: -r["gain_per_mmac"])
    log(f"int16 rung: ranked {len(rows)} layers on {len(small.held_x)} held-out samples; best "
        + ", ".join(f"{r['layer']} +{r['sqnr_gain_db']:.1f} dB" for r in rows[:3]))
    return rows


def search(setup, goal: Callable[[dict[str, Any]], bool], start: dict[str, Any],
           ranking: list[dict[str, Any]], max_layers: int = 12,
           log: Callable[[str], None] | None = None) -> tuple[list[str], dict[str, Any], list[dict[str, Any]]]:
    """Widen layers in ranking order (skipping those that gained nothing) until `goal(result)` holds;
    returns (layers, final result, steps). Stops at `max_layers`: past that the rung costs too much speed and
    keeping layers in float (or QAT) is the honest next step."""
    from edgekit.quant.qgraph import build_and_evaluate

    log = log or (lambda _m: None)
    layers: list[str] = []
    result, steps = start, []
    for row in ranking:
        if goal(result) or len(layers) >= max_layers:
            break
        if row["sqnr_gain_db"] <= 0.05:
            continue
        trial = [*layers, row["layer"]]
        r = build_and_evaluate(setup, [], f"int16-step-{len(trial)}", int16=trial)
        keep = r["sqnr_db"] > result["sqnr_db"]
        steps.append({"int16_added": row["layer"], "kept": keep, **r})
        log(f"int16 rung: {row['layer']} -> agreement {r['agreement']:.4f}, SQNR {r['sqnr_db']:.1f} dB"
            f"{'' if keep else ' (no better: not kept)'}")
        if keep:
            layers, result = trial, r
    return layers, result, steps
