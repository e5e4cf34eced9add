"""What a budgeted graph costs: multiply-accumulates left to float kernels (any backend) and measured
single-thread latency against FP32 and full int8 (ONNX Runtime, timed interleaved so load drift touches all)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgekit.quant.qgraph import QuantSetup, build, layer_names, session


def macs_per_layer(prepared: Path) -> dict[str, int]:
    """Multiply-accumulates of each weighted layer for one sample (from the graph's inferred shapes)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.shape_inference.infer_shapes(onnx.load(str(prepared), load_external_data=False))
    shapes = {vi.name: [d.dim_value if d.HasField("dim_value") else 1 for d in vi.type.tensor_type.shape.dim]
              for vi in (*model.graph.value_info, *model.graph.output, *model.graph.input)}
    inits = {t.name: numpy_helper.to_array(t).shape for t in model.graph.initializer}
    out: dict[str, int] = {}
    for node in model.graph.node:
        if node.name not in set(layer_names(prepared)) or node.input[1] not in inits:
            continue
        w = inits[node.input[1]]
        y = shapes.get(node.output[0])
        if y is None:
            continue
        if node.op_type in ("Conv", "ConvTranspose"):
            out[node.name] = int(np.prod(y[1:]) * np.prod(w[1:]))
        else:  # Gemm / MatMul: outputs x reduction
            out[node.name] = int(np.prod(y[1:]) * (w[0] if len(w) == 2 else np.prod(w[:-1])))
    return out


def latency_ms(path: Path, options: dict[str, Any], x: np.ndarray, rounds: int = 5, iters: int = 20) -> float:
    """Median single-thread batch-1 latency of one graph (for interleaved comparisons use `compare_latency`)."""
    return compare_latency({"m": path}, options, x, rounds, iters)["m"]


def compare_latency(paths: dict[str, Path], options: dict[str, Any], x: np.ndarray, rounds: int = 5,
                    iters: int = 20) -> dict[str, float]:
    """Median batch-1 latency (ms, one thread) of several graphs, timed in interleaved rounds so drift on a
    shared machine touches all alike."""
    import time

    sessions = {k: session(p, options) for k, p in paths.items()}
    feeds = {k: {s.get_inputs()[0].name: x[:1].astype(np.float16 if s.get_inputs()[0].type == "tensor(float16)"
                                                       else np.float32)} for k, s in sessions.items()}
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for k, s in sessions.items():
        for _ in range(5):
            s.run(None, feeds[k])
    for _ in range(rounds):
        for k, s in sessions.items():
            for _ in range(iters):
                t0 = time.perf_counter()
                s.run(None, feeds[k])
                times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: round(float(np.median(v)), 4) for k, v in times.items()}


def plan_cost(setup: QuantSetup, plan, measure_latency: bool = True) -> dict[str, Any]:
    """MACs left in float and, for ONNX Runtime, measured latency of full int8 vs the budgeted graph."""
    macs = macs_per_layer(setup.prepared)
    total = sum(macs.values()) or 1
    kept_macs = sum(macs.get(k, 0) for k in (*plan.kept, *plan.int16))
    cost: dict[str, Any] = {"macs_total": total, "macs_kept": kept_macs,
                            "macs_kept_fraction": round(kept_macs / total, 4),
                            "per_layer_macs": {k: macs.get(k, 0) for k in (*plan.kept, *plan.int16)},
                            "macs_kept_means": "MACs computed by a float kernel: layers kept in float and int16 "
                                               "layers (ONNX Runtime runs those as float convolutions)"}
    if measure_latency and setup.spec.qdq_style == "onnxruntime":
        full, budgeted = setup.workdir / "cost-full.onnx", setup.workdir / "cost-budgeted.onnx"
        build(setup, [], full)
        graphs = {"fp32": setup.prepared, "full_int8": full}
        if plan.kept or plan.int16:
            build(setup, plan.kept, budgeted, plan.int16)
            graphs["budgeted"] = budgeted
        lat = compare_latency(graphs, setup.options, setup.held_x)
        lat.setdefault("budgeted", lat["full_int8"])  # no layer kept: the budgeted graph is the full-int8 one
        cost["latency_ms"] = {**lat, "how": "ONNX Runtime CPU, 1 thread, batch 1, median of 5 interleaved rounds "
                                            "of 20 runs, on the export machine (fp32: the FP32 graph the int8 one "
                                            "was made from)"}
        cost["speedup_vs_fp32"] = round(lat["fp32"] / lat["budgeted"], 3) if lat["budgeted"] > 0 else None
    else:
        cost["latency_ms"] = (f"not measured here (needs {setup.backend} on the device); see "
                              "macs_kept_fraction")
    return cost
