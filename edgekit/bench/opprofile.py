"""`edgekit bench --profile`: where the time goes inside one inference, per operator, from the runtime's own
profiler, so an int8 artifact that is not faster than fp32 can be explained (time in float ops that stayed
float, in Quantize/Dequantize pairs, or in int8 kernels slower on this CPU).

ONNX Runtime's profiler is reached from Python (a profiling session's JSON trace); LiteRT's per-op profiler
is only in its C++ tools (benchmark_model --enable_op_profiling), so the record says "not available" there.
Runs in the worker, i.e. on the device.
"""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

_INT8_TYPES = ("int8", "uint8")
_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")
#: ops that only move data between layouts (ONNX Runtime's NCHWc and NHWC rewrites add them)
_LAYOUT_OPS = ("Transpose", "ReorderInput", "ReorderOutput")
TOP = 10
_NOT_AVAILABLE = {
    "ai_edge_litert": "not available: LiteRT's per-op profiler cannot be reached from Python (on the device: "
                      "benchmark_model --enable_op_profiling=true)",
    "torch": "not available for torch eager (use torch.profiler on the model itself)",
}


def _types(shapes: Any) -> list[str]:
    """Element types of an ORT profile's input_type_shape: [{"float": [1, 3]}, {"int8": [3]}] -> types."""
    return [k for entry in shapes or [] if isinstance(entry, dict) for k in entry]


def grouped_nodes(graph_path: Path) -> set[str]:
    """Names of the nodes with a `group` attribute above 1 (depthwise / grouped convolutions) in the graph
    ONNX Runtime actually ran, or an empty set when that graph is not there."""
    if not graph_path.is_file():
        return set()
    import onnx

    model = onnx.load(str(graph_path), load_external_data=False)
    return {n.name for n in model.graph.node
            if any(a.name == "group" and a.type == onnx.AttributeProto.INT and a.i > 1 for a in n.attribute)}


def summarize(trace: list[dict[str, Any]], iters: int, grouped: set[str] | None = None) -> dict[str, Any]:
    """Top ops by time and the int8 / float / Q-DQ shares, from an ORT profile's events.

    Why the conv split: on a depthwise-separable CNN, int8 depthwise kernels gain far less over fp32 than
    pointwise ones (they have few multiply-accumulates per byte), so the share of time they take is what
    bounds an int8 speed-up; `grouped` names the grouped convolutions of the graph that ran."""
    per_op: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    shares = {"int8": 0.0, "float": 0.0, "quantize_dequantize": 0.0}
    convs = {"depthwise": 0.0, "other": 0.0}
    layout = 0.0
    for ev in trace:
        if ev.get("cat") != "Node" or not str(ev.get("name", "")).endswith("_kernel_time"):
            continue
        args = ev.get("args") or {}
        op = str(args.get("op_name", "?"))
        dur = float(ev.get("dur", 0.0)) / 1e3  # microseconds -> ms
        per_op[op][0] += dur
        per_op[op][1] += 1
        if "Conv" in op:
            convs["depthwise" if ev["name"][: -len("_kernel_time")] in (grouped or ()) else "other"] += dur
        if op in _LAYOUT_OPS:
            layout += dur
        if op in _QDQ_OPS:
            shares["quantize_dequantize"] += dur
        elif op.startswith("QLinear") or op.endswith("Integer") or any(
                t in _INT8_TYPES for t in _types(args.get("input_type_shape"))):
            shares["int8"] += dur
        else:
            shares["float"] += dur
    total = sum(v[0] for v in per_op.values())
    top = sorted(per_op.items(), key=lambda kv: -kv[1][0])[:TOP]
    return {
        "available": True, "source": "ONNX Runtime profiler (a second session, same options)", "runs": iters,
        "total_ms_per_run": total / iters if iters else None,
        "top_ops": [{"op": op, "ms_per_run": ms / iters, "share": ms / total if total else 0.0,
                     "nodes_per_run": n // max(iters, 1)} for op, (ms, n) in top],
        "time_share": {k: (v / total if total else 0.0) for k, v in shares.items()},
        "layout_share": layout / total if total else 0.0,
        **({"conv_share": {k: (v / total if total else 0.0) for k, v in convs.items()}} if grouped is not None
           else {}),
    }


def _ort_runner(runner: Any) -> Any:
    """The ONNX Runtime runner inside `runner` (itself, or the CPU stand-in a TensorRT runner holds), or None."""
    from edgekit.backends.onnxruntime import OrtRunner

    for obj in (runner, getattr(runner, "_cpu", None)):
        if isinstance(obj, OrtRunner):
            return obj
    return None


def profile(runner: Any, x: np.ndarray, runtime_module: str, iters: int = 20) -> dict[str, Any]:
    """The per-op profile of `runner` on input `x`, or {"available": False, "reason": ...}."""
    ort = _ort_runner(runner)
    if ort is None:
        reason = _NOT_AVAILABLE.get(runtime_module, f"not available for the {runtime_module} runtime")
        return {"available": False, "reason": reason}
    with tempfile.TemporaryDirectory(prefix="edgekit-profile-") as tmp:
        from edgekit.backends.onnxruntime import OPTIMIZED_GRAPH

        path = ort.profile(x, iters, Path(tmp))
        trace = json.loads(Path(path).read_text())
        grouped = grouped_nodes(Path(tmp) / OPTIMIZED_GRAPH)
    return summarize(trace, iters, grouped)
