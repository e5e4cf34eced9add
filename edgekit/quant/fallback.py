"""Budgeted fallback: start from full INT8 and keep the most sensitive layers in higher precision, one at a
time, until top-1 agreement with FP32 (or the accuracy drop, with labels) holds on held-out data.

Why measured and not guessed: which layers int8 hurts depends on the weights and the data (a depthwise layer
whose channels span three decades of range, an activation with outliers), and layer-local error is a poor
predictor because errors add up downstream. So the candidates are ranked by what keeping each one in float
*alone* does to the model's output (`edgekit.quant.diagnose.rank_layers`) and the search verifies every step on
data the ranges were not computed from.

Keeping a layer "in higher precision" means: its weights stay float, and it reads its input activation in
float, not through the QuantizeLinear/DequantizeLinear pair the quantizer put there for the layer before it
(ONNX Runtime's `nodes_to_exclude` only does the first; a per-tensor activation quantizer on the input is
often the very thing that hurts). Where ONNX Runtime's quantizer folded a ReLU into that quantizer's range,
the ReLU is put back in front of the kept layer, so the float path computes what the FP32 model computes.

Backends declare what they can keep layers in (`BackendSpec.layer_fallback`): ONNX Runtime int16 weights
then fp32 (its CPU kernels have no fp16 convolution worth using), TensorRT's Q/DQ graph fp16 (written as Casts
around the layer, as the `mixed` precision does; checked here with ONNX Runtime on the CPU, the same check
`edgekit export` runs). TFLite's converter has no per-layer float fallback in full-integer mode.

This module is the public face of the parts: budget (what is promised, on which data), qgraph (the graph and
its measurement), graphs (surgery), int16 (the int16 rung), search, cost, exporters.
"""

from __future__ import annotations

from edgekit.quant.budget import (
    HELD_OUT_FRACTION,
    MIN_HELD_OUT,
    Budget,
    check_labels,
    split_calibration,
    split_held_out,
    wilson,
    with_intervals,
)
from edgekit.quant.cost import compare_latency, latency_ms, macs_per_layer, plan_cost
from edgekit.quant.exporters import budgeted_exporter
from edgekit.quant.graphs import FOLDABLE_ACTIVATIONS, float_inputs, fold_float_output_weights
from edgekit.quant.qgraph import (
    QuantSetup,
    build,
    build_and_evaluate,
    check_layers,
    evaluate,
    layer_names,
    run_session,
    session,
)
from edgekit.quant.search import FIRST_TRY, FallbackPlan, budgeted_search, search

__all__ = [
    "FIRST_TRY", "FOLDABLE_ACTIVATIONS", "HELD_OUT_FRACTION", "MIN_HELD_OUT", "Budget", "FallbackPlan", "QuantSetup",
    "budgeted_exporter", "budgeted_search", "build", "build_and_evaluate", "check_backend", "check_labels",
    "check_layers", "compare_latency", "evaluate", "float_inputs", "fold_float_output_weights", "latency_ms",
    "layer_names", "macs_per_layer", "plan_cost", "run_session", "search", "session", "split_calibration",
    "split_held_out", "wilson", "with_intervals",
]


def check_backend(backend: str, budget: Budget | None, labels: bool) -> None:
    """Fail before any work when the backend cannot do a budgeted export or the data cannot check the budget."""
    from edgekit.backends.registry import check_budget_backend

    if budget is None:
        return
    check_budget_backend(backend)
    check_labels(budget, labels)
